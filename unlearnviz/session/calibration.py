"""A calibration inside one session (the dashboard's Calibrate button): the method's key settings
searched with Optuna on the session's model and data, in memory (nothing written, no study
file), checked against the server's limits first; the session's edit timeline and the base
weights stay as they were. The chosen setting comes back as hyperparameter overrides for the
Unlearn tab's fields."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from unlearnviz.calibrate import CalibrationResult, CalibrationSettings, calibrate, check_settings
from unlearnviz.errors import UserError
from unlearnviz.evaluation.verdicts import round4
from unlearnviz.methods.base import get_method
from unlearnviz.session import catalogue

if TYPE_CHECKING:
    from unlearnviz.session import Limits, Session

FRONT_HEADERS = ["trial", "settings", "forget acc", "retain acc", "perplexity change", "meets the bars", "front"]


def ui_settings(method: str, trials, steps, limits: Limits) -> CalibrationSettings:
    """The settings a visitor asked for, refused (one line) when malformed or over ``limits``:
    steps at most ``max_steps``, and trials × steps at most what the largest sweep this server
    allows may cost (``max_sweep_points`` × ``max_steps`` training steps)."""
    get_method(str(method or "").strip())
    for name, value in (("trials", trials), ("steps", steps)):
        if value is None or isinstance(value, bool) or float(value) != int(float(value)) or int(float(value)) < 1:
            raise UserError(f"{name} must be a whole number of at least 1, got {value!r}")
    trials, steps = int(float(trials)), int(float(steps))
    if steps > limits.max_steps:
        raise UserError(f"steps={steps} is over this server's limit of {limits.max_steps}")
    budget = limits.max_sweep_points * limits.max_steps
    if trials * steps > budget:
        raise UserError(f"{trials} trials of up to {steps} steps is over this server's budget of {budget} training "
                        f"steps in all: fewer trials or fewer steps")
    settings = CalibrationSettings(trials=trials, steps=steps)
    check_settings(method.strip(), settings)
    return settings


def run_calibration(session: Session, method: str, settings: CalibrationSettings,
                    progress: Callable[[dict], None] | None = None,
                    should_stop: Callable[[], bool] | None = None) -> CalibrationResult:
    """Calibrate ``method`` on the session's model and data, nothing written; once it is done, an
    edit timeline or base weights that changed are a bug (AssertionError)."""
    lm, data = session.require_model(), session.require_data()
    fp, n_edits = lm.fingerprint(refresh=False), len(session.stack)
    result = calibrate(lm, data, method.strip(), settings, None, progress=progress, should_stop=should_stop)
    if lm.fingerprint() != fp or len(session.stack) != n_edits:
        raise AssertionError("the calibration changed the model's weights or the edit timeline")
    return result


def front_table(rows: list[dict], front: list[int]) -> list[list]:
    """One table row per finished trial, in FRONT_HEADERS' order, the front first."""
    order = sorted(rows, key=lambda r: (r["trial"] not in front, r["trial"]))
    return [[r["trial"], r["settings"] if r["state"] == "complete" else f"{r['settings']} (stopped: {r['pruned']})",
             round4(r.get("forget_cloze_acc")), round4(r.get("retain_cloze_acc")),
             None if r.get("ppl_rise") is None else f"{r['ppl_rise']:+.1%}", "yes" if r.get("meets_bars") else "",
             "yes" if r["trial"] in front else ""] for r in order]


def chosen_fields(method: str, overrides: dict) -> dict:
    """The chosen setting as the Unlearn tab's field values: every hyperparameter of ``method``,
    the chosen ones where given, the defaults elsewhere (lists as the fields' comma text)."""
    out = {}
    for row in catalogue.hparam_rows(method):
        value = overrides.get(row["name"], row["default"])
        out[row["name"]] = ",".join(map(str, value)) if isinstance(value, list) else value
    return out
