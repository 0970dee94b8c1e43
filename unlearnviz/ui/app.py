"""The dashboard: tabs in the order a user works (model → data → unlearn → insight → export),
and a one-click demo on the first screen that fills every tab."""

from __future__ import annotations

import gradio as gr

from unlearnviz import plots
from unlearnviz.session import views
from unlearnviz.ui import (
    tab_analysis,
    tab_chat,
    tab_data,
    tab_evaluate,
    tab_export,
    tab_model,
    tab_unlearn,
)
from unlearnviz.ui.common import AppConfig, UISession, ensure_ready, readable

SCORE_CACHE_ENTRIES = 200_000  # (stem, choice) scores kept per process: about 40 MB
THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="amber", text_size="lg")
CSS = """
.gradio-container {max-width: 1400px !important}
#uv-header h1 {margin-bottom: 0}
#uv-demo {min-height: 3.2em}
"""

HEADER = ("# unlearnviz\nSee what representation-level unlearning (RMU, SRMU, MRP) did to a language model: "
          "where the forget knowledge lived, what the edit moved, whether it is erased or only hidden, and how both "
          "models answer.")


def build_app(config: AppConfig | None = None) -> gr.Blocks:
    config = config or AppConfig()
    views.keep_scores(SCORE_CACHE_ENTRIES)  # the tabs score the same pairs under the same edits again
    with gr.Blocks(title="unlearnviz") as demo:
        state = gr.State(config.new_session)  # a copy of `--config`'s replayed session, or empty
        with gr.Row():
            gr.Markdown(HEADER, elem_id="uv-header")
        with gr.Row():
            demo_btn = gr.Button("▶ One-click demo: load the default model and data, run SRMU, fill every tab",
                                 variant="primary", elem_id="uv-demo", scale=4)
            demo_status = gr.Markdown("", elem_id="uv-demo-status")
        with gr.Tabs():
            with gr.Tab("Model", id="model"):
                model_ui = tab_model.build(state, config)
            with gr.Tab("Data", id="data"):
                data_ui = tab_data.build(state, config)
            with gr.Tab("Unlearn", id="unlearn") as unlearn_tab:
                unlearn_ui = tab_unlearn.build(state, config)
            analysis_ui = tab_analysis.build(state, config)
            with gr.Tab("Chat", id="chat") as chat_tab:
                chat_ui = tab_chat.build(state, config)
            with gr.Tab("Evaluate", id="evaluate"):
                eval_ui = tab_evaluate.build(state, config)
            with gr.Tab("Export", id="export"):
                export_ui = tab_export.build(state, config)

        outputs = [state, demo_status, model_ui["info"], data_ui["summary"], data_ui["preview"],
                   unlearn_ui["status"], unlearn_ui["loss_plot"], unlearn_ui["timeline"],
                   eval_ui["table"], eval_ui["bars"], chat_ui["prompt"], chat_ui["original"], chat_ui["edited"],
                   chat_ui["details"], chat_ui["examples"], *analysis_ui["outputs"]]
        # the example prompts follow whatever data the session has now (loaded, demo, bundle, config)
        chat_tab.select(tab_chat.example_samples, state, chat_ui["examples"], api_visibility="private")
        # the memory plan follows the session's model and data, whichever tab loaded them
        unlearn_tab.select(*unlearn_ui["plan"], api_visibility="private")

        @readable
        def run_demo(session: UISession, progress=gr.Progress()):
            keep = [gr.update()] * (len(outputs) - 2)
            yield [session, "Loading the default model and data …", *keep]
            ensure_ready(session, config)
            updates = {model_ui["info"]: tab_model.info_markdown(session),
                       data_ui["summary"]: tab_data.summary_markdown(session),
                       data_ui["preview"]: tab_data.preview_rows(session)}
            yield [session, "Running SRMU …", *[updates.get(c, gr.update()) for c in outputs[2:]]]
            for msg, fig in tab_unlearn.run_with_live_updates(session, config.demo_method,
                                                              dict(config.demo_overrides), progress):
                updates[unlearn_ui["status"]] = msg
                updates[unlearn_ui["loss_plot"]] = fig
                yield [session, f"Running {config.demo_method.upper()} …",
                       *[updates.get(c, gr.update()) for c in outputs[2:]]]
            result = session.evaluate()
            updates.update({unlearn_ui["status"]: tab_unlearn.edit_summary(session),
                            unlearn_ui["timeline"]: tab_unlearn.timeline_rows(session),
                            eval_ui["table"]: tab_evaluate.metrics_rows(result),
                            eval_ui["bars"]: plots.before_after_bars(result["before"], result.get("after") or {})})
            yield [session, "Analysing activations …", *[updates.get(c, gr.update()) for c in outputs[2:]]]
            analysis_values = tab_analysis.refresh_all(session, config)
            for comp, value in zip(analysis_ui["outputs"], analysis_values):
                updates[comp] = value
            yield [session, "Asking both models …", *[updates.get(c, gr.update()) for c in outputs[2:]]]
            question = tab_chat.example_prompts(session, 1)[0]
            final = None
            for final in session.chat_stream(question, 32, 0.0):
                pass
            left, right = tab_chat.panes(session.conversation_turns())
            updates.update({chat_ui["original"]: left, chat_ui["edited"]: right,
                            chat_ui["examples"]: tab_chat.example_samples(session),
                            chat_ui["details"]: tab_chat.detail_rows(session.lm, final)})
            yield [session, "**Demo complete.** Every tab now shows this edit; open them left to right.",
                   *[updates.get(c, gr.update()) for c in outputs[2:]]]

        demo_btn.click(run_demo, state, outputs, api_name="demo")

        def show_session(session: UISession):
            """Every tab redrawn from the session's state (after `--config` replay or a bundle import)."""
            if session.lm is None:
                return [session, *[gr.update()] * (len(outputs) - 1)]
            result = {"before": session.before or {}, "after": session.after.get(session.current_index) or {}}
            chat = session.chats[-1] if session.chats else None
            updates = {model_ui["info"]: tab_model.info_markdown(session),
                       data_ui["summary"]: tab_data.summary_markdown(session),
                       data_ui["preview"]: tab_data.preview_rows(session),
                       unlearn_ui["status"]: tab_unlearn.edit_summary(session),
                       unlearn_ui["timeline"]: tab_unlearn.timeline_rows(session),
                       eval_ui["table"]: tab_evaluate.metrics_rows(result),
                       eval_ui["bars"]: plots.before_after_bars(result["before"], result["after"])}
            if chat is not None:
                left, right = tab_chat.panes(session.conversation_turns() or [chat])
                updates.update({chat_ui["original"]: left, chat_ui["edited"]: right})
            return [session, *[updates.get(c, gr.update()) for c in outputs[1:]]]

        export_ui["imported"].success(readable(show_session), state, outputs, api_visibility="private")
        model_ui["imported"].success(readable(show_session), state, outputs, api_visibility="private")
        if config.template is not None:
            demo.load(readable(show_session), state, outputs, api_visibility="private")
    demo.unlearnviz_theme = THEME  # type: ignore[attr-defined]
    demo.unlearnviz_css = CSS  # type: ignore[attr-defined]
    return demo
