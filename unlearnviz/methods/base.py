"""The method registry, hyperparameter validation, progress and cancellation.

Adding a method = one new module that defines a hyperparameter dataclass and a ``fit`` function
and decorates it with ``@register``. Every hyperparameter field documents itself through
``field(metadata={"doc": ..., "paper": ..., "min": ..., "max": ..., "choices": ...})``; the CLI,
the UI and the report read the same metadata, and ``make_hparams`` validates every override (CLI
text, UI JSON, config files, sweep grids) by the pydantic schema generated from it.

A method may also offer *presets*: named sets of overrides with where they come from (a paper's
section or table, or a calibration run), each optionally tied to the models it was set for. Every
default here was tuned on one small model and does not transfer (Li et al., arXiv 2403.03218, tuned
c and α to Zephyr-7B's activation norms), so a preset is chosen by name, or automatically when the
loaded model matches its rule and the user gave no settings of their own (``choose_preset``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol

from pydantic import BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from unlearnviz.errors import UserError

ProgressFn = Callable[[dict], None]
StopFn = Callable[[], bool]


class Cancelled(InterruptedError):
    """The user cancelled a long loop; nothing was applied."""


def hp(default: Any, doc: str, paper: str = "", min: float | None = None, max: float | None = None,
       choices: tuple | None = None):
    """A documented hyperparameter field (meaning, paper value, our default, valid range)."""
    meta = {"doc": doc, "paper": paper, "min": min, "max": max, "choices": choices}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class FitFn(Protocol):
    def __call__(self, lm, data, hparams, progress: ProgressFn | None = None,
                 should_stop: StopFn | None = None, prior=None): ...


@dataclass(frozen=True)
class ModelMatch:
    """The models a preset was set for: a family (``config.model_type``) and size (layers, hidden
    size), or one set of weights (its ``LoadedModel.fingerprint``). Shapes are read from the
    config, so a model on the meta device (the planner's named 7B configs) matches too; a shape
    rule cannot tell fine-tunes of one base apart (Zephyr-7B-β from Mistral-7B-Instruct)."""

    model_type: str | None = None
    n_layers: int | None = None
    hidden_size: int | None = None
    fingerprint: str | None = None

    def matches(self, config: Any, fingerprint: Callable[[], str] | None = None) -> bool:
        """Whether a model of ``config`` (and, for a fingerprint rule, weights ``fingerprint()``) fits."""
        if self.fingerprint is not None:
            return fingerprint is not None and fingerprint() == self.fingerprint
        have = {"model_type": getattr(config, "model_type", None),
                "n_layers": getattr(config, "num_hidden_layers", getattr(config, "n_layer", None)),
                "hidden_size": getattr(config, "hidden_size", getattr(config, "n_embd", None))}
        want = {k: getattr(self, k) for k in have if getattr(self, k) is not None}
        return bool(want) and all(have[k] == v for k, v in want.items())

    def describe(self) -> str:
        if self.fingerprint is not None:
            return f"weights with fingerprint {self.fingerprint}"
        parts = [self.model_type or "any family"]
        if self.n_layers is not None:
            parts.append(f"{self.n_layers} layers")
        if self.hidden_size is not None:
            parts.append(f"hidden size {self.hidden_size}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Preset:
    """Named hyperparameter overrides and where each value comes from.

    ``source`` names the paper and its section/table or the code release, or, for a calibrated
    preset, the calibration run (``calibrated_source``): a preset with no measured source must not
    exist. ``model``: the models it is applied to automatically (None: by name only). ``note``:
    what it leaves at this project's defaults and why (a value the paper does not give)."""

    name: str
    hparams: Mapping[str, Any]
    source: str
    model: ModelMatch | None = None
    note: str = ""

    def record(self, how: str, overridden: Sequence[str] = ()) -> dict:
        """What an edit's meta keeps about the preset it was fitted with."""
        return {"name": self.name, "source": self.source, "how": how, "hparams": dict(self.hparams),
                "overridden": sorted(overridden), **({"note": self.note} if self.note else {})}


def calibrated_source(model: str, data: str, date: str, run: str = "") -> str:
    """The ``source`` of a preset that ``unlearnviz calibrate`` measured (model, data, date, run folder)."""
    return f"calibrated by unlearnviz calibrate on {model}/{data}, {date}" + (f" ({run})" if run else "")


@dataclass(frozen=True)
class MethodSpec:
    """A registered method. ``summary`` is its full name (CLI and UI lists); ``plain_name`` and
    ``description`` are what the report tells a reader who has never heard of it; ``presets``:
    its named presets, in the order a model is matched against them."""

    name: str
    hparams_cls: type
    fit: FitFn
    summary: str
    plain_name: str
    description: str
    presets: Mapping[str, Preset] = dataclasses.field(default_factory=dict)


REGISTRY: dict[str, MethodSpec] = {}


def register(name: str, hparams_cls: type, summary: str, *, plain_name: str, description: str,
             presets: Sequence[Preset] = ()):
    """Decorate a method's ``fit``; the method's module is then the only place that names it.
    Each preset's overrides are validated now, so a misspelt key fails at import, not at a fit."""
    for p in presets:
        make_hparams(hparams_cls, dict(p.hparams))
        if p.name == NO_PRESET or not p.source.strip():
            raise ValueError(f"preset {p.name!r} of {name}: needs a name other than {NO_PRESET!r} and a source")

    def deco(fn: FitFn) -> FitFn:
        REGISTRY[name] = MethodSpec(name=name, hparams_cls=hparams_cls, fit=fn, summary=summary,
                                    plain_name=plain_name, description=description,
                                    presets={p.name: p for p in presets})
        return fn
    return deco


def get_method(name: str) -> MethodSpec:
    """The registered method. The built-in ones are registered by ``unlearnviz.methods``'s
    ``__init__``, which Python runs before this module whichever way it is imported."""
    if name not in REGISTRY:
        raise UserError(f"unknown method {name!r}; available: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_CHECKS = {"finite_number", "literal_error", "greater_than_equal", "less_than_equal"}  # else: unreadable


def _from_text(kind: type, value: Any) -> Any:
    """``--set k=v``, sweep grids and form fields hand values over as text: read it as the field's
    type ("3" -> 3, "1e-3" -> 0.001, "on" -> True; "1.5" is no int). Typed values (JSON, YAML) go
    on to pydantic's lax checks: 2.0 is an int and 1 a bool there, 1.5 and 2 are not."""
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)  # 1e30 too: the range check, not the reader, refuses it
    if not isinstance(value, str):
        return value
    if kind is bool:
        if value.lower() not in _TRUE + _FALSE:
            raise ValueError(value)
        return value.lower() in _TRUE
    return kind(value)


def _split_list(value: Any) -> Any:
    """"1,2" and "[1, 2]" are the list [1, 2]; each item is then read as the item type."""
    return [v for v in value.replace(" ", "").strip("[]").split(",") if v] if isinstance(value, str) else value


def _field_type(default: Any, meta: Mapping[str, Any]) -> Any:
    """One field's pydantic type: its default's type, with the metadata's range or choices."""
    if isinstance(default, list):
        return Annotated[list[_field_type(default[0] if default else 0, meta)], BeforeValidator(_split_list)]
    if meta.get("choices"):
        return Literal[tuple(meta["choices"])]
    kind = type(default)
    return Annotated[kind, BeforeValidator(functools.partial(_from_text, kind)),
                     Field(ge=meta.get("min"), le=meta.get("max"))]


@functools.cache
def _schema(cls: type) -> TypeAdapter:
    """A hyperparameter dataclass as a pydantic schema generated from its fields' metadata."""
    base = cls()
    td = TypedDict(cls.__name__, {f.name: _field_type(getattr(base, f.name), f.metadata)
                                  for f in dataclasses.fields(cls)}, total=False)
    td.__pydantic_config__ = ConfigDict(extra="forbid", allow_inf_nan=False)
    return TypeAdapter(td)


def _message(cls: type, overrides: dict[str, Any], exc: ValidationError) -> str:
    """The first problem in the order a reader fixes them: an unknown or unreadable key (in the
    order given), then a value out of range (in field order); pydantic's words to ours."""
    fields = {f.name: f.metadata for f in dataclasses.fields(cls)}
    base, keys, names = cls(), list(overrides), list(fields)

    def kind(name: str) -> type:
        default = getattr(base, name)
        return type(default[0] if default else 0) if isinstance(default, list) else type(default)

    def checked(e: dict) -> bool:
        return e["type"] in _CHECKS and (e["type"] != "finite_number" or kind(e["loc"][0]) is float)

    e = min(exc.errors(), key=lambda e: (1, names.index(e["loc"][0])) if checked(e) else (0, keys.index(e["loc"][0])))
    name, value = e["loc"][0], e["input"]
    if e["type"] == "extra_forbidden":
        return f"unknown hyperparameter {name!r} for {cls.__name__}; known: {', '.join(names)}"
    if not checked(e):
        default = getattr(base, name)
        given = _split_list(overrides[name]) if isinstance(default, list) else overrides[name]
        return f"hyperparameter {name!r}: cannot read {given!r} as {type(default).__name__}"
    meta = fields[name]
    if e["type"] == "literal_error":
        return f"hyperparameter {name!r} must be one of {', '.join(map(str, meta['choices']))}"
    value = kind(name)(_from_text(kind(name), value))
    if e["type"] == "finite_number":
        return f"hyperparameter {name!r} must be a finite number, got {value}"
    if e["type"] == "greater_than_equal":
        return f"hyperparameter {name!r}={value} is below its minimum {meta['min']}"
    return f"hyperparameter {name!r}={value} is above its maximum {meta['max']}"


def make_hparams(cls: type, overrides: dict[str, Any] | None = None):
    """Build and validate a hyperparameter dataclass (unknown key, unreadable value, out of range)
    by the pydantic schema of its metadata: the one path of the CLI, the UI, sweeps and configs."""
    overrides = dict(overrides or {})
    try:
        return cls(**_schema(cls).validate_python(overrides))
    except ValidationError as exc:
        raise UserError(_message(cls, overrides, exc)) from None


NO_PRESET = "none"  # `--preset none`: the method's defaults, even where a preset matches the model
NOT_SETTINGS = frozenset({"seed"})  # overrides that do not count as the user's own settings


@dataclass
class PresetChoice:
    """The overrides a fit uses (the preset's, then the user's over them), the record of the preset
    applied (None: none), and the line that says so (or why a matching preset was not applied)."""

    overrides: dict[str, Any]
    record: dict | None
    message: str


def preset_named(spec: MethodSpec, name: str) -> Preset | None:
    """The method's preset called ``name`` (None for ``none``); an unknown name is one line."""
    if name == NO_PRESET:
        return None
    if name not in spec.presets:
        raise UserError(f"unknown preset {name!r} for {spec.name}; available: {', '.join([*spec.presets, NO_PRESET])}")
    return spec.presets[name]


def choose_preset(spec: MethodSpec, config: Any, overrides: Mapping[str, Any] | None = None,
                  name: str | None = None, fingerprint: Callable[[], str] | None = None) -> PresetChoice:
    """The preset a fit uses. By ``name``: that one, with the user's ``overrides`` winning over
    its values (``none``: no preset). Without a name: the first preset whose model rule matches
    ``config`` (``fingerprint()`` for a fingerprint rule), only when the user gave no settings
    (overrides other than the seed): a preset mixed with settings chosen for the defaults would
    be neither. Unknown name: one line with the method's presets."""
    overrides = dict(overrides or {})
    name = (name or "").strip() or None
    if name == NO_PRESET:
        return PresetChoice(overrides, None, "")
    if name is not None:
        preset, how = preset_named(spec, name), "by name"
    else:
        preset = next((p for p in spec.presets.values() if p.model and p.model.matches(config, fingerprint)), None)
        if preset is None:
            return PresetChoice(overrides, None, "")
        if set(overrides) - NOT_SETTINGS:
            return PresetChoice(overrides, None, (
                f"preset {preset.name!r} ({preset.source}) matches this model but was not applied: settings were "
                f"given; add --preset {preset.name} to fit it with them"))
        how = f"automatically: the model matches {preset.model.describe()}"
    overridden = [k for k, v in overrides.items() if k in preset.hparams and v != preset.hparams[k]]
    merged = {**preset.hparams, **overrides}
    line = f"{spec.name} preset {preset.name!r} applied {how} ({preset.source})"
    if overridden:
        line += f"; your settings win for {', '.join(sorted(overridden))}"
    return PresetChoice(merged, preset.record(how, overridden), line)


def describe_presets(spec: MethodSpec) -> list[dict]:
    """Name, overrides, source, model rule and note of each preset: for the CLI help and the docs."""
    return [{"name": p.name, "hparams": dict(p.hparams), "source": p.source,
             "model": p.model.describe() if p.model else "by name only", "note": p.note}
            for p in spec.presets.values()]


def describe_hparams(cls: type) -> list[dict]:
    """Field name, default, doc, paper value and range: for the CLI help, the UI and the README."""
    base = cls()
    return [{"name": f.name, "default": getattr(base, f.name), **f.metadata}
            for f in dataclasses.fields(cls)]


class Ticker:
    """Reports progress (step, total, losses, elapsed) and checks cancellation between steps.

    ``warnings`` (the fit's, e.g. a truncation that drops most tokens) ride on the first step's
    event as ``"warning"``: every consumer of training events reads step, total and losses, so a
    warning comes as part of one, not as an event of its own."""

    def __init__(self, total: int, progress: ProgressFn | None, should_stop: StopFn | None, phase: str,
                 warnings: Sequence[str] = ()):
        self.total, self.progress, self.should_stop, self.phase = total, progress, should_stop, phase
        self.t0 = time.perf_counter()
        self.warnings = list(warnings)

    def check(self) -> None:
        if self.should_stop and self.should_stop():
            raise Cancelled(f"{self.phase} cancelled; nothing was applied")

    def tick(self, step: int, **losses: float) -> None:
        for name, v in losses.items():
            if not math.isfinite(v):
                raise UserError(f"{self.phase}: loss term {name} became {v} at step {step}; "
                                "lower the coefficients or the learning rate")
        if self.progress:
            event = {"phase": self.phase, "step": step, "total": self.total,
                     "elapsed": time.perf_counter() - self.t0, **losses}
            if self.warnings:
                event["warning"] = " ".join(self.warnings)
                self.warnings = []
            self.progress(event)
        self.check()


# The doc of every method's max_tokens field (the rule is resolve_max_tokens's).
MAX_TOKENS_DOC = ("Truncate training texts to this many tokens; -1 = auto: the smallest power of two from 32 "
                  "to 512 that keeps 95% of the forget texts' tokens (measured on up to 512 of them), within "
                  "the model's context: 32 for short facts (every built-in set), 512 for documents (the WMDP "
                  "corpora's chunks). The edit records the number used; a run that cuts off most forget "
                  "tokens warns.")


def resolve_window(lm, data, hparams) -> dict:
    """Resolve ``hparams.max_tokens`` in place (-1 = auto: the rule of
    :func:`unlearnviz.data.batching.resolve_max_tokens`), so the edit's hyperparameters record the
    number a rerun needs; returns the edit's meta about it: the number, whether it was chosen
    automatically, the share of the forget tokens truncation cuts off, and a warning when that is
    most of them."""
    from unlearnviz.data.batching import AUTO, resolve_max_tokens

    auto = hparams.max_tokens == AUTO
    hparams.max_tokens, share, warning = resolve_max_tokens(lm, data.forget_texts, hparams.max_tokens)
    return {"max_tokens": hparams.max_tokens, "max_tokens_auto": auto, "truncated_share": share,
            "warnings": [warning] if warning else []}
