"""The run folder: what ``python -m unlearnviz run`` writes and ``relearn``, ``export``, ``report``,
``bundle export`` and ``run --stack-on`` read. This module is its one writer and one reader.

Layout (one edit: exactly what ``run`` always wrote, plus config.yaml)::

    OUT/config.yaml        the config that reproduces this run (every hyperparameter explicit)
    OUT/metrics.json       before (the model below this run's edits), after (the whole stack),
                           original (no edit), edits: [{method, hparams, after, fit_s, steps}]
    OUT/manifest.json      the LAST edit of the stack (save_edit): so `relearn/export --edit OUT`
    OUT/edit.safetensors   and `run --stack-on OUT` act on the whole stack
    OUT/stacked_on.txt     the edit below it: stack/NN (relative) or the --stack-on folder
    OUT/stack/00, 01, ...  the run's earlier edits, each with its own stacked_on.txt
    OUT/chats.json, OUT/relearn.json   when the config asks for chats or a relearning attack

Every folder of the chain is an edit folder (``unlearnviz.methods.edit``: manifest.json and
edit.safetensors, checksummed); damage anywhere is one ``UserError`` line.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unlearnviz.config import Config, load_config
from unlearnviz.errors import UserError

if TYPE_CHECKING:
    from unlearnviz.methods.edit import Edit, EditStack
    from unlearnviz.model.loading import LoadedModel
    from unlearnviz.session import Session

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
CHATS_FILE = "chats.json"
RELEARN_FILE = "relearn.json"
STACKED_ON_FILE = "stacked_on.txt"
ATTACKS_FILE = "attacks.json"  # the robustness card (unlearnviz.attacks.card)
LMEVAL_FILE = "lmeval.json"  # lm-evaluation-harness's results (unlearnviz.evaluation.lmeval)
LMEVAL_TASKS_DIR = "lmeval_tasks"  # the local task files those results were scored on
STACK_DIR = "stack"


# ---- writing ----------------------------------------------------------------------------------
def save_run(session: Session, out: Path, cfg: Config, first: int = 0, stacked_on: Path | None = None,
             wall_s: float | None = None) -> dict:
    """Write a run folder (the layout above) from a session whose edits ``first..`` are this run's;
    returns the metrics written to metrics.json. Files of an earlier run in ``out`` that this run
    would not write (its stack/, stacked_on.txt, chats, relearning) are removed first."""
    from unlearnviz.io import atomic_write_text
    from unlearnviz.methods.edit import save_edit

    lm, n = session.require_model(), len(session.stack)
    if n <= first:
        raise UserError("nothing to save: the run fitted no edit")
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / STACK_DIR, ignore_errors=True)  # an earlier run's files in the same folder
    shutil.rmtree(out / LMEVAL_TASKS_DIR, ignore_errors=True)
    for name in (STACKED_ON_FILE, CHATS_FILE, RELEARN_FILE, ATTACKS_FILE, LMEVAL_FILE):
        (out / name).unlink(missing_ok=True)
    original = session.before or {}
    before = session.after.get(first - 1, original) if first else original
    records = []
    for i in range(first, n):
        edit = session.stack.edits[i]
        edit.meta["metrics"] = {"before": original, "after": session.after.get(i)}
        folder = out if i == n - 1 else out / STACK_DIR / f"{i - first:02d}"
        save_edit(edit, folder, lm, stack_index=i)
        below = (f"{STACK_DIR}/{i - 1 - first:02d}" if i == n - 1 else f"../{i - 1 - first:02d}") if i > first \
            else (str(Path(stacked_on).resolve()) if stacked_on else None)
        if below is not None:
            atomic_write_text(folder / STACKED_ON_FILE, below + "\n")
        records.append({"method": edit.method, "hparams": edit.hparams, "after": session.after.get(i),
                        "fit_s": edit.meta.get("fit_s"), "steps": edit.meta.get("steps")})
    last = session.stack.edits[-1]
    data = session.require_data()
    metrics = {"method": last.method, "hparams": last.hparams, "model": lm.name, "data": data.name,
               "before": before, "after": session.after.get(n - 1), "original": original,
               "steps": last.meta.get("steps"), "fit_s": sum(r["fit_s"] or 0 for r in records),
               "wall_s": wall_s, "seed": cfg.seed, "edits": records}
    atomic_write_text(out / METRICS_FILE, json.dumps(metrics, indent=2, default=float) + "\n")
    atomic_write_text(out / CONFIG_FILE, session.to_config(base=cfg).to_yaml())
    if session.chats:
        atomic_write_text(out / CHATS_FILE, json.dumps(session.chats, indent=2) + "\n")
    if session.relearn:
        rel = {str(k): v for k, v in session.relearn.items()}
        atomic_write_text(out / RELEARN_FILE, json.dumps(rel, indent=2, default=float) + "\n")
    return metrics


# ---- the edit chain ---------------------------------------------------------------------------
def read_edit(folder: Path, lm: LoadedModel) -> Edit:
    """load_edit, with any structural damage it does not itself check reported as one line."""
    from unlearnviz.methods import load_edit

    try:
        return load_edit(folder, lm)
    except (UserError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # a manifest of the wrong shape, a tensor under a bad name, ...
        raise UserError(f"{folder}: damaged or tampered edit ({type(exc).__name__}: {str(exc)[:120]})") from None


def load_stack(lm: LoadedModel, folder: Path) -> EditStack:
    """The edit in ``folder`` and every edit below it (its stacked_on.txt chain), bottom first."""
    from unlearnviz.methods import EditStack

    chain, seen = [], set()
    current = folder
    while True:
        if current.resolve() in seen:
            raise UserError(f"{folder}: {STACKED_ON_FILE} chain loops back to {current} (damaged or tampered edit)")
        seen.add(current.resolve())
        chain.append(read_edit(current, lm))
        prev = current / STACKED_ON_FILE
        if not prev.exists():
            break
        try:
            below = Path(prev.read_text(encoding="utf-8").strip())
            current = below if below.is_absolute() else current / below  # relative: a run's own stack/NN
        except (OSError, UnicodeDecodeError):
            raise UserError(f"{prev}: unreadable (damaged or tampered edit)") from None
    return EditStack(list(reversed(chain)))


# ---- the JSON and YAML files ------------------------------------------------------------------
def read_json(path: Path, kind: type = dict) -> Any:
    """A JSON file that must hold a ``kind`` (dict or list); None when there is no such file."""
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{path}: not valid JSON (damaged file)") from None
    if not isinstance(value, kind):
        raise UserError(f"{path}: expected a JSON {'object' if kind is dict else kind.__name__} (damaged file)")
    return value


def read_run_folder(run_dir: Path) -> tuple[dict, dict | None]:
    """The manifest and metrics of a ``run`` folder, with one-line errors for anything else."""
    from unlearnviz.methods.edit import EDIT_FILE, MANIFEST_FILE

    if not run_dir.exists():
        raise UserError(f"--run {run_dir}: no such folder")
    if not run_dir.is_dir():
        raise UserError(f"--run {run_dir} is a file, not a run folder")
    if not (run_dir / MANIFEST_FILE).exists() or not (run_dir / EDIT_FILE).exists():
        raise UserError(f"{run_dir} is not a run folder (it needs {MANIFEST_FILE} and {EDIT_FILE}, as written by "
                        f"`python -m unlearnviz run`)")
    return read_json(run_dir / MANIFEST_FILE), read_json(run_dir / METRICS_FILE)


def read_config_mapping(run_dir: Path) -> dict:
    """The run's config.yaml as a plain mapping, not validated (newer run folders carry one), else {}."""
    import yaml

    path = run_dir / CONFIG_FILE
    if not path.exists():
        return {}
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raise UserError(f"{path}: not valid YAML (damaged file)") from None
    return raw if isinstance(raw, dict) else {}


def section_value(section: Any, key: str) -> str | None:
    """``model: default`` (flat) or ``model: {source: default}`` (sections)."""
    if isinstance(section, str):
        return section
    return section.get(key) if isinstance(section, dict) and isinstance(section.get(key), str) else None


def model_source_for(manifest: dict, config: dict | None = None) -> str:
    """The source to load a run's model from: its config's, the default model, or a cached model
    folder of that name (the synthetic lab model); otherwise the user must say."""
    from unlearnviz.model.loading import DEFAULT_ALIASES, cache_dir

    source = section_value((config or {}).get("model"), "source") or (manifest.get("model") or {}).get("source")
    if source:
        return str(source)
    name = str((manifest.get("model") or {}).get("name") or "")
    if name in DEFAULT_ALIASES:
        return "default"
    cached = cache_dir() / "models" / name
    if name and "/" not in name and (cached / "config.json").exists():
        return str(cached)
    raise UserError(f"the run was made with model {name!r}; pass --model with its folder or hub id")


def model_for_edit(folder: Path) -> str:
    """The model an edit folder was made for (its config's source, else its manifest's), so that a
    command given ``--edit`` and no ``--model`` loads it; the edit's fingerprint check then confirms
    it is that model."""
    from unlearnviz.methods.edit import MANIFEST_FILE

    folder = Path(folder)
    if not (folder / MANIFEST_FILE).exists():
        raise UserError(f"--edit {folder}: no {MANIFEST_FILE} there (an edit folder is written by "
                        "`python -m unlearnviz run`)")
    return model_source_for(read_json(folder / MANIFEST_FILE), read_config_mapping(folder))


def relearn_result(obj: dict, index: int | None, path: Path) -> dict:
    """A relearning result: `relearn --json`'s object, or a run's relearn.json {stack index: result}."""
    if "edited" not in obj and obj:
        keyed = {int(k): v for k, v in obj.items() if str(k).isdigit() and isinstance(v, dict)}
        obj = keyed.get(index) if index in keyed else {}
    if not isinstance(obj.get("edited"), list) or not obj["edited"]:
        raise UserError(f"{path}: not a relearning result for this edit (from `python -m unlearnviz relearn --json`)")
    return obj


def read_chats(run_dir: Path) -> list | None:
    """The run's chats.json (the config's side-by-side answers), None when it has none."""
    return read_json(run_dir / CHATS_FILE, list)


@dataclass
class RunRecords:
    """What a run folder records besides its edits: the config (validated; None in an older run),
    the metrics, the chats and the relearning results by stack index."""

    path: Path
    config: Config | None = None
    metrics: dict = field(default_factory=dict)
    chats: list = field(default_factory=list)
    relearn: dict[int, dict] = field(default_factory=dict)


def read_run(run_dir: Path) -> RunRecords:
    """A run folder's records, checked (the edits are read with ``load_stack``, once a model is loaded)."""
    if not run_dir.is_dir():
        raise UserError(f"--run {run_dir} is not a folder")
    cfg = load_config(run_dir / CONFIG_FILE) if (run_dir / CONFIG_FILE).exists() else None
    relearn = read_json(run_dir / RELEARN_FILE) or {}
    return RunRecords(path=run_dir, config=cfg, metrics=read_json(run_dir / METRICS_FILE) or {},
                      chats=read_chats(run_dir) or [],
                      relearn={int(k): v for k, v in relearn.items() if k.isdigit()})


# ---- configs ----------------------------------------------------------------------------------
def read_run_config(path: str | None, method: str | None = None) -> dict:
    """A run config (unlearnviz.config: the new schema or the old flat form) as what a sweep uses:
    {method, model, dtype, device, data, hparams}. A sweep varies one edit, so the config has at
    most one."""
    if not path:
        return {}
    cfg = load_config(path, method=method)
    if len(cfg.edits) > 1:
        raise UserError(f"config {Path(path).name}: edits: a sweep varies one edit; this config has {len(cfg.edits)}")
    edit = cfg.edits[0] if cfg.edits else None
    return {"method": edit.method if edit else None, "hparams": dict(edit.hparams) if edit else {},
            "model": cfg.model.source, "dtype": cfg.model.dtype, "device": cfg.model.device, "data": cfg.data.spec}
