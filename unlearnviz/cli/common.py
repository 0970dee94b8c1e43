"""What every command group of the command line shares: the parser that fails in one line, the
model flags, ``--set`` pairs, JSON output and the training progress bar.

Nothing heavy is imported at module level: ``unlearnviz.cli`` sets the hub's offline defaults
before any command imports transformers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from unlearnviz.errors import UserError


class OneLineParser(argparse.ArgumentParser):
    """Argument errors as one line on stderr (exit 2), like every other user error."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The model flags of every command that loads a model (the dashboard's model choices)."""
    p.add_argument("--model", "--base", dest="model", default="default",
                   help="'default' (built-in SmolLM2-135M-Instruct), a folder, a .gguf file or a hub id (--base: the "
                        "same, read as the base an --unlearned checkpoint is compared with)")
    p.add_argument("--dtype", default="auto", help="auto (bfloat16 on CUDA, else float32), float32, bfloat16 or float16")
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto")
    p.add_argument("--device-map", default=None, help="'auto' spreads the model over several GPUs")
    p.add_argument("--quantization", default=None, choices=["8bit", "4bit"], help="bitsandbytes")
    p.add_argument("--trust-remote-code", action="store_true", help="operator opt-in: run model code")
    p.add_argument("--allow-pickle", action="store_true", help="operator opt-in: load .bin weights")


UNLEARNED_HELP = ("an unlearned checkpoint made by another tool (a folder saved by save_pretrained, a .gguf file, a "
                  "hub id where the network is) or a PEFT LoRA adapter folder, compared with --base as an edit")


def add_unlearned_arg(p: argparse.ArgumentParser) -> None:
    """``--unlearned``: the edited side is a checkpoint or adapter made by another tool."""
    p.add_argument("--unlearned", default=None, metavar="CKPT", help=UNLEARNED_HELP)


def imported_edit(lm, args: argparse.Namespace):
    """The edit ``--unlearned`` names, imported against the loaded base (one line on stderr says
    what differed), or None without the flag."""
    if not getattr(args, "unlearned", None):
        return None
    from unlearnviz.methods.imports import import_unlearned

    edit = import_unlearned(lm, args.unlearned, allow_pickle=getattr(args, "allow_pickle", False))
    info = edit.meta.get("import", {})
    print(f"imported {args.unlearned} as an edit of {lm.name}: "
          + ", ".join(f"{k} {v}" for k, v in info.items() if isinstance(v, (int, float, str)))[:300], file=sys.stderr)
    return edit


DATA_HELP = ("builtin:NAME, synthetic[:E], a JSONL/CSV/Parquet file, hf:DATASET[:CONFIG] (needs a network), "
             "preset:NAME[@DIR] (wmdp-bio, wmdp-cyber, wmdp) or a composed spec; the part flags override its parts")
PART_FLAGS = {"forget_corpus": "--forget-corpus", "retain_corpus": "--retain-corpus", "forget_mcq": "--forget-mcq",
              "retain_mcq": "--retain-mcq"}


def add_data_args(p: argparse.ArgumentParser, help: str = DATA_HELP) -> None:
    """``--data`` and the four part flags of every command that reads data (repeat a part flag to
    give a part several sources, one after the other)."""
    p.add_argument("--data", default=None, help=help)
    what = {"forget_corpus": "the forget corpus", "retain_corpus": "the retain corpus",
            "forget_mcq": "the forget multiple-choice set", "retain_mcq": "the retain multiple-choice set"}
    for part, flag in PART_FLAGS.items():
        p.add_argument(flag, action="append", default=None, metavar="SOURCE",
                       help=f"{what[part]} from its own source: builtin:NAME, a file or folder, hf:DATASET[:CONFIG"
                            f"[:SPLIT]], with ?KEY=VALUE options (max_rows, seed, min_chars, chunk_tokens, a column "
                            "map such as text=abstract); overrides that part of --data")


def data_spec_from_args(args: argparse.Namespace, base: str | None = None, required: bool = True) -> str | None:
    """The one data spec string ``--data`` (or ``base``, a config's) and the part flags mean."""
    from unlearnviz.data import compose_spec

    parts = {part: getattr(args, part, None) for part in PART_FLAGS}
    spec = getattr(args, "data", None) or base
    if not spec and not any(parts.values()):
        if required:
            raise UserError("no data: give --data (or all four of --forget-corpus, --retain-corpus, --forget-mcq, "
                            "--retain-mcq)")
        return None
    return compose_spec(spec, parts)


def load_model_from_args(args: argparse.Namespace):
    """The model that ``add_model_args``' flags name, with the operator's opt-ins."""
    from unlearnviz.data.synthetic import resolve_model_source
    from unlearnviz.model import LoadOptions, load_model

    return load_model(resolve_model_source(args.model), LoadOptions(
        dtype=args.dtype, device=args.device, device_map=args.device_map,
        quantization=args.quantization, trust_remote_code=args.trust_remote_code,
        allow_pickle=args.allow_pickle))


def write_json(path: str | None, obj) -> None:
    """Print ``obj`` as JSON and, with ``path``, also write it there (atomically)."""
    text = json.dumps(obj, indent=2, default=float)
    print(text)
    if path:
        from unlearnviz.io import atomic_write_text

        atomic_write_text(Path(path), text + "\n")


def parse_sets(pairs: list[str]) -> dict:
    """``--set key=value`` pairs as a mapping of strings (``make_hparams`` types them)."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UserError(f"--set {pair!r}: use key=value")
        k, v = pair.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def tqdm_progress(total_hint: int = 0) -> tuple[Callable[[dict], None], object]:
    """A training-progress callback drawing a tqdm bar, and the bar (close it before any error line)."""
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal, so logs and errors stay one clean line each
    bar = tqdm(total=total_hint or None, desc="training", leave=False, disable=None)

    def progress(event: dict) -> None:
        if event.get("warning"):  # one line on stderr, above the bar
            tqdm.write(f"warning: {event['warning']}", file=sys.stderr)
        if bar.total != event.get("total"):
            bar.total = event.get("total")
        bar.n = event["step"]
        bar.set_postfix(loss=f"{event.get('loss', 0):.3g}")
        bar.refresh()

    return progress, bar

