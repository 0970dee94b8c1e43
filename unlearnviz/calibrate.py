"""Calibration: search a method's key settings on the loaded model and data with Optuna, because
defaults tuned on one model do not transfer to another (a layer index, a steering scale and a
retain weight are all relative to a model's depth and activation norms).

The study is multi-objective (Optuna's TPE sampler; Ozaki et al., "Multiobjective Tree-structured
Parzen Estimator", JAIR 2022), minimising, per trial,

- **forget gap**: |forget cloze accuracy − the level guessing reaches| (max of chance and the
  subject-blind floor, as ``evaluation.verdicts`` measures forgetting; accuracy far *below* that
  level still tells the answer apart, so the gap is absolute);
- **retain drop**: retain cloze accuracy lost (points of accuracy, as a share);
- **perplexity rise**: held-out retain perplexity after / before − 1.

The project's bars (``verdicts.FORGET_MARGIN``, ``RETAIN_DROP``, ``PPL_RISE``) are given to the
sampler as constraints (``trial.set_constraint``: it prefers settings that meet them), and decide
the chosen setting. Every trial is a fit at reduced steps (``steps`` is searched up to a cap).

**The calibration split.** A seeded share (``fraction``) of the forget and of the retain MCQ items
is set aside; trials are scored on those items only, and the chosen setting is reported on the
others (the held-out items), so the reported figures are not the ones the search selected on
(the winner's curse of picking the best of many noisy trials). Forget items are split within each
relearning half (A and B) separately, so both parts keep the A/B proportions: the held-out
half-B items still measure a relearning attack. Training is unchanged: fits read the whole forget
and retain corpora and every item's entity spans (their loss masks), as a plain run does. The
perplexity texts (every fifth retain text, which no method trains on) are the same in trials and
report: a fluency guard, not a quantity the split protects.

**Early stop.** Optuna's pruners read ``trial.report``, which multi-objective studies do not
support; instead a trial is stopped (state PRUNED) when its fit fails (a loss that diverges) or
when, scored on the retain items first, its retain accuracy fell more than ``prune_retain_drop``
(5× the bar by default): forget items and perplexity are then not scored.

**Run folder** (``out_dir``; None: nothing is written, the study lives in memory)::

    optuna.db       the Optuna study (SQLite): re-running the same command continues it up to the budget
    split.json      the calibration and held-out item indices
    heldout_forget_mcq.jsonl, heldout_retain_mcq.jsonl   the held-out items, as the config reads them
    results.csv     one row per finished trial (``sweep.write_results``)
    calibration.json  the front, the chosen setting, its held-out metrics, the plain statement
    config.yaml     the chosen setting as a ``run --config`` config that reproduces its held-out metrics
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from unlearnviz.errors import UserError
from unlearnviz.io import atomic_write_text

STUDY_FILE = "optuna.db"
SPLIT_FILE = "split.json"
RESULT_FILE = "calibration.json"
CONFIG_FILE = "config.yaml"
HELDOUT_FILES = {"forget_mcq": "heldout_forget_mcq.jsonl", "retain_mcq": "heldout_retain_mcq.jsonl"}
STUDY_NAME = "calibration"
MAX_TRIALS = 10_000
STEP_CAP = 100  # trials' default step cap: the method's default steps, at most this


@dataclass(frozen=True)
class Range:
    """One searched hyperparameter. ``of``: "" (the values themselves), "depth" (fractions of the
    model's depth, 0 = the first block, 1 = the last, turned into block indices) or "steps"
    (fractions of the trials' step cap)."""

    low: float
    high: float
    log: bool = False
    integer: bool = False
    of: str = ""


_MISDIRECTION = {
    "layer": Range(0.15, 0.65, integer=True, of="depth"),
    "alpha": Range(10.0, 3000.0, log=True),
    "lr": Range(3e-4, 3e-2, log=True),
    "steps": Range(0.25, 1.0, integer=True, of="steps"),
}
# The key settings per method (issue 17): RMU/SRMU: layer, steering scale, retain weight α,
# learning rate, steps; MRP: site, rank k, retain weight, steps. The ranges bracket each method's
# default and the values docs/methods_results.md found on the default model and the lab.
SPACES: dict[str, dict[str, Range]] = {
    "rmu": {**_MISDIRECTION, "steering_coeff": Range(0.25, 16.0, log=True)},
    "srmu": {**_MISDIRECTION, "c_map": Range(0.25, 16.0, log=True)},
    "mrp": {"layers": Range(0.3, 0.9, integer=True, of="depth"), "k": Range(2, 32, log=True, integer=True),
            "retain_weight": Range(5.0, 500.0, log=True), "steps": Range(0.25, 1.0, integer=True, of="steps")},
}


@dataclass
class CalibrationSettings:
    """What a calibration searches and how long. ``space`` replaces single ranges of the
    method's :data:`SPACES` entry (a key the method has, e.g. ``{"alpha": Range(50, 500, log=True)}``)
    or adds one; ``fixed`` holds hyperparameters at a value (``{"batch_size": 4}``; a searched key
    fixed here leaves the search)."""

    trials: int = 24  # finished (complete or pruned) trials the study holds when it is done
    steps: int | None = None  # the trials' step cap; None: the method's default steps, at most STEP_CAP
    fraction: float = 0.5  # share of the forget and of the retain items trials are scored on
    seed: int = 0  # the split's, the sampler's and every fit's seed
    space: dict[str, Range] = field(default_factory=dict)
    fixed: dict = field(default_factory=dict)
    prune_retain_drop: float = 0.15  # stop a trial whose calibration retain accuracy fell more than this
    startup_trials: int | None = None  # random trials before TPE models the front; None: a third of the budget


@dataclass
class CalibrationResult:
    """The study's outcome. ``rows``: one per finished trial (complete and pruned); ``front``:
    trial numbers of the Pareto front of the complete ones; ``chosen``: the row of the setting
    that meets the bars (or the closest one when none does, with ``meets_bars`` False);
    ``heldout``: before/after metrics of the chosen setting on the held-out items."""

    method: str
    rows: list[dict]
    front: list[int]
    chosen: dict | None
    meets_bars: bool
    statement: str
    before: dict  # the original model on the calibration items
    heldout: dict  # {"before", "after", "meets_bars", "verdicts"} on the held-out items; {} when nothing finished
    overrides: dict  # the chosen setting's hyperparameters (every field), for `run` or the dashboard
    config: dict | None = None
    config_path: str | None = None
    split: dict = field(default_factory=dict)
    bars: dict = field(default_factory=dict)  # forget_margin, retain_drop, ppl_rise (evaluation.verdicts)
    new_trials: int = 0
    wall_s: float = 0.0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# ---- the split ----------------------------------------------------------------------------------
def split_items(data, fraction: float, seed: int) -> dict:
    """Indices into ``data.forget_mcq`` and ``data.retain_mcq``: {"calibration": {"forget": [...],
    "retain": [...]}, "heldout": {...}}, disjoint, sorted. A seeded ``fraction`` of each group
    (forget half A, forget half B, retain) goes to calibration, at least one item and never all
    where a group has two or more; a group of one is held out."""
    if not 0.0 < fraction < 1.0:
        raise UserError(f"the calibration fraction must be between 0 and 1 (exclusive), got {fraction}")
    rng = random.Random(seed)
    out: dict = {"calibration": {"forget": [], "retain": []}, "heldout": {"forget": [], "retain": []}}
    halves = list(data.forget_half)
    groups = [("forget", [i for i, h in enumerate(halves) if h == half]) for half in sorted(set(halves))]
    groups.append(("retain", list(range(len(data.retain_mcq)))))
    for side, idx in groups:
        n = 0 if len(idx) < 2 else min(len(idx) - 1, max(1, round(fraction * len(idx))))
        picked = set(rng.sample(idx, n))
        out["calibration"][side] += [i for i in idx if i in picked]
        out["heldout"][side] += [i for i in idx if i not in picked]
    for side in ("forget", "retain"):
        for part in ("calibration", "heldout"):
            out[part][side].sort()
        if not out["calibration"][side] or not out["heldout"][side]:
            n = len(data.forget_mcq if side == "forget" else data.retain_mcq)
            raise UserError(f"data {data.name!r} has {n} {side} MCQ item(s); calibration needs at least 2 "
                            f"(some to calibrate on, the others to report on)")
    return out


def split_view(data, split: dict, part: str):
    """The data with only ``part``'s ("calibration" or "heldout") MCQ items; corpora unchanged."""
    f, r = split[part]["forget"], split[part]["retain"]
    return dataclasses.replace(data, name=f"{data.name} ({part} items)", forget_mcq=[data.forget_mcq[i] for i in f],
                               retain_mcq=[data.retain_mcq[i] for i in r],
                               forget_half=[data.forget_half[i] for i in f])


def _item_row(item, half: str | None = None) -> dict:
    row = {"question": item.question, "choices": list(item.choices), "answer": item.answer,
           "blind_question": item.blind_question, "subject": item.subject, "relation": item.relation}
    return {**row, "half": half} if half else row


# ---- the search space ---------------------------------------------------------------------------
def default_steps(method: str) -> int:
    """The trials' step cap when none is given: the method's default steps, at most STEP_CAP."""
    from unlearnviz.methods import get_method

    return max(1, min(STEP_CAP, int(getattr(get_method(method).hparams_cls(), "steps", STEP_CAP))))


def check_settings(method: str, s: CalibrationSettings) -> tuple[dict[str, Range], int, dict]:
    """The method's space with the settings' ranges, the step cap and the fixed hyperparameters
    (typed, as ``make_hparams`` reads them); every bad value is one line."""
    from unlearnviz.methods import get_method, make_hparams

    spec = get_method(method)
    if isinstance(s.trials, bool) or not isinstance(s.trials, int) or not 1 <= s.trials <= MAX_TRIALS:
        raise UserError(f"trials must be a whole number from 1 to {MAX_TRIALS}, got {s.trials!r}")
    if method not in SPACES and not s.space:
        raise UserError(f"method {method!r} has no built-in search space ({', '.join(SPACES)} do); give its ranges")
    names = {f.name for f in dataclasses.fields(spec.hparams_cls)}
    steps = default_steps(method) if s.steps is None else s.steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserError(f"steps must be a whole number of at least 1, got {steps!r}")
    if "steps" in names:
        make_hparams(spec.hparams_cls, {"steps": steps})  # the method's own range
    if not isinstance(s.fraction, (int, float)) or not 0 < s.fraction < 1:
        raise UserError(f"the calibration fraction must be between 0 and 1 (exclusive), got {s.fraction!r}")
    if not 0 < s.prune_retain_drop <= 1:
        raise UserError(f"prune_retain_drop must be in (0, 1], got {s.prune_retain_drop}")
    for key in s.space:
        if key in s.fixed:
            raise UserError(f"{key!r} is both given a range and fixed; drop one")
    # a fixed hyperparameter leaves the built-in search
    space = {**{k: r for k, r in SPACES.get(method, {}).items() if k not in s.fixed}, **s.space}
    if not space:
        raise UserError(f"nothing left to search: every {method} range is fixed")
    for key, r in space.items():
        where = f"calibration range {key!r}"
        if key not in names:
            raise UserError(f"{where}: {method} has no such hyperparameter; it has {', '.join(sorted(names))}")
        if not (math.isfinite(r.low) and math.isfinite(r.high)) or r.low > r.high:
            raise UserError(f"{where}: low {r.low} must be a number no larger than high {r.high}")
        if r.of not in ("", "depth", "steps"):
            raise UserError(f"{where}: 'of' must be '', 'depth' or 'steps', got {r.of!r}")
        if r.of and not 0 <= r.low <= r.high <= 1:
            raise UserError(f"{where}: a range of the {r.of} is given as fractions from 0 to 1, got {r.low}..{r.high}")
        if r.log and r.low <= 0:
            raise UserError(f"{where}: a log range needs low > 0, got {r.low}")
        if not r.of:
            for v in (r.low, r.high):  # the method's own bounds and types
                make_hparams(spec.hparams_cls, {key: int(v) if r.integer else v})
    hp = make_hparams(spec.hparams_cls, dict(s.fixed))
    return space, steps, {k: getattr(hp, k) for k in s.fixed}


def _resolve(lm, method: str, space: dict[str, Range], steps: int, fixed: dict) -> dict[str, tuple]:
    """The search space in this model's terms: {name: (low, high, log, integer)}."""
    from unlearnviz.methods import get_method, make_hparams

    hp = make_hparams(get_method(method).hparams_cls, dict(fixed))
    out = {}
    for key, r in space.items():
        lo, hi, integer = r.low, r.high, r.integer
        if r.of == "depth":
            lo, hi, integer = round(lo * (lm.n_layers - 1)), round(hi * (lm.n_layers - 1)), True
            if hasattr(hp, "window") and key == "layer":
                lo = max(lo, hp.window - 1)  # the trained window must fit below the loss layer
            last = lm.n_layers - 2 if key == "layers" else lm.n_layers - 1  # an MRP site is below the last block
            lo, hi = min(lo, last), min(max(hi, lo), last)
        elif r.of == "steps":
            lo, hi, integer = max(1, round(lo * steps)), max(1, round(hi * steps)), True
        if integer:
            lo, hi = int(math.ceil(lo - 1e-9)), int(math.floor(hi + 1e-9))
            hi = max(hi, lo)
        out[key] = (lo, hi, r.log and lo > 0, integer)
    return out


def _defaults(lm, method: str, resolved: dict[str, tuple], fixed: dict) -> dict:
    """The method's defaults as trial parameters (auto layers resolved, clipped into the space):
    the first trial of a new study, so the front shows where the defaults stand."""
    from unlearnviz.methods import get_method, make_hparams
    from unlearnviz.methods.misdirection import auto_layer

    hp = make_hparams(get_method(method).hparams_cls, dict(fixed))
    params = {}
    for key, (lo, hi, _, integer) in resolved.items():
        v = getattr(hp, key)
        if key == "layer" and v == -1:
            v = auto_layer(lm.n_layers, getattr(hp, "window", 1))
        if key == "layers":  # MRP's sites; -1 is resolved as mrp does: two thirds of the depth
            v = v[0] if v and v[0] != -1 else max(1, min(lm.n_layers - 2, round(2 * lm.n_layers / 3)))
        v = min(max(v, lo), hi)
        params[key] = int(round(v)) if integer else float(v)
    return params


def _overrides(params: dict, fixed: dict, seed: int) -> dict:
    """A trial's parameters as hyperparameter overrides (MRP's one site as a list)."""
    out = {**fixed, **{k: [int(v)] if k == "layers" else v for k, v in params.items()}}
    out.setdefault("seed", seed)
    return out


# ---- scoring ------------------------------------------------------------------------------------
def level(before: dict) -> float:
    """What guessing scores on the forget items: the larger of chance and the floor (the level
    ``verdicts.forget_verdict`` measures forgetting against)."""
    return max(before.get("chance", 0.0), before.get("forget_floor_acc", 0.0))


def objectives(before: dict, after: dict) -> tuple[float, float, float]:
    """(forget gap, retain drop, perplexity rise): the three values every trial minimises."""
    gap = abs(after["forget_cloze_acc"] - level(before))
    drop = before["retain_cloze_acc"] - after["retain_cloze_acc"]
    rise = after["retain_ppl"] / before["retain_ppl"] - 1 if before["retain_ppl"] else 0.0
    return gap, drop, rise


def meets_bars(before: dict, after: dict) -> bool:
    """Forgotten and kept, by the verdicts every report shows (one home for the bars)."""
    from unlearnviz.evaluation.verdicts import forget_verdict, retain_verdict

    return forget_verdict(before, after).ok is True and retain_verdict(before, after).ok is True


def _bars() -> tuple[float, float, float]:
    from unlearnviz.evaluation.verdicts import FORGET_MARGIN, PPL_RISE, RETAIN_DROP

    return FORGET_MARGIN, RETAIN_DROP, PPL_RISE


def badness(values) -> float:
    """The chosen setting among those that meet the bars: the least sum of its objectives, each
    in units of its bar (a gap of 5 points counts as much as a retain drop of 1.5)."""
    bars = _bars()
    return sum(max(0.0, v) / b for v, b in zip(values, bars))


def shortfall(values) -> float:
    """How far a setting is from the bars, in units of each bar, its worst objective (≤ 0: within
    every bar): the closest setting when none meets them."""
    return max((v - b) / b for v, b in zip(values, _bars()))


KEYS = ("forget_cloze_acc", "forget_floor_acc", "forget_b_cloze_acc", "retain_cloze_acc", "forget_gold_logprob",
        "retain_gold_logprob", "retain_ppl", "chance")


def _measure(lm, view, plan, should_stop, before: dict, prune_drop: float):
    """A trial's calibration metrics, the retain items first: (metrics, None), or (partial metrics,
    reason) where retain accuracy fell more than ``prune_drop`` (forget and perplexity unscored)."""
    from unlearnviz.evaluation.mcq import evaluate

    retain = evaluate(lm, dataclasses.replace(view, forget_mcq=[], forget_half=[]), plan=plan, letter=False,
                      ppl=False, should_stop=should_stop)
    after = {k: v for k, v in retain.items() if k.startswith("retain_")}
    drop = before["retain_cloze_acc"] - after["retain_cloze_acc"]
    if drop > prune_drop:
        return after, (f"retain accuracy fell {drop * 100:.0f} points on the calibration items, over the "
                       f"{prune_drop * 100:.0f}-point cut-off")
    rest = evaluate(lm, dataclasses.replace(view, retain_mcq=[]), plan=plan, letter=False, should_stop=should_stop)
    after.update({k: v for k, v in rest.items() if not k.startswith("retain_") or k == "retain_ppl"})
    return after, None


# ---- the study ----------------------------------------------------------------------------------
def _study(out_dir: Path | None, key: dict, seed: int, startup: int):
    """The study (new, or the one in ``out_dir`` when it was made with the same key), and its
    sampler, seeded by the seed and the trials it already holds."""
    import optuna

    storage = None if out_dir is None else f"sqlite:///{(out_dir / STUDY_FILE).resolve()}"
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, directions=["minimize"] * 3,
                                load_if_exists=True)
    held = study.user_attrs.get("key")
    if held is None:
        if study.trials:
            raise UserError(f"{out_dir / STUDY_FILE} holds a study this tool did not write; use a new --out folder")
        study.set_user_attr("key", key)
    elif held != key:
        differ = sorted(k for k in set(held) | set(key) if held.get(k) != key.get(k))
        raise UserError(f"{out_dir} holds a calibration that differs in {', '.join(differ)}; rerun it with the "
                        f"same settings to resume, or use a new --out folder")
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)  # a run that was killed: that trial reruns
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials), n_startup_trials=startup)
    return study


def _row(t, method: str) -> dict:
    """A finished trial as a results.csv row (the sweep's columns where they mean the same)."""
    from optuna.trial import TrialState

    a = t.user_attrs
    row = {"id": str(t.number), "trial": t.number, "method": method,
           "state": "complete" if t.state == TrialState.COMPLETE else "pruned",
           "settings": json.dumps(t.params, sort_keys=True), **{f"hp.{k}": v for k, v in sorted(t.params.items())},
           **{k: round(float(v), 5) for k, v in (a.get("metrics") or {}).items()}}
    if t.values:
        row.update({"forget_gap": round(t.values[0], 5), "retain_drop": round(t.values[1], 5),
                    "ppl_rise": round(t.values[2], 5)})
    row.update({"meets_bars": bool(a.get("meets_bars", False)), "defaults": bool(a.get("defaults", False)),
                "pruned": a.get("pruned", ""), "fit_s": a.get("fit_s"), "wall_s": a.get("wall_s")})
    return row


def front_of(rows: list[dict]) -> list[int]:
    """Trial numbers of the complete rows no other complete row beats on all three objectives."""
    from unlearnviz.sweep import pareto_ids

    done = [r for r in rows if r["state"] == "complete"]
    return sorted(int(i) for i in pareto_ids(done, lower=("forget_gap", "retain_drop", "ppl_rise")))


def calibrate(lm, data, method: str, settings: CalibrationSettings | None = None, out_dir: Path | str | None = None,
              progress: Callable[[dict], None] | None = None, should_stop: Callable[[], bool] | None = None,
              data_spec: str | None = None, log: Callable[[str], None] = lambda _m: None) -> CalibrationResult:
    """Run (or continue) the study up to ``settings.trials`` finished trials, then refit the chosen
    setting and score it on the held-out items. ``data_spec``: the spec ``data`` was loaded from;
    with it and ``out_dir`` the chosen setting is written as config.yaml (``run --config`` fits it
    on that data and evaluates the held-out items). ``progress`` gets events: {"phase": "fit",
    "trial", "trials", "step", "total", ...} during a trial's fit, {"phase": "trial", "trial",
    "trials", "row", "rows", "front"} after each trial, {"phase": "final", ...} during the refit.
    ``should_stop`` cancels within a fit or a scoring pass and between trials (``Cancelled``; the
    trials that finished stay in the study). The base weights never change."""
    import optuna

    from unlearnviz.evaluation.mcq import evaluate
    from unlearnviz.methods import get_method, make_hparams
    from unlearnviz.methods.base import Cancelled

    t_start = time.perf_counter()
    s = settings or CalibrationSettings()
    spec = get_method(str(method or "").strip())
    method = spec.name
    space, steps, fixed = check_settings(method, s)
    split = split_items(data, s.fraction, s.seed)
    calib, heldout = split_view(data, split, "calibration"), split_view(data, split, "heldout")
    resolved = _resolve(lm, method, space, steps, fixed)
    fp = lm.fingerprint(refresh=False)
    out = None if out_dir is None else Path(out_dir)
    if out is not None:
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file, not a folder")
        out.mkdir(parents=True, exist_ok=True)
    key = {"method": method, "model": fp, "data": data.content_hash(), "fraction": s.fraction, "seed": s.seed,
           "steps": steps, "space": {k: list(v) for k, v in resolved.items()}, "fixed": fixed,
           "prune_retain_drop": s.prune_retain_drop}
    startup = s.startup_trials if s.startup_trials is not None else max(3, s.trials // 3)
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = _study(out, json.loads(json.dumps(key, default=str)), s.seed, startup)
        if out is not None:
            _write_split(out, data, split)
        if "before" not in study.user_attrs:
            before = evaluate(lm, calib, letter=False, should_stop=should_stop)
            study.set_user_attr("before", {k: float(before[k]) for k in KEYS if k in before})
        before = study.user_attrs["before"]
        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        done = len(study.get_trials(deepcopy=False, states=finished))
        todo = max(0, s.trials - done)
        if not study.trials and todo:
            study.enqueue_trial(_defaults(lm, method, resolved, fixed), user_attrs={"defaults": True})
        log(f"{method}: {s.trials} trials, {done} already done, {todo} to run (steps up to {steps}, "
            f"{len(split['calibration']['forget'])}+{len(split['calibration']['retain'])} calibration items)")
        counter = {"n": 0}

        def objective(trial):
            counter["n"] += 1
            n = counter["n"]
            params = {}
            for k, (lo, hi, lg, integer) in resolved.items():
                params[k] = trial.suggest_int(k, lo, hi, log=lg) if integer else trial.suggest_float(k, lo, hi, log=lg)
            hp = make_hparams(spec.hparams_cls, _overrides(params, fixed, s.seed))
            t0 = time.perf_counter()

            def tick(event: dict) -> None:
                if progress is not None:
                    progress({**event, "phase": "fit", "trial": n, "trials": todo, "number": trial.number})

            try:
                edit = spec.fit(lm, data, hp, progress=tick, should_stop=should_stop)
            except UserError as exc:  # a diverging loss, a setting the method refuses
                trial.set_user_attr("pruned", f"the fit stopped: {exc}")
                raise optuna.TrialPruned() from None
            trial.set_user_attr("fit_s", round(time.perf_counter() - t0, 2))
            after, reason = _measure(lm, calib, edit.plan(), should_stop, before, s.prune_retain_drop)
            trial.set_user_attr("metrics", {k: float(after[k]) for k in KEYS if k in after})
            trial.set_user_attr("wall_s", round(time.perf_counter() - t0, 2))
            if reason:
                trial.set_user_attr("pruned", reason)
                raise optuna.TrialPruned()
            values = objectives(before, after)
            for name, v, bar in zip(("forget", "retain", "ppl"), values, _bars()):
                trial.set_constraint(name, v - bar)
            trial.set_user_attr("meets_bars", meets_bars(before, after))
            return values

        def after_trial(study, trial) -> None:
            if trial.state not in finished:
                return
            rows = [_row(t, method) for t in study.get_trials(deepcopy=False, states=finished)]
            front = front_of(rows)
            if out is not None:
                _write_rows(out, rows, front)
            row = next(r for r in rows if r["trial"] == trial.number)
            log(f"[{counter['n']}/{todo}] trial {trial.number} {row['state']}: {_describe(row)}")
            if progress is not None:
                progress({"phase": "trial", "trial": counter["n"], "trials": todo, "row": row, "rows": rows,
                          "front": front, "before": before})
            if should_stop is not None and should_stop():
                raise Cancelled("calibration cancelled; the finished trials are kept")

        if todo:
            study.optimize(objective, n_trials=todo, callbacks=[after_trial])
        rows = [_row(t, method) for t in study.get_trials(deepcopy=False, states=finished)]
    finally:
        optuna.logging.set_verbosity(previous)
    front = front_of(rows)
    chosen, ok, statement = choose_setting(rows, method)
    result = CalibrationResult(method=method, rows=rows, front=front, chosen=chosen, meets_bars=ok,
                               statement=statement, before=before, heldout={}, overrides={},
                               split={p: {k: len(v) for k, v in split[p].items()} for p in split}, new_trials=todo,
                               bars=dict(zip(("forget_margin", "retain_drop", "ppl_rise"), _bars())))
    if chosen is not None:
        params = json.loads(chosen["settings"])
        hp = make_hparams(spec.hparams_cls, _overrides(params, fixed, s.seed))
        result.overrides = dataclasses.asdict(hp)
        result.heldout = _heldout(lm, data, heldout, spec, hp, out, chosen, progress, should_stop)
        result.statement += " " + _heldout_sentence(result.heldout)
        if out is not None and data_spec:
            result.config = _config(lm, data_spec, out, method, result.overrides, s.seed)
            result.config_path = str(out / CONFIG_FILE)
    if lm.fingerprint() != fp:
        raise AssertionError("base weights changed during calibration")
    result.wall_s = round(time.perf_counter() - t_start, 2)
    if out is not None:
        _write_rows(out, rows, front)
        atomic_write_text(out / RESULT_FILE, json.dumps(result.to_json(), indent=2, default=float) + "\n")
    return result


def _describe(row: dict) -> str:
    if row["state"] != "complete":
        return f"{row['settings']} stopped early: {row['pruned']}"
    return (f"{row['settings']}: forget {row['forget_cloze_acc']:.1%}, retain {row['retain_cloze_acc']:.1%}, "
            f"ppl {row['retain_ppl']:.2f}" + (" (meets the bars)" if row["meets_bars"] else ""))


def choose_setting(rows: list[dict], method: str) -> tuple[dict | None, bool, str]:
    """The setting to report, whether it meets the bars (on the calibration items), and the plain
    sentence: among the complete trials that meet the bars the least :func:`badness`, else the
    least :func:`shortfall` (the closest), said so."""
    done = [r for r in rows if r["state"] == "complete"]
    if not done:
        return None, False, (f"No {method} trial finished scoring ({len(rows)} stopped early): widen or move the "
                             f"search space.")
    values = {r["trial"]: (r["forget_gap"], r["retain_drop"], r["ppl_rise"]) for r in done}
    meeting = [r for r in done if r["meets_bars"]]
    if meeting:
        best = min(meeting, key=lambda r: (badness(values[r["trial"]]), r["trial"]))
        return best, True, (f"{len(meeting)} of {len(done)} scored {method} settings meet the bars on the "
                            f"calibration items; the chosen one (trial {best['trial']}) is {best['settings']}.")
    best = min(done, key=lambda r: (shortfall(values[r["trial"]]), r["trial"]))
    m, r, p = _bars()
    return best, False, (f"None of the {len(done)} scored {method} settings in the searched space meets the bars "
                         f"(forget within {m * 100:.0f} points of chance, retain drop at most {r * 100:.0f} points, "
                         f"perplexity at most +{p:.0%}) on the calibration items; the closest (trial {best['trial']}) "
                         f"is {best['settings']}.")


def _heldout(lm, data, view, spec, hp, out: Path | None, chosen: dict, progress, should_stop) -> dict:
    """The chosen setting refitted (the same seed: the trial's edit) and scored on the held-out
    items, beside the original model on them; reused from calibration.json when it is the same."""
    from unlearnviz.evaluation.mcq import evaluate
    from unlearnviz.evaluation.verdicts import forget_verdict, retain_verdict

    settings = dataclasses.asdict(hp)
    if out is not None and (out / RESULT_FILE).exists():
        try:
            old = json.loads((out / RESULT_FILE).read_text())
            if old.get("overrides") == json.loads(json.dumps(settings)) and old.get("heldout"):
                return old["heldout"]
        except (OSError, ValueError):
            pass  # damaged: computed again
    tick = None if progress is None else (lambda ev: progress({**ev, "phase": "final", "number": chosen["trial"]}))
    edit = spec.fit(lm, data, hp, progress=tick, should_stop=should_stop)
    before = evaluate(lm, view, letter=False, should_stop=should_stop)
    after = evaluate(lm, view, plan=edit.plan(), letter=False, should_stop=should_stop)
    keep = [k for k in KEYS if k in before] + ["forget_n", "retain_n", "forget_b_n"]
    b, a = {k: float(before[k]) for k in keep if k in before}, {k: float(after[k]) for k in keep if k in after}
    return {"before": b, "after": a, "meets_bars": meets_bars(b, a),
            "verdicts": [forget_verdict(b, a).text, retain_verdict(b, a).text]}


def _heldout_sentence(h: dict) -> str:
    b, a = h["before"], h["after"]
    return (f"On the held-out items it scores forget {b['forget_cloze_acc']:.1%} → {a['forget_cloze_acc']:.1%} "
            f"(floor {b.get('forget_floor_acc', 0):.1%}), retain {b['retain_cloze_acc']:.1%} → "
            f"{a['retain_cloze_acc']:.1%}, perplexity {b['retain_ppl']:.2f} → {a['retain_ppl']:.2f}: "
            + ("within the bars there too." if h["meets_bars"] else "not within the bars there."))


# ---- files --------------------------------------------------------------------------------------
def _write_split(out: Path, data, split: dict) -> None:
    atomic_write_text(out / SPLIT_FILE, json.dumps(split) + "\n")
    f, r = split["heldout"]["forget"], split["heldout"]["retain"]
    atomic_write_text(out / HELDOUT_FILES["forget_mcq"], "".join(
        json.dumps(_item_row(data.forget_mcq[i], data.forget_half[i])) + "\n" for i in f))
    atomic_write_text(out / HELDOUT_FILES["retain_mcq"], "".join(
        json.dumps(_item_row(data.retain_mcq[i])) + "\n" for i in r))


def _write_rows(out: Path, rows: list[dict], front: list[int]) -> None:
    from unlearnviz.sweep import write_results

    write_results(out, [{**r, "front": r["trial"] in front} for r in rows])


def _config(lm, data_spec: str, out: Path, method: str, overrides: dict, seed: int) -> dict:
    """config.yaml: the edit fitted on ``data_spec`` (its corpora and every item's spans, as the
    trials were), evaluated on the held-out items (``data.spec``: that data with its MCQ parts
    replaced by the held-out files)."""
    from unlearnviz.config import DTYPES, parse_config
    from unlearnviz.data.sources import compose_spec

    heldout_spec = compose_spec(data_spec, {p: {"source": str((out / name).resolve())}
                                            for p, name in HELDOUT_FILES.items()})
    dtype = str(lm.dtype).removeprefix("torch.")
    raw = {"version": 1, "seed": seed,
           "model": {"source": lm.source, "dtype": dtype if dtype in DTYPES else "auto", "device": lm.device.type},
           "data": {"spec": heldout_spec},
           "edits": [{"method": method, "hparams": overrides, "data": data_spec}],
           "evaluation": {"letter": False}}
    cfg = parse_config(raw)
    atomic_write_text(out / CONFIG_FILE, cfg.to_yaml())
    return cfg.to_dict()
