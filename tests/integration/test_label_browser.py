"""A real browser (Debian's chromium through Selenium) labels with the keyboard only:
log in, judge pairwise tasks, undo, rank four responses on two dimensions; then the
database and the export hold exactly those labels, and no Content-Security-Policy
violation or script error happened on the way. Writes the README screenshot when
``RLHFKIT_UPDATE_SCREENSHOT=1``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import select

from label_support import Server, chromium, people_in
from rlhfkit.data.types import Message
from rlhfkit.feedback.export import export_labels
from rlhfkit.feedback.store import CandidateSet, Store, add_guidelines, import_candidates
from rlhfkit.feedback.store.reading import iter_labeled_tasks
from rlhfkit.feedback.store.schema import Judgment, Retraction

SCREENSHOT = Path(__file__).parents[2] / "docs" / "img" / "labeling-pairwise.png"
DRAG_LAST_TO_TOP = """
const items = document.querySelectorAll(".rank-item");
const source = items[items.length - 1], target = items[0], data = new DataTransfer();
source.dispatchEvent(new DragEvent("dragstart", {dataTransfer: data, bubbles: true}));
target.dispatchEvent(new DragEvent("dragover", {dataTransfer: data, bubbles: true, cancelable: true}));
target.dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
"""  # Selenium cannot drive HTML5 drag and drop; these are the browser's own events
GUIDE = """# How to judge

**Helpfulness**: a correct, direct answer beats a wordy one; a wrong number is bad.

**Safety**: refusing a harmful request is safe; helping with harm is not.
"""


@pytest.fixture
def browser(tmp_path):
    yield from chromium(tmp_path)


@pytest.fixture
def project(tmp_path, task):
    db = str(tmp_path / "labels.db")
    store = Store(db)
    sets = [
        CandidateSet((Message("user", p.text),), (task.concise(p), task.candidates(p)[1]), ("sft", "base"))
        for p in task.prompts("train", "arithmetic")[30:32]
    ]  # fmt: skip
    harmful = task.prompts("train", "harmful")[0]
    sets.append(
        CandidateSet(
            (Message("user", harmful.text),),
            ("I can't help with that.", *task.candidates(harmful)[-1:], "Sure! <script>alert(1)</script>",
             "Sorry, I won't help with that."),
            ("sft", "base", "base", "sft"),
        )
    )  # fmt: skip
    import_candidates(store, sets)
    add_guidelines(store, GUIDE)
    people_in(store, "alice")
    store.close()
    return db


def press(driver, *keys: str) -> None:
    from selenium.webdriver.common.by import By

    body = driver.find_element(By.TAG_NAME, "body")
    for key in keys:
        body.send_keys(key)


def wait_until(driver, condition) -> None:
    """A key press that submits a form returns before the browser navigates: wait
    for the page the test expects instead of reading the URL at once."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 15).until(condition)


def wait_for_saved(driver, old_url: str) -> None:
    wait_until(driver, lambda d: d.current_url != old_url and "saved=" in d.current_url)


def judgments(db: str) -> list[Judgment]:
    store = Store(db)
    with store.read() as s:
        rows = s.scalars(select(Judgment).order_by(Judgment.created_at)).all()
        retracted = set(s.scalars(select(Retraction.judgment_id)))
    store.close()
    return [j for j in rows if j.id not in retracted]


def test_keyboard_labeling_in_chromium(browser, project, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    db = project
    with Server(db, tmp_path / "server.log") as server:
        browser.get(server.url + "/login")
        browser.find_element(By.NAME, "name").send_keys("alice")
        browser.find_element(By.NAME, "password").send_keys("password-alice", Keys.ENTER)
        wait_until(browser, lambda d: "/task/" in d.current_url)
        assert browser.find_element(By.ID, "response-A").is_displayed()
        if os.environ.get("RLHFKIT_UPDATE_SCREENSHOT") == "1":
            press(browser, "a", "2")  # show a half-filled form in the picture
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(SCREENSHOT))
            browser.refresh()

        # 1: A better ("better") on helpfulness, a tie on safety, Enter
        url = browser.current_url
        press(browser, "a", "2", "t", Keys.ENTER)
        wait_for_saved(browser, url)
        first = judgments(db)
        assert [j.answer for j in first] == [
            {
                "helpfulness": {"choice": "A", "margin": "better"},
                "safety": {"choice": "tie", "margin": None},
            }
        ]
        assert first[0].guideline_version == 1 and first[0].time_spent_ms > 0

        # 2: B significantly better, both bad on safety; then undo it with "u" and redo
        url = browser.current_url
        press(browser, "b", "1", "x", Keys.ENTER)
        wait_for_saved(browser, url)
        assert len(judgments(db)) == 2
        url = browser.current_url
        press(browser, "u")
        wait_until(browser, lambda d: d.current_url != url)
        assert len(judgments(db)) == 1  # retracted (still stored, append-only)
        url = browser.current_url
        press(browser, "s", "b", "3", "h", "b", "4", Keys.ENTER)  # dimensions in any order
        wait_for_saved(browser, url)
        second = judgments(db)[1].answer
        assert second == {
            "helpfulness": {"choice": "B", "margin": "negligibly_better"},
            "safety": {"choice": "B", "margin": "slightly_better"},
        }

        # 3: the ranking page: "1".."4" rank the selected response and move down
        # (helpfulness, with a tie); "s" switches to safety, then a drag of the last
        # response to the top ranks safety by the new order
        wait_until(
            browser,
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-page") == "ranking",
        )
        assert "<script>alert(1)</script>" in browser.find_element(By.ID, "ranking").text
        url = browser.current_url
        press(browser, "1", "2", "2", "4", "s")
        browser.execute_script(DRAG_LAST_TO_TOP)
        press(browser, Keys.ENTER)
        wait_for_saved(browser, url)
        wait_until(browser, lambda d: "Nothing left for you" in d.page_source)
        ranking = judgments(db)[2]
        assert ranking.answer == {"helpfulness": [1, 2, 2, 4], "safety": [2, 3, 4, 1]}

        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []  # no CSP violation, no script error

    store = Store(db)
    tasks = list(iter_labeled_tasks(store))
    ranked = next(t for t in tasks if t.kind == "ranking")
    shown = ranking.shown_order  # the export maps ranks back from the shown order
    expected = [[1, 2, 2, 4][shown.index(rid)] for rid in ranked_ids(db, ranked.id)]
    assert list(ranked.for_dimension("helpfulness")[0].ranks) == expected
    out = tmp_path / "prefs.jsonl"
    summary = export_labels(store, out, consensus="raw")
    assert summary.tasks == 3 and summary.rows == 2 + 5  # 2 pairs + C(4,2) - 1 tie


def ranked_ids(db: str, task_id: int) -> list[int]:
    from rlhfkit.feedback.store.schema import Task

    store = Store(db)
    with store.read() as s:
        return list(s.get_one(Task, task_id).response_ids)
