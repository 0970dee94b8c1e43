"""Analysis views: where the forget data lives, what an edit moved, whether it is truly gone.

Modules:

- :mod:`.activations`: residual-stream capture (pooled or per token, original and edited in one
  batched pass, early stop, LRU cache);
- :mod:`.importance`: SRMU importance maps, selectivity, token × layer signatures, footprints;
- :mod:`.geometry`: PCA/UMAP on one shared basis, separability, centroid distance, CKA;
- :mod:`.probes`: logit lens and tuned-lens probes with a "hidden, not erased" verdict.

:func:`run_analysis` runs them all for one model, data set and edit (what ``python -m
unlearnviz analyze`` and the report use); the figures come from :mod:`unlearnviz.plots`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from unlearnviz.analysis.activations import (
    ActivationPair,
    as_plan,
    capture,
    capture_pair,
    clear_cache,
    encode,
    plan_hash,
    resolve_layers,
)
from unlearnviz.analysis.geometry import (
    GeometryView,
    layer_metrics,
    linear_cka,
    pca_views,
    separability,
    umap_view,
    warm_umap,
)
from unlearnviz.analysis.importance import (
    Footprint,
    ImportanceMap,
    TokenMap,
    edit_footprint,
    footprint_from_passes,
    importance,
    importance_from_passes,
    pooled_points,
    selectivity_report,
    split_passes,
    token_layer_map,
)
from unlearnviz.analysis.probes import LogitLens, ProbeResult, logit_lens, residual_knowledge
from unlearnviz.data.schema import UnlearningData
from unlearnviz.errors import UserError
from unlearnviz.model.loading import LoadedModel

__all__ = [
    "ActivationPair", "Analysis", "Footprint", "GeometryView", "ImportanceMap", "LogitLens", "ProbeResult",
    "TokenMap", "as_plan", "capture", "capture_pair", "clear_cache", "edit_footprint", "importance",
    "layer_metrics", "linear_cka", "logit_lens", "pca_views", "plan_hash", "residual_knowledge", "run_analysis",
    "selectivity_report", "separability", "token_layer_map", "umap_view", "warm_umap",
]


def _clean(x):
    """JSON-safe: NaN/inf → None, tensors → lists, tuples → lists."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _clean(x.tolist())
    if isinstance(x, float):
        return None if not math.isfinite(x) else round(x, 6)
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        return _clean(x.item())
    return x


@dataclass
class Analysis:
    """Everything ``analyze`` computes for one (model, data, edit)."""

    model: str
    data: str
    edit: dict
    layers: list[int]
    geometry_layer: int
    importance: ImportanceMap
    footprint: Footprint | None
    metrics: list[dict]
    pca: dict[int, GeometryView]
    umap: GeometryView | None
    probes: ProbeResult | None
    lens: LogitLens | None
    tokens: TokenMap | None
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def per_layer(self) -> list[dict]:
        rows = {r["layer"]: dict(r) for r in self.metrics}
        for s in self.importance.selectivity:
            rows[s.layer]["importance_share_top10"] = s.share_top10
        if self.footprint is not None:
            for r in self.footprint.per_layer():
                rows[r["layer"]].update({k: v for k, v in r.items() if k != "layer"})
        if self.probes is not None:
            for r in self.probes.per_layer():
                rows[r["layer"]].update({k: v for k, v in r.items() if k != "layer"})
        return [rows[k] for k in sorted(rows)]

    def to_json(self, top_k: int = 10) -> dict:
        sel = {s.layer: s for s in self.importance.selectivity}
        g = sel.get(self.geometry_layer) or self.importance.selectivity[-1]
        out = {
            "model": self.model, "data": self.data,
            "edit": {k: v for k, v in self.edit.items() if k != "losses"}, "layers": self.layers,
            "geometry_layer": self.geometry_layer,
            "per_layer": self.per_layer(),
            "importance": self.importance.to_json(top_k),
            "selectivity": {"layer": g.layer, "share_top10": g.share_top10, "verdict": g.verdict,
                            "i_norm_range": [g.i_min, g.i_max]},
            "footprint": {"summary": self.footprint.summary} if self.footprint is not None else None,
            "probes": self.probes.to_json() if self.probes is not None else None,
            "verdict": self.probes.verdict if self.probes is not None else None,
            "logit_lens": self.lens.summary() if self.lens is not None else None,
            "token_signature": self.tokens.to_json() if self.tokens is not None else None,
            "geometry": {"pca_explained": {str(k): v.explained for k, v in self.pca.items()},
                         "umap_layer": self.umap.layer if self.umap is not None else None},
            "notes": self.notes,
            "timings_s": {k: round(v, 2) for k, v in self.timings.items()},
        }
        return _clean(out)

    def figures(self) -> list[tuple[str, object]]:
        """(section title, plotly Figure) in reading order."""
        from unlearnviz import plots

        figs: list[tuple[str, object]] = []
        figs.append(("Importance map", plots.importance_heatmap(self.importance, self.footprint)))
        sel = {s.layer: s for s in self.importance.selectivity}
        figs.append(("Selectivity", plots.selectivity_histogram(sel.get(self.geometry_layer,
                                                                        self.importance.selectivity[-1]))))
        if self.footprint is not None:
            figs.append(("Footprint", plots.footprint_lines(self.footprint)))
        if self.tokens is not None:
            figs.append(("Token signature", plots.token_layer_heatmap(self.tokens)))
        edit_layers = self.edit.get("layers") or None
        figs.append(("Per-layer geometry metrics", plots.layer_metric_lines(self.metrics, edit_layers=edit_layers)))
        if self.geometry_layer in self.pca:
            figs.append((f"PCA at layer {self.geometry_layer}", plots.geometry_scatter(self.pca[self.geometry_layer])))
        figs.append(("PCA, all layers", plots.geometry_slider(self.pca)))
        if self.umap is not None:
            figs.append((f"UMAP at layer {self.umap.layer}", plots.geometry_scatter(self.umap)))
        if self.lens is not None:
            figs.append(("Logit lens", plots.logit_lens_heatmap(self.lens)))
        if self.probes is not None:
            figs.append(("Residual knowledge", plots.probe_accuracy_lines(self.probes)))
        losses = self.edit.get("losses")
        if losses:
            figs.append(("Training losses", plots.loss_curves(losses)))
        return figs


def run_analysis(lm: LoadedModel, data: UnlearningData, edit=None, layers: Sequence[int] | None = None,
                 geometry_layer: int | None = None, prompt: str | None = None, answer: str | None = None,
                 probe_prompts: Sequence[str] = (), max_texts: int | None = 150, max_items: int | None = 64,
                 variant: str = "ratio", use_umap: bool = True, umap_epochs: int = 200, probes: bool = True,
                 train_probe: bool = True, batch_size: int = 32, log: Callable[[str], None] | None = None) -> Analysis:
    """Run every analysis view for ``edit`` (an Edit, EditStack, RoutingPlan or None)."""
    log = log or (lambda _msg: None)
    timings: dict[str, float] = {}
    notes: list[str] = []
    layers = resolve_layers(lm, layers)
    plan = as_plan(edit)
    if plan is not None and plan_hash(plan) == "none":
        plan = None
    edit_layers = plan.edited_layers() if plan is not None else []
    if geometry_layer is None:
        geometry_layer = max(edit_layers) if edit_layers else layers[len(layers) // 2]
    geometry_layer = resolve_layers(lm, geometry_layer)[0]
    if geometry_layer not in layers:
        raise UserError(f"the geometry layer {geometry_layer} is not among the analysed layers {layers}")
    if prompt is None and data.forget_mcq:
        prompt, answer = data.forget_mcq[0].question, answer or data.forget_mcq[0].gold
    elif prompt is None:
        prompt = data.forget_texts[0]
    encode(lm, [prompt], what="prompt")  # a prompt longer than the context fails here, clearly
    probe_prompts = list(probe_prompts)
    if probe_prompts:
        encode(lm, probe_prompts, what="probe prompt")
    if use_umap:
        warm_umap(background=True)  # compiles while the passes run

    t = time.perf_counter()
    log("capturing activations (forget and retain, original and edited in one pass)")
    f, r = split_passes(lm, data, layers, plan, max_texts, batch_size=batch_size)
    timings["passes"] = time.perf_counter() - t

    imp = importance_from_passes(f, r, variant)
    fp = footprint_from_passes(f, r, imp) if plan is not None else None

    t = time.perf_counter()
    tokens = token_layer_map(lm, prompt, imp, plan)
    timings["token_signature"] = time.perf_counter() - t

    texts, groups, orig, edited = pooled_points(f, r)
    t = time.perf_counter()
    log("per-layer separability, centroid distance, CKA")
    metrics = layer_metrics(orig, edited, [g == "forget" for g in groups])
    timings["layer_metrics"] = time.perf_counter() - t

    if probe_prompts:
        pair = capture_pair(lm, probe_prompts, plan, layers) if plan is not None else None
        p_orig = pair.original if pair is not None else capture(lm, probe_prompts, layers)
        groups += ["probe"] * len(probe_prompts)
        texts += probe_prompts
        orig = {layer: torch.cat([orig[layer], p_orig[layer]]) for layer in layers}
        if edited is not None:
            edited = {layer: torch.cat([edited[layer], pair.edited[layer]]) for layer in layers}
    t = time.perf_counter()
    views = pca_views(orig, edited, groups, texts)
    timings["pca_all_layers"] = time.perf_counter() - t
    um = None
    if use_umap:
        t = time.perf_counter()
        log(f"UMAP at layer {geometry_layer}")
        try:
            um = umap_view(orig[geometry_layer], None if edited is None else edited[geometry_layer], groups, texts,
                           geometry_layer, n_epochs=umap_epochs)
        except UserError as exc:
            notes.append(f"UMAP skipped: {exc}")
        timings["umap"] = time.perf_counter() - t

    lens = None
    if answer is not None or prompt:
        t = time.perf_counter()
        lens = logit_lens(lm, prompt, answer, plan, layers)
        timings["logit_lens"] = time.perf_counter() - t

    pr = None
    if probes:
        n_f, n_r = len(data.forget_mcq), len(data.retain_mcq)
        if min(n_f, n_r) < 4:
            notes.append(f"residual-knowledge probes skipped: they need at least 4 forget and 4 retain MCQ items "
                         f"(the data has {n_f} and {n_r})")
        else:
            t = time.perf_counter()
            log("residual-knowledge probes")
            pr = residual_knowledge(lm, data, plan, layers, max_items=max_items, batch_size=batch_size,
                                    train_probe=train_probe)
            timings["probes"] = time.perf_counter() - t
    if imp.selectivity:
        sel = {s.layer: s for s in imp.selectivity}[geometry_layer]
        notes.append(f"importance map at layer {geometry_layer}: {sel.verdict}")
    if fp is not None:
        notes.append(f"footprint: {fp.summary}")
    edit_info = {"present": plan is not None, "layers": edit_layers}
    if edit is not None and hasattr(edit, "method"):
        edit_info.update({"method": edit.method, "hparams": edit.hparams,
                          "losses": edit.meta.get("losses", []) if isinstance(edit.meta, dict) else []})
    return Analysis(model=lm.name, data=data.name, edit=edit_info, layers=layers, geometry_layer=geometry_layer,
                    importance=imp, footprint=fp, metrics=metrics, pca=views, umap=um, probes=pr, lens=lens,
                    tokens=tokens, notes=notes, timings=timings)
