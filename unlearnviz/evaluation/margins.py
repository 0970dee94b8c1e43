"""The retain margin criterion of the built-in sets: a retain fact is kept only where the original
model's cloze score of its gold answer beats the best distractor's by ``MIN_RETAIN_MARGIN``.

Why: the retain bar allows a drop of 3 points, one item of 40. A retain item the original model
answers by a hair (gold ahead of the best distractor by a few hundredths of a nat per character)
flips under almost any edit, even one that forgets nothing, so its flip measures the set's noise,
not the edit's damage. Measured on ``builtin:demo`` before the criterion: the default RMU, SRMU
and MRP edits flipped 3-4 of its 40 retain items, every one of them but one (MRP's, at 0.21) at a
margin of 0.05-0.12; after it, the default SRMU edit flips one item of 40, at a margin of 0.47
(Cyprus's official language, Greek, a distractor of the demo's forget items: entanglement, which
the bar is there to catch).
The criterion is applied to every built-in set alike by
``scripts/build_builtin_data.py``, on the shipped answer options, and each card records it and
what it removed (``margin_criterion``).

The margin is in the cloze rule's own unit (lm-eval's ``acc_norm``: summed log-likelihood over
the answer's characters), so an item flips exactly when its margin crosses zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from unlearnviz.data.schema import MCQItem
from unlearnviz.evaluation.mcq import cloze_scores
from unlearnviz.evaluation.scoring import continuation_logprobs
from unlearnviz.model.loading import LoadedModel
from unlearnviz.model.routing import RoutingPlan

MIN_RETAIN_MARGIN = 0.15  # nats per character of the answer, on the original default model
UNIT = "nats per character of the answer (lm-eval's acc_norm score; per byte for ASCII answers)"

T = TypeVar("T")


def cloze_margin(logprobs: Sequence[float], choices: Sequence[str], answer: int) -> float:
    """The gold choice's cloze score minus the best other choice's: positive where cloze scoring
    answers right, and how far an edit must move the scores to flip it."""
    scores = cloze_scores(logprobs, choices)
    others = [float(s) for i, s in enumerate(scores) if i != answer]
    return float(scores[answer]) - max(others)


def item_margins(lm: LoadedModel, items: Sequence[MCQItem], plan: RoutingPlan | None = None,
                 batch_size: int = 32) -> list[float]:
    """``cloze_margin`` of each item under ``lm`` (and ``plan``, if given), in one batched pass."""
    pairs = [(it.question, " " + c) for it in items for c in it.choices]
    scores = iter(continuation_logprobs(lm, pairs, plan=plan, batch_size=batch_size))
    return [cloze_margin([next(scores)[0] for _ in it.choices], it.choices, it.answer) for it in items]


def split_by_margin(items: Sequence[T], margins: Sequence[float],
                    threshold: float = MIN_RETAIN_MARGIN) -> tuple[list[T], list[T]]:
    """(kept, removed): the items whose margin is at least ``threshold``, and the rest, in order."""
    if len(items) != len(margins):
        raise ValueError(f"{len(items)} items but {len(margins)} margins")
    kept = [it for it, m in zip(items, margins) if m >= threshold]
    removed = [it for it, m in zip(items, margins) if m < threshold]
    return kept, removed
