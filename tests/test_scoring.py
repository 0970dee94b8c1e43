"""The shared-context scorer gives the same log-likelihoods as scoring every pair whole."""

from __future__ import annotations

import pytest

from unlearnviz.evaluation.mcq import letter_prompt
from unlearnviz.evaluation.scoring import continuation_logprobs, continuation_logprobs_flat
from unlearnviz.methods import get_method, make_hparams


def _pairs(data, n: int = 12) -> list[tuple[str, str]]:
    pairs = []
    for it in (data.forget_mcq[:n] + data.retain_mcq[:n]):
        pairs += [(it.question, " " + c) for c in it.choices]  # multi-token continuations
        pairs += [(letter_prompt(it), " " + letter) for letter in "ABCD"]  # single-token ones
    pairs.append(("The", " capital of the realm is far away"))  # a long tail on a short context
    return pairs


@pytest.mark.parametrize("edit", [None, "mrp", "rmu"])
def test_shared_context_scoring_equals_flat(tiny_lm, tiny_data, edit):
    plan = None
    if edit is not None:
        spec = get_method(edit)
        over = {"steps": 3, "layers": [1], "k": 4} if edit == "mrp" else {"steps": 3, "layer": 2, "window": 2}
        plan = spec.fit(tiny_lm, tiny_data, make_hparams(spec.hparams_cls, over)).plan()
    pairs = _pairs(tiny_data)
    assert any(len(x.split()) > 1 for _, x in pairs)
    flat = continuation_logprobs_flat(tiny_lm, pairs, plan=plan, batch_size=7)
    shared = continuation_logprobs(tiny_lm, pairs, plan=plan, batch_size=5)
    assert [n for _, n in shared] == [n for _, n in flat]
    assert all(n >= 1 for _, n in shared)
    for (a, _), (b, _) in zip(flat, shared):
        assert a == pytest.approx(b, abs=1e-4, rel=1e-5)
