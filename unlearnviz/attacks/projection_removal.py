"""Projection removal: MRP's "delete the module" attack.

An edit that works by projecting a subspace out of the residual stream (MRP, placement "site" or
"stream") can be undone by anyone who holds the weights and the hooks: drop the projection,
keep everything else of the edit (its weight deltas), and score again. What comes back is what
the projection alone was hiding. An edit without a projection has nothing to remove: the result
says so and has no condition. The original has no projection, so its figures are unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from unlearnviz.attacks.base import AttackResult, Items, Variant, hp, register, score
from unlearnviz.data.schema import UnlearningData
from unlearnviz.methods.base import ProgressFn, StopFn
from unlearnviz.model.loading import LoadedModel
from unlearnviz.model.routing import RoutingPlan


@dataclass
class ProjectionRemovalSettings:
    max_items: int = hp(64, "forget and retain questions scored (each side)", min=2, max=100000)
    batch_size: int = hp(32, "scoring batch", min=1, max=4096)


def without_projections(plan: RoutingPlan) -> RoutingPlan:
    """``plan`` with its block-output projections, their centres and its stream projection dropped."""
    return dataclasses.replace(plan, projections={}, offsets={}, stream=None)


@register("projection_removal", ProjectionRemovalSettings,
          "projection removal: drop the edit's projections (MRP's), keep its weight changes")
def run(lm: LoadedModel, data: UnlearningData, plan: RoutingPlan | None, settings: ProjectionRemovalSettings,
        progress: ProgressFn | None = None, should_stop: StopFn | None = None) -> AttackResult:
    s = settings
    items = Items.from_data(data, s.max_items)
    original = score(lm, None, items, s.batch_size)
    result = AttackResult(attack="projection_removal", primary="forget", edited=score(lm, plan, items, s.batch_size),
                          original=original, n_items=items.counts())
    if plan is None or (not plan.projections and plan.stream is None):
        result.notes.append("the edit has no projection to remove")
        return result
    removed = without_projections(plan)
    result.variants.append(Variant(label="projection removed", edited=score(lm, removed, items, s.batch_size,
                                                                           should_stop),
                                   original=dict(original),
                                   info={"blocks": sorted(plan.projections),
                                         "stream": None if plan.stream is None else plan.stream.last}))
    if progress:
        progress({"phase": "projection_removal", "step": 1, "total": 1})
    return result
