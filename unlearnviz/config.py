"""One config file for a whole run: model, data, the edit stack, evaluation, chats, analysis, seed.

The same schema is read by ``python -m unlearnviz run --config``, ``sweep --config`` and
``python app.py --config``, and written by the Export tab and inside session bundles, so a run
made anywhere can be replayed anywhere. YAML or JSON::

    version: 1
    seed: 0                      # global seeds; the seed of every edit without its own, and of relearning
    model: {source: default, dtype: float32, device: auto}
    data: {spec: "builtin:demo"} # builtin:NAME, synthetic[:E], hf:DATASET[:CONFIG] or a file
    edits:                       # the edit stack, fitted in order, each on top of the ones before
      - method: rmu
        hparams: {steps: 200}    # validated by the method's own hyperparameter dataclass
      - method: mrp
        hparams: {k: 4}
        data: builtin:geo_europe_vs_science_books   # optional: fit this edit on another set
    evaluation:
      letter: true               # also lettered (lm-eval) A-D scoring
      relearn: null              # or {steps: 40, lr: 1.0e-4, eval_every: 10}: attack the final stack
    chat:                        # prompts asked of the original and the edited model, side by side
      - {prompt: "The capital of France is", max_new_tokens: 32, temperature: 0.0, edit: null}
    analysis: {enabled: false, layers: null, max_texts: 150}   # `run` only: analysis.json/html

Every key is checked: an unknown key, a wrong type or a value out of range is one ``UserError``
that names the dotted key (``edits[0].hparams.steps: ...``). Hyperparameters are validated by
``make_hparams`` (the methods' own rules), not here. The old flat form ``{method, model, data,
hparams}`` (and the Export tab's old ``stack``/``history`` keys) is still read and mapped onto
this schema.

This module also replays a config into a Session (``replay``), and writes a run folder from a
Session (``save_run``): the layout ``run`` produces and ``bundle import`` restores.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlearnviz.errors import UserError

CONFIG_VERSION = 1
MAX_CONFIG_BYTES = 1 << 20
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
CHATS_FILE = "chats.json"
RELEARN_FILE = "relearn.json"
STACK_DIR = "stack"
DTYPES = ("float32", "bfloat16", "float16", "auto")


def opt(default: Any, kind: str, doc: str, min: float | None = None, max: float | None = None,
        choices: tuple | None = None, optional: bool = False):
    """A documented, checked config field. ``kind``: int, float, bool, str, ints (a list of
    integers), or the name of a nested section; ``optional``: null is allowed."""
    meta = {"kind": kind, "doc": doc, "min": min, "max": max, "choices": choices, "optional": optional}
    if isinstance(default, (list, dict)) or callable(default):
        factory = default if callable(default) else (lambda d=default: type(d)(d))
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelSection:
    """Which model, loaded how (operator-only switches such as trust_remote_code never come from a file)."""

    source: str = opt("default", "str", "'default', synthetic[:E], a folder, a .gguf file or a hub id")
    dtype: str = opt("float32", "str", "weights' dtype", choices=DTYPES)
    device: str = opt("auto", "str", "cpu, cuda, cuda:N, mps or auto")


@dataclass
class DataSection:
    spec: str | None = opt(None, "str", "builtin:NAME, synthetic[:E], hf:DATASET[:CONFIG] or a data file "
                                        "(relative paths: to the working folder)", optional=True)


@dataclass
class EditSection:
    """One request of the edit stack."""

    method: str = opt("", "str", "rmu, srmu or mrp")
    hparams: dict = opt(dict, "hparams", "overrides of the method's defaults (the rest keep their defaults)")
    data: str | None = opt(None, "str", "fit this edit on another data set (continual unlearning); "
                                        "default: data.spec", optional=True)


@dataclass
class RelearnSection:
    steps: int = opt(40, "int", "fine-tuning steps on forget half A", min=1, max=100_000)
    lr: float = opt(1e-4, "float", "learning rate of the attack", min=1e-12, max=1.0)
    eval_every: int = opt(10, "int", "score half B every this many steps", min=1, max=100_000)


@dataclass
class EvaluationSection:
    letter: bool = opt(True, "bool", "also lettered (lm-eval) A-D scoring; cloze, floor and perplexity always")
    relearn: RelearnSection | None = opt(None, "RelearnSection", "relearning attack on the final stack",
                                         optional=True)


@dataclass
class ChatEntry:
    prompt: str = opt("", "str", "the prompt (a chat template is applied where the model has one)")
    max_new_tokens: int = opt(48, "int", "answer length", min=1, max=4096)
    temperature: float = opt(0.0, "float", "0 = greedy; sampling uses the generator's fixed seed (reproducible too)",
                             min=0.0, max=5.0)
    edit: int | None = opt(None, "int", "index into edits: the edited answer uses that edit and the ones "
                                        "below it; null = the whole stack", min=0, optional=True)


@dataclass
class AnalysisSection:
    """Settings of ``unlearnviz.analysis.run_analysis`` (``run`` writes analysis.json/html when enabled)."""

    enabled: bool = opt(False, "bool", "run every analysis view on the final stack")
    layers: list | None = opt(None, "ints", "layers to analyse; null = all", optional=True)
    geometry_layer: int | None = opt(None, "int", "layer of the geometry views; null = the edit's deepest",
                                     optional=True)
    prompt: str | None = opt(None, "str", "logit-lens prompt; null = the first forget item", optional=True)
    answer: str | None = opt(None, "str", "its gold answer", optional=True)
    max_texts: int = opt(150, "int", "texts per split for the activation views", min=1, max=100_000)
    max_items: int = opt(64, "int", "MCQ items per split for the probes", min=1, max=100_000)
    variant: str = opt("ratio", "str", "importance map variant", choices=("ratio", "difference", "product"))
    use_umap: bool = opt(True, "bool", "UMAP views (first use compiles for 20-40 s)")
    probes: bool = opt(True, "bool", "residual-knowledge probes")
    train_probe: bool = opt(True, "bool", "train ridge probes (false: the lens readout only)")
    batch_size: int = opt(32, "int", "texts per forward", min=1, max=4096)
    top_k: int = opt(10, "int", "top features per layer in analysis.json", min=1, max=100_000)


@dataclass
class Config:
    """A whole run. ``to_dict`` gives a plain mapping that ``load_config`` reads back unchanged."""

    version: int = opt(CONFIG_VERSION, "int", "schema version", min=1, max=CONFIG_VERSION)
    seed: int = opt(0, "int", "seed of torch/random/numpy, the default seed of every edit that sets none "
                              "and of the relearning attack", min=0, max=2**31 - 1)
    model: ModelSection = opt(ModelSection, "ModelSection", "the model")
    data: DataSection = opt(DataSection, "DataSection", "forget/retain data")
    edits: list = opt(list, "list:EditSection", "the edit stack, fitted in order")
    evaluation: EvaluationSection = opt(EvaluationSection, "EvaluationSection", "metrics")
    chat: list = opt(list, "list:ChatEntry", "side-by-side chats after the edits")
    analysis: AnalysisSection = opt(AnalysisSection, "AnalysisSection", "analysis views (`run` only)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


SECTIONS = {c.__name__: c for c in (ModelSection, DataSection, EditSection, RelearnSection, EvaluationSection,
                                    ChatEntry, AnalysisSection, Config)}


# ---- validation -------------------------------------------------------------------------------
def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_value(key: str, value: Any, meta: dict) -> Any:
    """One field's value, type-checked (no silent string-to-number guessing) and range-checked."""
    kind = meta["kind"]
    if value is None:
        if meta["optional"]:
            return None
        raise UserError(f"{key}: must not be null")
    if kind.startswith("list:"):
        if not isinstance(value, list):
            raise UserError(f"{key}: expected a list, got {_type_name(value)}")
        cls = SECTIONS[kind[5:]]
        return [_section(cls, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if kind in SECTIONS:
        return _section(SECTIONS[kind], value, key)
    if kind == "hparams":
        if not isinstance(value, dict):
            raise UserError(f"{key}: expected a mapping of name: value, got {_type_name(value)}")
        return dict(value)
    if kind == "ints":
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise UserError(f"{key}: expected a list of integers, got {value!r}")
        items = value
    elif kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise UserError(f"{key}: expected an integer, got {value!r}")
        items = [value]
    elif kind == "float":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise UserError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise UserError(f"{key}: expected a finite number, got {value!r}")
        value = float(value)
        items = [value]
    elif kind == "bool":
        if not isinstance(value, bool):
            raise UserError(f"{key}: expected true or false, got {value!r}")
        return value
    elif kind == "str":
        if not isinstance(value, str):
            raise UserError(f"{key}: expected a string, got {_type_name(value)} {value!r}")
        if meta["choices"] and value not in meta["choices"]:
            raise UserError(f"{key}: must be one of {', '.join(meta['choices'])}, got {value!r}")
        return value
    else:  # pragma: no cover - a schema bug, not a user error
        raise AssertionError(f"unknown kind {kind}")
    for v in items:
        if meta["min"] is not None and v < meta["min"]:
            raise UserError(f"{key}: {v} is below the minimum {meta['min']}")
        if meta["max"] is not None and v > meta["max"]:
            raise UserError(f"{key}: {v} is above the maximum {meta['max']}")
    return value


def _section(cls: type, raw: Any, path: str):
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping, got {_type_name(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise UserError(f"{path + '.' if path else ''}{key}: unknown key; known: {', '.join(fields)}")
    values = {name: _check_value(f"{path + '.' if path else ''}{name}", raw[name], f.metadata)
              for name, f in fields.items() if name in raw}
    return cls(**values)


def _check_edit(edit: EditSection, path: str) -> None:
    """Method name and hyperparameters, by the methods' own registry and ``make_hparams``; the
    overrides are stored as read by it (typed), so ``to_dict`` writes numbers, not strings."""
    from unlearnviz.methods.base import get_method, make_hparams

    if not edit.method:
        raise UserError(f"{path}.method: missing (rmu, srmu or mrp)")
    try:
        spec = get_method(edit.method)
    except UserError as exc:
        raise UserError(f"{path}.method: {exc}") from None
    typed = {}
    for key, value in edit.hparams.items():
        try:
            typed[key] = getattr(make_hparams(spec.hparams_cls, {key: value}), key)
        except UserError as exc:
            raise UserError(f"{path}.hparams.{key}: {exc}") from None
    edit.hparams = typed


FLAT_KEYS = {"method", "model", "data", "hparams", "stack", "history"}


def _from_flat(raw: dict) -> dict:
    """The old forms: ``{method, model, data, hparams}`` (``run --config``) and the Export tab's
    ``{..., stack: [{method, hparams}], history: [...]}`` (history is ignored)."""
    for key in raw:
        if key not in FLAT_KEYS:
            raise UserError(f"{key}: unknown key; known: {', '.join(f.name for f in dataclasses.fields(Config))} "
                            f"(or the old flat form: method, model, data, hparams)")
    out: dict = {}
    if "model" in raw:
        out["model"] = raw["model"]
    if "data" in raw:
        out["data"] = raw["data"]
    if raw.get("stack") is not None:
        if not isinstance(raw["stack"], list):
            raise UserError(f"stack: expected a list, got {_type_name(raw['stack'])}")
        out["edits"] = raw["stack"]
    elif "method" in raw or "hparams" in raw:
        hparams = raw.get("hparams", {})
        if hparams is None:
            hparams = {}
        if not isinstance(hparams, dict):
            raise UserError(f"hparams: expected a mapping of name: value, got {_type_name(hparams)}")
        out["edits"] = [{"method": raw.get("method"), "hparams": hparams}] if raw.get("method") else []
        if not raw.get("method") and hparams:
            out["_flat_hparams"] = hparams  # `run --method X --config F` fills the method in
    return out


def _shorthand(raw: dict) -> dict:
    """``model: NAME`` and ``data: SPEC`` as strings mean ``{source: NAME}`` / ``{spec: SPEC}``."""
    raw = dict(raw)
    if isinstance(raw.get("model"), str):
        raw["model"] = {"source": raw["model"]}
    if raw.get("model") is None and "model" in raw:
        del raw["model"]
    if isinstance(raw.get("data"), str) or raw.get("data") is None and "data" in raw:
        raw["data"] = {"spec": raw["data"]}
    return raw


def parse_config(raw: Any, method: str | None = None) -> Config:
    """Validate a mapping (new or old flat form) into a Config. ``method`` fills an old flat
    config that gives hparams without a method (``run --method X --config F``)."""
    if not isinstance(raw, dict):
        raise UserError(f"expected a mapping with model, data, edits, ... (or the old method, model, data, hparams), "
                        f"got {_type_name(raw)}")
    new_keys = {f.name for f in dataclasses.fields(Config)} - {"model", "data"}
    if set(raw) & {"method", "hparams", "stack", "history"}:
        if set(raw) & new_keys:
            both = sorted(set(raw) & new_keys)
            raise UserError(f"{both[0]}: mixes the new schema with the old flat form (method/hparams/stack); "
                            "write the edits as edits: [{method, hparams}]")
        raw = _from_flat(raw)
        flat = raw.pop("_flat_hparams", None)
        if flat is not None and method:
            raw["edits"] = [{"method": method, "hparams": flat}]
    cfg = _section(Config, _shorthand(raw), "")
    for i, edit in enumerate(cfg.edits):
        _check_edit(edit, f"edits[{i}]")
    for i, chat in enumerate(cfg.chat):
        if not chat.prompt.strip():
            raise UserError(f"chat[{i}].prompt: must not be empty")
        if chat.edit is not None and chat.edit >= len(cfg.edits):
            raise UserError(f"chat[{i}].edit: {chat.edit} is not an index of the {len(cfg.edits)} edits")
    return cfg


def read_config_file(path: str | Path) -> Any:
    """The parsed YAML/JSON of a config file (not yet validated)."""
    import yaml

    p = Path(path)
    try:
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise UserError(f"config {p}: {p.stat().st_size} bytes is over the {MAX_CONFIG_BYTES} byte limit")
        text = p.read_text(encoding="utf-8")
        return json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, json.JSONDecodeError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot read config {p}: {first}") from None


def load_config(source: str | Path | dict, method: str | None = None) -> Config:
    """A validated Config from a file (YAML or JSON) or a mapping; errors name the file and key."""
    if isinstance(source, dict):
        return parse_config(source, method)
    raw = read_config_file(source)
    try:
        return parse_config({} if raw is None else raw, method)
    except UserError as exc:
        raise UserError(f"config {Path(source).name}: {exc}") from None


def config_from_args(method: str | None, model: str, dtype: str, device: str, data: str | None,
                     hparams: dict, letter: bool) -> Config:
    """The config that the plain flags of ``run`` mean (so flags and configs share one path)."""
    raw = {"model": {"source": model, "dtype": dtype, "device": device},
           "data": {"spec": data}, "edits": [{"method": method, "hparams": hparams}] if method else [],
           "evaluation": {"letter": letter}}
    return parse_config(raw)


# ---- replay -----------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seeds of the global generators (methods, attacks and sampling also take explicit seeds)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _FixedStore:
    """A ModelStore that hands out one already loaded model (the CLI's, with its operator flags)."""

    def __init__(self, lm):
        self.lm = lm

    def get(self, source, opts):
        return self.lm


def edit_hparams(edit: EditSection, seed: int) -> dict:
    """The overrides an edit is fitted with: the config's seed where the edit sets none."""
    import dataclasses as dc

    from unlearnviz.methods.base import get_method

    hp = dict(edit.hparams)
    if "seed" not in hp and "seed" in {f.name for f in dc.fields(get_method(edit.method).hparams_cls)}:
        hp["seed"] = seed
    return hp


def replay(cfg: Config, session=None, *, lm=None, store=None, prior=None, progress=None, should_stop=None,
           log: Callable[[str], None] | None = None, chats: bool = True):
    """Fit a config into a Session: load model and data, evaluate the original, fit every edit in
    order on top of the ones before (and of ``prior``, an EditStack), evaluate each, run the
    relearning attack and the chats. ``lm``: an already loaded model to use (the CLI's); else the
    config's model is loaded through ``store``. Returns the session."""
    from unlearnviz.methods.edit import EditStack
    from unlearnviz.session import STORE, Session

    log = log or (lambda _m: None)
    session = session if session is not None else Session()
    if not cfg.data.spec:
        raise UserError("data.spec: the config names no data (data: builtin:NAME, a file, ...)")
    seed_everything(cfg.seed)
    session.load_model(cfg.model.source, cfg.model.dtype, cfg.model.device,
                       store=_FixedStore(lm) if lm is not None else (store or STORE))
    session.load_data(cfg.data.spec)
    if prior is not None and len(prior):
        session.stack = EditStack(list(prior.edits))
    letter = cfg.evaluation.letter
    log("evaluating the original model")
    session.evaluate(letter=letter, should_stop=should_stop)  # before (and the prior stack): fails fast
    first = len(session.stack)
    for i, edit in enumerate(cfg.edits):
        log(f"fitting edit {i + 1}/{len(cfg.edits)}: {edit.method}")
        session.run_edit(edit.method, edit_hparams(edit, cfg.seed), progress=progress, should_stop=should_stop,
                         evaluate=False, data_spec=edit.data if edit.data and edit.data != cfg.data.spec else None)
    for i in range(first, len(session.stack)):
        log(f"evaluating edit {i + 1}/{len(session.stack)}")
        session.select(i)
        session.evaluate(letter=letter, should_stop=should_stop)
    session.select(None)
    if cfg.evaluation.relearn is not None and len(session.stack):
        r = cfg.evaluation.relearn
        log(f"relearning attack ({r.steps} steps)")
        session.run_relearn(steps=r.steps, lr=r.lr, eval_every=r.eval_every, seed=cfg.seed, should_stop=should_stop)
    if chats:
        for c in cfg.chat:
            session.select(None if c.edit is None else first + c.edit)
            try:
                session.chat(c.prompt, c.max_new_tokens, c.temperature)
            finally:
                session.select(None)
    return session


# ---- run folders ------------------------------------------------------------------------------
def save_run(session, out: Path, cfg: Config, first: int = 0, stacked_on: Path | None = None,
             wall_s: float | None = None) -> dict:
    """Write a run folder from a session whose edits ``first..`` are this run's.

    Layout (one edit: exactly what ``run`` always wrote, plus config.yaml)::

        OUT/config.yaml        the config that reproduces this run (every hyperparameter explicit)
        OUT/metrics.json       before (the model below this run's edits), after (the whole stack),
                               original (no edit), edits: [{method, hparams, after, fit_s, steps}]
        OUT/manifest.json      the LAST edit of the stack (save_edit): so `relearn/export --edit OUT`
        OUT/edit.safetensors   and `run --stack-on OUT` act on the whole stack
        OUT/stacked_on.txt     the edit below it: stack/NN (relative) or the --stack-on folder
        OUT/stack/00, 01, ...  the run's earlier edits, each with its own stacked_on.txt
        OUT/chats.json, OUT/relearn.json   when the config asks for chats or a relearning attack
    """
    from unlearnviz.io import atomic_write_text
    from unlearnviz.methods.edit import save_edit

    lm, n = session.require_model(), len(session.stack)
    if n <= first:
        raise UserError("nothing to save: the run fitted no edit")
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / STACK_DIR, ignore_errors=True)  # an earlier run's files in the same folder
    for name in ("stacked_on.txt", CHATS_FILE, RELEARN_FILE):
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
            atomic_write_text(folder / "stacked_on.txt", below + "\n")
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

