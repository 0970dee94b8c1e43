"""The window engine's memory: lazy captures of only the batches a fit reads, captures and joined
kwargs under byte bounds, recomputation that gives the very same losses, lazy batch lists."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from unlearnviz.data.batching import make_batches, tokenize_texts
from unlearnviz.methods import engine as engine_mod
from unlearnviz.methods import get_method, make_hparams
from unlearnviz.methods.engine import (
    ByteCache,
    LazyBatches,
    Subset,
    WindowEngine,
    step_order,
    used_batches,
    value_bytes,
    zero_delta,
)
from unlearnviz.methods.misdirection import prepare, train_misdirection
from unlearnviz.model.routing import RoutingPlan


def _big(data):
    """The tiny world with 400 forget and 648 retain texts (each text, then it joined to the next)."""
    def grow(texts):
        return texts + [f"{a} {b}" for a, b in zip(texts, texts[1:] + texts[:1])]

    return replace(data, forget_texts=grow(data.forget_texts), retain_texts=grow(data.retain_texts))


def _rmu(lm, **over):
    return make_hparams(get_method("rmu").hparams_cls, {"layer": 2, "window": 2, "steps": 3, "batch_size": 4,
                                                       "lr": 1e-2, "alpha": 100, **over})


def test_a_fit_captures_and_tokenises_only_the_batches_its_steps_use(tiny_lm, tiny_data):
    data = _big(tiny_data)
    hp = _rmu(tiny_lm)
    engine, fb, rb = prepare(tiny_lm, data, hp, None)
    uf, ur = used_batches(step_order(len(fb), len(rb), hp.steps, hp.seed))
    assert len(fb) == 100 and len(rb) > 100 and len(uf) + len(ur) <= 2 * hp.steps
    # prefetched before the first step: the batches the steps read, and only those
    assert engine.captured == len(uf) + len(ur)
    assert sorted(engine.cache.host_tier._items) == sorted([*uf, *(len(fb) + r for r in ur)])
    assert sorted(fb._kept) == uf and sorted(rb._kept) == ur  # nothing else was even tokenised
    target = torch.ones(tiny_lm.hidden_size)
    train_misdirection(tiny_lm, engine, fb, rb, hp, lambda i, frozen: (target.expand_as(frozen), None), "rmu",
                       None, None)
    assert engine.captured == len(uf) + len(ur) and engine.recomputed == 0
    # the whole fit (its mean-norm statistic included) reads the same batches
    edit = get_method("rmu").fit(tiny_lm, data, hp)
    assert edit.meta["captured"] == len(uf) + len(ur) and edit.meta["recomputed"] == 0


def test_an_engine_captures_a_batch_when_first_read(tiny_lm, tiny_data):
    data = _big(tiny_data)
    fb = LazyBatches(data.forget_texts, lambda texts: tokenize_texts(tiny_lm, texts, 32), 4, 0)
    eng = WindowEngine(tiny_lm, 1, 2, fb + fb)
    assert eng.captured == 0 and not fb._kept and len(eng.frozen) == 200
    with torch.no_grad():
        eng.output(7, None)
        assert torch.equal(eng.frozen[7], eng.output(7, None))
    assert eng.captured == 1 and list(fb._kept) == [7] and len(eng.cache.host_tier) == 1


@pytest.mark.parametrize("method", ["rmu", "srmu"])
def test_statistics_over_the_used_batches_are_the_corpus_ones_once_the_steps_cover_it(tiny_lm, tiny_data, method):
    """With more steps than batches every batch is read, in corpus order: the target's scale is
    the whole corpus's, as it was when every batch was captured up front."""
    from unlearnviz.methods.engine import mean_token_norm

    hp = make_hparams(get_method(method).hparams_cls, {"layer": 2, "window": 2, "steps": 30, "batch_size": 16})
    engine, fb, rb = prepare(tiny_lm, tiny_data, hp, None)
    assert hp.steps >= max(len(fb), len(rb))
    edit = get_method(method).fit(tiny_lm, tiny_data, hp)
    assert edit.meta["captured"] == len(fb) + len(rb)
    want = mean_token_norm([engine.frozen[i] for i in range(len(fb))], [fb[i] for i in range(len(fb))])
    assert edit.meta["mean_norm"] == want


@pytest.mark.parametrize("method,over", [("rmu", {}), ("srmu", {}), ("mrp", {"retain_loss": "kl"}),
                                         ("mrp", {"placement": "stream", "spare_first": False})])
def test_a_cache_too_small_to_hold_anything_recomputes_and_gives_the_same_losses(tiny_lm, tiny_data, method, over,
                                                                                 monkeypatch):
    """Captures pushed out (here: none ever kept, then two at a time) are recomputed on their
    next use, bit for bit: the losses equal the unbounded fit's exactly (CPU, one thread)."""
    spec = get_method(method)
    base = ({"layers": [1], "k": 4, "steps": 6, "batch_size": 8, **over} if method == "mrp"
            else {"layer": 2, "window": 2, "steps": 8, "batch_size": 8, "lr": 1e-2, "alpha": 100})
    hp = make_hparams(spec.hparams_cls, base)
    free = spec.fit(tiny_lm, tiny_data, hp)
    engine, fb, rb = prepare(tiny_lm, tiny_data, make_hparams(get_method("rmu").hparams_cls, {"layer": 2,
                                                                                            "batch_size": 8}), None)
    one = value_bytes(engine.capture(0))
    for budget in (one // 2, int(2.5 * one)):
        monkeypatch.setattr(engine_mod, "HOST_CACHE_MAX", budget)
        tight = spec.fit(tiny_lm, tiny_data, make_hparams(spec.hparams_cls, base))
        if method != "mrp":  # the prefetch stops before it would push a capture out (one too big: refused)
            e, _, _ = prepare(tiny_lm, tiny_data, make_hparams(spec.hparams_cls, base), None)
            assert e.stats()["dropped"] == (budget < one) and 1 <= e.captured <= max(1, budget // one)
        assert [r["loss"] for r in tight.meta["losses"]] == [r["loss"] for r in free.meta["losses"]], budget
        if method != "mrp":
            assert tight.meta["recomputed"] > 0 and tight.meta["cache_peak_bytes"] <= budget
            assert tight.meta["linear_first"]  # the MLP inputs count against the cache, not the corpus
            assert all(torch.equal(tight.deltas[k], free.deltas[k]) for k in free.deltas)
        else:
            for k, q in (free.projections or {"stream": free.stream.q}).items():
                got = tight.projections[k] if k != "stream" else tight.stream.q
                assert torch.equal(got, q)


def test_two_tiers_move_captures_down_and_back_and_give_the_same_outputs(tiny_lm, tiny_data):
    """A device tier (on a CPU: the bookkeeping of one, nothing is copied) in front of the CPU
    tier: captures pushed out of it move to the CPU tier and come back; the outputs are the
    unbounded engine's."""
    batches = make_batches(tokenize_texts(tiny_lm, tiny_data.forget_texts[:48], 32), 8, 0)
    free = WindowEngine(tiny_lm, 1, 2, batches)
    one = max(value_bytes(free.capture(i)) for i in range(len(batches)))
    tiered = WindowEngine(tiny_lm, 1, 2, batches, device_cache_bytes=int(2.5 * one), cache_bytes=int(2.5 * one))
    plan = RoutingPlan(deltas={layer: zero_delta(tiny_lm, layer).detach().normal_(0, 0.05) for layer in (1, 2)})
    # each batch, then the one two back (just moved to the CPU tier), then all again (recomputed)
    order = [k for i in range(len(batches)) for k in (i, i - 2) if k >= 0] + list(range(len(batches)))
    with torch.no_grad():
        for i in order:
            assert torch.equal(tiered.output(i, plan), free.output(i, plan))
            assert torch.equal(tiered.frozen[i], free.frozen[i])
    s = tiered.stats()
    assert s["moved_to_cpu"] > 0 and s["moved_to_device"] > 0 and s["recomputed"] > 0
    assert tiered.cache.device_tier.peak_bytes <= 2.5 * one and tiered.cache.host_tier.peak_bytes <= 2.5 * one
    assert tiered.captured == len(batches)


def test_the_join_cache_stays_under_its_byte_bound(tiny_lm, tiny_data, monkeypatch):
    monkeypatch.setattr(engine_mod, "JOIN_MAX_PADDING", 100.0)  # join every pair
    texts = tiny_data.forget_texts[:40]
    batches = make_batches(tokenize_texts(tiny_lm, texts, 32), 4, 0)
    free = WindowEngine(tiny_lm, 1, 2, batches)
    with torch.no_grad():
        free.output_pair(0, 1, None)
    one = value_bytes(free._joined[(0, 1)])
    assert one > 0
    bound = int(3.5 * (one + free._joined.overhead))
    eng = WindowEngine(tiny_lm, 1, 2, batches, join_cache_bytes=bound)
    pairs = [(i, j) for i in range(len(batches)) for j in range(len(batches)) if i != j]
    with torch.no_grad():
        for i, j in pairs:
            a, b = eng.output_pair(i, j, None)
            assert eng._joined.bytes <= bound
            want_a, want_b = eng.output(i, None), eng.output(j, None)
            assert torch.allclose(a[batches[i].attention_mask.bool()], want_a[batches[i].attention_mask.bool()],
                                  rtol=1e-4, atol=1e-5)
            assert b.shape == want_b.shape
    assert eng.joined_calls > 0 and 0 < len(eng._joined) < len(pairs) and eng._joined.peak_bytes <= bound


def test_byte_cache_pushes_out_the_least_recently_used_and_refuses_what_cannot_fit():
    c = ByteCache(1000, size=lambda v: v, overhead=0)
    assert c.put("a", 400) == [] and c.put("b", 400) == []
    assert c["a"] == 400  # a is now the more recent
    assert c.put("c", 400) == [("b", 400)] and "b" not in c and c.bytes == 800
    assert c.put("huge", 1001) == [("huge", 1001)] and "huge" not in c and c.bytes == 800
    assert c.peak_bytes == 800
    t = torch.zeros(4, 8)
    assert value_bytes({"x": t, "y": (t, t[:, :2]), "z": t.expand(3, 4, 8), "n": None}) == t.numel() * 4


def test_lazy_batches_are_the_eager_batches(tiny_lm, tiny_data):
    texts = tiny_data.forget_texts[:23]

    def encode(chunk):
        return tokenize_texts(tiny_lm, chunk, 16)

    eager = make_batches(encode(texts), 5, 0)
    lazy = LazyBatches(texts, encode, 5, 0)
    assert len(lazy) == len(eager) == 5
    for a, b in zip([lazy[4], lazy[-1], *lazy], [eager[4], eager[-1], *eager]):
        assert all(torch.equal(x, y) for x, y in zip((a.input_ids, a.attention_mask, a.loss_mask),
                                                     (b.input_ids, b.attention_mask, b.loss_mask)))
    both = lazy + eager
    assert len(both) == 10 and both[7] is eager[2] and len(both[3:8]) == 5 and both[3:8][4] is eager[2]
    assert list(Subset(both, [6, 0]))[0] is eager[1]
    with pytest.raises(IndexError):
        lazy[5]
