"""CLI command ``report``: one self-contained HTML page about a ``run`` folder, for stakeholders.

    python -m unlearnviz report --run runs/srmu --out report.html [--relearn-steps 0] [--chat-prompts 3]

Metrics come from the folder's metrics.json, a relearning curve from its relearn.json when there
is one; the analysis views, the relearning attack and the example answers are computed from the
model and data the run names, with fast settings (see ``--help``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from unlearnviz.cli.common import add_data_args, add_model_args, data_spec_from_args


def cmd_report(args: argparse.Namespace) -> None:
    from unlearnviz.model import LoadOptions
    from unlearnviz.report import ReportSettings, write_run_report

    settings = ReportSettings(max_texts=args.max_texts, max_items=args.max_items, relearn_steps=args.relearn_steps,
                              chat_prompts=args.chat_prompts, chat_tokens=args.chat_tokens)
    opts = LoadOptions(dtype=args.dtype, device=args.device, device_map=args.device_map,
                       quantization=args.quantization, trust_remote_code=args.trust_remote_code,
                       allow_pickle=args.allow_pickle)
    t0 = time.perf_counter()
    out = write_run_report(Path(args.run), Path(args.out), model=args.model,
                           data=data_spec_from_args(args, required=False), settings=settings,
                           relearn_json=Path(args.relearn) if args.relearn else None, load_options=opts,
                           log=lambda m: print(m, file=sys.stderr, flush=True))
    size = out.stat().st_size / 2**20
    print(f"report {out} ({size:.1f} MB, {time.perf_counter() - t0:.0f} s)")


def register(sub) -> None:
    p = sub.add_parser("report", help="a self-contained HTML report of a run folder (opens offline)")
    add_model_args(p)
    p.set_defaults(model=None)  # default: the model the run's manifest names
    p.add_argument("--run", required=True, help="a folder written by `python -m unlearnviz run`")
    p.add_argument("--out", required=True, help="the HTML file to write")
    add_data_args(p, help="the run's data (default: the one its config.yaml or metrics.json names)")
    p.add_argument("--relearn", default=None, help="a relearning result (`relearn --json`); default: "
                                                   "RUN/relearn.json if present, else computed")
    p.add_argument("--relearn-steps", type=int, default=20, help="relearning attack steps when no result is "
                                                                 "given (0 = skip; the report says so)")
    p.add_argument("--chat-prompts", type=int, default=2, help="forget and retain questions each to ask both models")
    p.add_argument("--chat-tokens", type=int, default=32, help="new tokens per example answer")
    p.add_argument("--max-texts", type=int, default=60, help="texts per split for the activation views")
    p.add_argument("--max-items", type=int, default=32, help="questions per split for the residual-knowledge probes")
    p.set_defaults(fn=cmd_report)
