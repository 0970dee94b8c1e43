"""CLI commands about the model and data alone: ``prepare``, ``info``, ``data list``, ``eval`` (of one model,
or of a base and an ``--unlearned`` checkpoint side by side)."""

from __future__ import annotations

import argparse

from unlearnviz.cli.common import (
    add_data_args,
    add_model_args,
    add_unlearned_arg,
    data_spec_from_args,
    imported_edit,
    load_model_from_args,
    write_json,
)
from unlearnviz.errors import UserError


def cmd_prepare(args: argparse.Namespace) -> None:
    from unlearnviz.model.loading import prepare_default

    print(f"default model ready at {prepare_default()}")


def cmd_info(args: argparse.Namespace) -> None:
    if not args.plan:
        if args.config_only:
            raise UserError("--config-only goes with --plan (a config has no weights to describe)")
        write_json(None, load_model_from_args(args).info())
        return
    from unlearnviz.session.planning import plan_report

    overrides = {k: v for k, v in (("batch_size", args.batch_size), ("max_tokens", args.max_tokens),
                                   ("steps", args.steps)) if v is not None}
    methods = [args.method] if args.method else None
    if args.config_only:
        write_json(None, plan_report(None, methods, overrides, config=args.config_only, dtype=args.dtype,
                                     device=args.device))
    else:
        write_json(None, plan_report(load_model_from_args(args), methods, overrides))


def cmd_data_list(args: argparse.Namespace) -> None:
    from unlearnviz.data.loaders import builtin_card, builtin_names, load_builtin

    for name in builtin_names():
        d = load_builtin(name)
        s, card = d.summary(), builtin_card(name)
        base = card.get("baseline", {})
        acc = " ".join(f"{k}={v:.1%}" for k, v in base.items() if k.endswith("_acc"))
        print(f"builtin:{name}  forget_mcq={s['forget_mcq']} retain_mcq={s['retain_mcq']} "
              f"forget_texts={s['forget_texts']} retain_texts={s['retain_texts']} "
              f"unigram_overlap={s['unigram_overlap']:.1%} bigram_overlap={s['bigram_overlap']:.1%}"
              + (f"  {acc}" if acc else ""))


def cmd_data_show(args: argparse.Namespace) -> None:
    from unlearnviz.data import load_data

    data = load_data(data_spec_from_args(args))
    write_json(args.json, {**data.summary(), "provenance": data.provenance, "parts": data.parts,
                           "content_hash": data.content_hash()})


def cmd_data_fetch(args: argparse.Namespace) -> None:
    import shlex
    import sys
    from pathlib import Path

    from unlearnviz.data.compose import fetch

    out = Path(args.out)
    saved = fetch(args.spec, out, log=lambda m: print(m, file=sys.stderr, flush=True))
    spec = args.spec if args.spec.startswith("preset:") or ";" in args.spec else f"preset:{args.spec}"
    flags = (f"--data {shlex.quote(spec + '@' + str(out))}" if spec.startswith("preset:") and ";" not in spec else
             " ".join(f"--{p.replace('_', '-')} {shlex.quote(f)}" for p, fs in saved.items() for f in fs))
    write_json(None, {"saved": saved, "use_offline": flags})


def cmd_eval(args: argparse.Namespace) -> None:
    from unlearnviz.data import check_data, load_data

    spec = data_spec_from_args(args)
    check_data(spec)  # before torch is imported: a bad data argument fails at once
    from unlearnviz.evaluation.mcq import evaluate
    from unlearnviz.session import check_fits_context

    lm = load_model_from_args(args)
    data = load_data(spec, tokenizer=lm.tokenizer)
    check_fits_context(lm, data, letter=not args.no_letter)
    edit = imported_edit(lm, args)
    if edit is None:
        res = evaluate(lm, data, letter=not args.no_letter)
        res.update({"model": lm.name, "data": data.name})
    else:  # the base and the checkpoint, rows of the same batches
        res = {"original": evaluate(lm, data, letter=not args.no_letter),
               "edited": evaluate(lm, data, plan=edit.plan(), letter=not args.no_letter),
               "model": lm.name, "unlearned": edit.hparams.get("source"), "data": data.name}
    write_json(args.json, res)


def register(sub) -> None:
    sub.add_parser("prepare", help="convert the built-in default model once").set_defaults(fn=cmd_prepare)
    p = sub.add_parser("info", help="print the model's family, size and fingerprint as JSON")
    add_model_args(p)
    p.add_argument("--plan", action="store_true", help="print the planned peak memory of each action instead")
    p.add_argument("--config-only", default=None, metavar="NAME", help="with --plan: a named config's shapes on "
                   "the meta device, no weights (zephyr-7b, llama-3-8b, qwen2.5-7b, gemma-2-9b)")
    p.add_argument("--method", default=None, help="with --plan: only this method's fit (rmu, srmu or mrp)")
    p.add_argument("--batch-size", type=int, default=None, help="with --plan: the fits' batch size")
    p.add_argument("--max-tokens", type=int, default=None, help="with --plan: tokens per text (-1 = auto: 512)")
    p.add_argument("--steps", type=int, default=None, help="with --plan: the fits' steps")
    p.set_defaults(fn=cmd_info)
    p = sub.add_parser("data", help="data sets")
    dsub = p.add_subparsers(dest="data_command", required=True)
    dsub.add_parser("list", help="list the built-in sets").set_defaults(fn=cmd_data_list)
    q = dsub.add_parser("show", help="load a data set (or its four parts) and print its summary and provenance")
    add_data_args(q)
    q.add_argument("--json", default=None, help="also write the JSON here")
    q.set_defaults(fn=cmd_data_show)
    q = dsub.add_parser("fetch", help="save a preset's (or a spec's) hub datasets to a folder, for offline use")
    q.add_argument("spec", help="a preset (wmdp-bio, wmdp-cyber, wmdp) or a data spec with hf: parts")
    q.add_argument("--out", required=True, help="the folder to write (one save_to_disk folder per part)")
    q.set_defaults(fn=cmd_data_fetch)
    p = sub.add_parser("eval", help="forget/retain accuracy (letter, cloze, floor) and perplexity")
    add_model_args(p)
    add_unlearned_arg(p)
    add_data_args(p)
    p.add_argument("--json", default=None, help="also write the JSON here")
    p.add_argument("--no-letter", action="store_true", help="skip lettered (lm-eval) scoring")
    p.set_defaults(fn=cmd_eval)
