"""What every tab shares: the per-browser Session, error translation, defaults."""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from dataclasses import dataclass, field

import gradio as gr

from unlearnviz.errors import UserError
from unlearnviz.methods.base import Cancelled
from unlearnviz.session import Limits, Session

log = logging.getLogger("unlearnviz.ui")


@dataclass
class AppConfig:
    """Operator settings fixed at launch (never changed from the browser)."""

    default_model: str = "default"
    default_data: str = "builtin:demo"
    demo_method: str = "srmu"
    demo_overrides: dict = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)


class UISession(Session):
    """A Session plus a cancel flag the Cancel buttons set."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cancel_flag = threading.Event()

    def should_stop(self) -> bool:
        return self.cancel_flag.is_set()

    def __deepcopy__(self, memo):
        """Gradio deep-copies a state's initial value: share the (read-only) model, copy the rest."""
        import copy

        clone = UISession()
        for name, value in vars(self).items():
            if name not in ("cancel_flag", "lm"):
                setattr(clone, name, copy.deepcopy(value, memo))
        clone.lm = self.lm
        return clone


def readable(fn):
    """Turn UserError into a readable message in the page; keep the app alive on bugs too."""

    def translate(exc: BaseException):
        if isinstance(exc, UserError):
            return gr.Error(str(exc), print_exception=False)
        if isinstance(exc, (Cancelled, InterruptedError)):
            return gr.Error(f"Cancelled: {exc}", print_exception=False)
        log.exception("internal error")
        return gr.Error(f"Internal error ({type(exc).__name__}: {str(exc)[:200]}); the app is still running.")

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except BaseException as exc:  # noqa: BLE001
                raise translate(exc) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except BaseException as exc:  # noqa: BLE001
            raise translate(exc) from None
    return wrapper


def ensure_ready(session: UISession, config: AppConfig, need_data: bool = True) -> UISession:
    """Load the operator's default model (and data) on first use, so every tab works at once."""
    session.limits = config.limits
    if session.lm is None:
        session.load_model(config.default_model)
    if need_data and session.data is None:
        session.load_data(config.default_data)
    return session


def md_table(rows: list[tuple[str, str]]) -> str:
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
