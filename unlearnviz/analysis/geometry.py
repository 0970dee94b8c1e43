"""Hidden-state geometry before and after an edit, on ONE shared basis.

- **PCA / UMAP**: fitted on the *original* model's pooled activations at a layer (forget, retain
  and probe prompts together); the edited model's activations of the same texts are projected
  with the same fitted transform (PCA's mean and components; UMAP's ``.transform``), so a point
  that moves in the figure moved in the model. PCA runs for every layer at once with our own
  batched randomized SVD (Halko, Martinsson and Tropp 2011: a Gaussian range finder with QR power
  iterations, then ``torch.linalg.eigh`` of the small Gram matrix; see :func:`_randomized_pca`):
  2,000 points × 30 layers × 576 dims in well under 2 s.
- **Per-layer metrics**: cross-validated logistic-regression separability of forget vs retain,
  centroid distance (absolute and relative to the mean norm), mean norm, and linear CKA between
  original and edited activations (1.0 = the edit changed nothing at that layer, up to rotation
  and scale).
- **UMAP** compiles numba code on first use (tens of seconds). :func:`warm_umap` does that once in
  a background thread; numba's on-disk cache (``NUMBA_CACHE_DIR``, under the unlearnviz cache)
  keeps it between runs.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from unlearnviz.errors import UserError

# ------------------------------------------------------------------------------------------
# PCA
# ------------------------------------------------------------------------------------------


@dataclass
class PCABasis:
    mean: torch.Tensor  # [d]
    components: torch.Tensor  # [k, d], orthonormal rows, sign-fixed
    explained: list[float]  # variance ratio per component

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) @ self.components.T


def _fix_signs(v: torch.Tensor) -> torch.Tensor:
    """Make the largest-|loading| entry of each component (rows of v [..., k, d]) positive."""
    idx = v.abs().argmax(dim=-1, keepdim=True)
    sign = torch.sign(torch.gather(v, -1, idx))
    sign[sign == 0] = 1
    return v * sign


def _randomized_pca(x: torch.Tensor, k: int, q: int, niter: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k principal axes of every [N, d] slice of x [L, N, d] (Halko et al. randomized SVD).

    The centring is folded into the products (X − 1μ)Ω = XΩ − 1(μΩ), so the centred copy of the
    data is never built; the small [q, d] factor is diagonalised through its q × q Gram matrix
    (a batched SVD of a wide matrix is ~10× slower). Returns (mean [L, d], singular values
    [L, k], components [L, k, d]).
    """
    mean = x.mean(1, keepdim=True)  # [L, 1, d]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    omega = torch.randn(x.shape[0], x.shape[2], q, generator=gen).to(x.device)
    xt = x.transpose(1, 2)

    def right(m: torch.Tensor) -> torch.Tensor:  # (X − 1μ) m
        return x @ m - mean @ m

    basis, _ = torch.linalg.qr(right(omega))  # [L, N, q]
    for _ in range(niter):
        z, _ = torch.linalg.qr(xt @ basis - mean.transpose(1, 2) @ basis.sum(1, keepdim=True))
        basis, _ = torch.linalg.qr(right(z))
    b = basis.transpose(1, 2) @ x - basis.sum(1).unsqueeze(-1) @ mean  # Qᵀ(X − 1μ): [L, q, d]
    evals, u = torch.linalg.eigh(b @ b.transpose(1, 2))  # ascending
    evals, u = evals.flip(-1)[..., :k], u.flip(-1)[..., :k]
    s = evals.clamp(min=0).sqrt()
    comps = (u.transpose(1, 2) @ b) / s.clamp(min=1e-12).unsqueeze(-1)
    return mean[:, 0], s, comps


def fit_pca_layers(acts: dict[int, torch.Tensor], k: int = 2, seed: int = 0, oversample: int = 10,
                   niter: int = 3) -> dict[int, PCABasis]:
    """PCA with ``k`` components at every layer, all layers in one batched randomized SVD."""
    layers = sorted(acts)
    if not layers:
        return {}
    x = torch.stack([acts[layer].float() for layer in layers])  # [L, N, d]
    n, d = x.shape[1], x.shape[2]
    if n < 2:
        raise UserError("PCA needs at least 2 points")
    k = min(k, n, d)
    q = min(k + oversample, n, d)
    mean, s, comps = _randomized_pca(x, k, q, niter, seed)
    comps = _fix_signs(comps)
    total = (x.pow(2).sum((1, 2)) - n * mean.pow(2).sum(1)).clamp(min=1e-12)  # centred sum of squares
    ratio = s.pow(2) / total[:, None]
    return {layer: PCABasis(mean[i], comps[i], [float(r) for r in ratio[i]]) for i, layer in enumerate(layers)}


# ------------------------------------------------------------------------------------------
# UMAP
# ------------------------------------------------------------------------------------------

_UMAP_LOCK = threading.Lock()
_UMAP_STATE: dict = {"thread": None, "ready": False, "error": None}


def _setup_numba_cache() -> None:
    if "NUMBA_CACHE_DIR" not in os.environ:
        from unlearnviz.model.loading import cache_dir

        path = cache_dir() / "numba"
        path.mkdir(parents=True, exist_ok=True)
        os.environ["NUMBA_CACHE_DIR"] = str(path)


def _umap_class():
    _setup_numba_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import umap
        except ImportError:
            raise UserError("UMAP needs the umap-learn package: pip install umap-learn") from None
    return umap.UMAP


def _warm() -> None:
    try:
        cls = _umap_class()
        rng = np.random.default_rng(0)
        x = torch.from_numpy(rng.normal(size=(120, 8)).astype(np.float32))
        for dims in (2, 3):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m = cls(n_components=dims, n_neighbors=10, n_epochs=20, random_state=0, low_memory=True,
                        metric="precomputed").fit(_distances(x, x))
                m.transform(_distances(x[:20], x))
        _UMAP_STATE["ready"] = True
    except Exception as exc:  # a broken numba install must not kill the app; umap_view reports it
        _UMAP_STATE["error"] = f"{type(exc).__name__}: {exc}"


def _distances(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    d = torch.cdist(a.float(), b.float())
    return d.clamp(min=0).numpy().astype(np.float32)


def warm_umap(background: bool = True) -> threading.Thread | None:
    """Compile UMAP's numba code once (idempotent). Returns the warming thread (None if done)."""
    with _UMAP_LOCK:
        if _UMAP_STATE["ready"]:
            return None
        t = _UMAP_STATE["thread"]
        if t is None:
            t = threading.Thread(target=_warm, name="warm-umap", daemon=True)
            _UMAP_STATE["thread"] = t
            t.start()
    if not background:
        t.join()
    return t


def fit_umap(original: torch.Tensor, edited: torch.Tensor | None = None, dims: int = 2, n_neighbors: int = 15,
             min_dist: float = 0.1, n_epochs: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """UMAP fitted on the original points; the edited points go through ``.transform``.

    Euclidean distances are computed with torch and given to UMAP as ``metric="precomputed"``:
    for small data (< 4,096 points) umap-learn's own transform calls a Python-level distance per
    pair (2,000 × 2,000 points: ~20 s); precomputed distances make fit + transform ~2 s.
    """
    t = warm_umap(background=True)
    if t is not None:
        t.join()
    if _UMAP_STATE["error"]:
        raise UserError(f"UMAP is unavailable: {_UMAP_STATE['error']}")
    cls = _umap_class()
    x = original.float().cpu()
    n = x.shape[0]
    if n < 5:
        raise UserError("UMAP needs at least 5 points")
    nn = max(2, min(n_neighbors, n - 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = cls(n_components=dims, n_neighbors=nn, min_dist=min_dist, n_epochs=n_epochs, random_state=seed,
                    transform_seed=seed, low_memory=True, metric="precomputed",
                    init="spectral" if n > 2 * (dims + 1) else "random")
        emb = model.fit_transform(_distances(x, x))
        emb_e = None
        if edited is not None:
            emb_e = model.transform(_distances(edited.cpu(), x))
    return np.asarray(emb, dtype=np.float32), None if emb_e is None else np.asarray(emb_e, dtype=np.float32)


# ------------------------------------------------------------------------------------------
# Views
# ------------------------------------------------------------------------------------------


@dataclass
class GeometryView:
    """Points of one layer in a basis fitted on the original activations."""

    layer: int
    method: str  # "pca" | "umap"
    dims: int
    original: np.ndarray  # [N, dims]
    edited: np.ndarray | None  # [N, dims] in the same basis
    groups: list[str]
    texts: list[str]
    explained: list[float] = field(default_factory=list)  # PCA variance ratios

    def to_json(self, max_points: int = 400) -> dict:
        n = min(len(self.groups), max_points)
        out = {"layer": self.layer, "method": self.method, "dims": self.dims, "explained": self.explained,
               "groups": self.groups[:n], "original": np.round(self.original[:n], 4).tolist()}
        if self.edited is not None:
            out["edited"] = np.round(self.edited[:n], 4).tolist()
        return out


def _check_inputs(original: dict, edited: dict | None, groups: Sequence[str], texts: Sequence[str]) -> None:
    n = len(groups)
    if len(texts) != n:
        raise ValueError("groups and texts differ in length")
    for layer, x in original.items():
        if x.shape[0] != n or (edited is not None and edited[layer].shape != x.shape):
            raise ValueError(f"layer {layer}: activations do not match the {n} labelled points")


def pca_views(original: dict[int, torch.Tensor], edited: dict[int, torch.Tensor] | None, groups: Sequence[str],
              texts: Sequence[str], dims: int = 2, seed: int = 0) -> dict[int, GeometryView]:
    """PCA views at every layer of ``original`` (one batched fit), edited projected alike."""
    if dims not in (2, 3):
        raise UserError("geometry views are 2-D or 3-D")
    _check_inputs(original, edited, groups, texts)
    bases = fit_pca_layers(original, dims, seed)
    out = {}
    for layer, b in bases.items():
        o = b.transform(original[layer]).numpy()
        e = b.transform(edited[layer]).numpy() if edited is not None else None
        out[layer] = GeometryView(layer, "pca", o.shape[1], o, e, list(groups), list(texts), b.explained)
    return out


def umap_view(original: torch.Tensor, edited: torch.Tensor | None, groups: Sequence[str], texts: Sequence[str],
              layer: int, dims: int = 2, seed: int = 0, n_epochs: int = 200) -> GeometryView:
    if dims not in (2, 3):
        raise UserError("geometry views are 2-D or 3-D")
    _check_inputs({layer: original}, None if edited is None else {layer: edited}, groups, texts)
    o, e = fit_umap(original, edited, dims, n_epochs=n_epochs, seed=seed)
    return GeometryView(layer, "umap", dims, o, e, list(groups), list(texts))


# ------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019) between two [N, d] activation sets of the same points."""
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    # ||YᵀX||²_F / (||XᵀX||_F ||YᵀY||_F), computed through the N×N Gram matrices when N < d
    if x.shape[0] < x.shape[1]:
        kx, ky = x @ x.T, y @ y.T
        num = (kx * ky).sum()
        den = kx.norm() * ky.norm()
    else:
        num = (y.T @ x).pow(2).sum()
        den = (x.T @ x).norm() * (y.T @ y).norm()
    return float(num / den) if float(den) > 0 else float("nan")


def separability(x: torch.Tensor, labels: Sequence[int], folds: int = 5, seed: int = 0, c: float = 1.0) -> float:
    """Cross-validated accuracy of a logistic probe (standardised features) separating the labels."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(labels)
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise UserError("separability needs points of two groups")
    folds = int(max(2, min(folds, counts.min())))
    if counts.min() < 2:
        return float("nan")
    # liblinear's dual solver: ~5× faster than lbfgs when points are fewer than dimensions
    dual = len(y) < x.shape[1]
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, solver="liblinear", dual=dual, max_iter=500))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(cross_val_score(clf, x.float().numpy(), y, cv=cv).mean())


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float noise (rows of one batch can differ in the last bit)."""
    scale = float(a.abs().max()) if a.numel() else 0.0
    return bool(float((a - b).abs().max()) <= 1e-6 * max(scale, 1e-12)) if a.numel() else True


def layer_metrics(original: dict[int, torch.Tensor], edited: dict[int, torch.Tensor] | None,
                  is_forget: Sequence[bool], folds: int = 5, seed: int = 0) -> list[dict]:
    """Per layer: forget-vs-retain separability, centroid distance, mean norm (original and
    edited) and CKA(original, edited). Layers the edit leaves untouched are computed once."""
    f = torch.as_tensor(np.asarray(is_forget, dtype=bool))
    if int(f.sum()) == 0 or int((~f).sum()) == 0:
        raise UserError("layer metrics need both forget and retain points")
    labels = f.long().tolist()

    def stats(x: torch.Tensor) -> dict:
        x = x.float()
        norm = float(x.norm(dim=1).mean())
        dist = float((x[f].mean(0) - x[~f].mean(0)).norm())
        return {"separability": separability(x, labels, folds, seed), "centroid_distance": dist,
                "centroid_distance_rel": dist / norm if norm > 0 else float("nan"), "mean_norm": norm,
                "mean_norm_forget": float(x[f].norm(dim=1).mean()), "mean_norm_retain": float(x[~f].norm(dim=1).mean())}

    rows = []
    for layer in sorted(original):
        o = original[layer]
        row: dict = {"layer": layer}
        so = stats(o)
        row.update({f"{k}_original": v for k, v in so.items()})
        if edited is not None:
            e = edited[layer]
            same = _same(o, e)
            se = so if same else stats(e)
            row.update({f"{k}_edited": v for k, v in se.items()})
            row["cka"] = 1.0 if same else linear_cka(o, e)
            row["changed"] = not same
        rows.append(row)
    return rows
