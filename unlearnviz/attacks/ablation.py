"""Directional ablation ("orthogonalisation", Łucki et al., arXiv 2409.18025): is the forgetting
one direction that can be projected back out?

Łucki et al.'s protocol: at each block, the mean difference between the edited and the original
model's activations on forget items the original answers and the edited does not; that direction
is removed from the edited model's residual stream by a hook, and forget and retain are scored
again. Here the items are those of forget half A (so half B, held out from the direction, is the
headline), the activations are block outputs mean-pooled over each "question answer" text
(position 0, the attention sink, left out: ``analysis.activations``), and the removal is a
RoutingPlan projection h ← h − (h·v)v at that block merged onto the edit's plan (where the edit
itself projects a centred subspace at that block, the merged basis keeps its centre). Each block
alone, then every chosen block's own direction at once; the original is scored under the same
projections as the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unlearnviz.attacks.base import AttackResult, Items, Variant, check_stop, hp, register, score
from unlearnviz.data.schema import MCQItem, UnlearningData
from unlearnviz.methods.base import ProgressFn, StopFn
from unlearnviz.model.loading import LoadedModel
from unlearnviz.model.routing import RoutingPlan, orthonormal_rows

AUTO_LAYERS = 12  # "auto": every block up to this many, else this many evenly spaced plus the edited ones
REL_NORM_TOL = 1e-6  # a direction shorter than this × the mean activation norm: the edit does not reach the block


@dataclass
class AblationSettings:
    layers: str = hp("auto", f"blocks whose direction is ablated: auto (every block of a model with up to "
                     f"{AUTO_LAYERS}, else {AUTO_LAYERS} evenly spaced plus the edited blocks), all, or indices "
                     "such as 2,3")
    all_layers: bool = hp(True, "also ablate every chosen block's own direction at once", "yes (Łucki et al.)")
    max_items: int = hp(64, "forget and retain questions scored (each side); the direction is fitted on the "
                        "half-A ones", min=2, max=100000)
    batch_size: int = hp(32, "texts per forward", min=1, max=4096)


def choose_layers(lm: LoadedModel, plan: RoutingPlan | None, spec: str) -> list[int]:
    """The blocks ``layers`` names (see AblationSettings)."""
    from unlearnviz.errors import UserError

    n = lm.n_layers
    if spec == "all" or (spec == "auto" and n <= AUTO_LAYERS):
        return list(range(n))
    if spec == "auto":
        spaced = {round(i * (n - 1) / (AUTO_LAYERS - 1)) for i in range(AUTO_LAYERS)}
        return sorted(spaced | set(plan.edited_layers() if plan is not None else []))
    try:
        layers = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        raise UserError(f"ablation layers={spec!r}: give auto, all or block indices such as 2,3") from None
    if not layers:
        raise UserError("ablation layers: give at least one block")
    for x in layers:
        lm.adapter.check_layer(x, "ablation layer")
    return layers


def forgotten_items(lm: LoadedModel, plan: RoutingPlan | None, items: list[MCQItem],
                    batch_size: int = 32) -> list[MCQItem]:
    """The items the original answers (cloze) and the edited model does not."""
    from unlearnviz.evaluation.mcq import score_items

    if plan is None or not items:
        return []
    orig = score_items(lm, items, plan=None, letter=False, floor=False, batch_size=batch_size)
    edit = score_items(lm, items, plan=plan, letter=False, floor=False, batch_size=batch_size)
    return [it for it, o, e in zip(items, orig, edit) if o["cloze"] and not e["cloze"]]


def directions(lm: LoadedModel, plan: RoutingPlan, items: list[MCQItem], layers: list[int],
               batch_size: int = 32) -> dict[int, tuple[torch.Tensor, float]]:
    """Per block: the mean of edited − original activations over ``items`` ("question answer"
    texts, mean-pooled) and its norm relative to the original activations' mean norm."""
    from unlearnviz.analysis.activations import capture_pair

    texts = [f"{it.question} {it.gold}" for it in items]
    pair = capture_pair(lm, texts, plan, layers=layers, pooling="mean", batch_size=batch_size, use_cache=False)
    out = {}
    for layer in layers:
        diff = (pair.edited[layer].float() - pair.original[layer].float()).mean(0)
        scale = float(pair.original[layer].float().norm(dim=-1).mean().clamp(min=1e-12))
        out[layer] = (diff, float(diff.norm()) / scale)
    return out


def ablated(plan: RoutingPlan | None, dirs: dict[int, torch.Tensor]) -> RoutingPlan:
    """``plan`` with each block's direction projected out of that block's output."""
    extra = RoutingPlan(projections={k: orthonormal_rows(v[None, :]) for k, v in dirs.items()})
    return extra if plan is None else plan.merged(extra)


@register("ablation", AblationSettings,
          "directional ablation: project out the mean edited-minus-original shift, per block and all at once "
          "(Łucki et al. 2409.18025)")
def run(lm: LoadedModel, data: UnlearningData, plan: RoutingPlan | None, settings: AblationSettings,
        progress: ProgressFn | None = None, should_stop: StopFn | None = None) -> AttackResult:
    """Fit the directions on half A's forgotten items, ablate them, score forget, half B and retain."""
    s = settings
    items = Items.from_data(data, s.max_items)
    layers = choose_layers(lm, plan, s.layers)
    result = AttackResult(attack="ablation", primary="forget_b", edited=score(lm, plan, items, s.batch_size),
                          original=score(lm, None, items, s.batch_size), n_items=items.counts())
    check_stop(should_stop, "ablation")
    if plan is None or plan.is_empty():
        result.notes.append("no edit: nothing to ablate")
        return result
    chosen = forgotten_items(lm, plan, items.a, s.batch_size)
    result.settings = {"layers": ",".join(map(str, layers)), "fitted_on": len(chosen)}
    if not chosen:
        result.notes.append("no half-A item is answered by the original and missed by the edited model: "
                            "there is no forgetting to fit a direction on")
        return result
    found = directions(lm, plan, chosen, layers, s.batch_size)
    kept = {k: d for k, (d, rel) in found.items() if rel > REL_NORM_TOL}
    skipped = [k for k in layers if k not in kept]
    if skipped:
        result.notes.append(f"blocks {', '.join(map(str, skipped))}: the edit does not change their output "
                            "(no direction to ablate)")
    conditions = [(f"block {k}", {k: d}) for k, d in kept.items()]
    if s.all_layers and len(kept) > 1:
        conditions.append(("all blocks", kept))
    for i, (label, dirs) in enumerate(conditions):
        check_stop(should_stop, "ablation")
        result.variants.append(Variant(
            label=label, edited=score(lm, ablated(plan, dirs), items, s.batch_size, should_stop),
            original=score(lm, ablated(None, dirs), items, s.batch_size, should_stop),
            info={"blocks": sorted(dirs), "relative_norm": {str(k): found[k][1] for k in dirs}}))
        if progress:
            progress({"phase": "ablation", "step": i + 1, "total": len(conditions)})
    return result
