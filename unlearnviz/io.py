"""Durable files: atomic writes and names that cannot escape their folder; and a library's log
notices kept off the user's terminal while it runs."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from unlearnviz.errors import UserError

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # whole name: fullmatch ($ passes "x\n")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def safe_child(folder: Path, name: str) -> Path:
    """``folder/name`` for a plain file name only: no separators, no '..', no absolute paths."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or ".." in name:
        raise UserError(f"invalid file name {name!r}: use letters, digits, '.', '_' and '-' only")
    path = (folder / name).resolve()
    if path.parent != folder.resolve():
        raise UserError(f"file name {name!r} escapes its folder")
    return path


@contextlib.contextmanager
def quiet_logger(name: str, level: int = logging.ERROR) -> Iterator[None]:
    """Logger ``name`` (and its children) raised to ``level`` for the body, then put back: the
    notices libraries log per call (lm-eval's seeds, bitsandbytes' casts) are not the user's to
    act on; their errors still show."""
    log = logging.getLogger(name)
    previous = log.level
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(previous)
