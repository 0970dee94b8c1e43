"""CLI command ``calibrate``: search a method's key settings on one model and data set with
Optuna (``unlearnviz.calibrate``), resumable, with the chosen setting as a ``run --config`` config
and a self-contained page of the front."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from unlearnviz.cli.common import (
    add_data_args,
    add_model_args,
    data_spec_from_args,
    load_model_from_args,
    parse_sets,
    tqdm_progress,
)
from unlearnviz.errors import UserError


def parse_ranges(items: list[str]) -> dict:
    """``--range KEY=LOW,HIGH[,log|linear]`` as {key: Range}. A key of the built-in spaces keeps
    its kind (layer/layers and steps stay fractions of the depth and of the step cap, integers
    stay integers) and its scale unless log or linear is given; another key is searched on its
    values, as integers where both ends are written as integers."""
    from unlearnviz.calibrate import SPACES, Range

    known = {k: r for space in SPACES.values() for k, r in space.items()}
    out = {}
    for item in items or []:
        key, sep, rest = item.partition("=")
        key, parts = key.strip(), [p.strip() for p in rest.split(",") if p.strip()]
        if not sep or not key or len(parts) not in (2, 3) or parts[2:] not in ([], ["log"], ["linear"]):
            raise UserError(f"--range {item!r}: use KEY=LOW,HIGH or KEY=LOW,HIGH,log")
        try:
            low, high = float(parts[0]), float(parts[1])
        except ValueError:
            raise UserError(f"--range {item!r}: LOW and HIGH must be numbers") from None
        if key in out:
            raise UserError(f"--range {key!r} is given twice")
        base = known.get(key) or Range(low, high, integer=all(p.lstrip("-").isdigit() for p in parts[:2]))
        log = base.log if len(parts) == 2 else parts[2] == "log"
        out[key] = Range(low, high, log=log, integer=base.integer, of=base.of)
    return out


def cmd_calibrate(args: argparse.Namespace) -> None:
    from unlearnviz.calibrate import RESULT_FILE, CalibrationSettings, calibrate, check_settings
    from unlearnviz.data import check_data, load_data
    from unlearnviz.io import atomic_write_text
    from unlearnviz.methods import get_method
    from unlearnviz.plots import calibration_figure
    from unlearnviz.report.page import figures_page

    get_method(args.method)  # an unknown method or a bad setting fails before the model loads
    settings = CalibrationSettings(trials=args.trials, steps=args.steps, fraction=args.fraction, seed=args.seed,
                                   space=parse_ranges(args.range), fixed=parse_sets(args.set))
    check_settings(args.method, settings)
    spec = data_spec_from_args(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    check_data(spec)
    lm = load_model_from_args(args)
    data = load_data(spec, tokenizer=lm.tokenizer)
    tick, bar = tqdm_progress(0)

    def progress(event: dict) -> None:
        if "step" in event:
            tick(event)

    try:
        result = calibrate(lm, data, args.method, settings, out, progress=progress, data_spec=spec,
                           log=lambda m: print(m, file=sys.stderr, flush=True))
    finally:
        bar.close()  # before any error line is printed
    fig = calibration_figure(result.rows, result.front, result.before,
                             result.chosen["trial"] if result.chosen else None, result.bars)
    header = {"model": lm.name, "data": data.name, "method": result.method, "trials": len(result.rows),
              "Pareto front": len(result.front), "meets the bars": "yes" if result.meets_bars else "no"}
    notes = [result.statement, "Each point is one trial (a fit at reduced steps) scored on the calibration items; "
             "the chosen setting's figures in the statement are on the held-out items, which no trial was scored on."]
    atomic_write_text(out / "calibration.html", figures_page(f"unlearnviz calibration: {result.method}", header,
                                                             [("Trials", fig)], notes))
    print(result.statement, file=sys.stderr)
    print(json.dumps({"out": str(out), "trials": len(result.rows), "front": result.front,
                      "chosen": result.chosen["trial"] if result.chosen else None, "meets_bars": result.meets_bars,
                      "heldout": result.heldout, "config": result.config_path,
                      "result": str(out / RESULT_FILE)}, indent=2, default=float))


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="search a method's key settings with Optuna; the chosen one as a config")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--method", required=True, help="rmu, srmu or mrp")
    p.add_argument("--out", required=True, help="folder for optuna.db, results.csv, calibration.json, config.yaml "
                   "and calibration.html; the same command again continues the study there")
    p.add_argument("--trials", type=int, default=24, help="finished trials the study holds when done (the budget)")
    p.add_argument("--steps", type=int, default=None, help="the trials' step cap (default: the method's default "
                   "steps, at most 100); steps are searched from a quarter of it up to it")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the sampler and every fit")
    p.add_argument("--fraction", type=float, default=0.5, help="share of the forget and retain MCQ items the "
                   "trials are scored on; the chosen setting is reported on the others")
    p.add_argument("--range", action="append", default=[], metavar="KEY=LOW,HIGH[,log]",
                   help="replace or add one searched range (layer/layers and steps: fractions of the depth and of "
                        "the step cap); repeatable")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="hold a hyperparameter fixed (e.g. batch_size=4); repeatable")
    p.set_defaults(fn=cmd_calibrate)
