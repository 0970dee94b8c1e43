"""The command line: ``python -m unlearnviz COMMAND``.

Every command takes the same model and data arguments as the dashboard. A problem the user can
fix ends the command with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from unlearnviz.errors import UserError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # keeps stderr to the one error line


class OneLineParser(argparse.ArgumentParser):
    """Argument errors as one line on stderr (exit 2), like every other user error."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default",
                   help="'default' (built-in SmolLM2-135M-Instruct), a folder, a .gguf file or a hub id")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16, float16 or auto")
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto")
    p.add_argument("--device-map", default=None, help="'auto' spreads the model over several GPUs")
    p.add_argument("--quantization", default=None, choices=["8bit", "4bit"], help="bitsandbytes")
    p.add_argument("--trust-remote-code", action="store_true", help="operator opt-in: run model code")
    p.add_argument("--allow-pickle", action="store_true", help="operator opt-in: load .bin weights")


def load_model_from_args(args: argparse.Namespace):
    from unlearnviz.data.synthetic import resolve_model_source
    from unlearnviz.model import LoadOptions, load_model

    return load_model(resolve_model_source(args.model), LoadOptions(
        dtype=args.dtype, device=args.device, device_map=args.device_map,
        quantization=args.quantization, trust_remote_code=args.trust_remote_code,
        allow_pickle=args.allow_pickle))


def write_json(path: str | None, obj) -> None:
    text = json.dumps(obj, indent=2, default=float)
    print(text)
    if path:
        from unlearnviz.io import atomic_write_text

        atomic_write_text(Path(path), text + "\n")


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


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m unlearnviz", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
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
    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


_EXTRA_COMMANDS: list = []


def main(argv: list[str] | None = None) -> int:
    import unlearnviz.cli_analyze  # noqa: F401
    import unlearnviz.cli_bundle  # noqa: F401
    import unlearnviz.cli_edit  # noqa: F401  (registers run/relearn/export)
    import unlearnviz.cli_report  # noqa: F401
    import unlearnviz.cli_sweep  # noqa: F401

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.fn(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0
