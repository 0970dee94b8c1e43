"""One config file for a whole run: model, data, the edit stack, evaluation, chats, analysis, seed.

The same schema is read by ``python -m unlearnviz run --config``, ``sweep --config`` and
``python app.py --config``, and written by the Export tab and inside session bundles, so a run
made anywhere can be replayed anywhere. YAML or JSON::

    version: 1
    seed: 0                      # global seeds; the seed of every edit without its own, and of relearning
    model: {source: default, dtype: float32, device: auto}
    data: {spec: "builtin:demo"} # builtin:NAME, synthetic[:E], hf:DATASET[:CONFIG], preset:NAME or a file;
                                 # and/or parts: forget_corpus, retain_corpus, forget_mcq, retain_mcq
    edits:                       # the edit stack, fitted in order, each on top of the ones before
      - method: rmu
        hparams: {steps: 200}    # validated by the method's own hyperparameter dataclass
        preset: null             # a method preset by name, hparams over it (none: the defaults; null:
                                 # the one whose model rule matches, when no hparams are given)
      - method: mrp
        hparams: {k: 4}
        data: builtin:geo_europe_vs_science_books   # optional: fit this edit on another set
      - method: imported         # an unlearned model made by another tool, diffed against the base
        source: runs/npo-checkpoint            # (unlearnviz.methods.imports; re-imported on replay)
    evaluation:
      letter: true               # also lettered (lm-eval) A-D scoring
      relearn: null              # or {steps: 40, lr: 1.0e-4, eval_every: 10}: attack the final stack
    chat:                        # prompts asked of the original and the edited model, side by side
      - {prompt: "The capital of France is", max_new_tokens: 32, temperature: 0.0, edit: null}
    analysis: {enabled: false, layers: null, max_texts: 150}   # `run` only: analysis.json/html

Every key is checked by a pydantic schema generated from the sections' ``opt`` metadata: an
unknown key, a wrong type or a value out of range is one ``UserError`` that names the dotted key
(``edits[0].hparams.steps: ...``). Hyperparameters are validated by ``make_hparams`` (the same
way as the CLI's ``--set``), not here. The old flat form ``{method, model, data,
hparams}`` (and the Export tab's old ``stack``/``history`` keys) is still read and mapped onto
this schema.

Replaying a config into a Session is ``unlearnviz.session.replay``; the run folder it becomes is
``unlearnviz.runs``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from unlearnviz.errors import UserError

CONFIG_VERSION = 1
MAX_CONFIG_BYTES = 1 << 20
DTYPES = ("float32", "bfloat16", "float16", "auto")
SEED_MAX = 2**31 - 1  # every seed (the config's, a method's, an attack's): what torch, numpy and random all take
MIN_TEMPERATURE = 0.01  # sampling below this divides the logits past float range: 0 (greedy) or at least this
NAME_MAX_CHARS = 1024  # a name, source or spec that will reach the file system (a whole path: 4096 on Linux)
NAME_PART_BYTES = 255  # one folder or file name of it (the file system's own limit)


def opt(default: Any, kind: str, doc: str, min: float | None = None, max: float | None = None,
        choices: tuple | None = None, optional: bool = False):
    """A documented, checked config field. ``kind``: int, float, bool, str, ints (a list of
    integers), name (a string that reaches the file system: no control characters, at most
    ``max`` or NAME_MAX_CHARS characters and NAME_PART_BYTES per folder or file name), strs (a
    list of strings, at most ``max`` of them), json (any mapping or list; checked by its reader),
    or the name of a nested section; ``optional``: null is allowed. For str, ``max`` is the
    length in characters."""
    meta = {"kind": kind, "doc": doc, "min": min, "max": max, "choices": choices, "optional": optional}
    if isinstance(default, (list, dict)) or callable(default):
        factory = default if callable(default) else (lambda d=default: type(d)(d))
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelSection:
    """Which model, loaded how (operator-only switches such as trust_remote_code never come from a file)."""

    source: str = opt("default", "str", "'default', synthetic[:E], a folder, a .gguf file or a hub id")
    dtype: str = opt("auto", "str", "weights' dtype (auto: bfloat16 on CUDA, else float32)", choices=DTYPES)
    device: str = opt("auto", "str", "cpu, cuda, cuda:N, mps or auto")


_PART_DOC = ("a source (unlearnviz.data.sources): a string such as 'hf:DATASET:CONFIG:SPLIT?text=COLUMN' or "
             "'file.jsonl?min_chars=50', a mapping {source, config, split, columns, max_rows, seed, min_chars, "
             "chunk_tokens, unit}, or a list of them (one after the other); overrides that part of spec")


@dataclass
class DataSection:
    """The data: one spec, and/or its four parts each from its own source. On reading, the parts
    are folded into ``spec`` (one composed spec string, ``[SPEC;]PART=SOURCE;...``), so every
    reader of a config (replay, bundles, reports, sweeps) sees the whole data set in one string."""

    spec: str | None = opt(None, "str", "builtin:NAME, synthetic[:E], hf:DATASET[:CONFIG], preset:NAME[@DIR], a data "
                                        "file or a composed spec (relative paths: to the working folder)",
                           optional=True)
    forget_corpus: Any = opt(None, "sources", "the forget corpus: " + _PART_DOC, optional=True)
    retain_corpus: Any = opt(None, "sources", "the retain corpus: " + _PART_DOC, optional=True)
    forget_mcq: Any = opt(None, "sources", "the forget multiple-choice set: " + _PART_DOC, optional=True)
    retain_mcq: Any = opt(None, "sources", "the retain multiple-choice set: " + _PART_DOC, optional=True)


@dataclass
class EditSection:
    """One request of the edit stack."""

    method: str = opt("", "str", "rmu, srmu or mrp; or imported (with source)")
    hparams: dict = opt(dict, "hparams", "overrides of the method's defaults (the rest keep their defaults)")
    preset: str | None = opt(None, "str", "a named preset of the method (unlearnviz.methods.base.Preset), hparams "
                                          "over it; none: the defaults; null: the one whose model rule matches the "
                                          "loaded model, if no hparams are given", optional=True)
    data: str | None = opt(None, "str", "fit this edit on another data set (continual unlearning); "
                                        "default: data.spec", optional=True)
    source: str | None = opt(None, "str", "method imported: the unlearned model (a checkpoint folder, a PEFT "
                                          "adapter folder, a .gguf file or a hub id), diffed against the base",
                             optional=True)


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
                              "and of the relearning attack", min=0, max=SEED_MAX)
    model: ModelSection = opt(ModelSection, "ModelSection", "the model")
    data: DataSection = opt(DataSection, "DataSection", "forget/retain data")
    edits: list = opt(list, "list:EditSection", "the edit stack, fitted in order")
    evaluation: EvaluationSection = opt(EvaluationSection, "EvaluationSection", "metrics")
    chat: list = opt(list, "list:ChatEntry", "side-by-side chats after the edits")
    analysis: AnalysisSection = opt(AnalysisSection, "AnalysisSection", "analysis views (`run` only)")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["data"] = {k: v for k, v in out["data"].items() if k == "spec" or v is not None}  # parts are folded
        return out

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


SECTIONS = {c.__name__: c for c in (ModelSection, DataSection, EditSection, RelearnSection, EvaluationSection,
                                    ChatEntry, AnalysisSection, Config)}


# ---- validation -------------------------------------------------------------------------------
def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


_TYPES = {"int": int, "float": float, "bool": bool, "str": str}
_EXPECTED = {"int": "an integer, got {v}", "float": "a number, got {v}", "bool": "true or false, got {v}",
             "str": "a string, got {t} {v}", "name": "a string, got {t} {v}", "ints": "a list of integers, got {v}",
             "strs": "a list of strings, got {v}", "json": "a JSON object or list, got {t}",
             "hparams": "a mapping of name: value, got {t}", "list": "a list, got {t}", "section": "a mapping, got {t}",
             "sources": "a source string, a mapping or a list of them, got {t}"}


def _short(value: Any, n: int = 60) -> str:
    """A value's repr cut to ``n`` characters: a message quotes what was sent, never a megabyte of it."""
    text = repr(value)
    return text if len(text) <= n else f"{text[:n]}… ({len(text):,} characters)"


def _plain_name(text: str) -> str:
    """A name that can reach the file system: no control characters (a NUL is an error deep in
    ``os.stat``, a newline passes a ``$`` regex) and no folder or file name over the system's limit."""
    bad = next((c for c in text if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise ValueError(f"holds a control character ({bad!r}); names are printable text")
    part = max(text.replace("\\", "/").split("/"), key=lambda s: len(s.encode("utf-8")))
    if len(part.encode("utf-8")) > NAME_PART_BYTES:
        raise ValueError(f"a folder or file name of it is {len(part.encode('utf-8')):,} bytes long; the limit is "
                         f"{NAME_PART_BYTES}")
    return text


def _field_type(meta: dict) -> Any:
    """The pydantic type of one ``opt`` field: its kind, range, choices and nullability."""
    kind, limits = meta["kind"], Field(ge=meta["min"], le=meta["max"])
    if kind in ("str", "name") and not meta["choices"]:
        size = Field(max_length=int(meta["max"]) if meta["max"] is not None else
                     (NAME_MAX_CHARS if kind == "name" else None))
        t: Any = Annotated[str, size, AfterValidator(_plain_name)] if kind == "name" else Annotated[str, size]
    elif kind == "strs":
        t = Annotated[list[Annotated[str, Field(max_length=NAME_MAX_CHARS)]],
                      Field(max_length=int(meta["max"]) if meta["max"] is not None else None)]
    elif kind == "json":
        t = dict | list
    elif kind.startswith("list:"):
        t: Any = list[_schema(SECTIONS[kind[5:]])]
    elif kind in SECTIONS:
        t = _schema(SECTIONS[kind])
    elif kind == "hparams":
        t = dict  # checked by make_hparams, key by key
    elif kind == "sources":
        t = str | dict | list  # checked by unlearnviz.data.sources, source by source (_fold_data)
    elif meta["choices"]:
        t = Literal[meta["choices"]]
    elif kind == "ints":
        t = list[Annotated[int, limits]]
    else:
        t = Annotated[_TYPES[kind], limits]
    return t | None if meta["optional"] else t


@functools.cache
def _schema(cls: type) -> type:
    """A section as a pydantic TypedDict generated from its ``opt`` metadata. Strict: a file's
    YAML/JSON carries types, so "3" is no integer here (CLI text is read by make_hparams)."""
    td = TypedDict(cls.__name__, {f.name: _field_type(dict(f.metadata)) for f in dataclasses.fields(cls)},
                   total=False)
    td.__pydantic_config__ = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    return td


@functools.cache
def _adapter(cls: type = None) -> TypeAdapter:  # type: ignore[assignment]
    return TypeAdapter(_schema(cls or Config))


def _build(cls: type, values: dict):
    """The validated mapping as the section's dataclass, nested sections included."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            kind, v = f.metadata["kind"], values[f.name]
            if kind.startswith("list:"):
                v = [_build(SECTIONS[kind[5:]], x) for x in v]
            elif kind in SECTIONS and v is not None:
                v = _build(SECTIONS[kind], v)
            out[f.name] = v
    return cls(**out)


def _problem(raw: dict, e: dict, root: type | None = None) -> tuple[list, str]:
    """One pydantic error as (reading order, the one-line message naming its dotted key). The
    order is a section's unknown keys first, then its fields in declaration order, depth first.
    ``root``: the section ``raw`` is a mapping of (the Config by default)."""
    cls, meta, key, value, order = root or Config, None, "", raw, []
    for part in e["loc"]:
        if isinstance(part, int):  # an item: of a list of sections, or of an ints/strs field (one message)
            if meta["kind"] in ("ints", "strs"):
                break
            cls, meta, key, value = SECTIONS[meta["kind"][5:]], None, f"{key}[{part}]", value[part]
            order.append((1, part))
            continue
        if meta is not None and meta["kind"] in ("sources", "json"):
            break  # the union's member names, not keys: one message for the field
        names = [f.name for f in dataclasses.fields(cls)]
        key = f"{key}.{part}" if key else part
        if part not in names:
            return order + [(0, list(value).index(part))], f"{key}: unknown key; known: {', '.join(names)}"
        meta, value = cls.__dataclass_fields__[part].metadata, value[part]
        order.append((1, names.index(part)))
        cls = SECTIONS.get(meta["kind"], cls)
    if meta is None:
        return order, f"{key}: expected a mapping, got {_type_name(value)}"
    kind, err = meta["kind"], e["type"]
    if value is None:
        return order, f"{key}: must not be null"
    if err in ("greater_than_equal", "less_than_equal"):
        v = float(e["input"]) if kind == "float" else e["input"]
        return order, (f"{key}: {v} is below the minimum {meta['min']}" if err == "greater_than_equal"
                       else f"{key}: {v} is above the maximum {meta['max']}")
    if err == "finite_number":
        return order, f"{key}: expected a finite number, got {value!r}"
    if err == "literal_error" and isinstance(value, str):
        return order, f"{key}: must be one of {', '.join(map(str, meta['choices']))}, got {_short(value)}"
    if err == "string_too_long":
        return order, f"{key}: {len(value):,} characters is over the limit of {e['ctx']['max_length']:,}"
    if err == "too_long":
        return order, f"{key}: {len(value):,} items is over the limit of {e['ctx']['max_length']:,}"
    if err == "value_error":
        return order, f"{key}: {e['ctx']['error']}"
    group = "list" if kind.startswith("list:") else "section" if kind in SECTIONS else kind
    return order, f"{key}: expected " + _EXPECTED[group].format(v=_short(value), t=_type_name(value))


def check_fields(cls: type, values: dict, where: str = "") -> dict:
    """``values`` (field name: value) checked strictly against the ``opt`` fields of ``cls`` (a
    config section, or the dashboard's API arguments, ``unlearnviz.ui.inputs``): no bool for a
    number, no float for an integer, no text read as a number, no NaN or infinity, ranges, choices,
    string lengths. Returns them validated; the first problem is one UserError naming the field
    (``where: field: ...``). The one schema machinery of configs and API calls alike."""
    try:
        out = _adapter(cls).validate_python(values)
    except ValidationError as exc:
        message = min(_problem(values, e, cls) for e in exc.errors())[1]
        raise UserError(f"{where}: {message}" if where else message) from None
    return dict(out)


def _hparam_meta(default: Any, meta: Any, name: str) -> dict:
    """An ``opt`` metadata of a method's (or attack's) hyperparameter field, typed as its default;
    ranges and choices are left to ``make_hparams`` (its messages), except seeds, which have none there."""
    item = default[0] if isinstance(default, list) and default else 0 if isinstance(default, list) else default
    kind = {bool: "bool", int: "int", float: "float", str: "str"}.get(type(item), "str")
    seed = name == "seed" or name.endswith("_seed")
    return {"kind": ("ints" if kind == "int" else "json") if isinstance(default, list) else kind, "doc": "",
            "min": 0 if seed else None, "max": SEED_MAX if seed else None, "choices": None, "optional": False}


@functools.cache
def _hparam_section(cls: type) -> type:
    """A hyperparameter dataclass as a section of strict ``opt`` fields (see :func:`check_hparams`)."""
    base = cls()
    fields = [(f.name, Any, field(default=None, metadata=_hparam_meta(getattr(base, f.name), f.metadata, f.name)))
              for f in dataclasses.fields(cls)]
    section = dataclasses.make_dataclass(cls.__name__, fields)
    SECTIONS.setdefault(section.__name__, section)
    return section


def check_hparams(cls: type, overrides: Any, where: str = "hparams", strict: bool = True) -> None:
    """Hyperparameters given over the API (JSON), typed as each field's default before
    ``make_hparams`` reads them: a bool is not a number (``{"lr": true}`` is no learning rate of
    1.0), a float is not an integer (``[1.9]`` is no layer 1), text is not a number (``"1"``:
    JSON has numbers), a list is not a bool; seeds are bounded (0..SEED_MAX). ``strict=False``
    (configs and the CLI's ``--set``, where text is the form): only the seed bounds."""
    if overrides is None:
        return
    if not isinstance(overrides, dict):
        raise UserError(f"{where}: must be a JSON object of name: value, got {_type_name(overrides)}")
    section = _hparam_section(cls)
    known = {f.name: f for f in dataclasses.fields(section)}
    if strict:  # an unknown key is make_hparams's to name (with the known ones)
        check_fields(section, {k: v for k, v in overrides.items() if k in known}, where)
        return
    for key, value in overrides.items():
        meta = known[key].metadata if key in known else None
        if meta and meta["max"] is not None and isinstance(value, int) and not isinstance(value, bool) \
                and not meta["min"] <= value <= meta["max"]:
            raise UserError(f"{where}.{key}: {value} is out of range {meta['min']}..{meta['max']}")


def check_method_hparams(method: Any, overrides: Any, where: str = "hparams") -> None:
    """:func:`check_hparams` of the method named ``method`` (API calls: the dashboard's
    ``/run_edit``); an unknown method is left to the fit, which names the known ones."""
    from unlearnviz.methods.base import get_method

    try:
        spec = get_method(str(method).strip())
    except UserError:
        return
    check_hparams(spec.hparams_cls, overrides, where)


def _check_edit(edit: EditSection, path: str) -> None:
    """Method name and hyperparameters, by the methods' own registry and ``make_hparams``; the
    overrides are stored as read by it (typed), so ``to_dict`` writes numbers, not strings."""
    from unlearnviz.methods.base import get_method, make_hparams
    from unlearnviz.methods.imports import IMPORTED

    if edit.method == IMPORTED:  # an unlearned model made elsewhere: re-imported on replay, nothing fitted
        source = edit.source or edit.hparams.get("source")
        extra = sorted(set(edit.hparams) - {"source", "kind"})
        if extra:
            raise UserError(f"{path}.hparams.{extra[0]}: an imported edit has no hyperparameters (give source only)")
        if not isinstance(source, str) or not source.strip():
            raise UserError(f"{path}.source: an imported edit needs source: the unlearned model's folder, .gguf "
                            "file or hub id")
        if edit.data:
            raise UserError(f"{path}.data: an imported edit is not fitted on data (leave data out)")
        if edit.preset is not None:
            raise UserError(f"{path}.preset: an imported edit is not fitted (leave preset out)")
        edit.source, edit.hparams = source.strip(), {}
        return
    if edit.source is not None:
        raise UserError(f"{path}.source: only an imported edit (method: imported) has a source")
    if not edit.method:
        raise UserError(f"{path}.method: missing (rmu, srmu or mrp)")
    try:
        spec = get_method(edit.method)
    except UserError as exc:
        raise UserError(f"{path}.method: {exc}") from None
    check_hparams(spec.hparams_cls, edit.hparams, f"{path}.hparams", strict=False)  # seeds bounded
    typed = {}
    for key, value in edit.hparams.items():
        try:
            typed[key] = getattr(make_hparams(spec.hparams_cls, {key: value}), key)
        except UserError as exc:
            raise UserError(f"{path}.hparams.{key}: {exc}") from None
    edit.hparams = typed
    if edit.preset is not None:
        from unlearnviz.methods.base import preset_named

        edit.preset = edit.preset.strip()
        try:
            preset_named(spec, edit.preset)
        except UserError as exc:
            raise UserError(f"{path}.preset: {exc}") from None


def _fold_data(data: DataSection) -> None:
    """The parts given as their own keys, checked and folded into ``spec`` (see DataSection)."""
    from unlearnviz.data.sources import PARTS, compose_spec

    parts = {p: getattr(data, p) for p in PARTS if getattr(data, p) is not None}
    if not parts:
        return
    try:
        data.spec = compose_spec(data.spec, parts)
    except UserError as exc:
        msg = str(exc)
        raise UserError(f"data.{msg}" if msg.startswith(PARTS) else f"data: {msg.removeprefix('data: ')}") from None
    for p in PARTS:
        setattr(data, p, None)


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
    raw = _shorthand(raw)
    try:
        cfg = _build(Config, _adapter().validate_python(raw))
    except ValidationError as exc:
        raise UserError(min(_problem(raw, e) for e in exc.errors())[1]) from None
    _fold_data(cfg.data)
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
