"""Progress a person can read: a job's named stages, one bar, and an ETA from the measured rate.

Long work in the dashboard is a few stages of very different cost (a fit: preparing, training,
evaluating the original, evaluating the edit); a bar that counts only training steps sits at 100%
while the after-edit evaluation runs. A :class:`Tracker` holds a job's plan (its stages, each with
a weight: its expected share of the work), which stage runs and how far it has come; the session's
actions move it from their worker thread, and the page reads a :class:`Snapshot` of it and renders
one line (``Snapshot.line``) and a bar (``unlearnviz.ui.progress_view``).

Pure: no torch, no Gradio; the clock is an argument, so the tests drive the ETA with a fake one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

# The stage names every view uses (the words: preparing, training, evaluating before/after, analysing).
PREPARING = "preparing"
TRAINING = "training"
EVAL_BEFORE = "evaluating before"
EVAL_AFTER = "evaluating after"
ANALYSING = "analysing"
ANSWERING = "asking both models"
RELEARN_EDITED = "relearning the edited model"
RELEARN_ORIGINAL = "relearning the original"
WHITEBOX = "white-box attacks"
EXAMPLES = "example answers"
WRITING = "writing the report"
EVAL_COMPARE = "evaluating the compared edit"
CAPTURING = "capturing activations"  # the analysis views' paired pass (cached: instant the second time)
IMPORTANCE_MAP = "importance map"
TOKEN_MAP = "token map"
LAYER_METRICS = "per-layer metrics"
COMPARED = "the compared edit"
LOGIT_LENS = "logit lens"
PROBES = "probes"
DRAWING = "drawing the figures"
SCORING_ORIGINAL = "scoring the original"
TRIALS = "trials"
REFITTING = "refitting the chosen setting"

MIN_MEASURED_S = 1.0  # no ETA before a stage has run this long with some progress (the first rate is noise)
MIN_FRACTION = 0.01  # ... nor before it is this far along


@dataclass(frozen=True)
class Costs:
    """What sizes a job's stages on the bar before anything is measured: rough seconds per unit on
    the default model (SmolLM2-135M) on 2 CPU cores. Only their ratios matter: the ETA scales
    them by the rate measured on the machine at hand, and uses measured seconds where it has them
    (evaluating the edit takes what evaluating the original took)."""

    prepare_s: float = 10.0  # checks, the memory plan, the fit's captures before its first step
    step_s: float = 0.45  # one training step (measured: SRMU, 400 steps in 175 s)
    question_s: float = 0.85  # one question scored, perplexity included (measured: 64 questions in 55 s)
    analysis_s: float = 30.0  # the demo's analysis views (importance, geometry, residual knowledge)
    answer_s: float = 10.0  # one side-by-side answer of 32 tokens


COSTS = Costs()


@dataclass(frozen=True)
class Stage:
    """One named stage of a job. ``weight``: its share of the bar (relative to the other stages;
    e.g. its expected seconds); ``expect_s``: seconds it is known to take (a measured earlier run
    of the same work), which the ETA uses before the stage has a rate of its own."""

    name: str
    weight: float = 1.0
    expect_s: float | None = None
    unit: str = ""  # what ``done``/``total`` count: "step", "item", "point" ...


@dataclass(frozen=True)
class Snapshot:
    """The state of a job at one moment, for rendering (immutable: the worker moves on)."""

    title: str  # what the job is ("SRMU edit", "relearning attack")
    stage: str | None  # the stage running now (None: not started)
    index: int  # its position among the stages still planned, 0-based
    count: int  # the stages planned
    done: int | None  # progress within the stage, in ``unit``
    total: int | None
    unit: str
    fraction: float  # of the whole job, never decreasing
    elapsed: float  # seconds since the job began
    eta: float | None  # seconds left for the whole job (None: not known yet)
    finished: bool
    detail: str = ""  # e.g. the current loss
    stages: tuple[str, ...] = ()  # every stage planned, in order

    def line(self) -> str:
        """The one status line every view shows, e.g. ``SRMU edit · training (stage 2 of 4):
        120/400 steps · loss 0.43 · 38% · about 1 min 10 s left``."""
        head = f"{self.title} · " if self.title else ""
        if self.finished:
            return f"{head}done in {format_seconds(self.elapsed)}"
        if self.stage is None:
            return f"{head}starting …"
        parts = [f"{head}{self.stage} (stage {self.index + 1} of {self.count})"]
        counted = []
        if self.total:
            counted.append(f"{self.done or 0}/{self.total}{' ' + self.unit + 's' if self.unit else ''}")
        if self.detail:
            counted.append(self.detail)
        counted.append(f"{self.fraction:.0%}")
        counted.append(f"about {format_seconds(self.eta)} left" if self.eta is not None else "estimating time left")
        return parts[0] + ": " + " · ".join(counted)


def format_seconds(s: float | None) -> str:
    """Seconds as a person reads a wait: ``8 s``, ``45 s``, ``1 min 10 s``, ``12 min``."""
    if s is None:
        return "?"
    s = max(0.0, float(s))
    if s < 10:
        return f"{s:.0f} s"
    if s < 60:
        return f"{round(s / 5) * 5:.0f} s"
    if s >= 600:
        return f"{round(s / 60):.0f} min"
    minutes, rest = divmod(round(s / 10) * 10, 60)
    return f"{minutes:.0f} min" if rest == 0 else f"{minutes:.0f} min {rest:.0f} s"


class Tracker:
    """A job's progress through its stages; thread-safe (the worker writes, the page reads).

    Stages run in the planned order; :meth:`begin` may jump ahead (a stage between that is not
    needed, such as evaluating the original when its metrics are cached, is dropped from the plan),
    never back. The fraction is the weight of the finished stages plus the current stage's share of
    its own weight, over the weight still planned: dropping a stage can only raise it, and it is
    clamped so it never falls. The ETA is the current stage's remaining share at its own measured
    rate (or, before it has one: its ``expect_s`` less the time it has run, else its weight at the
    rate measured so far), plus each later stage's ``expect_s`` or, without one, its weight at the
    rate measured so far (seconds per unit of weight over what ran); None until there is a rate.
    """

    def __init__(self, stages: Sequence[Stage | str], title: str = "", clock: Callable[[], float] = time.monotonic):
        self.title = title
        self._clock = clock
        self._stages = [s if isinstance(s, Stage) else Stage(s) for s in stages]
        if not self._stages or len({s.name for s in self._stages}) != len(self._stages):
            raise ValueError(f"a job needs distinct stages, got {[s.name for s in self._stages]}")
        self._lock = threading.Lock()
        self._t0 = clock()
        self._current = -1  # index into _stages of the stage running; -1: not begun
        self._stage_t0 = self._t0
        self._done: int | None = None
        self._total: int | None = None
        self._unit = ""
        self._detail = ""
        self._measured: list[tuple[float, float]] = []  # (weight, seconds) of each finished stage
        self._floor = 0.0  # the fraction already shown
        self._finished = False
        self._t_end = self._t0

    # ---- the worker's side --------------------------------------------------------------------
    def begin(self, name: str, total: int | None = None, unit: str | None = None, detail: str = "") -> None:
        """Enter stage ``name`` (the current one ends; stages skipped over are dropped)."""
        with self._lock:
            names = [s.name for s in self._stages]
            if name not in names:
                raise ValueError(f"{name!r} is not a stage of this job ({names})")
            target = names.index(name)
            if target < self._current:
                raise ValueError(f"stage {name!r} comes before {names[self._current]!r}: stages run in order")
            if target == self._current:  # a new total for the same stage
                self._total, self._detail = total, detail
                self._unit = unit if unit is not None else self._unit
                return
            now = self._clock()
            self._end_current(now)
            del self._stages[self._current + 1:target]  # skipped: not needed this time
            self._current = self._current + 1
            stage = self._stages[self._current]
            self._stage_t0, self._done, self._total = now, (0 if total else None), total
            self._unit = stage.unit if unit is None else unit
            self._detail = detail

    def advance(self, done: int, total: int | None = None, detail: str | None = None) -> None:
        """Progress within the current stage: ``done`` of ``total`` (kept from before when None)."""
        with self._lock:
            if self._current < 0:
                return
            if total is not None:
                self._total = int(total)
            self._done = max(int(done), self._done or 0) if self._total else int(done)
            if detail is not None:
                self._detail = detail

    def move(self, name: str, done: int, total: int | None = None, detail: str | None = None) -> None:
        """Stage ``name`` at ``done`` of ``total``, begun first if it is not the current one (a
        job whose events say which part they belong to: the card's attacks, a sweep's points)."""
        with self._lock:
            current = self._stages[self._current].name if self._current >= 0 else None
        if name != current:
            self.begin(name, total=total)
        self.advance(done, total, detail)

    def skip(self, name: str) -> None:
        """Drop a stage that has not begun (the work turned out not to be needed)."""
        with self._lock:
            names = [s.name for s in self._stages]
            if name in names and names.index(name) > self._current:
                del self._stages[names.index(name)]

    def expect(self, name: str, seconds: float) -> None:
        """What stage ``name`` is now known to take (e.g. evaluating the edit takes what evaluating
        the original just took: the same questions, the same model, one set of hooks more)."""
        with self._lock:
            self._stages = [replace(s, expect_s=float(seconds)) if s.name == name else s for s in self._stages]

    def weigh(self, name: str, weight: float) -> None:
        """Resize a stage that has not begun (its size became known: the fit's steps)."""
        with self._lock:
            names = [s.name for s in self._stages]
            if name in names and names.index(name) > self._current and weight > 0:
                i = names.index(name)
                self._stages[i] = replace(self._stages[i], weight=float(weight))

    def has(self, name: str) -> bool:
        with self._lock:
            return any(s.name == name for s in self._stages)

    def finish(self) -> None:
        with self._lock:
            if not self._finished:
                self._end_current(self._clock())
                self._current = len(self._stages) - 1
                self._finished = True
                self._t_end = self._clock()

    def _end_current(self, now: float) -> None:
        if 0 <= self._current < len(self._stages):
            self._measured.append((self._stages[self._current].weight, now - self._stage_t0))

    # ---- callbacks the science's progress hooks take ------------------------------------------
    def on_training(self, inner: Callable[[dict], None] | None = None,
                    stages: Sequence[str] = (TRAINING,)) -> Callable[[dict], None]:
        """A ``Ticker`` progress callback (``methods.base``) that moves this job by steps and shows
        the loss, then passes the event on to ``inner`` (the live loss curve). The first event
        begins ``stages[0]`` (what ran before it, a fit's captures and maps, stays in the stage
        before); a step count that starts again (a second ``Ticker``, as the relearning attack's
        second model) begins the next of ``stages``."""
        seen = {"stage": -1, "step": None}

        def tick(event: dict) -> None:
            step = int(event.get("step", 0))
            if seen["stage"] < 0 or (seen["step"] is not None and step <= seen["step"]
                                     and seen["stage"] + 1 < len(stages)):
                seen["stage"] += 1
                self.begin(stages[seen["stage"]], total=event.get("total"), unit="step")
            seen["step"] = step
            loss = event.get("loss")
            self.advance(step, event.get("total"),
                         detail=f"loss {loss:.4g}" if isinstance(loss, (int, float)) else None)
            if inner is not None:
                inner(event)
        return tick

    def on_scoring(self, inner: Callable[[int, int, str], None] | None = None) -> Callable[[int, int, str], None]:
        """An evaluation's progress callback (``evaluation.mcq.evaluate``: questions done, in all,
        what) that moves the current stage (the detail names perplexity while that runs)."""
        def tick(done: int, total: int, what: str = "") -> None:
            self.advance(done, total, detail="perplexity" if what == "perplexity" else "")
            if inner is not None:
                inner(done, total, what)
        return tick

    # ---- the page's side ----------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        with self._lock:
            now = self._t_end if self._finished else self._clock()
            fraction = 1.0 if self._finished else self._fraction()
            fraction = self._floor = max(self._floor, min(1.0, fraction))
            stage = self._stages[self._current] if self._current >= 0 else None
            return Snapshot(title=self.title, stage=stage.name if stage else None, index=max(0, self._current),
                            count=len(self._stages), done=self._done, total=self._total, unit=self._unit,
                            fraction=fraction, elapsed=now - self._t0,
                            eta=None if self._finished else self._eta(now), finished=self._finished,
                            detail=self._detail, stages=tuple(st.name for st in self._stages))

    def line(self) -> str:
        return self.snapshot().line()

    def stages(self) -> list[str]:
        """The stages still planned, in order (those already run included)."""
        with self._lock:
            return [s.name for s in self._stages]

    def _within(self) -> float:
        if self._total:
            return min(1.0, max(0.0, (self._done or 0) / self._total))
        return 0.0

    def _fraction(self) -> float:
        total = sum(s.weight for s in self._stages) or 1.0
        if self._current < 0:
            return 0.0
        done = sum(s.weight for s in self._stages[: self._current])
        return (done + self._stages[self._current].weight * self._within()) / total

    def _eta(self, now: float) -> float | None:
        if self._current < 0:
            return None
        stage = self._stages[self._current]
        spent, within = now - self._stage_t0, self._within()
        measured = within >= MIN_FRACTION and spent >= MIN_MEASURED_S
        weight = sum(w for w, _ in self._measured) + (stage.weight * within if measured else 0.0)
        seconds = sum(t for _, t in self._measured) + (spent if measured else 0.0)
        per_weight = seconds / weight if weight > 0 and seconds > 0 else None  # this machine's rate
        if measured:
            left = spent * (1 - within) / within
        elif stage.expect_s is not None:
            left = max(0.0, stage.expect_s - spent)
        elif per_weight is not None:  # no count of its own (one long call): its weight at the rate so far
            left = max(0.0, stage.weight * per_weight - spent)
        else:
            return None
        for later in self._stages[self._current + 1:]:
            if later.expect_s is not None:
                left += later.expect_s
            elif per_weight is not None:
                left += later.weight * per_weight
            else:
                return None
        return left

def edit_tracker(method: str, title: str | None = None, extra: Sequence[Stage] = (),
                 costs: Costs = COSTS) -> Tracker:
    """The plan of one edit: preparing, training, evaluating before and after (``Session.run_edit``
    sizes training by its steps and the evaluations by the questions, and drops what is cached),
    then ``extra`` stages (the demo's analysis and answers)."""
    return Tracker([Stage(PREPARING, costs.prepare_s), Stage(TRAINING, 100 * costs.step_s, unit="step"),
                    Stage(EVAL_BEFORE, 80 * costs.question_s, unit="question"),
                    Stage(EVAL_AFTER, 80 * costs.question_s, unit="question"), *extra],
                   title=title if title is not None else f"{method.upper()} edit")


def size_edit(tracker: Tracker, steps: int | None, questions: int, eval_s: float | None,
              costs: Costs = COSTS) -> None:
    """Size an edit's stages once its settings are known: training by ``steps``, each evaluation
    by ``questions``; ``eval_s``: what evaluating the original took (the edit's takes about the same)."""
    if steps:
        tracker.weigh(TRAINING, steps * costs.step_s)
    for name in (EVAL_BEFORE, EVAL_AFTER):
        tracker.weigh(name, max(1, questions) * costs.question_s)
    if eval_s:
        tracker.expect(EVAL_AFTER, eval_s)


def relearn_tracker(steps: int, costs: Costs = COSTS) -> Tracker:
    """The relearning attack's plan: fine-tune the edited model, then the original, then the
    white-box attacks (``Session.run_relearn``)."""
    return Tracker([Stage(PREPARING, costs.prepare_s), Stage(RELEARN_EDITED, steps * costs.step_s, unit="step"),
                    Stage(RELEARN_ORIGINAL, steps * costs.step_s, unit="step"), Stage(WHITEBOX, costs.prepare_s)],
                   title="Relearning attack")


def parts_tracker(title: str, parts: Sequence[str], unit: str = "step") -> Tracker:
    """A job of equal parts, one stage each (the robustness card's attacks, a sweep's points)."""
    return Tracker([Stage(p, 1.0, unit=unit) for p in parts], title=title)


def report_tracker(costs: Costs = COSTS) -> Tracker:
    """The dashboard report's plan: the evaluations it lacks, the analysis views, example answers,
    the page (``session.reporting.write_session_report``)."""
    return Tracker([Stage(EVAL_BEFORE, 80 * costs.question_s, unit="question"),
                    Stage(EVAL_AFTER, 80 * costs.question_s, unit="question"), Stage(ANALYSING, costs.analysis_s),
                    Stage(EXAMPLES, 4 * costs.answer_s), Stage(WRITING, costs.prepare_s)], title="HTML report")


def story_tracker(costs: Costs = COSTS) -> Tracker:
    """The presenter view's plan: the evaluations its edit lacks, then its two answer pairs."""
    return Tracker([Stage(EVAL_BEFORE, 80 * costs.question_s, unit="question"),
                    Stage(EVAL_AFTER, 80 * costs.question_s, unit="question"), Stage(EXAMPLES, 2 * costs.answer_s)],
                   title="Presenter view")


def evaluate_tracker(compare: bool = False, costs: Costs = COSTS) -> Tracker:
    """The Evaluate button's plan: score the original, the selected edit and, when one is chosen,
    the compared edit (``Session.evaluate`` drops what it has kept; perplexity is each stage's
    last part, named in its detail)."""
    stages = [Stage(EVAL_BEFORE, 80 * costs.question_s, unit="question"),
              Stage(EVAL_AFTER, 80 * costs.question_s, unit="question")]
    if compare:
        stages.append(Stage(EVAL_COMPARE, 80 * costs.question_s, unit="question"))
    return Tracker(stages, title="Evaluation")


def projection_stage(method: str) -> str:
    """The geometry view's projection stage, named by its method ("PCA", "UMAP")."""
    return "UMAP projection" if method == "UMAP" else "PCA projection"


def analysis_tracker(view: str, method: str = "PCA", compare: bool = False, costs: Costs = COSTS) -> Tracker:
    """The plan of one analysis view (``session.views``; ``view``: "importance", "geometry" or
    "residual"). The paired activation pass dominates the first two (about two thirds of
    ``costs.analysis_s`` on the default model) and is cached, so a second look is quick; UMAP
    costs several times PCA; the probes most of the residual view."""
    a = costs.analysis_s
    if view == "importance":
        stages = [Stage(CAPTURING, 0.6 * a), Stage(IMPORTANCE_MAP, 0.05 * a), Stage(TOKEN_MAP, 0.05 * a)]
        title = "Importance"
    elif view == "geometry":
        stages = [Stage(CAPTURING, 0.6 * a), Stage(LAYER_METRICS, 0.05 * a),
                  Stage(projection_stage(method), (0.3 if method == "UMAP" else 0.05) * a)]
        if compare:
            stages.append(Stage(COMPARED, 0.3 * a))
        title = "Geometry"
    elif view == "residual":
        stages = [Stage(LOGIT_LENS, 0.05 * a), Stage(PROBES, 0.3 * a)]
        title = "Residual knowledge"
    else:
        raise ValueError(f"no analysis view {view!r} (importance, geometry, residual)")
    return Tracker([*stages, Stage(DRAWING, 0.02 * a)], title=title)


def calibration_tracker(method: str, trials: int, steps: int, questions: int, costs: Costs = COSTS,
                        clock: Callable[[], float] = time.monotonic) -> Tracker:
    """The Calibrate button's plan (``calibrate.calibrate``): score the original on the calibration
    half of the ``questions``, ``trials`` trials (each a fit of up to ``steps`` steps scored on that
    half), then refit the chosen setting and score it and the original on the held-out half. The
    trials stage counts trials, so its ETA is the mean trial time so far times the trials left
    (:func:`on_calibration` expects the refit to take one trial more)."""
    half = max(1, questions // 2) * costs.question_s
    trial_s = steps * costs.step_s + half
    return Tracker([Stage(SCORING_ORIGINAL, half, unit="question"),
                    Stage(TRIALS, max(1, trials) * trial_s, unit="trial"),
                    Stage(REFITTING, trial_s + half)], title=f"{method.upper()} calibration", clock=clock)


def on_calibration(tracker: Tracker, inner: Callable[[dict], None] | None = None) -> Callable[[dict], None]:
    """A ``calibrate.calibrate`` progress callback that moves a :func:`calibration_tracker`: its
    first fit event ends the scoring of the original, each finished trial counts one (the detail
    names the trial running: "trial 3/8 · step 20/50"), the last trial begins the refit, expected
    to take the mean trial time so far plus what scoring the original took (it scores
    the original again, on the held-out half). Events pass on to ``inner``."""
    seen: dict = {"scored_s": None, "trials": 0}

    def tick(event: dict) -> None:
        phase, n = event.get("phase"), max(1, int(event.get("trials") or 1))
        step, total = int(event.get("step") or 0), int(event.get("total") or 0)
        if phase == "fit":
            if seen["scored_s"] is None:  # the original is scored: the trials begin
                seen["scored_s"] = tracker.snapshot().elapsed
                tracker.begin(TRIALS, total=n, unit="trial")
            what = f"step {step}/{total}" if step < total else "scoring"
            tracker.advance(seen["trials"], n, detail=f"trial {event.get('trial')}/{n} · {what}")
        elif phase == "trial":
            seen["trials"] = int(event.get("trial") or seen["trials"] + 1)
            tracker.advance(seen["trials"], n, detail=f"{seen['trials']} of {n} trials done")
            if seen["scored_s"] is not None:
                mean = (tracker.snapshot().elapsed - seen["scored_s"]) / seen["trials"]
                tracker.expect(REFITTING, mean + seen["scored_s"])
            if seen["trials"] >= n and tracker.has(REFITTING):  # the last: the chosen setting is refitted next
                tracker.begin(REFITTING, detail="choosing the setting")
        elif phase == "final":
            if tracker.has(REFITTING) and tracker.snapshot().stage != REFITTING:
                tracker.begin(REFITTING)
            # no count: the fit's steps are only part of the stage (two scorings follow)
            tracker.advance(step, None, detail=f"trial {event.get('number')}'s setting · step {step}/{total}"
                            if step < total else "scoring both models on the held-out half")
        if inner is not None:
            inner(event)
    return tick
