"""Residual-stream capture: any layers, pooled or per token, original and edited in one pass.

Every analysis view reads block outputs (the residual stream after block ``layer``) through the
router's capture hooks. The forward stops right after the deepest layer asked for
(``RoutingPlan.stop_after``), so capturing layer 7 of 30 costs a quarter of a full forward.

- **Pooling.** ``"mean"`` averages the non-pad tokens *excluding position 0*: position 0 is an
  attention sink whose residual norm is ~100× the others' on SmolLM2 (docs/findings.md), so including it
  makes every pooled vector the sink's. A one-token text falls back to its only token.
  ``"last"`` takes the last non-pad token, ``"tokens"`` returns every token (a list of
  [T_i, d] tensors per layer, position 0 included).
- **Original and edited in one pass.** :func:`capture_pair` duplicates each text into two
  adjacent batch rows and applies the edit to the odd rows only (``RoutingPlan.rows``).
- **Reducers.** :func:`run_pass` hands each layer's hidden states to reducers *inside the hook*,
  batch by batch, so statistics over thousands of texts never hold every token of every layer.
- **Cache.** Results are kept in a small LRU keyed by (model fingerprint, edit hash, texts hash,
  layers, pooling/kind); a repeated call returns the very same object. Treat results as
  read-only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch

from unlearnviz.data.batching import Batch, make_batches, tokenize_texts
from unlearnviz.errors import UserError
from unlearnviz.methods.base import Cancelled
from unlearnviz.model.loading import LoadedModel
from unlearnviz.model.routing import RoutingPlan, StopForward, plan_content_hash

POOLINGS = ("mean", "last", "tokens")
Encoded = list[tuple[list[int], list[bool]]]
# reducer(layer, h_original [B, T, d] float32, h_edited or None, batch, text indices of the rows)
Reducer = Callable[[int, torch.Tensor, "torch.Tensor | None", Batch, list[int]], None]


# ------------------------------------------------------------------------------------------
# Keys and validation
# ------------------------------------------------------------------------------------------


def as_plan(edit) -> RoutingPlan | None:
    """A RoutingPlan from None, a RoutingPlan, an Edit or an EditStack (anything with .plan())."""
    if edit is None or isinstance(edit, RoutingPlan):
        return edit
    if hasattr(edit, "plan"):
        return edit.plan()
    raise TypeError(f"expected an Edit, EditStack or RoutingPlan, got {type(edit).__name__}")


def plan_hash(plan) -> str:
    """Content hash of everything an edit changes ("none" without an edit)."""
    return plan_content_hash(as_plan(plan))


def texts_hash(texts: Sequence[str]) -> str:
    h = hashlib.blake2b(digest_size=12)
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def resolve_layers(lm: LoadedModel, layers: int | Sequence[int] | None) -> list[int]:
    """Sorted unique layer indices (None = all); negative indices count from the end."""
    n = lm.n_layers
    if layers is None:
        return list(range(n))
    if isinstance(layers, int):
        layers = [layers]
    out = set()
    for layer in layers:
        idx = int(layer)
        if idx < -n or idx >= n:
            raise UserError(f"layer {layer} is out of range: this model has blocks 0..{n - 1}")
        out.add(idx % n)
    if not out:
        raise UserError("no layers were asked for")
    return sorted(out)


def encode(lm: LoadedModel, texts: Sequence[str], mask_from: list[str] | None = None,
           what: str = "text", spans_only: bool = False) -> Encoded:
    """Token ids and statistic mask per text (position 0 never in the mask; see tokenize_texts).

    Texts longer than the model's context are refused rather than silently truncated.
    """
    texts = list(texts)
    if not texts:
        raise UserError(f"no {what}s to analyse: the list is empty")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise UserError(f"{what} {i + 1} is empty")
    limit = lm.max_length
    encoded = tokenize_texts(lm, texts, limit + 1, mask_from, spans_only=spans_only)
    for i, (ids, _) in enumerate(encoded):
        if len(ids) > limit:
            raise UserError(f"{what} {i + 1} is too long: more than {limit} tokens, the model's context "
                            f"({texts[i][:60]!r}...)")
    return encoded


# ------------------------------------------------------------------------------------------
# The pass
# ------------------------------------------------------------------------------------------


def _pool_mask(batch: Batch) -> torch.Tensor:
    """Non-pad tokens but position 0; rows with a single token keep it."""
    att = batch.attention_mask.bool()
    mask = att.clone()
    mask[:, 0] = False
    empty = ~mask.any(dim=1)
    mask[empty, 0] = att[empty, 0]
    return mask


# The cancel check of the analysis running in this context (a UI session's Cancel button).
_SHOULD_STOP: ContextVar[Callable[[], bool] | None] = ContextVar("unlearnviz_analysis_stop", default=None)


@contextmanager
def stoppable(should_stop: Callable[[], bool] | None):
    """Run analyses that stop between batches once ``should_stop()`` is true. A stopped analysis
    raises :class:`Cancelled` before anything is cached, so no partial result is ever reused."""
    token = _SHOULD_STOP.set(should_stop)
    try:
        yield
    finally:
        _SHOULD_STOP.reset(token)


def check_stop() -> None:
    should_stop = _SHOULD_STOP.get()
    if should_stop is not None and should_stop():
        raise Cancelled("analysis cancelled; nothing was kept")


@torch.no_grad()
def run_pass(lm: LoadedModel, encoded: Encoded, layers: Sequence[int], reducers: Sequence[Reducer],
             plan=None, pair: bool = False, batch_size: int = 32) -> None:
    """One forward over ``encoded`` texts, feeding each layer's output to every reducer.

    ``pair=True`` runs each text twice in adjacent rows, the edit on the second row only, and
    passes (original, edited); otherwise the plan (if any) applies to every row and reducers
    get (hidden, None). The forward stops after ``max(layers)``. Texts are batched by length.
    """
    plan = as_plan(plan)
    if pair and plan is None:
        raise ValueError("pair=True needs an edit plan")
    layers = sorted(set(layers))
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    per_batch = max(1, batch_size // 2) if pair else max(1, batch_size)
    state: dict = {}

    def hook(layer: int):
        def fn(h: torch.Tensor) -> None:
            h = h.detach().float()
            if pair:
                h_o, h_e = h[0::2], h[1::2]
            else:
                h_o, h_e = h, None
            for r in reducers:
                r(layer, h_o, h_e, state["batch"], state["idx"])
        return fn

    capture = {layer: hook(layer) for layer in layers}
    dev = lm.device
    for s in range(0, len(order), per_batch):
        check_stop()
        idx = order[s:s + per_batch]
        batch = make_batches([encoded[i] for i in idx], len(idx), pad)[0]
        state["batch"], state["idx"] = batch, idx
        ids, att = batch.input_ids, batch.attention_mask
        rows = None
        if pair:
            ids, att = ids.repeat_interleave(2, dim=0), att.repeat_interleave(2, dim=0)
            rows = torch.tensor([0.0, 1.0] * len(idx))
        if plan is None:
            run = RoutingPlan(capture=capture, stop_after=layers[-1])
        else:
            run = dataclasses.replace(plan, rows=rows if pair else plan.rows,
                                      capture={**plan.capture, **capture}, stop_after=layers[-1])
        with lm.router.apply(run):
            try:
                lm.model(input_ids=ids.to(dev), attention_mask=att.to(dev), use_cache=False)
            except StopForward:
                pass


class PoolReducer:
    """Pooled (or per-token) vectors per text and layer, for the original and edited rows."""

    def __init__(self, n: int, pooling: str):
        if pooling not in POOLINGS:
            raise UserError(f"unknown pooling {pooling!r}: use {', '.join(POOLINGS)}")
        self.n, self.pooling = n, pooling
        self.original: dict[int, list] = {}
        self.edited: dict[int, list] = {}

    def _pool(self, h: torch.Tensor, batch: Batch) -> list[torch.Tensor]:
        att = batch.attention_mask.to(h.device).bool()
        if self.pooling == "mean":
            m = _pool_mask(batch).to(h.device).float()
            pooled = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True)
            return list(pooled.cpu())
        if self.pooling == "last":
            last = att.sum(1) - 1
            return list(h[torch.arange(h.shape[0], device=h.device), last].cpu())
        return [h[r, att[r]].cpu() for r in range(h.shape[0])]

    def __call__(self, layer, h, h_edit, batch, idx):
        for target, hidden in ((self.original, h), (self.edited, h_edit)):
            if hidden is None:
                continue
            slots = target.setdefault(layer, [None] * self.n)
            for i, v in zip(idx, self._pool(hidden, batch)):
                slots[i] = v

    def result(self, which: str = "original") -> dict:
        src = self.original if which == "original" else self.edited
        if self.pooling == "tokens":
            return {layer: list(v) for layer, v in src.items()}
        return {layer: torch.stack(v) for layer, v in src.items()}


# ------------------------------------------------------------------------------------------
# Cache
# ------------------------------------------------------------------------------------------


def nbytes(obj, _depth: int = 0) -> int:
    """Approximate memory held by tensors inside ``obj`` (dicts, lists, dataclasses)."""
    if _depth > 6:
        return 0
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(nbytes(v, _depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v, _depth + 1) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(nbytes(getattr(obj, f.name), _depth + 1) for f in dataclasses.fields(obj))
    return 0


class LRUCache:
    """A small thread-safe LRU of analysis results (returns the same object on a hit).

    Bounded by entries and by the bytes of the tensors it holds (``UNLEARNVIZ_ANALYSIS_CACHE_MB``,
    default 2048): a default-model pass over 2,000 texts at every layer is ~280 MB. In the
    dashboard also by what one visitor may hold (``owner``: ``session.budget.charged_to``), so one
    visitor's analyses cannot push everyone else's out.
    """

    def __init__(self, max_entries: int = 24, max_bytes: int | None = None):
        self.max_entries = max_entries
        self.max_bytes = max_bytes if max_bytes is not None else \
            int(float(os.environ.get("UNLEARNVIZ_ANALYSIS_CACHE_MB", "2048")) * 2**20)
        self._data: OrderedDict = OrderedDict()
        self._sizes: dict = {}
        self._lock = threading.Lock()
        self.hits = self.misses = 0
        self.allowance: Callable[[], int | None] | None = None  # a shared budget's share for this cache
        # the visitor a new entry is charged to and the bytes they may still hold here (session.budget's
        # per-visitor cap), or None: nobody charged
        self.owner: Callable[[], tuple[object, int] | None] | None = None
        self._owners: dict = {}  # key -> the visitor it is charged to

    @property
    def bytes(self) -> int:
        return sum(self._sizes.values())

    def owner_bytes(self, owner) -> int:
        """Bytes of the entries charged to ``owner``."""
        with self._lock:
            return sum(self._sizes[k] for k, o in self._owners.items() if o == owner)

    def _drop(self, key) -> None:
        self._data.pop(key, None)
        self._sizes.pop(key, None)
        self._owners.pop(key, None)

    def shrink_to(self, max_bytes: int) -> None:
        """Drop the oldest entries until at most ``max_bytes`` are held (a shared memory budget
        reclaiming room for a model or a fit)."""
        with self._lock:
            while self._data and self.bytes > max_bytes:
                self._drop(next(iter(self._data)))

    def get_or_compute(self, key: tuple, compute: Callable[[], object]):
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return self._data[key]
        value = compute()
        size = nbytes(value)
        share = self.allowance() if self.allowance is not None else None
        cap = self.max_bytes if share is None else min(self.max_bytes, share)
        who = self.owner() if self.owner is not None else None
        with self._lock:
            self.misses += 1
            if size > cap or (who is not None and size > who[1]):  # too big to keep: hand it back uncached
                return value
            if who is not None:  # the visitor's own oldest entries make room for it, never another's
                owner, room = who
                mine = [k for k in self._data if k != key and self._owners.get(k) == owner]  # oldest first
                used = sum(self._sizes[k] for k in mine)
                for old in mine:
                    if used + size <= room:
                        break
                    used -= self._sizes[old]
                    self._drop(old)
                self._owners[key] = owner
            self._data[key] = value
            self._sizes[key] = size
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries or self.bytes > cap:
                self._drop(next(iter(self._data)))
        return value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._sizes.clear()
            self._owners.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._data)


CACHE = LRUCache()


def clear_cache() -> None:
    CACHE.clear()


def cache_key(lm: LoadedModel, kind: str, texts: Sequence[str], layers: Sequence[int], plan, *extra) -> tuple:
    return (lm.fingerprint(refresh=False), id(lm.model), kind, plan_hash(plan), texts_hash(texts),
            tuple(layers), *extra)


# ------------------------------------------------------------------------------------------
# Public capture functions
# ------------------------------------------------------------------------------------------


@dataclass
class ActivationPair:
    """Original and edited activations of the same texts, captured in one batched pass."""

    original: dict
    edited: dict
    layers: list[int]
    pooling: str


def capture(lm: LoadedModel, texts: Sequence[str], layers: int | Sequence[int] | None = None,
            pooling: str = "mean", plan=None, batch_size: int = 32, use_cache: bool = True) -> dict:
    """Residual stream after each block in ``layers`` (None = all) for ``texts``.

    Returns ``{layer: Tensor[N, d]}`` (float32, CPU) for "mean"/"last" pooling and
    ``{layer: [Tensor[T_i, d], ...]}`` for "tokens". ``plan`` (an Edit, EditStack or
    RoutingPlan) applies to every row; None is the original model.
    """
    if pooling not in POOLINGS:
        raise UserError(f"unknown pooling {pooling!r}: use {', '.join(POOLINGS)}")
    layers = resolve_layers(lm, layers)
    texts = list(texts)
    plan = as_plan(plan)

    def compute():
        enc = encode(lm, texts)
        red = PoolReducer(len(texts), pooling)
        run_pass(lm, enc, layers, [red], plan=plan, batch_size=batch_size)
        return red.result("original")

    if not use_cache:
        return compute()
    return CACHE.get_or_compute(cache_key(lm, "capture", texts, layers, plan, pooling), compute)


def capture_pair(lm: LoadedModel, texts: Sequence[str], plan, layers: int | Sequence[int] | None = None,
                 pooling: str = "mean", batch_size: int = 32, use_cache: bool = True) -> ActivationPair:
    """Original and edited activations in ONE batched pass (each text in two rows, the edit
    applied to the second). Without an edit, ``edited`` is the original itself."""
    layers = resolve_layers(lm, layers)
    texts = list(texts)
    plan = as_plan(plan)
    if plan is None or plan_hash(plan) == "none":
        orig = capture(lm, texts, layers, pooling, None, batch_size, use_cache)
        return ActivationPair(orig, orig, layers, pooling)

    def compute():
        enc = encode(lm, texts)
        red = PoolReducer(len(texts), pooling)
        run_pass(lm, enc, layers, [red], plan=plan, pair=True, batch_size=batch_size)
        return ActivationPair(red.result("original"), red.result("edited"), layers, pooling)

    if not use_cache:
        return compute()
    return CACHE.get_or_compute(cache_key(lm, "pair", texts, layers, plan, pooling), compute)
