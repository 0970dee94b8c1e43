"""The numbers behind the dashboard's insight views, for one session's selected edit.

Importance map and footprint (SRMU's activation importance, Chen et al., arXiv 2512.16297),
geometry (PCA/UMAP projections on axes fitted to the original model, per-layer separability and
linear CKA, Kornblith et al. 2019), residual knowledge (logit lens and linear probes) and the
chat's per-token divergence. Each function only calls the
science in ``unlearnviz.analysis`` and ``unlearnviz.generation``: the activation passes are
cached there, keyed by model, edit, texts and layers, so the views share one paired pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unlearnviz.analysis import activations
from unlearnviz.analysis.geometry import GeometryView, layer_metrics, pca_views, umap_view
from unlearnviz.analysis.importance import (
    VARIANTS,
    Footprint,
    ImportanceMap,
    Selectivity,
    SplitPass,
    TokenMap,
    footprint_from_passes,
    importance,
    importance_from_passes,
    pooled_points,
    split_passes,
    token_layer_map,
)
from unlearnviz.analysis.probes import LogitLens, ProbeResult, logit_lens, residual_knowledge
from unlearnviz.errors import UserError
from unlearnviz.evaluation.scoring import SCORE_CACHE
from unlearnviz.generation import divergence_tokens, question_prompt
from unlearnviz.session import progress

if TYPE_CHECKING:
    from unlearnviz.data.schema import UnlearningData
    from unlearnviz.generation import SideBySide
    from unlearnviz.model.loading import LoadedModel
    from unlearnviz.session import Session

ANALYSIS_TEXTS = 80  # texts per split behind the importance map and footprint
MAX_GEOMETRY_TEXTS = 4000  # the view's own ceiling; Limits.max_points (default 120) is the operator's


def _begin(tracker: progress.Tracker | None, stage: str) -> None:
    """Enter ``stage`` of a view's tracker (``progress.analysis_tracker``), when it has one."""
    if tracker is not None and tracker.has(stage):
        tracker.begin(stage)


def stoppable(should_stop: Callable[[], bool] | None):
    """A context in which the views stop between batches once ``should_stop()`` is true, keeping
    nothing (a Cancel button)."""
    return activations.stoppable(should_stop)


def keep_scores(max_entries: int) -> None:
    """Let the process keep up to ``max_entries`` (stem, choice) scores: the views score the same
    pairs under the same edits again."""
    SCORE_CACHE.max_entries = max_entries


def importance_variants() -> list[str]:
    """The importance map's variants (ratio is SRMU's)."""
    return list(VARIANTS)


def analysis_passes(session: Session, compare: bool = False) -> tuple[SplitPass, SplitPass]:
    """One paired pass (original and edited rows) over the forget and retain texts, cached, that
    serves the importance map (statistics of the original rows), the edit's footprint and the
    geometry views: at least ANALYSIS_TEXTS texts per split, more if the operator's --max-points
    asks the geometry for more. ``compare``: the edited rows under the compared timeline entry
    (``Session.compare``) instead of the selected one (the same texts, so the same original rows)."""
    per_split = max(ANALYSIS_TEXTS, min(MAX_GEOMETRY_TEXTS, session.limits.max_points) // 2)
    plan = session.plan_at(session.compare) if compare else session.plan()
    return split_passes(session.lm, session.data, None, plan, per_split)


@dataclass
class ImportanceView:
    """The importance map, the selected edit's footprint on it (None without an edit), the layer
    shown (the edit's own, else a quarter of the way up), its selectivity and a prompt's token map."""

    importance: ImportanceMap
    footprint: Footprint | None
    layer: int
    selectivity: Selectivity
    tokens: TokenMap


def importance_view(session: Session, variant: str = "ratio", prompt: str | None = None,
                    tracker: progress.Tracker | None = None) -> ImportanceView:
    """The Importance view; ``prompt`` (default: the first forget text) feeds the token map.
    ``tracker``: moved through its stages (capturing activations, importance map, token map)."""
    lm, data = session.lm, session.data
    edit = session.current_edit()
    _begin(tracker, progress.CAPTURING)
    f, r = analysis_passes(session)
    _begin(tracker, progress.IMPORTANCE_MAP)
    imp = importance_from_passes(f, r, variant)
    fp = footprint_from_passes(f, r, imp) if f.footprint is not None else None
    default = imp.layers[len(imp.layers) // 4]
    layer = edit.hparams.get("layer", default) if edit is not None else default
    layer = layer if layer in imp.layers else default
    sel = imp.selectivity[imp.layers.index(layer)]
    prompt = prompt or (data.forget_texts[0] if data.forget_texts else "")
    _begin(tracker, progress.TOKEN_MAP)
    tm = token_layer_map(lm, prompt, imp, plan=session.plan())
    return ImportanceView(importance=imp, footprint=fp, layer=layer, selectivity=sel, tokens=tm)


@dataclass
class GeometryResult:
    """The Geometry view: per-layer separability, centroid distance and CKA rows, with either the
    PCA view of every layer or the UMAP view of one."""

    rows: list[dict]
    pca: list[GeometryView] | None = None
    umap: GeometryView | None = None


def geometry_view(session: Session, method: str = "PCA", layer: int | None = None,
                  compare: bool = False, tracker: progress.Tracker | None = None) -> GeometryResult:
    """Forget and retain texts as points, original and edited on the same axes; at most the
    operator's --max-points texts. ``method``: "UMAP" (one ``layer``, default a quarter of the
    way up) or anything else for PCA (every layer). ``compare``: the compared timeline entry's
    edited points (the axes are fitted on the original points alone, deterministically, so the
    selected and the compared entry's views share them). ``tracker``: moved through its stages
    (capturing activations, per-layer metrics, the projection)."""
    lm = session.lm
    if compare and session.compare is None:
        raise UserError("choose an edit to compare with first (Unlearn tab, 'Compare with edit #')")
    half = max(2, min(MAX_GEOMETRY_TEXTS, session.limits.max_points)) // 2  # the operator's --max-points caps it
    _begin(tracker, progress.CAPTURING)
    passes = analysis_passes(session, compare)
    _begin(tracker, progress.LAYER_METRICS)
    texts, groups, original, edited = pooled_points(*passes, per_group=half)
    rows = layer_metrics(original, edited, [g == "forget" for g in groups])
    _begin(tracker, progress.projection_stage(method))
    if method == "UMAP":
        layer = int(layer if layer is not None else lm.n_layers // 4)
        if layer not in original:
            raise UserError(f"layer {layer} is out of range 0..{lm.n_layers - 1}")
        return GeometryResult(rows=rows, umap=umap_view(original[layer], None if edited is None else edited[layer],
                                                        groups, texts, layer))
    return GeometryResult(rows=rows, pca=pca_views(original, edited, groups, texts))


@dataclass
class ResidualView:
    """The logit lens of one prompt and the per-layer probes, with the prompt and answer used."""

    lens: LogitLens
    probes: ProbeResult
    prompt: str
    answer: str | None


def residual_view(session: Session, prompt: str | None = None, answer: str | None = None,
                  tracker: progress.Tracker | None = None) -> ResidualView:
    """Erased or only hidden? The logit lens of ``prompt`` (default: the first forget item, with
    its gold answer) and the untrained lens readout per layer: the trained probe costs minutes on
    the default model. ``tracker``: moved through its stages (logit lens, probes)."""
    lm, data = session.lm, session.data
    if not prompt:
        item = data.forget_mcq[0]
        prompt, answer = item.question, item.gold
    _begin(tracker, progress.LOGIT_LENS)
    ll = logit_lens(lm, prompt, answer or None, plan=session.plan())
    _begin(tracker, progress.PROBES)
    pr = residual_knowledge(lm, data, plan=session.plan(), max_items=32, train_probe=False)
    return ResidualView(lens=ll, probes=pr, prompt=prompt, answer=answer)


def analysis_summary(session: Session) -> dict:
    """The numbers behind the three insight views as JSON (the API): the importance map's top
    features and the residual-knowledge probes, with the trained probe."""
    imp = importance(session.lm, session.data, max_texts=120)
    pr = residual_knowledge(session.lm, session.data, plan=session.plan(), max_items=48)
    return {"importance": imp.to_json(k=5), "residual_knowledge": pr.to_json()}


def example_questions(data: UnlearningData, chat: bool, n: int = 3) -> list[str]:
    """The first ``n`` forget and ``n`` retain questions as prompts (a request for chat models,
    the cloze stem for base models)."""
    forget = [question_prompt(it, chat) for it in data.forget_mcq[:n]]
    retain = [question_prompt(it, chat) for it in data.retain_mcq[:n]]
    return forget + retain


def token_divergence(lm: LoadedModel, state: SideBySide) -> list[dict]:
    """Per edited-answer token: text, its probability under the edited and the original model,
    and whether the edited answer departs there."""
    return divergence_tokens(lm, state)
