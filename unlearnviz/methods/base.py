"""The method registry, hyperparameter validation, progress and cancellation.

Adding a method = one new module that defines a hyperparameter dataclass and a ``fit`` function
and decorates it with ``@register``. Every hyperparameter field documents itself through
``field(metadata={"doc": ..., "paper": ..., "min": ..., "max": ..., "choices": ...})``; the CLI,
the UI and the report read the same metadata, and ``make_hparams`` validates every override (CLI
text, UI JSON, config files, sweep grids) by the pydantic schema generated from it.
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
class MethodSpec:
    """A registered method. ``summary`` is its full name (CLI and UI lists); ``plain_name`` and
    ``description`` are what the report tells a reader who has never heard of it."""

    name: str
    hparams_cls: type
    fit: FitFn
    summary: str
    plain_name: str
    description: str


REGISTRY: dict[str, MethodSpec] = {}


def register(name: str, hparams_cls: type, summary: str, *, plain_name: str, description: str):
    """Decorate a method's ``fit``; the method's module is then the only place that names it."""
    def deco(fn: FitFn) -> FitFn:
        REGISTRY[name] = MethodSpec(name=name, hparams_cls=hparams_cls, fit=fn, summary=summary,
                                    plain_name=plain_name, description=description)
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
