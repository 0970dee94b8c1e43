"""The three insight tabs: Importance, Geometry, Residual knowledge.

All numbers come from ``unlearnviz.session.views`` (cached by model, edit, data and layers),
all figures from ``unlearnviz.plots``; this module only wires them to the page.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import gradio as gr

from unlearnviz import plots
from unlearnviz.session import progress as progress_model
from unlearnviz.session import shown, views
from unlearnviz.ui import progress_view
from unlearnviz.ui.common import AppConfig, UISession, ensure_ready, readable

IMPORTANCE_INTRO = (
    "**Importance.** SRMU's activation-importance map: for every layer and feature, how much more the forget "
    "data activates it than the retain data (I_norm, 1 = most forget-specific). The histogram and the top-10% "
    "share say whether the map singles out features at all (10% = uniform). The footprint is how much the "
    "selected edit moved each feature; the token map shows which tokens of a prompt carry the forget signature.")
GEOMETRY_INTRO = (
    "**Geometry.** Every forget and retain text as a point (mean of its token activations), projected on axes "
    "fitted to the *original* model; the edited model's points are projected on the same axes, so before and "
    "after are comparable. Drag the slider through the layers. The line chart gives, per layer, how linearly "
    "separable forget and retain are, how far apart their centroids are, and how similar the edited activations "
    "are to the original ones (CKA, 1 = unchanged).")
RESIDUAL_INTRO = (
    "**Residual knowledge.** Is the knowledge erased or only hidden? The logit lens decodes each layer's residual "
    "stream for one prompt: the gold answer's probability per layer, original vs edited. The probes try to read "
    "the right answer from each layer's activations: if the edited model's output has forgotten but a probe still "
    "reads the answer mid-model, the knowledge is *hidden, not erased*.")


def _drawing(tracker: progress_model.Tracker | None) -> None:
    if tracker is not None:
        tracker.begin(progress_model.DRAWING)


def importance_figures(session: UISession, variant: str = "ratio", prompt: str | None = None,
                       tracker: progress_model.Tracker | None = None):
    """The Importance tab's figures and text; ``tracker``: an ``analysis_tracker("importance")``."""
    v = views.importance_view(session, variant, prompt, tracker=tracker)
    _drawing(tracker)
    sel, fp = v.selectivity, v.footprint
    text = (f"**Layer {v.layer}:** {sel.verdict}. "
            f"I_norm ranges {sel.i_min:.2f}–{sel.i_max:.2f} (median {sel.i_median:.2f}).")
    if fp is not None:
        text += f"\n\n**Footprint:** {fp.summary}."
    return (plots.importance_heatmap(v.importance, fp), plots.selectivity_histogram(sel), text,
            plots.token_layer_heatmap(v.tokens), plots.footprint_lines(fp) if fp is not None else None)


def geometry_figures(session: UISession, method: str = "PCA", layer: int | None = None,
                     tracker: progress_model.Tracker | None = None):
    """The scatter and per-layer lines of the selected edit and, when one is chosen, of the
    compared edit on the same axes (None, None otherwise), each figure naming its edit.
    ``tracker``: an ``analysis_tracker("geometry", method, compare)``."""
    first, second = shown.wanted(session, "geometry")
    found = []
    for tag, compare in ((first, False), (second, True)):
        if tag is not None and compare and tracker is not None and tracker.has(progress_model.COMPARED):
            tracker.begin(progress_model.COMPARED)
        found.append(None if tag is None else
                     views.geometry_view(session, method, layer, compare=compare, tracker=None if compare else tracker))
    _drawing(tracker)
    out = []
    for tag, g in zip((first, second), found):
        if g is None:
            out += [None, None]
            continue
        scatter = (plots.geometry_scatter(g.umap) if g.umap is not None
                   else plots.geometry_slider(g.pca, start=most_changed_layer(g.rows, g.pca)))
        out += [plots.for_edit(scatter, tag.text()), plots.for_edit(plots.layer_metric_lines(g.rows), tag.text())]
    return tuple(out)


def most_changed_layer(rows: list[dict], views: dict) -> int | None:
    """The layer whose activations the edit changed most (lowest CKA between original and edited
    among the layers with a view): where the geometry slider opens. None without an edit."""
    changed = [r for r in rows if r.get("changed") and r["layer"] in views and r.get("cka") == r.get("cka")]
    return min(changed, key=lambda r: r["cka"])["layer"] if changed else None


def residual_figures(session: UISession, prompt: str | None = None, answer: str | None = None,
                     tracker: progress_model.Tracker | None = None):
    """The Residual knowledge tab's figures, verdict, prompt and answer; ``tracker``: an
    ``analysis_tracker("residual")``."""
    r = views.residual_view(session, prompt, answer, tracker=tracker)
    _drawing(tracker)
    return (plots.logit_lens_heatmap(r.lens), plots.probe_accuracy_lines(r.probes), f"**Verdict:** {r.probes.verdict}",
            r.prompt, r.answer)


@contextmanager
def cancellable(session: UISession):
    """Clear the session's cancel flag, then let the analysis stop between batches once set."""
    session.cancel_flag.clear()
    with views.stoppable(session.should_stop):
        yield


def tracked(session: UISession, tracker: progress_model.Tracker, compute: Callable[[], tuple]) -> Iterator[tuple]:
    """Run ``compute()`` (a view's figures) in a worker thread, cancellable between batches;
    yield (the bar and its stages, None) about twice a second while it runs, then (the finished
    bar, what it returned)."""
    out: dict = {}

    def work():
        with cancellable(session):
            return compute()

    for snap, _ in progress_view.run_tracked(work, tracker, out):
        yield progress_view.html(snap), out["value"] if snap.finished else None


def _tag_row(view: str):
    """The line naming the edit a view shows (or that it is stale) and its one-click refresh."""
    with gr.Row(equal_height=True):
        line = gr.Markdown(elem_id=f"uv-tag-{view}", elem_classes=["uv-tag"])
        button = gr.Button("↻ Refresh for the selected edit", visible=False, size="sm", scale=0, min_width=240,
                           elem_id=f"uv-refresh-{view}")
    return line, button


def build(state: gr.State, config: AppConfig) -> dict:
    with gr.Tab("Importance", id="importance") as imp_tab:
        gr.Markdown(IMPORTANCE_INTRO)
        imp_tag, imp_refresh = _tag_row("importance")
        with gr.Row():
            variant = gr.Dropdown(views.importance_variants(), value="ratio", label="map variant")
            token_prompt = gr.Textbox(label="prompt for the token map (empty = first forget text)", scale=3)
            imp_btn = gr.Button("Compute", variant="primary")
            imp_cancel = gr.Button("Cancel", variant="stop")
        imp_progress = gr.HTML("", elem_id="uv-importance-progress")  # the view's stages, bar and ETA
        imp_text = gr.Markdown()
        imp_plot = gr.Plot(label="Importance map (layer × feature)", show_label=False)
        with gr.Row():
            sel_plot = gr.Plot(label="Selectivity", show_label=False)
            fp_plot = gr.Plot(label="Edit footprint per layer", show_label=False)
        tok_plot = gr.Plot(label="Token × layer forget signature", show_label=False)
    with gr.Tab("Geometry", id="geometry") as geo_tab:
        gr.Markdown(GEOMETRY_INTRO)
        geo_tag, geo_refresh = _tag_row("geometry")
        with gr.Row():
            method = gr.Radio(["PCA", "UMAP"], value="PCA", label="projection",
                              info="PCA: every layer at once with a slider; UMAP: one layer (slower)")
            layer = gr.Number(value=None, label="UMAP layer", precision=0)
            geo_btn = gr.Button("Compute", variant="primary")
            geo_cancel = gr.Button("Cancel", variant="stop")
        geo_progress = gr.HTML("", elem_id="uv-geometry-progress")
        with gr.Row():
            with gr.Column():
                geo_plot = gr.Plot(label="Forget vs retain, original vs edited, shared basis", show_label=False)
                metric_plot = gr.Plot(label="Per-layer separability, distance, CKA", show_label=False)
            with gr.Column(visible=False) as geo_b:  # the compared edit, on the same axes
                geo_plot_b = gr.Plot(label="The compared edit, same basis", show_label=False)
                metric_plot_b = gr.Plot(label="The compared edit: separability, distance, CKA", show_label=False)
    with gr.Tab("Residual knowledge", id="residual") as res_tab:
        gr.Markdown(RESIDUAL_INTRO)
        res_tag, res_refresh = _tag_row("residual")
        with gr.Row():
            lens_prompt = gr.Textbox(label="prompt (empty = first forget item)", scale=3)
            lens_answer = gr.Textbox(label="gold answer", scale=1)
            res_btn = gr.Button("Compute", variant="primary")
            res_cancel = gr.Button("Cancel", variant="stop")
        res_progress = gr.HTML("", elem_id="uv-residual-progress")
        verdict = gr.Markdown()
        lens_plot = gr.Plot(label="Logit lens: p(gold answer) per layer", show_label=False)
        probe_plot = gr.Plot(label="Linear probes per layer", show_label=False)
        api_out = gr.JSON(visible=False)
        hidden_btn = gr.Button(visible=False)
        hidden_cancel = gr.Button(visible=False)
    cancel_buttons = [imp_cancel, geo_cancel, res_cancel]
    bars = [imp_progress, geo_progress, res_progress]

    def left_as_is(n: int):
        """A refused or failed view leaves its figures as they were, and no half-full bar."""
        return lambda session, *_: (session, *[gr.skip()] * n, "")

    # each view streams its bar (stages, ETA) beside its button; no Gradio overlay over the bar
    @readable(restore=left_as_is(5))
    def on_importance(session: UISession, v: str, prompt: str):
        ensure_ready(session, config)
        tracker = progress_model.analysis_tracker("importance")
        for bar, figures in tracked(session, tracker, lambda: importance_figures(session, v, prompt or None, tracker)):
            if figures is None:
                yield session, *[gr.skip()] * 5, bar
        shown.mark(session, "importance")
        yield session, *figures, bar

    imp_io = ([state, variant, token_prompt], [state, imp_plot, sel_plot, imp_text, tok_plot, fp_plot, imp_progress])
    imp_event = imp_btn.click(on_importance, *imp_io, api_visibility="private", show_progress="hidden")
    imp_again = imp_refresh.click(on_importance, *imp_io, api_visibility="private", show_progress="hidden")

    @readable(restore=left_as_is(4))
    def on_geometry(session: UISession, m: str, lay):
        ensure_ready(session, config)
        tracker = progress_model.analysis_tracker("geometry", m, compare=session.compare is not None)
        chosen = None if lay in (None, "") else int(lay)
        for bar, figures in tracked(session, tracker, lambda: geometry_figures(session, m, chosen, tracker)):
            if figures is None:
                yield session, *[gr.skip()] * 4, bar
        shown.mark(session, "geometry")
        yield session, *figures, bar

    geo_io = ([state, method, layer], [state, geo_plot, metric_plot, geo_plot_b, metric_plot_b, geo_progress])
    geo_event = geo_btn.click(on_geometry, *geo_io, api_visibility="private", show_progress="hidden")
    geo_again = geo_refresh.click(on_geometry, *geo_io, api_visibility="private", show_progress="hidden")

    @readable(restore=left_as_is(3))
    def on_residual(session: UISession, prompt: str, answer: str):
        ensure_ready(session, config)
        tracker = progress_model.analysis_tracker("residual")
        for bar, figures in tracked(session, tracker,
                                    lambda: residual_figures(session, prompt or None, answer or None, tracker)):
            if figures is None:
                yield session, *[gr.skip()] * 3, bar
        lens, probe, text, _, _ = figures
        shown.mark(session, "residual")
        yield session, lens, probe, text, bar

    res_io = ([state, lens_prompt, lens_answer], [state, lens_plot, probe_plot, verdict, res_progress])
    res_event = res_btn.click(on_residual, *res_io, api_visibility="private", show_progress="hidden")
    res_again = res_refresh.click(on_residual, *res_io, api_visibility="private", show_progress="hidden")

    @readable
    def on_analyze(session: UISession):
        """API: the numbers behind the three tabs for the selected edit."""
        ensure_ready(session, config)
        with cancellable(session):
            summary = views.analysis_summary(session)
        return session, summary

    api_event = hidden_btn.click(on_analyze, state, [state, api_out], api_name="analyze")

    def on_cancel(session: UISession) -> None:
        session.cancel_flag.set()  # the running analysis stops at its next batch and keeps nothing
        gr.Info("Analysis cancelled")

    events = [imp_event, geo_event, res_event, api_event, imp_again, geo_again, res_again]
    for button in cancel_buttons:  # each stops every view that runs, so each clears every bar
        button.click(on_cancel, state, None, cancels=events, api_visibility="private")
        button.click(lambda: [""] * len(bars), None, bars, api_visibility="private")  # no half-full bar left
    hidden_cancel.click(on_cancel, state, None, cancels=events, api_name="cancel_analysis")
    outputs = [imp_plot, sel_plot, imp_text, tok_plot, fp_plot, geo_plot, metric_plot, lens_plot, probe_plot, verdict,
               lens_prompt, lens_answer, geo_plot_b, metric_plot_b]

    def sync(session: UISession) -> list:
        """Each view's tag line: the edit it shows, or stale (with its refresh button shown); the
        compared edit's geometry column while the geometry shown has one."""
        out = []
        for view in ANALYSIS_VIEWS:
            out += [shown.line(session, view), gr.update(visible=shown.is_stale(session, view))]
        have = session.shown.get("geometry")
        return [*out, gr.update(visible=have is not None and have[1] is not None)]

    sync_outputs = [imp_tag, imp_refresh, geo_tag, geo_refresh, res_tag, res_refresh, geo_b]
    for event in (imp_event, geo_event, res_event, imp_again, geo_again, res_again):
        event.then(sync, state, sync_outputs, api_visibility="private", show_progress="hidden")
    for tab in (imp_tab, geo_tab, res_tab):  # opening a tab shows whether it is still current
        tab.select(sync, state, sync_outputs, api_visibility="private", show_progress="hidden")
    return {"outputs": outputs, "sync": (sync, sync_outputs)}


ANALYSIS_VIEWS = ("importance", "geometry", "residual")


def refresh_all(session: UISession, config: AppConfig) -> list:
    """Values for every analysis output (the demo fills all three tabs at once), each view
    recorded as showing the selected edit."""
    imp = importance_figures(session)
    geo = geometry_figures(session)
    lens, probe, text, prompt, answer = residual_figures(session)
    for view in ANALYSIS_VIEWS:
        shown.mark(session, view)
    return [*imp, *geo[:2], lens, probe, text, prompt, answer, *geo[2:]]
