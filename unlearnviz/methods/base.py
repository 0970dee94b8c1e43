"""The method registry, hyperparameter validation, progress and cancellation.

Adding a method = one new module that defines a hyperparameter dataclass and a ``fit`` function
and decorates it with ``@register``. Every hyperparameter field documents itself through
``field(metadata={"doc": ..., "paper": ..., "min": ..., "max": ..., "choices": ...})``; the CLI,
the UI and the config validator read the same metadata.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

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
    name: str
    hparams_cls: type
    fit: FitFn
    summary: str


REGISTRY: dict[str, MethodSpec] = {}


def register(name: str, hparams_cls: type, summary: str):
    def deco(fn: FitFn) -> FitFn:
        REGISTRY[name] = MethodSpec(name=name, hparams_cls=hparams_cls, fit=fn, summary=summary)
        return fn
    return deco


def get_method(name: str) -> MethodSpec:
    import unlearnviz.methods  # noqa: F401  (registers the built-in methods)

    if name not in REGISTRY:
        raise UserError(f"unknown method {name!r}; available: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def _coerce(name: str, value: Any, default: Any) -> Any:
    kind = type(default)
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if isinstance(default, list):
            if isinstance(value, str):
                value = [v for v in value.replace(" ", "").strip("[]").split(",") if v]
            return [type(default[0])(v) if default else int(v) for v in value]
        if isinstance(default, int) and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise UserError(f"hyperparameter {name!r}: cannot read {value!r} as {kind.__name__}") from None


def make_hparams(cls: type, overrides: dict[str, Any] | None = None):
    """Build and validate a hyperparameter dataclass: unknown key, wrong type, out of range."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    base = cls()
    values = {}
    for key, value in (overrides or {}).items():
        if key not in fields:
            raise UserError(f"unknown hyperparameter {key!r} for {cls.__name__}; "
                            f"known: {', '.join(fields)}")
        values[key] = _coerce(key, value, getattr(base, key))
    hparams = dataclasses.replace(base, **values)
    validate_hparams(hparams)
    return hparams


def validate_hparams(hparams) -> None:
    for f in dataclasses.fields(hparams):
        value, meta = getattr(hparams, f.name), f.metadata
        items = value if isinstance(value, list) else [value]
        for v in items:
            if isinstance(v, float) and not math.isfinite(v):
                raise UserError(f"hyperparameter {f.name!r} must be a finite number, got {v}")
            if meta.get("choices") and v not in meta["choices"]:
                raise UserError(f"hyperparameter {f.name!r} must be one of {', '.join(map(str, meta['choices']))}")
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                if meta.get("min") is not None and v < meta["min"]:
                    raise UserError(f"hyperparameter {f.name!r}={v} is below its minimum {meta['min']}")
                if meta.get("max") is not None and v > meta["max"]:
                    raise UserError(f"hyperparameter {f.name!r}={v} is above its maximum {meta['max']}")


def describe_hparams(cls: type) -> list[dict]:
    """Field name, default, doc, paper value and range: for the CLI help, the UI and the README."""
    base = cls()
    return [{"name": f.name, "default": getattr(base, f.name), **f.metadata}
            for f in dataclasses.fields(cls)]


class Ticker:
    """Reports progress (step, total, losses, elapsed) and checks cancellation between steps."""

    def __init__(self, total: int, progress: ProgressFn | None, should_stop: StopFn | None, phase: str):
        self.total, self.progress, self.should_stop, self.phase = total, progress, should_stop, phase
        self.t0 = time.perf_counter()

    def check(self) -> None:
        if self.should_stop and self.should_stop():
            raise Cancelled(f"{self.phase} cancelled; nothing was applied")

    def tick(self, step: int, **losses: float) -> None:
        for name, v in losses.items():
            if not math.isfinite(v):
                raise UserError(f"{self.phase}: loss term {name} became {v} at step {step}; "
                                "lower the coefficients or the learning rate")
        if self.progress:
            self.progress({"phase": self.phase, "step": step, "total": self.total,
                           "elapsed": time.perf_counter() - self.t0, **losses})
        self.check()
