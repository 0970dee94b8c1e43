"""Per-call edit routing: deltas, row masks, projections, captured block windows, early stop.

Every family is checked on a tiny random-weight model; the base weights must never change.
"""

from __future__ import annotations

import threading

import pytest
import torch
from tiny_models import FAMILIES, HIDDEN, LAYERS, byte_tokenizer, one_thread, prompt_batch, tiny_model
from torch import nn

from unlearnviz.model import RoutingPlan, StopForward, wrap_model
from unlearnviz.model.adapter import ArchitectureAdapter, is_conv1d, linear_weight
from unlearnviz.model.routing import (
    StreamProjection,
    content_hash_uncached,
    orthonormal_rows,
    placed,
    plan_content_hash,
    run_block_window,
)

ATOL = 1e-5
TEXTS = ["The capital of France is", "Hi"]  # different lengths: row 1 is padded

_CACHE: dict[str, tuple] = {}

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


@pytest.fixture(params=list(FAMILIES))
def lm(request):
    """(LoadedModel, fingerprint at wrap time), one per family for the whole module."""
    family = request.param
    if family not in _CACHE:
        loaded = wrap_model(tiny_model(family), byte_tokenizer(), name=f"tiny-{family}")
        _CACHE[family] = (loaded, loaded.fingerprint())
    loaded, fp = _CACHE[family]
    yield loaded
    # (g) whatever a test routed through the hooks, the base weights are untouched
    assert loaded.fingerprint() == fp
    assert all(not p.requires_grad for p in loaded.model.parameters())


def _logits(lm, ids, mask=None, plan=None):
    with torch.no_grad(), lm.router.apply(plan):
        return lm.model(input_ids=ids, attention_mask=mask).logits


def _put(store: dict, key):
    """A callback storing its argument (capture) or its (args, kwargs) (block_input_hook)."""
    return lambda *v: store.__setitem__(key, v[0] if len(v) == 1 else v)


def _batch(lm, texts=TEXTS):
    return prompt_batch(lm.tokenizer, texts)


def _random_delta(lm, layer, scale=0.5, seed=1):
    w = linear_weight(lm.adapter.mlp_out(layer))
    g = torch.Generator().manual_seed(seed)
    return torch.randn(w.shape, generator=g) * scale


def _plain_copy(lm) -> nn.Module:
    """A fresh, hook-free model of the same family with the same weights."""
    plain = tiny_model(lm.adapter.family)
    plain.load_state_dict(lm.model.state_dict())
    return plain


def test_no_plan_equals_plain_model(lm):
    ids, mask = _batch(lm)
    plain = _plain_copy(lm)
    with torch.no_grad():
        ref = plain(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(_logits(lm, ids, mask), ref)
    assert torch.equal(_logits(lm, ids, mask, plan=RoutingPlan()), ref)


@pytest.mark.parametrize("layer", [0, LAYERS - 1])
def test_delta_equals_editing_a_copy(lm, layer):
    ids, mask = _batch(lm)
    delta = _random_delta(lm, layer)
    base = _logits(lm, ids, mask)
    routed = _logits(lm, ids, mask, RoutingPlan(deltas={layer: delta}))
    assert (routed - base).abs().max() > 1e-3

    edited = _plain_copy(lm)
    module = ArchitectureAdapter.for_model(edited).mlp_out(layer)
    with torch.no_grad():
        module.weight += delta.T if is_conv1d(module) else delta
        ref = edited(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(routed, ref, atol=ATOL, rtol=0)


def test_rows_mask_edits_only_the_named_rows(lm):
    ids, mask = _batch(lm, [TEXTS[0], TEXTS[0]])
    plan = RoutingPlan(deltas={0: _random_delta(lm, 0)}, rows=torch.tensor([0.0, 1.0]))
    base = _logits(lm, ids, mask)
    both = _logits(lm, ids, mask, plan)
    torch.testing.assert_close(both[0], base[0], atol=ATOL, rtol=0)
    assert (both[1] - base[1]).abs().max() > 1e-3
    # row 1 equals the edit applied to every row
    every = _logits(lm, ids, mask, RoutingPlan(deltas=plan.deltas))
    torch.testing.assert_close(both[1], every[1], atol=ATOL, rtol=0)
    # a bool mask means the same
    as_bool = _logits(lm, ids, mask, RoutingPlan(deltas=plan.deltas, rows=torch.tensor([False, True])))
    torch.testing.assert_close(as_bool, both, atol=0, rtol=0)


def test_projection_removes_the_directions(lm):
    ids, mask = _batch(lm)
    g = torch.Generator().manual_seed(3)
    q = orthonormal_rows(torch.randn(3, HIDDEN, generator=g))
    assert q.shape == (3, HIDDEN)
    torch.testing.assert_close(q @ q.T, torch.eye(3), atol=1e-5, rtol=0)
    seen = {}
    plan = RoutingPlan(projections={1: q}, capture={1: lambda h: seen.__setitem__(1, h)})
    base = _logits(lm, ids, mask)
    edited = _logits(lm, ids, mask, plan)
    h = seen[1]
    assert h.shape[-1] == HIDDEN
    assert (h @ q.T).abs().max() < 1e-4 * max(1.0, float(h.abs().max()))
    assert (edited - base).abs().max() > 1e-4
    # rows: only row 1 is projected
    seen.clear()
    _logits(lm, ids, mask, RoutingPlan(projections={1: q}, rows=torch.tensor([0.0, 1.0]),
                                       capture={1: lambda h: seen.__setitem__(1, h)}))
    assert (seen[1][1] @ q.T).abs().max() < 1e-4 * max(1.0, float(seen[1].abs().max()))
    assert (seen[1][0] @ q.T).abs().max() > 1e-3


def test_projection_in_another_dtype_is_applied(lm):
    ids, mask = _batch(lm)
    q = orthonormal_rows(torch.randn(2, HIDDEN)).to(torch.bfloat16)
    seen = {}
    _logits(lm, ids, mask, RoutingPlan(projections={0: q}, capture={0: lambda h: seen.__setitem__(0, h)}))
    assert (seen[0] @ q.float().T).abs().max() < 0.05 * float(seen[0].abs().max())


def _random_stream(last: int, seed: int = 5, rank: int = 3) -> StreamProjection:
    g = torch.Generator().manual_seed(seed)
    return StreamProjection(q=orthonormal_rows(torch.randn(rank, HIDDEN, generator=g)),
                            offset=torch.randn(HIDDEN, generator=g), last=last)


def test_stream_projection_empties_the_subspace_up_to_last(lm):
    """Every block output <= last has the constant component μQᵀ along Q (embedding and every
    attention/MLP write projected); the first block after ``last`` writes into Q again. Only
    the named rows are edited."""
    if lm.adapter.stream_unsupported():
        assert lm.adapter.family in ("gemma2", "gemma3_text")  # post-norms after the writes
        return
    ids, mask = _batch(lm)
    s = _random_stream(last=1)
    seen: dict = {}
    plan = RoutingPlan(stream=s, capture={k: _put(seen, k) for k in range(LAYERS)})
    base = _logits(lm, ids, mask)
    edited = _logits(lm, ids, mask, plan)
    keep = mask.bool()
    for layer in (0, 1):
        along = ((seen[layer] - s.offset) @ s.q.T)[keep]
        assert along.abs().max() < 1e-4 * max(1.0, float(seen[layer].abs().max())), layer
    assert ((seen[2] - s.offset) @ s.q.T)[keep].abs().max() > 1e-3
    assert (edited - base).abs().max() > 1e-4
    rows = _logits(lm, ids, mask, RoutingPlan(stream=s, rows=torch.tensor([0.0, 1.0])))
    torch.testing.assert_close(rows[0], base[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(rows[1], edited[1], atol=ATOL, rtol=0)


def test_merged_streams_take_the_union_the_deeper_last_and_the_first_offset():
    a, b = _random_stream(last=1, seed=1, rank=2), _random_stream(last=2, seed=2, rank=2)
    m = RoutingPlan(stream=a).merged(RoutingPlan(stream=b)).stream
    assert m.q.shape == (4, HIDDEN) and m.last == 2 and m.offset is a.offset
    assert RoutingPlan(stream=a).merged(RoutingPlan()).stream is a
    assert RoutingPlan().merged(RoutingPlan(stream=b)).stream is b


def _capture_window(lm, ids, mask, start, stop, use_cache):
    """Block inputs of start..stop and the full model's hidden states, in one forward."""
    store: dict = {}

    def grab(layer):
        def fn(args, kwargs):
            if layer == start:
                store["h"] = args[0] if args else kwargs["hidden_states"]
            store.setdefault("kw", {})[layer] = dict(kwargs)
        return fn

    plan = RoutingPlan(block_input_hook={layer: grab(layer) for layer in range(start, stop + 1)})
    kw = {} if use_cache is None else {"use_cache": use_cache}
    with torch.no_grad(), lm.router.apply(plan):
        out = lm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True, **kw)
    return store["h"], store["kw"], out.hidden_states


@pytest.mark.parametrize("start,stop", [(0, 1), (1, 1)])
@pytest.mark.parametrize("use_cache", [None, False])
def test_run_block_window_reproduces_the_model(lm, start, stop, use_cache):
    ids, mask = _batch(lm)
    assert mask[1].min() == 0  # the batch really is padded
    hidden, kwargs, states = _capture_window(lm, ids, mask, start, stop, use_cache)
    # hidden_states[i] is block i-1's output, except the last one (after the final norm)
    assert stop + 1 < len(states) - 1
    torch.testing.assert_close(hidden, states[start], atol=ATOL, rtol=0)
    with torch.no_grad():
        out = run_block_window(lm.adapter, start, stop, hidden, kwargs)
    torch.testing.assert_close(out, states[stop + 1], atol=ATOL, rtol=0)
    with torch.no_grad():  # replaying twice gives the same (no KV cache grows underneath)
        again = run_block_window(lm.adapter, start, stop, hidden, kwargs)
    torch.testing.assert_close(again, out, atol=0, rtol=0)


def test_run_block_window_applies_the_active_plan(lm):
    ids, mask = _batch(lm)
    hidden, kwargs, _ = _capture_window(lm, ids, mask, 0, 1, False)
    plan = RoutingPlan(deltas={1: _random_delta(lm, 1)})
    seen = {}
    full = RoutingPlan(deltas=plan.deltas, capture={1: lambda h: seen.__setitem__(1, h)})
    _logits(lm, ids, mask, full)
    with torch.no_grad(), lm.router.apply(plan):
        out = run_block_window(lm.adapter, 0, 1, hidden, kwargs)
    torch.testing.assert_close(out, seen[1], atol=ATOL, rtol=0)


def test_run_block_window_is_differentiable_in_the_delta(lm):
    ids, mask = _batch(lm)
    hidden, kwargs, _ = _capture_window(lm, ids, mask, 0, 1, False)
    delta = torch.zeros_like(_random_delta(lm, 0), requires_grad=True)
    with lm.router.apply(RoutingPlan(deltas={0: delta})):
        out = run_block_window(lm.adapter, 0, 1, hidden, kwargs)
    out.pow(2).mean().backward()
    assert delta.grad is not None and delta.grad.abs().sum() > 0
    assert all(p.grad is None for p in lm.model.parameters())


def test_stop_after_stops_early(lm):
    ids, mask = _batch(lm)
    seen: dict[int, torch.Tensor] = {}
    plan = RoutingPlan(capture={i: _put(seen, i) for i in range(LAYERS)},
                       stop_after=0)
    with torch.no_grad(), lm.router.apply(plan), pytest.raises(StopForward):
        lm.model(input_ids=ids, attention_mask=mask)
    assert list(seen) == [0]
    with torch.no_grad(), lm.router.apply(RoutingPlan(stop_after=LAYERS - 1)), pytest.raises(StopForward):
        lm.model(input_ids=ids, attention_mask=mask)
    # the model still works normally afterwards
    assert torch.isfinite(_logits(lm, ids, mask)).all()


def test_plan_is_per_thread(lm):
    ids, mask = _batch(lm)
    base = _logits(lm, ids, mask)
    plan = RoutingPlan(deltas={0: _random_delta(lm, 0)})
    other: dict = {}
    entered, done = threading.Event(), threading.Event()

    def plain_in_thread():
        entered.wait(10)
        other["logits"] = _logits(lm, ids, mask)
        done.set()

    t = threading.Thread(target=plain_in_thread)
    t.start()
    with torch.no_grad(), lm.router.apply(plan):
        entered.set()
        done.wait(30)
        edited = lm.model(input_ids=ids, attention_mask=mask).logits
    t.join()
    assert torch.equal(other["logits"], base)
    assert (edited - base).abs().max() > 1e-3


def test_merged_plans_sum_deltas_and_stack_projections():
    a = RoutingPlan(deltas={0: torch.ones(2, 2)}, projections={1: torch.tensor([[1.0, 0, 0]])})
    b = RoutingPlan(deltas={0: torch.ones(2, 2), 2: torch.zeros(2, 2)},
                    projections={1: torch.tensor([[0.0, 1, 0]])}, stop_after=3)
    m = a.merged(b)
    assert torch.equal(m.deltas[0], 2 * torch.ones(2, 2)) and 2 in m.deltas
    assert m.projections[1].shape == (2, 3) and m.stop_after == 3
    assert torch.equal(a.deltas[0], torch.ones(2, 2))  # inputs untouched


def test_orthonormal_rows_drops_dependent_and_zero_rows():
    d = torch.tensor([[1.0, 0, 0, 0], [2.0, 0, 0, 0], [0, 0, 0, 0], [0, 1.0, 1.0, 0]])
    q = orthonormal_rows(d)
    assert q.shape == (2, 4)  # QR alone kept only one row here: [0, 1, 1, 0] was lost
    torch.testing.assert_close(q @ q.T, torch.eye(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(d @ q.T @ q, d, atol=1e-6, rtol=0)  # spans every given row
    assert orthonormal_rows(torch.zeros(2, 4)).shape == (0, 4)
    # a direction already in the span of earlier rows, up to float32 noise, adds nothing
    g = torch.Generator().manual_seed(0)
    base = orthonormal_rows(torch.randn(3, 64, generator=g) * 800)
    mix = torch.randn(2, 3, generator=g) @ base
    assert orthonormal_rows(torch.cat([base, mix])).shape == (3, 64)
    # a zero first row does not hide the rows after it
    assert orthonormal_rows(torch.cat([torch.zeros(1, 64), base])).shape == (3, 64)


def test_orthonormal_rows_is_differentiable():
    w = torch.randn(3, 8, requires_grad=True)
    q = orthonormal_rows(w)
    (q.sum() ** 2).backward()
    assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0



def _reference_basis(d: torch.Tensor) -> torch.Tensor:
    """The slow oracle: Gram-Schmidt in float64 over the rows in order, with the rank tolerance
    orthonormal_rows uses (1e-5 of the largest row norm)."""
    d64 = d.double()
    tol = 1e-5 * float(d64.norm(dim=1).max())
    basis: list[torch.Tensor] = []
    for row in d64:
        r = row
        for _ in range(2):
            for b in basis:
                r = r - (b @ r) * b
        if float(r.norm()) > tol:
            basis.append(r / r.norm())
    return torch.stack(basis)


def test_orthonormal_rows_spans_what_the_float64_oracle_spans():
    """The rank is decided in float64 on the CPU (MPS has no float64), so every device gets the
    basis the CPU gets: the same row space, row by row, as the oracle's."""
    g = torch.Generator().manual_seed(4)
    base = torch.randn(4, 48, generator=g)
    d = torch.cat([base[:2], base[:1] * 3 + base[1:2], torch.zeros(1, 48), base[2:]])
    q = orthonormal_rows(d)
    ref = _reference_basis(d).float()
    assert q.shape == ref.shape == (4, 48)
    for i in range(1, 5):  # rows 0..i-1 of each span the same space
        torch.testing.assert_close(q[:i].T @ q[:i], ref[:i].T @ ref[:i], atol=1e-5, rtol=0)


@pytest.mark.gpu  # an accelerator test: the only kind CI may skip
@pytest.mark.skipif(not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
                    reason="needs Apple MPS")
def test_orthonormal_rows_on_mps_equals_the_cpu_basis():
    d = torch.randn(5, 32)
    d[3] = d[0] + d[1]
    q = orthonormal_rows(d.to("mps"))
    assert q.device.type == "mps"
    torch.testing.assert_close(q.cpu().T @ q.cpu(), orthonormal_rows(d).T @ orthonormal_rows(d), atol=1e-4, rtol=0)


# --- placing an edit's tensors where each module computes --------------------------------------

def test_placed_copies_once_and_sees_in_place_writes():
    t = torch.randn(4, 3)
    assert placed(t, "cpu") is t  # already there: no copy
    a = placed(t, "cpu", torch.float64)
    assert a.dtype == torch.float64 and torch.equal(a, t.double())
    assert placed(t, "cpu", torch.float64) is a  # the second use reads the kept copy
    t.mul_(2)  # an in-place write is seen
    b = placed(t, "cpu", torch.float64)
    assert b is not a and torch.equal(b, t.double())
    u = torch.randn(4, 3, requires_grad=True)  # autograd must see the copy
    placed(u, "cpu", torch.float64).sum().backward()
    assert torch.equal(u.grad, torch.ones(4, 3))


def test_deltas_reach_each_block_in_the_modules_dtype(lm):
    """A delta held in bfloat16 acts on a float32 model as its float32 value does: the router
    casts the delta to the module's dtype, never the module's weights to the delta's (W + Δ
    was computed with W rounded to bfloat16, and x·Δᵀ with x rounded)."""
    ids, mask = _batch(lm)
    delta = _random_delta(lm, 1).to(torch.bfloat16)
    want = _logits(lm, ids, mask, RoutingPlan(deltas={1: delta.float()}))
    for rows in (None, torch.tensor([1.0, 1.0])):
        got = _logits(lm, ids, mask, RoutingPlan(deltas={1: delta}, rows=rows))
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


# --- the plan's content hash, memoised -----------------------------------------------------------

class _CountingTensor(torch.Tensor):
    """A tensor that counts how often its data is read back through ``detach``."""

    reads = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.detach:
            _CountingTensor.reads += 1
        return super().__torch_function__(func, types, args, kwargs or {})


def _hash_plan() -> RoutingPlan:
    g = torch.Generator().manual_seed(7)
    counted = {k: torch.randn(4, 6, generator=g).as_subclass(_CountingTensor) for k in (0, 2)}
    return RoutingPlan(deltas=counted, projections={1: orthonormal_rows(torch.randn(2, 6, generator=g))},
                       offsets={1: torch.randn(6, generator=g)}, stream=_random_stream(last=1), spare_first=True)


def test_plan_content_hash_is_memoised_on_the_plan():
    plan = _hash_plan()
    _CountingTensor.reads = 0
    first = plan_content_hash(plan)
    assert _CountingTensor.reads == 2  # each delta read once
    assert first == content_hash_uncached(_hash_plan())  # the same value as computed afresh
    _CountingTensor.reads = 0
    assert plan_content_hash(plan) == first
    assert _CountingTensor.reads == 0  # the second lookup reads no tensor


def test_plan_content_hash_sees_changes_to_the_plan():
    plan = _hash_plan()
    first = plan_content_hash(plan)
    with torch.no_grad():
        plan.deltas[0].add_(1.0)  # an in-place write to a delta
    second = plan_content_hash(plan)
    assert second != first and second == content_hash_uncached(plan)
    plan.deltas[2] = plan.deltas[2].clone()  # a new tensor, same content: same hash
    assert plan_content_hash(plan) == second
    plan.deltas[2] = plan.deltas[2] * 2  # another tensor, other content
    assert plan_content_hash(plan) not in (first, second)
    assert plan_content_hash(plan) == content_hash_uncached(plan)
    plan.spare_first = False
    assert plan_content_hash(plan) == content_hash_uncached(plan)
    assert plan_content_hash(RoutingPlan()) == plan_content_hash(None) == "none"


# --- bookkeeping: one set of hooks per model, plans never leak across models -----------------

def test_wrapping_twice_does_not_apply_edits_twice():
    model = tiny_model("llama")
    tok = byte_tokenizer()
    first = wrap_model(model, tok)
    ids, mask = prompt_batch(tok, TEXTS)
    delta = _random_delta(first, 0)
    once = _logits(first, ids, mask, RoutingPlan(deltas={0: delta}))
    second = wrap_model(model, tok)
    for lm in (first, second):  # either router applies the plan exactly once
        torch.testing.assert_close(_logits(lm, ids, mask, RoutingPlan(deltas={0: delta})), once,
                                   atol=ATOL, rtol=0)
    twice = _logits(second, ids, mask, RoutingPlan(deltas={0: 2 * delta}))
    assert (twice - once).abs().max() > 1e-3


def test_a_plan_for_one_model_does_not_reach_another():
    tok = byte_tokenizer()
    a, b = wrap_model(tiny_model("llama", seed=0), tok), wrap_model(tiny_model("llama", seed=1), tok)
    ids, mask = prompt_batch(tok, TEXTS)
    base_b = _logits(b, ids, mask)
    with torch.no_grad(), a.router.apply(RoutingPlan(deltas={0: _random_delta(a, 0)}, stop_after=0)):
        assert torch.equal(b.model(input_ids=ids, attention_mask=mask).logits, base_b)
        # nested plans for two models coexist
        with b.router.apply(RoutingPlan(stop_after=0)), pytest.raises(StopForward):
            b.model(input_ids=ids, attention_mask=mask)


def test_a_deep_copy_of_a_wrapped_model_stays_plain():
    import copy

    tok = byte_tokenizer()
    lm = wrap_model(tiny_model("llama"), tok)
    twin = copy.deepcopy(lm.model)  # carries the same hook functions
    ids, mask = prompt_batch(tok, TEXTS)
    base = _logits(lm, ids, mask)
    plan = RoutingPlan(deltas={0: _random_delta(lm, 0)}, stop_after=0)
    with torch.no_grad(), lm.router.apply(plan):
        assert torch.equal(twin(input_ids=ids, attention_mask=mask).logits, base)
    # and wrapping the copy gives it its own, working router
    twin_lm = wrap_model(twin, tok)
    delta = _random_delta(lm, 0)
    torch.testing.assert_close(_logits(twin_lm, ids, mask, RoutingPlan(deltas={0: delta})),
                               _logits(lm, ids, mask, RoutingPlan(deltas={0: delta})), atol=ATOL, rtol=0)


def test_router_remove_detaches_the_hooks():
    tok = byte_tokenizer()
    lm = wrap_model(tiny_model("llama"), tok)
    ids, mask = prompt_batch(tok, TEXTS)
    base = _logits(lm, ids, mask)
    lm.router.remove()
    assert torch.equal(_logits(lm, ids, mask, RoutingPlan(deltas={0: _random_delta(lm, 0)})), base)


# --- blocks that return tuples (older transformers) --------------------------------------------

class _Block(nn.Module):
    def __init__(self, d, as_tuple):
        super().__init__()
        self.as_tuple = as_tuple
        self.norm = nn.LayerNorm(d)
        self.self_attn = nn.Module()
        self.self_attn.o_proj = nn.Linear(d, d)
        self.mlp = nn.Module()
        self.mlp.up_proj, self.mlp.down_proj = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        x = self.norm(hidden_states)
        x = self.self_attn.o_proj(x) * attention_mask[..., None]
        h = hidden_states + x + self.mlp.down_proj(torch.tanh(self.mlp.up_proj(x)))
        return (h, "cache-placeholder") if self.as_tuple else h


class _ToyLM(nn.Module):
    """A llama-shaped toy whose blocks return ``(hidden, cache)`` tuples."""

    def __init__(self, as_tuple=True, d=HIDDEN, vocab=20, layers=3):
        super().__init__()
        torch.manual_seed(0)
        self.config = type("Cfg", (), {"model_type": "toy"})()
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(vocab, d)
        self.model.layers = nn.ModuleList([_Block(d, as_tuple) for _ in range(layers)])
        self.model.norm = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids, attention_mask):
        h = self.model.embed_tokens(input_ids)
        states = [h]
        for block in self.model.layers:
            out = block(h, attention_mask=attention_mask.float())
            h = out[0] if isinstance(out, tuple) else out
            states.append(h)
        return self.lm_head(self.model.norm(h)), states


@pytest.mark.parametrize("as_tuple", [True, False])
def test_hooks_handle_tuple_and_tensor_block_outputs(as_tuple):
    model = _ToyLM(as_tuple=as_tuple).eval()
    lm = wrap_model(model, None, name="toy")
    fp = lm.fingerprint()
    assert lm.adapter.family == "toy" and lm.adapter.n_layers == 3
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])
    with torch.no_grad():
        base, states = model(ids, mask)
    q = orthonormal_rows(torch.randn(2, HIDDEN))
    seen, inputs = {}, {}
    plan = RoutingPlan(deltas={0: torch.randn(HIDDEN, 2 * HIDDEN)}, projections={1: q},
                       capture={1: lambda h: seen.__setitem__(1, h)},
                       block_input_hook={i: _put(inputs, i) for i in (1, 2)})
    with torch.no_grad(), lm.router.apply(plan):
        edited, _ = model(ids, mask)
    assert isinstance(seen[1], torch.Tensor)
    assert (seen[1] @ q.T).abs().max() < 1e-4 * float(seen[1].abs().max())
    assert (edited - base).abs().max() > 1e-3
    with torch.no_grad(), lm.router.apply(RoutingPlan(stop_after=1)), pytest.raises(StopForward):
        model(ids, mask)
    # replay blocks 1..2 from the captured inputs, without a plan: the model's own block-2 output
    inputs.clear()
    with torch.no_grad(), lm.router.apply(RoutingPlan(block_input_hook={i: _put(inputs, i) for i in (1, 2)})):
        model(ids, mask)
    with torch.no_grad():
        out = run_block_window(lm.adapter, 1, 2, inputs[1][0][0], {i: inputs[i][1] for i in (1, 2)})
    torch.testing.assert_close(out, states[3], atol=ATOL, rtol=0)
    assert lm.fingerprint() == fp


# ----- parameter deltas and LoRA factors (imported checkpoints) -----

def _all_param_deltas(lm, scale=0.05, seed=3, only=None) -> dict[str, torch.Tensor]:
    """A random delta for every parameter (a full fine-tune), or for the names matching ``only``."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in lm.model.named_parameters():
        if only is None or only(name):
            out[name] = torch.randn(p.shape, generator=g) * scale * (p.detach().abs().mean() + 1e-3)
    return out


def _copy_with(lm, weights: dict[str, torch.Tensor], lora: dict | None = None) -> nn.Module:
    """A hook-free copy with parameter + delta written into it (and B·A added for LoRA)."""
    edited = _plain_copy(lm)
    params = dict(edited.named_parameters())
    with torch.no_grad():
        for name, d in weights.items():
            params[name] += d
        for name, (a, b) in (lora or {}).items():
            params[f"{name}.weight"] += b @ a
    return edited


def test_parameter_deltas_of_every_parameter_equal_a_changed_copy(lm):
    ids, mask = _batch(lm)
    weights = _all_param_deltas(lm)
    routed = _logits(lm, ids, mask, RoutingPlan(weights=weights))
    with torch.no_grad():
        ref = _copy_with(lm, weights)(input_ids=ids, attention_mask=mask).logits
    assert (routed - _logits(lm, ids, mask)).abs().max() > 1e-3
    keep = mask.bool()
    torch.testing.assert_close(routed[keep], ref[keep], atol=ATOL, rtol=1e-5)


def test_parameter_deltas_reach_only_the_chosen_rows(lm):
    ids, mask = _batch(lm)
    weights = _all_param_deltas(lm, seed=4)
    base = _logits(lm, ids, mask)
    full = _logits(lm, ids, mask, RoutingPlan(weights=weights))
    mixed = _logits(lm, ids, mask, RoutingPlan(weights=weights, rows=torch.tensor([0.0, 1.0])))
    keep = mask.bool()
    torch.testing.assert_close(mixed[0][keep[0]], base[0][keep[0]], atol=ATOL, rtol=0)
    torch.testing.assert_close(mixed[1][keep[1]], full[1][keep[1]], atol=ATOL, rtol=1e-5)


def test_lora_factors_equal_the_merged_weights_and_stack_with_deltas(lm):
    ids, mask = _batch(lm)
    g = torch.Generator().manual_seed(7)
    lora = {}
    for name, module in lm.model.named_modules():
        if isinstance(module, nn.Linear) and name.endswith(("q_proj", "down_proj", "dense_4h_to_h", "query_key_value")):
            a = torch.randn(2, module.in_features, generator=g) * 0.1
            b = torch.randn(module.out_features, 2, generator=g) * 0.1
            lora[name] = (a, b)
    if not lora:  # GPT-2's Conv1D layers take no LoRA factors (an import folds them dense): refused
        conv = next(n for n, m in lm.model.named_modules() if n.endswith("attn.c_attn"))
        with pytest.raises(Exception, match="not a linear layer"):
            _logits(lm, ids, mask, RoutingPlan(lora={conv: (torch.zeros(1, HIDDEN), torch.zeros(3 * HIDDEN, 1))}))
        return
    layer = LAYERS - 1
    delta = _random_delta(lm, layer, scale=0.2)
    plan = RoutingPlan(lora=lora).merged(RoutingPlan(deltas={layer: delta}))
    routed = _logits(lm, ids, mask, plan)
    edited = _copy_with(lm, {}, lora)
    module = ArchitectureAdapter.for_model(edited).mlp_out(layer)
    with torch.no_grad():
        module.weight += delta
        ref = edited(input_ids=ids, attention_mask=mask).logits
    keep = mask.bool()
    torch.testing.assert_close(routed[keep], ref[keep], atol=ATOL, rtol=1e-5)


def test_a_tied_embedding_delta_reaches_the_unembedding_too():
    loaded = wrap_model(tiny_model("gemma"), byte_tokenizer(), name="tiny-gemma-tied")
    embed, unembed = loaded.adapter.embed, loaded.adapter.unembed
    assert embed.weight is unembed.weight
    name = next(n for n, p in loaded.model.named_parameters() if p is embed.weight)
    owners = loaded.router.owners()[name]
    assert len(owners) == 2  # the embedding and the unembedding read one matrix
    ids, mask = prompt_batch(loaded.tokenizer, TEXTS)
    d = torch.randn(embed.weight.shape, generator=torch.Generator().manual_seed(2)) * 0.05
    routed = _logits(loaded, ids, mask, RoutingPlan(weights={name: d}))
    edited = tiny_model("gemma")
    edited.load_state_dict(loaded.model.state_dict())
    with torch.no_grad():
        edited.get_input_embeddings().weight += d  # tied: the unembedding changes with it
        ref = edited(input_ids=ids, attention_mask=mask).logits
    keep = mask.bool()
    torch.testing.assert_close(routed[keep], ref[keep], atol=ATOL, rtol=1e-5)


def test_parameter_deltas_sum_when_merged_and_change_the_content_hash():
    a = {"x.weight": torch.ones(2, 2)}
    b = {"x.weight": torch.full((2, 2), 2.0), "y.bias": torch.ones(2)}
    merged = RoutingPlan(weights=a).merged(RoutingPlan(weights=b))
    assert torch.equal(merged.weights["x.weight"], torch.full((2, 2), 3.0)) and "y.bias" in merged.weights
    la = {"m": (torch.ones(1, 3), torch.ones(4, 1))}
    lb = {"m": (torch.full((2, 3), 2.0), torch.ones(4, 2))}
    joined = RoutingPlan(lora=la).merged(RoutingPlan(lora=lb)).lora["m"]
    assert joined[0].shape == (3, 3) and joined[1].shape == (4, 3)
    assert torch.equal(joined[1] @ joined[0], la["m"][1] @ la["m"][0] + lb["m"][1] @ lb["m"][0])
    assert not RoutingPlan(weights=a).is_empty() and RoutingPlan().is_empty()
    h1, h2 = plan_content_hash(RoutingPlan(weights=a)), plan_content_hash(RoutingPlan(weights=b))
    assert "none" not in (h1, h2) and h1 != h2
    assert plan_content_hash(RoutingPlan(lora=la)) == content_hash_uncached(RoutingPlan(lora=la)) != "none"


def test_edited_layers_name_the_blocks_of_changed_parameters():
    plan = RoutingPlan(weights={"model.layers.2.self_attn.q_proj.weight": torch.zeros(1),
                                "model.embed_tokens.weight": torch.zeros(1)},
                       lora={"transformer.h.1.mlp.c_fc": (torch.zeros(1, 1), torch.zeros(1, 1))})
    assert plan.edited_layers() == [1, 2]


def test_an_unknown_parameter_or_lora_module_is_one_line(lm):
    ids, mask = _batch(lm)
    with pytest.raises(Exception, match="not a parameter of this model"):
        _logits(lm, ids, mask, RoutingPlan(weights={"no.such.weight": torch.zeros(1)}))
    with pytest.raises(Exception, match="not a linear layer"):
        _logits(lm, ids, mask, RoutingPlan(lora={"no.such": (torch.zeros(1, 1), torch.zeros(1, 1))}))


def test_a_norm_delta_never_swaps_the_shared_modules_weights(lm):
    """A delta of a module that is not a linear layer (the final norm) is routed by calling the
    module again with parameter + delta. That call once swapped the shared module's own parameters
    (``torch.func.functional_call``), so another session's thread running the base model meanwhile
    computed with this edit's weights (tests/test_soak.py saw the fingerprint change mid-run). Now
    the module keeps its weights throughout, and the routed output is still the edited copy's."""
    name, norm = next((n, m) for n, m in lm.model.named_modules()
                      if "norm" in type(m).__name__.lower() and isinstance(getattr(m, "weight", None), torch.Tensor)
                      and not list(m.children()))
    weight = norm.weight
    delta = torch.randn(weight.shape, generator=torch.Generator().manual_seed(3)) * 0.5
    seen: list[bool] = []
    handle = norm.register_forward_pre_hook(lambda *_: seen.append(norm.weight is weight))
    ids, mask = _batch(lm)
    try:
        base = _logits(lm, ids, mask)
        routed = _logits(lm, ids, mask, RoutingPlan(weights={f"{name}.weight": delta}))
    finally:
        handle.remove()
    assert len(seen) >= 3 and all(seen), seen  # the base call, the routed call and its second call
    assert (routed - base).abs().max() > 1e-3
    edited = _plain_copy(lm)
    with torch.no_grad():
        dict(edited.named_modules())[name].weight += delta
        ref = edited(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(routed, ref, atol=ATOL, rtol=0)


def test_a_norm_delta_routes_through_a_module_accelerate_has_hooked(lm):
    """With a device_map, accelerate wraps a module's ``forward`` in an instance attribute bound
    to the module itself (its device hook); the edited copy must run its own class forward with
    the edited parameters, not that bound wrapper (which reads the base module's weights)."""
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module, remove_hook_from_module

    name, norm = next((n, m) for n, m in lm.model.named_modules()
                      if "norm" in type(m).__name__.lower() and isinstance(getattr(m, "weight", None), torch.Tensor)
                      and not list(m.children()))
    delta = torch.randn(norm.weight.shape, generator=torch.Generator().manual_seed(4)) * 0.5
    ids, mask = _batch(lm)
    edited = _plain_copy(lm)
    with torch.no_grad():
        dict(edited.named_modules())[name].weight += delta
        ref = edited(input_ids=ids, attention_mask=mask).logits
    add_hook_to_module(norm, AlignDevicesHook(execution_device="cpu", io_same_device=True))
    try:
        routed = _logits(lm, ids, mask, RoutingPlan(weights={f"{name}.weight": delta}))
    finally:
        remove_hook_from_module(norm)
    torch.testing.assert_close(routed, ref, atol=ATOL, rtol=0)
