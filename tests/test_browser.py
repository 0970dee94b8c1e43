"""A real headless Chromium drives the served dashboard: the one-click demo fills every tab.

Screenshots of each tab are written to $UNLEARNVIZ_SCREENSHOTS (default: a temporary folder); the
README's screenshots come from the longer walk, tests/test_browser_walk.py, run on the default model
(``UNLEARNVIZ_SCREENSHOTS=assets/screenshots UNLEARNVIZ_E2E_MODEL=default pytest tests/test_browser_walk.py``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from app_server import Server

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PLOT_TABS = ("Unlearn", "Importance", "Geometry", "Residual knowledge", "Evaluate")
TABS = ["Model", "Data", "Unlearn", "Importance", "Geometry", "Residual knowledge", "Chat", "Evaluate", "Export"]


@pytest.fixture(scope="module")
def browser_page():
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing in CI: `make test` installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        yield page
        browser.close()


def open_tab(page, name: str):
    """Click a tab by its name; the panel it shows."""
    page.get_by_role("tab", name=name, exact=True).first.click()
    return page.locator("[role=tabpanel]:visible").first


def test_demo_fills_every_tab(browser_page, tiny_model_path, tmp_path):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    model = os.environ.get("UNLEARNVIZ_E2E_MODEL", "synthetic")
    data = "builtin:demo" if model == "default" else "synthetic"
    shots = Path(os.environ.get("UNLEARNVIZ_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    server = Server("--model", model, "--data", data)
    page = browser_page
    try:
        page.goto(server.url, wait_until="load", timeout=120_000)
        page.get_by_role("button", name="One-click demo").first.wait_for(timeout=120_000)
        page.get_by_role("button", name="One-click demo").first.click()
        page.get_by_text("Demo complete").first.wait_for(timeout=300_000)
        page.screenshot(path=str(shots / "00-demo.png"), full_page=False)
        seen_plots = {}
        for i, name in enumerate(TABS, 1):
            page.get_by_role("tab", name=name, exact=True).first.click()
            panel = page.locator("[role=tabpanel]:visible").first
            if name in PLOT_TABS:  # a plot draws after its tab shows: wait for its SVG, not a fixed time
                try:
                    panel.locator(".js-plotly-plot .main-svg").first.wait_for(state="visible", timeout=60_000)
                except PlaywrightTimeout:
                    pass  # counted (as missing) and asserted below, after every tab's screenshot
            page.wait_for_timeout(800)  # the tab's transition and the plots' fonts settle
            seen_plots[name] = panel.locator(".js-plotly-plot").count()
            page.screenshot(path=str(shots / f"{i:02d}-{name.lower().replace(' ', '-')}.png"), full_page=True)
            if name == "Chat":
                check_chat(page, panel, data)
            if name == "Model":
                assert panel.get_by_text("fingerprint").count() >= 1
        for name in PLOT_TABS:
            assert seen_plots[name] >= 1, (name, seen_plots)
        assert server.alive()
    finally:
        server.stop()


def check_chat(page, panel, data: str) -> None:
    """The demo's turn in both chat panes (no raw special token); Enter sends a second turn that
    joins the same conversation; examples are labelled and badged; New conversation clears both."""
    from unlearnviz.data import load_data

    bots = panel.locator("[data-testid=bot]")
    assert bots.count() == 2, "the demo's question should be answered in both panes"
    assert all(bots.nth(i).inner_text().strip() for i in range(2)), "an answer is empty"
    d = load_data(data)  # the examples follow the session's data, not the generic placeholders
    for item in (d.forget_mcq[1], d.retain_mcq[0]):
        assert panel.get_by_text(item.question.strip()).count() >= 1, item.question
    assert panel.get_by_text("forget fact:").count() >= 1 and panel.get_by_text("retain fact:").count() >= 1
    box = panel.get_by_label("Prompt")
    box.fill(d.retain_mcq[0].question.strip())
    box.press("Enter")  # Enter sends
    page.wait_for_function("document.querySelectorAll('[role=tabpanel] [data-testid=bot]').length >= 4",
                           timeout=120_000)
    page.wait_for_timeout(1500)  # the stream finishes
    texts = panel.locator("[data-testid=user]").all_inner_texts()
    assert len(texts) == 4 and "<|" not in panel.inner_text(), texts  # two turns a pane, no raw markers
    assert panel.get_by_label("Concerns").input_value() == "", "the prompt box and its badge clear once sent"
    panel.get_by_role("button", name="New conversation").click()
    page.wait_for_function("document.querySelectorAll('[role=tabpanel] [data-testid=bot]').length == 0",
                           timeout=30_000)
