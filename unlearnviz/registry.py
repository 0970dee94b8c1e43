"""The session registry: every visitor's Session by an id their browser keeps, bounded in memory,
autosaved as session bundles in the operator's state folder so that a restart loses nothing.

A visitor's fitted edits, metrics and chats would otherwise live only in one process's memory:
a reload, a crash or a redeploy would lose them. The registry holds at most
``RegistrySettings.max_live`` sessions in memory (least recently used out first); with a state
folder each one is saved after every change that alters its content, as the bundle the project
already has (``unlearnviz.bundle``, with the undone edits a redo would bring back), and a session
that is not in memory is restored from its bundle when its id comes back.

The state folder::

    DIR/sessions/ID.zip    the session bundle (written to a temporary name, then renamed)
    DIR/sessions/ID.json   what a listing shows without opening the bundle: owner, saved time,
                           model, data, edits, chats (also renamed into place)

An id is 32 random letters and digits (``secrets``): it is the key to the session, so it is never
guessable, and it is checked against ``SESSION_ID`` before it names a file, so it cannot name one
outside ``DIR/sessions``.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import string
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from unlearnviz.errors import UserError

log = logging.getLogger("unlearnviz.registry")
SESSION_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_-]{15,63}\Z")  # never a leading "-" (a CLI flag); \Z, as "$" would pass a trailing newline
ID_ALPHABET = string.ascii_letters + string.digits
SESSIONS_FOLDER = "sessions"


@dataclass
class RegistrySettings:
    """Where sessions are kept and how many (the operator's ``--state-dir``, ``--max-live-sessions``,
    ``--max-saved-sessions``)."""

    state_dir: Path | None = None  # None: sessions live in this process's memory only (a reload keeps them)
    max_live: int = 8  # sessions held in memory; the least recently used beyond that leave it (saved first)
    max_saved: int = 500  # saved sessions kept in the state folder; past it the least recently saved go

    def __post_init__(self) -> None:
        for name in ("max_live", "max_saved"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        if self.state_dir is not None:
            self.state_dir = Path(self.state_dir).expanduser().resolve()


def new_id() -> str:
    """32 random letters and digits (190 bits): the session's key, so never guessable."""
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(32))


def check_id(sid) -> str:
    """``sid`` if it is a session id; a refusal naming no path otherwise."""
    if not isinstance(sid, str) or not SESSION_ID.match(sid):
        shown = sid[:20] + "…" if isinstance(sid, str) and len(sid) > 20 else sid
        raise UserError(f"{shown!r} is not a session id (16 to 64 letters, digits, '-' or '_', starting with a "
                        "letter or digit)")
    return sid


# ---- the state folder (also what the CLI's `sessions` command reads) --------------------------------
def sessions_dir(state_dir: Path) -> Path:
    return Path(state_dir) / SESSIONS_FOLDER


def bundle_path(state_dir: Path, sid: str) -> Path:
    return sessions_dir(state_dir) / f"{check_id(sid)}.zip"


def _sidecar(state_dir: Path, sid: str) -> Path:
    return sessions_dir(state_dir) / f"{check_id(sid)}.json"


def saved_info(state_dir: Path, sid: str) -> dict | None:
    """What ``list_saved`` shows of one saved session; None if there is no such bundle. A missing
    or damaged sidecar (a kill between the two renames) falls back to the bundle's manifest."""
    path = bundle_path(state_dir, sid)
    if not path.is_file():
        return None
    info: dict = {}
    try:
        info = json.loads(_sidecar(state_dir, sid).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or info.get("id") != sid:
        info = {"id": sid, **_manifest_summary(path)}
    stat = path.stat()
    info.update(bytes=stat.st_size, saved=info.get("saved") or _iso(stat.st_mtime))
    return info


def _manifest_summary(path: Path) -> dict:
    """Model, data and edits from a bundle's manifest alone (no checksum work: a listing)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            m = json.loads(zf.read("manifest.json"))
        return {"model": (m.get("model") or {}).get("name"), "data": (m.get("data") or {}).get("name"),
                "edits": [e.get("label") for e in m.get("edits") or []], "owner": None}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, AttributeError):
        return {"model": None, "data": None, "edits": [], "owner": None, "damaged": True}


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def list_saved(state_dir: Path) -> list[dict]:
    """Every saved session in the state folder, most recently saved first."""
    folder = sessions_dir(state_dir)
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob("*.zip"), key=lambda p: p.stat().st_mtime_ns, reverse=True):
        if SESSION_ID.match(path.stem):
            info = saved_info(state_dir, path.stem)
            if info is not None:
                out.append(info)
    return out


def delete_saved(state_dir: Path, sid: str) -> bool:
    """Remove a saved session's bundle and sidecar; False if there was none."""
    path = bundle_path(state_dir, sid)
    found = path.is_file()
    path.unlink(missing_ok=True)
    _sidecar(state_dir, sid).unlink(missing_ok=True)
    return found


def save(session, state_dir: Path, sid: str, owner: str | None = None) -> dict:
    """Write ``session`` as ``DIR/sessions/ID.zip`` (with its undone edits) and its sidecar, each
    atomically; returns the sidecar."""
    from unlearnviz.bundle import export_bundle
    from unlearnviz.io import atomic_write_text

    path = bundle_path(state_dir, sid)
    export_bundle(session, path, include_undone=True)
    info = {"id": sid, "owner": owner, "saved": _iso(time.time()), "model": session.lm.name,
            "data": session.data.name, "edits": [e.label() for e in session.stack.edits],
            "undone": len(session.undone), "chats": len(session.chats)}
    atomic_write_text(_sidecar(state_dir, sid), json.dumps(info, indent=1))
    return info


def content_key(session) -> tuple:
    """What a save would write, by identity and size: it changes when an edit, a result, a chat,
    the selection or the data does, and stays when an event only read the session, so the
    autosave after every event writes only when there is something new."""
    def ids(d: dict) -> tuple:
        return tuple(sorted((k, id(v)) for k, v in d.items()))

    last_chat = repr(session.chats[-1]) if session.chats else None  # a turn can be completed in place
    return (id(session.lm), id(session.data), tuple(id(e) for e in session.stack.edits),
            tuple(id(u["edit"]) for u in session.undone), session.selected, getattr(session, "compare", None),
            id(session.before), ids(session.after), ids(session.relearn), ids(session.attacks),
            len(session.chats), last_chat, session.conversation)


def savable(session) -> bool:
    """A session worth a file: a model and data (a bundle needs both) and something done with them."""
    return session.lm is not None and session.data is not None and bool(
        len(session.stack) or session.undone or session.chats or session.before is not None)


# ---- the registry -----------------------------------------------------------------------------------
class SessionRegistry:
    """Sessions by id: at most ``max_live`` in memory, the rest in the state folder (if any).

    A session is bound to its id with ``add`` (the registry sets ``sid``, ``owner`` and its
    save bookkeeping on it) and admitted to memory once it holds something (``autosave``), so
    page loads that never do anything cost no slot. ``restore(path) -> Session`` reads a saved
    bundle back (the app's: its model through the operator's folder rules); without it saved
    sessions are listed, not restored. A session that left memory while a page still holds it is
    found again through a weak reference, so one id never has two live copies."""

    def __init__(self, settings: RegistrySettings | None = None, restore: Callable[[Path], object] | None = None):
        self.settings = settings or RegistrySettings()
        self.restore = restore
        self._live: OrderedDict[str, object] = OrderedDict()
        self._held: weakref.WeakValueDictionary[str, object] = weakref.WeakValueDictionary()
        self._lock = threading.RLock()
        self._restoring = threading.Lock()
        if self.settings.state_dir is not None:
            sessions_dir(self.settings.state_dir).mkdir(parents=True, exist_ok=True)

    @property
    def state_dir(self) -> Path | None:
        return self.settings.state_dir

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, sid: str) -> bool:
        """Whether ``sid`` is among the sessions held in memory (the ``max_live`` most recently used)."""
        return sid in self._live

    def add(self, session, owner: str | None = None) -> str:
        """Bind ``session`` to a new id (held weakly until it holds something); returns the id."""
        sid = new_id()
        self._bind(session, sid, owner, saved_key=())  # () : not saved yet
        with self._lock:
            self._held[sid] = session
        return sid

    @staticmethod
    def _bind(session, sid: str, owner: str | None, saved_key: tuple) -> None:
        session.sid, session.owner, session.saved_key = sid, owner, saved_key
        session.save_lock = threading.Lock()

    def get(self, sid, owner: str | None = None):
        """The session of ``sid`` (from memory, or restored from its bundle); None if there is no
        such session for this owner. A saved session that cannot be restored (its model or data
        is gone) raises UserError saying why; it stays on disk."""
        sid = check_id(sid)
        session = self._in_memory(sid, owner)
        if session is not None:
            if savable(session):  # a reload is a use: most recently used again
                with self._lock:
                    evicted = self._admit(sid, session)
                self._save_evicted(evicted)
            return session
        if self.state_dir is None or self.restore is None:
            return None
        info = saved_info(self.state_dir, sid)
        if info is None or info.get("owner") not in (None, owner):
            return None
        with self._restoring:
            session = self._in_memory(sid, owner)  # another request may have restored it meanwhile
            if session is None:
                session = self._restore(sid, info)
                with self._lock:
                    self._held[sid] = session
                    evicted = self._admit(sid, session)
                self._save_evicted(evicted)
        return session

    def _in_memory(self, sid: str, owner: str | None):
        with self._lock:
            session = self._live.get(sid) or self._held.get(sid)
            if session is None or getattr(session, "owner", None) not in (None, owner):
                return None
            return session

    def _restore(self, sid: str, info: dict):
        try:
            session = self.restore(bundle_path(self.state_dir, sid))
        except UserError as exc:
            raise UserError(f"the saved session {describe(info)} cannot be restored: {exc}") from None
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # a model folder gone, a hub model offline: said in one line, kept on disk
            log.exception("restoring session %s", sid)
            raise UserError(f"the saved session {describe(info)} cannot be restored: its model or data cannot "
                            f"be loaded here ({type(exc).__name__})") from None
        self._bind(session, sid, info.get("owner"), saved_key=content_key(session))  # what is on disk
        return session

    def _admit(self, sid: str, session) -> list:
        """``session`` as the most recently used in memory (under ``_lock``); returns the least
        recently used past the cap, which leave memory (a page that still holds one keeps it
        through ``_held``), for ``_save_evicted`` to save once the lock is released."""
        self._live[sid] = session
        self._live.move_to_end(sid)
        evicted = []
        while len(self._live) > self.settings.max_live:
            evicted.append(self._live.popitem(last=False)[1])
        return evicted

    def _save_evicted(self, sessions: list) -> None:
        for old in sessions:
            try:
                self.autosave(old, admit=False)
            except Exception:  # noqa: BLE001 - leaving memory must not fail the request that caused it
                log.exception("saving session %s as it left memory", getattr(old, "sid", "?"))

    def autosave(self, session, admit: bool = True) -> bool:
        """After an event: a session that holds something is admitted to memory (most recently
        used), and saved if its content changed since its last save (``content_key``); True if a
        bundle was written. Unbound and empty sessions, and any without a state folder, are not
        written."""
        sid = getattr(session, "sid", None)
        if sid is None or not savable(session):
            return False
        if admit:
            with self._lock:
                evicted = self._admit(sid, session)
            self._save_evicted(evicted)
        if self.state_dir is None:
            return False
        with session.save_lock:
            key = content_key(session)
            if key == session.saved_key:
                return False
            save(session, self.state_dir, sid, session.owner)
            session.saved_key = key
        self._prune(keep=sid)
        return True

    def _prune(self, keep: str) -> None:
        """Past ``max_saved`` bundles, the least recently saved go (never ``keep``)."""
        paths = sorted(sessions_dir(self.state_dir).glob("*.zip"), key=lambda p: p.stat().st_mtime)
        for path in paths[: max(0, len(paths) - self.settings.max_saved)]:
            if path.stem != keep and SESSION_ID.match(path.stem):
                log.warning("the state folder holds over %d sessions: deleting the least recently saved, %s",
                            self.settings.max_saved, path.stem)
                delete_saved(self.state_dir, path.stem)

    def listing(self, ids: list[str] = (), owner: str | None = None) -> list[dict]:
        """The sessions a visitor may reopen: those of ``ids`` (their browser's) and, when logged
        in, every session of ``owner``; saved ones from the state folder, the rest from memory."""
        wanted = [s for s in ids if isinstance(s, str) and SESSION_ID.match(s)]
        out: dict[str, dict] = {}
        if self.state_dir is not None:
            for info in list_saved(self.state_dir):
                mine = info["id"] in wanted and info.get("owner") in (None, owner)
                if mine or (owner is not None and info.get("owner") == owner):
                    out[info["id"]] = info
        with self._lock:
            live = [(sid, s) for sid, s in self._held.items()
                    if sid in wanted and getattr(s, "owner", None) in (None, owner) and savable(s)]
        for sid, s in live:
            out.setdefault(sid, {"id": sid, "owner": s.owner, "saved": None, "model": s.lm.name, "data": s.data.name,
                                 "edits": [e.label() for e in s.stack.edits], "chats": len(s.chats)})
        order = {sid: i for i, sid in enumerate(wanted)}
        return sorted(out.values(), key=lambda i: order.get(i["id"], len(order)))


def describe(info: dict) -> str:
    """One saved session in a few words: its short id, edits, chats, when saved."""
    edits = info.get("edits") or []
    n = len(edits) if isinstance(edits, list) else edits
    chats = info.get("chats") or 0
    when = (info.get("saved") or "").replace("T", " ").rstrip("Z")
    return (f"{info.get('id', '')[:8]}… ({n} edit{'s' if n != 1 else ''}, {chats} chat turn{'s' if chats != 1 else ''}"
            + (f", saved {when} UTC" if when else ", not saved yet") + ")")
