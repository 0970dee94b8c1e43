"""Evaluate tab: before/after accuracy on forget and retain, perplexity, relearning attacks, the
robustness card (every attack of ``unlearnviz.attacks`` on the selected edit, through
``session.attacks``)."""

from __future__ import annotations

import math

import gradio as gr

from unlearnviz import plots
from unlearnviz.errors import UserError
from unlearnviz.session import Limits, catalogue, sweeps
from unlearnviz.session import attacks as session_attacks
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


ROBUSTNESS_INTRO = (
    "**Robustness card.** Much unlearning only hides knowledge: it returns after a few fine-tuning steps (even on "
    "unrelated text), after 4-bit quantization, after removing one direction, or under a prompt prefix. Each "
    "attack runs on the selected edit and, the same way, on the original; *recovered* is the share of the "
    "forgotten knowledge it brought back, (attacked − edited) / (original − edited). R (relearning) and Q "
    "(quantization) are 1 when the forgetting survives, 0 when it is undone.")


def _cell(label: str, v, change: bool = False) -> str | None:
    """Accuracies as percentages with one decimal (a change in points), the rest with two decimals:
    the format every other view uses."""
    if v is None:
        return None
    if label.endswith(" acc"):
        return f"{v * 100:+.1f} pts" if change else f"{v:.1%}"
    return f"{v:+.2f}" if change else f"{v:.2f}"


def metrics_rows(result: dict) -> list[list]:
    """The before/after table (the report's metric list, so both show the same rows)."""
    return [[label, _cell(label, b), _cell(label, a), _cell(label, d, change=True)]
            for label, b, a, d in catalogue.metric_rows(result)]


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
    choices = session_attacks.attack_choices()
    with gr.Accordion("Robustness: does the forgotten knowledge come back?", open=False):
        gr.Markdown(ROBUSTNESS_INTRO)
        attack_boxes = gr.CheckboxGroup(choices, value=[name for _, name in choices], label="attacks")
        with gr.Row():
            attack_steps = gr.Slider(2, 200, value=20, step=1, label="relearning steps (both relearning attacks)")
            attack_items = gr.Slider(4, 200, value=32, step=2, label="questions scored per side")
        with gr.Row():
            attack_btn = gr.Button("Run attacks", variant="primary")
            attack_cancel = gr.Button("Cancel", variant="stop")
        attack_status = gr.Markdown()
        card_plot = gr.Plot(label="Forget accuracy under each attack", show_label=False)
        card_table = gr.Dataframe(headers=session_attacks.CARD_HEADERS, value=[], interactive=False)
        card_out = gr.JSON(visible=False)

    @readable
    def on_attacks(session: UISession, names: list[str], n_steps: float, n_items: float, progress=gr.Progress()):
        ensure_ready(session, config)
        chosen, settings = session_attacks.ui_settings(names, n_steps, n_items, config.limits)
        session.cancel_flag.clear()

        def tick(event: dict) -> None:
            progress(session_attacks.progress_fraction(event), desc=session_attacks.progress_text(event))

        card = session_attacks.run_session_card(session, chosen, settings, progress=tick,
                                                should_stop=session.should_stop)
        rows, floor, chance = session_attacks.card_figure(card)
        return (session, session_attacks.card_headline(card), plots.robustness_card(rows, floor=floor, chance=chance),
                session_attacks.card_table(card), card)

    attack_event = attack_btn.click(on_attacks, [state, attack_boxes, attack_steps, attack_items],
                                    [state, attack_status, card_plot, card_table, card_out], api_name="attacks")

    def on_attack_cancel(session: UISession) -> str:
        session.cancel_flag.set()
        return "Attacks cancelled; nothing was kept."

    attack_cancel.click(on_attack_cancel, state, attack_status, cancels=[attack_event], api_name="cancel_attacks")
    return {"table": table, "bars": bars, "relearn_plot": relearn_plot, "card_plot": card_plot}
