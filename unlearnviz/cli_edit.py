"""CLI commands that make and use edits: ``run``, ``relearn``, ``export``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from unlearnviz.cli import _EXTRA_COMMANDS, add_model_args, load_model_from_args, write_json
from unlearnviz.errors import UserError


def parse_sets(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UserError(f"--set {pair!r}: use key=value")
        k, v = pair.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _tqdm_progress(total_hint: int = 0):
    from tqdm import tqdm

    bar = tqdm(total=total_hint or None, desc="training", leave=False)

    def progress(event: dict) -> None:
        if bar.total != event.get("total"):
            bar.total = event.get("total")
        bar.n = event["step"]
        bar.set_postfix(loss=f"{event.get('loss', 0):.3g}")
        bar.refresh()

    return progress, bar


def cmd_run(args: argparse.Namespace) -> None:
    from unlearnviz.data import load_data
    from unlearnviz.evaluation.mcq import evaluate
    from unlearnviz.methods import EditStack, get_method, load_edit, make_hparams, save_edit

    overrides = {}
    if args.config:
        import yaml

        try:
            cfg = yaml.safe_load(Path(args.config).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"cannot read config {args.config}: {str(exc).splitlines()[0]}") from None
        overrides.update(cfg.get("hparams", {}))
        args.method = cfg.get("method", args.method)
        args.model = cfg.get("model", args.model)
        args.data = cfg.get("data", args.data)
    overrides.update(parse_sets(args.set))
    if not args.method or not args.data:
        raise UserError("run needs --method and --data (or a --config that names them)")
    spec = get_method(args.method)
    hparams = make_hparams(spec.hparams_cls, overrides)
    data = load_data(args.data)
    lm = load_model_from_args(args)
    fp = lm.fingerprint(refresh=False)
    stack = EditStack()
    if args.stack_on:
        stack.push(load_edit(Path(args.stack_on), lm))
    t0 = time.perf_counter()
    before = evaluate(lm, data, plan=stack.plan(), letter=not args.no_letter)
    progress, bar = _tqdm_progress(getattr(hparams, "steps", 0))
    edit = spec.fit(lm, data, hparams, progress=progress, prior=stack.plan())
    bar.close()
    stack.push(edit)
    after = evaluate(lm, data, plan=stack.plan(), letter=not args.no_letter)
    if lm.fingerprint() != fp:
        raise AssertionError("base weights changed")
    out = Path(args.out)
    metrics = {"method": args.method, "hparams": edit.hparams, "model": lm.name, "data": data.name,
               "before": before, "after": after, "steps": edit.meta.get("steps"),
               "fit_s": edit.meta.get("train_s", 0) + edit.meta.get("precompute_s", 0) + edit.meta.get("init_s", 0),
               "wall_s": time.perf_counter() - t0}
    edit.meta["metrics"] = {"before": before, "after": after}
    edit.meta["data"] = data.name
    edit.meta["data_hash"] = data.content_hash()
    save_edit(edit, out, lm, stack_index=len(stack) - 1)
    if args.stack_on:
        (out / "stacked_on.txt").write_text(str(Path(args.stack_on).resolve()) + "\n")
    from unlearnviz.io import atomic_write_text

    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=float) + "\n")
    keys = ["forget_cloze_acc", "forget_floor_acc", "retain_cloze_acc", "forget_b_cloze_acc", "retain_ppl"]
    print(json.dumps({"out": str(out), "wall_s": round(metrics["wall_s"], 1),
                      **{f"{k}": [round(before.get(k, float("nan")), 4), round(after.get(k, float("nan")), 4)]
                         for k in keys}}, indent=2))


def _load_stack(lm, folder: Path):
    from unlearnviz.methods import EditStack, load_edit

    chain = []
    current = folder
    while True:
        chain.append(load_edit(current, lm))
        prev = current / "stacked_on.txt"
        if not prev.exists():
            break
        current = Path(prev.read_text().strip())
    return EditStack(list(reversed(chain)))


def cmd_relearn(args: argparse.Namespace) -> None:
    from unlearnviz.data import load_data
    from unlearnviz.evaluation.relearn import RelearnSettings, finetune_attack, steps_to_recovery, whitebox_attacks

    data = load_data(args.data)
    lm = load_model_from_args(args)
    stack = _load_stack(lm, Path(args.edit))
    plan = stack.plan()
    s = RelearnSettings(steps=args.steps, lr=args.lr, eval_every=args.eval_every)
    edited = finetune_attack(lm, data, plan, s)
    original = finetune_attack(lm, data, None, s)
    layer = max(plan.deltas or plan.projections)
    result = {"edited": edited, "original": original,
              "steps_to_half_recovery": steps_to_recovery(edited, original[0]["acc"], edited[0]["acc"]),
              "whitebox": whitebox_attacks(lm, data, plan, layer), "settings": vars(s)}
    write_json(args.json, result)


def cmd_export(args: argparse.Namespace) -> None:
    from unlearnviz.methods.edit import export_checkpoint

    lm = load_model_from_args(args)
    info = export_checkpoint(lm, _load_stack(lm, Path(args.edit)), Path(args.out))
    print(json.dumps(info, indent=2, default=float))


def register(sub) -> None:
    p = sub.add_parser("run", help="run an unlearning method and write edit + metrics")
    add_model_args(p)
    p.add_argument("--method", default=None, help="rmu, srmu or mrp")
    p.add_argument("--data", default=None)
    p.add_argument("--out", required=True, help="folder for edit.safetensors, manifest.json, metrics.json")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="hyperparameter override")
    p.add_argument("--config", default=None, help="YAML with method, model, data, hparams")
    p.add_argument("--stack-on", default=None, help="an earlier edit folder to stack this one on")
    p.add_argument("--no-letter", action="store_true", help="skip lettered scoring")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("relearn", help="relearning attack curves for an edit and the original")
    add_model_args(p)
    p.add_argument("--edit", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--json", default=None)
    p.set_defaults(fn=cmd_relearn)
    p = sub.add_parser("export", help="write a standalone Hugging Face checkpoint")
    add_model_args(p)
    p.add_argument("--edit", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_export)


_EXTRA_COMMANDS.append(register)
