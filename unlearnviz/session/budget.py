"""One accounted memory budget for a dashboard shared by a group (``--max-memory-gb``).

Why: one server, one GPU, many visitors. Without a budget every loaded model, every visitor's
edits and every analysis cache stays resident until the process dies, and the first sign of
trouble is an out-of-memory kill that loses everyone's work. With one, everything resident is
accounted in one place per device: models (evictable once no live session holds them), edits
(held while their session is in memory), and the caches (shrinkable, oldest entries first).
An action that cannot fit after evicting what may go is refused *before* it starts, in one
line naming the figures, and the app stays responsive.

Eviction is least recently used first, and only of what nobody holds: a model a live session
uses is pinned (evicting it would free nothing, the session keeps a reference). A fit is checked
on every device its trained deltas land on (``planning.fit_bytes_by_device``), and edits are held
where their tensors are.

Beside the shared budget, each visitor's cache entries are charged to them (``charged_to``, set
around every dashboard event) under ``--max-cache-mb-per-session``: past it their own oldest
entries make room, so one visitor cannot fill the shared caches with theirs.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from unlearnviz.errors import UserError

GB = 2**30
MODEL, EDITS, CACHE = "model", "edits", "cache"


def gb(n: float) -> str:
    """Bytes as GB, or MB below one GB (a small model's figure is not "0.00 GB")."""
    return f"{n / GB:.2f} GB" if abs(n) >= GB else f"{n / 2**20:.2f} MB"


def parse_limits(text: str | float | None) -> dict[str, int]:
    """``--max-memory-gb``: one number for every device (``24``), or per device
    (``cuda:0=70,cuda:1=70,cpu=100``; a bare ``cuda`` means every CUDA device). Returns
    device → bytes, ``*`` for the default."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return {}
    if isinstance(text, bool):
        raise UserError("--max-memory-gb must be a number of GB or DEVICE=GB pairs")
    items = [("*", text)] if isinstance(text, (int, float)) else [
        tuple(p.split("=", 1)) if "=" in p else ("*", p) for p in str(text).split(",") if p.strip()]
    out: dict[str, int] = {}
    for device, value in items:
        device = str(device).strip().lower() or "*"
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UserError(f"--max-memory-gb: {value!r} is not a number of GB (e.g. 24, or cuda:0=70,cpu=100)") from None
        if not math.isfinite(number) or number <= 0:
            raise UserError(f"--max-memory-gb: {value!r} must be a positive number of GB")
        if device in out:
            raise UserError(f"--max-memory-gb names {device!r} twice")
        out[device] = int(number * GB)
    return out


def resident_bytes(model) -> dict[str, int]:
    """Bytes of a module's parameters and buffers per device they live on (each storage once, so
    tied matrices count once; meta tensors, i.e. disk-offloaded weights, count nowhere)."""
    seen: set[tuple[str, int]] = set()
    out: dict[str, int] = {}
    for t in [*model.parameters(), *model.buffers()]:
        if t.device.type == "meta":
            continue
        device = str(t.device) if t.device.type != "cuda" or t.device.index is not None else "cuda:0"
        ident = (device, t.untyped_storage().data_ptr())
        if ident in seen:
            continue
        seen.add(ident)
        out[device] = out.get(device, 0) + t.untyped_storage().nbytes()
    return out


@dataclass
class Holding:
    """One resident thing: its bytes, when it was last used, and how to let it go."""

    key: tuple
    kind: str
    nbytes: int
    what: str
    last_used: float
    evict: Callable[[], None] | None = None  # drops it (None: cannot be evicted)
    in_use: Callable[[], bool] = field(default=lambda: False)  # pinned while true


@dataclass
class Shrinkable:
    """A cache that reports its bytes and can drop its oldest entries."""

    name: str
    size: Callable[[], int]
    shrink_to: Callable[[int], None]  # keep at most this many bytes


class MemoryBudget:
    """The budget of one device. ``limit`` None: accounting only, nothing refused."""

    def __init__(self, device: str, limit: int | None = None, clock: Callable[[], float] = time.monotonic):
        self.device = device
        self.limit = limit
        self.clock = clock
        self._held: dict[tuple, Holding] = {}
        self._caches: dict[str, Shrinkable] = {}
        self._lock = threading.RLock()

    # ---- accounting ---------------------------------------------------------------------
    def held_bytes(self, kind: str | None = None, exclude: tuple = ()) -> int:
        with self._lock:
            fixed = sum(h.nbytes for k, h in self._held.items() if (kind is None or h.kind == kind) and k not in exclude)
            caches = sum(c.size() for c in self._caches.values()) if kind in (None, CACHE) else 0
        return fixed + caches

    def free_bytes(self) -> int | None:
        return None if self.limit is None else self.limit - self.held_bytes()

    def holdings(self) -> list[Holding]:
        with self._lock:
            return sorted(self._held.values(), key=lambda h: h.last_used)

    def summary(self) -> str:
        """What is held, by kind, in one phrase."""
        parts = [f"{kind}s {gb(self.held_bytes(kind))}" for kind in (MODEL, EDITS, CACHE) if self.held_bytes(kind)]
        return ", ".join(parts) or "nothing"

    # ---- holding --------------------------------------------------------------------------
    def add_cache(self, cache: Shrinkable) -> None:
        with self._lock:
            self._caches[cache.name] = cache

    def hold(self, key: tuple, kind: str, nbytes: int, what: str, *, evict: Callable[[], None] | None = None,
             in_use: Callable[[], bool] | None = None) -> None:
        """Account ``nbytes`` under ``key`` (replacing what it held), making room first; refused
        (nothing held) when it cannot fit."""
        with self._lock:
            previous = self._held.pop(key, None)
            try:
                self.require(nbytes, what)
            except UserError:
                if previous is not None:
                    self._held[key] = previous
                raise
            self._held[key] = Holding(key, kind, int(nbytes), what, self.clock(), evict, in_use or (lambda: False))

    def touch(self, key: tuple) -> None:
        with self._lock:
            if key in self._held:
                self._held[key].last_used = self.clock()

    def release(self, key: tuple) -> None:
        with self._lock:
            self._held.pop(key, None)

    def __contains__(self, key: tuple) -> bool:
        return key in self._held

    def held_of(self, key: tuple) -> int:
        """The bytes ``key`` holds here (0: nothing)."""
        with self._lock:
            h = self._held.get(key)
            return h.nbytes if h is not None else 0

    # ---- making room ----------------------------------------------------------------------
    def require(self, nbytes: int, what: str, protect: tuple = ()) -> None:
        """Make ``nbytes`` free beside what is held: shrink the caches, then evict idle holdings,
        least recently used first (never those in ``protect`` or in use); refuse in one line with
        the figures when that is not enough."""
        if self.limit is None:
            return
        with self._lock:
            need = int(nbytes) - (self.limit - self.held_bytes())
            if need <= 0:
                return
            for cache in self._caches.values():  # caches first: they are recomputed, not reloaded
                size = cache.size()
                cache.shrink_to(max(0, size - need))
                need -= size - cache.size()
                if need <= 0:
                    return
            for h in self.holdings():
                if need <= 0:
                    break
                if h.evict is None or h.key in protect or h.in_use():
                    continue
                h.evict()
                self._held.pop(h.key, None)
                need -= h.nbytes
            if need > 0:
                free = self.limit - self.held_bytes()
                raise UserError(f"{what} needs ~{gb(nbytes)}; this dashboard's memory budget on {self.device} is "
                                f"{gb(self.limit)} with {gb(max(free, 0))} free ({self.summary()} held, in use): "
                                "free an edit or a model, or ask the operator for a larger --max-memory-gb")

    def cache_allowance(self, name: str) -> int | None:
        """The bytes cache ``name`` may hold now: the limit less everything else held."""
        if self.limit is None:
            return None
        with self._lock:
            others = sum(c.size() for n, c in self._caches.items() if n != name)
            fixed = sum(h.nbytes for h in self._held.values())
        return max(0, self.limit - fixed - others)

    def room_for(self, protect: tuple = ()) -> int | None:
        """Bytes an action may use beside everything held except ``protect`` (an action's own model
        and edits are counted by its plan): evictable holdings and caches count as free."""
        if self.limit is None:
            return None
        with self._lock:
            fixed = sum(h.nbytes for k, h in self._held.items()
                        if k not in protect and (h.evict is None or h.in_use()))
        return max(0, self.limit - fixed)


class Budgets:
    """Per-device budgets; a device with no limit of its own uses the default (``*``)."""

    def __init__(self, limits: dict[str, int] | None = None):
        self._lock = threading.Lock()
        self._budgets: dict[str, MemoryBudget] = {}
        self.configure(limits or {})

    def configure(self, limits: dict[str, int]) -> None:
        with self._lock:
            self.limits = dict(limits)
            for name, b in self._budgets.items():
                b.limit = self._limit_of(name)

    def _limit_of(self, device: str) -> int | None:
        kind = device.split(":", 1)[0]
        for key in (device, kind, "*"):
            if key in self.limits:
                return self.limits[key]
        return None

    @property
    def active(self) -> bool:
        return bool(self.limits)

    def of(self, device) -> MemoryBudget:
        name = str(device)
        if name == "cuda":
            name = "cuda:0"
        with self._lock:
            if name not in self._budgets:
                self._budgets[name] = MemoryBudget(name, self._limit_of(name))
            return self._budgets[name]

    def all(self) -> list[MemoryBudget]:
        with self._lock:
            return list(self._budgets.values())


BUDGETS = Budgets()

# ---- one visitor's share of the caches (``--max-cache-mb-per-session``) ------------------------

DEFAULT_CACHE_MB_PER_SESSION = 512  # a visitor's analysis passes and scores; the analysis cache holds 2048 MB

# The visitor the running event works for, and how many bytes of cache they may hold in all. Set
# by the dashboard around each event (``ui.common.readable``); a context variable, so each of
# Gradio's worker threads (and each step of a streamed event) sees its own.
_CHARGED: ContextVar[tuple[object, Callable[[], int]] | None] = ContextVar("unlearnviz_cache_owner", default=None)


@contextmanager
def charged_to(owner: object, cap: int | Callable[[], int]) -> Iterator[None]:
    """Charge the cache entries made inside to ``owner`` (a session's id), who may hold at most
    ``cap`` bytes of them across the caches (a callable: read when an entry is kept, so a handler
    that sets the operator's limits on its session first is charged under them). Beyond it, the
    visitor's own oldest entries make room, never another visitor's: without this one visitor's
    analyses of many data sets push every other visitor's out of the shared caches."""
    token = _CHARGED.set((owner, cap if callable(cap) else (lambda: int(cap))))
    try:
        yield
    finally:
        _CHARGED.reset(token)


def charge_visitors(caches: dict[str, object]) -> None:
    """Give each cache (name: a cache with ``owner`` and ``owner_bytes``, ``LRUCache`` and
    ``ScoreCache``) the visitor charged now and the bytes they may still hold in it: their cap
    less what they hold in the other caches."""

    def owner_of(name: str) -> tuple[object, int] | None:
        charged = _CHARGED.get()
        if charged is None:
            return None
        owner, cap = charged
        elsewhere = sum(c.owner_bytes(owner) for n, c in caches.items() if n != name)
        return owner, max(0, int(cap()) - elsewhere)

    for name, cache in caches.items():
        cache.owner = lambda n=name: owner_of(n)


def attach_caches(budgets: Budgets = BUDGETS) -> None:
    """Put the process's result caches (analysis passes, continuation scores; both held in RAM)
    under the CPU budget: they shrink, oldest first, when a model or a fit needs the room, and
    grow only into what the budget has free; and each visitor's entries under their own cap
    (``charged_to``)."""
    from unlearnviz.analysis.activations import CACHE as ANALYSIS_CACHE
    from unlearnviz.evaluation.scoring import SCORE_CACHE

    cpu = budgets.of("cpu")
    caches = {"analysis cache": ANALYSIS_CACHE, "score cache": SCORE_CACHE}
    for name, cache in caches.items():
        cpu.add_cache(Shrinkable(name, lambda c=cache: c.bytes, cache.shrink_to))
    ANALYSIS_CACHE.allowance = lambda: cpu.cache_allowance("analysis cache")
    charge_visitors(caches)


def configure(limit_text: str | float | None, budgets: Budgets = BUDGETS) -> None:
    """The operator's ``--max-memory-gb``: set the limits and attach the caches."""
    budgets.configure(parse_limits(limit_text))
    attach_caches(budgets)
