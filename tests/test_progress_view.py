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


# ---- the trackers of Evaluate, the analysis views and Calibrate -----------------------------------

def test_a_calibration_counts_trials_and_estimates_from_the_mean_trial_time():
    clock = Clock()
    t = P.calibration_tracker("mrp", trials=4, steps=10, questions=20, clock=clock)
    t.begin(P.SCORING_ORIGINAL)
    tick = P.on_calibration(t)
    clock.now = 2.0  # scoring the original took 2 s
    tick({"phase": "fit", "trial": 1, "trials": 4, "step": 3, "total": 10})
    snap = t.snapshot()
    assert snap.stage == P.TRIALS and snap.done == 0 and snap.total == 4
    assert "trial 1/4 · step 3/10" in snap.line()
    for n in (1, 2):  # each trial takes 5 s
        clock.now = 2.0 + 5 * n
        tick({"phase": "trial", "trial": n, "trials": 4})
    clock.now = 13.0
    tick({"phase": "fit", "trial": 3, "trials": 4, "step": 4, "total": 10})
    snap = t.snapshot()
    assert snap.done == 2 and "trials (stage 2 of 3): 2/4 trials · trial 3/4 · step 4/10" in snap.line()
    # two trials left at the measured 5.5 s a trial (11 s over 2), then the refit: one trial more
    # (the mean so far, 5 s) plus scoring the original again (2 s)
    assert snap.eta == pytest.approx(11 + 5 + 2)
    for n in (3, 4):
        clock.now = 2.0 + 5 * n
        tick({"phase": "trial", "trial": n, "trials": 4})
    assert t.snapshot().stage == P.REFITTING  # the last trial done: the chosen setting is refitted next
    tick({"phase": "final", "step": 2, "total": 10, "number": 3})
    assert "trial 3's setting · step 2/10" in t.line() and t.snapshot().eta == pytest.approx(5 + 2)
    t.finish()
    assert t.snapshot().fraction == 1.0 and t.stages() == [P.SCORING_ORIGINAL, P.TRIALS, P.REFITTING]


@pytest.fixture(scope="module")
def two_edits(tiny_model_path):
    """A session on the tiny model with two edits, the first compared with the second (selected)."""
    from unlearnviz.ui.common import UISession

    s = UISession()
    s.load_model("synthetic", "float32", "cpu")
    s.load_data("synthetic")
    s.run_edit("rmu", {"steps": 4})
    s.run_edit("mrp", {"steps": 4})
    s.select_compare(0)
    return s


def _finished(snaps: list) -> P.Snapshot:
    last = snaps[-1]
    assert last.finished and last.fraction == 1.0, last
    assert all(a.fraction <= b.fraction for a, b in zip(snaps, snaps[1:]))  # the bar never goes back
    return last


def test_evaluate_scores_the_original_the_edit_and_the_compared_edit_in_named_stages(two_edits):
    from unlearnviz.ui import tab_evaluate

    s = two_edits
    s.before, s.after = None, {}  # nothing kept: every side is scored
    snaps, result = [], None
    for snap, result in tab_evaluate.evaluate_with_progress(s, False):
        snaps.append(snap)
    last = _finished(snaps)
    assert last.stages == (P.EVAL_BEFORE, P.EVAL_AFTER, P.EVAL_COMPARE) and last.title == "Evaluation"
    assert set(result) == {"before", "after", "compare"} and result["after"] is s.after[1]
    assert result["compare"] is s.after[0]
    assert "✓ evaluating the compared edit" in progress_view.html(last)
    # kept now: pressed again, nothing is scored and no stage is left to wait for
    again = [snap for snap, _ in tab_evaluate.evaluate_with_progress(s, False)]
    assert again[-1].finished and again[-1].stages == ()


@pytest.mark.parametrize("view, stages", [
    ("importance", (P.CAPTURING, P.IMPORTANCE_MAP, P.TOKEN_MAP, P.DRAWING)),
    ("geometry", (P.CAPTURING, P.LAYER_METRICS, "PCA projection", P.COMPARED, P.DRAWING)),
    ("residual", (P.LOGIT_LENS, P.PROBES, P.DRAWING)),
])
def test_each_analysis_view_runs_its_named_stages_to_the_end(two_edits, view, stages):
    from unlearnviz.ui import tab_analysis

    s = two_edits
    tracker = P.analysis_tracker(view, compare=s.compare is not None)
    figures = {"importance": lambda: tab_analysis.importance_figures(s, "ratio", None, tracker),
               "geometry": lambda: tab_analysis.geometry_figures(s, "PCA", None, tracker),
               "residual": lambda: tab_analysis.residual_figures(s, None, None, tracker)}[view]
    bars, got = [], None
    for bar, got in tab_analysis.tracked(s, tracker, figures):
        bars.append(bar)
    last = _finished([tracker.snapshot()])
    assert last.stages == stages and got is not None and all(f is not None for f in got[:2])
    assert 'data-finished="true"' in bars[-1] and all(f"✓ {name}" in bars[-1] for name in stages)
    assert all('data-finished="false"' in b for b in bars[:-1])


@pytest.mark.slow
def test_calibrate_counts_its_trials_to_the_refit(two_edits):
    from unlearnviz.session import Limits, calibration
    from unlearnviz.ui import tab_unlearn

    s = two_edits
    settings = calibration.ui_settings("mrp", 2, 3, Limits())
    seen = list(tab_unlearn.calibrate_with_live_updates(s, "mrp", settings))
    snaps = [snap for _, _, snap in seen]
    last = _finished(snaps)
    assert last.stages == (P.SCORING_ORIGINAL, P.TRIALS, P.REFITTING) and last.title == "MRP calibration"
    said = [m for m, _, _ in seen if m is not None]  # a status after each trial (two at once: the last)
    assert said[-1] == "done" and set(said[:-1]) <= {"1 of 2 trials done …", "2 of 2 trials done …"}
    result = seen[-1][1]
    assert result.chosen is not None and result.heldout["after"]["forget_n"] > 0  # the refit ran
    assert len(s.stack) == 2  # the timeline is left alone


@pytest.mark.browser
@pytest.mark.slow
def test_evaluate_the_analysis_views_and_calibrate_show_their_bars_on_the_page(browser_page, tiny_model_path):  # noqa: F811
    from app_server import Server
    from test_browser import open_tab

    page = browser_page
    server = Server("--model", "synthetic", "--data", "synthetic", env={"OMP_NUM_THREADS": "1"})
    try:
        page.goto(server.url, wait_until="load", timeout=120_000)
        for tab, button, bar, line in [
                ("Evaluate", "Evaluate before / after", "#uv-evaluate-progress", "Evaluation · done in"),
                ("Importance", "Compute", "#uv-importance-progress", "Importance · done in"),
                ("Geometry", "Compute", "#uv-geometry-progress", "Geometry · done in"),
                ("Residual knowledge", "Compute", "#uv-residual-progress", "Residual knowledge · done in")]:
            panel = open_tab(page, tab)
            panel.get_by_role("button", name=button, exact=True).click()
            page.locator(f"{bar} .uv-progress[data-finished=true]").wait_for(timeout=120_000)
            assert line in page.locator(bar).inner_text(), (tab, page.locator(bar).inner_text())
        assert "✓ capturing activations" in page.locator("#uv-importance-progress").inner_text()
        panel = open_tab(page, "Unlearn")
        panel.get_by_text("Calibrate: search this method's key settings").click()
        panel.get_by_label("trials", exact=True).fill("2")
        panel.get_by_label("steps per trial, at most", exact=True).fill("3")
        panel.get_by_role("button", name="Calibrate", exact=True).click()
        try:
            page.locator("#uv-calibrate-progress .uv-progress[data-finished=true]").wait_for(timeout=300_000)
        except Exception:
            raise AssertionError(f"no finished bar: {page.locator('#uv-calibrate-progress').inner_html()!r}; "
                                 f"{panel.inner_text()[-1500:]}") from None
        text = page.locator("#uv-calibrate-progress").inner_text()
        assert "calibration · done in" in text and "✓ trials" in text and "✓ refitting the chosen setting" in text
        assert server.alive()
    finally:
        server.stop()
