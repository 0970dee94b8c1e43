"""The layer-window engine: train only blocks start..stop on cached inputs.

Inputs to the first trained block do not change during training (earlier blocks are frozen), so
they are computed once per batch, together with the kwargs each block receives (rotary
embeddings, masks) and the frozen reference outputs at the loss layer. Each step then runs only
blocks start..stop, a forget and a retain batch as one call where their kwargs join
(:mod:`unlearnviz.methods.pairing`). No frozen model copy is ever held. ``naive=True`` runs the reference
algorithm instead (a full forward of the edited model and of the frozen model every step), for
the equivalence test and the benchmark.

Memory does not grow with the corpus: a batch is captured the first time something asks for it
(a fit of N steps touches at most 2N batches, the reference RMU code's ``max_num_batches``), and
the captures live in a cache bounded in bytes (on a CUDA device while they fit there, then in
pinned CPU memory, then dropped and recomputed on the next use: the frozen model and the
capture's prior do not change, so a recomputed capture is the very same tensors).
"""

from __future__ import annotations

import operator
import os
import random
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from unlearnviz.data.batching import Batch, make_batches
from unlearnviz.methods.pairing import MASK_KEYS, NoJoin, cut_kwargs, join_kwargs, pad_rows
from unlearnviz.model.adapter import execution_device
from unlearnviz.model.loading import LoadedModel
from unlearnviz.model.quantized import linear_shape
from unlearnviz.model.routing import RoutingPlan, StopForward, delta_output, run_block_window


def step_order(n_forget: int, n_retain: int, steps: int, seed: int) -> list[tuple[int, int]]:
    """Which (forget, retain) batch each step uses: shuffled epochs, deterministic per seed."""
    rng = random.Random(seed)

    def stream(n: int):
        while True:
            order = list(range(n))
            rng.shuffle(order)
            yield from order

    fs, rs = stream(n_forget), stream(n_retain)
    return [(next(fs), next(rs)) for _ in range(steps)]


def used_batches(order: Iterable[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """The distinct forget and retain batches a step order uses, ascending (all of them, in
    corpus order, once the steps cover an epoch)."""
    pairs = list(order)
    return sorted({f for f, _ in pairs}), sorted({r for _, r in pairs})


# The per-batch captures (block input, frozen output, per-block kwargs, first block's output and
# MLP input) may take this share of the memory free when the engine is built: on a CUDA device
# of its free memory, and in (pinned) CPU memory of the available RAM, there at most
# HOST_CACHE_MAX. Past that, the least recently used capture moves from the device to CPU
# memory, and from CPU memory out (recomputed when next used).
CACHE_SHARE = 0.25
HOST_CACHE_MAX = 2 * 1024**3
# Joined (two-batch) and cut block kwargs kept, in bytes (least recently used dropped first).
JOIN_CACHE_BYTES = 256 * 1024**2
# Two batches run as one call unless padding them to one width adds more than this share of
# tokens: on the default model the joined call's matrix products ran ~25% more FLOPs per second
# (twice the rows), so a pair padded by more than that is cheaper as two calls.
JOIN_MAX_PADDING = 0.25
# Tokenised batches a LazyBatches keeps (a step reads each of its two batches a few times).
LAZY_BATCHES_KEPT = 64


class LazyBatches(Sequence):
    """Batches of ``batch_size`` consecutive texts, tokenised when first read: batch i is what
    ``make_batches(encode(texts), batch_size, pad_id)[i]`` is, without tokenising (or holding)
    the batches a fit never reads. A few recent batches are kept."""

    def __init__(self, texts: Sequence[str], encode: Callable[[list[str]], list[tuple[list[int], list[bool]]]],
                 batch_size: int, pad_id: int):
        self.texts, self.encode, self.batch_size, self.pad_id = texts, encode, batch_size, pad_id
        self._kept: OrderedDict[int, Batch] = OrderedDict()

    def __len__(self) -> int:
        return -(-len(self.texts) // self.batch_size)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Subset(self, range(len(self))[i])
        i = _index(i, len(self))
        b = self._kept.get(i)
        if b is None:
            lo = i * self.batch_size
            chunk = [self.texts[k] for k in range(lo, min(lo + self.batch_size, len(self.texts)))]
            b = make_batches(self.encode(chunk), self.batch_size, self.pad_id)[0]
            self._kept[i] = b
            if len(self._kept) > LAZY_BATCHES_KEPT:
                self._kept.popitem(last=False)
        else:
            self._kept.move_to_end(i)
        return b

    def __iter__(self) -> Iterator[Batch]:
        return (self[i] for i in range(len(self)))

    def __add__(self, other: Sequence) -> Chain:
        return Chain(self, other)

    def __radd__(self, other: Sequence) -> Chain:
        return Chain(other, self)


class Chain(Sequence):
    """Sequences one after the other, read in place (``fb + rb`` without copying either)."""

    def __init__(self, *parts: Sequence):
        self.parts = parts

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Subset(self, range(len(self))[i])
        i = _index(i, len(self))
        for p in self.parts:
            if i < len(p):
                return p[i]
            i -= len(p)
        raise IndexError(i)

    def __iter__(self) -> Iterator:
        for p in self.parts:
            yield from p

    def __add__(self, other: Sequence) -> Chain:
        return Chain(*self.parts, other)

    def __radd__(self, other: Sequence) -> Chain:
        return Chain(other, *self.parts)


class Subset(Sequence):
    """The items of ``seq`` at ``indices``, read in place (lazily where ``seq`` is lazy)."""

    def __init__(self, seq: Sequence, indices: Sequence[int]):
        self.seq, self.indices = seq, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Subset(self.seq, self.indices[i])
        return self.seq[self.indices[_index(i, len(self))]]

    def __iter__(self) -> Iterator:
        return (self.seq[k] for k in self.indices)


def _index(i, n: int) -> int:
    i = operator.index(i)
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(i)
    return i


@dataclass
class Capture:
    """What one batch's capture pass keeps: the first trained block's input, each window block's
    kwargs, the frozen output at ``stop`` (None unless kept), the first block's output and the
    input of its MLP output projection (None unless linear_first)."""

    h: torch.Tensor
    kw: dict[int, dict]
    out: torch.Tensor | None
    first_out: torch.Tensor | None
    mlp_in: torch.Tensor | None


def value_bytes(obj: Any, seen: set | None = None) -> int:
    """Bytes of every distinct tensor storage in ``obj`` (tensors in nested tuples, lists and
    dicts; a view counts the whole storage it keeps alive, a shared storage once)."""
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        s = obj.untyped_storage()
        key = (str(obj.device), s.data_ptr())
        if key in seen:
            return 0
        seen.add(key)
        return s.nbytes()
    if isinstance(obj, (tuple, list)):
        return sum(value_bytes(x, seen) for x in obj)
    if isinstance(obj, dict):
        return sum(value_bytes(x, seen) for x in obj.values())
    if isinstance(obj, Capture):
        return sum(value_bytes(getattr(obj, f.name), seen) for f in fields(obj))
    return 0


def _moved(obj: Any, dest: Callable[[torch.Tensor], torch.device], pin: bool, memo: dict) -> Any:
    """``obj`` with every tensor's storage copied to ``dest(tensor)`` (pinned if ``pin``), views,
    expanded tensors and storages shared between tensors kept as they were (no byte added)."""
    if isinstance(obj, torch.Tensor):
        to = dest(obj)
        if obj.device == to:
            return obj
        s = obj.untyped_storage()
        key = (str(obj.device), s.data_ptr())
        if key not in memo:
            memo[key] = _storage_copy(s, obj.device, to, pin)
        return torch.empty(0, dtype=obj.dtype, device=to).set_(memo[key], obj.storage_offset(), obj.size(),
                                                                obj.stride())
    if isinstance(obj, (tuple, list)):
        return type(obj)(_moved(x, dest, pin, memo) for x in obj)
    if isinstance(obj, dict):
        return {k: _moved(v, dest, pin, memo) for k, v in obj.items()}
    if isinstance(obj, Capture):
        return Capture(*(_moved(getattr(obj, f.name), dest, pin, memo) for f in fields(obj)))
    return obj


def _storage_copy(s: torch.UntypedStorage, src: torch.device, to: torch.device, pin: bool) -> torch.UntypedStorage:
    """A copy of storage ``s`` on ``to`` (into pinned memory where ``pin`` and it can be had)."""
    if to.type != "cpu":
        return s.to(device=to)
    if pin:
        try:
            buf = torch.empty(s.nbytes(), dtype=torch.uint8, pin_memory=True)
            buf.copy_(torch.empty(0, dtype=torch.uint8, device=src).set_(s))
            return buf.untyped_storage()
        except RuntimeError:  # pinning can run out: pageable memory still holds it
            pass
    return s.cpu()


class ByteCache:
    """A least-recently-used map bounded in bytes (``size(value)``; a value larger than the
    bound is not kept). ``put`` returns what it pushed out."""

    def __init__(self, max_bytes: int, size: Callable[[Any], int] = value_bytes, overhead: int = 64):
        self.max_bytes, self.size, self.overhead = int(max_bytes), size, overhead
        self._items: OrderedDict = OrderedDict()
        self._sizes: dict = {}
        self.bytes = self.peak_bytes = 0

    def __contains__(self, key) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, key):
        value = self._items[key]
        self._items.move_to_end(key)
        return value

    def get(self, key, default=None):
        return self[key] if key in self._items else default

    def pop(self, key):
        self.bytes -= self._sizes.pop(key)
        return self._items.pop(key)

    def put(self, key, value, nbytes: int | None = None) -> list[tuple[Any, Any]]:
        if key in self._items:
            self.pop(key)
        nbytes = (self.size(value) if nbytes is None else nbytes) + self.overhead
        if nbytes > self.max_bytes:
            return [(key, value)]
        out = []
        while self.bytes + nbytes > self.max_bytes:
            k = next(iter(self._items))
            out.append((k, self.pop(k)))
        self._items[key], self._sizes[key] = value, nbytes
        self.bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.bytes)
        return out


def available_ram() -> int:
    """Bytes of RAM available now (MemAvailable; free pages where /proc is not there; the host
    cache's cap where neither can be read). The memory planner reads it too."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return HOST_CACHE_MAX


class CaptureCache:
    """Captures by batch index in two tiers bounded in bytes: on the compute device (a CUDA
    device; nothing on a CPU, where captures already are in CPU memory) and in CPU memory
    (pinned where CUDA is, so moving a capture back is one fast copy). A capture pushed out of
    the device tier moves to the CPU tier; one pushed out of that is dropped."""

    def __init__(self, device: torch.device, host_bytes: int | None = None, device_bytes: int | None = None):
        cuda = device.type == "cuda"
        if device_bytes is None:
            device_bytes = int(CACHE_SHARE * torch.cuda.mem_get_info(device)[0]) if cuda else 0
        if host_bytes is None:
            host_bytes = min(HOST_CACHE_MAX, int(CACHE_SHARE * available_ram()))
        self.pin = cuda and torch.cuda.is_available()
        self.device_tier = ByteCache(device_bytes) if device_bytes > 0 else None
        self.host_tier = ByteCache(host_bytes)
        self._homes: dict[int, dict] = {}  # parked capture -> its storages' devices
        self.moved_out = self.moved_in = self.dropped = 0

    def __contains__(self, i: int) -> bool:
        return i in self.host_tier or (self.device_tier is not None and i in self.device_tier)

    def room(self) -> int:
        """Bytes still free in the two tiers together."""
        free = self.host_tier.max_bytes - self.host_tier.bytes
        return free + (self.device_tier.max_bytes - self.device_tier.bytes if self.device_tier else 0)

    @property
    def peak_bytes(self) -> int:
        return self.host_tier.peak_bytes + (self.device_tier.peak_bytes if self.device_tier else 0)

    def get(self, i: int) -> Capture | None:
        if self.device_tier is not None and i in self.device_tier:
            return self.device_tier[i]
        if i not in self.host_tier:
            return None
        parked = self.host_tier[i]
        if self.device_tier is None:
            return parked
        homes = self._homes.get(i, {})
        back = _moved(parked, lambda t: homes.get(t.untyped_storage().data_ptr(), t.device), False, {})
        self.moved_in += 1
        if self.host_tier._sizes[i] <= self.device_tier.max_bytes:  # fits on the device: back there
            self.host_tier.pop(i)
            self._homes.pop(i, None)
            self.put(i, back)
        return back

    def put(self, i: int, c: Capture) -> None:
        if self.device_tier is None:
            self.dropped += len(self.host_tier.put(i, c))
            return
        for k, old in self.device_tier.put(i, c):
            memo: dict = {}
            parked = _moved(old, lambda t: torch.device("cpu"), self.pin, memo)
            self.moved_out += 1
            for gone, _ in self.host_tier.put(k, parked):
                self._homes.pop(gone, None)
                self.dropped += 1
            if k in self.host_tier:
                self._homes[k] = {host.data_ptr(): torch.device(dev) for (dev, _), host in memo.items()}
class _Field(Sequence):
    """One part of every batch's capture (``engine.inputs[i]``, ``engine.frozen[i]``, ...),
    captured when read: iterating it streams the corpus through the cache."""

    def __init__(self, engine: WindowEngine, name: str):
        self.engine, self.name = engine, name

    def __len__(self) -> int:
        return len(self.engine.batches)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Subset(self, range(len(self))[i])
        return getattr(self.engine.capture(_index(i, len(self))), self.name)

    def __iter__(self) -> Iterator:
        return (self[i] for i in range(len(self)))


class WindowEngine:
    """Cached inputs and frozen references for a block window [start, stop].

    With ``linear_first`` (RMU/SRMU: trainable deltas on MLP output projections only), the first
    block of the window is not run at all: its input is frozen, so its output is the cached
    frozen output plus delta·x with x the cached input of its MLP output projection (exact where
    the MLP output is added straight to the residual; the adapter says where). A window of
    three blocks then runs two.

    ``batches`` is any sequence (a :class:`LazyBatches` tokenises on access); batch i is read
    and captured the first time something asks for it (``capture``, ``output``, ``inputs[i]``,
    ``frozen[i]``, ...), under the prior given here (``prior`` may be changed later for the runs:
    captures stay the constructor's). ``cache_bytes`` bounds the captures kept in CPU memory and
    ``device_cache_bytes`` those kept on a CUDA device (defaults: CACHE_SHARE of what is free,
    HOST_CACHE_MAX at most in CPU memory); ``join_cache_bytes`` the joined kwargs
    (JOIN_CACHE_BYTES). ``captured`` counts batches captured, ``recomputed`` captures of a
    batch pushed out earlier.
    """

    def __init__(self, lm: LoadedModel, start: int, stop: int, batches: Sequence[Batch],
                 prior: RoutingPlan | None = None, naive: bool = False, keep_frozen: bool = True,
                 linear_first: bool = False, keep_first_out: bool = False, cache_bytes: int | None = None,
                 device_cache_bytes: int | None = None, join_cache_bytes: int | None = None):
        self.lm, self.start, self.stop, self.naive = lm, start, stop, naive
        self.batches = batches
        self.prior = prior
        self._capture_prior = prior
        # the first block's MLP inputs count against the cache's bytes like every other capture
        self.linear_first = (linear_first and not naive and lm.adapter.mlp_adds_to_residual
                             and (prior is None or start not in prior.projections)
                             and (prior is None or prior.stream is None or start > prior.stream.last))
        self.cache = CaptureCache(lm.device, cache_bytes, device_cache_bytes)
        self.captured = self.recomputed = 0
        self._seen: set[int] = set()
        self.inputs, self.kwargs, self.frozen = _Field(self, "h"), _Field(self, "kw"), _Field(self, "out")
        self.first_out, self.first_mlp_in = _Field(self, "first_out"), _Field(self, "mlp_in")
        self.joint = True  # output_pair may run two batches as one call
        self.pair_calls = self.joined_calls = 0  # output_pair calls, and those run as one call
        self._joined = ByteCache(JOIN_CACHE_BYTES if join_cache_bytes is None else join_cache_bytes)
        self._join_checked: set = set()
        # Without frozen outputs, blocks past the first (or, with keep_first_out, past the
        # second) only hand over their kwargs; once the first batch has shown which blocks get the
        # very same kwargs objects, later batches stop there (see _capture).
        self._keep_frozen, self._keep_first_out = keep_frozen, keep_first_out or self.linear_first
        self._same_as: dict[int, int] | None = None
        self._cut: int | None = None

    def capture(self, i: int) -> Capture:
        """Batch i's capture: from the cache, else computed now (and kept while it fits)."""
        c = self.cache.get(i)
        if c is None:
            h, kw, out, first_out, mlp_in = self._capture(self.batches[i])
            c = Capture(h, kw, out if self._keep_frozen else None,
                        first_out if self._keep_first_out else None, mlp_in if self.linear_first else None)
            if i in self._seen:
                self.recomputed += 1
            else:
                self._seen.add(i)
                self.captured += 1
            self.cache.put(i, c)
        return c

    def prefetch(self, order: Iterable[int]) -> int:
        """Capture the batches in ``order`` (the order a fit's steps read them) now, while the
        cache has room for another capture as large as the largest so far: a fit then makes its
        captures before its first step where they fit (timed apart from the steps, as the reference
        RMU code reads its ``max_num_batches`` batches up front), and each step captures the rest
        when it reads them. Returns how many batches it captured."""
        if self.naive:
            return 0
        n = largest = 0
        for i in order:
            if i in self.cache:
                continue
            if n and self.cache.room() < largest + 64:
                break
            largest = max(largest, value_bytes(self.capture(i)))
            n += 1
        return n

    @torch.no_grad()
    def _capture(self, b: Batch):
        store: dict = {"kw": {}}

        def keep(name: str):
            return lambda h: store.__setitem__(name, h.detach())

        def grab_input(layer: int):
            def fn(args, kwargs):
                if layer == self.start:
                    store["h"] = (args[0] if args else kwargs["hidden_states"]).detach()
                kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
                kw["use_cache"] = False
                kw.pop("past_key_values", None)
                kw.pop("past_key_value", None)
                kw.pop("layer_past", None)
                store["kw"][layer] = kw
                if layer == self._cut:  # the rest of the window's kwargs are these blocks' own
                    raise StopForward
            return fn

        capture = {} if self._cut is not None else {self.stop: keep("out")}
        if self._keep_first_out and self.start != self.stop:
            capture[self.start] = keep("first_out")
        plan = RoutingPlan(
            block_input_hook={layer: grab_input(layer) for layer in range(self.start, self.stop + 1)},
            capture=capture,
            stop_after=self.stop,
            mlp_input_capture={self.start: keep("mlp_in")} if self.linear_first else {},
        )
        if self._capture_prior is not None:
            plan = self._capture_prior.merged(plan)
        dev = self.lm.device
        with self.lm.router.apply(plan):
            try:
                self.lm.model(input_ids=b.input_ids.to(dev), attention_mask=b.attention_mask.to(dev),
                              use_cache=False)
            except StopForward:
                pass
        kw = store["kw"]
        if self._cut is not None:
            for layer, same in self._same_as.items():
                kw[layer] = kw[same]
        elif not self._keep_frozen and self.stop > self.start:
            self._learn_cut(kw)
        out = store.get("out")
        return store["h"], kw, out, store.get("first_out", out), store.get("mlp_in")

    def _learn_cut(self, kw: dict[int, dict]) -> None:
        """After the first full capture: map each block whose kwargs are the very objects an
        earlier window block got (a model computes masks and rotary tables once per layer type)
        to that block, and stop later captures at the deepest block still needed."""
        same_as = {}
        for layer in range(self.start + 1, self.stop + 1):
            for earlier in range(self.start, layer):
                if _same_objects(kw[layer], kw[earlier]):
                    same_as[layer] = same_as.get(earlier, earlier)
                    break
        floor = self.start + 1 if self._keep_first_out else self.start
        needed = [layer for layer in range(self.start + 1, self.stop + 1) if layer not in same_as]
        cut = max([floor, *needed, *same_as.values()])
        if cut < self.stop:
            self._same_as = {layer: src for layer, src in same_as.items() if layer > cut}
            self._cut = cut

    def _naive_output(self, i: int, plan: RoutingPlan | None) -> torch.Tensor:
        b = self.batches[i]
        dev = self.lm.device
        store = {}
        cap = RoutingPlan(capture={self.stop: lambda h: store.__setitem__("out", h)})
        full = cap if plan is None else plan.merged(cap)
        with self.lm.router.apply(full):
            self.lm.model(input_ids=b.input_ids.to(dev), attention_mask=b.attention_mask.to(dev),
                          use_cache=False)
        return store["out"]

    def _full(self, plan: RoutingPlan | None) -> RoutingPlan | None:
        return plan if self.prior is None else (self.prior if plan is None else self.prior.merged(plan))

    def _entry(self, c: Capture, plan: RoutingPlan | None, width: int | None = None) -> tuple[int, torch.Tensor]:
        """The first block that runs for capture c, and its input (its first ``width`` positions)."""
        cut = slice(None) if width is None else slice(0, width)
        if not self.linear_first:
            return self.start, c.h[:, cut]
        h = c.first_out[:, cut]
        own = None if plan is None else plan.deltas.get(self.start)  # the prior's is in first_out
        if own is not None:
            x = c.mlp_in[:, cut]
            h = h + delta_output(x, own, h.device).to(h.dtype)  # as the router adds it
        return self.start + 1, h

    def _run(self, first: int, h: torch.Tensor, kwargs: dict[int, dict], full: RoutingPlan | None) -> torch.Tensor:
        if first > self.stop:
            return h
        with self.lm.router.apply(full):
            return run_block_window(self.lm.adapter, first, self.stop, h, kwargs)

    def output(self, i: int, plan: RoutingPlan | None) -> torch.Tensor:
        """Block-``stop`` output of batch i with ``plan`` (trainable deltas) on top of the prior."""
        full = self._full(plan)
        if self.naive:
            return self._naive_output(i, full)
        c = self.capture(i)
        first, h = self._entry(c, plan)
        return self._run(first, h, c.kw, full)

    def output_pair(self, i: int, j: int, plan: RoutingPlan | None, pad_i: bool = True,
                    pad_j: bool = True, need_i: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs of batches i and j, from ONE call through the window where their cached
        kwargs join (rows of i then j, right-padded to the longer width: padded keys are masked,
        so every real position sees what it sees alone); two calls where they do not join or
        padding would add more than JOIN_MAX_PADDING of their tokens, and always in the naive loop.

        ``pad_i`` / ``pad_j`` = False keeps that batch at its own width (the pair then runs as
        two calls when it is the shorter one). A loss that compares an output with a cached
        reference of the same computation (the retain term: ||h − h_frozen||², zero at the start)
        needs it: padding changes the attention kernel's rounding (~1e-7 of |h|), the term's
        gradient at the start is then that rounding alone, and Adam scales it up to full-size
        steps (on the default model the trajectory left the naive loop's by 2e-4 in 30 steps,
        against 2e-6 unpadded).

        ``need_i``: the caller reads batch i's output only at positions < need_i (its loss mask
        ends there); batch i may then be cut to fewer positions (to batch j's width, so that the
        pair joins with no padding, or else to need_i) and comes back that wide. Each new kind of
        join or cut (which side is longer, which mask the model left out) is checked once against
        the separate calls; a mismatch turns joining and cutting off for good."""
        full = self._full(plan)
        self.pair_calls += 1
        if self.naive or not self.joint:
            return self.output(i, plan), self.output(j, plan)
        bi, bj = self.batches[i], self.batches[j]
        ci, cj = self.capture(i), self.capture(j)  # held here: the cache may push either out
        ti, tj = bi.input_ids.shape[1], bj.input_ids.shape[1]
        cut = ti
        if need_i is not None and need_i < ti and tj != ti:
            cut = tj if need_i <= tj < ti else need_i
        kw_i = ci.kw if cut == ti else self._cut_kwargs(i, j, cut, ci.kw, cj.kw, (ti, tj))
        if kw_i is None:
            cut, kw_i = ti, ci.kw
        first, hi = self._entry(ci, plan, cut)
        _, hj = self._entry(cj, plan)
        width = max(cut, tj)
        padded = width * (hi.shape[0] + hj.shape[0]) / (cut * hi.shape[0] + tj * hj.shape[0]) - 1
        allowed = (pad_i or cut == width) and (pad_j or tj == width) and padded <= JOIN_MAX_PADDING
        kw = self._joined_kwargs(i, j, cut, kw_i, cj.kw, (hi.shape[0], hj.shape[0]), (ti, tj)) \
            if first <= self.stop and allowed else None
        if kw is None:
            oi, oj = self._run(first, hi, kw_i, full), self._run(first, hj, cj.kw, full)
        else:
            out = self._run(first, torch.cat([pad_rows(hi, width), pad_rows(hj, width)]), kw, full)
            oi, oj = out[: hi.shape[0], :cut], out[hi.shape[0]:, :tj]
        if kw is None and cut == ti:
            return oi, oj  # two plain calls: nothing to check
        kind = (kw is not None, cut < ti, cut > tj, cut < tj, _left_out(ci.kw), _left_out(cj.kw))
        if kind not in self._join_checked:
            with torch.no_grad():
                si = self._run(first, self._entry(ci, plan)[1].detach(), ci.kw, full)[:, :cut]
                sj = self._run(first, hj.detach(), cj.kw, full)
            real_i = Batch(*(t[:, :cut] for t in (bi.input_ids, bi.attention_mask, bi.loss_mask)))
            if not (_close(oi.detach(), si, real_i) and _close(oj.detach(), sj, bj)):
                self.joint = False
                return self.output(i, plan), self.output(j, plan)
            self._join_checked.add(kind)
        self.joined_calls += kw is not None
        return oi, oj

    def _cut_kwargs(self, i: int, j: int, cut: int, kw_i: dict[int, dict], kw_j: dict[int, dict],
                    widths: tuple[int, int]) -> dict[int, dict] | None:
        key = ("cut", i, j, cut)
        if key not in self._joined:
            try:
                value = cut_kwargs(kw_i, kw_j, widths, cut)
            except NoJoin:
                value = None
            self._joined.put(key, value)
            return value
        return self._joined[key]

    def _joined_kwargs(self, i: int, j: int, cut: int, kw_i: dict[int, dict], kw_j: dict[int, dict],
                       rows: tuple[int, int], widths: tuple[int, int]) -> dict[int, dict] | None:
        key = (i, j) if cut == widths[0] else (i, j, cut)
        if key not in self._joined:
            try:
                value = join_kwargs(kw_i, kw_j, rows, (cut, widths[1]))
            except NoJoin:
                value = None
            self._joined.put(key, value)  # kept while it fits the join cache's bytes
            return value
        return self._joined[key]

    def reference(self, i: int) -> torch.Tensor:
        """The frozen (pre-edit) output at ``stop``: cached, or recomputed every step if naive."""
        if self.naive:
            with torch.no_grad():
                return self._naive_output(i, self.prior)
        return self.capture(i).out

    def stats(self) -> dict:
        """What the caches did: batches captured and recomputed, peak bytes, moves between tiers."""
        return {"captured": self.captured, "recomputed": self.recomputed, "cache_peak_bytes": self.cache.peak_bytes,
                "moved_to_cpu": self.cache.moved_out, "moved_to_device": self.cache.moved_in,
                "dropped": self.cache.dropped,
                "join_cache_peak_bytes": self._joined.peak_bytes}


def _left_out(kw: dict[int, dict]) -> tuple:
    """Which blocks' masks the model left out of a batch's kwargs (no padding: SDPA's causal flag)."""
    return tuple(layer for layer, k in kw.items() if k.get("attention_mask", 0) is None)


def _same_objects(a: dict, b: dict) -> bool:
    """The same kwargs: every value the very same object (or an equal plain value). A mask the
    model left out (None: no padding) proves nothing: with padding, the blocks' masks may differ."""
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if k in MASK_KEYS and x is None:
            return False
        if isinstance(x, tuple) and isinstance(y, tuple):
            if len(x) != len(y) or any(u is not v for u, v in zip(x, y)):
                return False
        elif not (x is y or (isinstance(x, (bool, int, float, str)) and type(x) is type(y) and x == y)):
            return False
    return True


def _close(a: torch.Tensor, b: torch.Tensor, batch: Batch, rel: float = 1e-4) -> bool:
    """Every real token's vector within ``rel`` (relative L2) of the other's, and all of ``a``
    finite. Pad positions are not compared: a pad query that its mask blocks from every key
    (a sliding window past the text's end) is garbage that depends on the width, never read."""
    a, b = a.float(), b.float()
    err = (a - b).norm(dim=-1) / b.norm(dim=-1).clamp(min=1e-6)
    real = batch.attention_mask.to(err.device).bool()
    return bool(torch.isfinite(a).all()) and float(err[real].max()) <= rel


def _mlp_width(lm: LoadedModel, layer: int) -> int:
    """Input width of a block's MLP output projection (the hidden MLP size)."""
    return linear_shape(lm.adapter.mlp_out(layer))[1]


def zero_delta(lm: LoadedModel, layer: int) -> torch.Tensor:
    """A trainable zero delta for block ``layer``'s MLP output projection, [out, in] (nn.Linear
    convention, whatever the module stores: GPT-2's Conv1D keeps [in, out])."""
    mlp = lm.adapter.mlp_out(layer)  # shape from its features: a 4-bit weight is packed
    return torch.zeros(linear_shape(mlp), device=execution_device(mlp), dtype=torch.float32, requires_grad=True)


def adam(params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """Adam (no weight decay) with the fused kernel where the device has one: on the default
    model its per-step update of three 576×1536 deltas was ~7% of a training step unfused."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.Adam(params, lr=lr)


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, forget_loss: torch.Tensor,
                   retain_loss: torch.Tensor, history: list[dict], ticker, step: int) -> None:
    """One update, its loss terms recorded and reported (and cancellation checked)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    row = {"loss": loss.item(), "forget_loss": forget_loss.item(), "retain_loss": retain_loss.item()}
    history.append(row)
    ticker.tick(step, **row)


def masked_mse(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over masked tokens of the per-feature mean squared error (RMU's per-element MSE)."""
    m = mask.to(h.device)
    diff = (h.float() - target.float()) ** 2
    if weight is not None:
        diff = diff * weight
    per_token = diff.mean(-1)
    return (per_token * m).sum() / m.sum().clamp(min=1)


@torch.no_grad()
def mean_token_norm(hs: Iterable[torch.Tensor], batches: Iterable[Batch]) -> float:
    """Mean residual norm over the masked tokens (read one batch at a time: ``hs`` may stream
    captures through the engine's cache)."""
    total, n = 0.0, 0
    for h, b in zip(hs, batches):
        m = b.loss_mask.to(h.device)
        total += float(h.float().norm(dim=-1)[m].sum())
        n += int(m.sum())
    return total / max(n, 1)


@torch.no_grad()
def mean_abs_features(hs: Iterable[torch.Tensor], batches: Iterable[Batch]) -> torch.Tensor:
    """Per-feature mean |h| over the masked tokens (SRMU's activation statistic)."""
    total, n = None, 0
    for h, b in zip(hs, batches):
        m = b.loss_mask.to(h.device)
        s = h.float().abs()[m].sum(0)
        total = s if total is None else total + s
        n += int(m.sum())
    return total / max(n, 1)
