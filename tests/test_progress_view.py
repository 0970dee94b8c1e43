"""How the page shows long work (``ui/progress_view.py``): the bar, the line and the stages from a
tracker; and, in a real Chromium on the real server, a fit whose live loss curve stays visible
(no progress overlay over it) while the status line names the stage it is in."""

from __future__ import annotations

import re

import pytest
from test_browser import browser_page  # noqa: F401  (the fixture: one headless Chromium)

from unlearnviz.session import progress as P
from unlearnviz.ui import progress_view


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_html_shows_the_bar_the_line_and_the_stages():
    clock = Clock()
    t = P.Tracker([P.Stage(P.PREPARING, 1), P.Stage(P.TRAINING, 3, unit="step"), P.Stage(P.EVAL_AFTER, 1)],
                  title="RMU <edit>", clock=clock)
    assert progress_view.html(None) == ""
    t.begin(P.PREPARING)
    t.begin(P.TRAINING, total=10)
    clock.now = 5.0
    t.advance(5)
    page = progress_view.html(t.snapshot())
    assert 'aria-valuenow="50"' in page and "width: 50%" in page  # (1 + 3 × 0.5) of 5
    assert 'data-stage="training"' in page and "✓ preparing" in page and "▶ training" in page
    assert "RMU &lt;edit&gt; · training (stage 2 of 3): 5/10 steps" in page  # the line, escaped
    assert "uv-progress-line" not in progress_view.html(t.snapshot(), with_line=False)
    t.finish()
    done = progress_view.html(t.snapshot())
    assert 'data-finished="true"' in done and "▶" not in done and done.count("✓") == 3


def test_run_tracked_yields_while_the_work_runs_and_raises_its_error():
    import queue
    import threading

    t = P.Tracker([P.TRAINING])
    go = threading.Event()
    events: queue.Queue = queue.Queue()

    def work():
        t.begin(P.TRAINING, total=2)
        events.put("a")
        t.advance(1)
        go.wait(5)
        t.advance(2)
        return 42

    out: dict = {}
    seen = []
    for snap, arrived in progress_view.run_tracked(work, t, out, events):
        seen.append((snap.stage, snap.done, arrived))
        go.set()
    assert out["value"] == 42 and seen[-1][0] == P.TRAINING and t.snapshot().finished
    assert [a for *_, arrived in seen for a in arrived] == ["a"]

    def broken():
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        for _ in progress_view.run_tracked(broken, P.Tracker([P.TRAINING]), {}):
            pass


# The element at the middle of the loss plot: inside the plot itself unless something covers it.
CENTRE_HIT = """() => {
  const plot = document.querySelector('[role=tabpanel]:not([hidden]) .js-plotly-plot');
  if (!plot) return null;
  const r = plot.getBoundingClientRect();
  const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
  return {inside: plot.contains(hit), what: hit ? hit.className.toString() : ''};
}"""
CURVE = "() => [...document.querySelectorAll('[role=tabpanel]:not([hidden]) .js-plotly-plot .scatterlayer path')]" \
        ".map(p => p.getAttribute('d')).join('|')"


@pytest.mark.browser
@pytest.mark.slow
def test_the_live_loss_curve_stays_visible_while_the_status_names_the_stage(browser_page, tiny_model_path):  # noqa: F811
    page = browser_page
    from app_server import Server

    # one torch thread: on a busy machine two spin against the other load and train many times slower
    server = Server("--model", "synthetic", "--data", "synthetic", env={"OMP_NUM_THREADS": "1"})
    try:
        page.goto(server.url, wait_until="load", timeout=120_000)
        page.get_by_role("tab", name="Unlearn", exact=True).first.click()
        panel = page.locator("[role=tabpanel]:visible").first
        panel.get_by_text("SRMU hyperparameters").first.click()
        panel.get_by_label("steps", exact=True).first.fill("800")  # long enough to watch on the tiny model
        panel.get_by_role("button", name="Run edit").click()
        bar = page.locator("#uv-run-progress .uv-progress[data-stage=training]")
        bar.wait_for(timeout=120_000)
        panel.locator(".js-plotly-plot .scatterlayer path").first.wait_for(timeout=60_000)
        first = page.evaluate(CURVE)
        line = panel.get_by_text(re.compile(r"SRMU edit · training \(stage 2 of 4\): \d+/800 steps"))
        assert line.count() == 1, panel.inner_text()
        hit = page.evaluate(CENTRE_HIT)
        assert hit is not None and hit["inside"], f"the loss plot is covered by {hit}"
        page.wait_for_function(f"() => ({CURVE})() !== {first!r}", timeout=30_000)  # the curve grows meanwhile
        assert page.locator("#uv-run-progress .uv-progress[data-stage=training]").count() == 1, "the fit ended early"
        assert page.evaluate(CENTRE_HIT)["inside"]
        page.locator("#uv-run-progress .uv-progress[data-finished=true]").wait_for(timeout=600_000)
        assert panel.get_by_text(re.compile(r"SRMU edit · done in")).count() == 1
        assert panel.get_by_text(re.compile(r"Selected: .*edit #1")).count() >= 1  # the summary is back
        assert server.alive()
    finally:
        server.stop()
