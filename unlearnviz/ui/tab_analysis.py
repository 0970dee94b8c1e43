"""The three insight tabs: Importance, Geometry, Residual knowledge.

All numbers come from ``unlearnviz.session.views`` (cached by model, edit, data and layers),
all figures from ``unlearnviz.plots``; this module only wires them to the page.
"""

from __future__ import annotations

from contextlib import contextmanager

import gradio as gr

from unlearnviz import plots
from unlearnviz.session import views
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


def importance_figures(session: UISession, variant: str = "ratio", prompt: str | None = None):
    v = views.importance_view(session, variant, prompt)
    sel, fp = v.selectivity, v.footprint
    text = (f"**Layer {v.layer}:** {sel.verdict}. "
            f"I_norm ranges {sel.i_min:.2f}–{sel.i_max:.2f} (median {sel.i_median:.2f}).")
    if fp is not None:
        text += f"\n\n**Footprint:** {fp.summary}."
    return (plots.importance_heatmap(v.importance, fp), plots.selectivity_histogram(sel), text,
            plots.token_layer_heatmap(v.tokens), plots.footprint_lines(fp) if fp is not None else None)


def geometry_figures(session: UISession, method: str = "PCA", layer: int | None = None):
    g = views.geometry_view(session, method, layer)
    scatter = plots.geometry_scatter(g.umap) if g.umap is not None else plots.geometry_slider(g.pca)
    return scatter, plots.layer_metric_lines(g.rows)


def residual_figures(session: UISession, prompt: str | None = None, answer: str | None = None):
    r = views.residual_view(session, prompt, answer)
    return (plots.logit_lens_heatmap(r.lens), plots.probe_accuracy_lines(r.probes), f"**Verdict:** {r.probes.verdict}",
            r.prompt, r.answer)


@contextmanager
def cancellable(session: UISession):
    """Clear the session's cancel flag, then let the analysis stop between batches once set."""
    session.cancel_flag.clear()
    with views.stoppable(session.should_stop):
        yield


def build(state: gr.State, config: AppConfig) -> dict:
    with gr.Tab("Importance", id="importance"):
        gr.Markdown(IMPORTANCE_INTRO)
        with gr.Row():
            variant = gr.Dropdown(views.importance_variants(), value="ratio", label="map variant")
            token_prompt = gr.Textbox(label="prompt for the token map (empty = first forget text)", scale=3)
            imp_btn = gr.Button("Compute", variant="primary")
            imp_cancel = gr.Button("Cancel", variant="stop")
        imp_text = gr.Markdown()
        imp_plot = gr.Plot(label="Importance map (layer × feature)", show_label=False)
        with gr.Row():
            sel_plot = gr.Plot(label="Selectivity", show_label=False)
            fp_plot = gr.Plot(label="Edit footprint per layer", show_label=False)
        tok_plot = gr.Plot(label="Token × layer forget signature", show_label=False)
    with gr.Tab("Geometry", id="geometry"):
        gr.Markdown(GEOMETRY_INTRO)
        with gr.Row():
            method = gr.Radio(["PCA", "UMAP"], value="PCA", label="projection",
                              info="PCA: every layer at once with a slider; UMAP: one layer (slower)")
            layer = gr.Number(value=None, label="UMAP layer", precision=0)
            geo_btn = gr.Button("Compute", variant="primary")
            geo_cancel = gr.Button("Cancel", variant="stop")
        geo_plot = gr.Plot(label="Forget vs retain, original vs edited, shared basis", show_label=False)
        metric_plot = gr.Plot(label="Per-layer separability, distance, CKA", show_label=False)
    with gr.Tab("Residual knowledge", id="residual"):
        gr.Markdown(RESIDUAL_INTRO)
        with gr.Row():
            lens_prompt = gr.Textbox(label="prompt (empty = first forget item)", scale=3)
            lens_answer = gr.Textbox(label="gold answer", scale=1)
            res_btn = gr.Button("Compute", variant="primary")
            res_cancel = gr.Button("Cancel", variant="stop")
        verdict = gr.Markdown()
        lens_plot = gr.Plot(label="Logit lens: p(gold answer) per layer", show_label=False)
        probe_plot = gr.Plot(label="Linear probes per layer", show_label=False)
        api_out = gr.JSON(visible=False)
        hidden_btn = gr.Button(visible=False)
        hidden_cancel = gr.Button(visible=False)
    cancel_buttons = [imp_cancel, geo_cancel, res_cancel]

    @readable
    def on_importance(session: UISession, v: str, prompt: str):
        ensure_ready(session, config)
        with cancellable(session):
            return (session, *importance_figures(session, v, prompt or None))

    imp_event = imp_btn.click(on_importance, [state, variant, token_prompt],
                              [state, imp_plot, sel_plot, imp_text, tok_plot, fp_plot], api_visibility="private")

    @readable
    def on_geometry(session: UISession, m: str, lay):
        ensure_ready(session, config)
        with cancellable(session):
            return (session, *geometry_figures(session, m, None if lay in (None, "") else int(lay)))

    geo_event = geo_btn.click(on_geometry, [state, method, layer], [state, geo_plot, metric_plot],
                              api_visibility="private")

    @readable
    def on_residual(session: UISession, prompt: str, answer: str):
        ensure_ready(session, config)
        with cancellable(session):
            lens, probe, text, _, _ = residual_figures(session, prompt or None, answer or None)
        return session, lens, probe, text

    res_event = res_btn.click(on_residual, [state, lens_prompt, lens_answer], [state, lens_plot, probe_plot, verdict],
                              api_visibility="private")

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

    events = [imp_event, geo_event, res_event, api_event]
    for button in cancel_buttons:
        button.click(on_cancel, state, None, cancels=events, api_visibility="private")
    hidden_cancel.click(on_cancel, state, None, cancels=events, api_name="cancel_analysis")
    outputs = [imp_plot, sel_plot, imp_text, tok_plot, fp_plot, geo_plot, metric_plot, lens_plot, probe_plot, verdict,
               lens_prompt, lens_answer]
    return {"outputs": outputs}


def refresh_all(session: UISession, config: AppConfig) -> list:
    """Values for every analysis output (the demo fills all three tabs at once)."""
    imp = importance_figures(session)
    geo = geometry_figures(session)
    lens, probe, text, prompt, answer = residual_figures(session)
    return [*imp, *geo, lens, probe, text, prompt, answer]
