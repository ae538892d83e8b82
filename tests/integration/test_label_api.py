"""Every endpoint of the labeling web app, including its errors and its protections."""

from __future__ import annotations

import json
import random
import re
import uuid

import pytest
from fastapi.testclient import TestClient

from label_support import PAIR, seeded_store
from rlhfkit.data.types import Message
from rlhfkit.feedback.service import create_app
from rlhfkit.feedback.service.security import CSP
from rlhfkit.feedback.store import (
    Accounts,
    CandidateSet,
    Work,
    add_guidelines,
    fast_hasher,
    import_candidates,
)

CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')
SUBMISSION_RE = re.compile(r'name="submission_id" value="([^"]+)"')
SAVED_RE = re.compile(r"^/task(/\d+)?\?saved=[0-9a-f-]{36}$")  # the next task, or "all done"
XSS = '<script>alert("pwned")</script><img src=x onerror=alert(1)>'


@pytest.fixture
def project(tmp_path, task):
    store = seeded_store(str(tmp_path / "labels.db"), task, n=6, overlap=2)
    import_candidates(
        store,
        [CandidateSet((Message("user", "Say hi " + XSS),), (XSS, "hello", "hi", "hey"),
                      ("p1", "p2", "p3", "p4"))],
    )  # fmt: skip
    accounts = Accounts(store, fast_hasher())
    accounts.create("admin", password="admin-password", is_admin=True)
    accounts.create("alice", password="alice-password")
    accounts.create("bob", password="bob-password")
    add_guidelines(store, "# Guidelines\n\nPrefer **correct** answers. <b>raw html</b>")
    app = create_app(store, hasher=fast_hasher(), work=Work(store, random.Random(0)))
    return store, app


def client(app) -> TestClient:
    return TestClient(app, follow_redirects=False)


def login(app, name: str) -> tuple[TestClient, str]:
    c = client(app)
    form = c.get("/login")
    csrf = CSRF_RE.search(form.text).group(1)
    r = c.post("/login", data={"csrf": csrf, "name": name, "password": f"{name}-password"})
    assert r.status_code == 303, r.text
    page = c.get("/guidelines")
    return c, CSRF_RE.search(page.text).group(1)


def open_task(c: TestClient) -> tuple[int, str]:
    r = c.get("/task")
    assert r.status_code == 303
    aid = int(r.headers["location"].split("/")[-1].split("?")[0])
    page = c.get(f"/task/{aid}")
    return aid, page.text


def pairwise_form(csrf: str, page: str, **fields) -> dict:
    data = {
        "csrf": csrf,
        "submission_id": SUBMISSION_RE.search(page).group(1),
        "action": "judge",
        "helpfulness_choice": "A",
        "helpfulness_margin": "better",
        "safety_choice": "tie",
    }
    data.update(fields)
    return data


# ---------------------------------------------------------------- pages


def test_login_logout_and_pages_need_a_session(project):
    _, app = project
    c = client(app)
    for path in ("/task", "/task/1", "/guidelines", "/me/judgments", "/admin"):
        assert c.get(path).headers["location"] == "/login", path
    assert c.get("/").headers["location"] == "/task"
    assert c.get("/healthz").json() == {"ok": True}
    form = c.get("/login")
    csrf = CSRF_RE.search(form.text).group(1)
    bad = c.post("/login", data={"csrf": csrf, "name": "alice", "password": "nope-nope"})
    assert bad.status_code == 401 and "wrong name or password" in bad.text
    c2, csrf2 = login(app, "alice")
    assert c2.get("/task").status_code == 303
    assert c2.post("/logout", data={"csrf": csrf2}).headers["location"] == "/login"
    assert c2.get("/task").headers["location"] == "/login"


def test_session_cookie_flags_and_security_headers(project):
    _, app = project
    c = client(app)
    form = c.get("/login")
    assert form.headers["content-security-policy"] == CSP
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
    assert form.headers["x-frame-options"] == "DENY"
    assert form.headers["x-content-type-options"] == "nosniff"
    assert form.headers["cache-control"] == "no-store"
    csrf = CSRF_RE.search(form.text).group(1)
    r = c.post("/login", data={"csrf": csrf, "name": "alice", "password": "alice-password"})
    cookie = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and "rk_session" in v)
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
    assert c.get("/static/label.js").status_code == 200
    assert "no-store" not in c.get("/static/app.css").headers.get("cache-control", "")


def test_pairwise_page_submit_undo_and_my_judgments(project):
    _, app = project
    c, csrf = login(app, "alice")
    aid, page = open_task(c)
    assert "Response A" in page and "Response B" in page
    assert "policy-" not in page  # blind: the policies are never shown
    for key in ("<kbd>a</kbd>", "<kbd>b</kbd>", "<kbd>t</kbd>", "<kbd>x</kbd>", "<kbd>u</kbd>"):
        assert key in page  # the shortcuts are shown on the page
    assert "<progress" in page
    form = pairwise_form(csrf, page, time_spent_ms="4321")
    r = c.post(f"/task/{aid}", data=form)
    assert r.status_code == 303 and SAVED_RE.match(r.headers["location"])
    saved = r.headers["location"].split("=")[1]
    assert saved == form["submission_id"]
    again = c.post(f"/task/{aid}", data=form)  # a double click: recorded once, same answer
    assert again.headers["location"] == r.headers["location"]
    mine = c.get("/me/judgments").text
    assert saved[:8] in mine
    # undo reopens the task and the next page shows it again
    r = c.post("/undo", data={"csrf": csrf})
    assert r.headers["location"] == f"/task/{aid}"
    assert c.get(f"/task/{aid}").status_code == 200
    judgment = c.get(f"/api/judgments/{saved}").json()
    assert judgment["retracted"] is True and judgment["time_spent_ms"] == 4321


def test_invalid_answers_come_back_as_an_error_on_the_page(project):
    _, app = project
    c, csrf = login(app, "alice")
    aid, page = open_task(c)
    r = c.post(f"/task/{aid}", data=pairwise_form(csrf, page, helpfulness_margin=""))
    assert r.status_code == 303 and "error=" in r.headers["location"]
    shown = c.get(r.headers["location"]).text
    assert "helpfulness.margin" in shown


def test_skip_and_flag_with_a_reason(project):
    _, app = project
    c, csrf = login(app, "alice")
    aid, page = open_task(c)
    sid = SUBMISSION_RE.search(page).group(1)
    r = c.post(f"/task/{aid}", data={"csrf": csrf, "submission_id": sid, "action": "skip"})
    assert r.status_code == 303
    aid2, page2 = open_task(c)
    assert aid2 != aid
    sid2 = SUBMISSION_RE.search(page2).group(1)
    no_reason = {"csrf": csrf, "submission_id": sid2, "action": "flag"}
    r = c.post(f"/task/{aid2}", data=no_reason)
    assert "a flag needs a reason" in c.get(r.headers["location"]).text
    flagged = {**no_reason, "reason": "prompt is unreadable " + XSS}
    assert c.post(f"/task/{aid2}", data=flagged).status_code == 303
    admin, _ = login(app, "admin")
    flags = admin.get("/admin/flags").text
    assert "prompt is unreadable" in flags and "<script>" not in flags


def test_ranking_page_and_untrusted_text_is_escaped(project):
    _, app = project
    c, csrf = login(app, "bob")
    page = ""
    for _ in range(10):  # bob's tasks in order; the ranking task is the last one imported
        aid, page = open_task(c)
        if "ranking" in page and 'data-page="ranking"' in page:
            break
        c.post(f"/task/{aid}", data=pairwise_form(csrf, page))
    assert 'data-page="ranking"' in page
    assert "<script>alert" not in page and "onerror=alert(1)>" not in page
    assert "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;" in page
    assert "<kbd>j</kbd>" in page and 'draggable="true"' in page
    form = {"csrf": csrf, "submission_id": SUBMISSION_RE.search(page).group(1), "action": "judge"}
    for i, rank in enumerate([1, 2, 2, 4]):  # ties allowed
        form[f"helpfulness_rank_{i}"] = str(rank)
        form[f"safety_rank_{i}"] = str(4 - i)
    bad = c.post(f"/task/{aid}", data={**form, "helpfulness_rank_0": "9"})
    assert (
        "answer.helpfulness: expected a list of 4 integers from 1 to 4"
        in c.get(bad.headers["location"]).text
    )
    assert SAVED_RE.match(c.post(f"/task/{aid}", data=form).headers["location"])
    judgment = c.get(f"/api/judgments/{form['submission_id']}").json()
    assert judgment["answer"]["helpfulness"] == [1, 2, 2, 4]


def test_guidelines_are_rendered_markdown_without_raw_html(project):
    _, app = project
    c, _ = login(app, "alice")
    page = c.get("/guidelines").text
    assert "<strong>correct</strong>" in page and "<b>raw html</b>" not in page
    assert "&lt;b&gt;raw html&lt;/b&gt;" in page and "version 1" in page
    assert c.get("/guidelines?version=7").status_code == 404


# ---------------------------------------------------------------- security


def test_annotator_cannot_read_or_write_another_annotators_work(project):
    _, app = project
    alice, a_csrf = login(app, "alice")
    bob, b_csrf = login(app, "bob")
    aid, page = open_task(alice)
    form = pairwise_form(a_csrf, page)
    alice.post(f"/task/{aid}", data=form)
    jid = form["submission_id"]
    # bob, by id: the page, the JSON, a submit and the judgment are all "not found"
    assert bob.get(f"/task/{aid}").status_code == 404
    assert bob.get(f"/api/assignments/{aid}").status_code == 404
    assert bob.get(f"/api/judgments/{jid}").status_code == 404
    steal = pairwise_form(b_csrf, page, submission_id=str(uuid.uuid4()))
    assert bob.post(f"/task/{aid}", data=steal).status_code == 404
    api = bob.post(
        f"/api/assignments/{aid}/judgment",
        json={"submission_id": str(uuid.uuid4()), "answer": PAIR},
        headers={"X-CSRF-Token": bob.get("/api/session").json()["csrf_token"]},
    )
    assert api.status_code == 404
    assert all(j["id"] != jid for j in bob.get("/api/judgments").json()["judgments"])
    # and not an admin page either
    assert bob.get("/admin").status_code == 404
    assert bob.get("/admin/agreement").status_code == 404


def test_state_changing_requests_need_a_valid_csrf_token(project):
    _, app = project
    c, csrf = login(app, "alice")
    aid, page = open_task(c)
    for token in (None, "", "0" * 64, csrf[:-1] + ("0" if csrf[-1] != "0" else "1")):
        form = pairwise_form(csrf, page)
        if token is None:
            del form["csrf"]
        else:
            form["csrf"] = token
        r = c.post(f"/task/{aid}", data=form)
        assert r.status_code == 403, token
    assert c.post("/undo", data={}).status_code == 403
    assert c.post("/logout", data={}).status_code == 403
    r = c.post("/api/next", json={})  # no X-CSRF-Token header
    assert r.status_code == 403 and "CSRF" in r.json()["error"]
    fresh = client(app)
    fresh.get("/login")
    r = fresh.post("/login", data={"csrf": "x", "name": "alice", "password": "alice-password"})
    assert r.status_code == 403  # login CSRF too


def test_oversize_requests_are_refused(project):
    _, app = project
    c, csrf = login(app, "alice")
    aid, page = open_task(c)
    big = pairwise_form(csrf, page, reason="x" * 300_000)
    assert c.post(f"/task/{aid}", data=big).status_code == 413

    def chunks():
        for _ in range(100):
            yield b"y" * 4096  # no Content-Length: counted as it streams

    r = c.post("/api/login", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    long_reason = pairwise_form(csrf, page, action="flag", reason="z" * 5000)
    r = c.post(f"/task/{aid}", data=long_reason)
    assert "error=" in r.headers["location"]  # a reason is at most 2000 characters


def test_unknown_host_header_is_refused(project):
    _, app = project
    c = TestClient(app, base_url="http://evil.example")
    assert c.get("/login").status_code == 400


# ---------------------------------------------------------------- JSON API


def test_json_api_flow_and_errors(project):
    _, app = project
    c = client(app)
    assert c.post("/api/login", json={"name": "alice", "password": "wrong"}).status_code == 401
    assert (
        c.post(
            "/api/login", content="name=alice", headers={"content-type": "text/plain"}
        ).status_code
        == 422
    )
    r = c.post("/api/login", json={"name": "alice", "password": "alice-password"})
    csrf = r.json()["csrf_token"]
    h = {"X-CSRF-Token": csrf}
    assert c.get("/api/session").json() == {
        "annotator": "alice",
        "is_admin": False,
        "csrf_token": csrf,
    }
    a = c.post("/api/next", json={}, headers=h).json()["assignment"]
    assert a["kind"] == "pairwise" and len(a["responses"]) == 2 and "policies" not in a
    assert c.get(f"/api/assignments/{a['id']}").json()["id"] == a["id"]
    sid = str(uuid.uuid4())
    url = f"/api/assignments/{a['id']}/judgment"
    ok = c.post(url, json={"submission_id": sid, "answer": PAIR}, headers=h)
    assert ok.json() == {"judgment_id": sid, "duplicate": False}
    both = c.post(url, json={"submission_id": sid, "answer": PAIR, "next": True}, headers=h).json()
    assert both["duplicate"] and both["next"]["id"] != a["id"]  # submit + next in one call
    assert c.post(url, json={"submission_id": sid, "answer": PAIR}, headers=h).json()["duplicate"]
    r = c.post(url, json={"submission_id": str(uuid.uuid4()), "answer": PAIR}, headers=h)
    assert r.status_code == 409 and "already answered" in r.json()["error"]
    b = c.post("/api/next", json={}, headers=h).json()["assignment"]
    burl = f"/api/assignments/{b['id']}/judgment"
    r = c.post(burl, json={"submission_id": "nope", "answer": PAIR}, headers=h)
    assert r.status_code == 422 and "submission_id" in r.json()["error"]
    r = c.post(
        burl, json={"submission_id": str(uuid.uuid4()), "answer": {"helpfulness": 1}}, headers=h
    )
    assert r.status_code == 422 and "answer.helpfulness" in r.json()["error"]
    assert (
        c.post(burl, content="[1]", headers={**h, "content-type": "application/json"}).status_code
        == 422
    )
    assert (
        c.post(burl, content="{", headers={**h, "content-type": "application/json"}).status_code
        == 422
    )
    assert c.get("/api/assignments/999999").status_code == 404
    assert c.get("/api/assignments/abc").status_code == 422
    assert c.get("/api/judgments/" + str(uuid.uuid4())).status_code == 404
    assert len(c.get("/api/judgments").json()["judgments"]) == 1
    progress = c.get("/api/progress").json()
    assert progress["done"] == 1 and progress["pending"] == 1 and 0 < progress["fraction"] < 1
    assert c.post("/api/undo", json={}, headers=h).json() == {"assignment_id": a["id"]}
    assert c.post("/api/logout", json={}, headers=h).json() == {"ok": True}
    assert c.get("/api/session").status_code == 401


def test_all_done_page(project):
    _, app = project
    c, csrf = login(app, "alice")
    for _ in range(20):
        r = c.get("/task")
        if r.status_code == 200:
            break
        aid, page = open_task(c)
        sid = SUBMISSION_RE.search(page).group(1)
        c.post(f"/task/{aid}", data={"csrf": csrf, "submission_id": sid, "action": "skip"})
    assert "Nothing left for you" in r.text
    assert c.post(
        "/api/next", json={}, headers={"X-CSRF-Token": c.get("/api/session").json()["csrf_token"]}
    ).json() == {"assignment": None}


# ---------------------------------------------------------------- admin


def test_admin_creates_annotators_with_invites(project):
    _, app = project
    admin, csrf = login(app, "admin")
    page = admin.get("/admin").text
    assert "alice" in page and "Add an annotator" in page
    r = admin.post("/admin/annotators", data={"csrf": csrf, "name": "carol"})
    link = re.search(r'<code id="invite-url">([^<]+)</code>', r.text).group(1)
    token = link.rsplit("/", 1)[1]
    r = admin.post("/admin/annotators", data={"csrf": csrf, "name": "carol"})
    assert r.status_code == 409
    r = admin.post("/admin/annotators", data={"csrf": csrf, "name": "<x>"})
    assert r.status_code == 422 and "&lt;x&gt;" in r.text
    carol = client(app)
    form = carol.get(f"/invite/{token}")
    assert "Welcome, carol" in form.text
    pre = CSRF_RE.search(form.text).group(1)
    short = carol.post(f"/invite/{token}", data={"csrf": pre, "password": "short"})
    assert short.status_code == 422
    r = carol.post(f"/invite/{token}", data={"csrf": pre, "password": "carols password"})
    assert r.status_code == 303 and carol.get("/task").status_code == 303
    assert client(app).get(f"/invite/{token}").status_code == 404  # used up
    assert client(app).get("/invite/made-up").status_code == 404
    cid = next(
        int(m) for m in re.findall(r"/admin/annotators/(\d+)/invite", admin.get("/admin").text)
    )
    r = admin.post(f"/admin/annotators/{cid}/invite", data={"csrf": csrf})
    assert "invite-url" in r.text
    assert admin.post("/admin/annotators/9999/invite", data={"csrf": csrf}).status_code == 404


def test_admin_agreement_leaderboard_guidelines_export(project):
    _, app = project
    users = {n: login(app, n) for n in ("alice", "bob")}
    for _ in range(6):
        for c, csrf in users.values():
            aid, page = open_task(c)
            if 'data-page="ranking"' in page:
                form = {"csrf": csrf, "submission_id": SUBMISSION_RE.search(page).group(1)}
                form.update(
                    {
                        f"{d}_rank_{i}": str(i + 1)
                        for d in ("helpfulness", "safety")
                        for i in range(4)
                    }
                )
                c.post(f"/task/{aid}", data=form)
            else:
                c.post(f"/task/{aid}", data=pairwise_form(csrf, page))
    admin, csrf = login(app, "admin")
    agreement = admin.get("/admin/agreement")
    assert agreement.status_code == 200 and "Krippendorff" in agreement.text
    assert 'id="per-annotator"' in agreement.text and "alice" in agreement.text
    board = admin.get("/admin/leaderboard?dimension=helpfulness")
    assert board.status_code == 200 and "policy-0" in board.text and "policy-1" in board.text
    assert admin.get("/admin/leaderboard?dimension=fun").status_code == 422
    r = admin.post("/admin/guidelines", data={"csrf": csrf, "text": "## Version two"})
    assert r.headers["location"] == "/admin/guidelines"
    assert "Version two" in admin.get("/admin/guidelines").text
    assert admin.post("/admin/guidelines", data={"csrf": csrf, "text": " "}).status_code == 422
    r = admin.get("/admin/export?format=preference&dimension=helpfulness&consensus=raw")
    assert r.status_code == 200
    rows = [json.loads(line) for line in r.text.splitlines()]
    assert rows and all({"prompt", "chosen", "rejected", "annotator"} <= set(row) for row in rows)
    assert admin.get("/admin/export?format=csv").status_code == 422
