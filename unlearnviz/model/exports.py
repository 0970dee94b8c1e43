"""Export folders: the manifest an unlearnviz export writes beside its weights, read back.

An export is a plain Hugging Face folder (config, safetensors weights, tokenizer) that any loader
reads as the edited model. ``unlearnviz_export.json`` says which edit stack it holds (methods,
labels, the stack's content hash), which base it came from (name, fingerprint) and the SHA-256
of every file, so a loader can tell an export from any other checkpoint, and a damaged or
altered one from a faithful one, instead of trusting the folder's name.

Also here: removing the ``quantization_config: {quant_method: gguf}`` entry that a GGUF
conversion leaves in ``config.json``. Weights written as plain safetensors are not GGUF; with
that entry transformers attaches its GGUF quantizer to a plain folder (its ``save_pretrained``
then refuses the model) and lm-evaluation-harness refuses to load it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

from unlearnviz.errors import UserError
from unlearnviz.io import atomic_write_text

EXPORT_MANIFEST = "unlearnviz_export.json"
# Written by exports before format 2: MRP site projections that plain loaders silently skip.
LEGACY_PROJECTIONS = "unlearnviz_projections.safetensors"
EXPORT_FORMAT = 2

_MEMO: dict[tuple, dict] = {}
_MEMO_LOCK = threading.Lock()


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    """SHA-256 of a file read in 16 MiB chunks (a 7B checkpoint never sits in memory twice)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_hashes(folder: Path, skip: tuple[str, ...] = (EXPORT_MANIFEST,)) -> dict[str, str]:
    return {f.name: sha256_file(f) for f in sorted(folder.iterdir()) if f.is_file() and f.name not in skip}


def stale_quantization(cfg: dict) -> bool:
    """Whether a config dict (or its text config) carries a GGUF quantization entry."""
    return any(isinstance(c, dict) and isinstance(c.get("quantization_config"), dict)
               and c["quantization_config"].get("quant_method") == "gguf"
               for c in (cfg, cfg.get("text_config")))


def drop_gguf_quantization(folder: Path) -> bool:
    """Rewrite ``folder/config.json`` (atomically) without a GGUF ``quantization_config``.

    The weights and so the fingerprint are untouched. Returns whether the file changed.
    """
    path = Path(folder) / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False  # the loader names what is wrong with the folder
    if not isinstance(cfg, dict) or not stale_quantization(cfg):
        return False
    for c in (cfg, cfg.get("text_config")):
        if isinstance(c, dict) and (c.get("quantization_config") or {}).get("quant_method") == "gguf":
            del c["quantization_config"]
    atomic_write_text(path, json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return True


def read_export(folder: Path) -> dict:
    """The export's manifest after checking every file it lists; a UserError (one line) if the
    folder is not an export, is damaged, or holds a side file that plain loaders skip."""
    folder = Path(folder)
    path = folder / EXPORT_MANIFEST
    if not path.exists():
        raise UserError(f"{folder} is not an unlearnviz export (no {EXPORT_MANIFEST})")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path}: not valid JSON (damaged export)") from None
    if not isinstance(info, dict) or not isinstance(info.get("files"), dict) or not info["files"]:
        raise UserError(f"{path}: lists no files (damaged export)")
    for name, digest in info["files"].items():
        f = folder / name
        if not f.is_file() or sha256_file(f) != digest:
            raise UserError(f"{f}: missing or checksum mismatch (truncated or tampered export)")
    if (folder / LEGACY_PROJECTIONS).exists():
        raise UserError(f"{folder}: an older export whose MRP site projections sit in {LEGACY_PROJECTIONS}, "
                        "which loaders ignore (a plain load is the original model); refit with "
                        "--set placement=stream and export again")
    return info


def export_label(info: dict) -> str:
    """The edit stack an export holds, in a few words: ``rmu → mrp (stream)``."""
    edits = [e for e in info.get("edits") or [] if isinstance(e, dict)]
    return " → ".join(str(e.get("label") or e.get("method")) for e in edits) or "unknown edit"


def summary(info: dict, problem: str | None = None) -> dict:
    """The few fields of a manifest that say which edit an export is, and whether it checked out."""
    edits = [e for e in info.get("edits") or [] if isinstance(e, dict)]
    return {"edit": export_label(info), "methods": [e.get("method") for e in edits],
            "edit_hash": info.get("edit_hash"), "base_model": info.get("base_model"),
            "base_fingerprint": info.get("base_fingerprint"), "verified": problem is None, "problem": problem}


def describe_export(source: str | Path) -> dict | None:
    """What ``LoadedModel.info()`` says about a folder that is an export (None for any other
    source): the edit, base model and fingerprint, and ``verified`` with the one-line ``problem``
    where files do not match the manifest. Checked once per process per folder state (names,
    sizes and modification times), since hashing a 7B checkpoint takes tens of seconds."""
    folder = Path(source).expanduser()
    try:
        if not (folder / EXPORT_MANIFEST).is_file():
            return None
        key = (str(folder.resolve()),) + tuple(
            (f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(folder.iterdir()) if f.is_file())
    except OSError:
        return None
    with _MEMO_LOCK:
        if key in _MEMO:
            return dict(_MEMO[key])
    try:
        out = summary(read_export(folder))
    except UserError as exc:
        try:
            raw = json.loads((folder / EXPORT_MANIFEST).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            raw = {}
        out = summary(raw if isinstance(raw, dict) else {}, problem=str(exc))
    with _MEMO_LOCK:
        _MEMO[key] = out
    return dict(out)
