"""A real headless Chromium walks the served dashboard through one sitting, as issue 19's "done
when" lists it: the one-click demo → a second edit → undo → a third edit → select the first, with
every tab checked after each step to name the selected edit and match it; on the way, the PCA
legend survives the layer slider, a refused value (steps = -5) leaves the timeline and the loss
curve as they were and says so once, the Chat tab's badges name the right part for a forget fact,
a retain fact and an unrelated prompt, a two-turn chat keeps its history (the second answer is
the one the model gives after the first turn, not the one it gives alone), and a reload returns
to the same session.

Tiny synthetic model and fits of two steps by default. The README's screenshots come from this
test on the default model: ``UNLEARNVIZ_SCREENSHOTS=assets/screenshots UNLEARNVIZ_E2E_MODEL=default
OMP_NUM_THREADS=1 pytest tests/test_browser_walk.py`` writes every tab as the demo leaves it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from app_server import Server
from test_browser import PLOT_TABS, TABS, browser_page, open_tab  # noqa: F401  (the fixture: one Chromium)
from test_browser_shown import check_every_tab, selected_tag
from test_ui_sessions import chat, grid, reopen, run_edit, seen, timeline, wait_rows

pytestmark = [pytest.mark.browser, pytest.mark.slow]
MODEL = os.environ.get("UNLEARNVIZ_E2E_MODEL", "synthetic")
DATA = "builtin:demo" if MODEL == "default" else "synthetic"
UNRELATED = "What is the chemical symbol for gold?"
EDIT_MS = 900_000 if MODEL == "default" else 240_000  # an edit's fit and its after-edit evaluation, at most
# Gradio 6's toast, as served: <div role="status" data-testid="toast-body" class="toast-body warning">
# (info, warning, error alike); the walk's undo shows one, so this is seen to match a real toast
TOAST = "[data-testid=toast-body]"


def flat(text: str) -> str:
    """Text as compared across the page and the model: whitespace runs as one space."""
    return " ".join(text.split())


def save_screenshots(page, shots: Path) -> None:
    """Every tab as the demo left it (the README's screenshots, ``NN-tab-name.png``), each plot drawn first."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "00-demo.png"), full_page=False)
    for i, name in enumerate([*TABS, "Present"], 1):
        panel = open_tab(page, name)
        if name in PLOT_TABS:  # a plot draws after its tab shows: wait for its SVG, not a fixed time
            try:
                panel.locator(".js-plotly-plot .main-svg").first.wait_for(state="visible", timeout=60_000)
            except PlaywrightTimeout:
                pass  # the walk's own checks below say what is missing
        if name == "Present":  # opening it answers the two questions: shot once they are in
            try:
                panel.locator("#uv-present .uv-pairs").wait_for(state="visible", timeout=300_000)
            except PlaywrightTimeout:
                pass
        page.wait_for_timeout(800)  # the tab's transition and the plots' fonts settle
        page.screenshot(path=str(shots / f"{i:02d}-{name.lower().replace(' ', '-')}.png"), full_page=True)


def check_pca_legend_survives_the_slider(page) -> None:
    """Moving the PCA layer slider to another layer keeps the legend's entries (forget/retain ·
    original/edited) and shows that layer's points."""
    from playwright.sync_api import expect

    panel = open_tab(page, "Geometry")
    plot = panel.locator(".js-plotly-plot").first
    plot.locator(".slider-container").wait_for(state="visible", timeout=60_000)
    legend = plot.locator(".legend .traces")

    def entries() -> list[str]:  # SVG text: its textContent (SVG has no innerText)
        return sorted(legend.evaluate_all("els => els.map(e => e.textContent.trim())"))

    names = entries()
    assert len(names) >= 4 and any("forget" in n for n in names), names
    grip = plot.locator(".slider-container .slider-grip-rect")  # where it sits says which layer is shown
    start = grip.get_attribute("transform")
    touch = plot.locator(".slider-container .slider-rail-touch-rect").first
    touch.scroll_into_view_if_needed()
    rail = touch.bounding_box()
    page.mouse.click(rail["x"] + rail["width"] * 0.95, rail["y"] + rail["height"] / 2)  # the last layer
    expect(grip).not_to_have_attribute("transform", start, timeout=10_000)
    page.wait_for_timeout(500)  # the restyle lands
    assert entries() == names, (grip.get_attribute("transform"), entries())
    assert plot.locator(".scatterlayer .trace .point").count() > 0, "the slid-to layer shows no points"


def check_bad_value_keeps_the_edit(page, tag: str) -> None:
    """steps = -5 is refused in one message, on the field (no toast, no second copy); the timeline,
    the loss curve and the status line still show the selected edit (no "Error" pills in their
    place). The memory plan line above the status keeps its text: the refusal is on the page once."""
    from playwright.sync_api import expect

    rows = timeline(page)
    panel = open_tab(page, "Unlearn")
    status = panel.get_by_text(re.compile(r"Selected: edit #")).first.inner_text()
    run_edit(page, steps=-5, method="rmu")
    refusal = re.compile(r"'steps'=-5 is below its minimum 1")
    on_field = page.locator(".validation-error", has_text=refusal)
    expect(on_field.first).to_be_visible(timeout=30_000)
    page.wait_for_timeout(3000)  # a second message, or a redraw of the outputs, would be here by now
    assert [m.is_visible() for m in on_field.all()] == [True], on_field.all_inner_texts()
    toasts = page.locator(TOAST, has_text=refusal)  # the selector the walk's undo toast is seen to match
    assert toasts.count() == 0, toasts.all_inner_texts()
    plan = page.locator("#uv-memory-plan")  # the memory-plan line keeps its text: no second copy there
    assert plan.inner_text().strip() and not refusal.search(plan.inner_text()), plan.inner_text()
    assert timeline(page) == rows
    panel = open_tab(page, "Unlearn")
    expect(panel.locator(".js-plotly-plot .gtitle").first).to_contain_text(tag)
    assert panel.get_by_text(re.compile(r"Selected: edit #")).first.inner_text() == status
    assert panel.get_by_text("Error", exact=True).count() == 0, "an output shows Gradio's Error pill"
    assert selected_tag(page, int(tag.split("#")[1].split()[0])) == tag


def check_badges(page) -> None:
    """The badge beside the prompt for a prompt about a forget subject, one about a retain subject
    (in other words than the set's own questions) and one about neither."""
    from playwright.sync_api import expect

    from unlearnviz.data import load_data

    d = load_data(DATA)
    forget, retain = d.forget_mcq[0].subject.strip(), d.retain_mcq[0].subject.strip()
    assert forget.casefold() not in UNRELATED.casefold() and retain.casefold() not in UNRELATED.casefold()
    panel = open_tab(page, "Chat")
    box, badge = panel.get_by_label("Prompt"), panel.get_by_label("Concerns")
    for prompt, want in ((f"Tell me everything you know about {forget}.", f"forget fact: {forget}"),
                         (f"What do people remember {retain} for?", f"retain fact: {retain}"),
                         (UNRELATED, "neither: names no subject of the loaded data")):
        box.fill(prompt)
        expect(badge).to_have_value(want, timeout=30_000)
    box.fill("")


def expected_answers(prompts: list[str]) -> tuple[list[str], str]:
    """The original model's answers to ``prompts`` as one conversation (greedy, the page's 48
    tokens), computed here on the same weights; and its answer to the last prompt asked alone."""
    from unlearnviz.data.synthetic import resolve_model_source
    from unlearnviz.generation import GenSettings, side_by_side
    from unlearnviz.model import LoadOptions, load_model

    lm = load_model(resolve_model_source(MODEL), LoadOptions(device="cpu"))
    settings = GenSettings(max_new_tokens=48, temperature=0.0)
    history: list[tuple[str, str]] = []
    for p in prompts:
        answer = side_by_side(lm, p, None, settings, history_original=history, history_edited=history)
        history.append((p, answer.texts(lm.tokenizer)[0]))
    alone = side_by_side(lm, prompts[-1], None, settings).texts(lm.tokenizer)[0]
    return [a for _, a in history], alone


def check_two_turn_chat(page) -> None:
    """A new conversation of two turns: both panes show both prompts and both answers, and the
    original's second answer is the one it gives after the first turn (which differs from the
    one it gives to the second prompt alone, so this can tell)."""
    from playwright.sync_api import expect

    from unlearnviz.data import load_data

    d = load_data(DATA)
    prompts = [d.forget_mcq[0].question.strip(), d.retain_mcq[0].question.strip()]
    want, alone = expected_answers(prompts)
    assert flat(want[1]) != flat(alone), "the prompts chosen cannot tell a follow-up from a fresh question"
    panel = open_tab(page, "Chat")
    panel.get_by_role("button", name="New conversation").click()
    page.wait_for_function("document.querySelectorAll('[role=tabpanel] [data-testid=bot]').length == 0",
                           timeout=30_000)
    panel.get_by_text("Token details of the last turn", exact=False).first.click()  # open: its table shows
    details = panel.locator(".virtual-table-viewport").first.locator(".virtual-row")
    for p in prompts:
        chat(page, p)  # returns once the turn shows (its first token), when the details table is emptied
        # a turn is whole once its token details are in: Enter while one streams is ignored (Gradio's
        # trigger mode "once"), and the default model streams for longer than chat() waits
        expect(details.first).to_be_visible(timeout=EDIT_MS)
    panel = open_tab(page, "Chat")
    users = [flat(t) for t in panel.locator("[data-testid=user]").all_inner_texts()]
    bots = [flat(t) for t in panel.locator("[data-testid=bot]").all_inner_texts()]
    assert users == [flat(p) for p in prompts] * 2, users  # each pane: turn 1, turn 2
    assert len(bots) == 4 and all(bots), bots
    assert bots[:2] == [flat(a) for a in want], (bots[:2], want)  # the original's pane, turn by turn
    assert "<|" not in panel.inner_text()


def test_a_sitting_walk_every_tab_names_the_selected_edit(browser_page):  # noqa: F811
    from playwright.sync_api import expect

    page = browser_page
    page.on("dialog", lambda d: d.accept())
    server = Server("--model", MODEL, "--data", DATA, env={"OMP_NUM_THREADS": "1"})
    try:
        page.goto(server.url, wait_until="load", timeout=120_000)
        page.get_by_role("button", name="One-click demo").first.click()
        expect(page.locator("#uv-demo-status")).to_contain_text("Demo complete", timeout=900_000)
        first = selected_tag(page, 1)
        if os.environ.get("UNLEARNVIZ_SCREENSHOTS"):
            save_screenshots(page, Path(os.environ["UNLEARNVIZ_SCREENSHOTS"]))
        lines = check_every_tab(page, first)
        assert all(line.startswith(("Shows", "Answers")) for line in lines.values()), lines
        check_pca_legend_survives_the_slider(page)
        check_bad_value_keeps_the_edit(page, first)
        check_badges(page)

        run_edit(page, steps=2, method="rmu")  # a second edit
        wait_rows(page, 2, timeout=EDIT_MS)  # fitted and measured (minutes on the default model)
        second = selected_tag(page, 2)
        check_every_tab(page, second)

        open_tab(page, "Unlearn").get_by_role("button", name="Undo last edit").click()
        page.locator("#uv-undo-confirm").get_by_role("button", name="Yes, undo it").click()
        # the positive control of the "no toast" check above: a real toast, matched by TOAST
        expect(page.locator(TOAST, has_text="Undid 2. rmu; Redo brings it back").first).to_be_visible(
            timeout=30_000)
        assert selected_tag(page, 1) == first
        wait_rows(page, 1)
        check_every_tab(page, first)

        run_edit(page, steps=2, method="mrp")  # a third edit, at position 2 again: another hash
        wait_rows(page, 2, timeout=EDIT_MS)
        third = selected_tag(page, 2, not_hash=second)
        assert third != second
        check_every_tab(page, third)

        box = open_tab(page, "Unlearn").locator("#uv-selected-edit input")  # select the first
        box.fill("1")
        box.press("Enter")
        assert selected_tag(page, 1) == first
        lines = check_every_tab(page, first)
        assert lines["evaluate"].startswith(f"Shows {first}"), lines

        check_two_turn_chat(page)
        before = seen(page)
        assert [r.split()[0] for r in before["timeline"]] == ["1", "2"], before["timeline"]
        # a reload: the same timeline, table and chat (the restore redraws every tab: slow on a busy machine)
        assert reopen(page, server.url, 2, timeout=EDIT_MS) == before
        assert selected_tag(page, 1) == first
        assert grid(open_tab(page, "Unlearn"))[1:] == before["timeline"]
        assert server.alive()
    finally:
        server.stop()
