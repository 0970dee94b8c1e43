"""Which edit each shown result belongs to: one numbering, the tag a view carries, the stale check.

Every result the dashboard shows (the Unlearn status and loss curve, the Evaluate table, an
analysis figure, a chat) was computed for one entry of the edit timeline: an edit together with
every edit stacked below it, on one model and one data set. A :class:`Tag` names that entry the
one way the page numbers edits (from 1; the original model has no number), with the content hash
of the stack up to it, so an edit undone and refitted at the same position gets a new tag. A view
records what it was computed for (:func:`mark`); once the selection, the stack, the model or the
data change, :func:`line` says so beside the view (stale) until it is refreshed, so a presenter
never reads one edit's numbers under another's name.
"""

from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unlearnviz.errors import UserError
from unlearnviz.model.routing import plan_content_hash

if TYPE_CHECKING:
    from unlearnviz.methods.edit import Edit
    from unlearnviz.session import Session

HASH_CHARS = 6  # hex characters of the hash a tag shows (the full hash decides equality)
# The views that show a second timeline entry beside the selected one (Session.compare).
COMPARE_VIEWS = frozenset({"evaluate", "geometry", "chat"})
STALE = "⚠️ **Stale:**"


@dataclass(frozen=True)
class Tag:
    """One timeline entry as a result's owner: ``number`` (1 = the first edit; None = the original
    model, no edit), the content hash of the stack up to it, its label, and the model and data it
    ran on (``context``: a result on other data or another model is stale too)."""

    number: int | None
    hash: str
    label: str
    context: tuple[str, str]  # (model fingerprint, data content hash)
    data_name: str = ""

    @property
    def index(self) -> int | None:
        """Its position in ``Session.stack.edits`` (0-based), None for the original model."""
        return None if self.number is None else self.number - 1

    def text(self) -> str:
        """How the page names it: ``edit #2 · 1a2b3c``, or ``the original model (no edit)``."""
        if self.number is None:
            return "the original model (no edit)"
        return f"edit #{self.number}" + (f" · {self.hash[:HASH_CHARS]}" if self.hash else "")

    def named(self) -> str:
        """The text with the edit's label (``edit #2 · 1a2b3c (2. rmu)``)."""
        return self.text() if self.number is None else f"{self.text()} ({self.label})"


Shown = tuple[Tag, "Tag | None"]  # what a view shows: the selected entry and the compared one (or None)


def number(index: int | None) -> int | None:
    """A stack index as the page numbers it (from 1)."""
    return None if index is None else index + 1


def index_of(value, n_edits: int) -> int | None:
    """The stack index a typed edit number means (None or empty: none chosen); refused, naming the
    timeline's numbers, when there is no such edit."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        n = float(value)
    except (TypeError, ValueError):
        raise UserError(f"an edit number is a whole number, got {value!r}") from None
    if n != int(n):
        raise UserError(f"an edit number is a whole number, got {value!r}")
    n = int(n)
    if not 1 <= n <= n_edits:
        have = f"the timeline has #1..#{n_edits}" if n_edits else "the timeline is empty: run an edit first"
        raise UserError(f"there is no edit #{n}; {have}")
    return n - 1


def edit_hash(edit: Edit) -> str:
    """Content hash of one edit's own changes, read once per edit (an imported fine-tune's deltas
    are a whole model's worth of tensors) and kept on it."""
    memo = edit.__dict__.get("_tag_hash")
    if memo is None:
        memo = plan_content_hash(edit.plan())
        edit.__dict__["_tag_hash"] = memo
    return memo


def stack_hash(edits) -> str:
    """Content hash of a stack prefix: the chain of its edits' hashes (order matters)."""
    h = hashlib.blake2b(digest_size=12)
    for e in edits:
        h.update(edit_hash(e).encode() + b"|")
    return h.hexdigest()


_DATA_HASHES: dict[int, tuple[weakref.ref, str]] = {}


def _data_hash(data) -> str:
    """The data's content hash, computed once per data object (it reads every text)."""
    if data is None:
        return ""
    hit = _DATA_HASHES.get(id(data))
    if hit is not None and hit[0]() is data:
        return hit[1]
    value = data.content_hash()
    _DATA_HASHES[id(data)] = (weakref.ref(data), value)
    return value


def context(session: Session) -> tuple[str, str]:
    lm = session.lm
    return (lm.fingerprint(refresh=False) if lm is not None else "", _data_hash(session.data))


def tag(session: Session, index: int | None) -> Tag:
    """The tag of stack entry ``index`` (None: the original model)."""
    ctx = context(session)
    name = session.data.name if session.data is not None else ""
    if index is None:
        return Tag(None, "", "original", ctx, name)
    edits = session.stack.edits[: index + 1]
    return Tag(index + 1, stack_hash(edits), edits[-1].label(), ctx, name)


def selected(session: Session) -> Tag:
    """The tag of the selected entry (the last edit unless one was chosen; the original if none)."""
    return tag(session, session.current_index)


def compared(session: Session) -> Tag | None:
    """The tag of the entry compared with the selected one (``Session.compare``), if any."""
    idx = getattr(session, "compare", None)
    return None if idx is None or idx >= len(session.stack) else tag(session, idx)


def wanted(session: Session, view: str) -> Shown:
    """What ``view`` should show now: the selected entry, and the compared one where the view
    compares two."""
    return selected(session), (compared(session) if view in COMPARE_VIEWS else None)


def mark(session: Session, view: str, shown: Shown | None = None) -> Shown:
    """Record that ``view`` now shows ``shown`` (default: what it should show now)."""
    shown = shown or wanted(session, view)
    session.shown[view] = shown
    return shown


def forget(session: Session, *views: str) -> None:
    """Record that ``views`` show nothing (cleared)."""
    for v in views:
        session.shown.pop(v, None)


def is_stale(session: Session, view: str, have: Shown | None = None) -> bool:
    """Whether ``view`` shows a result computed for something other than what it should show now
    (another edit, a removed one, other data or another model). A view that shows nothing is not.
    ``have``: what it shows, where the view's own record says (the chat's turns)."""
    have = have or session.shown.get(view)
    return have is not None and have != wanted(session, view)


def turn_shown(session: Session, turn: dict) -> Shown:
    """The timeline entries a chat turn was answered by, read from the turn itself (its edit's
    number, hash and label, and the compared entry's), so a conversation names its edits after an
    undo, an import or a reload as well. Turns are always of the session's model and data."""
    ctx, name = context(session), session.data.name if session.data is not None else ""

    def one(index, hash_, label) -> Tag:
        return Tag(number(index), hash_ or "", (label or "original") if index is not None else "original", ctx, name)

    second = None
    if turn.get("compare_index") is not None:
        second = one(turn["compare_index"], turn.get("compare_hash"), turn.get("compare_edit"))
    return one(turn.get("edit_index"), turn.get("edit_hash"), turn.get("edit")), second


def chat_shown(session: Session) -> Shown | None:
    """What the chat panes show: the entries the conversation in progress is with (None: no turn yet)."""
    turns = session.conversation_turns()
    return turn_shown(session, turns[-1]) if turns else None


def all_current(session: Session) -> bool:
    """Whether every view that shows something shows what it should now (the chat included)."""
    chat = chat_shown(session)
    return (not any(is_stale(session, v) for v in list(session.shown))
            and (chat is None or not is_stale(session, "chat", have=chat)))


def _pair(shown: Shown) -> str:
    first, second = shown
    text = f"**{first.named()}**"
    return text if second is None else f"{text} beside **{second.named()}**"


def line(session: Session, view: str, refresh: str = "press ↻ Refresh", have: Shown | None = None) -> str:
    """The line beside a view: which edit it shows, or that it is stale (what it was computed for,
    what is selected now, and how to refresh). Empty while the view shows nothing. ``have``: what
    it shows, where the view's own record says (the chat's turns)."""
    have = have or session.shown.get(view)
    if have is None:
        return ""
    now = wanted(session, view)
    if have == now:
        return f"Shows {_pair(have)}."
    why = ""
    if have[0].context[1] != now[0].context[1]:
        why = f" on other data ({have[0].data_name or 'unnamed'}; loaded now: {now[0].data_name or 'none'})"
    elif have[0].context[0] != now[0].context[0]:
        why = " on another model"
    return (f"{STALE} computed for {_pair(have)}{why}; the selected one is now {_pair(now)}. "
            f"{refresh[0].upper()}{refresh[1:]}.")
