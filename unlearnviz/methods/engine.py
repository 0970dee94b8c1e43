"""The layer-window engine: train only blocks start..stop on cached inputs.

Inputs to the first trained block do not change during training (earlier blocks are frozen), so
they are computed once per batch, together with the kwargs each block receives (rotary
embeddings, masks) and the frozen reference outputs at the loss layer. Each step then runs only
blocks start..stop, a forget and a retain batch as one call where their kwargs join
(:mod:`unlearnviz.methods.pairing`). No frozen model copy is ever held. ``naive=True`` runs the reference
algorithm instead (a full forward of the edited model and of the frozen model every step), for
the equivalence test and the benchmark.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from unlearnviz.data.batching import Batch
from unlearnviz.methods.pairing import MASK_KEYS, NoJoin, cut_kwargs, join_kwargs, pad_rows
from unlearnviz.model.adapter import linear_weight
from unlearnviz.model.loading import LoadedModel
from unlearnviz.model.routing import RoutingPlan, StopForward, run_block_window


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
            out = self._run(first, torch.cat([pad_rows(hi, width), pad_rows(hj, width)]), kw, full)
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
            except NoJoin:
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
            except NoJoin:
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
