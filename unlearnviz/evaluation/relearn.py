"""Relearning attacks: does the forgotten knowledge come back?

1. Fine-tuning: with the edit kept in place, fine-tune the model on the texts that state forget
   half A for N steps and measure cloze accuracy on the held-out half B every few steps, next to
   the same attack on the original model. Knowledge that returns on B was hidden, not erased.
   The fine-tune trains a copy of the MLP output projections of a band of layers as deltas on
   top of the edit (never the loaded weights), so the base model stays untouched.
2. White-box: remove MRP's projection (the "delete the module" attack), and ablate the mean
   forget-activation shift direction at the edited layer (the known weakness of RMU: its effect
   is largely one junk direction).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from unlearnviz.data.batching import make_batches, subject_spans, tokenize_texts
from unlearnviz.data.schema import UnlearningData
from unlearnviz.errors import UserError
from unlearnviz.evaluation.mcq import score_items, summarise
from unlearnviz.methods.base import Ticker
from unlearnviz.methods.engine import adam, zero_delta
from unlearnviz.model.loading import LoadedModel
from unlearnviz.model.routing import RoutingPlan


@dataclass
class RelearnSettings:
    steps: int = 40
    # 1e-3 was measured to damage the *original* model (half B 100% → 66% in 30 steps), which
    # mixes recovery with destruction; at 1e-4 the original keeps what it knows.
    lr: float = 1e-4
    batch_size: int = 8
    eval_every: int = 10
    layers: str = "all"  # which blocks' MLP output projections the attacker fine-tunes
    max_tokens: int = 32
    seed: int = 0


def _eval_b(lm: LoadedModel, data: UnlearningData, plan: RoutingPlan | None) -> float:
    return summarise(score_items(lm, data.forget_mcq_half("B"), plan=plan, letter=False, floor=False))["cloze_acc"]


def finetune_attack(
    lm: LoadedModel,
    data: UnlearningData,
    edit_plan: RoutingPlan | None,
    settings: RelearnSettings | None = None,
    progress: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[dict]:
    """Curve of half-B cloze accuracy while fine-tuning on half A: [{step, acc, loss}]."""
    s = settings or RelearnSettings()
    texts = data.forget_texts_half("A")
    if not texts or not data.forget_mcq_half("B"):
        raise UserError("relearning needs forget texts in half A and forget items in half B")
    layers = range(lm.n_layers) if s.layers == "all" else [int(x) for x in s.layers.split(",")]
    pad = lm.tokenizer.pad_token_id or 0
    batches = make_batches(tokenize_texts(lm, texts, s.max_tokens), s.batch_size, pad)
    base = edit_plan or RoutingPlan()
    deltas = {layer: zero_delta(lm, layer) for layer in layers}
    opt = adam(list(deltas.values()), s.lr)
    g = torch.Generator().manual_seed(s.seed)
    curve = [{"step": 0, "acc": _eval_b(lm, data, edit_plan), "loss": None}]
    ticker = Ticker(s.steps, progress, should_stop, "relearn")
    for step in range(1, s.steps + 1):
        b = batches[int(torch.randint(len(batches), (1,), generator=g))]
        summed = {k: (base.deltas[k] + v if k in base.deltas else v) for k, v in deltas.items()}
        plan = dataclasses.replace(base, deltas={**base.deltas, **summed})  # projections, offsets, stream kept
        with lm.router.apply(plan):
            out = lm.model(input_ids=b.input_ids.to(lm.device), attention_mask=b.attention_mask.to(lm.device),
                           use_cache=False)
        logits = out.logits[:, :-1].float()
        tgt = b.input_ids[:, 1:].to(lm.device)
        mask = b.attention_mask[:, 1:].bool().to(lm.device)
        loss = torch.nn.functional.cross_entropy(logits[mask], tgt[mask])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ticker.tick(step, loss=loss.item())
        if step % s.eval_every == 0 or step == s.steps:
            with torch.no_grad():
                frozen = dataclasses.replace(plan, deltas={k: v.detach() for k, v in plan.deltas.items()})
                curve.append({"step": step, "acc": _eval_b(lm, data, frozen), "loss": loss.item()})
    return curve


def steps_to_recovery(curve: list[dict], original_acc: float, base_acc: float, share: float = 0.5) -> int | None:
    """First step at which half-B accuracy regains ``share`` of the gap the edit opened."""
    gap = original_acc - base_acc
    if gap <= 0:
        return 0
    for point in curve:
        if point["acc"] - base_acc >= share * gap:
            return point["step"]
    return None


@torch.no_grad()
def mean_shift_direction(lm: LoadedModel, data: UnlearningData, edit_plan: RoutingPlan, layer: int) -> torch.Tensor:
    """Unit vector of the mean change the edit makes to forget activations at ``layer``."""
    from unlearnviz.methods.engine import WindowEngine

    pad = lm.tokenizer.pad_token_id or 0
    fb = make_batches(tokenize_texts(lm, data.forget_texts, 32, subject_spans(data)), 16, pad)
    before = WindowEngine(lm, layer, layer, fb, prior=None)
    after = WindowEngine(lm, layer, layer, fb, prior=edit_plan)
    diffs = [(a.float() - b.float())[bt.loss_mask] for a, b, bt in zip(after.frozen, before.frozen, fb)]
    shift = torch.cat(diffs).mean(0)
    return shift / shift.norm().clamp(min=1e-8)


def whitebox_attacks(lm: LoadedModel, data: UnlearningData, edit_plan: RoutingPlan, layer: int) -> dict:
    """Half-B accuracy under the edit, with the projections removed, and with the mean-shift
    direction ablated at ``layer`` (and at every later block, where the junk direction lives)."""
    out = {"edited": _eval_b(lm, data, edit_plan), "original": _eval_b(lm, data, None)}
    if edit_plan.projections or edit_plan.stream is not None:
        removed = dataclasses.replace(edit_plan, projections={}, offsets={}, stream=None)
        out["projection_removed"] = _eval_b(lm, data, removed)
    if edit_plan.deltas:
        direction = mean_shift_direction(lm, data, edit_plan, layer)
        ablate = {k: direction[None, :] for k in range(layer, lm.n_layers - 1)}
        merged = dict(edit_plan.projections)
        for k, d in ablate.items():
            merged[k] = torch.cat([merged[k], d]) if k in merged else d
        from unlearnviz.model.routing import orthonormal_rows

        plan = dataclasses.replace(edit_plan, projections={k: orthonormal_rows(v) for k, v in merged.items()})
        out["shift_direction_ablated"] = _eval_b(lm, data, plan)
    return out


def relearn_record(lm: LoadedModel, data: UnlearningData, plan: RoutingPlan, settings: RelearnSettings, progress=None,
                   should_stop: Callable[[], bool] | None = None) -> dict:
    """The relearning record the app, configs, bundles and reports keep: the fine-tune attack on
    the edited and on the original model, the white-box attacks, and the settings used."""
    return {"edited": finetune_attack(lm, data, plan, settings, progress=progress, should_stop=should_stop),
            "original": finetune_attack(lm, data, None, settings, progress=progress, should_stop=should_stop),
            "whitebox": whitebox_attacks(lm, data, plan, max(plan.edited_layers())),
            "settings": dataclasses.asdict(settings)}
