"""What every tab shares: the per-browser Session, error translation, defaults."""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from unlearnviz.config import Config
from unlearnviz.errors import UserError
from unlearnviz.registry import RegistrySettings
from unlearnviz.session import Limits, Session, check_lab_model
from unlearnviz.ui.inputs import check_call, public

log = logging.getLogger("unlearnviz.ui")


@dataclass
class AppConfig:
    """Operator settings fixed at launch (never changed from the browser)."""

    default_model: str = "default"
    default_data: str = "builtin:demo"
    demo_method: str = "srmu"
    demo_overrides: dict = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    model_dirs: tuple[Path, ...] = ()  # folders whose models a visitor may load by path
    data_dirs: tuple[Path, ...] = ()  # folders whose data files a visitor may load by path
    run_config: Config | None = None  # `app.py --config`: the config every new session starts from
    template: UISession | None = None  # that config, replayed once at launch; each session gets a copy
    sessions: RegistrySettings = field(default_factory=RegistrySettings)  # --state-dir: where sessions are kept

    def new_session(self) -> UISession:
        """A browser session's initial state: a copy of the replayed config (the model shared,
        read-only; edits, metrics and chats copied), or an empty session."""
        import copy

        if self.template is None:
            return UISession()
        clone = copy.deepcopy(self.template)
        clone.limits = self.limits
        return clone


_NAMED_MODELS = ("default", "smollm2-135m-instruct", "synthetic")


def _inside(path: Path, roots: tuple[Path, ...]) -> bool:
    p = path.expanduser().resolve()
    return any(p == r.resolve() or r.resolve() in p.parents for r in roots)


def _exists(path: Path) -> bool:
    """Whether ``path`` exists; a name the file system cannot even look up (too long, a NUL) does not."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _local_candidate(text: str, roots: tuple[Path, ...]) -> Path | None:
    """The local path a browser-typed name means, if it names one (absolute, ./, ~, or under a root)."""
    if text.startswith(("/", ".", "~", "\\")) or text.endswith(".gguf") or ".." in text.split("/"):
        return Path(text).expanduser()
    for root in roots:
        if _exists(root / text):
            return root / text
    if _exists(Path(text)):  # a path relative to the server's working folder
        return Path(text)
    return None


def _allowed(dirs: tuple[Path, ...], flag: str) -> str:
    """The operator's folders as a visitor may read of them: how many, not where on the disk."""
    return f"{len(dirs)} folder(s) the operator gave with {flag}" if dirs else f"none (the operator passed no {flag})"


def confine_model_source(source: str, config: AppConfig) -> str:
    """What a visitor may load: the operator's model, a named model, a hub id, or a folder/GGUF
    inside one of the operator's ``--model-dir`` folders. Nothing else on the server's disk."""
    text = (source or "").strip() or "default"
    if text == config.default_model or text in _NAMED_MODELS:
        return text
    if text.startswith("synthetic:"):
        check_lab_model(text)  # the documented lab models only: another one trains on request
        return text
    local = _local_candidate(text, config.model_dirs)
    if local is None:
        return text  # a hub id: needs a network, and the hub's own safety rules
    if not config.model_dirs or not _inside(local, config.model_dirs):
        raise UserError(f"model path {text!r} is outside the folders this server allows; allowed: "
                        f"{_allowed(config.model_dirs, '--model-dir')}")
    return str(local.resolve())


def confine_data_spec(spec: str, config: AppConfig) -> str:
    """Built-in, synthetic and hf: sets, the operator's default, or a file inside ``--data-dir``."""
    text = (spec or "").strip()
    if not text:
        raise UserError("choose a built-in set, a dataset id or a file")
    if text == config.default_data or text.startswith(("builtin:", "hf:", "synthetic:")) or text == "synthetic":
        return text
    local = _local_candidate(text, config.data_dirs) or Path(text)
    if not config.data_dirs or not _inside(local, config.data_dirs):
        raise UserError(f"data path {text!r} is outside the folders this server allows; upload the file "
                        f"instead, or use builtin:NAME; allowed folders: {_allowed(config.data_dirs, '--data-dir')}")
    return str(local.resolve())


def check_upload(path: str, config: AppConfig) -> str:
    """An uploaded file: it must be in Gradio's upload folder and within the size limit."""
    from gradio.utils import get_upload_folder

    p = Path(path)
    if not _inside(p, (Path(get_upload_folder()),)):
        raise UserError("the uploaded file is not in the server's upload folder")
    if not p.is_file():
        raise UserError("the uploaded file is gone; upload it again")
    size_mb = p.stat().st_size / 2**20
    if size_mb > config.limits.max_upload_mb:
        raise UserError(f"the upload is {size_mb:.1f} MB; this server's limit is {config.limits.max_upload_mb} MB")
    return str(p)


class UISession(Session):
    """A Session plus a cancel flag the Cancel buttons set."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cancel_flag = threading.Event()
        self.autosave = None  # set by ui.sessions: called with the session after every event (readable)

    def should_stop(self) -> bool:
        return self.cancel_flag.is_set()

    def __deepcopy__(self, memo):
        """Gradio deep-copies a state's initial value: share the (read-only) model, copy the rest."""
        import copy

        clone = UISession()
        for name, value in vars(self).items():  # a copy is a new session: not bound to this one's id
            if name not in ("cancel_flag", "lm", "autosave", "sid", "owner", "saved_key", "save_lock"):
                setattr(clone, name, copy.deepcopy(value, memo))
        clone.lm = self.lm
        return clone


def from_browser() -> bool:
    """Whether the running event came from the page (not from an API client such as gradio_client,
    which marks its calls ``x-gradio-user: api``; nor from a direct call outside Gradio)."""
    from gradio.context import LocalContext  # the request of the event now running

    request = LocalContext.request.get(None)
    if request is None:
        return False
    try:
        return (request.headers.get("x-gradio-user") or "") not in ("api", "mcp")
    except AttributeError:  # a request without headers
        return False


def _message(exc: BaseException) -> tuple[str, str]:
    """(title, one-line message) for an exception an event raised."""
    if isinstance(exc, gr.Error):
        return "Refused", str(exc.message)
    if isinstance(exc, UserError):
        return "Refused", str(exc)
    if isinstance(exc, InterruptedError):  # a Cancel button (methods' and analyses' Cancelled is one)
        return "Cancelled", f"Cancelled: {exc}"
    log.exception("internal error")  # the details (class, message, traceback) go to the server's log only
    return "Internal error", "Internal error: this action failed; the app is still running (details in the server log)."


def readable(fn=None, *, restore=None, args: type | None = None):
    """Errors as one readable message that never erases what the page shows.

    Gradio marks every output of an event that raised with an "Error" badge, so a refused value
    would blank the loss curve, the status line and the timeline until the next good run. In the
    page, an error is therefore one warning toast, and the event's outputs are left as they were:
    ``gr.skip()`` for all of them, or ``restore(*args)`` (the outputs redrawn from the session,
    which a refused action has not changed) for a stream that already showed work in progress.
    API clients (gradio_client) still get the error, raised as ``gr.Error``, so a script fails
    loudly; so does a direct call outside Gradio. Use as ``@readable`` or
    ``@readable(restore=...)``. ``args``: the endpoint's argument dataclass (``ui.inputs``),
    checked before the handler runs, so a wrong type or range is refused naming the argument.
    Every message leaves out the server's folders (``ui.inputs.public``)."""
    if fn is None:
        return lambda f: readable(f, restore=restore, args=args)
    spec = args

    def handle(exc: BaseException, args, kwargs, streamed: bool):
        title, message = _message(exc)
        message = public(message)
        if not from_browser():
            raise gr.Error(message, print_exception=False) from None
        gr.Warning(message, title=title)
        if restore is not None and streamed:
            return restore(*args, **{k: v for k, v in kwargs.items() if k != "progress"})
        return gr.skip()

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            streamed, inner = False, fn(*args, **kwargs)
            try:
                if spec is not None:
                    check_call(spec, fn, args, kwargs)
                while True:  # each step may run in another worker thread: charge each one to the visitor
                    with charged(args):
                        try:
                            out = next(inner)
                        except StopIteration:
                            break
                    streamed = True
                    yield out
            except (GeneratorExit, KeyboardInterrupt, SystemExit):
                raise  # GeneratorExit: Gradio closed the stream (a cancel); not an error to report
            except BaseException as exc:  # noqa: BLE001
                yield handle(exc, args, kwargs, streamed)
            finally:
                inner.close()
                after_event(args)
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            if spec is not None:
                check_call(spec, fn, args, kwargs)
            with charged(args):
                return fn(*args, **kwargs)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001
            return handle(exc, args, kwargs, False)
        finally:
            after_event(args)
    return wrapper


def charged(args):
    """The caches' entries made by an event charged to the session it was given (the first), under
    that session's ``Limits.max_cache_mb`` (``session.budget.charged_to``); nothing charged without one."""
    from contextlib import nullcontext

    from unlearnviz.session.budget import charged_to

    session = next((a for a in args if isinstance(a, UISession)), None)
    if session is None:
        return nullcontext()
    return charged_to(id(session), lambda: session.limits.max_cache_mb * 2**20)


def after_event(args) -> None:
    """The autosave hook: after every event, each session it was given saves itself if its content
    changed (``ui.sessions`` binds ``autosave``). A failed save is one warning, never the event's error."""
    for arg in args:
        if isinstance(arg, UISession) and getattr(arg, "autosave", None) is not None:
            try:
                arg.autosave(arg)
            except Exception as exc:  # noqa: BLE001 - the work is still in memory
                log.exception("autosave")
                gr.Warning(f"Autosave failed ({public(str(exc))[:200]}); your work is still here, in memory.")


def field_number(**kwargs) -> gr.Number:
    """A ``gr.Number`` whose range (``minimum``/``maximum``) the widget shows and enforces (its
    arrows and the browser's own check), while a typed value outside it reaches the event's
    validator, which names the field and highlights it, instead of failing in Gradio's
    preprocessing, which marks every output of the event as an error. (An instance, not a
    subclass: Gradio writes a stub file beside every module that defines a component class.)"""
    box = gr.Number(**kwargs)

    def preprocess(payload: float | None) -> float | int | None:
        return None if payload is None else box.round_to_precision(payload, box.precision)

    box.preprocess = preprocess  # type: ignore[method-assign]
    return box


def valid(message: str | None = None) -> dict:
    """One input's verdict for a validator: valid, or refused with ``message``."""
    return gr.validate(message is None, message or "")


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
