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
                   spans_only: bool = False) -> list[tuple[list[int], list[bool]]]:
    """Token ids and loss mask per text. Position 0 is never in the mask (an attention sink
    with a residual norm hundreds of times the others); with ``mask_from``, the mask starts at
    the first token of the earliest subject/answer span, since the tokens before it ("The
    capital of") are shared with retain text and pushing them fights the retain loss. With
    ``spans_only`` as well, the mask holds only the tokens inside those spans (every
    occurrence): the function words between them ("is the capital of") stay out of the push.
    ``include_first`` puts position 0 back (retain anchoring: an edit that moves the sink moves
    every later token's attention)."""
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
        if spans_only and ranges:
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
                 linear_first: bool = False):
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
        if not naive:
            for b in batches:
                h_in, kw, out, first_out, mlp_in = self._capture(b)
                self.inputs.append(h_in)
                self.kwargs.append(kw)
                self.frozen.append(out if keep_frozen else None)
                if self.linear_first:
                    self.first_out.append(first_out)
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
            return fn

        capture = {self.stop: keep("out")}
        if self.linear_first and self.start != self.stop:
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
        return store["h"], store["kw"], store["out"], store.get("first_out", store["out"]), store.get("mlp_in")

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

    def output(self, i: int, plan: RoutingPlan | None) -> torch.Tensor:
        """Block-``stop`` output of batch i with ``plan`` (trainable deltas) on top of the prior."""
        full = plan if self.prior is None else (self.prior if plan is None else self.prior.merged(plan))
        if self.naive:
            return self._naive_output(i, full)
        if not self.linear_first:
            with self.lm.router.apply(full):
                return run_block_window(self.lm.adapter, self.start, self.stop, self.inputs[i], self.kwargs[i])
        h = self.first_out[i]
        own = None if plan is None else plan.deltas.get(self.start)  # the prior's is in first_out
        if own is not None:
            x = self.first_mlp_in[i]
            h = h + F.linear(x.to(own.dtype), own).to(h.dtype)
        if self.stop == self.start:
            return h
        with self.lm.router.apply(full):
            return run_block_window(self.lm.adapter, self.start + 1, self.stop, h, self.kwargs[i])

    def reference(self, i: int) -> torch.Tensor:
        """The frozen (pre-edit) output at ``stop``: cached, or recomputed every step if naive."""
        if self.naive:
            with torch.no_grad():
                return self._naive_output(i, self.prior)
        return self.frozen[i]


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
