"""CLI command ``sweep``: a grid of settings (and methods) on one model and data set, resumable,
with results.csv and a self-contained trade-off page; ``--robustness`` adds R, Q and HM(R, Q)
columns (each point's edit attacked: relearning on half A and NF4 quantization) and the
trade-off coloured by each."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from unlearnviz.cli.common import add_data_args, add_model_args, data_spec_from_args, load_model_from_args, parse_sets
from unlearnviz.errors import UserError


def cmd_sweep(args: argparse.Namespace) -> None:
    from unlearnviz.data import check_data, load_data
    from unlearnviz.io import atomic_write_text
    from unlearnviz.plots import tradeoff_figure
    from unlearnviz.report.page import figures_page
    from unlearnviz.runs import read_run_config
    from unlearnviz.sweep import (
        ROBUSTNESS_KEYS,
        Robustness,
        before_metrics,
        expand,
        pareto_front,
        parse_grid,
        run_sweep,
    )

    cfg = read_run_config(args.config, args.method)
    method = args.method or cfg.get("method")
    data_spec = data_spec_from_args(args, cfg.get("data"), required=False)
    if cfg and args.model == "default":  # the flags' defaults: the config's model section decides
        args.model = cfg["model"]
        args.dtype = cfg["dtype"] if args.dtype == "auto" else args.dtype
        args.device = cfg["device"] if args.device == "auto" else args.device
    if not data_spec:
        raise UserError("sweep needs --data (or a --config that names it)")
    grid = parse_grid(args.grid)
    points = expand(grid, method, cfg.get("hparams", {}))
    if len(points) > args.max_points:
        raise UserError(f"the grid has {len(points)} points, over --max-points {args.max_points}")
    robustness = Robustness(settings=parse_sets(args.attack_set)) if args.robustness else None
    if robustness is None and args.attack_set:
        raise UserError("--attack-set needs --robustness")
    if robustness is not None:
        robustness.check()  # a bad attack setting fails before the model loads
    check_data(data_spec)
    lm = load_model_from_args(args)
    data = load_data(data_spec, tokenizer=lm.tokenizer)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    rows = run_sweep(lm, data, points, out, log=lambda m: print(m, file=sys.stderr, flush=True),
                     letter=args.letter, robustness=robustness)
    front = pareto_front(rows)
    before = before_metrics(out)
    fig = tradeoff_figure(rows, front, before)
    figures = [("Trade-off", fig)]
    if robustness is not None:
        names = {"R": "R (relearning)", "Q": "Q (NF4 quantization)", "HM": "HM(R, Q)"}
        figures += [(f"Trade-off by {names[k]}", tradeoff_figure(rows, front, before, color_by=k))
                    for k in ROBUSTNESS_KEYS]
    header = {"model": lm.name, "data": data.name, "points": len(rows), "Pareto front": len(front)}
    notes = ["Each point is one edit fitted with the settings on hover; lower forget accuracy and higher "
             "retain accuracy are better, so the best trade-offs lie towards the top left.",
             "Ringed points are the Pareto front: no other point forgets more while keeping more."]
    if robustness is not None:
        notes.append("R and Q: the share of the forgetting gap (original minus edited forget accuracy) that survives "
                     "relearning on forget half A (half B scored) and NF4 quantization, both models attacked the same "
                     "way (1 = it survives, 0 = it closed); HM is their harmonic mean; hollow grey points forgot "
                     "nothing, so there was no gap to keep. Each point's card is in cards/<id>/attacks.json.")
    atomic_write_text(out / "tradeoff.html", figures_page("unlearnviz sweep: forget vs retain", header,
                                                          figures, notes))
    print(f"{len(rows)} points in {out / 'results.csv'}; trade-off page {out / 'tradeoff.html'}")


def register(sub) -> None:
    p = sub.add_parser("sweep", help="run a grid of settings (and methods); results.csv and tradeoff.html")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--method", default=None, help="rmu, srmu or mrp (or a --grid method=...)")
    p.add_argument("--config", default=None, help="a run config (YAML/JSON, the `run --config` schema) with one edit: "
                   "its model, data, method and hyperparameters are the sweep's base")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a hyperparameter and its values; METHOD.KEY for one method only; repeatable")
    p.add_argument("--out", required=True, help="folder for results.csv, before.json and tradeoff.html")
    p.add_argument("--letter", action="store_true", help="also score lettered (lm-eval) multiple choice")
    p.add_argument("--max-points", type=int, default=200, help="refuse larger grids")
    p.add_argument("--robustness", action="store_true",
                   help="also attack each point's edit (relearning on forget half A, NF4 quantization): R, Q and "
                        "HM(R, Q) columns and the trade-off coloured by them (costs two attacks per point)")
    p.add_argument("--attack-set", action="append", default=[], metavar="[ATTACK.]KEY=VALUE",
                   help="a setting of those attacks, as `attack --set` (relearn_forget.steps=20, max_items=32)")
    p.set_defaults(fn=cmd_sweep)
