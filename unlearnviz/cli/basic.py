"""CLI commands about the model and data alone: ``prepare``, ``info``, ``data list``, ``eval``."""

from __future__ import annotations

import argparse

from unlearnviz.cli.common import add_model_args, load_model_from_args, write_json


def cmd_prepare(args: argparse.Namespace) -> None:
    from unlearnviz.model.loading import prepare_default

    print(f"default model ready at {prepare_default()}")


def cmd_info(args: argparse.Namespace) -> None:
    write_json(None, load_model_from_args(args).info())


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


def cmd_eval(args: argparse.Namespace) -> None:
    from unlearnviz.data import load_data

    data = load_data(args.data)  # before torch is imported: a bad data argument fails at once
    from unlearnviz.evaluation.mcq import evaluate
    from unlearnviz.session import check_fits_context

    lm = load_model_from_args(args)
    check_fits_context(lm, data, letter=not args.no_letter)
    res = evaluate(lm, data, letter=not args.no_letter)
    res.update({"model": lm.name, "data": data.name})
    write_json(args.json, res)


def register(sub) -> None:
    sub.add_parser("prepare", help="convert the built-in default model once").set_defaults(fn=cmd_prepare)
    p = sub.add_parser("info", help="print the model's family, size and fingerprint as JSON")
    add_model_args(p)
    p.set_defaults(fn=cmd_info)
    p = sub.add_parser("data", help="data sets")
    dsub = p.add_subparsers(dest="data_command", required=True)
    dsub.add_parser("list", help="list the built-in sets").set_defaults(fn=cmd_data_list)
    p = sub.add_parser("eval", help="forget/retain accuracy (letter, cloze, floor) and perplexity")
    add_model_args(p)
    p.add_argument("--data", required=True, help="builtin:NAME, a JSONL/CSV/Parquet file or hf:DATASET[:CONFIG]")
    p.add_argument("--json", default=None, help="also write the JSON here")
    p.add_argument("--no-letter", action="store_true", help="skip lettered (lm-eval) scoring")
    p.set_defaults(fn=cmd_eval)
