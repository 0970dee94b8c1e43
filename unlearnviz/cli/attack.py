"""CLI command ``attack``: the robustness card of an edit folder or an imported checkpoint.

``python -m unlearnviz attack --edit RUN`` runs every attack (``unlearnviz.attacks``) on the
edit stack of RUN and the original model, prints the card as JSON and writes it as
``attacks.json`` into RUN (or ``--out DIR``), where ``report --run RUN`` shows it. With
``--unlearned CKPT`` (a checkpoint or LoRA adapter made by another tool, compared with
``--base``) the card is written only where ``--out`` says.
"""

from __future__ import annotations

import argparse
import json
import sys
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

ATTACKS_HELP = ("comma list of attacks (default all): relearn_forget, relearn_retain, ablation, quantize, prompts, "
                "noise, projection_removal")


def _run_data(run: Path) -> str | None:
    """The data spec a run folder names (its config's, else its metrics'), or None."""
    from unlearnviz.runs import METRICS_FILE, read_config_mapping, read_json, section_value

    spec = section_value(read_config_mapping(run).get("data"), "spec")
    return spec or (read_json(run / METRICS_FILE) or {}).get("data")


def cmd_attack(args: argparse.Namespace) -> None:
    from unlearnviz.attacks.card import attack_names, headline, run_card, save_card, split_settings
    from unlearnviz.data import check_data, load_data
    from unlearnviz.runs import load_stack, model_for_edit

    if bool(args.edit) == bool(args.unlearned):
        raise UserError("give one of --edit (an edit folder from `run`) or --unlearned (a checkpoint or LoRA adapter "
                        "made by another tool)")
    names = attack_names(args.attacks)
    sets = parse_sets(args.set)
    split_settings(names, sets)  # a bad name or setting fails before the model loads
    run = Path(args.edit) if args.edit else None
    out = Path(args.out) if args.out else run
    if out is not None and out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    base = _run_data(run) if run is not None and not args.data else None
    spec = data_spec_from_args(args, base=base)
    check_data(spec)
    args.model = args.model or (model_for_edit(run) if run is not None else "default")
    lm = load_model_from_args(args)
    data = load_data(spec, tokenizer=lm.tokenizer)
    if run is not None:
        stack = load_stack(lm, run)
        about = {"source": str(run.resolve()), "edits": [e.label() for e in stack.edits]}
        plan = stack.plan()
    else:
        edit = imported_edit(lm, args)
        about = {"source": args.unlearned, "edits": [edit.label()]}
        plan = edit.plan()

    def progress(event: dict) -> None:
        if event.get("step") == 0:
            print(f"attack {event['index'] + 1}/{event['attacks']}: {event['attack']}", file=sys.stderr)

    card = run_card(lm, data, plan, names, sets, progress=progress, edit=about)
    print(json.dumps(card, indent=1, default=float))
    if out is not None:
        path = save_card(out, card)
        print(f"wrote {path}; {headline(card)}", file=sys.stderr)
    else:
        print(f"{headline(card)} (not written: give --out DIR to keep the card)", file=sys.stderr)


def register(sub) -> None:
    p = sub.add_parser("attack", help="the robustness card: relearning, ablation, quantization, prompt, noise and "
                       "projection-removal attacks on an edit and the original")
    add_model_args(p)
    p.set_defaults(model=None)  # default: the model the edit's manifest names (its fingerprint is checked)
    p.add_argument("--edit", default=None, help="an edit folder (from `run`); its data is the default --data")
    add_unlearned_arg(p)
    add_data_args(p)
    p.add_argument("--attacks", default="all", help=ATTACKS_HELP)
    p.add_argument("--set", action="append", default=[], metavar="[ATTACK.]KEY=VALUE",
                   help="an attack setting: ATTACK.KEY for one attack (relearn_forget.steps=20), KEY for every chosen "
                        "attack that has it (max_items=32)")
    p.add_argument("--out", default=None, help="folder for attacks.json (default: the --edit folder)")
    p.set_defaults(fn=cmd_attack)
