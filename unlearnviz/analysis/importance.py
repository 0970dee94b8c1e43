"""Where the forget data lives: SRMU importance maps, token × layer signatures, edit footprints.

- **Importance map** (per layer × feature): SRMU's statistics v_f, v_r = per-feature mean |h|
  over forget / retain tokens, turned into I_norm by :func:`unlearnviz.methods.srmu.importance_map`
  (ratio, difference or product). The statistics are taken, like SRMU's default
  ``stat_tokens="spans"``, over the entity tokens of forget facts and of retain facts (texts
  without one: every token but position 0), on the texts the methods train on (the retain texts
  less the held-out fifth). At SRMU's layer the map equals the one the edit trained with.
- **Selectivity**: the histogram of I_norm and the share of total importance held by the top
  10% of features (0.1 = uniform), with a plain verdict. A near-uniform map is said to be one.
- **Token × layer signature** of one prompt: for each token and layer, where the token sits
  along the importance-weighted forget-minus-retain direction, scaled so that +1 is the mean
  forget token, −1 the mean retain token and 0 the midpoint.
- **Footprint** of an edit: per layer × feature mean |Δh| on forget and on retain tokens
  (original and edited rows of one batched pass), with its rank correlation to the map.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from unlearnviz.analysis.activations import (
    CACHE,
    PoolReducer,
    as_plan,
    cache_key,
    capture,
    encode,
    plan_hash,
    resolve_layers,
    run_pass,
)
from unlearnviz.data.batching import subject_spans
from unlearnviz.data.schema import UnlearningData
from unlearnviz.errors import UserError
from unlearnviz.methods.srmu import importance_map, selectivity
from unlearnviz.model.loading import LoadedModel

VARIANTS = ("ratio", "difference", "product")


def sample_texts(texts: Sequence[str], max_n: int | None, seed: int = 0) -> list[str]:
    """At most ``max_n`` texts, a seeded random subset kept in the original order."""
    texts = list(texts)
    if max_n is None or len(texts) <= max_n:
        return texts
    keep = sorted(random.Random(seed).sample(range(len(texts)), max_n))
    return [texts[i] for i in keep]


# ------------------------------------------------------------------------------------------
# One pass per split: pooled vectors + token statistics + footprint
# ------------------------------------------------------------------------------------------


class StatsReducer:
    """Per layer: sums of |h| and h over the statistic mask (original rows), and of |Δh|."""

    def __init__(self):
        self.abs_sum: dict[int, torch.Tensor] = {}
        self.sum: dict[int, torch.Tensor] = {}
        self.delta_sum: dict[int, torch.Tensor] = {}
        self.counts: dict[int, int] = {}

    @property
    def count(self) -> int:
        return max(self.counts.values(), default=0)

    def __call__(self, layer, h, h_edit, batch, idx):
        m = batch.loss_mask.to(h.device)
        sel = h[m]
        add = lambda store, v: store.__setitem__(layer, v.cpu() if layer not in store else store[layer] + v.cpu())  # noqa: E731
        add(self.abs_sum, sel.abs().sum(0))
        add(self.sum, sel.sum(0))
        if h_edit is not None:
            add(self.delta_sum, (h_edit[m] - sel).abs().sum(0))
        self.counts[layer] = self.counts.get(layer, 0) + int(m.sum())


@dataclass
class SplitPass:
    """What one (paired) pass over one split's texts yields, per layer (rows of [L, d])."""

    texts: list[str]
    layers: list[int]
    pooled_original: dict[int, torch.Tensor]
    pooled_edited: dict[int, torch.Tensor] | None
    abs_mean: torch.Tensor  # [L, d] mean |h| over the statistic tokens (original)
    mean: torch.Tensor  # [L, d] signed mean (original)
    footprint: torch.Tensor | None  # [L, d] mean |h_edited − h_original|
    n_tokens: int

    def row(self, tensor: torch.Tensor, layer: int) -> torch.Tensor:
        return tensor[self.layers.index(layer)]


def data_pass(lm: LoadedModel, texts: Sequence[str], layers=None, plan=None, mask_from: list[str] | None = None,
              batch_size: int = 32, use_cache: bool = True, spans_only: bool = False) -> SplitPass:
    """Pooled activations, token statistics and (with an edit) the footprint, in one pass.

    With an edit the pass is paired (original and edited rows); statistics are always those of
    the original model. ``mask_from``: statistics start at the first of these spans (subjects).
    """
    layers = resolve_layers(lm, layers)
    texts = list(texts)
    plan = as_plan(plan)
    if plan is not None and plan_hash(plan) == "none":
        plan = None

    def compute() -> SplitPass:
        enc = encode(lm, texts)
        if mask_from:
            stat_enc = encode(lm, texts, mask_from, spans_only=spans_only)
            enc = [(ids, m) for (ids, _), (_, m) in zip(enc, stat_enc)]
        pool, stats = PoolReducer(len(texts), "mean"), StatsReducer()
        run_pass(lm, enc, layers, [pool, stats], plan=plan, pair=plan is not None, batch_size=batch_size)
        n = max(stats.count, 1)
        stack = lambda d: torch.stack([d[layer] for layer in layers]) / n  # noqa: E731
        return SplitPass(texts=texts, layers=layers, pooled_original=pool.result("original"),
                         pooled_edited=pool.result("edited") if plan is not None else None,
                         abs_mean=stack(stats.abs_sum), mean=stack(stats.sum),
                         footprint=stack(stats.delta_sum) if plan is not None else None,
                         n_tokens=stats.count)

    if not use_cache:
        return compute()
    return CACHE.get_or_compute(cache_key(lm, "data_pass", texts, layers, plan, tuple(mask_from or ()), spans_only),
                                compute)


def split_passes(lm: LoadedModel, data: UnlearningData, layers=None, plan=None, max_texts: int | None = None,
                 stat_tokens: str = "spans", batch_size: int = 32, seed: int = 0) -> tuple[SplitPass, SplitPass]:
    """(forget, retain) passes over the data's corpora, statistics over ``stat_tokens``."""
    if not data.forget_texts or not data.retain_texts:
        raise UserError("the analysis needs both forget and retain texts")
    (f_spans, f_only), (r_spans, r_only) = stat_masks(data, stat_tokens)
    f = data_pass(lm, sample_texts(data.forget_texts, max_texts, seed), layers, plan, f_spans, batch_size,
                  spans_only=f_only)
    r = data_pass(lm, sample_texts(data.retain_train_texts, max_texts, seed), layers, plan, r_spans, batch_size,
                  spans_only=r_only)
    return f, r


def pooled_points(forget: SplitPass, retain: SplitPass, per_group: int | None = None):
    """The passes' pooled activations as one point cloud, forget first: (texts, groups, original,
    edited or None), activations per layer; ``per_group`` caps each split's points. The geometry
    views use this so one paired pass serves the importance map, the footprint and the geometry."""
    nf, nr = (len(forget.texts), len(retain.texts)) if per_group is None else \
        (min(per_group, len(forget.texts)), min(per_group, len(retain.texts)))

    def join(a: dict, b: dict) -> dict:
        return {layer: torch.cat([a[layer][:nf], b[layer][:nr]]) for layer in forget.layers}

    edited = None if forget.pooled_edited is None else join(forget.pooled_edited, retain.pooled_edited)
    return (forget.texts[:nf] + retain.texts[:nr], ["forget"] * nf + ["retain"] * nr,
            join(forget.pooled_original, retain.pooled_original), edited)


def stat_masks(data: UnlearningData, stat_tokens: str):
    """Which tokens the forget and retain statistics average over, as SRMU's ``stat_tokens``:
    'spans' (the entity tokens of forget facts vs of retain facts), 'masked' (forget from the
    first subject/answer token on, every retain token) or 'all' (every token but position 0)."""
    if stat_tokens == "spans":
        return (subject_spans(data, "forget"), True), (subject_spans(data, "retain"), True)
    if stat_tokens == "masked":
        return (subject_spans(data), False), (None, False)
    if stat_tokens == "all":
        return (None, False), (None, False)
    raise UserError(f"stat_tokens must be 'spans', 'masked' or 'all', got {stat_tokens!r}")


# ------------------------------------------------------------------------------------------
# Importance map and selectivity
# ------------------------------------------------------------------------------------------


def selectivity_verdict(share: float, top: float = 0.1) -> str:
    """A plain sentence on how selective a map is, from the top-``top`` share of importance."""
    pct, base = f"{share:.0%}", f"{top:.0%}"
    if share < 1.5 * top:
        return (f"near-uniform: the map does not single out features (the top {base} of features hold "
                f"{pct} of the importance; a uniform map gives {base})")
    if share < 3 * top:
        return f"weakly selective: the top {base} of features hold {pct} of the importance (uniform: {base})"
    return f"selective: the top {base} of features hold {pct} of the importance (uniform: {base})"


@dataclass
class Selectivity:
    layer: int
    share_top10: float
    verdict: str
    counts: list[int]
    bin_edges: list[float]
    i_min: float
    i_max: float
    i_median: float
    n_features: int

    def to_json(self) -> dict:
        return {"layer": self.layer, "share_top10": self.share_top10, "verdict": self.verdict,
                "i_norm_min": self.i_min, "i_norm_median": self.i_median, "i_norm_max": self.i_max,
                "histogram": {"counts": self.counts, "bin_edges": self.bin_edges}}


def selectivity_report(i_norm: torch.Tensor, layer: int = -1, bins: int = 20, top: float = 0.1) -> Selectivity:
    """Histogram of I_norm over [0, 1] and the top-10% share (via srmu.selectivity)."""
    x = i_norm.detach().float().flatten().cpu()
    counts = torch.histc(x, bins=bins, min=0.0, max=1.0)
    edges = torch.linspace(0.0, 1.0, bins + 1)
    share = selectivity(x, top)
    return Selectivity(layer=layer, share_top10=share, verdict=selectivity_verdict(share, top),
                       counts=[int(c) for c in counts], bin_edges=[round(float(e), 4) for e in edges],
                       i_min=float(x.min()), i_max=float(x.max()), i_median=float(x.median()),
                       n_features=x.numel())


@dataclass
class ImportanceMap:
    """Per layer × feature SRMU statistics and the normalised importance I_norm."""

    layers: list[int]
    variant: str
    v_f: torch.Tensor  # [L, d] forget mean |h|
    v_r: torch.Tensor  # [L, d] retain mean |h|
    mu_f: torch.Tensor  # [L, d] forget signed mean
    mu_r: torch.Tensor  # [L, d] retain signed mean
    i_norm: torch.Tensor  # [L, d] in [0, 1], max 1 per layer
    lam: float = 1.0
    selectivity: list[Selectivity] = field(default_factory=list)

    def row(self, layer: int) -> torch.Tensor:
        if layer not in self.layers:
            raise UserError(f"layer {layer} is not in this importance map (layers {self.layers})")
        return self.i_norm[self.layers.index(layer)]

    def top_features(self, k: int = 10) -> dict[int, list[tuple[int, float]]]:
        """The k most important features per layer, as (feature index, I_norm)."""
        k = max(1, min(k, self.i_norm.shape[1]))
        out = {}
        for i, layer in enumerate(self.layers):
            v, idx = self.i_norm[i].topk(k)
            out[layer] = [(int(j), round(float(x), 4)) for j, x in zip(idx, v)]
        return out

    def signature_direction(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(unit direction u, midpoint m, scale) of the forget signature at ``layer``:
        u ∝ I_norm ⊙ (μ_f − μ_r); a point's score is (h − m)·u / scale (+1 = forget mean)."""
        i = self.layers.index(layer)
        d = self.i_norm[i] * (self.mu_f[i] - self.mu_r[i])
        norm = float(d.norm())
        mid = (self.mu_f[i] + self.mu_r[i]) / 2
        if norm == 0.0:
            return torch.zeros_like(d), mid, 1.0
        u = d / norm
        scale = float((self.mu_f[i] - mid) @ u)
        return u, mid, scale if scale > 0 else 1.0

    def to_json(self, k: int = 10) -> dict:
        return {"variant": self.variant, "layers": self.layers,
                "top_features": {str(layer): v for layer, v in self.top_features(k).items()},
                "selectivity": [s.to_json() for s in self.selectivity]}


def importance_from_passes(forget: SplitPass, retain: SplitPass, variant: str = "ratio",
                           lam: float = 1.0) -> ImportanceMap:
    if variant not in VARIANTS:
        raise UserError(f"unknown importance variant {variant!r}: use {', '.join(VARIANTS)}")
    rows = [importance_map(forget.abs_mean[i], retain.abs_mean[i], variant, lam) for i in range(len(forget.layers))]
    i_norm = torch.stack(rows)
    sel = [selectivity_report(i_norm[i], layer) for i, layer in enumerate(forget.layers)]
    return ImportanceMap(layers=list(forget.layers), variant=variant, v_f=forget.abs_mean, v_r=retain.abs_mean,
                         mu_f=forget.mean, mu_r=retain.mean, i_norm=i_norm, lam=lam, selectivity=sel)


def importance(lm: LoadedModel, data: UnlearningData, layers=None, variant: str = "ratio", lam: float = 1.0,
               stat_tokens: str = "spans", max_texts: int | None = None, plan=None,
               batch_size: int = 32) -> ImportanceMap:
    """The importance map of ``data`` at ``layers`` (None = all) on the model (+ ``plan``, e.g.
    the edits already stacked, applied to every row)."""
    f, r = split_passes(lm, data, layers, None, max_texts, stat_tokens, batch_size) if plan is None else \
        _prior_passes(lm, data, layers, plan, max_texts, stat_tokens, batch_size)
    return importance_from_passes(f, r, variant, lam)


def _prior_passes(lm, data, layers, plan, max_texts, stat_tokens, batch_size):
    """Statistics of the model with ``plan`` on every row (a stacked prior, not a comparison)."""
    layers = resolve_layers(lm, layers)
    (f_spans, f_only), (r_spans, r_only) = stat_masks(data, stat_tokens)
    out = []
    for texts, mask_from, only in ((sample_texts(data.forget_texts, max_texts), f_spans, f_only),
                                   (sample_texts(data.retain_train_texts, max_texts), r_spans, r_only)):
        enc = encode(lm, texts, mask_from, spans_only=only)
        stats = StatsReducer()
        run_pass(lm, enc, layers, [stats], plan=plan, batch_size=batch_size)
        n = max(stats.count, 1)
        stack = torch.stack([stats.abs_sum[x] for x in layers]) / n
        mean = torch.stack([stats.sum[x] for x in layers]) / n
        out.append(SplitPass(texts, layers, {}, None, stack, mean, None, stats.count))
    return out[0], out[1]


# ------------------------------------------------------------------------------------------
# Token × layer signature
# ------------------------------------------------------------------------------------------


@dataclass
class TokenMap:
    prompt: str
    tokens: list[str]
    layers: list[int]
    scores: torch.Tensor  # [T, L]; NaN at position 0 (attention sink, not scored)
    edited_scores: torch.Tensor | None = None
    note: str = ("score = position along the importance-weighted forget−retain direction: +1 = the mean "
                 "forget token, −1 = the mean retain token, 0 = midway; position 0 (attention sink) is not scored")

    def to_json(self) -> dict:
        clean = lambda t: [[None if math.isnan(v) else round(v, 4) for v in row] for row in t.tolist()]  # noqa: E731
        out = {"prompt": self.prompt, "tokens": self.tokens, "layers": self.layers, "scores": clean(self.scores)}
        if self.edited_scores is not None:
            out["edited_scores"] = clean(self.edited_scores)
        return out


def _token_strings(lm: LoadedModel, text: str) -> list[str]:
    ids = encode(lm, [text], what="prompt")[0][0]
    return [lm.tokenizer.decode([i]).replace("\n", "⏎") for i in ids]


def token_layer_map(lm: LoadedModel, prompt: str, imp: ImportanceMap, plan=None) -> TokenMap:
    """How strongly each token of ``prompt`` carries the forget signature at each layer of the
    map, for the original model (and the edited one when ``plan`` is given)."""
    layers = imp.layers
    tokens = _token_strings(lm, prompt)

    def scores(acts: dict) -> torch.Tensor:
        out = torch.full((len(tokens), len(layers)), float("nan"))
        for j, layer in enumerate(layers):
            u, mid, scale = imp.signature_direction(layer)
            h = acts[layer][0]
            out[:, j] = ((h - mid) @ u) / scale
        out[0, :] = float("nan")
        return out

    orig = capture(lm, [prompt], layers, "tokens")
    edited = None
    if as_plan(plan) is not None:
        edited = scores(capture(lm, [prompt], layers, "tokens", plan=plan))
    return TokenMap(prompt=prompt, tokens=tokens, layers=layers, scores=scores(orig), edited_scores=edited)


# ------------------------------------------------------------------------------------------
# Footprint
# ------------------------------------------------------------------------------------------


def spearman(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Spearman rank correlation, tied values sharing their average rank (scipy's rule, so many
    equal footprint or map values do not get an order they do not have); None when either side
    is constant."""
    from scipy.stats import spearmanr

    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    if float(a.std()) == 0.0 or float(b.std()) == 0.0:
        return None
    return float(spearmanr(a.cpu().numpy(), b.cpu().numpy()).statistic)


@dataclass
class Footprint:
    """How much an edit moves each feature at each layer, on forget and on retain tokens."""

    layers: list[int]
    forget: torch.Tensor  # [L, d] mean |Δh| over forget statistic tokens
    retain: torch.Tensor  # [L, d] mean |Δh| over retain tokens
    corr_forget: list[float | None]  # Spearman(forget footprint, I_norm) per layer
    ratio: list[float | None]  # mean forget |Δh| / mean retain |Δh|
    top_share: list[float | None]  # share of the forget footprint on the map's top-10% features
    summary: str = ""
    relative: list[float] | None = None  # mean forget |Δh| / mean forget |h| per layer (None: unknown)

    def per_layer(self) -> list[dict]:
        return [{"layer": layer, "forget_mean_abs_delta": float(self.forget[i].mean()),
                 "retain_mean_abs_delta": float(self.retain[i].mean()), "forget_retain_ratio": self.ratio[i],
                 "corr_with_importance": self.corr_forget[i], "footprint_share_on_top10": self.top_share[i],
                 "forget_relative_delta": None if self.relative is None else self.relative[i]}
                for i, layer in enumerate(self.layers)]


def footprint_from_passes(forget: SplitPass, retain: SplitPass, imp: ImportanceMap | None = None) -> Footprint:
    if forget.footprint is None or retain.footprint is None:
        raise UserError("the footprint needs passes run with an edit")
    layers = forget.layers
    corr, ratio, share = [], [], []
    for i, layer in enumerate(layers):
        f, r = forget.footprint[i], retain.footprint[i]
        fm, rm = float(f.mean()), float(r.mean())
        ratio.append(fm / rm if rm > 0 else (None if fm == 0 else math.inf))
        if imp is not None and layer in imp.layers and fm > 0:
            row = imp.row(layer)
            corr.append(spearman(f, row))
            k = max(1, round(0.1 * row.numel()))
            share.append(float(f[row.topk(k).indices].sum() / f.sum()))
        else:
            corr.append(None)
            share.append(None)
    size = forget.abs_mean.float().mean(1)
    relative = [float(forget.footprint[i].mean() / size[i]) if float(size[i]) > 0 else 0.0 for i in range(len(layers))]
    fp = Footprint(layers=layers, forget=forget.footprint, retain=retain.footprint, corr_forget=corr,
                   ratio=ratio, top_share=share, relative=relative)
    fp.summary = footprint_summary(fp)
    return fp


def footprint_summary(fp: Footprint) -> str:
    """Where the edit moves activations most, relative to their size when known (|Δh| alone
    grows with the residual norm, so it would always point at the last layers)."""
    means = fp.forget.mean(1)
    if float(means.max()) == 0.0:
        return "the edit does not move any activation at these layers"
    scores = fp.relative if fp.relative is not None else means.tolist()
    i = max(range(len(scores)), key=lambda j: scores[j])
    layer = fp.layers[i]
    first = next(j for j, v in enumerate(means.tolist()) if v > 0)
    how = f" (|Δh| {fp.relative[i]:.2f}× the mean |h| there)" if fp.relative is not None else ""
    parts = [f"the edit first moves activations at layer {fp.layers[first]} and most at layer {layer}{how}: "
             f"mean |Δh| {float(means[i]):.3g} per feature on forget tokens vs {float(fp.retain[i].mean()):.3g} "
             f"on retain tokens"]
    if fp.ratio[i] is not None and math.isfinite(fp.ratio[i]):
        parts[-1] += f" ({fp.ratio[i]:.1f}×)"
    if fp.corr_forget[i] is not None:
        parts.append(f"its forget footprint has rank correlation {fp.corr_forget[i]:+.2f} with the importance "
                     f"map, and {fp.top_share[i]:.0%} of it falls on the map's top 10% of features "
                     f"(10% if unrelated)")
    return "; ".join(parts)


def edit_footprint(lm: LoadedModel, data: UnlearningData, edit, layers=None, imp: ImportanceMap | None = None,
                   max_texts: int | None = None, batch_size: int = 32) -> Footprint:
    """The footprint of ``edit`` on ``data`` (one paired pass per split, cached)."""
    if as_plan(edit) is None:
        raise UserError("the footprint needs an edit")
    f, r = split_passes(lm, data, layers, edit, max_texts, batch_size=batch_size)
    return footprint_from_passes(f, r, imp if imp is not None else importance_from_passes(f, r))
