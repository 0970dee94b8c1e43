"""The layer-window engine: train only blocks start..stop on cached inputs.

Inputs to the first trained block do not change during training (earlier blocks are frozen), so
they are computed once per batch, together with the kwargs each block receives (rotary
embeddings, masks) and the frozen reference outputs at the loss layer. Each step then runs only
blocks start..stop. No frozen model copy is ever held. ``naive=True`` runs the reference
algorithm instead (a full forward of the edited model and of the frozen model every step), for
the equivalence test and the benchmark.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from unlearnviz.data.schema import UnlearningData
from unlearnviz.model.adapter import linear_weight
from unlearnviz.model.loading import LoadedModel
from unlearnviz.model.routing import RoutingPlan, StopForward, run_block_window


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    loss_mask: torch.Tensor  # [B, T] bool: tokens the loss is taken on


def subject_spans(data: UnlearningData, split: str = "forget") -> list[str]:
    """The entity strings of a split's facts (subjects and answers), longest first: where a
    forget text's loss mask starts (or, with spans only, the only tokens it holds)."""
    items = data.forget_mcq if split == "forget" else data.retain_mcq
    spans = {it.subject for it in items if it.subject} | {it.gold for it in items}
    return sorted((s for s in spans if len(s) >= 2), key=len, reverse=True)


def tokenize_texts(lm: LoadedModel, texts: list[str], max_tokens: int,
                   mask_from: list[str] | None = None, include_first: bool = False,
                   spans_only: bool = False, later_spans_only: bool = False) -> list[tuple[list[int], list[bool]]]:
    """Token ids and loss mask per text. Position 0 is never in the mask (an attention sink
    with a residual norm hundreds of times the others); with ``mask_from``, the mask starts at
    the first token of the earliest subject/answer span, since the tokens before it ("The
    capital of") are shared with retain text and pushing them fights the retain loss. With
    ``spans_only`` as well, the mask holds only the tokens inside those spans (every
    occurrence): the function words between them ("is the capital of") stay out of the push.
    ``include_first`` puts position 0 back (retain anchoring: an edit that moves the sink moves
    every later token's attention). ``later_spans_only``: only the tokens of the spans after the
    text's first one ("Paris" in "Visitors to France ... its capital, Paris"): the tokens the fact
    makes predictable, where a loss on next-token predictions belongs (a loss on the first
    entity itself only teaches the model not to name such entities at all)."""
    tok = lm.tokenizer
    out = []
    for text in texts:
        enc = tok(text, add_special_tokens=True, return_offsets_mapping=True, truncation=True,
                  max_length=max_tokens)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        start_tok = 1
        ranges = [(m.start(), m.end()) for s in (mask_from or []) for m in re.finditer(re.escape(s), text)]
        if ranges:
            first = min(a for a, _ in ranges)
            hit = next((i for i, (_, end) in enumerate(offsets) if end > first), 1)
            start_tok = max(1, hit)
        by_spans = bool(ranges) and (spans_only or later_spans_only)
        if later_spans_only and ranges:  # may leave none: a text naming one entity supervises nothing
            first = min(a for a, _ in ranges)
            first_end = max(b for a, b in ranges if a == first)
            ranges = [(a, b) for a, b in ranges if a >= first_end]
        if by_spans:
            inside = [any(a < e and s < b for a, b in ranges) for s, e in offsets]
            mask = [(i >= 1 and inside[i]) or (include_first and i == 0) for i in range(len(ids))]
        else:
            mask = [i >= start_tok or (include_first and i == 0) for i in range(len(ids))]
        out.append((ids, mask))
    return out


def make_batches(encoded: list[tuple[list[int], list[bool]]], batch_size: int, pad_id: int) -> list[Batch]:
    batches = []
    for s in range(0, len(encoded), batch_size):
        chunk = encoded[s:s + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        att = torch.zeros((len(chunk), width), dtype=torch.long)
        lm_ = torch.zeros((len(chunk), width), dtype=torch.bool)
        for r, (i, m) in enumerate(chunk):
            ids[r, : len(i)] = torch.tensor(i)
            att[r, : len(i)] = 1
            lm_[r, : len(m)] = torch.tensor(m)
        batches.append(Batch(ids, att, lm_))
    return batches


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


# Cache the first trained block's MLP input only while it stays this small (bytes).
LINEAR_FIRST_BUDGET = 2 * 1024**3
# Joined (two-batch) block kwargs kept per batch pair; rebuilt past this many pairs.
JOIN_CACHE = 4096
# Two batches run as one call unless padding them to one width adds more than this share of
# tokens: on the default model the joined call's matrix products ran ~25% more FLOPs per second
# (twice the rows), so a pair padded by more than that is cheaper as two calls.
JOIN_MAX_PADDING = 0.25
MASK_KEYS = ("attention_mask",)


class _NoJoin(Exception):
    """Two batches' block kwargs cannot be merged into one call's (the engine runs them apart)."""


def _pad_dims(t: torch.Tensor, size: int, dims: list[int], fill) -> torch.Tensor:
    for d in dims:
        if t.shape[d] < size:
            shape = list(t.shape)
            shape[d] = size - t.shape[d]
            t = torch.cat([t, t.new_full(shape, fill)], dim=d)
    return t


def _mask_fill(m: torch.Tensor):
    """(blocked, allowed) values of a 4-D attention mask: bool (True = attend) or additive float."""
    if m.dtype == torch.bool:
        return False, True
    if m.is_floating_point():
        return torch.finfo(m.dtype).min, 0.0
    raise _NoJoin


def _causal_like(other: torch.Tensor, rows: int, width: int) -> torch.Tensor:
    """The mask the model leaves out (None: no padding, plain causal: SDPA's ``is_causal``), built
    in the format of the other batch's mask."""
    if other.dim() != 4:
        raise _NoJoin
    blocked, allowed = _mask_fill(other)
    keep = torch.ones(width, width, dtype=torch.bool, device=other.device).tril()
    full = torch.full((width, width), blocked, dtype=other.dtype, device=other.device)
    m = torch.where(keep, torch.as_tensor(allowed, dtype=other.dtype, device=other.device), full)
    return m.expand(rows, other.shape[1], width, width)


def _join_tensor(a: torch.Tensor, b: torch.Tensor, rows: tuple[int, int], widths: tuple[int, int],
                 is_mask: bool) -> torch.Tensor:
    """One tensor for both batches: shared per-position tensors (batch dim 1, e.g. rotary
    embeddings) are kept when they agree on the common positions; per-row ones (masks) are padded
    to the common width and concatenated."""
    if a.dim() != b.dim() or a.dim() == 0 or a.dtype != b.dtype or a.device != b.device:
        raise _NoJoin
    width = max(widths)
    seq = [d for d in range(1, a.dim()) if a.shape[d] != b.shape[d]]  # the sequence-length dims
    if any((a.shape[d], b.shape[d]) != widths for d in seq):
        raise _NoJoin
    if a.shape[0] == 1 and b.shape[0] == 1:
        long, short = (a, b) if widths[0] >= widths[1] else (b, a)
        if torch.equal(long[tuple(slice(0, n) for n in short.shape)], short):
            return long
    parts = []
    for t, r, w in zip((a, b), rows, widths):
        if t.shape[0] == 1 and r != 1:
            t = t.expand(r, *t.shape[1:])
        if t.shape[0] != r:
            raise _NoJoin
        if w < width:
            if is_mask:
                blocked, allowed = _mask_fill(t)
                t = _pad_dims(t, width, seq, blocked)
                if t.dim() >= 2 and seq[-2:] == [t.dim() - 2, t.dim() - 1]:
                    t[..., w:, 0] = allowed  # padded queries see position 0: finite, never read
            else:
                t = _pad_dims(t, width, seq, 0)
        parts.append(t)
    return torch.cat(parts)


def _walk_pair(a, b, leaf, is_mask: bool = False):
    """Walk two per-block kwargs of the same structure together (tuples, lists, dicts with equal
    keys), calling ``leaf(a, b, is_mask)`` where either side is a tensor or None; equal scalars
    and shared objects pass through; anything else cannot be merged exactly (_NoJoin)."""
    if a is None or b is None or isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return leaf(a, b, is_mask)
    if isinstance(a, (tuple, list)) and type(a) is type(b) and len(a) == len(b):
        return type(a)(_walk_pair(x, y, leaf, is_mask) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return {k: _walk_pair(a[k], b[k], leaf, is_mask or k in MASK_KEYS) for k in a}
    if a is b or (isinstance(a, (bool, int, float, str)) and type(a) is type(b) and a == b):
        return a
    raise _NoJoin


def _join_value(a, b, rows: tuple[int, int], widths: tuple[int, int], is_mask: bool = False):
    def leaf(a, b, is_mask):
        if a is None and b is None:
            return None
        if not (isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor)):
            raise _NoJoin
        if is_mask and a is None:
            a = _causal_like(b, rows[0], widths[0])
        if is_mask and b is None:
            b = _causal_like(a, rows[1], widths[1])
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            raise _NoJoin
        return _join_tensor(a, b, rows, widths, is_mask)

    return _walk_pair(a, b, leaf, is_mask)


def join_kwargs(kw_a: dict[int, dict], kw_b: dict[int, dict], rows: tuple[int, int],
                widths: tuple[int, int]) -> dict[int, dict]:
    """Per-block kwargs of one call over batch a's rows then batch b's, both right-padded to
    the longer width (raises _NoJoin where a value cannot be merged exactly)."""
    if kw_a.keys() != kw_b.keys():
        raise _NoJoin
    return {layer: _join_value(kw_a[layer], kw_b[layer], rows, widths) for layer in kw_a}


def _cut_value(a, b, widths: tuple[int, int], cut: int, is_mask: bool = False):
    """``a`` (a kwarg of batch 1, width widths[0]) for its first ``cut`` positions only. The
    sequence-length dims are found against ``b``, batch 2's same kwarg at another width."""
    def leaf(a, b, is_mask):
        if a is None:
            return None
        if not isinstance(a, torch.Tensor):
            raise _NoJoin
        if is_mask and b is None:  # batch 2 had no padding: its mask is the plain causal one
            b = _causal_like(a, 1, widths[1])
        if not isinstance(b, torch.Tensor) or a.dim() != b.dim():
            raise _NoJoin
        seq = [d for d in range(1, a.dim()) if a.shape[d] != b.shape[d]]
        if any((a.shape[d], b.shape[d]) != widths for d in seq):
            raise _NoJoin
        return a[tuple(slice(0, cut) if d in seq else slice(None) for d in range(a.dim()))]

    return _walk_pair(a, b, leaf, is_mask)


def cut_kwargs(kw_a: dict[int, dict], kw_b: dict[int, dict], widths: tuple[int, int], cut: int) -> dict[int, dict]:
    """Batch a's per-block kwargs for its first ``cut`` positions (a causal model's positions
    before ``cut`` never see the later ones). Needs batch b at another width to tell which dims
    are the sequence length; raises _NoJoin where a value cannot be cut."""
    if widths[0] == widths[1] or kw_a.keys() != kw_b.keys():
        raise _NoJoin
    return {layer: _cut_value(kw_a[layer], kw_b[layer], widths, cut) for layer in kw_a}


def _pad_rows(h: torch.Tensor, width: int) -> torch.Tensor:
    if h.shape[1] == width:
        return h
    return torch.cat([h, h.new_zeros(h.shape[0], width - h.shape[1], *h.shape[2:])], dim=1)


class WindowEngine:
    """Cached inputs and frozen references for a block window [start, stop].

    With ``linear_first`` (RMU/SRMU: trainable deltas on MLP output projections only), the first
    block of the window is not run at all: its input is frozen, so its output is the cached
    frozen output plus delta·x with x the cached input of its MLP output projection (exact where
    the MLP output is added straight to the residual; the adapter says where). A window of
    three blocks then runs two.
    """

    def __init__(self, lm: LoadedModel, start: int, stop: int, batches: list[Batch],
                 prior: RoutingPlan | None = None, naive: bool = False, keep_frozen: bool = True,
                 linear_first: bool = False, keep_first_out: bool = False):
        self.lm, self.start, self.stop, self.naive = lm, start, stop, naive
        self.batches = batches
        self.prior = prior
        cache_bytes = sum(b.input_ids.numel() for b in batches) * _mlp_width(lm, start) * 4
        self.linear_first = (linear_first and not naive and lm.adapter.mlp_adds_to_residual
                             and (prior is None or start not in prior.projections)
                             and (prior is None or prior.stream is None or start > prior.stream.last)
                             and cache_bytes <= LINEAR_FIRST_BUDGET)
        self.inputs: list[torch.Tensor] = []
        self.kwargs: list[dict[int, dict]] = []
        self.frozen: list[torch.Tensor] = []
        self.first_out: list[torch.Tensor] = []
        self.first_mlp_in: list[torch.Tensor] = []
        self.joint = True  # output_pair may run two batches as one call
        self.pair_calls = self.joined_calls = 0  # output_pair calls, and those run as one call
        self._joined: dict[tuple[int, int], dict | None] = {}
        self._join_checked: set = set()
        # Without frozen outputs, blocks past the first (or, with keep_first_out, past the
        # second) only hand over their kwargs; once the first batch has shown which blocks get the
        # very same kwargs objects, later batches stop there (see _capture).
        self._keep_frozen, self._keep_first_out = keep_frozen, keep_first_out or self.linear_first
        self._same_as: dict[int, int] | None = None
        self._cut: int | None = None
        if not naive:
            for b in batches:
                h_in, kw, out, first_out, mlp_in = self._capture(b)
                self.inputs.append(h_in)
                self.kwargs.append(kw)
                self.frozen.append(out if keep_frozen else None)
                if self._keep_first_out:
                    self.first_out.append(first_out)
                if self.linear_first:
                    self.first_mlp_in.append(mlp_in)

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
        if self.prior is not None:
            plan = self.prior.merged(plan)
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

    def _entry(self, i: int, plan: RoutingPlan | None, width: int | None = None) -> tuple[int, torch.Tensor]:
        """The first block that runs for batch i, and its input (its first ``width`` positions)."""
        cut = slice(None) if width is None else slice(0, width)
        if not self.linear_first:
            return self.start, self.inputs[i][:, cut]
        h = self.first_out[i][:, cut]
        own = None if plan is None else plan.deltas.get(self.start)  # the prior's is in first_out
        if own is not None:
            x = self.first_mlp_in[i][:, cut]
            h = h + F.linear(x.to(own.dtype), own).to(h.dtype)
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
        first, h = self._entry(i, plan)
        return self._run(first, h, self.kwargs[i], full)

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
        ti, tj = self.batches[i].input_ids.shape[1], self.batches[j].input_ids.shape[1]
        cut = ti
        if need_i is not None and need_i < ti and tj != ti:
            cut = tj if need_i <= tj < ti else need_i
        kw_i = self.kwargs[i] if cut == ti else self._cut_kwargs(i, j, cut)
        if kw_i is None:
            cut, kw_i = ti, self.kwargs[i]
        first, hi = self._entry(i, plan, cut)
        _, hj = self._entry(j, plan)
        width = max(cut, tj)
        padded = width * (hi.shape[0] + hj.shape[0]) / (cut * hi.shape[0] + tj * hj.shape[0]) - 1
        allowed = (pad_i or cut == width) and (pad_j or tj == width) and padded <= JOIN_MAX_PADDING
        kw = self._joined_kwargs(i, j, cut, kw_i) if first <= self.stop and allowed else None
        if kw is None:
            oi, oj = self._run(first, hi, kw_i, full), self._run(first, hj, self.kwargs[j], full)
        else:
            out = self._run(first, torch.cat([_pad_rows(hi, width), _pad_rows(hj, width)]), kw, full)
            oi, oj = out[: hi.shape[0], :cut], out[hi.shape[0]:, :tj]
        if kw is None and cut == ti:
            return oi, oj  # two plain calls: nothing to check
        kind = (kw is not None, cut < ti, cut > tj, cut < tj, self._left_out(i), self._left_out(j))
        if kind not in self._join_checked:
            with torch.no_grad():
                si = self._run(first, self._entry(i, plan)[1].detach(), self.kwargs[i], full)[:, :cut]
                sj = self._run(first, hj.detach(), self.kwargs[j], full)
            real_i = Batch(*(t[:, :cut] for t in (self.batches[i].input_ids, self.batches[i].attention_mask,
                                                   self.batches[i].loss_mask)))
            if not (_close(oi.detach(), si, real_i) and _close(oj.detach(), sj, self.batches[j])):
                self.joint = False
                return self.output(i, plan), self.output(j, plan)
            self._join_checked.add(kind)
        self.joined_calls += kw is not None
        return oi, oj

    def _left_out(self, i: int) -> tuple:
        """Which blocks' masks the model left out for batch i (no padding: SDPA's causal flag)."""
        return tuple(layer for layer, kw in self.kwargs[i].items() if kw.get("attention_mask", 0) is None)

    def _cut_kwargs(self, i: int, j: int, cut: int) -> dict[int, dict] | None:
        key = ("cut", i, j, cut)
        if key not in self._joined:
            widths = (self.batches[i].input_ids.shape[1], self.batches[j].input_ids.shape[1])
            try:
                self._joined[key] = cut_kwargs(self.kwargs[i], self.kwargs[j], widths, cut)
            except _NoJoin:
                self._joined[key] = None
        return self._joined[key]

    def _joined_kwargs(self, i: int, j: int, cut: int | None = None,
                       kw_i: dict[int, dict] | None = None) -> dict[int, dict] | None:
        ti = self.batches[i].input_ids.shape[1]
        cut = ti if cut is None else cut
        key = (i, j) if cut == ti else (i, j, cut)
        if key not in self._joined:
            if len(self._joined) >= JOIN_CACHE:
                self._joined.clear()
            rows = (self.batches[i].input_ids.shape[0], self.batches[j].input_ids.shape[0])
            widths = (cut, self.batches[j].input_ids.shape[1])
            try:
                self._joined[key] = join_kwargs(self.kwargs[i] if kw_i is None else kw_i, self.kwargs[j], rows,
                                                widths)
            except _NoJoin:
                self._joined[key] = None
        return self._joined[key]

    def reference(self, i: int) -> torch.Tensor:
        """The frozen (pre-edit) output at ``stop``: cached, or recomputed every step if naive."""
        if self.naive:
            with torch.no_grad():
                return self._naive_output(i, self.prior)
        return self.frozen[i]


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
    w = linear_weight(lm.adapter.mlp_out(layer))
    return int(w.shape[1])


def zero_delta(lm: LoadedModel, layer: int) -> torch.Tensor:
    """A trainable zero delta for block ``layer``'s MLP output projection, [out, in] (nn.Linear
    convention, whatever the module stores: GPT-2's Conv1D keeps [in, out])."""
    w = linear_weight(lm.adapter.mlp_out(layer))
    return torch.zeros(tuple(w.shape), device=w.device, dtype=torch.float32, requires_grad=True)


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
def mean_token_norm(hs: list[torch.Tensor], batches: list[Batch]) -> float:
    total, n = 0.0, 0
    for h, b in zip(hs, batches):
        m = b.loss_mask.to(h.device)
        total += float(h.float().norm(dim=-1)[m].sum())
        n += int(m.sum())
    return total / max(n, 1)


@torch.no_grad()
def mean_abs_features(hs: list[torch.Tensor], batches: list[Batch]) -> torch.Tensor:
    """Per-feature mean |h| over the masked tokens (SRMU's activation statistic)."""
    total, n = None, 0
    for h, b in zip(hs, batches):
        m = b.loss_mask.to(h.device)
        s = h.float().abs()[m].sum(0)
        total = s if total is None else total + s
        n += int(m.sum())
    return total / max(n, 1)
