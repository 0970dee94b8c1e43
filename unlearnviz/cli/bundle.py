"""CLI command ``bundle``: session bundles from run folders, and back.

    python -m unlearnviz bundle export --run runs/srmu --out srmu.zip   # a run folder -> one archive
    python -m unlearnviz bundle verify srmu.zip                         # checksums, model, data, edits
    python -m unlearnviz bundle import srmu.zip --out runs/restored     # -> a run folder (no refitting)

A bundle exported by the app's Export tab imports here too, and the other way round.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from unlearnviz.cli.common import add_data_args, add_model_args, data_spec_from_args, load_model_from_args
from unlearnviz.errors import UserError


def _model_args(args: argparse.Namespace, cfg) -> None:
    """--model/--dtype/--device where given, else what the config says."""
    if args.model is None:
        args.model = cfg.model.source if cfg is not None else "default"
        if cfg is not None:
            args.dtype = cfg.model.dtype if args.dtype is None else args.dtype
            args.device = cfg.model.device if args.device is None else args.device
    args.dtype = args.dtype or "auto"
    args.device = args.device or "auto"


def _session_from_run(run: Path, args: argparse.Namespace):
    """A Session holding a run folder's edit stack, metrics, chats and relearning results, on the
    model and data its config names (or the flags); and that config (None in an older run)."""
    from unlearnviz.data import check_data, load_data
    from unlearnviz.runs import CONFIG_FILE, read_run
    from unlearnviz.session.replay import session_from_run

    records = read_run(run)
    cfg = records.config
    spec = data_spec_from_args(args, cfg.data.spec if cfg is not None else None, required=False)
    if not spec:
        raise UserError(f"{run} has no {CONFIG_FILE} naming its data (an older run): pass --data")
    check_data(spec)
    _model_args(args, cfg)
    lm = load_model_from_args(args)
    data = load_data(spec, tokenizer=lm.tokenizer)
    history = [{"action": "load_model", "model": args.model, "dtype": args.dtype, "device": args.device},
               {"action": "load_data", "data": spec}]
    return session_from_run(records, lm, data, history), cfg


def cmd_export(args: argparse.Namespace) -> None:
    from unlearnviz.bundle import export_bundle

    out = Path(args.out)
    if out.suffix.lower() != ".zip":
        raise UserError(f"--out {out}: a bundle is a .zip file")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; name the .zip file to write")
    session, cfg = _session_from_run(Path(args.run), args)
    export_bundle(session, out, base=cfg)
    print(json.dumps({"bundle": str(out), "bytes": out.stat().st_size, "edits": len(session.stack),
                      "chats": len(session.chats)}, indent=2))


def _import(args: argparse.Namespace):
    from unlearnviz.bundle import import_bundle

    lm = None
    if args.model is not None:  # restore onto this model (it must be the bundle's)
        args.dtype, args.device = args.dtype or "auto", args.device or "auto"
        lm = load_model_from_args(args)
    return import_bundle(Path(args.bundle), lm=lm)


def cmd_verify(args: argparse.Namespace) -> None:
    from unlearnviz.bundle import bundle_summary, read_bundle

    summary = bundle_summary(read_bundle(Path(args.bundle)))
    if not args.archive_only:
        session = _import(args)
        summary["model"]["loaded"] = session.lm.name
        summary["restored"] = {"edits": len(session.stack), "chats": len(session.chats),
                               "metrics": sorted(session.after)}
    print(json.dumps({"ok": True, **summary}, indent=2, default=str))


def cmd_import(args: argparse.Namespace) -> None:
    from unlearnviz.bundle import unique_tmp
    from unlearnviz.runs import save_run

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not empty; choose a new folder")
    session = _import(args)  # everything verified before anything is written
    if not len(session.stack):
        raise UserError("the bundle holds no edit: there is no run folder to write (its metrics are in the bundle)")
    cfg = session.to_config()
    tmp = unique_tmp(out)
    try:
        metrics = save_run(session, tmp, cfg)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({"out": str(out), "edits": len(session.stack), "chats": len(session.chats),
                      "after": {k: metrics["after"].get(k) for k in ("forget_cloze_acc", "retain_cloze_acc")}
                      if metrics.get("after") else None}, indent=2))


def register(sub) -> None:
    p = sub.add_parser("bundle", help="session bundles: export a run folder, verify, import")
    bsub = p.add_subparsers(dest="bundle_command", required=True)
    e = bsub.add_parser("export", help="a run folder (from `run`) as one .zip bundle")
    add_model_args(e)
    e.set_defaults(model=None, dtype=None, device=None)  # default: the run's config.yaml
    e.add_argument("--run", required=True, help="a folder written by `run` (or `bundle import`)")
    add_data_args(e, help="the run's data, when its folder has no config.yaml")
    e.add_argument("--out", required=True, help="the .zip file to write")
    e.set_defaults(fn=cmd_export)
    for name, fn, helptext in (("verify", cmd_verify, "check a bundle: archive, checksums, model, data, edits"),
                               ("import", cmd_import, "restore a bundle into a run folder (no refitting)")):
        q = bsub.add_parser(name, help=helptext)
        add_model_args(q)
        q.set_defaults(model=None, dtype=None, device=None)  # default: the model the bundle names
        q.add_argument("bundle", help="the .zip bundle")
        if name == "import":
            q.add_argument("--out", required=True, help="a new folder: the run folder layout of `run`")
        else:
            q.add_argument("--archive-only", action="store_true", help="check the archive only (no model load)")
        q.set_defaults(fn=fn)
