"""Geometry: PCA against an exact SVD, the shared basis, CKA, separability, per-layer metrics, UMAP."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unlearnviz.analysis.geometry import (
    fit_pca_layers,
    layer_metrics,
    linear_cka,
    pca_views,
    separability,
    umap_view,
)
from unlearnviz.errors import UserError


def structured(n=200, d=48, seed=0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(5, d, generator=g)
    coef = torch.randn(n, 5, generator=g) * torch.tensor([8.0, 5.0, 3.0, 2.0, 1.0])
    x = coef @ basis + 0.3 * torch.randn(n, d, generator=g)
    x[: n // 2] += shift
    return x


def test_pca_matches_exact_svd():
    acts = {0: structured(seed=0), 3: structured(seed=1)}
    bases = fit_pca_layers(acts, k=3)
    for layer, x in acts.items():
        xc = x - x.mean(0)
        _, s, vt = torch.linalg.svd(xc, full_matrices=False)
        b = bases[layer]
        for i in range(3):
            assert abs(float(b.components[i] @ vt[i])) == pytest.approx(1.0, abs=1e-4)
        exact = (s[:3] ** 2 / xc.pow(2).sum()).tolist()
        assert b.explained == pytest.approx(exact, rel=1e-3)
        assert torch.allclose(b.mean, x.mean(0), atol=1e-5)
    again = fit_pca_layers(acts, k=3)
    assert torch.equal(again[0].components, bases[0].components)  # seeded and sign-fixed


def test_edited_points_share_the_original_basis():
    x = structured()
    groups = ["forget"] * 100 + ["retain"] * 100
    texts = [f"text {i}" for i in range(200)]
    same = pca_views({2: x}, {2: x.clone()}, groups, texts)[2]
    assert np.allclose(same.original, same.edited)
    shift = torch.zeros_like(x)
    shift[:100] += 5.0  # the edit moves forget points only
    view = pca_views({2: x}, {2: x + shift}, groups, texts)[2]
    basis = fit_pca_layers({2: x}, k=2)[2]
    assert np.allclose(view.original, basis.transform(x).numpy(), atol=1e-4)
    moved = view.edited - view.original
    expected = (shift[0] @ basis.components.T).numpy()
    assert np.allclose(moved[:100], expected, atol=1e-3) and np.allclose(moved[100:], 0, atol=1e-4)
    assert view.groups == groups and view.texts == texts and view.dims == 2
    assert pca_views({2: x}, None, groups, texts, dims=3)[2].original.shape == (200, 3)
    with pytest.raises(UserError):
        pca_views({2: x}, None, groups, texts, dims=4)


def test_cka():
    x = structured()
    q, _ = torch.linalg.qr(torch.randn(48, 48, generator=torch.Generator().manual_seed(3)))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0, abs=1e-6)  # rotation and scale invariant
    assert linear_cka(x, torch.randn(200, 48)) < 0.3
    wide = torch.randn(20, 100)
    assert linear_cka(wide, wide * 2) == pytest.approx(1.0)


def test_separability():
    apart = structured(shift=6.0)
    labels = [1] * 100 + [0] * 100
    assert separability(apart, labels) > 0.95
    assert separability(torch.randn(200, 10, generator=torch.Generator().manual_seed(1)), labels) < 0.7
    with pytest.raises(UserError):
        separability(apart, [1] * 200)


def test_layer_metrics():
    x = {0: structured(shift=4.0), 1: structured(seed=2)}
    edited = {0: x[0].clone(), 1: x[1] * 0.5 + 1.0}
    is_forget = [True] * 100 + [False] * 100
    rows = layer_metrics(x, edited, is_forget)
    assert [r["layer"] for r in rows] == [0, 1]
    r0, r1 = rows
    assert r0["cka"] == 1.0 and r0["changed"] is False and r0["separability_edited"] == r0["separability_original"]
    assert r0["separability_original"] > 0.9
    assert r1["changed"] and r1["cka"] == pytest.approx(1.0, abs=1e-6)  # scale + shift: same geometry
    assert r1["mean_norm_edited"] != pytest.approx(r1["mean_norm_original"])
    assert r1["centroid_distance_edited"] == pytest.approx(0.5 * r1["centroid_distance_original"], rel=1e-4)
    only = layer_metrics(x, None, is_forget)
    assert "cka" not in only[0] and "separability_original" in only[0]
    with pytest.raises(UserError):
        layer_metrics(x, None, [True] * 200)


@pytest.mark.slow
def test_umap_fits_original_and_transforms_edited():
    x = structured(n=80, shift=8.0)
    groups = ["forget"] * 40 + ["retain"] * 40
    view = umap_view(x, x.clone(), groups, [str(i) for i in range(80)], layer=5, n_epochs=30)
    assert view.method == "umap" and view.original.shape == (80, 2) and view.edited.shape == (80, 2)
    assert np.isfinite(view.original).all() and np.isfinite(view.edited).all()
    # the same points transformed land near where they were fitted, and the two groups stay apart
    spread = np.ptp(view.original, axis=0).max()
    assert np.median(np.linalg.norm(view.edited - view.original, axis=1)) < 0.2 * spread
    fa, ra = view.original[:40].mean(0), view.original[40:].mean(0)
    assert np.linalg.norm(fa - ra) > 0.2 * spread
    again = umap_view(x, None, groups, [str(i) for i in range(80)], layer=5, n_epochs=30)
    assert np.allclose(again.original, view.original)  # fixed random_state
    with pytest.raises(UserError):
        umap_view(x[:3], None, groups[:3], ["a", "b", "c"], layer=5)
