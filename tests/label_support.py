"""Helpers for the labeling-service tests: stores on SQLite and PostgreSQL, a
server in a subprocess, a small JSON API client, seeded projects.

PostgreSQL tests use ``RLHFKIT_TEST_PG_URL`` (``.ci/run`` starts a server and sets
it); the browser test uses Debian's chromium. Without them those tests skip and
say why, unless ``RLHFKIT_REQUIRE_LABEL_SERVICES=1`` (set by ``.ci/run``), where
a missing service fails the test instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from rlhfkit.data.types import Message
from rlhfkit.demo.task import Task
from rlhfkit.feedback.store import CandidateSet, Store, import_candidates

PG_ENV = "RLHFKIT_TEST_PG_URL"
REQUIRE_ENV = "RLHFKIT_REQUIRE_LABEL_SERVICES"
PAIR = {"helpfulness": {"choice": "A", "margin": "better"}, "safety": {"choice": "tie"}}


def unavailable(reason: str) -> None:
    """Skip (saying why), or fail where the services are required (CI)."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} (required: {REQUIRE_ENV}=1)")
    pytest.skip(reason)


def pg_url() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        unavailable(f"no PostgreSQL: set {PG_ENV}=postgresql://user:pw@127.0.0.1/db (.ci/run does)")
    return url  # type: ignore[return-value]


def reset_pg(url: str) -> None:
    """Drop everything in the test database's public schema."""
    from sqlalchemy import create_engine, text

    from rlhfkit.feedback.store import database_url

    engine = create_engine(database_url(url))
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    except Exception as e:
        unavailable(f"PostgreSQL at {PG_ENV} is not reachable: {type(e).__name__}: {e}")
    finally:
        engine.dispose()


def db_for(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return str(tmp_path / "labels.db")
    url = pg_url()
    reset_pg(url)
    return url


def candidate_sets(task: Task, n: int, k: int = 2, split: str = "train") -> list[CandidateSet]:
    """``n`` prompts of the built-in task, each with ``k`` distinct candidates, the
    policies named after the candidate's quality rank (good / meh / ...)."""
    out = []
    for p in task.prompts(split)[:n]:
        cands = task.candidates(p)[:k]
        out.append(
            CandidateSet(
                prompt=(Message("user", p.text),),
                responses=tuple(cands),
                policies=tuple(f"policy-{i}" for i in range(len(cands))),
            )
        )
    return out


def seeded_store(db: str, task: Task, n: int, k: int = 2, overlap: int = 1, **settings) -> Store:
    store = Store(db)
    if settings:
        store.configure(**settings)
    import_candidates(store, candidate_sets(task, n, k), overlap=overlap)
    return store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``rlhfkit label serve`` in a subprocess, on a free loopback port."""

    def __init__(self, db: str, log: Path, port: int | None = None) -> None:
        self.db, self.log = db, log
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> Server:
        cmd = [sys.executable, "-m", "rlhfkit", "label", "serve", "--db", self.db,
               "--port", str(self.port)]  # fmt: skip
        out = self.log.open("ab")
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"server did not start in {timeout}s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class ApiClient:
    """An annotator using the JSON API."""

    def __init__(self, base_url: str, name: str, password: str, timeout: float = 30.0) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=timeout)
        r = self.http.post("/api/login", json={"name": name, "password": password})
        r.raise_for_status()
        self.csrf = r.json()["csrf_token"]

    def post(self, path: str, body: dict | None = None) -> httpx.Response:
        return self.http.post(path, json=body or {}, headers={"X-CSRF-Token": self.csrf})

    def next(self) -> dict | None:
        r = self.post("/api/next")
        r.raise_for_status()
        return r.json()["assignment"]

    def judge(self, assignment_id: int, answer: dict, submission_id: str | None = None):
        body = {"submission_id": submission_id or str(uuid.uuid4()), "answer": answer}
        return self.post(f"/api/assignments/{assignment_id}/judgment", body)

    def close(self) -> None:
        self.http.close()


def people_in(store: Store, *names: str):
    """Annotators with the password ``password-<name>`` (cheap argon2 parameters)."""
    from rlhfkit.feedback.store import Accounts, fast_hasher

    accounts = Accounts(store, fast_hasher())
    return [accounts.create(n, password="password-" + n) for n in names]


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def chromium(tmp_path: Path):
    """A headless Debian chromium driven by Selenium (a generator for fixtures: yields the
    driver, quits it after); skips or fails like the other services when it is missing."""
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        unavailable(
            f"no browser: {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager download anything
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--window-size=1200,1000", f"--user-data-dir={tmp_path / 'profile'}",
    ):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
