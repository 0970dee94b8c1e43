"""lm-evaluation-harness as a scorer: the harness itself on the in-memory original and edited model.

Numbers that other unlearning papers can be compared with come from lm-evaluation-harness (Gao et
al., 2024, "The Language Model Evaluation Harness"): WMDP (Li et al., 2024) and MMLU (Hendrycks et
al., 2021) are reported as its ``acc`` on its own task definitions. So the harness runs here as it
is, on the loaded model wrapped in its ``HFLM``, twice: the original (no plan) and the edited
model (the edit's plan routed to every row through the router's hooks; no weights are copied or
changed). The plan is a ContextVar and the harness runs every forward in the calling thread, so
the ``router.apply`` around the harness call reaches each of them.

Tasks are the harness's by name (``wmdp_bio``, ``wmdp_cyber``, ``mmlu``: their datasets come from
the Hugging Face hub, so they need a network), a user's own task YAML (``include_path``), or local
tasks written from a project data set: its forget and retain MCQ items as ``multiple_choice``
tasks ``uv_forget`` / ``uv_retain`` whose context is the stem, whose choices are the item's and
whose target delimiter is one space. That is exactly the project's cloze scoring
(:mod:`unlearnviz.evaluation.mcq`), so the harness's ``acc`` and ``acc_norm`` there are
``*_cloze_sum_acc`` and ``*_cloze_acc``, item by item (tests/test_lmeval.py checks it).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unlearnviz.data.corpus import offline
from unlearnviz.data.schema import MCQItem, UnlearningData
from unlearnviz.errors import UserError
from unlearnviz.evaluation.mcq import cloze_pick
from unlearnviz.io import atomic_write_text, quiet_logger
from unlearnviz.model.loading import LoadedModel
from unlearnviz.model.routing import RoutingPlan
from unlearnviz.runs import LMEVAL_FILE, LMEVAL_TASKS_DIR

LMEVAL_VERSION = "0.4.13"  # the version the local tasks and these results are written for
RESULTS_FILE, TASKS_DIR = LMEVAL_FILE, LMEVAL_TASKS_DIR  # the run folder's names (unlearnviz.runs)
LOCAL_TASKS = {"forget": "uv_forget", "retain": "uv_retain"}
INSTALL_HINT = ("lm-evaluation-harness is not installed: pip install 'unlearnviz[lmeval]' (in a checkout: "
                f"pip install -e '.[lmeval]' or -r requirements-dev.txt; both pin lm-eval=={LMEVAL_VERSION})")
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@contextlib.contextmanager
def quiet_harness():
    """lm-eval's log notices (seeds set, a pre-initialised model passed, default aggregations) kept
    off stderr: they are not the user's to act on. Its errors still show."""
    with quiet_logger("lm_eval"):
        yield


def require_lmeval():
    """The ``lm_eval`` package, or one line saying how to install it."""
    try:
        import lm_eval
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return lm_eval


def is_data_spec(entry: str) -> bool:
    """Whether a ``--tasks`` entry names a project data set (``builtin:NAME``, ``synthetic[:E]``,
    ``preset:NAME``, ``hf:...``, a file) rather than a harness task: harness task names hold no
    colon, no slash and no data-file suffix."""
    return (":" in entry or "/" in entry or os.sep in entry or entry == "synthetic"
            or entry.lower().endswith(DATA_SUFFIXES) or Path(entry).expanduser().is_file())


def split_tasks(text: str) -> tuple[list[str], list[str]]:
    """A comma list of ``--tasks`` entries as (harness task names, project data specs)."""
    entries = [e.strip() for e in (text or "").split(",") if e.strip()]
    return [e for e in entries if not is_data_spec(e)], [e for e in entries if is_data_spec(e)]


# ---- local tasks from a project data set ------------------------------------------------------
def _doc(it: MCQItem) -> dict[str, Any]:
    return {"question": it.question, "choices": list(it.choices), "answer": it.answer}


def task_config(name: str, data_file: Path, description: str) -> dict[str, Any]:
    """A ``multiple_choice`` task whose requests are the cloze scoring's: context = the stem,
    continuation = one space + the choice; ``acc`` is the summed log-likelihood's pick,
    ``acc_norm`` divides it by the choice's characters."""
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file.resolve())}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "question",
        "doc_to_choice": "choices",
        "doc_to_target": "answer",
        "target_delimiter": " ",
        "num_fewshot": 0,
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")],
        "metadata": {"version": 1, "description": description},
    }


def write_local_tasks(data: UnlearningData, folder: Path) -> list[str]:
    """The data set's forget and retain MCQ items as task YAMLs and their JSONL in ``folder``
    (replaced on each call); returns the task names (a split without items is left out)."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("uv_*.*"):
        old.unlink()
    names = []
    for split, items in (("forget", data.forget_mcq), ("retain", data.retain_mcq)):
        if not items:
            continue
        name = LOCAL_TASKS[split]
        rows = folder / f"{name}.jsonl"
        atomic_write_text(rows, "".join(json.dumps(_doc(it), ensure_ascii=False) + "\n" for it in items))
        cfg = task_config(name, rows, f"{data.name}: {split} MCQ items as unlearnviz's cloze scoring")
        atomic_write_text(folder / f"{name}.yaml", yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
        names.append(name)
    if not names:
        raise UserError(f"data {data.name}: no forget or retain MCQ items to write as lm-eval tasks")
    return names


# ---- the harness's tasks ----------------------------------------------------------------------
def _datasets_of(tm, name: str, seen: set[str] | None = None) -> list[str]:
    """The hub datasets a task, group or tag reads (its leaves' ``dataset_path``)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    seen = set() if seen is None else seen
    if name in seen or len(seen) > 500:
        return []
    seen.add(name)
    entry = tm.task_index.get(name)
    if entry is None:
        return []
    cfg = entry.cfg
    if cfg is None and entry.yaml_path is not None:
        try:
            cfg = load_yaml(entry.yaml_path)
        except Exception:  # an unreadable index entry: no name to give
            cfg = None
    cfg = cfg or {}
    if cfg.get("dataset_path"):
        return [str(cfg["dataset_path"])]
    children = cfg.get("task") or []
    children = [c for c in ([children] if isinstance(children, str) else children) if isinstance(c, str)]
    children += [n for n, e in tm.task_index.items() if name in getattr(e, "tags", ())]
    return sorted({d for c in children for d in _datasets_of(tm, c, seen)})


def task_manager(names: Sequence[str], include: Sequence[Path] = ()):
    """lm-eval's TaskManager over ``include``, and over the harness's own task YAMLs only when a
    name is not found there (indexing those thousands of files takes tens of seconds)."""
    require_lmeval()
    from lm_eval.tasks import TaskManager

    paths = [str(Path(p)) for p in include]
    if paths:
        local = TaskManager(include_path=paths, include_defaults=False)
        if all(n in local.task_index for n in names):
            return local
    return TaskManager(include_path=paths or None)


def check_tasks(tm, names: Sequence[str]) -> None:
    """Every name is a task, group or tag the manager knows, and its data loads: offline, a task
    whose dataset is on the hub fails here with one line naming the dataset and the local way."""
    unknown = [n for n in names if n not in tm.task_index]
    if unknown:
        raise UserError(f"lm-eval {LMEVAL_VERSION} has no task {unknown[0]!r} (its names: `lm-eval ls tasks`; a "
                        "project data set is builtin:NAME, a file or another data spec)")
    for name in names:
        try:
            with quiet_harness():
                tm.load([name])
        except (UserError, KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:
            sets = _datasets_of(tm, name)
            where = f"the dataset {', '.join(sets[:3])}{' …' if len(sets) > 3 else ''}" if sets else "its dataset"
            unreachable = isinstance(exc, ConnectionError) or "offline" in str(exc).lower()
            if offline() and unreachable:
                raise UserError(
                    f"lm-eval task {name} needs {where} from the Hugging Face hub, and the hub is offline here "
                    "(HF_HUB_OFFLINE=1): run it where the network is (HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0), or "
                    "score a local task instead (--tasks builtin:NAME or a JSONL/CSV of MCQ items, written as the "
                    "tasks uv_forget/uv_retain; or --include-path DIR with your own task YAML)") from None
            raise UserError(f"lm-eval task {name}: cannot load {where} "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})") from None


# ---- running the harness ----------------------------------------------------------------------
def _metrics(entry: dict) -> dict[str, Any]:
    """``{"acc,none": x, "acc_stderr,none": s, ...}`` as ``{"acc": x, "acc_stderr": s, ...}``."""
    out: dict[str, Any] = {}
    for key, value in entry.items():
        metric, _, filt = key.partition(",")
        if filt and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[metric if filt == "none" else key] = float(value)
    return out


def _sample(s: dict, delimiter: str) -> dict[str, Any]:
    """One item's record: the harness's log-likelihood per choice, the picks of ``acc`` (``pred``)
    and ``acc_norm`` (``pred_norm``: over the choices' characters without the delimiter), its
    scores. A generative task's item keeps its scores only."""
    out: dict[str, Any] = {"doc_id": int(s["doc_id"]), "target": s["target"]}
    resps = s.get("filtered_resps") or []
    if not all(isinstance(r, (tuple, list)) and r and isinstance(r[0], (int, float)) for r in resps):
        return out | {k: float(s[k]) for k in ("acc", "acc_norm", "exact_match") if isinstance(s.get(k), (int, float))}
    lls = [float(r[0]) for r in resps]
    choices = [cont[len(delimiter):] if delimiter and cont.startswith(delimiter) else cont
               for _, cont in s["arguments"]]
    out |= {"lls": lls, "pred": max(range(len(lls)), key=lls.__getitem__), "pred_norm": cloze_pick(lls, choices)}
    for k in ("acc", "acc_norm"):
        if k in s:
            out[k] = float(s[k])
    return out


def harness_model(lm: LoadedModel, batch_size: int | str = 32):
    """lm-eval's HFLM around the loaded model (nothing is copied; the tokenizer is, because the
    harness sets its pad token and padding side)."""
    require_lmeval()
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=lm.model, tokenizer=copy.deepcopy(lm.tokenizer), batch_size=batch_size)


def run_lmeval(
    lm: LoadedModel,
    tasks: Sequence[str],
    plan: RoutingPlan | None = None,
    include: Sequence[Path] = (),
    limit: int | None = None,
    batch_size: int | str = 32,
    tm=None,
) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` on ``tasks`` for the original model and, with ``plan``, the
    edited one (the plan on every row). Returns the results record written as ``lmeval.json``:
    per side and task the harness's metrics (``acc``, ``acc_norm`` and their stderr), the items'
    log-likelihoods and picks (``samples``), the task configs and versions, lm-eval's version.
    Without a plan the one side is called ``model`` (a model scored as it is, e.g. an export).
    ``tm``: a TaskManager already built and checked (``task_manager``, ``check_tasks``) for them."""
    lm_eval = require_lmeval()
    if not tasks:
        raise UserError("no tasks: give lm-eval task names (wmdp_bio, mmlu, …) or a data set (builtin:NAME)")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    if tm is None:
        tm = task_manager(tasks, include)
        check_tasks(tm, tasks)
    with quiet_harness():
        harness = harness_model(lm, batch_size)
    if plan is not None:
        plan = dataclasses.replace(plan, rows=None)  # the edit on every row of every batch
    sides = [("original", None), ("edited", plan)] if plan is not None else [("model", None)]
    out: dict[str, Any] = {"lm_eval_version": getattr(lm_eval, "__version__", "unknown"), "model": lm.name,
                           "fingerprint": lm.fingerprint(refresh=False), "tasks": list(tasks), "limit": limit,
                           "batch_size": batch_size, "sides": [s for s, _ in sides], "results": {}, "n": {},
                           "samples": {}, "configs": {}, "versions": {}, "wall_s": {}}
    with quiet_harness():
        for side, p in sides:
            t0 = time.perf_counter()
            with lm.router.apply(p):
                res = lm_eval.simple_evaluate(model=harness, tasks=list(tasks), task_manager=tm, limit=limit,
                                              log_samples=True)
            out["wall_s"][side] = round(time.perf_counter() - t0, 2)
            out["results"][side] = {t: _metrics(e) for t, e in res["results"].items()}
            configs = json.loads(json.dumps(res.get("configs") or {}, default=str))
            out["samples"][side] = {
                t: [_sample(s, str(configs.get(t, {}).get("target_delimiter", " "))) for s in
                    sorted(v, key=lambda s: s["doc_id"])] for t, v in (res.get("samples") or {}).items()}
            out["n"] = {t: v.get("effective") for t, v in (res.get("n-samples") or {}).items()}
            out["configs"] = configs
            out["versions"] = json.loads(json.dumps(res.get("versions") or {}, default=str))
    return out


def summary(result: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """Per task the headline metrics of each side: ``{task: {side: {acc, acc_norm}}}``."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for side in result["sides"]:
        for task, m in result["results"][side].items():
            out.setdefault(task, {})[side] = {k: round(m[k], 4) for k in ("acc", "acc_norm") if k in m}
    return out


def save_results(folder: Path, result: dict[str, Any]) -> Path:
    """``lmeval.json`` in ``folder`` (atomically)."""
    path = Path(folder) / RESULTS_FILE
    atomic_write_text(path, json.dumps(result, indent=1, default=float) + "\n")
    return path
