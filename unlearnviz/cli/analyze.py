"""CLI command ``analyze``: every analysis view for a model, data set and edit, as JSON + HTML.

    python -m unlearnviz analyze --model default --data builtin:NAME --edit runs/srmu --out runs/srmu-analysis
    python -m unlearnviz analyze --model default --data builtin:NAME --method srmu --set steps=30 --out DIR
    python -m unlearnviz analyze --base default --unlearned CKPT --data builtin:NAME --out DIR

writes ``DIR/analysis.json`` (per layer: separability, centroid distance, CKA, probe accuracy
original/edited, footprint; importance top-k; selectivity; logit-lens summary; verdicts) and
``DIR/analysis.html``, one self-contained page (plotly.js inlined once: it opens offline).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from unlearnviz.cli.common import (
    add_data_args,
    add_model_args,
    add_unlearned_arg,
    data_spec_from_args,
    imported_edit,
    load_model_from_args,
    parse_sets,
)
from unlearnviz.errors import UserError


def _parse_layers(text: str | None) -> list[int] | None:
    if text is None or text.strip().lower() in ("", "all"):
        return None
    out = []
    for part in (p.strip() for p in text.split(",")):
        span = re.fullmatch(r"(\d+)-(\d+)", part)
        if span:
            out.extend(range(int(span[1]), int(span[2]) + 1))
        elif re.fullmatch(r"-?\d+", part):
            out.append(int(part))
        else:
            raise UserError(f"--layers {text!r}: use 'all' or a list such as 0,3,5-7")
    return out


def cmd_analyze(args: argparse.Namespace) -> None:
    from unlearnviz.data import check_data, load_data

    data_spec = data_spec_from_args(args)
    check_data(data_spec)  # fails fast, before the model loads
    if args.edit and args.unlearned:
        raise UserError("give --edit (an edit folder) or --unlearned (a checkpoint made by another tool), not both")
    if (args.edit or args.unlearned) and args.set:
        raise UserError("--set changes the hyperparameters of a fitted edit; with --edit or --unlearned the edit is "
                        "loaded as is")
    layers = _parse_layers(args.layers)
    from unlearnviz.analysis import encode, resolve_layers, run_analysis
    from unlearnviz.io import atomic_write_text
    from unlearnviz.methods import get_method, load_edit, make_hparams
    from unlearnviz.report.page import figures_page
    from unlearnviz.runs import model_for_edit

    spec = hparams = None
    if not args.edit and not args.unlearned:
        spec = get_method(args.method)
        hparams = make_hparams(spec.hparams_cls, parse_sets(args.set))
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    args.model = args.model or (model_for_edit(Path(args.edit)) if args.edit else "default")
    lm = load_model_from_args(args)
    data = load_data(data_spec, tokenizer=lm.tokenizer)
    layers = resolve_layers(lm, layers)
    if args.layer is not None:
        resolve_layers(lm, args.layer)
    for text, what in [(args.prompt, "prompt")] + [(p, "probe prompt") for p in args.probe_prompt]:
        if text is not None:
            encode(lm, [text], what=what)  # fails before a minute of fitting, not after
    t0 = time.perf_counter()
    if args.edit:
        edit = load_edit(Path(args.edit), lm)
    elif args.unlearned:
        edit = imported_edit(lm, args)
    else:
        print(f"fitting {args.method} ({', '.join(f'{k}={v}' for k, v in parse_sets(args.set).items()) or 'defaults'})",
              file=sys.stderr)
        edit = spec.fit(lm, data, hparams)
    fit_s = time.perf_counter() - t0
    res = run_analysis(lm, data, edit, layers=layers, geometry_layer=args.layer, prompt=args.prompt,
                       answer=args.answer, probe_prompts=args.probe_prompt, max_texts=args.max_texts,
                       max_items=args.max_items, variant=args.variant, use_umap=not args.no_umap,
                       probes=not args.no_probes, train_probe=not args.lens_only, batch_size=args.batch_size,
                       log=lambda m: print(m, file=sys.stderr))
    res.timings["edit"] = fit_s
    report = res.to_json(args.top_k)
    report["edit"]["source"] = (str(Path(args.edit).resolve()) if args.edit else
                                f"imported: {edit.hparams.get('source')}" if args.unlearned else f"fitted: {args.method}")
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "analysis.json", json.dumps(report, indent=2) + "\n")
    header = {"model": lm.name, "data": data.name,
              "edit": f"{report['edit'].get('method', 'none')} at layers {report['edit'].get('layers')}",
              "layers analysed": f"{layers[0]}..{layers[-1]} ({len(layers)})",
              "verdict": report.get("verdict") or "n/a"}
    sections = res.figures()
    atomic_write_text(out / "analysis.html", figures_page(f"unlearnviz analysis: {lm.name} on {data.name}", header,
                                                          sections, res.notes))
    summary = {"out": str(out), "wall_s": report["wall_s"], "verdict": report.get("verdict"),
               "selectivity": report["selectivity"]["verdict"], "figures": len(sections)}
    print(json.dumps(summary, indent=2))


def register(sub) -> None:
    p = sub.add_parser("analyze", help="importance maps, geometry, residual-knowledge probes → JSON + HTML")
    add_model_args(p)
    p.set_defaults(model=None)  # default: with --edit the model its manifest names, else the default model
    add_data_args(p)
    p.add_argument("--edit", default=None, help="an edit folder (from `run`); without it (or --unlearned) one is "
                   "fitted")
    add_unlearned_arg(p)
    p.add_argument("--method", default="srmu", help="method to fit when no --edit is given (default srmu)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="hyperparameter override")
    p.add_argument("--out", required=True, help="folder for analysis.json and analysis.html")
    p.add_argument("--layers", default=None, help="layers to analyse: 'all' (default) or e.g. 0,3,5-7")
    p.add_argument("--layer", type=int, default=None, help="layer of the UMAP and single-layer PCA views "
                                                          "(default: the edit's deepest layer)")
    p.add_argument("--prompt", default=None, help="prompt for the logit lens and token signature "
                                                  "(default: the first forget item's stem)")
    p.add_argument("--answer", default=None, help="gold answer for the logit lens")
    p.add_argument("--probe-prompt", action="append", default=[], help="extra prompt shown in the geometry views")
    p.add_argument("--max-texts", type=int, default=150, help="texts per split for the activation views")
    p.add_argument("--max-items", type=int, default=64, help="MCQ items per split for the probes")
    p.add_argument("--variant", default="ratio", choices=["ratio", "difference", "product"])
    p.add_argument("--top-k", type=int, default=10, help="top features per layer in the JSON")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-umap", action="store_true", help="skip UMAP (its first run compiles for ~20-40 s)")
    p.add_argument("--no-probes", action="store_true", help="skip the residual-knowledge probes")
    p.add_argument("--lens-only", action="store_true", help="residual knowledge from the untrained lens readout only "
                                                            "(skips the ridge probes: much faster on large models)")
    p.set_defaults(fn=cmd_analyze)
