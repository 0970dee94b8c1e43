"""CLI commands that make and use edits: ``run``, ``import``, ``relearn``, ``export``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from unlearnviz.cli.common import (
    PART_FLAGS,
    UNLEARNED_HELP,
    add_data_args,
    add_model_args,
    add_unlearned_arg,
    data_spec_from_args,
    imported_edit,
    load_model_from_args,
    parse_sets,
    tqdm_progress,
    write_json,
)
from unlearnviz.errors import UserError


def _run_config(args: argparse.Namespace):
    """The Config a ``run`` command means: its --config (new schema or the old flat form) with the
    flags filling what it leaves out, or the flags alone. ``--set`` overrides the last edit's
    hyperparameters and ``--preset`` names its preset; ``--no-letter`` turns lettered scoring off."""
    from unlearnviz.config import config_from_args, parse_config, read_config_file

    overrides = parse_sets(args.set)
    if not args.config:
        spec = data_spec_from_args(args, required=False)
        if not args.method or not spec:
            raise UserError("run needs --method and --data (or a --config that names them)")
        cfg = config_from_args(args.method, args.model, args.dtype, args.device, spec, overrides,
                               letter=not args.no_letter)
        if args.preset is None:
            return cfg
        d = cfg.to_dict()
        d["edits"][-1]["preset"] = args.preset
        return parse_config(d)
    raw = read_config_file(args.config)
    name = Path(args.config).name
    try:
        d = parse_config({} if raw is None else raw, method=args.method).to_dict()
        if not isinstance(raw, dict) or "model" not in raw:
            d["model"] = {"source": args.model, "dtype": args.dtype, "device": args.device}
        parts = {p: getattr(args, p) for p in PART_FLAGS if getattr(args, p)}
        if d["data"]["spec"] or args.data or parts:  # the config's data, else --data; the part flags over it
            from unlearnviz.data import compose_spec

            d["data"]["spec"] = compose_spec(d["data"]["spec"] or args.data, parts)
        if not d["edits"] and args.method:
            d["edits"] = [{"method": args.method, "hparams": {}}]
        if overrides and d["edits"]:
            d["edits"][-1]["hparams"].update(overrides)
        if args.preset is not None and d["edits"]:
            d["edits"][-1]["preset"] = args.preset
        if args.no_letter:
            d["evaluation"]["letter"] = False
        cfg = parse_config(d)
    except UserError as exc:
        raise UserError(f"config {name}: {exc}") from None
    if not cfg.edits or not cfg.data.spec:
        raise UserError("run needs --method and --data (or a --config that names them)")
    return cfg


def cmd_run(args: argparse.Namespace) -> None:
    """Fit the config's edit stack in order (each on top of the ones before) and write the run
    folder (layout: unlearnviz.runs)."""
    _replay_and_save(args, _run_config(args))


def cmd_import(args: argparse.Namespace) -> None:
    """A checkpoint or LoRA adapter made by another tool, as a run folder: its difference from the
    base as an edit (edit.safetensors: only the changed tensors), the base's and its metrics, and a
    config that re-imports it; every command taking ``--edit`` and ``report --run`` then read it."""
    from unlearnviz.config import parse_config

    spec = data_spec_from_args(args)
    source = args.unlearned
    local = Path(source).expanduser()
    cfg = parse_config({"model": {"source": args.model, "dtype": args.dtype, "device": args.device},
                        "data": {"spec": spec},
                        "edits": [{"method": "imported", "source": str(local.resolve()) if local.exists() else source}],
                        "evaluation": {"letter": not args.no_letter}})
    args.stack_on = None
    _replay_and_save(args, cfg)


def _replay_and_save(args: argparse.Namespace, cfg) -> None:
    from unlearnviz.data import check_data
    from unlearnviz.methods import EditStack, get_method
    from unlearnviz.methods.base import choose_preset
    from unlearnviz.runs import load_stack, save_run
    from unlearnviz.session import Limits, Session
    from unlearnviz.session.planning import check_fit
    from unlearnviz.session.replay import edit_hparams, replay

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    for spec in [cfg.data.spec] + [e.data for e in cfg.edits if e.data]:
        check_data(spec)  # a bad data argument fails before the model loads
    args.model, args.dtype, args.device = cfg.model.source, cfg.model.dtype, cfg.model.device
    lm = load_model_from_args(args)
    fp = lm.fingerprint(refresh=False)
    prior = load_stack(lm, Path(args.stack_on)) if args.stack_on else EditStack()
    for i, e in enumerate(cfg.edits):  # before anything runs: a fit too big for any data is refused now
        if e.method != "imported":  # (replay checks each again, with its data); an import fits nothing
            choice = choose_preset(get_method(e.method), lm.model.config, edit_hparams(e, cfg.seed), e.preset,
                                   lambda: fp)  # the choice Session.run_edit makes again
            if choice.message:
                print(f"edit {i + 1}: {choice.message}", file=sys.stderr)
            check_fit(lm, None, e.method, choice.overrides, prior)
    unlimited = Limits(max_prompt_chars=10**9, max_new_tokens=10**6, max_steps=10**9, max_points=10**6,
                       max_upload_mb=10**6)  # the operator's own command: the server's caps do not apply
    t0 = time.perf_counter()
    progress, bar = tqdm_progress(0)
    try:
        session = replay(cfg, Session(limits=unlimited), lm=lm, prior=prior, progress=progress,
                         allow_pickle=args.allow_pickle)
    finally:
        bar.close()  # before any error line is printed
    if lm.fingerprint() != fp:
        raise AssertionError("base weights changed")
    metrics = save_run(session, out, cfg, first=len(prior), stacked_on=Path(args.stack_on) if args.stack_on else None,
                       wall_s=time.perf_counter() - t0)
    if cfg.analysis.enabled:
        _run_analysis(lm, session, cfg, out)
    before, after = metrics["before"], metrics["after"]
    keys = ["forget_cloze_acc", "forget_floor_acc", "retain_cloze_acc", "forget_b_cloze_acc", "retain_ppl"]
    print(json.dumps({"out": str(out), "wall_s": round(metrics["wall_s"], 1),
                      **{f"{k}": [round(before.get(k, float("nan")), 4), round(after.get(k, float("nan")), 4)]
                         for k in keys}}, indent=2))


def _run_analysis(lm, session, cfg, out: Path) -> None:
    """The config's analysis section on the final stack: analysis.json and analysis.html."""
    from unlearnviz.analysis import run_analysis
    from unlearnviz.io import atomic_write_text
    from unlearnviz.report.page import figures_page

    a = cfg.analysis
    res = run_analysis(lm, session.data, session.stack, layers=a.layers, geometry_layer=a.geometry_layer,
                       prompt=a.prompt, answer=a.answer, max_texts=a.max_texts, max_items=a.max_items,
                       variant=a.variant, use_umap=a.use_umap, probes=a.probes, train_probe=a.train_probe,
                       batch_size=a.batch_size)
    report = res.to_json(a.top_k)
    atomic_write_text(out / "analysis.json", json.dumps(report, indent=2) + "\n")
    header = {"model": lm.name, "data": session.data.name, "edits": len(session.stack),
              "verdict": report.get("verdict") or "n/a"}
    atomic_write_text(out / "analysis.html", figures_page(f"unlearnviz analysis: {lm.name} on {session.data.name}",
                                                          header, res.figures(), res.notes))


def _one_edit_source(args: argparse.Namespace) -> None:
    if bool(args.edit) == bool(getattr(args, "unlearned", None)):
        raise UserError("give one of --edit (an edit folder from `run`) or --unlearned (a checkpoint or LoRA adapter "
                        "made by another tool)")


def _stack_from_args(lm, args: argparse.Namespace):
    """The edit stack ``--edit`` (its folder and every edit below it) or ``--unlearned`` names."""
    from unlearnviz.methods import EditStack
    from unlearnviz.runs import load_stack

    return load_stack(lm, Path(args.edit)) if args.edit else EditStack([imported_edit(lm, args)])


def cmd_relearn(args: argparse.Namespace) -> None:
    import math

    from unlearnviz.data import check_data, load_data
    from unlearnviz.evaluation.relearn import RelearnSettings, relearn_record, steps_to_recovery
    from unlearnviz.runs import model_for_edit

    if args.steps < 1 or args.eval_every < 1:
        raise UserError("--steps and --eval-every must be at least 1")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise UserError(f"--lr must be a positive finite number, got {args.lr}")
    spec = data_spec_from_args(args)
    check_data(spec)
    _one_edit_source(args)
    args.model = args.model or (model_for_edit(Path(args.edit)) if args.edit else "default")
    lm = load_model_from_args(args)
    data = load_data(spec, tokenizer=lm.tokenizer)
    plan = _stack_from_args(lm, args).plan()
    s = RelearnSettings(steps=args.steps, lr=args.lr, eval_every=args.eval_every)
    result = relearn_record(lm, data, plan, s)
    edited, original = result["edited"], result["original"]
    result["steps_to_half_recovery"] = steps_to_recovery(edited, original[0]["acc"], edited[0]["acc"])
    write_json(args.json, result)


def cmd_export(args: argparse.Namespace) -> None:
    """Write the edit stack as a folder every loader reads as the edited model (the manifest as
    JSON on stdout, one line saying what was written on stderr), or refuse it in one line."""
    import sys

    from unlearnviz.methods.edit import export_checkpoint
    from unlearnviz.model.exports import EXPORT_MANIFEST, export_label
    from unlearnviz.runs import model_for_edit

    out = Path(args.out)
    if out.exists() and not (out / EXPORT_MANIFEST).exists():
        # export_checkpoint replaces its target folder: never one that holds something else
        raise UserError(f"--out {out} exists and is not an earlier unlearnviz export; choose a new folder")
    _one_edit_source(args)
    args.model = args.model or (model_for_edit(Path(args.edit)) if args.edit else "default")
    lm = load_model_from_args(args)
    info = export_checkpoint(lm, _stack_from_args(lm, args), out)
    print(json.dumps(info, indent=2, default=float))
    size = sum(f.stat().st_size for f in out.iterdir() if f.suffix == ".safetensors") / 2**20
    print(f"exported {export_label(info)} on {lm.name} to {out} ({info['dtype']}, {size:.0f} MB): plain "
          f"AutoModelForCausalLM.from_pretrained loads it as the edited model; `eval --model {out}` scores it",
          file=sys.stderr)


def register(sub) -> None:
    p = sub.add_parser("run", help="run an unlearning method and write edit + metrics")
    add_model_args(p)
    p.add_argument("--method", default=None, help="rmu, srmu or mrp")
    add_data_args(p)
    p.add_argument("--out", required=True, help="folder for edit.safetensors, manifest.json, metrics.json, "
                   "config.yaml (and stack/ for a config of several edits)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="hyperparameter override")
    p.add_argument("--preset", default=None, metavar="NAME", help="a named preset of the method (a paper's "
                   "settings; README: Method presets), --set over it; 'none': the defaults. Without it, a preset whose "
                   "model rule matches the loaded model is applied when no --set is given")
    p.add_argument("--config", default=None, help="a config (YAML/JSON): model, data, edits (the stack, in "
                   "order), evaluation, chat, analysis, seed; or the old method/model/data/hparams form")
    p.add_argument("--stack-on", default=None, help="an earlier edit folder to stack this one on")
    p.add_argument("--no-letter", action="store_true", help="skip lettered scoring")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("import", help="a checkpoint or LoRA adapter made by another tool as an edit of --base: "
                       "writes a run folder (edit, metrics, config) that every --edit command reads")
    add_model_args(p)
    p.add_argument("--unlearned", required=True, metavar="CKPT", help=UNLEARNED_HELP)
    add_data_args(p)
    p.add_argument("--out", required=True, help="the run folder to write")
    p.add_argument("--no-letter", action="store_true", help="skip lettered scoring")
    p.set_defaults(fn=cmd_import)
    p = sub.add_parser("relearn", help="relearning attack curves for an edit and the original")
    add_model_args(p)
    p.set_defaults(model=None)  # default: the model the edit's manifest names (its fingerprint is checked)
    p.add_argument("--edit", default=None, help="an edit folder (from `run`)")
    add_unlearned_arg(p)
    add_data_args(p)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--json", default=None)
    p.set_defaults(fn=cmd_relearn)
    p = sub.add_parser("export", help="write a standalone Hugging Face checkpoint")
    add_model_args(p)
    p.set_defaults(model=None)  # default: the model the edit's manifest names (its fingerprint is checked)
    p.add_argument("--edit", default=None, help="an edit folder (from `run`)")
    add_unlearned_arg(p)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_export)
