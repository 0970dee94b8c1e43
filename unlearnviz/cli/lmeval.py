"""CLI command ``lmeval``: lm-evaluation-harness itself on the original and the edited model.

    python -m unlearnviz lmeval --edit runs/rmu --tasks builtin:geo_europe_vs_world
    python -m unlearnviz lmeval --base default --unlearned CKPT --tasks wmdp_bio,wmdp_cyber,mmlu --out DIR
    python -m unlearnviz lmeval --model exports/rmu --tasks builtin:geo_europe_vs_world --out DIR

writes ``lmeval.json`` (per task and side the harness's ``acc`` and ``acc_norm``, the items'
log-likelihoods and picks, the task configs, lm-eval's version) into the edit folder or ``--out``;
a project data set becomes the local tasks ``uv_forget`` / ``uv_retain`` in ``lmeval_tasks/`` there.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

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


def _batch_size(text: str) -> int | str:
    if text == "auto" or text.startswith("auto:"):
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"--batch-size must be a positive integer or 'auto', got {text!r}")
    return value


def cmd_lmeval(args: argparse.Namespace) -> None:
    """Check the tasks (offline: a hub dataset fails here, before the model loads), load the model
    and the edit, run the harness on both sides and write lmeval.json."""
    from unlearnviz.evaluation.lmeval import (
        TASKS_DIR,
        check_tasks,
        require_lmeval,
        run_lmeval,
        save_results,
        split_tasks,
        summary,
        task_manager,
        write_local_tasks,
    )

    if args.edit and args.unlearned:
        raise UserError("give --edit (an edit folder) or --unlearned (a checkpoint made by another tool), not both")
    if not (args.edit or args.unlearned or args.model):
        raise UserError("lmeval needs --edit RUN, --unlearned CKPT (with --base) or --model M (scored as it is)")
    batch_size = _batch_size(args.batch_size)
    hub, specs = split_tasks(args.tasks)
    spec = data_spec_from_args(args, required=False)
    if len(specs) + bool(spec) > 1:
        raise UserError("one project data set at a time: give it in --tasks or with --data, once")
    spec = spec or (specs[0] if specs else None)
    if not hub and spec is None:
        raise UserError("no tasks: --tasks takes lm-eval task names (wmdp_bio,wmdp_cyber,mmlu, or tasks of an "
                        "--include-path) and/or a project data set (builtin:NAME, a file)")
    if args.out:
        out = Path(args.out)
    elif args.edit:
        out = Path(args.edit)
    else:
        raise UserError("--out is needed without --edit (the folder for lmeval.json)")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    include = [Path(p) for p in args.include_path]
    for p in include:
        if not p.is_dir():
            raise UserError(f"--include-path {p}: not a folder of lm-eval task YAMLs")
    if args.edit:
        from unlearnviz.runs import model_for_edit

        args.model = args.model or model_for_edit(Path(args.edit))  # before the harness: a bad folder fails first
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # read when datasets is first imported
    require_lmeval()
    names = list(hub)
    data_name = None
    if spec is not None:
        from unlearnviz.data import check_data, load_data

        check_data(spec)
        data = load_data(spec)
        data_name = data.name
        folder = out / TASKS_DIR
        names = write_local_tasks(data, folder) + names
        include.append(folder)
    tm = task_manager(names, include)
    check_tasks(tm, names)  # every name exists and its data loads (offline hub datasets: one line, now)

    args.model = args.model or "default"
    lm = load_model_from_args(args)
    fp = lm.fingerprint()
    plan = None
    if args.edit:
        from unlearnviz.runs import load_stack

        plan = load_stack(lm, Path(args.edit)).plan()
    elif args.unlearned:
        plan = imported_edit(lm, args).plan()
    result = run_lmeval(lm, names, plan=plan, include=include, limit=args.limit, batch_size=batch_size, tm=tm)
    if lm.fingerprint() != fp:
        raise AssertionError("base weights changed")
    result["source"] = {"edit": str(Path(args.edit).resolve()) if args.edit else None,
                        "unlearned": args.unlearned, "model": args.model, "data": data_name}
    out.mkdir(parents=True, exist_ok=True)
    path = save_results(out, result)
    write_json(None, {"out": str(path), "lm_eval_version": result["lm_eval_version"], "results": summary(result)})


def register(sub) -> None:
    p = sub.add_parser("lmeval", help="lm-evaluation-harness itself on the original and the edited model")
    add_model_args(p)
    p.set_defaults(model=None)  # default: with --edit the model its manifest names, with --unlearned the default
    p.add_argument("--edit", default=None, help="an edit folder (from `run`): scored with and without the edit")
    add_unlearned_arg(p)
    p.add_argument("--tasks", default="", help="comma list: lm-eval task names (wmdp_bio, wmdp_cyber, mmlu: "
                   "their datasets need a network) and/or one project data set (builtin:NAME, synthetic, a file), "
                   "whose forget/retain MCQ items become the local tasks uv_forget/uv_retain")
    add_data_args(p, help="the project data set for the local tasks, as every command takes it (instead of giving "
                          "it in --tasks)")
    p.add_argument("--include-path", action="append", default=[], metavar="DIR",
                   help="a folder of your own lm-eval task YAMLs (name the tasks in --tasks)")
    p.add_argument("--limit", type=int, default=None, help="the first N items of each task (lm-eval's --limit)")
    p.add_argument("--batch-size", default="32", help="lm-eval's batch size: an integer or 'auto'")
    p.add_argument("--out", default=None, help="the folder for lmeval.json (default: the --edit folder)")
    p.set_defaults(fn=cmd_lmeval)
