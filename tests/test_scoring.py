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


def test_score_cache_reuses_only_what_it_has_seen(tiny_lm, tiny_data):
    """The dashboard's memo returns the scores computed without it, computes only the pairs it has
    not seen, and keeps the original and an edit apart (its key is the plan's content)."""
    from unlearnviz.evaluation.scoring import SCORE_CACHE

    spec = get_method("rmu")
    plan = spec.fit(tiny_lm, tiny_data, make_hparams(spec.hparams_cls, {"steps": 3, "layer": 2, "window": 2})).plan()
    pairs = _pairs(tiny_data, 6)
    want = {name: continuation_logprobs(tiny_lm, pairs, plan=p) for name, p in (("orig", None), ("edit", plan))}
    assert want["orig"] != want["edit"]
    asked: list[int] = []
    try:
        SCORE_CACHE.max_entries = 10_000
        SCORE_CACHE.clear()
        first = continuation_logprobs(tiny_lm, pairs[:10], plan=plan)
        real = SCORE_CACHE.scores  # count how many pairs each call still has to compute

        def counting(lm, ps, pl, compute):
            return real(lm, ps, pl, lambda todo: asked.append(len(todo)) or compute(todo))

        SCORE_CACHE.scores = counting
        for name, p in (("edit", plan), ("orig", None), ("edit", plan)):
            got = continuation_logprobs(tiny_lm, pairs, plan=p)
            assert [n for _, n in got] == [n for _, n in want[name]]
            for (a, _), (b, _) in zip(got, want[name]):
                assert a == pytest.approx(b, abs=1e-4)
        assert all(abs(a[0] - b[0]) < 1e-4 for a, b in zip(first, want["edit"]))
        assert asked == [len(set(pairs)) - len(set(pairs[:10])), len(set(pairs))]  # the third call: all hits
    finally:
        del SCORE_CACHE.scores
        SCORE_CACHE.max_entries = 0
        SCORE_CACHE.clear()
