"""The session registry: every visitor's Session by an id their browser keeps, bounded in memory,
autosaved in the operator's state folder so that a restart loses nothing.

A visitor's fitted edits, metrics and chats would otherwise live only in one process's memory:
a reload, a crash or a redeploy would lose them. The registry holds at most
``RegistrySettings.max_live`` sessions in memory (least recently used out first); with a state
folder each one is saved after every change that alters its content, and a session that is not
in memory is restored from the folder when its id comes back.

The folder itself (its layout, saving, restoring, export, garbage collection) is
``unlearnviz.state_folder``; this module decides when to save and what stays in memory.
"""


from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from unlearnviz.errors import UserError
from unlearnviz.state_folder import (
    SESSION_ID,
    by_age,
    check_id,
    collect_all,
    delete_saved,
    describe,
    list_saved,
    new_id,
    save,
    saved_file,
    saved_info,
    sessions_dir,
)

log = logging.getLogger("unlearnviz.registry")


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
    session back from what ``saved_file`` names (``load_saved`` with the app's options: its model
    through the operator's folder rules); without it saved
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
            collect_all(self.settings.state_dir)  # what a crash or a killed delete left behind

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
        """The session of ``sid`` (from memory, or restored from the state folder); None if there is no
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
            path = saved_file(self.state_dir, sid)
            if path is None:  # deleted since it was listed
                raise UserError("it was deleted")
            session = self.restore(path)
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
        manifest was written. Unbound and empty sessions, and any without a state folder, are not
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
        """Past ``max_saved`` sessions, the least recently saved go (never ``keep``), with the
        edits and data only they named."""
        saved = by_age(self.state_dir)
        for sid, _ in saved[: max(0, len(saved) - self.settings.max_saved)]:
            if sid != keep:
                log.warning("the state folder holds over %d sessions: deleting the least recently saved, %s",
                            self.settings.max_saved, sid)
                delete_saved(self.state_dir, sid)

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

