"""A real headless Chromium walks the served dashboard through a sitting that used to leave views
showing another edit than the selected one: the demo → a second edit (a short RMU) → undo → a third
edit (a short MRP) → select the first → compare it with the second. After each step every tab
names an edit, and it is the selected one: shown for it (Unlearn, Evaluate, which recompute from
what the session holds) or visibly stale naming the selected one (the analysis views, the chat),
and a one-click refresh makes a stale view current. Tiny synthetic model, fits of a few steps."""

from __future__ import annotations

import re

import pytest
from app_server import Server
from test_browser import browser_page, open_tab  # noqa: F401  (the fixture: one headless Chromium)

pytestmark = [pytest.mark.browser, pytest.mark.slow]
SELECTED = re.compile(r"Selected: (edit #(\d+) · [0-9a-f]{6})")
VIEWS = {"Importance": "importance", "Geometry": "geometry", "Residual knowledge": "residual", "Chat": "chat",
         "Evaluate": "evaluate"}
ALWAYS_CURRENT = ("evaluate",)  # redrawn from the session's measurements after every change


def selected_tag(page, number: int, not_hash: str | None = None) -> str:
    """The selected edit's tag in the Unlearn status once it names edit ``number`` (and, where
    given, a hash other than ``not_hash``: a new edit at a position seen before)."""
    from playwright.sync_api import expect

    open_tab(page, "Unlearn")
    status = page.get_by_text(re.compile(rf"Selected: edit #{number} · ")).first
    expect(status).to_be_visible(timeout=180_000)
    for _ in range(60):
        tag = SELECTED.search(status.inner_text()).group(1)
        if tag != not_hash:
            return tag
        page.wait_for_timeout(500)
    raise AssertionError(f"the status still names {not_hash}")


def check_every_tab(page, tag: str) -> dict[str, str]:
    """Every tab names ``tag``: the timeline marks its row, the loss curve is its own, and each view
    either shows it or says it is stale and that ``tag`` is selected now. Returns each view's line."""
    from playwright.sync_api import expect

    number, short = re.match(r"edit #(\d+) · ([0-9a-f]+)", tag).groups()
    panel = open_tab(page, "Unlearn")
    cell = "[role=gridcell][data-row='{}'][data-col='{}']"
    marks = panel.locator("[role=gridcell][data-col='8']").all_inner_texts()
    rows = [i for i, m in enumerate(marks) if "◀ selected" in m]
    assert len(rows) == 1, marks
    assert panel.locator(cell.format(rows[0], 0)).inner_text().strip() == number
    assert panel.locator(cell.format(rows[0], 7)).inner_text().strip() == short
    expect(panel.locator(".js-plotly-plot .gtitle").first).to_contain_text(tag, timeout=30_000)
    lines = {}
    for name, view in VIEWS.items():
        open_tab(page, name)
        line = page.locator(f"#uv-tag-{view}")
        current = rf"Shows {re.escape(tag)}|Answers come from {re.escape(tag)}"
        stale = rf"Stale:.*the selected one is now {re.escape(tag)}"
        expect(line).to_contain_text(re.compile(current if view in ALWAYS_CURRENT else f"{current}|{stale}"),
                                     timeout=30_000)
        text = line.inner_text()  # from the line itself on (a redraw's timer may sit beside it a moment)
        lines[view] = text[re.search(r"Shows|Answers|⚠|Stale", text).start():].strip()
        assert not re.search(r"edit #\d+ · ", lines[view].split("now")[-1].replace(tag, "")), lines[view]
        if view == "evaluate":
            expect(page.locator("[role=tabpanel]:visible [role=columnheader]", has_text=tag).first).to_be_visible()
        refresh = page.locator(f"#uv-refresh-{view}")
        if view in ("importance", "geometry", "residual"):  # the refresh button shows exactly when stale
            assert refresh.is_visible() == ("Stale" in lines[view]), (view, lines[view])
    return lines


def run_short_edit(page, method: str, steps: int) -> None:
    panel = open_tab(page, "Unlearn")
    panel.get_by_label(method, exact=True).check()
    panel.get_by_text(f"{method.upper()} hyperparameters", exact=True).click()  # open its accordion
    box = panel.get_by_label("steps", exact=True).locator("visible=true").first
    box.fill(str(steps))
    box.press("Tab")
    panel.get_by_role("button", name="Run edit").click()


def test_every_tab_names_the_selected_edit_through_a_sitting(browser_page):  # noqa: F811
    from playwright.sync_api import expect

    page = browser_page
    page.on("dialog", lambda d: d.accept())  # an undo that asks first
    server = Server("--model", "synthetic", "--data", "synthetic")
    try:
        page.goto(server.url, wait_until="load", timeout=120_000)
        page.get_by_role("button", name="One-click demo").first.click()
        banner = page.locator("#uv-demo-status")
        expect(banner).to_contain_text("Demo complete", timeout=300_000)
        first = selected_tag(page, 1)
        expect(banner).to_contain_text(first)
        lines = check_every_tab(page, first)
        assert all(line.startswith(("Shows", "Answers")) for line in lines.values()), lines  # the demo filled all

        run_short_edit(page, "rmu", 4)  # a second edit: Evaluate follows it, the analyses say they are stale
        second = selected_tag(page, 2)
        lines = check_every_tab(page, second)
        assert "Stale" in lines["residual"] and first in lines["residual"], lines
        assert "Demo complete" not in banner.inner_text()  # the banner no longer claims every tab shows it

        open_tab(page, "Unlearn").get_by_role("button", name="Undo last edit").click()
        # the undo asks in the page first (its confirm row appears after the click's round trip)
        page.locator("#uv-undo-confirm").get_by_role("button", name="Yes, undo it").click(timeout=60_000)
        assert selected_tag(page, 1) == first  # the removed edit's numbers are shown nowhere
        check_every_tab(page, first)

        run_short_edit(page, "mrp", 2)  # a third edit, at position 2 again: another hash
        third = selected_tag(page, 2, not_hash=second)
        assert third != second
        check_every_tab(page, third)

        panel = open_tab(page, "Unlearn")
        box = panel.locator("#uv-selected-edit input")
        box.fill("1")
        box.press("Enter")
        selected_tag(page, 1)
        lines = check_every_tab(page, first)
        assert lines["evaluate"].startswith(f"Shows {first}")

        box = open_tab(page, "Unlearn").locator("#uv-compare-edit input")  # compare #1 with #2 side by side
        box.fill("2")
        box.press("Enter")
        open_tab(page, "Evaluate")
        heads = page.locator("[role=tabpanel]:visible [role=columnheader]")
        expect(heads.filter(has_text=third).first).to_be_visible(timeout=30_000)  # original | #1 | #2
        expect(heads.filter(has_text=first).first).to_be_visible()
        panel = open_tab(page, "Geometry")
        expect(page.locator("#uv-tag-geometry")).to_contain_text("Stale", timeout=30_000)
        page.locator("#uv-refresh-geometry").click()
        expect(page.locator("#uv-tag-geometry")).to_contain_text(f"Shows {first}", timeout=120_000)
        expect(page.locator("#uv-tag-geometry")).to_contain_text(f"beside {third}")
        expect(panel.locator(".js-plotly-plot .gtitle", has_text=third).first).to_be_visible(timeout=30_000)
        assert not page.locator("#uv-refresh-geometry").is_visible()
        assert server.alive()
    finally:
        server.stop()
