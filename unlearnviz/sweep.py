"""Hyperparameter sweeps: a grid of (method, settings) points, each fitted and evaluated, with
results appended to a CSV as they finish so an interrupted sweep resumes where it stopped.

Grid keys are hyperparameter names; ``method`` may itself be a grid key (one command compares
methods on the same data). A key given as ``srmu.c_map`` applies to that method only; a plain
key applies to every method that has it (and is ignored by the others, so ``steps`` can be
shared while ``c_map`` belongs to SRMU). The forget/retain trade-off is read on cloze accuracy
(the primary metric for small models); the Pareto front is the set of points no other point
beats on both forget (lower) and retain (higher) accuracy.

Robustness columns are opt-in (:class:`Robustness`; the CLI's ``--robustness``) because they cost
two attacks per point: each point's edit gets the relearning attack on forget half A and the NF4
quantization attack (``unlearnviz.attacks.card.run_card``), and the row carries
unlearning-depth-score's R (the share of the forgetting gap that survives relearning), Q (that
survives 4-bit quantization) and HM(R, Q), so a trade-off plot can colour its points by
robustness (``plots.tradeoff_figure(color_by="HM")``). An edit that forgot nothing has no gap to
keep: its R, Q and HM are empty.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from unlearnviz.errors import UserError
from unlearnviz.io import atomic_write_text

RESULTS_FILE = "results.csv"
BEFORE_FILE = "before.json"
# The measures every row carries (after the edit), beside the settings.
METRIC_KEYS = ("forget_cloze_acc", "forget_b_cloze_acc", "retain_cloze_acc", "forget_floor_acc",
               "forget_gold_logprob", "retain_gold_logprob", "retain_ppl")


# The robustness columns (R, Q, HM(R, Q)) a --robustness sweep adds to every row.
ROBUSTNESS_KEYS = ("R", "Q", "HM")
CARDS_DIR = "cards"


@dataclass
class Robustness:
    """The opt-in robustness columns of a sweep: R, Q and HM(R, Q) of each point's edit, read from
    a robustness card of ``attacks`` (``attacks.card.summary``: R from relearning on half A, its
    last point; Q from NF4). ``settings``: ``[ATTACK.]KEY=value`` pairs for the card
    (``attacks.card.split_settings``), over ``DEFAULTS`` (the quantizer runs NF4 only: Q reads
    nothing else). A row remembers the settings it was measured with (its ``robustness``
    column); a rerun with other settings measures the point again rather than mixing them."""

    settings: dict[str, Any] = field(default_factory=dict)
    attacks: tuple[str, ...] = ("relearn_forget", "quantize")

    DEFAULTS: ClassVar[dict[str, str]] = {"quantize.formats": "nf4"}

    def pairs(self) -> dict[str, Any]:
        """The card's settings: ``DEFAULTS`` with ``settings`` over them, for the chosen attacks."""
        own = {k: v for k, v in self.DEFAULTS.items() if k.partition(".")[0] in self.attacks}
        return {**own, **{k: str(v) for k, v in self.settings.items()}}

    def check(self) -> None:
        """Refuse an unknown attack or setting in one line, before anything is fitted."""
        from unlearnviz.attacks.card import attack_names, split_settings

        split_settings(attack_names(list(self.attacks)), self.pairs())

    def key(self) -> str:
        """What a row records about how its robustness was measured (the resume check)."""
        return json.dumps({"attacks": list(self.attacks), **self.pairs()}, sort_keys=True)


def robustness_columns(card: Mapping[str, Any]) -> dict[str, float | str]:
    """R, Q and HM(R, Q) of a card as row cells, rounded; "" where the card has none (the edit
    forgot nothing on that split, or the attack was not run)."""
    s = card.get("summary") or {}
    return {k: "" if s.get(k) is None else round(float(s[k]), 5) for k in ROBUSTNESS_KEYS}


def parse_grid(items: list[str], what: str = "--grid") -> dict[str, list[str]]:
    """``key=v1,v2,...`` strings to {key: [values]}; a key given twice is an error. ``what`` names
    the input in messages (the CLI's --grid, the dashboard's grid line)."""
    grid: dict[str, list[str]] = {}
    for item in items or []:
        key, sep, values = item.partition("=")
        key = key.strip()
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key or not vals:
            raise UserError(f"{what} {item!r}: use key=v1,v2,...")
        if key in grid:
            raise UserError(f"{what} {key!r} is given twice")
        grid[key] = vals
    return grid


def expand(grid: dict[str, list[str]], base_method: str | None, base: dict | None = None,
           what: str = "--grid") -> list[tuple[str, dict]]:
    """Every (method, overrides) point of the grid, validated up front (unknown key, bad value,
    out of range: one line naming it) so a sweep never fails half-way on a typo."""
    from unlearnviz.methods import get_method, make_hparams

    methods = grid.get("method") or ([base_method] if base_method else [])
    if not methods:
        raise UserError("a sweep needs a method: --method, a config's method, or --grid method=rmu,srmu,...")
    keys = [k for k in grid if k != "method"]
    points = []
    for method in methods:
        spec = get_method(method)
        names = {f.name for f in dataclasses.fields(spec.hparams_cls)}
        mine = []
        for key in keys:
            scope, dot, name = key.rpartition(".")
            if dot and scope not in _method_names():
                raise UserError(f"{what} {key!r}: {scope!r} is not a method")
            if (dot and scope != method) or name not in names:
                if not dot and not any(name in _fields(m) for m in methods):
                    raise UserError(f"{what} {key!r}: no method in this sweep has that hyperparameter")
                continue
            mine.append((name, grid[key]))
        for combo in itertools.product(*[vals for _, vals in mine]) if mine else [()]:
            overrides = {**(base or {}), **{name: v for (name, _), v in zip(mine, combo)}}
            overrides = {k: v for k, v in overrides.items() if k in names}
            make_hparams(spec.hparams_cls, dict(overrides))  # validate now
            points.append((method, overrides))
    return points


def _method_names() -> set[str]:
    from unlearnviz.methods.base import REGISTRY, get_method

    get_method("rmu")  # registers the built-in methods
    return set(REGISTRY)


def _fields(method: str) -> set[str]:
    from unlearnviz.methods import get_method

    return {f.name for f in dataclasses.fields(get_method(method).hparams_cls)}


def point_id(method: str, overrides: dict) -> str:
    """A stable id of a point: the same settings always give the same id (resume key)."""
    blob = json.dumps({"method": method, **{k: str(v) for k, v in sorted(overrides.items())}}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def read_results(folder: Path) -> list[dict]:
    path = folder / RESULTS_FILE
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def write_results(folder: Path, rows: list[dict]) -> None:
    """The whole CSV rewritten atomically after each point: an interrupted sweep leaves the
    points that finished, never a half-written row."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(folder / RESULTS_FILE, buf.getvalue())


def pareto_front(rows: list[dict], forget: str = "forget_cloze_acc", retain: str = "retain_cloze_acc") -> set[str]:
    """Ids of the points that no other point beats on both axes (lower forget, higher retain)."""
    return pareto_ids(rows, lower=(forget,), higher=(retain,))


def pareto_ids(rows: list[dict], lower: tuple[str, ...] = (), higher: tuple[str, ...] = ()) -> set[str]:
    """Ids of the rows no other row dominates: as good on every key (``lower`` keys lower,
    ``higher`` keys higher) and better on one. The sweep's two axes; calibration's three."""
    pts = [(r["id"], [float(r[k]) for k in lower] + [-float(r[k]) for k in higher]) for r in rows]
    return {pid for pid, v in pts
            if not any(all(a <= b for a, b in zip(w, v)) and any(a < b for a, b in zip(w, v)) for _, w in pts)}


def run_sweep(lm, data, points: list[tuple[str, dict]], folder: Path,
              log: Callable[[str], None] = print, letter: bool = False,
              robustness: Robustness | None = None) -> list[dict]:
    """Fit and evaluate every point not already in ``folder/results.csv``; returns all rows."""
    rows: list[dict] = []
    for rows, _ in iter_sweep(lm, data, points, folder, log=log, letter=letter, robustness=robustness):
        pass
    return rows


def iter_sweep(lm, data, points: list[tuple[str, dict]], folder: Path | None = None,
               log: Callable[[str], None] = print, letter: bool = False, before: dict | None = None,
               progress: Callable[[int, int, dict], None] | None = None,
               should_stop: Callable[[], bool] | None = None,
               robustness: Robustness | None = None) -> Iterator[tuple[list[dict], dict]]:
    """The sweep loop, yielding (all rows so far, original-model metrics) once before the first new
    point and again after each one, so a caller can show points as they finish.

    With ``folder`` the rows go to its results.csv and a rerun skips finished points; without it
    nothing is written (the dashboard's small sweep). ``before``, when given, is used instead of
    scoring the original model again. Points are fitted on the unedited model and never stored
    anywhere else; ``progress(i, n, event)`` gets each fit's training events, ``should_stop``
    cancels between training steps and batches (raising ``Cancelled``).

    With ``robustness`` each new point's edit is also attacked (R, Q, HM columns; with ``folder``
    its card goes to ``cards/<id>/attacks.json``); a finished row measured without it, or with
    other settings, is measured again and replaced in place.
    """
    from unlearnviz.evaluation.mcq import evaluate
    from unlearnviz.methods import get_method, make_hparams

    fingerprint = lm.fingerprint(refresh=False)
    rows: list[dict] = []
    saved = None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        rows = read_results(folder)
        before_path = folder / BEFORE_FILE
        if before_path.exists():
            saved = json.loads(before_path.read_text())
            if saved.get("fingerprint") == fingerprint and saved.get("data_hash") == data.content_hash():
                before = saved["metrics"]
            elif rows:
                raise UserError(f"{folder} holds a sweep of another model or data; use a new --out folder")
        elif rows:
            raise UserError(f"{folder} holds a sweep of another model or data; use a new --out folder")
    if before is None:
        before = evaluate(lm, data, letter=letter, should_stop=should_stop)
    if folder is not None and (saved is None or saved.get("metrics") is not before):
        atomic_write_text(folder / BEFORE_FILE, json.dumps({"fingerprint": fingerprint,
                                                            "data_hash": data.content_hash(), "data": data.name,
                                                            "metrics": before}, default=float) + "\n")
    if robustness is not None:
        robustness.check()
        key = robustness.key()
        done = {r["id"] for r in rows if r.get("robustness") == key}
    else:
        done = {r["id"] for r in rows}
    todo = [(m, o) for m, o in points if point_id(m, o) not in done]
    log(f"{len(points)} points, {len(points) - len(todo)} already done, {len(todo)} to run")
    yield rows, before
    for n, (method, overrides) in enumerate(todo, 1):
        spec = get_method(method)
        hparams = make_hparams(spec.hparams_cls, dict(overrides))
        t0 = time.perf_counter()
        tick = None if progress is None else (lambda event, n=n: progress(n, len(todo), event))
        edit = spec.fit(lm, data, hparams, progress=tick, should_stop=should_stop)
        fit_s = time.perf_counter() - t0
        after = evaluate(lm, data, plan=edit.plan(), letter=letter, should_stop=should_stop)
        row = {"id": point_id(method, overrides), "method": method,
               "settings": json.dumps({k: overrides[k] for k in sorted(overrides)}),
               **{f"hp.{k}": v for k, v in sorted(overrides.items())},
               **{k: round(float(after[k]), 5) for k in METRIC_KEYS if k in after},
               **{f"before.{k}": round(float(before[k]), 5) for k in ("forget_cloze_acc", "retain_cloze_acc",
                                                                      "retain_ppl") if k in before},
               "fit_s": round(fit_s, 2)}
        if robustness is not None:
            row.update(attack_point(lm, data, edit, row["id"], robustness, folder, should_stop))
        row["wall_s"] = round(time.perf_counter() - t0, 2)
        ids = [r["id"] for r in rows]  # a row measured again keeps its place
        rows = [*rows, row] if row["id"] not in ids else [row if r["id"] == row["id"] else r for r in rows]
        if folder is not None:
            write_results(folder, rows)
        robust = "".join(f", {k} {'n/a' if row[k] == '' else format(row[k], '.2f')}" for k in ROBUSTNESS_KEYS
                         if robustness is not None)
        log(f"[{n}/{len(todo)}] {method} {row['settings']}: forget {row['forget_cloze_acc']:.1%}, "
            f"retain {row['retain_cloze_acc']:.1%}, ppl {row['retain_ppl']:.1f}{robust} ({row['wall_s']:.0f} s)")
        yield rows, before
    if lm.fingerprint() != fingerprint:
        raise AssertionError("base weights changed during the sweep")


def attack_point(lm, data, edit, pid: str, robustness: Robustness, folder: Path | None,
                 should_stop: Callable[[], bool] | None = None) -> dict:
    """The robustness cells of one point: its edit's card (saved under ``folder/cards/<pid>``),
    R, Q, HM, the attacks' wall time and the settings key."""
    from unlearnviz.attacks.card import run_card, save_card

    t0 = time.perf_counter()
    card = run_card(lm, data, edit.plan(), list(robustness.attacks), robustness.pairs(), should_stop=should_stop,
                    edit={"label": edit.label(), "method": edit.method, "sweep_point": pid})
    if folder is not None:
        save_card(folder / CARDS_DIR / pid, card)
    return {**robustness_columns(card), "attack_s": round(time.perf_counter() - t0, 2),
            "robustness": robustness.key()}


def before_metrics(folder: Path) -> dict:
    path = folder / BEFORE_FILE
    return json.loads(path.read_text())["metrics"] if path.exists() else {}
