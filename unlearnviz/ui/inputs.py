"""The dashboard's input gate: every API endpoint's arguments, checked before any work.

An API client (``gradio_client``, or raw JSON over HTTP) can send anything: a bool where a
number goes, ``NaN``, ``5.5`` for a token count, a megabyte of text for a model name, a list for
a data spec, too few arguments. Two layers keep all of that from the science below:

- :func:`harden` (once, on the built app) makes Gradio hand each handler what the client sent:
  numbers unrounded and unclamped (Gradio's ``Number(precision=0)`` would turn ``1.5`` into ``2``,
  a slider's bounds check would let ``NaN`` through and fail on ``"5"`` with a message naming the
  handler and its components), text only as text, a missing argument or an unreadable upload as
  one readable line, never Gradio's own internals.
- Each endpoint's arguments are one documented dataclass below (its fields named as the handler's
  parameters, which is what the API shows), checked by :func:`check` through the config schema's
  strict pydantic machinery (``unlearnviz.config.check_fields``): the handler calls it first
  (``readable(args=...)`` does), so a refusal is one ``UserError`` line that names the argument.
  Validators on API-named events would give clients a bare 400 instead.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.exceptions import InvalidPathError

from unlearnviz.config import DTYPES, NAME_MAX_CHARS, check_fields, opt
from unlearnviz.errors import UserError

EXPORT_NAME_CHARS = 100  # an export's own name: its longest derived name (NAME-checkpoint.tmp) stays under 128
DEVICES = ("auto", "cpu", "cuda", "mps")
MAX_COUNT = 1_000_000  # any count (steps, trials, items) an API call may name; the operator's limits are lower


# ---- the endpoints' arguments (field names = the handlers' parameter names) --------------------
@dataclass
class LoadModel:
    source: str = opt("default", "name", "model: 'default', synthetic[:E], a folder under --model-dir or a hub id")
    dtype: str = opt("auto", "str", "dtype", choices=DTYPES)
    device: str = opt("auto", "str", "device", choices=DEVICES)


@dataclass
class ModelSource:
    source: str = opt("", "name", "an unlearned checkpoint or LoRA adapter: a folder, a .gguf file or a hub id")


@dataclass
class LoadData:
    name: str | None = opt(None, "name", "built-in set", optional=True)
    hf_id: str | None = opt(None, "name", "Hugging Face dataset", optional=True)
    file: str | None = opt(None, "name", "uploaded file", optional=True)


@dataclass
class LoadParts:
    fc: str | None = opt(None, "name", "forget_corpus", optional=True)
    rc: str | None = opt(None, "name", "retain_corpus", optional=True)
    fm: str | None = opt(None, "name", "forget_mcq", optional=True)
    rm: str | None = opt(None, "name", "retain_mcq", optional=True)
    base_spec: str | None = opt(None, "name", "base set", optional=True)


@dataclass
class RunEdit:
    m: str = opt("", "str", "method", max=64)
    hparams: Any = opt(None, "json", "hyperparameters, a JSON object of name and value", optional=True)


@dataclass
class EditNumber:
    value: int | None = opt(None, "int", "edit number, from 1 (empty for none)", optional=True)


@dataclass
class Calibrate:
    m: str = opt("", "str", "method", max=64)
    trials: int = opt(12, "int", "trials", min=1, max=MAX_COUNT)
    steps: int = opt(50, "int", "steps per trial", min=1, max=MAX_COUNT)


@dataclass
class ChosenSetting:
    result: Any = opt(None, "hparams", "a calibration's result (a JSON object)", optional=True)


@dataclass
class Chat:
    text: str = opt("", "str", "prompt", max=NAME_MAX_CHARS * 1024)  # the operator's limit is far lower
    n: int = opt(48, "int", "max new tokens", min=1, max=MAX_COUNT)
    temp: float = opt(0.0, "float", "temperature", min=0.0, max=5.0)


@dataclass
class Evaluate:
    with_letter: bool = opt(False, "bool", "also lettered A-D scoring")


@dataclass
class Relearn:
    n_steps: int = opt(30, "int", "fine-tuning steps")
    rate: float = opt(1e-4, "float", "learning rate")


@dataclass
class Sweep:
    methods: list | None = opt(None, "strs", "methods", max=16, optional=True)
    grid_text: str | None = opt(None, "str", "grid", max=20_000, optional=True)


@dataclass
class Attacks:
    names: list | None = opt(None, "strs", "attacks", max=64, optional=True)
    n_steps: int = opt(20, "int", "relearning steps", min=1, max=MAX_COUNT)
    n_items: int = opt(32, "int", "questions scored per side", min=1, max=MAX_COUNT)


@dataclass
class ExportName:
    label: str = opt("my-edit", "name", "export name", max=EXPORT_NAME_CHARS)


@dataclass
class Upload:
    path: str | None = opt(None, "name", "uploaded bundle", optional=True)


def check(cls: type, **values: Any) -> dict:
    """``values`` checked against the endpoint's argument dataclass ``cls`` (strictly: see the
    module's docstring); the first problem is one UserError naming the argument and what it is
    (``n (max new tokens): expected an integer, got 5.5``). Returns the validated values."""
    docs = {f.name: f.metadata["doc"].split(":")[0] for f in dataclasses.fields(cls)}
    try:
        return check_fields(cls, values)
    except UserError as exc:
        message = str(exc)
        key = message.split(":", 1)[0]
        if key in docs and docs[key] != key:
            message = f"{key} ({docs[key]}){message[len(key):]}"
        raise UserError(message) from None


def check_call(cls: type, fn, args: tuple, kwargs: dict) -> None:
    """:func:`check` on a handler's call: the arguments bound to its parameters by name."""
    import inspect

    bound = inspect.signature(fn).bind_partial(*args, **kwargs).arguments
    names = {f.name for f in dataclasses.fields(cls)}
    check(cls, **{k: v for k, v in bound.items() if k in names})


# ---- what goes back: no server folders ------------------------------------------------------
_OPERATOR_FOLDERS: list[str] = []  # the served app's --model-dir and --data-dir folders (hide_folders)


def hide_folders(folders) -> None:
    """Name what lies in these folders (the operator's ``--model-dir`` and ``--data-dir``) relative
    to them in every answer: a visitor who imports ``ga`` from the model folder reads ``ga`` back,
    not the folder the server resolved it in (the soak test found the full path in the import's
    answer)."""
    _OPERATOR_FOLDERS[:] = sorted({str(f) for f in folders})


def _roots() -> list[tuple[str, str]]:
    """(folder, what a visitor reads instead), longest first: the upload folder's per-file folders
    (a name alone), the export folder, the model cache and the operator's model and data folders
    (names relative to them), the working folder, the home folder."""
    import os
    import re
    import tempfile

    from gradio.utils import get_upload_folder

    cache = os.environ.get("UNLEARNVIZ_CACHE") or str(Path.home() / ".cache" / "unlearnviz")
    exports = os.environ.get("UNLEARNVIZ_EXPORTS") or str(Path(cache) / "exports")
    pairs = [(str(Path(get_upload_folder()).resolve()), "upload"), (exports, ""), (cache, ""),
             (str(Path.cwd()), ""), (str(Path.home()), "~"), (str(Path(tempfile.gettempdir()) / "gradio"), "upload"),
             *((f, "") for f in _OPERATOR_FOLDERS)]
    out = []
    for folder, instead in pairs:
        for form in {folder, str(Path(folder).resolve())}:
            if len(form) > 1:
                out.append((re.escape(form.rstrip("/")), instead))
    return sorted(out, key=lambda p: -len(p[0]))


def public(value: Any) -> Any:
    """``value`` (a message, or a JSON answer: dicts and lists walked) with the server's folders
    taken out: an uploaded file by its name, an export or a cached model by its name relative to
    its folder, anything under the working or home folder relative to it. A visitor learns what
    they sent and what was made, not where the server keeps it."""
    import re

    if isinstance(value, dict):
        return {k: public(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(public(v) for v in value)
    if not isinstance(value, str) or "/" not in value:
        return value
    for folder, instead in _roots():
        if instead == "upload":  # <upload>/<per-file folder>/name -> name
            value = re.sub(folder + r"/[^/\s'\"`]+/", "", value)
            value = re.sub(folder + r"\b", "the upload folder", value)
        else:
            value = re.sub(folder + "/", (instead + "/") if instead else "", value)
            value = re.sub(folder + r"\b", instead or ".", value)
    return value


# ---- what Gradio does before a handler runs -------------------------------------------------
def _label(block) -> str:
    return str(getattr(block, "label", None) or block.get_block_name())


def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else f"{text[:n]}… ({len(text):,} characters)"


def _raw_number(payload):
    """A number as sent (no rounding, no clamping): the handler's check names what is wrong."""
    return payload


def _choice(block, payload) -> None:
    """Dropdowns, radios and checkbox groups: a value off the list is one line (Gradio's own echoes
    a value of any size and, for a non-list, fails with the handler's and components' names)."""
    many = isinstance(block, gr.CheckboxGroup) or getattr(block, "multiselect", False)
    if many and not isinstance(payload, list):
        raise gr.Error(f"{_label(block)}: expected a list of choices, got {type(payload).__name__} {_short(payload)}",
                       print_exception=False)
    if getattr(block, "allow_custom_value", False):
        return  # any text: the handler's check reads it
    values = [v for _, v in getattr(block, "choices", None) or []]
    for v in payload if many else [payload]:
        if not isinstance(v, (str, int, float)) or isinstance(v, bool) or v not in values:
            shown = ", ".join(map(str, values[:12])) + (" …" if len(values) > 12 else "")
            raise gr.Error(f"{_label(block)}: {_short(v)} is not one of {shown}", print_exception=False)


def _file(block, payload) -> None:
    """An upload argument must be what the upload route returned (a FileData object); anything else
    is refused here, before Gradio's own model check answers with its class names."""
    items = payload if isinstance(payload, list) and getattr(block, "file_count", "single") != "single" else [payload]
    for item in items:
        ok = (isinstance(item, dict) and isinstance(item.get("path"), str) and len(item["path"]) <= 4096
              and isinstance(item.get("meta"), dict) and item["meta"].get("_type") == "gradio.FileData")
        if not ok:
            raise gr.Error(f"{_label(block)}: expected an uploaded file (upload it first, then pass what the upload "
                           f"returned), got {type(item).__name__} {_short(item)}", print_exception=False)


def _precheck(block, payload) -> None:
    """The shape of one argument, before Gradio reads it: text as text, a choice from its list, an
    upload as an upload. (Numbers go to the handler as sent: its check names the argument.)"""
    if payload is None:
        return
    if isinstance(block, gr.File):
        _file(block, payload)
    elif isinstance(block, gr.Textbox) and not isinstance(payload, str):
        raise gr.Error(f"{_label(block)}: expected a string, got {type(payload).__name__} {_short(payload)}",
                       print_exception=False)
    elif isinstance(block, (gr.Dropdown, gr.Radio, gr.CheckboxGroup)):
        _choice(block, payload)


def harden(demo: gr.Blocks) -> gr.Blocks:
    """Make every event of ``demo`` hand its handler the arguments as sent, or refuse them in one
    readable line: see the module's docstring. Called once on the built app."""
    for block in demo.blocks.values():
        if isinstance(block, (gr.Number, gr.Slider)):
            block.preprocess = _raw_number  # type: ignore[method-assign]
    original = demo.preprocess_data

    async def preprocess_data(block_fn, inputs, state, explicit_call: bool = False):
        wanted = block_fn.inputs
        if not isinstance(inputs, list) or len(inputs) < len(wanted):
            names = ", ".join(_label(b) for b in wanted if not getattr(b, "stateful", False)) or "none"
            got = len(inputs) if isinstance(inputs, list) else 0
            raise gr.Error(f"this call needs {len(wanted)} argument(s) ({names}; a session state counts as one, "
                           f"sent as null), got {got}", print_exception=False)
        for block, payload in zip(wanted, inputs):
            # the session's copy where an update changed it (a dropdown's choices), as Gradio reads it
            _precheck(state[block._id] if state is not None and block._id in state else block, payload)
        sent = list(inputs)
        try:
            processed = await original(block_fn, inputs, state, explicit_call)
        except InvalidPathError:  # a forged upload object naming a file of the server's
            raise gr.Error("an upload argument names a file that was not uploaded to this server: upload the file "
                           "first, then pass what the upload returned", print_exception=False) from None
        except gr.Error as exc:
            text = str(exc.message)
            raise gr.Error(text if len(text) <= 400 else text[:400] + " …", print_exception=False) from None
        except Exception:  # noqa: BLE001 - Gradio's own errors name handlers, components and classes
            import logging

            logging.getLogger("unlearnviz.ui").exception("an argument could not be read")
            raise gr.Error("an argument of this call could not be read (wrong type or shape for its field)",
                           print_exception=False) from None
        # a number as sent, also where a session holds its own copy of the component (a prop update)
        for i, block in enumerate(wanted):
            if isinstance(block, (gr.Number, gr.Slider)) and i not in block_fn.component_prop_inputs:
                processed[i] = sent[i]
        return processed

    demo.preprocess_data = preprocess_data  # type: ignore[method-assign]
    return demo
