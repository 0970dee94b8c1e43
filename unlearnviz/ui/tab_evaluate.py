"""Evaluate tab: before/after accuracy on forget and retain, perplexity, relearning attacks."""

from __future__ import annotations

import math

import gradio as gr

from unlearnviz import plots
from unlearnviz.errors import UserError
from unlearnviz.session import Limits, catalogue, sweeps
from unlearnviz.ui.common import AppConfig, UISession, ensure_ready, readable

INTRO = ("**Evaluate.** Cloze accuracy is the primary metric for small models (lettered A–D scoring is at "
         "chance below a few billion parameters); the *floor* is what the same options score with the subject "
         "removed, so forgetting means falling to the floor, not to zero. The relearning attack fine-tunes on half "
         "A of the forget facts and measures half B: knowledge that comes back was hidden, not erased.")

SWEEP_INTRO = (
    "**Small sweep.** Fit a few edits with different settings on the original model (your edit timeline is left "
    "alone) and see them on one forget-vs-retain chart, one colour per method. One setting per line as "
    "`key=value1,value2`; a single value fixes a setting for every point; `srmu.c_map=1,2` applies to one method "
    "only.")


def metrics_rows(result: dict) -> list[list]:
    """The before/after table (the report's metric list, so both show the same rows)."""
    return catalogue.metric_rows(result)


def sweep_points(methods: list[str] | None, grid_text: str | None, limits: Limits, lm=None) -> list[tuple[str, dict]]:
    """The grid a visitor typed, checked against this server's limits before anything is fitted."""
    lines = [ln.strip() for ln in (grid_text or "").replace(";", "\n").splitlines() if ln.strip()]
    return sweeps.grid_points(methods, lines, limits, lm)


def build(state: gr.State, config: AppConfig) -> dict:
    gr.Markdown(INTRO)
    with gr.Row():
        run_eval = gr.Button("Evaluate before / after", variant="primary")
        letter = gr.Checkbox(value=False, label="also lettered A–D scoring (slower)")
    relearn_defaults = catalogue.relearn_defaults()
    table = gr.Dataframe(headers=["metric", "original", "edited", "change"], value=[], interactive=False)
    bars = gr.Plot(label="Forget and retain accuracy", show_label=False)
    gr.Markdown("### Relearning attack")
    with gr.Row():
        steps = gr.Slider(5, 200, value=30, step=5, label="fine-tuning steps on forget half A")
        lr = gr.Number(value=relearn_defaults.lr, label="learning rate")
        relearn = gr.Button("Run relearning attack")
    relearn_plot = gr.Plot(label="Half-B accuracy while relearning", show_label=False)
    whitebox = gr.JSON(label="White-box attacks (half-B cloze accuracy)")
    api_out = gr.JSON(visible=False)

    @readable
    def on_eval(session: UISession, with_letter: bool, progress=gr.Progress()):
        ensure_ready(session, config)
        if with_letter:
            session.before, session.after = None, {}
        result = session.evaluate(letter=with_letter,
                                  progress=lambda d, t, _: progress((d, t), desc="scoring"),
                                  should_stop=session.should_stop)
        return session, metrics_rows(result), plots.before_after_bars(result.get("before", {}), result.get("after") or {}), result

    run_eval.click(on_eval, [state, letter], [state, table, bars, api_out], api_name="evaluate")

    @readable
    def on_relearn(session: UISession, n_steps: float, rate: float, progress=gr.Progress()):
        ensure_ready(session, config)
        if n_steps is None or not 1 <= n_steps <= config.limits.max_steps:
            raise UserError(f"steps must be 1..{config.limits.max_steps} (this server's limit)")
        if rate is None or not (math.isfinite(rate) and 0 < rate <= 1):
            raise UserError(f"the learning rate must be a number in (0, 1], got {rate}")
        seed = config.run_config.seed if config.run_config is not None else relearn_defaults.seed
        # Session.run_relearn keeps the settings with the result, so the exported config and bundle carry them
        result = session.run_relearn(steps=int(n_steps), lr=float(rate), eval_every=max(1, int(n_steps) // 5),
                                     seed=seed, progress=lambda ev: progress((ev["step"], ev["total"]),
                                                                             desc="relearning"),
                                     should_stop=session.should_stop)
        return session, plots.relearning_curve(result["edited"], result["original"]), result["whitebox"]

    relearn.click(on_relearn, [state, steps, lr], [state, relearn_plot, whitebox], api_name="relearn")

    with gr.Accordion("Small sweep: compare a few settings", open=False):
        gr.Markdown(SWEEP_INTRO)
        with gr.Row():
            sweep_methods = gr.CheckboxGroup(["rmu", "srmu", "mrp"], value=["srmu"], label="methods")
            grid = gr.Textbox(value="steps=100,200", lines=3, scale=2, label="grid (one key=v1,v2,... per line)",
                              info=f"at most {config.limits.max_sweep_points} points in all")
        with gr.Row():
            sweep_btn = gr.Button("Run sweep", variant="primary")
            sweep_cancel = gr.Button("Cancel", variant="stop")
        sweep_status = gr.Markdown()
        sweep_plot = gr.Plot(label="Forget vs retain, every point", show_label=False)
        sweep_table = gr.Dataframe(headers=sweeps.SWEEP_HEADERS, value=[], interactive=False)
        sweep_out = gr.JSON(visible=False)

    @readable
    def on_sweep(session: UISession, methods: list[str], grid_text: str, progress=gr.Progress()):
        ensure_ready(session, config)
        points = sweep_points(methods, grid_text, config.limits, session.lm)
        session.cancel_flag.clear()

        def tick(i: int, n: int, event: dict) -> None:
            progress((i - 1 + event["step"] / max(1, event.get("total") or 1)) / n, desc=f"point {i}/{n}")

        for rows, front, before in sweeps.live_sweep(session, points, progress=tick, should_stop=session.should_stop):
            status = f"{len(rows)} of {len(points)} points done" + (" …" if len(rows) < len(points) else ".")
            yield (session, status, plots.tradeoff_figure(rows, front, before), sweeps.sweep_table(rows, front),
                   {"rows": rows, "front": sorted(front), "points": len(points)})

    sweep_event = sweep_btn.click(on_sweep, [state, sweep_methods, grid],
                                  [state, sweep_status, sweep_plot, sweep_table, sweep_out], api_name="sweep")

    def on_sweep_cancel(session: UISession) -> str:
        session.cancel_flag.set()
        return "Sweep cancelled; the points that finished are kept above."

    sweep_cancel.click(on_sweep_cancel, state, sweep_status, cancels=[sweep_event], api_name="cancel_sweep")
    return {"table": table, "bars": bars, "relearn_plot": relearn_plot}
