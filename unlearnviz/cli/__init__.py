"""The command line: ``python -m unlearnviz COMMAND``.

Every command takes the same model and data arguments as the dashboard. A problem the user can
fix ends the command with one line on stderr and exit status 2.
"""

from __future__ import annotations

import os
import sys

# Before any command imports huggingface_hub, transformers or gradio: they read these at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # keeps stderr to the one error line

from unlearnviz.cli import analyze, attack, basic, bundle, calibrate, edit, lmeval, report, sessions, sweep  # noqa: E402
from unlearnviz.cli.common import OneLineParser  # noqa: E402
from unlearnviz.errors import UserError  # noqa: E402

# Every command group, in the order `--help` lists them; each adds its sub-commands in register(sub).
COMMAND_GROUPS = (basic, analyze, bundle, sessions, edit, attack, lmeval, report, sweep, calibrate)


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="python -m unlearnviz", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit status: 0, 2 for a user error, 130 when interrupted."""
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0
