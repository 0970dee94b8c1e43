"""The dashboard: tabs in the order a user works (model → data → unlearn → insight → export),
and a one-click demo on the first screen that fills every tab."""

from __future__ import annotations

import gradio as gr

from unlearnviz import plots
from unlearnviz.session import progress as progress_model
from unlearnviz.session import shown, views
from unlearnviz.ui import (
    inputs,
    progress_view,
    sessions,
    tab_analysis,
    tab_chat,
    tab_data,
    tab_evaluate,
    tab_export,
    tab_model,
    tab_present,
    tab_unlearn,
)
from unlearnviz.ui.common import AppConfig, UISession, ensure_ready, readable

SCORE_CACHE_ENTRIES = 200_000  # (stem, choice) scores kept per process: about 40 MB
THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="amber", text_size="lg")
CSS = """
.gradio-container {max-width: 1400px !important}
#uv-header h1 {margin-bottom: 0}
#uv-demo {min-height: 3.2em}
""" + progress_view.CSS + tab_present.CSS
# Plotly refits a plot only when the window resizes; one first drawn while its tab was still being
# laid out (zero width) keeps Plotly's 700 px default, half the column. Refit each plot whenever
# its own box changes width (shown, hidden, its column resized).
PLOT_FIT_JS = """
() => {
  const fit = new ResizeObserver((entries) => {
    for (const e of entries) {
      if (e.contentRect.width > 0 && window.Plotly && e.target.classList.contains("js-plotly-plot")) {
        window.Plotly.Plots.resize(e.target);
      }
    }
  });
  const watch = () => document.querySelectorAll("[data-testid=plotly]").forEach((el) => {
    if (!el.dataset.uvFit) { el.dataset.uvFit = "1"; fit.observe(el); }
  });
  new MutationObserver(watch).observe(document.body, {childList: true, subtree: true});
  watch();
}
"""

HEADER = ("# unlearnviz\nSee what representation-level unlearning (RMU, SRMU, MRP) did to a language model: "
          "where the forget knowledge lived, what the edit moved, whether it is erased or only hidden, and how both "
          "models answer.")


def demo_line(session: UISession):
    """The demo's banner while it is true (every tab shows the demo's edit), reworded once the
    selection, the stack or any view has moved on; unchanged where no demo ran."""
    have = session.shown.get("demo")
    if have is None:
        return gr.skip()
    if shown.all_current(session) and have == shown.wanted(session, "demo"):
        return f"**Demo complete.** Every tab now shows its edit, {have[0].text()}; open them left to right."
    now = shown.selected(session)
    moved = f"the selection is now {now.text()}" if now != have[0] else "some views have been recomputed since"
    return f"The demo ran {have[0].text()}; {moved}. Each tab names the edit it shows."


def demo_tracker(method: str) -> progress_model.Tracker:
    """The demo's plan: an edit's stages (loading the default model and data is its preparing),
    then the analysis views and both models' answer to an example question."""
    costs = progress_model.COSTS
    return progress_model.edit_tracker(method, title=f"Demo ({method.upper()})", extra=[
        progress_model.Stage(progress_model.ANALYSING, costs.analysis_s),
        progress_model.Stage(progress_model.ANSWERING, costs.answer_s)])


def build_app(config: AppConfig | None = None) -> gr.Blocks:
    config = config or AppConfig()
    inputs.hide_folders((*config.model_dirs, *config.data_dirs))  # answers name their files relative to them
    views.keep_scores(SCORE_CACHE_ENTRIES)  # the tabs score the same pairs under the same edits again
    with gr.Blocks(title="unlearnviz") as demo:
        state = gr.State(config.new_session)  # a copy of `--config`'s replayed session, or empty
        with gr.Row():
            gr.Markdown(HEADER, elem_id="uv-header")
        with gr.Row():
            demo_btn = gr.Button("▶ One-click demo: load the default model and data, run SRMU, fill every tab",
                                 variant="primary", elem_id="uv-demo", scale=4)
            demo_status = gr.Markdown("", elem_id="uv-demo-status")
        demo_progress = gr.HTML("", elem_id="uv-demo-progress")  # the demo's bar and stages (progress_view)
        sessions_ui = sessions.build(config)  # the browser's session id and the Session panel
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
            with gr.Tab("Evaluate", id="evaluate") as eval_tab:
                eval_ui = tab_evaluate.build(state, config)
            with gr.Tab("Export", id="export"):
                export_ui = tab_export.build(state, config)
            with gr.Tab("Present", id="present") as present_tab:
                present_ui = tab_present.build(state, config)

        outputs = [state, demo_status, model_ui["info"], data_ui["summary"], data_ui["preview"],
                   unlearn_ui["status"], unlearn_ui["loss_plot"], unlearn_ui["timeline"],
                   eval_ui["table"], eval_ui["bars"], chat_ui["prompt"], chat_ui["original"], chat_ui["edited"],
                   chat_ui["details"], chat_ui["examples"], *analysis_ui["outputs"], demo_progress,
                   unlearn_ui["progress"]]
        # the example prompts follow whatever data the session has now (loaded, demo, bundle, config)
        chat_tab.select(tab_chat.example_samples, state, chat_ui["examples"], api_visibility="private")
        # every tab names the edit it shows: after anything that changes the selection or the stack,
        # each recomputes what is cheap and marks the rest stale (session.shown); opening Evaluate or
        # Chat redraws it too (a model or data loaded meanwhile)
        syncs = [unlearn_ui["sync"], eval_ui["sync"], analysis_ui["sync"], chat_ui["sync"], present_ui["sync"]]
        # opening the presenter view measures and answers what its edit is missing
        present_tab.select(*present_ui["open"], api_visibility="private")
        sync_outputs = [demo_status, *(c for _, outs in syncs for c in outs)]

        @readable
        def sync_all(session: UISession) -> list:
            values = [v for fn, _ in syncs for v in fn(session)]  # first: each records what it now shows
            return [demo_line(session), *values]

        def after(event) -> None:
            event.then(sync_all, state, sync_outputs, api_visibility="private", show_progress="hidden")

        for event in unlearn_ui["changed"]:
            after(event)
        eval_tab.select(eval_ui["sync"][0], state, eval_ui["sync"][1], api_visibility="private",
                        show_progress="hidden")
        chat_tab.select(chat_ui["sync"][0], state, chat_ui["sync"][1], api_visibility="private",
                        show_progress="hidden")
        # the memory plan follows the session's model and data, whichever tab loaded them
        unlearn_tab.select(*unlearn_ui["plan"], api_visibility="private")

        @readable
        def run_demo(session: UISession):
            # no gr.Progress: Gradio would draw its own timer and bar into the banner beside this line
            # (two texts alternating); the banner, demo_progress and the Unlearn tab's bar say it all
            tracker = demo_tracker(config.demo_method)
            updates: dict = {}

            def step(line: str | None = None) -> list:
                """The outputs now: the job's line in the banner, its bar on top and in the Unlearn tab."""
                snap = tracker.snapshot()
                updates[demo_progress] = updates[unlearn_ui["progress"]] = progress_view.html(snap, with_line=False)
                return [session, line or snap.line(), *[updates.get(c, gr.update()) for c in outputs[2:]]]

            def tracked(work):
                out: dict = {}
                for _ in progress_view.run_tracked(work, tracker, out, finish=False):
                    yield step()
                return out.get("value")

            tracker.begin(progress_model.PREPARING, detail="loading the default model and data")
            yield step()
            yield from tracked(lambda: ensure_ready(session, config))
            updates.update({model_ui["info"]: tab_model.info_markdown(session),
                            data_ui["summary"]: tab_data.summary_markdown(session),
                            data_ui["preview"]: tab_data.preview_rows(session)})
            for line, fig, _snap in tab_unlearn.run_with_live_updates(session, config.demo_method,
                                                                      dict(config.demo_overrides), tracker=tracker):
                updates[unlearn_ui["status"]] = line
                updates[unlearn_ui["loss_plot"]] = fig
                yield step(line)
            updates[unlearn_ui["loss_plot"]] = gr.update()  # the last figure drawn stays
            result = session.evaluate(compare=True)
            table, bars = tab_evaluate.shown_result(session, result)
            updates.update({unlearn_ui["status"]: tab_unlearn.edit_summary(session),
                            unlearn_ui["timeline"]: tab_unlearn.timeline_rows(session),
                            eval_ui["table"]: table, eval_ui["bars"]: bars})
            tracker.begin(progress_model.ANALYSING, detail="importance, geometry, residual knowledge")
            analysis_values = yield from tracked(lambda: tab_analysis.refresh_all(session, config))
            for comp, value in zip(analysis_ui["outputs"], analysis_values):
                updates[comp] = value
            tracker.begin(progress_model.ANSWERING)

            def answer():
                question = tab_chat.example_prompts(session, 1)[0]
                final = None
                for final in session.chat_stream(question, 32, 0.0):
                    pass
                for _ in session.compare_stream():  # the compared edit's answer, when one is chosen
                    pass
                return final

            final = yield from tracked(answer)
            left, right = tab_chat.panes(session.conversation_turns())
            updates.update({chat_ui["original"]: left, chat_ui["edited"]: right,
                            chat_ui["examples"]: tab_chat.example_samples(session),
                            chat_ui["details"]: tab_chat.detail_rows(session.lm, final)})
            shown.mark(session, "demo")
            shown.mark(session, "unlearn")  # its status and timeline above are of this edit
            tracker.finish()
            yield step(demo_line(session))

        # no Gradio overlay (it would cover the live loss curve): the banner and the bar say what runs
        after(demo_btn.click(run_demo, state, outputs, api_name="demo", show_progress="hidden"))

        def show_session(session: UISession, clear: bool = True):
            """Every tab redrawn from the session's state (after `--config` replay or a bundle import);
            ``clear``: the analysis views, which are not redrawn, are emptied (a reload or another
            session's bundle: what they showed is not of this session), else left, marked stale."""
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
            if clear:
                shown.forget(session, *tab_analysis.ANALYSIS_VIEWS, "relearn", "attacks")
                updates.update({c: None for c in analysis_ui["outputs"]})
            return [session, *[updates.get(c, gr.update()) for c in outputs[1:]]]

        after(export_ui["imported"].success(readable(show_session), state, outputs, api_visibility="private"))
        after(model_ui["imported"].success(readable(lambda s: show_session(s, clear=False)), state, outputs,
                                           api_visibility="private"))  # a checkpoint on the same timeline
        # every page load returns to the browser's session (a reload, a second tab, a restart with
        # --state-dir) or starts one (a copy of --config's, or empty); every tab is drawn from it
        after(sessions.wire(demo, sessions_ui, state, config, show_session, outputs, sessions.make_registry(config)))
    inputs.harden(demo)  # every argument reaches its handler as sent, or is refused in one line
    demo.unlearnviz_theme = THEME  # type: ignore[attr-defined]
    demo.unlearnviz_css = CSS  # type: ignore[attr-defined]
    demo.unlearnviz_js = PLOT_FIT_JS  # type: ignore[attr-defined]
    return demo
