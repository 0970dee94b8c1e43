"""CLI command ``sweep``: a grid of settings (and methods) on one model and data set, resumable,
with results.csv and a self-contained trade-off page."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from unlearnviz.cli.common import add_data_args, add_model_args, data_spec_from_args, load_model_from_args
from unlearnviz.errors import UserError


def cmd_sweep(args: argparse.Namespace) -> None:
    from unlearnviz.data import check_data, load_data
    from unlearnviz.io import atomic_write_text
    from unlearnviz.plots import tradeoff_figure
    from unlearnviz.report.page import figures_page
    from unlearnviz.runs import read_run_config
    from unlearnviz.sweep import before_metrics, expand, pareto_front, parse_grid, run_sweep

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
    check_data(data_spec)
    lm = load_model_from_args(args)
    data = load_data(data_spec, tokenizer=lm.tokenizer)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    rows = run_sweep(lm, data, points, out, log=lambda m: print(m, file=sys.stderr, flush=True),
                     letter=args.letter)
    front = pareto_front(rows)
    before = before_metrics(out)
    fig = tradeoff_figure(rows, front, before)
    header = {"model": lm.name, "data": data.name, "points": len(rows), "Pareto front": len(front)}
    notes = ["Each point is one edit fitted with the settings on hover; lower forget accuracy and higher "
             "retain accuracy are better, so the best trade-offs lie towards the top left.",
             "Ringed points are the Pareto front: no other point forgets more while keeping more."]
    atomic_write_text(out / "tradeoff.html", figures_page("unlearnviz sweep: forget vs retain", header,
                                                          [("Trade-off", fig)], notes))
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
    p.set_defaults(fn=cmd_sweep)
