"""The page keeps its session (unlearnviz/ui/sessions.py): a real headless Chromium on the real
server finds the same timeline, metrics and chat after a reload and in a second tab; undo asks
first and redo brings the edit back with its numbers; with --state-dir a session of three stacked
edits and a chat survives ``kill -9`` of the server and a restart on the same folder. Over HTTP,
an API client reattaches to its session by id after a restart. Tiny synthetic model, fits of two
steps."""

from __future__ import annotations

import re
import signal

import pytest
from app_server import Server, free_port
from gradio_client import Client
from test_browser import browser_page, open_tab  # noqa: F401  (the fixture: one headless Chromium)

from unlearnviz.state_folder import list_saved

PROMPT = "The capital of Velmora is"
FLAGS = ("--model", "synthetic", "--data", "synthetic")


def grid(panel) -> list[str]:
    """A Dataframe's header and rows as shown. Gradio draws the rows as a virtual list of the rows
    in view (the <table> holds the header and an invisible sizing copy): scrolled into view first."""
    view = panel.locator(".virtual-table-viewport").first
    view.scroll_into_view_if_needed()
    rows = view.locator(".virtual-row")
    return [view.locator("thead").first.inner_text().split()] + [
        r for r in (rows.nth(i).inner_text().strip() for i in range(rows.count())) if r]


def timeline(page) -> list[str]:
    return grid(open_tab(page, "Unlearn"))[1:]


def wait_rows(page, n: int, timeout: float = 240_000) -> list[str]:
    """The timeline once it has ``n`` rows, each with its forget/retain figures (measured)."""
    rows: list[str] = []
    for _ in range(int(timeout / 1000)):
        rows = timeline(page)
        if len(rows) == n and all(re.search(r"\d+%", r) for r in rows):
            return rows
        page.wait_for_timeout(1000)
    raise AssertionError(f"the timeline did not reach {n} measured rows: {rows}")


def run_edit(page, steps: int = 2, method: str = "rmu") -> None:
    panel = open_tab(page, "Unlearn")
    panel.get_by_label(method, exact=True).check()
    accordion = panel.get_by_text(f"{method.upper()} hyperparameters", exact=True)
    accordion.wait_for(state="visible")  # the method's fields replace the last one's once the radio's change lands
    box = panel.get_by_label("steps", exact=True).locator("visible=true")
    if not box.count():
        accordion.click()
    box.first.fill(str(steps))
    box.first.press("Tab")
    panel.get_by_role("button", name="Run edit").click()


def chat(page, prompt: str) -> None:
    panel = open_tab(page, "Chat")
    before = panel.locator("[data-testid=bot]").count()
    box = panel.get_by_label("Prompt")
    box.fill(prompt)
    box.press("Enter")
    page.wait_for_function(f"document.querySelectorAll('[role=tabpanel] [data-testid=bot]').length >= {before + 2}",
                           timeout=120_000)
    page.wait_for_timeout(1500)  # the stream finishes


def seen(page) -> dict:
    """What a visitor reads of the session: the timeline (with each edit's figures), the Evaluate
    table, both chat panes."""
    rows = timeline(page)
    evaluate = open_tab(page, "Evaluate")
    evaluate.locator(".virtual-row").first.wait_for(timeout=60_000)
    table = grid(evaluate)
    panel = open_tab(page, "Chat")
    page.wait_for_function("document.querySelectorAll('[role=tabpanel] [data-testid=bot]').length >= 2",
                           timeout=60_000)
    return {"timeline": rows, "evaluate": table,
            "users": panel.locator("[data-testid=user]").all_inner_texts(),
            "bots": panel.locator("[data-testid=bot]").all_inner_texts()}


def reopen(page, url: str, rows: int, timeout: float = 120_000) -> dict:
    page.goto(url, wait_until="load", timeout=120_000)
    wait_rows(page, rows, timeout=timeout)
    return seen(page)


@pytest.mark.browser
@pytest.mark.slow
def test_reload_and_a_second_tab_return_to_the_session_undo_asks_redo_restores(browser_page):  # noqa: F811
    from playwright.sync_api import expect

    page = browser_page
    server = Server(*FLAGS)
    try:
        page.goto(server.url, wait_until="load", timeout=120_000)
        run_edit(page)
        wait_rows(page, 1)
        chat(page, PROMPT)
        before = seen(page)
        assert len(before["timeline"]) == 1 and "rmu" in before["timeline"][0] and len(before["bots"]) == 2
        assert reopen(page, server.url, 1) == before  # a reload
        # a second tab of the same browser: a page with this one's local storage (the fixture's page
        # owns its context, which takes no second page)
        second = page.context.browser.new_context(storage_state=page.context.storage_state(),
                                                  viewport={"width": 1400, "height": 1000})
        try:
            assert reopen(second.new_page(), server.url, 1) == before
        finally:
            second.close()
        note = page.locator("#uv-session-note")
        expect(note).to_contain_text("kept in this server's memory")

        panel = open_tab(page, "Unlearn")  # undo asks first; "Keep it" keeps it
        panel.get_by_role("button", name="Undo last edit").click()
        question = page.locator("#uv-undo-confirm")
        expect(question).to_contain_text("Undo 1. rmu", timeout=30_000)
        question.get_by_role("button", name="Keep it").click()
        expect(question).to_be_hidden()
        assert timeline(page) == before["timeline"]
        panel.get_by_role("button", name="Undo last edit").click()
        question.get_by_role("button", name="Yes, undo it").click()
        for _ in range(60):
            if not timeline(page):
                break
            page.wait_for_timeout(500)
        assert timeline(page) == [], "the undone edit is still on the timeline"
        panel.get_by_role("button", name="Redo").click()
        assert wait_rows(page, 1, timeout=60_000) == before["timeline"]  # the same edit, the same figures
        assert server.alive()
    finally:
        server.stop()


@pytest.mark.browser
@pytest.mark.slow
def test_three_edits_and_a_chat_survive_kill_9(browser_page, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    page = browser_page
    state, port = tmp_path / "state", free_port()
    server = Server(*FLAGS, "--state-dir", str(state), port=port)
    try:
        page.goto(server.url, wait_until="load", timeout=120_000)
        for n in (1, 2, 3):
            run_edit(page)
            wait_rows(page, n)
        chat(page, PROMPT)
        before = seen(page)
        assert [r.split()[0] for r in before["timeline"]] == ["1", "2", "3"], before["timeline"]
        for _ in range(120):  # the chat's autosave lands just after its last streamed update: wait for it
            # on disk, as the operator's `sessions list` shows it
            saved = list_saved(state)
            if saved and len(saved[0]["edits"]) == 3 and saved[0]["chats"] == 1:
                break
            page.wait_for_timeout(500)
        else:
            raise AssertionError(f"the session was not autosaved: {list_saved(state)}")
        server.proc.send_signal(signal.SIGKILL)
        assert server.proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        server.stop()
    server = Server(*FLAGS, "--state-dir", str(state), port=port)
    try:
        assert reopen(page, server.url, 3) == before  # the same timeline, metrics and chat
        expect(page.locator("#uv-session-note")).to_contain_text("survives a reload and a server restart")
        panel = page.locator("#uv-sessions")  # a new session, then back to the saved one from the list
        panel.get_by_text("Session: reopen").click()
        panel.get_by_role("button", name="New session").click()
        page.wait_for_timeout(3000)  # the page reloads onto a fresh session
        page.wait_for_load_state("load")
        expect(page.locator("#uv-session-note")).to_contain_text("Session", timeout=60_000)
        assert timeline(page) == []
        panel = page.locator("#uv-sessions")
        panel.get_by_text("Session: reopen").click()
        panel.get_by_label(re.compile("Your sessions")).click()
        option = page.get_by_role("option", name=re.compile(r"3 edits, 1 chat turn"))
        expect(option).to_be_visible(timeout=30_000)
        option.click()
        panel.get_by_role("button", name="Open", exact=True).click()
        page.wait_for_timeout(3000)
        page.wait_for_load_state("load")
        assert wait_rows(page, 3, timeout=120_000) == before["timeline"]
        assert server.alive()
    finally:
        server.stop()


@pytest.mark.slow
def test_an_api_client_reattaches_after_a_restart(tiny_model_path, tmp_path):
    state = tmp_path / "state"
    server = Server(*FLAGS, "--state-dir", str(state))
    try:
        c = Client(server.url, verbose=False)
        sid = c.predict("", api_name="/session")["id"]
        c.predict("rmu", {"steps": 2}, api_name="/run_edit")
        answer = c.predict(PROMPT, 4, 0.0, api_name="/chat")[-1]
        metrics = c.predict(False, api_name="/evaluate")[-1]
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=30)
    finally:
        server.stop()
    server = Server(*FLAGS, "--state-dir", str(state))
    try:
        c = Client(server.url, verbose=False)
        back = c.predict(sid, api_name="/session")
        assert back["id"] == sid and back["edits"] == ["1. rmu"] and back["chats"] == 1
        assert c.predict(False, api_name="/evaluate")[-1] == metrics  # as measured, not refitted
        assert c.predict(api_name="/conversation")["conversation"][-1]["edited"] == answer["edited"]
        with pytest.raises(Exception, match="not a session id"):
            c.predict("../../etc", api_name="/session")
        with pytest.raises(Exception, match="no such session"):
            c.predict("A" * 32, api_name="/session")
        assert server.alive()
    finally:
        server.stop()
