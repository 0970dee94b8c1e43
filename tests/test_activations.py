"""Activation capture: pooling, one-pass original/edited equals two passes, early stop, cache, errors."""

from __future__ import annotations

import pytest
import torch

from unlearnviz.analysis.activations import (
    CACHE,
    capture,
    capture_pair,
    clear_cache,
    encode,
    plan_hash,
    resolve_layers,
    texts_hash,
)
from unlearnviz.errors import UserError
from unlearnviz.model.adapter import linear_weight
from unlearnviz.model.routing import RoutingPlan, StreamProjection, orthonormal_rows


def random_plan(lm, layer: int = 1, scale: float = 0.05, seed: int = 0) -> RoutingPlan:
    """A deterministic delta on one block's MLP output projection (an 'edit' without training)."""
    g = torch.Generator().manual_seed(seed)
    shape = tuple(linear_weight(lm.adapter.mlp_out(layer)).shape)
    return RoutingPlan(deltas={layer: torch.randn(shape, generator=g) * scale})


@pytest.fixture(scope="module")
def texts(tiny_data):
    return tiny_data.forget_texts[:6] + tiny_data.retain_texts[:6]


def test_shapes_for_every_pooling(tiny_lm, texts):
    d, n = tiny_lm.hidden_size, tiny_lm.n_layers
    mean = capture(tiny_lm, texts)
    assert sorted(mean) == list(range(n))
    assert all(v.shape == (len(texts), d) and v.dtype == torch.float32 for v in mean.values())
    last = capture(tiny_lm, texts, layers=[0, 2], pooling="last")
    assert sorted(last) == [0, 2] and last[2].shape == (len(texts), d)
    toks = capture(tiny_lm, texts, layers=[1], pooling="tokens")
    lengths = [len(ids) for ids, _ in encode(tiny_lm, texts)]
    assert [t.shape for t in toks[1]] == [(n_tok, d) for n_tok in lengths]
    # mean pooling = the mean of the per-token states without position 0 (attention sink); last = last token
    per_tok = capture(tiny_lm, texts, layers=[0, 2], pooling="tokens")
    for i in range(len(texts)):
        assert torch.allclose(mean[2][i], per_tok[2][i][1:].mean(0), atol=1e-5)
        assert torch.allclose(last[2][i], per_tok[2][i][-1], atol=1e-5)
        assert not torch.allclose(mean[0][i], per_tok[0][i].mean(0), atol=1e-6)


def test_matches_hf_hidden_states(tiny_lm, texts):
    """Block outputs equal transformers' hidden_states[layer + 1] (unpadded, one text at a time)."""
    acts = capture(tiny_lm, texts[:3], pooling="tokens", use_cache=False)
    for i, text in enumerate(texts[:3]):
        ids = tiny_lm.tokenizer(text, return_tensors="pt").input_ids
        with torch.no_grad():
            hs = tiny_lm.model(input_ids=ids, output_hidden_states=True).hidden_states
        for layer in range(tiny_lm.n_layers - 1):  # the last entry is after the final norm
            assert torch.allclose(acts[layer][i], hs[layer + 1][0], atol=1e-4)


def test_early_stop_skips_later_blocks(tiny_lm, texts):
    calls = []
    handle = tiny_lm.adapter.blocks[-1].register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        capture(tiny_lm, texts, layers=[1], use_cache=False)
        assert calls == []
        capture(tiny_lm, texts, layers=[tiny_lm.n_layers - 1], use_cache=False)
        assert calls
    finally:
        handle.remove()


def test_one_pass_pair_equals_two_passes(tiny_lm, texts):
    plan = random_plan(tiny_lm, layer=1)
    pair = capture_pair(tiny_lm, texts, plan, use_cache=False)
    original = capture(tiny_lm, texts, use_cache=False)
    edited = capture(tiny_lm, texts, plan=plan, use_cache=False)
    for layer in pair.layers:
        assert torch.allclose(pair.original[layer], original[layer], atol=1e-5)
        assert torch.allclose(pair.edited[layer], edited[layer], atol=1e-5)
    assert torch.allclose(pair.edited[0], pair.original[0], atol=1e-6)  # before the edited block
    assert (pair.edited[1] - pair.original[1]).abs().max() > 1e-3  # at and after it
    assert (pair.edited[3] - pair.original[3]).abs().max() > 1e-3


def test_no_edit_means_edited_is_original(tiny_lm, texts):
    pair = capture_pair(tiny_lm, texts, None, layers=[2])
    assert pair.edited is pair.original
    assert plan_hash(None) == plan_hash(RoutingPlan()) == "none"


def test_plan_hash_sees_every_part_of_an_edit(tiny_lm, texts):
    """MRP plans carry offsets, a position-0 rule or a stream projection and no deltas: each must
    hash apart (the analysis cache and its "no edit" shortcut key on this hash)."""
    d = tiny_lm.hidden_size
    q = orthonormal_rows(torch.randn(2, d, generator=torch.Generator().manual_seed(0)))
    mu = torch.ones(d)
    plans = [None, RoutingPlan(projections={1: q}), RoutingPlan(projections={1: q}, offsets={1: mu}),
             RoutingPlan(projections={1: q}, spare_first=True),
             RoutingPlan(stream=StreamProjection(q=q, offset=None, last=1)),
             RoutingPlan(stream=StreamProjection(q=q, offset=mu, last=1)),
             RoutingPlan(stream=StreamProjection(q=q, offset=None, last=2))]
    assert len({plan_hash(p) for p in plans}) == len(plans)
    pair = capture_pair(tiny_lm, texts, plans[4], layers=[1])  # a stream-only edit is an edit
    assert pair.edited is not pair.original and (pair.edited[1] - pair.original[1]).abs().max() > 1e-3


def test_cache_returns_the_same_object(tiny_lm, texts):
    clear_cache()
    a = capture(tiny_lm, texts, layers=[0, 1])
    b = capture(tiny_lm, texts, layers=[0, 1])
    assert a is b and CACHE.hits == 1
    plan = random_plan(tiny_lm)
    c = capture(tiny_lm, texts, layers=[0, 1], plan=plan)
    assert c is not a and not torch.equal(c[1], a[1])
    assert capture(tiny_lm, texts, layers=[0, 1], plan=random_plan(tiny_lm)) is c  # same content, same key
    assert capture(tiny_lm, texts, layers=[0, 1], pooling="last") is not a
    assert capture(tiny_lm, texts[:-1], layers=[0, 1]) is not a
    p1 = capture_pair(tiny_lm, texts, plan, layers=[1])
    assert capture_pair(tiny_lm, texts, plan, layers=[1]) is p1
    clear_cache()
    assert len(CACHE) == 0 and capture(tiny_lm, texts, layers=[0, 1]) is not a


def test_keys():
    assert texts_hash(["a", "b"]) != texts_hash(["ab"])
    p1 = RoutingPlan(deltas={1: torch.ones(2, 2)})
    p2 = RoutingPlan(deltas={1: torch.ones(2, 2) * 2})
    assert plan_hash(p1) == plan_hash(RoutingPlan(deltas={1: torch.ones(2, 2)})) != plan_hash(p2)


def test_bad_input(tiny_lm, texts):
    with pytest.raises(UserError, match="out of range"):
        capture(tiny_lm, texts, layers=[tiny_lm.n_layers])
    with pytest.raises(UserError, match="out of range"):
        resolve_layers(tiny_lm, [-tiny_lm.n_layers - 1])
    assert resolve_layers(tiny_lm, [-1, 0, 0]) == [0, tiny_lm.n_layers - 1]
    with pytest.raises(UserError, match="empty"):
        capture(tiny_lm, [])
    with pytest.raises(UserError, match="empty"):
        capture(tiny_lm, ["fine", "  "])
    with pytest.raises(UserError, match="too long"):
        capture(tiny_lm, ["word " * (tiny_lm.max_length + 10)])
    with pytest.raises(UserError, match="pooling"):
        capture(tiny_lm, texts, pooling="max")


def test_cache_is_bounded_by_bytes():
    from unlearnviz.analysis.activations import LRUCache

    cache = LRUCache(max_entries=10, max_bytes=3 * 400)
    for i in range(5):
        cache.get_or_compute(("k", i), lambda: {0: torch.zeros(100)})  # 400 bytes each
    assert len(cache) == 3 and cache.bytes == 1200
    big = cache.get_or_compute(("big",), lambda: torch.zeros(1000))
    assert big.numel() == 1000 and len(cache) == 3  # returned, not kept


def test_cancelled_analysis_keeps_nothing(tiny_lm, tiny_data):
    """A cancel stops the analysis between batches (Cancelled) before anything is cached; the
    next, uncancelled run computes the full result and equals a fresh one."""
    from unlearnviz.analysis.activations import clear_cache, stoppable
    from unlearnviz.analysis.importance import importance
    from unlearnviz.methods.base import Cancelled

    clear_cache()
    calls = []

    def stop_on_second_batch() -> bool:
        calls.append(1)
        return len(calls) >= 2

    with stoppable(stop_on_second_batch), pytest.raises(Cancelled, match="nothing was kept"):
        importance(tiny_lm, tiny_data, batch_size=8)
    assert len(calls) == 2  # it ran one batch, then stopped
    after = importance(tiny_lm, tiny_data, batch_size=8)
    clear_cache()
    fresh = importance(tiny_lm, tiny_data, batch_size=8)
    assert torch.allclose(after.i_norm, fresh.i_norm) and after.v_f.shape == fresh.v_f.shape
    with stoppable(lambda: False):  # a flag that is never set changes nothing
        assert torch.allclose(importance(tiny_lm, tiny_data, batch_size=8).i_norm, fresh.i_norm)
