"""A small sweep inside one session: a grid of (method, settings) points, checked against the
server's limits before anything is fitted, then fitted one by one on the original model in
memory (the session's edit timeline and the base weights stay as they were), each point scored
on forget and retain, with the Pareto front of the trade-off after every point; opt-in, each
point's edit attacked too (relearning on half A and NF4 quantization: R, Q and HM(R, Q) columns,
``unlearnviz.sweep.Robustness``), within the same limits as the robustness card."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from unlearnviz.errors import UserError
from unlearnviz.evaluation.verdicts import round4
from unlearnviz.methods.base import get_method, make_hparams
from unlearnviz.session import has_learned_positions
from unlearnviz.sweep import ROBUSTNESS_KEYS, Robustness, expand, iter_sweep, pareto_front, parse_grid

if TYPE_CHECKING:
    from unlearnviz.model.loading import LoadedModel
    from unlearnviz.session import Limits, Session

SWEEP_HEADERS = ["method", "settings", "forget acc", "retain acc", "retain ppl", "fit s", "Pareto front"]
ROBUSTNESS_HEADERS = ["R (relearning)", "Q (NF4)", "HM(R, Q)"]


def grid_points(methods: list[str] | None, lines: list[str], limits: Limits,
                lm: LoadedModel | None = None) -> list[tuple[str, dict]]:
    """Every (method, overrides) point of ``key=v1,v2`` ``lines`` for each of ``methods``, refused
    (UserError, naming the line or the point) when it is malformed or over ``limits``; with
    ``lm``, a ``max_tokens`` over a learned-position model's context is refused too."""
    methods = [m for m in (methods or []) if m]
    if not methods:
        raise UserError("choose at least one method for the sweep")
    grid = parse_grid(lines, what="grid line")
    if "method" in grid:
        raise UserError("choose the methods with the check boxes, not a method= line")
    points = expand({"method": methods, **grid}, None, what="grid line")
    if len(points) > limits.max_sweep_points:
        raise UserError(f"the grid has {len(points)} points; this server's limit is {limits.max_sweep_points}: "
                        f"fewer values or fewer methods")
    for method, overrides in points:
        hp = make_hparams(get_method(method).hparams_cls, dict(overrides))
        if getattr(hp, "steps", 0) > limits.max_steps:
            raise UserError(f"{method}: steps={hp.steps} is over this server's limit of {limits.max_steps}")
        if lm is not None and getattr(hp, "max_tokens", 0) > lm.max_length and has_learned_positions(lm):
            raise UserError(f"{method}: max_tokens={hp.max_tokens} is over this model's context of {lm.max_length}")
    return points


def live_sweep(session: Session, points: list[tuple[str, dict]],
               progress: Callable[[int, int, dict], None] | None = None,
               should_stop: Callable[[], bool] | None = None,
               tracker=None, robustness: Robustness | None = None) -> Iterator[tuple[list[dict], set[str], dict]]:
    """Fit ``points`` on the session's model and data, nothing written, yielding (rows so far,
    their Pareto front, the original model's metrics) first with no rows, then after each point.
    The session's original-model metrics are reused; once every point is done, an edit timeline or
    base weights that changed are a bug (AssertionError). ``tracker``: a
    ``session.progress.Tracker`` with one stage per point (``sweep_tracker``), moved by its steps.
    ``robustness`` (``robustness_for``): each point's R, Q and HM too."""
    lm, fp, n_edits = session.lm, session.lm.fingerprint(refresh=False), len(session.stack)
    tracker = tracker if tracker is not None else sweep_tracker(points)
    names = tracker.stages()

    def tick(i: int, n: int, event: dict) -> None:
        if 1 <= i <= len(names):
            tracker.move(names[i - 1], int(event.get("step", 0)), event.get("total"))
        if progress is not None:
            progress(i, n, event)

    for rows, before in iter_sweep(lm, session.data, points, None, log=lambda _m: None, before=session.before,
                                   progress=tick, should_stop=should_stop, robustness=robustness):
        yield rows, pareto_front(rows) if rows else set(), before
    if lm.fingerprint() != fp or len(session.stack) != n_edits:
        raise AssertionError("the sweep changed the model's weights or the edit timeline")


def sweep_tracker(points: list[tuple[str, dict]]):
    """The sweep's plan: one stage per point, named by its method and settings."""
    from unlearnviz.session.progress import parts_tracker

    return parts_tracker("Sweep", [f"point {i} of {len(points)}: {m} {' '.join(f'{k}={v}' for k, v in o.items())}".strip()
                                   for i, (m, o) in enumerate(points, 1)])


def robustness_for(steps, max_items, limits: Limits) -> Robustness:
    """The robustness columns' attacks with a visitor's relearning steps and questions per side,
    refused in one line when malformed or over ``limits`` (the robustness card's rule)."""
    from unlearnviz.session.attacks import ui_settings

    names, settings = ui_settings(list(Robustness().attacks), steps, max_items, limits)
    robustness = Robustness(settings=settings, attacks=tuple(names))
    robustness.check()
    return robustness


def sweep_headers(robustness: bool = False) -> list[str]:
    """The table's headers: SWEEP_HEADERS, with the robustness columns before the front's."""
    return [*SWEEP_HEADERS[:-1], *ROBUSTNESS_HEADERS, SWEEP_HEADERS[-1]] if robustness else list(SWEEP_HEADERS)


def sweep_table(rows: list[dict], front: set[str], robustness: bool = False) -> list[list]:
    """One table row per point, in ``sweep_headers(robustness)``' order (an R, Q or HM the point has
    none of, because it forgot nothing, is "n/a")."""
    def robust(r: dict) -> list:
        return [round4(r[k]) if r.get(k) not in (None, "") else "n/a" for k in ROBUSTNESS_KEYS] if robustness else []

    return [[r["method"], r["settings"], round4(r.get("forget_cloze_acc")), round4(r.get("retain_cloze_acc")),
             round4(r.get("retain_ppl")), r.get("fit_s"), *robust(r), "yes" if r["id"] in front else ""]
            for r in rows]
