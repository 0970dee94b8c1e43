"""The training loop RMU and SRMU share: misdirect forget activations, anchor retain ones.

    L = E_forget ||h_L(x_f) − T(x_f)||² + α · E_retain ||h_L(x_r) − h_L^frozen(x_r)||²

with h_L the residual output of block L and deltas on the MLP output projections of blocks
L−window+1..L. Only the target T differs between the methods.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from unlearnviz.data.batching import AUTO, subject_spans, tokenize_texts
from unlearnviz.data.schema import UnlearningData
from unlearnviz.errors import UserError
from unlearnviz.methods.base import MAX_TOKENS_DOC, ModelMatch, ProgressFn, StopFn, Ticker, hp, resolve_window
from unlearnviz.methods.edit import Edit
from unlearnviz.methods.engine import (
    LazyBatches,
    WindowEngine,
    adam,
    masked_mse,
    optimizer_step,
    step_order,
    used_batches,
    zero_delta,
)
from unlearnviz.model.loading import LoadedModel
from unlearnviz.model.routing import RoutingPlan


@dataclass
class MisdirectionParams:
    """The hyperparameters RMU and SRMU share (each method adds its target's own)."""

    layer: int = hp(-1, "Block whose residual output the loss reads (L); -1 = auto, about a quarter of the depth "
                    "(7 of 30 on the default model).", "7 of 32 (Zephyr-7B)", min=-1)
    window: int = hp(3, "Blocks L−window+1..L have their MLP output projection trained.", "3 (layers 5,6,7)",
                     min=1, max=8)
    alpha: float = hp(300.0, "Weight of the retain term α·||h − h_frozen||² (on the default model: 100 kept less "
                      "retain, 1000 stopped forgetting).", "1200 (Zephyr)", min=0.0, max=1e6)
    lr: float = hp(3e-3, "Adam learning rate on the deltas (no weight decay; 1e-2 forgot as well but flipped more "
                   "retain facts).", "5e-5", min=1e-7, max=1.0)
    steps: int = hp(400, "Training steps (one forget + one retain batch each).", "150", min=1, max=5000)
    batch_size: int = hp(8, "Texts per forget batch and per retain batch.", "4", min=1, max=256)
    max_tokens: int = hp(-1, MAX_TOKENS_DOC, "512 (768 cyber)", min=-1, max=4096)
    forget_tokens: str = hp("spans", "Forget-loss tokens: 'from_subject' (from the first subject/answer token "
                            "on), 'spans' (only the subject and answer tokens), 'all' (every token but position 0).",
                            "all (pads included)", choices=("from_subject", "spans", "all"))
    anchor_first: bool = hp(True, "NON-PAPER: the retain term also holds sequence position 0 (the attention sink) at "
                            "its frozen value; the deltas act on every position, and a moved sink shifts every "
                            "token's attention.", "no (pads and all tokens, sink included, in one mean)")
    seed: int = hp(0, "Seed for the target's random vector and the batch order.", "")


# The model both papers' settings are for: Zephyr-7B-β's shapes (Mistral-7B: 32 blocks, hidden
# size 4096). A shape rule also matches other Mistral-7B fine-tunes; `--preset none` fits those at
# the defaults.
ZEPHYR_7B = ModelMatch(model_type="mistral", n_layers=32, hidden_size=4096)


# target_fn(batch index, frozen forget output, loss mask) -> (target, per-feature weight or None)
TargetFn = Callable[[int, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


def auto_layer(n_layers: int, window: int = 1) -> int:
    """About a quarter of the depth (RMU's 7 of 32 on Zephyr; 7 of 30 on SmolLM2)."""
    return min(n_layers - 1, max(window - 1, round(0.24 * n_layers)))


def check_common(lm: LoadedModel, data: UnlearningData, hp) -> tuple[int, int]:
    if hp.layer == -1:
        hp.layer = auto_layer(lm.n_layers, hp.window)
    lm.adapter.check_layer(hp.layer, "layer")
    if hp.window < 1 or hp.layer - hp.window + 1 < 0:
        raise UserError(f"window {hp.window} does not fit below layer {hp.layer}")
    if not data.forget_texts:
        raise UserError("the forget set is empty")
    if hp.max_tokens == AUTO:  # a caller that did not resolve it (fit_rmu and fit_srmu do, for the meta)
        resolve_window(lm, data, hp)
    return hp.layer - hp.window + 1, hp.layer


def prepare(lm: LoadedModel, data: UnlearningData, hp, prior: RoutingPlan | None, naive: bool = False):
    """The forget and retain batches (tokenised when first read) and the window engine over
    them (capturing a batch's cached input and frozen reference when first read)."""
    start, stop = check_common(lm, data, hp)
    pad = lm.tokenizer.pad_token_id or 0
    spans = subject_spans(data) if hp.forget_tokens != "all" else None
    fb = LazyBatches(data.forget_texts, lambda texts: tokenize_texts(
        lm, texts, hp.max_tokens, spans, spans_only=hp.forget_tokens == "spans"), hp.batch_size, pad)
    rb = LazyBatches(data.retain_train_texts, lambda texts: tokenize_texts(
        lm, texts, hp.max_tokens, include_first=hp.anchor_first), hp.batch_size, pad)
    engine = WindowEngine(lm, start, stop, fb + rb, prior=prior, naive=naive, linear_first=True)
    # the batches the steps read, captured before the first step while the cache holds them
    engine.prefetch(k for fi, ri in step_order(len(fb), len(rb), hp.steps, hp.seed) for k in (fi, len(fb) + ri))
    if naive:  # frozen outputs are still needed once (targets, statistics): the same forward,
        # stopped after block `stop` (the naive loop's per-step references stay full forwards)
        engine.frozen = WindowEngine(lm, start, stop, fb + rb, prior=prior).frozen
    return engine, fb, rb


def used(fb, rb, hp) -> tuple[list[int], list[int]]:
    """The forget and retain batches the fit's steps use, ascending. The statistics that scale
    a target (RMU's mean norm, SRMU's v_f and v_r) are taken on these, as the reference RMU code
    reads only its first ``max_num_batches`` batches: the fit never touches the rest of the
    corpus (every batch, in corpus order, once the steps cover an epoch)."""
    return used_batches(step_order(len(fb), len(rb), hp.steps, hp.seed))


def last_loss_position(b) -> int:
    """One past a batch's last loss token: later positions never reach its loss (causal attention)."""
    return int(b.loss_mask.any(0).nonzero().max()) + 1 if b.loss_mask.any() else 1


def train_misdirection(
    lm: LoadedModel,
    engine: WindowEngine,
    fb: list,
    rb: list,
    hp,
    target_fn: TargetFn,
    method: str,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
    extra_meta: dict | None = None,
) -> Edit:
    t0 = time.perf_counter()
    start, stop = engine.start, engine.stop
    torch.manual_seed(hp.seed)
    deltas = {layer: zero_delta(lm, layer) for layer in range(start, stop + 1)}
    opt = adam(list(deltas.values()), hp.lr)
    nf = len(fb)
    ticker = Ticker(hp.steps, progress, should_stop, method, (extra_meta or {}).get("warnings", ()))
    history = []
    for step, (fi, ri) in enumerate(step_order(nf, len(rb), hp.steps, hp.seed), 1):
        plan = RoutingPlan(deltas=deltas)
        target, weight = target_fn(fi, engine.frozen[fi])
        # one call through the window for both where the retain rows need no padding (their term
        # is measured against cached frozen outputs: see WindowEngine.output_pair); the forget
        # rows may come back cut after their last loss token
        hf, hr = engine.output_pair(fi, nf + ri, plan, pad_j=False, need_i=last_loss_position(fb[fi]))
        w = hf.shape[1]
        forget_loss = masked_mse(hf, target[:, :w], fb[fi].loss_mask[:, :w], weight)
        retain_loss = masked_mse(hr, engine.reference(nf + ri), rb[ri].loss_mask)
        loss = forget_loss + hp.alpha * retain_loss
        optimizer_step(opt, loss, forget_loss, retain_loss, history, ticker, step)
    meta = {"steps": hp.steps, "train_s": time.perf_counter() - t0, "losses": history,
            "window": [start, stop], "linear_first": engine.linear_first,
            "joined_steps": engine.joined_calls / max(engine.pair_calls, 1), **engine.stats(), **(extra_meta or {})}
    return Edit(method=method, hparams=asdict(hp),
                deltas={k: v.detach() for k, v in deltas.items()}, meta=meta)
