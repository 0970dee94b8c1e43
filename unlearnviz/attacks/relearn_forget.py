"""Relearning on forget half A: does fine-tuning on some forgotten facts bring back the others?

The fine-tuning attack of ``unlearnviz.evaluation.relearn`` (deltas on the MLP output projections
of a band of blocks, trained on top of the edit; the loaded weights are never written), run on
the edited model and, with the same settings and blocks, on the original. Half B, whose facts
the attacker never saw, is scored along the way: knowledge that comes back there was hidden, not
erased. EleutherAI's attack took WMDP-Bio from 24.8% back to 52.1% in 50 steps (Łucki et al.,
arXiv 2409.18025); the curve of accuracy against steps is the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from unlearnviz.attacks.base import AttackResult, Items, Variant, hp, register, score
from unlearnviz.data.batching import AUTO
from unlearnviz.data.schema import UnlearningData
from unlearnviz.evaluation.relearn import RelearnSettings, finetune_attack, resolve_settings
from unlearnviz.methods.base import ProgressFn, StopFn
from unlearnviz.model.loading import LoadedModel
from unlearnviz.model.routing import RoutingPlan


@dataclass
class RelearnForgetSettings:
    """The fine-tuning budget (the relearning attack's settings, ``RelearnSettings``)."""

    steps: int = hp(40, "fine-tuning steps", "50 (Łucki et al., WMDP-Bio 24.8% -> 52.1%)", min=1, max=100000)
    lr: float = hp(1e-4, "Adam learning rate (1e-3 damages the original model itself on the 135M default)",
                   min=1e-8, max=1.0)
    batch_size: int = hp(8, "texts per step", min=1, max=4096)
    eval_every: int = hp(10, "score every this many steps (the recovery curve's points)", min=1, max=100000)
    layers: str = hp("auto", "blocks whose MLP output projections are trained: auto (every block within "
                     "max_state_mb), all, or block indices such as 3,4,5")
    max_tokens: int = hp(AUTO, "training window in tokens; -1 = the methods' auto rule", min=-1, max=1 << 20)
    seed: int = hp(0, "which texts each step draws", min=0, max=2**31 - 1)
    max_state_mb: int = hp(4096, "bytes the trained deltas, gradients and Adam state may take", min=1, max=1 << 30)
    max_items: int = hp(64, "forget and retain questions scored at each point (each side)", min=2, max=100000)


def relearn_attack(name: str, lm: LoadedModel, data: UnlearningData, plan: RoutingPlan | None, s,
                   texts: Sequence[str] | None, primary: str, progress: ProgressFn | None,
                   should_stop: StopFn | None) -> AttackResult:
    """The fine-tune on ``texts`` (None: forget half A) of the edited and of the original model, one
    resolution of the settings for both; each eval point scores forget, half B and retain."""
    items = Items.from_data(data, s.max_items)
    base = RelearnSettings(steps=s.steps, lr=s.lr, batch_size=s.batch_size, eval_every=s.eval_every,
                           layers=s.layers, max_tokens=s.max_tokens, seed=s.seed, max_state_mb=s.max_state_mb)
    resolved, info = resolve_settings(lm, data, plan, base, texts)

    def measure(p: RoutingPlan | None) -> dict:
        return score(lm, p, items, should_stop=should_stop)

    def tagged(side: str):
        if progress is None:
            return None
        return lambda ev: progress({**ev, "phase": f"{name} ({side})"})

    curves = {side: finetune_attack(lm, data, p, resolved, progress=tagged(side), should_stop=should_stop,
                                    texts=texts, score=measure)
              for side, p in (("edited", plan), ("original", None))}
    curve = [{"step": e["step"], "loss": e["loss"], "loss_original": o["loss"],
              "edited": {k: e.get(k) for k in ("forget", "forget_b", "retain")},
              "original": {k: o.get(k) for k in ("forget", "forget_b", "retain")}}
             for e, o in zip(curves["edited"], curves["original"])]
    variants = [Variant(label=f"step {p['step']}", edited=p["edited"], original=p["original"], info={"step": p["step"]})
                for p in curve[1:]]
    return AttackResult(attack=name, primary=primary, edited=curve[0]["edited"], original=curve[0]["original"],
                        variants=variants, curve=curve, n_items=items.counts(), notes=list(info["warnings"]),
                        settings={"layers": resolved.layers, "max_tokens": resolved.max_tokens,
                                  "texts": len(texts) if texts is not None else len(data.forget_texts_half("A"))})


@register("relearn_forget", RelearnForgetSettings,
          "relearning: fine-tune on forget half A, score the held-out half B (Łucki et al. 2409.18025)")
def run(lm: LoadedModel, data: UnlearningData, plan: RoutingPlan | None, settings: RelearnForgetSettings,
        progress: ProgressFn | None = None, should_stop: StopFn | None = None) -> AttackResult:
    """Fine-tune on the texts of forget half A; the headline is half B."""
    return relearn_attack("relearn_forget", lm, data, plan, settings, None, "forget_b", progress, should_stop)
