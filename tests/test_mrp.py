"""MRP's initialisation (unlearnviz.methods.mrp): streaming sufficient statistics against the
concatenate-every-token reference it replaces."""

from __future__ import annotations

import pytest
import torch

from unlearnviz.data.batching import make_batches, subject_spans, tokenize_texts
from unlearnviz.methods import get_method, make_hparams
from unlearnviz.methods.mrp import Moments, _site_output
from unlearnviz.model.routing import RoutingPlan, orthonormal_rows


def concatenated_top(forget: torch.Tensor, retain: torch.Tensor, k: int, ridge: float,
                     dtype: torch.dtype = torch.float32):
    """The slow reference kept as a test oracle: the init as it was (float32), from every token's
    activation concatenated ([tokens, d], O(tokens·d) memory); or the same in float64."""
    forget, retain = forget.to(dtype), retain.to(dtype)
    mu = retain.mean(0)
    f, r = forget - mu, retain - mu
    sf = f.T @ f / max(1, len(f) - 1)
    sr = r.T @ r / max(1, len(r) - 1)
    eye = torch.eye(sf.shape[0], dtype=dtype)
    delta = ridge * float(torch.diagonal(sr).mean()) + 1e-6
    inv = torch.linalg.solve_triangular(torch.linalg.cholesky(sr + delta * eye), eye, upper=False)
    m = inv @ sf @ inv.T
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    v = inv.T @ vecs[:, torch.argsort(vals, descending=True)[:k]]
    return orthonormal_rows(v.T), vals.sort(descending=True).values[:k]


def largest_angle_sine(a: torch.Tensor, b: torch.Tensor) -> float:
    """sin of the largest principal angle between the row spaces of a and b (accurate for small
    angles, where arccos of the cosines is not)."""
    qa, qb = torch.linalg.qr(a.double().T)[0], torch.linalg.qr(b.double().T)[0]
    return float(torch.linalg.matrix_norm(qb - qa @ (qa.T @ qb), ord=2))


def test_moments_equal_the_concatenated_covariance():
    """Batch by batch, with a large mean offset (as residual streams have): mean and covariance
    about any point equal those of the concatenated tokens."""
    g = torch.Generator().manual_seed(0)
    parts = [torch.randn(n, 16, generator=g) * 0.1 + 300.0 for n in (1, 7, 50, 3)]
    acc = Moments()
    for p in parts:
        acc.add(p)
    acc.add(torch.zeros(0, 16))
    x = torch.cat(parts).double()
    assert acc.n == len(x)
    assert torch.allclose(acc.mean(), x.mean(0), rtol=0, atol=1e-10)
    about = x.mean(0) + 0.05
    want = (x - about).T @ (x - about) / (len(x) - 1)
    assert torch.allclose(acc.covariance(about), want, rtol=1e-9, atol=1e-12)
    assert acc.gram.shape == (16, 16)  # O(d²) whatever the token count


@pytest.mark.parametrize("site,k", [(1, 4), pytest.param(2, 16, marks=pytest.mark.slow)])
def test_init_equals_the_concatenating_reference(tiny_lm, tiny_data, site, k):
    """An init-only fit's directions, eigenvalues and retain mean against the reference from every
    token's activation at once: the same subspace within 1e-6 (sine of the largest principal angle)
    and eigenvalues within 1e-6 relative of the float64 reference; within the float32 reference's
    own rounding (1e-4, 1e-5) of the code it replaces."""
    spec = get_method("mrp")
    hp = make_hparams(spec.hparams_cls, {"layers": [site], "k": k, "steps": 0, "batch_size": 8})
    edit = spec.fit(tiny_lm, tiny_data, hp)
    rows, vals = edit.projections[site], torch.tensor(edit.meta["eigenvalues"][site], dtype=torch.float64)
    assert hp.max_tokens == 32  # resolved on the synthetic world: the window it always had
    pad = tiny_lm.tokenizer.pad_token_id
    fb = make_batches(tokenize_texts(tiny_lm, tiny_data.forget_texts, 32, subject_spans(tiny_data), spans_only=True),
                      8, pad)
    rb = make_batches(tokenize_texts(tiny_lm, tiny_data.retain_train_texts, 32), 8, pad)
    plan = RoutingPlan(spare_first=True)
    forget = torch.cat([_site_output(tiny_lm, site, b, plan).float()[b.loss_mask] for b in fb])
    retain = torch.cat([_site_output(tiny_lm, site, b, plan).float()[b.loss_mask] for b in rb])
    for dtype, angle, rel in ((torch.float64, 1e-6, 1e-6), (torch.float32, 1e-4, 1e-5)):
        want_rows, want_vals = concatenated_top(forget, retain, k, hp.ridge, dtype)
        assert largest_angle_sine(rows, want_rows) < angle, dtype
        assert float(((vals - want_vals.double()).abs() / want_vals.double().abs()).max()) < rel, dtype
    assert torch.allclose(edit.offsets[site], retain.mean(0), atol=1e-6)


def test_kl_references_past_their_byte_bound_are_recomputed_to_the_same_losses(tiny_lm, tiny_data, monkeypatch):
    """The KL retain term's references are kept under KL_REFERENCE_BYTES; with no room at all each
    is recomputed when read, and the fit's losses are the same."""
    from unlearnviz.methods import mrp

    spec = get_method("mrp")
    over = {"layers": [1], "k": 4, "steps": 6, "batch_size": 8, "retain_loss": "kl"}
    kept = spec.fit(tiny_lm, tiny_data, make_hparams(spec.hparams_cls, over))
    monkeypatch.setattr(mrp, "KL_REFERENCE_BYTES", 0)
    recomputed = spec.fit(tiny_lm, tiny_data, make_hparams(spec.hparams_cls, over))
    assert [r["loss"] for r in recomputed.meta["losses"]] == pytest.approx(
        [r["loss"] for r in kept.meta["losses"]], rel=1e-6, abs=1e-8)


# ---- the init's batch cap --------------------------------------------------------------------
def test_init_reads_only_the_capped_batches(tiny_lm, tiny_data):
    """With a corpus larger than ``init_batches``, the init forwards only the first
    ``init_batches`` forget and retain batches (counted by a hook on block 0), and its directions,
    eigenvalues and retain mean equal the init on just those texts."""
    import dataclasses

    from unlearnviz.methods.mrp import MRPParams

    spec = get_method("mrp")
    cap, bs = 3, 8
    assert MRPParams().init_batches * bs >= 296  # every built-in set's batches are read (unchanged results)
    assert len(tiny_data.forget_texts) > cap * bs and len(tiny_data.retain_train_texts) > cap * bs
    calls = []
    handle = tiny_lm.adapter.blocks[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        capped = spec.fit(tiny_lm, tiny_data, make_hparams(spec.hparams_cls, {
            "layers": [1], "k": 4, "steps": 0, "batch_size": bs, "max_tokens": 32, "init_batches": cap}))
    finally:
        handle.remove()
    assert len(calls) == 2 * cap, len(calls)  # cap forget batches + cap retain batches, one forward each
    assert capped.meta["init_batches_read"] == {"forget": cap, "retain": cap}
    n_retain = next(n for n in range(5, len(tiny_data.retain_texts))
                    if len(dataclasses.replace(tiny_data, retain_texts=tiny_data.retain_texts[:n]).retain_train_texts)
                    == cap * bs)
    small = dataclasses.replace(tiny_data, forget_texts=tiny_data.forget_texts[:cap * bs],
                                forget_text_half=tiny_data.forget_text_half[:cap * bs],
                                retain_texts=tiny_data.retain_texts[:n_retain])
    assert list(small.retain_train_texts) == list(tiny_data.retain_train_texts[:cap * bs])
    whole = spec.fit(tiny_lm, small, make_hparams(spec.hparams_cls, {
        "layers": [1], "k": 4, "steps": 0, "batch_size": bs, "max_tokens": 32}))
    assert whole.meta["init_batches_read"] == {"forget": cap, "retain": cap}
    assert torch.equal(capped.projections[1], whole.projections[1])
    assert torch.equal(capped.offsets[1], whole.offsets[1])
    assert capped.meta["eigenvalues"] == whole.meta["eigenvalues"]


# ---- float64 solves on the CPU ---------------------------------------------------------------
def on_device_top(forget: Moments, retain: Moments, k: int, ridge: float):
    """The test oracle: the solve as it was, in float64 on the statistics' own device."""
    mu = retain.mean()
    sf, sr = forget.covariance(mu), retain.covariance(mu)
    eye = torch.eye(sf.shape[0], dtype=sf.dtype, device=sf.device)
    delta = ridge * float(torch.diagonal(sr).mean()) + 1e-6
    inv = torch.linalg.solve_triangular(torch.linalg.cholesky(sr + delta * eye), eye, upper=False)
    m = inv @ sf @ inv.T
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    order = torch.argsort(vals, descending=True)[:k]
    return orthonormal_rows((inv.T @ vecs[:, order]).T), vals[order]


def test_generalized_top_solves_on_the_cpu_with_identical_results():
    """The solve moved to the CPU (MPS has no float64) gives exactly what the on-device float64
    solve gave on a CPU, and its results come back on the statistics' device."""
    from unlearnviz.methods.mrp import generalized_top

    g = torch.Generator().manual_seed(1)
    forget, retain = Moments(), Moments()
    forget.add(torch.randn(300, 24, generator=g) * torch.linspace(0.5, 3.0, 24) + 40.0)
    retain.add(torch.randn(400, 24, generator=g) + 40.0)
    rows, vals = generalized_top(forget, retain, 5, 0.05)
    want_rows, want_vals = on_device_top(forget, retain, 5, 0.05)
    assert torch.equal(rows, want_rows) and torch.equal(vals, want_vals)
    assert rows.device == forget.shift.device and vals.dtype == torch.float64 and rows.shape == (5, 24)
