"""Benign relearning: fine-tuning on unrelated retain-domain text, the same budget as on half A.

Hu et al. (arXiv 2406.13356) showed that unlearned knowledge returns after fine-tuning on
loosely related or public text the attacker could get anyway, and Łucki et al. (arXiv
2409.18025) recovered most of WMDP accuracy with fine-tuning on WikiText. Here the attacker
trains on the data's retain texts (those methods train on, never the held-out perplexity texts),
with the steps, rate, batch size and blocks of ``relearn_forget``; none of the forget facts is
seen, so all forget questions are scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from unlearnviz.attacks.base import AttackResult, hp, register
from unlearnviz.attacks.relearn_forget import RelearnForgetSettings, relearn_attack
from unlearnviz.data.schema import UnlearningData
from unlearnviz.errors import UserError
from unlearnviz.methods.base import ProgressFn, StopFn
from unlearnviz.model.loading import LoadedModel
from unlearnviz.model.routing import RoutingPlan


@dataclass
class RelearnRetainSettings(RelearnForgetSettings):
    """``relearn_forget``'s budget, plus how many retain texts the attacker draws from."""

    max_texts: int = hp(256, "retain texts the attacker trains on (evenly spaced over the retain corpus)",
                        min=1, max=10**7)


def retain_texts(data: UnlearningData, n: int) -> Sequence[str]:
    """Up to ``n`` of the retain texts methods train on, evenly spaced (a corpus file is read
    only at those rows)."""
    texts = data.retain_train_texts
    m = len(texts)
    positions = list(range(m)) if m <= n else [(i * m) // n for i in range(n)]
    take = getattr(texts, "take", None)
    return take(positions) if callable(take) else [texts[i] for i in positions]


@register("relearn_retain", RelearnRetainSettings,
          "benign relearning: the same budget on unrelated retain text (Hu et al. 2406.13356)")
def run(lm: LoadedModel, data: UnlearningData, plan: RoutingPlan | None, settings: RelearnRetainSettings,
        progress: ProgressFn | None = None, should_stop: StopFn | None = None) -> AttackResult:
    """Fine-tune on retain texts; every forget question is held out, so the headline is all of them."""
    texts = retain_texts(data, settings.max_texts)
    if not len(texts):
        raise UserError(f"data {data.name!r} has no retain texts to relearn on")
    return relearn_attack("relearn_retain", lm, data, plan, settings, texts, "forget", progress, should_stop)
