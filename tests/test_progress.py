"""The progress model (``unlearnviz.session.progress``): stages in order, a fraction that never
falls, an ETA from the measured rate (driven by a fake clock), one line format; and a real fit on
the tiny model that reports every stage in order, the after-edit evaluation included."""

from __future__ import annotations

import pytest

from unlearnviz.session import progress as P


class FakeClock:
    """Seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def tick(self, s: float) -> None:
        self.now += s


def job(clock, stages=None):
    return P.Tracker(stages or [P.Stage(P.PREPARING, 1), P.Stage(P.TRAINING, 6, unit="step"),
                                P.Stage(P.EVAL_BEFORE, 2), P.Stage(P.EVAL_AFTER, 2)],
                     title="RMU edit", clock=clock)


def test_stages_run_in_order_and_a_skipped_one_is_dropped():
    clock = FakeClock()
    t = job(clock)
    assert t.snapshot().stage is None and t.snapshot().fraction == 0.0
    t.begin(P.PREPARING)
    t.begin(P.TRAINING, total=10)
    assert (t.snapshot().stage, t.snapshot().index, t.snapshot().count) == (P.TRAINING, 1, 4)
    t.begin(P.EVAL_AFTER)  # the original's metrics were cached: "evaluating before" is not needed
    assert t.stages() == [P.PREPARING, P.TRAINING, P.EVAL_AFTER]
    snap = t.snapshot()
    assert (snap.stage, snap.index, snap.count) == (P.EVAL_AFTER, 2, 3)
    with pytest.raises(ValueError, match="in order"):
        t.begin(P.TRAINING)
    with pytest.raises(ValueError, match="not a stage"):
        t.begin("dancing")
    t.finish()
    assert t.snapshot().finished and t.snapshot().fraction == 1.0


def test_fraction_is_weighted_and_never_falls():
    clock = FakeClock()
    t = job(clock)
    seen = []
    t.begin(P.PREPARING)
    seen.append(t.snapshot().fraction)
    t.begin(P.TRAINING, total=10)
    for step in range(1, 11):
        clock.tick(1)
        t.advance(step)
        seen.append(t.snapshot().fraction)
    assert seen[-1] == pytest.approx((1 + 6) / 11)  # preparing and training done, of 11 units of weight
    t.advance(3)  # a late, smaller count (another thread's stale event) does not move the bar back
    seen.append(t.snapshot().fraction)
    t.begin(P.EVAL_BEFORE, total=40)
    t.advance(20)
    seen.append(t.snapshot().fraction)
    assert seen[-1] == pytest.approx((1 + 6 + 1) / 11)
    t.skip(P.EVAL_AFTER)  # dropping a stage still ahead raises the fraction, never lowers it
    seen.append(t.snapshot().fraction)
    assert seen[-1] == pytest.approx((1 + 6 + 1) / 9)
    t.finish()
    seen.append(t.snapshot().fraction)
    assert seen == sorted(seen) and seen[-1] == 1.0 and seen[0] == 0.0


def test_eta_comes_from_the_measured_rate():
    clock = FakeClock()
    t = job(clock, [P.Stage(P.TRAINING, 10, unit="step"), P.Stage(P.EVAL_AFTER, 5, expect_s=30.0)])
    t.begin(P.TRAINING, total=100)
    assert t.snapshot().eta is None  # nothing measured yet
    clock.tick(0.5)
    t.advance(1)
    assert t.snapshot().eta is None  # too early to trust the rate
    clock.tick(19.5)
    t.advance(40)  # 40 steps in 20 s: 60 steps left = 30 s, then the evaluation's known 30 s
    assert t.snapshot().eta == pytest.approx(30 + 30)
    clock.tick(10)  # the rate halves: 10 s more with no step
    assert t.snapshot().eta == pytest.approx(60 * 30 / 40 + 30)
    t.begin(P.EVAL_AFTER)
    clock.tick(12)  # no rate of its own yet: what it is known to take, less what it has run
    assert t.snapshot().eta == pytest.approx(18)


def test_eta_of_a_stage_without_a_known_time_uses_the_rate_per_weight():
    clock = FakeClock()
    t = job(clock, [P.Stage(P.TRAINING, 2), P.Stage(P.EVAL_AFTER, 1)])
    t.begin(P.TRAINING, total=10)
    clock.tick(40)
    t.advance(5)  # half of weight 2 in 40 s: 40 s a unit; 40 s left here, then weight 1 = 40 s
    assert t.snapshot().eta == pytest.approx(80)


def test_one_line_format():
    clock = FakeClock()
    t = job(clock)
    assert t.line() == "RMU edit · starting …"
    t.begin(P.PREPARING)
    assert t.line() == "RMU edit · preparing (stage 1 of 4): 0% · estimating time left"
    t.begin(P.TRAINING, total=400, unit="step")
    clock.tick(60)
    t.advance(200, detail="loss 0.5")
    assert t.line() == ("RMU edit · training (stage 2 of 4): 200/400 steps · loss 0.5 · 36% · "
                        "about 2 min left")  # 60 s here, then 4 units of weight at 15 s a unit
    clock.tick(60)
    t.finish()
    assert t.line() == "RMU edit · done in 2 min"


@pytest.mark.parametrize(("seconds", "text"), [(3.2, "3 s"), (42, "40 s"), (44, "45 s"), (70, "1 min 10 s"),
                                               (120, "2 min"), (125, "2 min"), (3600, "60 min")])
def test_seconds_read_as_a_person_reads_a_wait(seconds, text):
    assert P.format_seconds(seconds) == text


def test_training_callback_begins_its_stage_and_a_restart_begins_the_next():
    clock = FakeClock()
    t = P.Tracker([P.PREPARING, P.RELEARN_EDITED, P.RELEARN_ORIGINAL, P.WHITEBOX], clock=clock)
    t.begin(P.PREPARING)
    seen = []
    cb = t.on_training(seen.append, stages=(P.RELEARN_EDITED, P.RELEARN_ORIGINAL))
    stages = []
    for run in range(2):
        for step in range(1, 4):
            cb({"step": step, "total": 3, "loss": 1.0 / step})
            stages.append(t.snapshot().stage)
    assert stages == [P.RELEARN_EDITED] * 3 + [P.RELEARN_ORIGINAL] * 3 and len(seen) == 6
    assert t.snapshot().detail == "loss 0.3333"
    score = t.on_scoring()
    t.begin(P.WHITEBOX)
    score(3, 10, "questions")
    assert (t.snapshot().done, t.snapshot().total, t.snapshot().detail) == (3, 10, "")
    score(10, 10, "perplexity")
    assert t.snapshot().line().startswith("white-box attacks (stage 4 of 4): 10/10 · perplexity ·")


def test_a_tracker_is_read_while_another_thread_writes():
    import threading

    t = P.Tracker([P.TRAINING])
    t.begin(P.TRAINING, total=20000)
    stop = threading.Event()
    fractions = []

    def read():
        while not stop.is_set():
            fractions.append(t.snapshot().fraction)

    reader = threading.Thread(target=read)
    reader.start()
    for step in range(20000):
        t.advance(step + 1)
    stop.set()
    reader.join()
    assert fractions == sorted(fractions) and t.snapshot().fraction == 1.0


@pytest.mark.slow
def test_a_real_fit_reports_every_stage_in_order(tiny_lm, tiny_data):
    """Session.run_edit on the tiny model: preparing, training (by steps), evaluating the
    original and the edit (by questions scored, so the bar moves after the last step), in order."""
    from unlearnviz.session import Session

    session = Session(lm=tiny_lm, data=tiny_data)
    t = P.edit_tracker("rmu")
    seen: list[tuple] = []
    real_advance = t.advance

    def record(done, total=None, detail=None):
        real_advance(done, total, detail)
        s = t.snapshot()
        seen.append((s.stage, s.done, s.total, s.fraction))

    t.advance = record  # the real tracker, observed after every move
    session.run_edit("rmu", {"steps": 6}, tracker=t)
    order = list(dict.fromkeys(s for s, *_ in seen))
    assert order == [P.TRAINING, P.EVAL_BEFORE, P.EVAL_AFTER], order
    after = [(d, n) for s, d, n, _ in seen if s == P.EVAL_AFTER]
    n_items = len(tiny_data.forget_mcq) + len(tiny_data.retain_mcq)
    assert after[-1] == (n_items, n_items) and len({d for d, _ in after}) > 1  # it moves, item by item
    assert [f for *_, f in seen] == sorted(f for *_, f in seen)
    assert not t.snapshot().finished  # the caller ends the job (the demo goes on to analyse)
    t.finish()
    assert t.snapshot().finished and t.line().startswith("RMU edit · done in")
    # a second fit: the original's metrics are cached, so its plan drops "evaluating before"
    t2 = P.edit_tracker("rmu")
    session.run_edit("rmu", {"steps": 3}, tracker=t2)
    assert t2.stages() == [P.PREPARING, P.TRAINING, P.EVAL_AFTER]


def test_an_evaluation_that_reports_progress_scores_the_same(tiny_lm, tiny_data):
    """Scored in passes (so the count moves) or in one: the same metrics; the count rises to every
    question, then names perplexity."""
    from unlearnviz.evaluation.mcq import evaluate
    from unlearnviz.evaluation.scoring import SCORE_CACHE

    SCORE_CACHE.clear()  # both runs score for real
    ticks: list[tuple] = []
    stepped = evaluate(tiny_lm, tiny_data, letter=False, progress=lambda d, n, w: ticks.append((d, n, w)))
    SCORE_CACHE.clear()
    whole = evaluate(tiny_lm, tiny_data, letter=False)
    n = len(tiny_data.forget_mcq) + len(tiny_data.retain_mcq)
    assert {k: v for k, v in stepped.items() if k != "wall_s"} == pytest.approx(
        {k: v for k, v in whole.items() if k != "wall_s"}, rel=1e-5)
    counts = [d for d, _, w in ticks if w == "questions"]
    assert len(counts) >= 5 and counts == sorted(counts) and counts[-1] == n
    assert ticks[-1] == (n, n, "perplexity")


def observed(tracker: P.Tracker) -> list[str]:
    """The stages ``tracker`` is seen in after every move, in order, each once."""
    seen: list[str] = []
    real = tracker.advance, tracker.begin

    def advance(*a, **k):
        real[0](*a, **k)
        seen.append(tracker.snapshot().stage)

    def begin(*a, **k):
        real[1](*a, **k)
        seen.append(tracker.snapshot().stage)

    tracker.advance, tracker.begin = advance, begin
    return seen


@pytest.mark.slow
def test_relearning_the_card_a_sweep_and_the_report_move_through_their_stages(tiny_lm, tiny_data, tmp_path):
    from unlearnviz.session import Session, reporting, sweeps
    from unlearnviz.session import attacks as session_attacks

    session = Session(lm=tiny_lm, data=tiny_data)
    session.run_edit("rmu", {"steps": 6})

    t = P.relearn_tracker(4)
    seen = observed(t)
    session.run_relearn(steps=4, eval_every=2, tracker=t)
    assert list(dict.fromkeys(seen)) == [P.PREPARING, P.RELEARN_EDITED, P.RELEARN_ORIGINAL, P.WHITEBOX]

    names = ["noise", "projection_removal"]
    t = session_attacks.card_tracker(names)
    seen = observed(t)
    session_attacks.run_session_card(session, names, {"max_items": 8}, tracker=t)
    assert list(dict.fromkeys(seen)) == t.stages() == names

    points = [("rmu", {"steps": 3}), ("rmu", {"steps": 4})]
    t = sweeps.sweep_tracker(points)
    seen = observed(t)
    for _ in sweeps.live_sweep(session, points, tracker=t):
        pass
    assert list(dict.fromkeys(seen)) == ["point 1 of 2: rmu steps=3", "point 2 of 2: rmu steps=4"]

    t = P.report_tracker()
    seen = observed(t)
    reporting.write_session_report(session, tmp_path / "r.html", tracker=t)
    assert list(dict.fromkeys(seen)) == [P.ANALYSING, P.EXAMPLES, P.WRITING]  # the metrics were kept
    assert t.stages() == [P.ANALYSING, P.EXAMPLES, P.WRITING]
