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

    # disable=None: no bar when stderr is not a terminal, so logs and errors stay one clean line each
    bar = tqdm(total=total_hint or None, desc="training", leave=False, disable=None)

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
    from unlearnviz.methods import EditStack, get_method, make_hparams, save_edit

    overrides = {}
    if args.config:
        import yaml

        try:
            cfg = yaml.safe_load(Path(args.config).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"cannot read config {args.config}: {str(exc).splitlines()[0]}") from None
        if not isinstance(cfg, dict) or not isinstance(cfg.get("hparams", {}), dict):
            raise UserError(f"config {args.config}: expected a mapping with method, model, data and hparams")
        overrides.update(cfg.get("hparams", {}))
        args.method = cfg.get("method", args.method)
        args.model = cfg.get("model", args.model)
        args.data = cfg.get("data", args.data)
    overrides.update(parse_sets(args.set))
    if not args.method or not args.data:
        raise UserError("run needs --method and --data (or a --config that names them)")
    spec = get_method(args.method)
    hparams = make_hparams(spec.hparams_cls, overrides)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    data = load_data(args.data)
    from unlearnviz.session import check_fits_context, has_learned_positions

    lm = load_model_from_args(args)
    check_fits_context(lm, data, letter=not args.no_letter)
    if getattr(hparams, "max_tokens", 0) > lm.max_length and has_learned_positions(lm):
        raise UserError(f"max_tokens={hparams.max_tokens} is over this model's context of {lm.max_length} tokens")
    fp = lm.fingerprint(refresh=False)
    stack = _load_stack(lm, Path(args.stack_on)) if args.stack_on else EditStack()
    t0 = time.perf_counter()
    before = evaluate(lm, data, plan=stack.plan(), letter=not args.no_letter)
    progress, bar = _tqdm_progress(getattr(hparams, "steps", 0))
    try:
        edit = spec.fit(lm, data, hparams, progress=progress, prior=stack.plan())
    finally:
        bar.close()  # before any error line is printed
    stack.push(edit)
    after = evaluate(lm, data, plan=stack.plan(), letter=not args.no_letter)
    if lm.fingerprint() != fp:
        raise AssertionError("base weights changed")
    metrics = {"method": args.method, "hparams": edit.hparams, "model": lm.name, "data": data.name,
               "before": before, "after": after, "steps": edit.meta.get("steps"),
               "fit_s": edit.meta.get("train_s", 0) + edit.meta.get("precompute_s", 0) + edit.meta.get("init_s", 0),
               "wall_s": time.perf_counter() - t0}
    edit.meta["metrics"] = {"before": before, "after": after}
    edit.meta["data"] = data.name
    edit.meta["data_hash"] = data.content_hash()
    from unlearnviz.io import atomic_write_text

    save_edit(edit, out, lm, stack_index=len(stack) - 1)
    if args.stack_on:
        atomic_write_text(out / "stacked_on.txt", str(Path(args.stack_on).resolve()) + "\n")

    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=float) + "\n")
    keys = ["forget_cloze_acc", "forget_floor_acc", "retain_cloze_acc", "forget_b_cloze_acc", "retain_ppl"]
    print(json.dumps({"out": str(out), "wall_s": round(metrics["wall_s"], 1),
                      **{f"{k}": [round(before.get(k, float("nan")), 4), round(after.get(k, float("nan")), 4)]
                         for k in keys}}, indent=2))


def _read_edit(folder: Path, lm):
    """load_edit, with any structural damage it does not itself check reported as one line."""
    from unlearnviz.methods import load_edit

    try:
        return load_edit(folder, lm)
    except (UserError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # a manifest of the wrong shape, a tensor under a bad name, ...
        raise UserError(f"{folder}: damaged or tampered edit ({type(exc).__name__}: {str(exc)[:120]})") from None


def _load_stack(lm, folder: Path):
    from unlearnviz.methods import EditStack

    chain, seen = [], set()
    current = folder
    while True:
        if current.resolve() in seen:
            raise UserError(f"{folder}: stacked_on.txt chain loops back to {current} (damaged or tampered edit)")
        seen.add(current.resolve())
        chain.append(_read_edit(current, lm))
        prev = current / "stacked_on.txt"
        if not prev.exists():
            break
        try:
            current = Path(prev.read_text(encoding="utf-8").strip())
        except (OSError, UnicodeDecodeError):
            raise UserError(f"{prev}: unreadable (damaged or tampered edit)") from None
    return EditStack(list(reversed(chain)))


def cmd_relearn(args: argparse.Namespace) -> None:
    import math

    from unlearnviz.data import load_data
    from unlearnviz.evaluation.relearn import RelearnSettings, finetune_attack, steps_to_recovery, whitebox_attacks

    if args.steps < 1 or args.eval_every < 1:
        raise UserError("--steps and --eval-every must be at least 1")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise UserError(f"--lr must be a positive finite number, got {args.lr}")
    data = load_data(args.data)
    lm = load_model_from_args(args)
    stack = _load_stack(lm, Path(args.edit))
    plan = stack.plan()
    s = RelearnSettings(steps=args.steps, lr=args.lr, eval_every=args.eval_every)
    edited = finetune_attack(lm, data, plan, s)
    original = finetune_attack(lm, data, None, s)
    layer = max(plan.edited_layers())
    result = {"edited": edited, "original": original,
              "steps_to_half_recovery": steps_to_recovery(edited, original[0]["acc"], edited[0]["acc"]),
              "whitebox": whitebox_attacks(lm, data, plan, layer), "settings": vars(s)}
    write_json(args.json, result)


def cmd_export(args: argparse.Namespace) -> None:
    from unlearnviz.methods.edit import export_checkpoint

    out = Path(args.out)
    if out.exists() and not (out / "unlearnviz_export.json").exists():
        # export_checkpoint replaces its target folder: never one that holds something else
        raise UserError(f"--out {out} exists and is not an earlier unlearnviz export; choose a new folder")
    lm = load_model_from_args(args)
    info = export_checkpoint(lm, _load_stack(lm, Path(args.edit)), out)
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
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--json", default=None)
    p.set_defaults(fn=cmd_relearn)
    p = sub.add_parser("export", help="write a standalone Hugging Face checkpoint")
    add_model_args(p)
    p.add_argument("--edit", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_export)


_EXTRA_COMMANDS.append(register)
