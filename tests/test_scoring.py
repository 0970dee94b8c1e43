"""The shared-context scorer gives the same log-likelihoods as scoring every pair whole."""

from __future__ import annotations

import dataclasses

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


# ------------------------------------------------------------------------------------------
# Mixed-length batches (padding + attention mask), row-routed plans, chunked perplexity
# ------------------------------------------------------------------------------------------

FAMILY_CASES = ["llama", "gpt2", "gemma2"]  # rotary; absolute positions; a 4-token sliding window


@pytest.fixture(scope="module", params=FAMILY_CASES)
def family_lm(request, tmp_path_factory):
    from tiny_models import save_tiny

    from unlearnviz.model import LoadOptions, load_model

    folder = save_tiny(tmp_path_factory.mktemp(request.param), request.param, layers=2)
    return load_model(str(folder), LoadOptions(device="cpu"))


def _varied_pairs() -> list[tuple[str, str]]:
    """Contexts of many token lengths (byte tokens), each with continuations of 1 to 9 tokens;
    every statement stays under the tiny models' 64 positions."""
    pairs = []
    for i in range(14):
        ctx = f"Q{i}: " + "ab " * (i % 7) + "is"
        pairs += [(ctx, " x"), (ctx, " yes"), (ctx, " maybe not")]
    return pairs + [("Z", " z"), ("Z", " zebra")]  # a one-token context


def _context_forwards(lm):
    """Shapes of the decoder stack's forwards without a cache (the context forwards)."""
    from unlearnviz.model.readout import base_model

    seen: list[tuple[int, int]] = []

    def hook(module, args, kwargs, output):
        if kwargs.get("past_key_values") is None:
            seen.append(tuple(kwargs["input_ids"].shape))
    return seen, base_model(lm).register_forward_hook(hook, with_kwargs=True)


def _family_plan(lm, spare_first: bool = True):
    """A delta at block 1 and a site projection at block 0 (with the position-0 rule)."""
    import torch

    from unlearnviz.model.adapter import linear_weight
    from unlearnviz.model.routing import RoutingPlan, orthonormal_rows

    g = torch.Generator().manual_seed(1)
    w = linear_weight(lm.adapter.mlp_out(1))
    q = orthonormal_rows(torch.randn(3, lm.hidden_size, generator=g))
    return RoutingPlan(deltas={1: torch.randn(tuple(w.shape), generator=g) * 0.3}, projections={0: q},
                       spare_first=spare_first)


def _close(got, want):
    assert [n for _, n in got] == [n for _, n in want]
    for (a, _), (b, _) in zip(got, want):
        assert a == pytest.approx(b, rel=1e-5)


@pytest.mark.parametrize("edited", [False, True])
def test_contexts_of_different_lengths_share_a_batch(family_lm, edited):
    """Contexts of 14 different lengths run in one padded forward (before: one per length), and
    every score equals scoring each pair alone; a sliding window shorter than the padded rows
    keeps lengths apart (the gap of pad columns would shift the window)."""
    lm = family_lm
    pairs = _varied_pairs()
    plan = _family_plan(lm) if edited else None
    lengths = {len(lm.tokenizer(c).input_ids) for c, _ in pairs}
    assert len(lengths) >= 8
    want = continuation_logprobs_flat(lm, pairs, plan=plan, batch_size=1)
    seen, handle = _context_forwards(lm)
    try:
        got = continuation_logprobs(lm, pairs, plan=plan, batch_size=32)
    finally:
        handle.remove()
    _close(got, want)
    if lm.model.config.model_type == "gemma2":
        assert len(seen) == len(lengths)  # one forward per length, as before
    else:
        assert len(seen) == 1 and seen[0][0] == len({c for c, _ in pairs})


def test_a_token_budget_bounds_every_batch(family_lm):
    lm = family_lm
    pairs = _varied_pairs()
    want = continuation_logprobs_flat(lm, pairs, batch_size=1)
    seen, handle = _context_forwards(lm)
    try:
        got = continuation_logprobs(lm, pairs, token_budget=60)
    finally:
        handle.remove()
    _close(got, want)
    assert len(seen) > 1 and all(rows * width <= 60 or rows == 1 for rows, width in seen)


def test_row_routed_plan_scores_original_and_edited_in_one_call(family_lm):
    """A plan's ``rows`` flags pairs, not batch rows: the second copy of every pair is edited."""
    import torch

    lm = family_lm
    pairs = _varied_pairs()
    plan = _family_plan(lm)
    want = continuation_logprobs_flat(lm, pairs, batch_size=1) + \
        continuation_logprobs_flat(lm, pairs, plan=plan, batch_size=1)
    rows = torch.tensor([0.0] * len(pairs) + [1.0] * len(pairs))
    routed = dataclasses.replace(plan, rows=rows)
    _close(continuation_logprobs(lm, pairs + pairs, plan=routed), want)
    _close(continuation_logprobs_flat(lm, pairs + pairs, plan=routed, batch_size=5), want)
    with pytest.raises(ValueError, match="one flag per pair"):
        continuation_logprobs(lm, pairs, plan=routed)


def test_builtin_set_scores_in_few_batches_with_the_same_predictions(tmp_path, monkeypatch):
    """geo_europe_vs_world on the tiny Llama (byte tokens: stems and lettered prompts of dozens
    of lengths): the same per-item predictions as the reference scorer, in a third of the
    context forwards that one per length took."""
    from tiny_models import save_tiny

    from unlearnviz.data import load_data
    from unlearnviz.evaluation import mcq
    from unlearnviz.model import LoadOptions, load_model

    lm = load_model(str(save_tiny(tmp_path / "llama", "llama", layers=2)), LoadOptions(device="cpu"))
    items = load_data("builtin:geo_europe_vs_world").forget_mcq
    prompts = [it.question for it in items] + [mcq.blind_default(it) for it in items] + \
        [letter_prompt(it) for it in items]
    lengths = {len(lm.tokenizer(p).input_ids) for p in prompts}
    seen, handle = _context_forwards(lm)
    try:
        got = mcq.score_items(lm, items)
    finally:
        handle.remove()
    assert len(seen) * 3 <= len(lengths)
    monkeypatch.setattr(mcq, "continuation_logprobs",
                        lambda lm_, pairs, plan=None, batch_size=16, **_: continuation_logprobs_flat(
                            lm_, pairs, plan, batch_size))
    want = mcq.score_items(lm, items)
    for a, b in zip(got, want, strict=True):
        assert a.pop("gold_logprob") == pytest.approx(b.pop("gold_logprob"), rel=1e-5)
        assert a == b  # every prediction (cloze, cloze_sum, floor, mcq)


def test_perplexity_holds_one_chunk_of_logits(tiny_lm, tiny_data, monkeypatch):
    """The loss runs a chunk of positions at a time (the unembedding never sees more), and the
    perplexity equals the full model's logits scored text by text."""
    import math

    import torch
    import torch.nn.functional as F

    from unlearnviz.evaluation import scoring

    texts = tiny_data.ppl_texts[:12]
    nll = n = 0.0
    with torch.no_grad():
        for t in texts:
            ids = tiny_lm.tokenizer(t, return_tensors="pt").input_ids[:, :256]
            logits = tiny_lm.model(input_ids=ids).logits[0, :-1].float()
            nll += float(F.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            n += ids.shape[1] - 1
    want = math.exp(nll / n)
    rows: list[int] = []
    handle = tiny_lm.adapter.unembed.register_forward_hook(lambda m, a, o: rows.append(a[0].shape[0]))
    try:
        vocab = tiny_lm.adapter.unembed.weight.shape[0]
        with monkeypatch.context() as m:
            m.setattr(scoring, "LOGIT_BUDGET", 3 * vocab, raising=False)
            assert scoring.perplexity(tiny_lm, texts, batch_size=4) == pytest.approx(want, rel=1e-5)
        assert rows and max(rows) <= 3 and sum(rows) == n
        rows.clear()
        assert scoring.perplexity(tiny_lm, texts, batch_size=4, chunk_positions=5) == pytest.approx(want, rel=1e-5)
        assert max(rows) <= 5
    finally:
        handle.remove()


def test_scoring_unembeds_a_chunk_of_positions_at_a_time(tiny_lm, tiny_data, monkeypatch):
    """Long continuations in a full batch would otherwise hold tail tokens × vocabulary logits
    (twice, with the log-softmax): no unembedding call sees more than ``logit_chunk`` positions."""
    from unlearnviz.evaluation import scoring

    pairs = _pairs(tiny_data)
    want = continuation_logprobs_flat(tiny_lm, pairs, batch_size=1)
    monkeypatch.setattr(scoring, "LOGIT_BUDGET", 3 * tiny_lm.adapter.unembed.weight.shape[0], raising=False)
    rows: list[int] = []
    handle = tiny_lm.adapter.unembed.register_forward_hook(lambda m, a, o: rows.append(o.shape[0]))
    try:
        _close(continuation_logprobs(tiny_lm, pairs), want)
        assert rows and max(rows) <= 3
    finally:
        handle.remove()
