"""The labeling server as a real process on loopback: a load test (20 annotators, 2,000
judgments, deliberate duplicate submits and retries after timeouts) and a kill test
(SIGKILL during submissions: every acknowledged judgment survives)."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid

import httpx
import pytest
from sqlalchemy import func, select

from label_support import ApiClient, Server, db_for, people_in, seeded_store
from rlhfkit.feedback.store import Store
from rlhfkit.feedback.store.schema import Judgment

CHOICES = ["A", "B", "tie", "both_bad"]
MARGINS = ["significantly_better", "better", "slightly_better", "negligibly_better"]


def random_answer(rng: random.Random) -> dict:
    out = {}
    for dim in ("helpfulness", "safety"):
        choice = rng.choice(CHOICES)
        out[dim] = {"choice": choice, "margin": rng.choice(MARGINS) if choice in "AB" else None}
    return out


class Annotator(threading.Thread):
    """Labels until there is nothing left (or the server is gone), recording every
    acknowledged judgment id and the latency of each submit."""

    def __init__(self, base_url: str, name: str, seed: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.base_url, self.name, self.stop = base_url, name, stop
        self.rng = random.Random(seed)
        self.acked: set[str] = set()
        self.duplicates = 0
        self.latencies: list[float] = []
        self.error: BaseException | None = None
        self.ended = ""  # why the loop ended without an error

    def submit(self, api: ApiClient, aid: int, sid: str, answer: dict) -> dict | None:
        """Submit until acknowledged (and get the next assignment): a first try that
        times out is retried with the same id, as a browser retry would be."""
        body = {"submission_id": sid, "answer": answer, "next": True}
        url = f"/api/assignments/{aid}/judgment"
        timeout = 0.002 if self.rng.random() < 0.05 else 30.0  # some give up too early
        while True:
            start = time.perf_counter()
            try:
                r = api.http.post(
                    url, json=body, headers={"X-CSRF-Token": api.csrf}, timeout=timeout
                )
            except httpx.TimeoutException:
                timeout = 30.0
                continue
            r.raise_for_status()
            self.latencies.append(time.perf_counter() - start)
            result = r.json()
            assert result["judgment_id"] == sid
            self.acked.add(sid)
            self.duplicates += result["duplicate"]
            return result["next"]

    def run(self) -> None:
        try:
            api = ApiClient(self.base_url, self.name, "password-" + self.name)
            assignment = api.next()
            while assignment is not None and not self.stop.is_set():
                sid, answer = str(uuid.uuid4()), random_answer(self.rng)
                following = self.submit(api, assignment["id"], sid, answer)
                if self.rng.random() < 0.1:  # a double click: the same submission again
                    assert self.submit(api, assignment["id"], sid, answer) == following
                assignment = following
            self.ended = "no assignment" if assignment is None else "stopped"
        except (httpx.TransportError, httpx.HTTPStatusError) as e:
            self.error = e


def stored_ids(db: str) -> set[str]:
    store = Store(db)
    try:
        with store.read() as s:
            return set(s.scalars(select(Judgment.id)))
    finally:
        store.close()


def test_load_20_annotators_2000_judgments(tmp_path, task):
    db = str(tmp_path / "load.db")
    store = seeded_store(db, task, n=1000, overlap=2)
    names = [f"ann{i:02d}" for i in range(20)]
    people_in(store, *names)
    store.close()
    with Server(db, tmp_path / "server.log") as server:
        stop = threading.Event()
        workers = [Annotator(server.url, n, i, stop) for i, n in enumerate(names)]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=240)
        seconds = time.perf_counter() - start
    assert [w.error for w in workers if w.error] == []
    acked = set().union(*(w.acked for w in workers))
    stored = stored_ids(db)
    assert len(acked) == 2000  # every slot of 1,000 tasks x overlap 2
    assert stored == acked  # none lost, none doubled (ids are primary keys)
    latencies = sorted(t for w in workers for t in w.latencies)
    p95 = latencies[int(0.95 * len(latencies))]
    stats = {
        "judgments": len(acked),
        "submits": len(latencies),
        "duplicate_acks": sum(w.duplicates for w in workers),
        "seconds": round(seconds, 2),
        "judgments_per_s": round(len(acked) / seconds, 1),
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
        "p95_ms": round(1000 * p95, 1),
    }
    print("label load test:", json.dumps(stats))
    assert stats["duplicate_acks"] >= 50  # the double clicks were answered "duplicate"
    assert Store(db).integrity_problems() == []


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sigkill_loses_no_acknowledged_judgment(tmp_path, task, backend):
    db = db_for(backend, tmp_path)
    store = seeded_store(db, task, n=200, overlap=1)
    names = [f"k{i}" for i in range(6)]
    people_in(store, *names)
    store.close()
    server = Server(db, tmp_path / "server.log").start()
    stop = threading.Event()
    workers = [Annotator(server.url, n, i, stop) for i, n in enumerate(names)]
    survivor = ApiClient(server.url, names[0], "password-" + names[0])
    try:
        for w in workers:
            w.start()
        deadline = time.monotonic() + 60
        while sum(len(w.acked) for w in workers) < 60 and time.monotonic() < deadline:
            time.sleep(0.02)
        server.kill()  # SIGKILL in the middle of submissions
        for w in workers:
            w.join(timeout=30)
        acked = set().union(*(w.acked for w in workers))
        assert len(acked) >= 60
        state = [(w.name, w.is_alive(), w.ended, repr(w.error), len(w.acked)) for w in workers]
        assert all(w.error is not None for w in workers), state  # cut off mid-run
        restarted = Server(db, tmp_path / "server2.log", port=server.port).start()
        try:
            stored = stored_ids(db)
            assert acked <= stored  # every acknowledged judgment is there
            assert len(stored - acked) <= len(workers)  # at most one in flight per client
            assert Store(db).integrity_problems() == []
            # the old session and CSRF token still work: sessions and the secret persist
            sid = sorted(workers[0].acked)[0]
            assert survivor.http.get(f"/api/judgments/{sid}").json()["id"] == sid
            assert survivor.next() is not None
        finally:
            restarted.stop()
    finally:
        stop.set()
        server.kill()
        survivor.close()


def test_server_binds_loopback_by_default(tmp_path):
    db = str(tmp_path / "bind.db")
    Store(db).close()
    with Server(db, tmp_path / "server.log") as server:
        import psutil

        ports = [
            c.laddr
            for c in psutil.Process(server.proc.pid).net_connections()
            if c.status == "LISTEN"
        ]
        assert ports and all(addr.ip == "127.0.0.1" for addr in ports)
        r = httpx.get(server.url + "/healthz", headers={"Host": "attacker.example"})
        assert r.status_code == 400  # DNS rebinding: only loopback host names are served
    assert Store(db).integrity_problems() == []
    with Store(db).read() as s:
        assert s.scalar(select(func.count()).select_from(Judgment)) == 0
