"""Evaluate tab: before/after accuracy on forget and retain, perplexity, relearning attacks."""

from __future__ import annotations

import math

import gradio as gr

from unlearnviz import plots
from unlearnviz.errors import UserError
from unlearnviz.evaluation.relearn import RelearnSettings
from unlearnviz.ui.common import AppConfig, UISession, ensure_ready, readable

INTRO = ("**Evaluate.** Cloze accuracy is the primary metric for small models (lettered A–D scoring is at "
         "chance below a few billion parameters); the *floor* is what the same options score with the subject "
         "removed, so forgetting means falling to the floor, not to zero. The relearning attack fine-tunes on half "
         "A of the forget facts and measures half B: knowledge that comes back was hidden, not erased.")

KEYS = [("forget cloze acc", "forget_cloze_acc"), ("forget floor acc", "forget_floor_acc"),
        ("forget half-B cloze acc", "forget_b_cloze_acc"), ("retain cloze acc", "retain_cloze_acc"),
        ("retain floor acc", "retain_floor_acc"), ("forget gold log-prob", "forget_gold_logprob"),
        ("retain gold log-prob", "retain_gold_logprob"), ("retain perplexity", "retain_ppl"),
        ("lettered (lm-eval) forget acc", "forget_mcq_acc"), ("lettered (lm-eval) retain acc", "retain_mcq_acc")]


def metrics_rows(result: dict) -> list[list]:
    before, after = result.get("before", {}), result.get("after", {})
    rows = []
    for label, key in KEYS:
        if key in before or key in after:
            b, a = before.get(key), after.get(key)
            rows.append([label, _fmt(b), _fmt(a), _fmt(None if a is None or b is None else a - b)])
    return rows


def _fmt(v):
    return None if v is None else round(float(v), 4)


def build(state: gr.State, config: AppConfig) -> dict:
    gr.Markdown(INTRO)
    with gr.Row():
        run_eval = gr.Button("Evaluate before / after", variant="primary")
        letter = gr.Checkbox(value=False, label="also lettered A–D scoring (slower)")
    table = gr.Dataframe(headers=["metric", "original", "edited", "change"], value=[], interactive=False)
    bars = gr.Plot(label="Forget and retain accuracy", show_label=False)
    gr.Markdown("### Relearning attack")
    with gr.Row():
        steps = gr.Slider(5, 200, value=30, step=5, label="fine-tuning steps on forget half A")
        lr = gr.Number(value=RelearnSettings.lr, label="learning rate")
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
        from unlearnviz.evaluation.relearn import finetune_attack, whitebox_attacks

        ensure_ready(session, config)
        if n_steps is None or not 1 <= n_steps <= config.limits.max_steps:
            raise UserError(f"steps must be 1..{config.limits.max_steps} (this server's limit)")
        if rate is None or not (math.isfinite(rate) and 0 < rate <= 1):
            raise UserError(f"the learning rate must be a number in (0, 1], got {rate}")
        plan = session.plan()
        if plan is None:
            raise UserError("run an edit first (Unlearn tab): the attack compares edited with original")
        settings = RelearnSettings(steps=int(n_steps), lr=float(rate), eval_every=max(1, int(n_steps) // 5))
        tick = (lambda ev: progress((ev["step"], ev["total"]), desc="relearning"))
        edited = finetune_attack(session.lm, session.data, plan, settings, progress=tick, should_stop=session.should_stop)
        original = finetune_attack(session.lm, session.data, None, settings, progress=tick, should_stop=session.should_stop)
        layer = max(plan.edited_layers())
        wb = whitebox_attacks(session.lm, session.data, plan, layer)
        session.relearn[session.current_index] = {"edited": edited, "original": original, "whitebox": wb}
        return session, plots.relearning_curve(edited, original), wb

    relearn.click(on_relearn, [state, steps, lr], [state, relearn_plot, whitebox], api_name="relearn")
    return {"table": table, "bars": bars, "relearn_plot": relearn_plot}
