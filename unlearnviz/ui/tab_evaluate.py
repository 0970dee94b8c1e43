"""Evaluate tab: before/after accuracy on forget and retain, perplexity, relearning attacks, the
robustness card (every attack of ``unlearnviz.attacks`` on the selected edit, through
``session.attacks``)."""

from __future__ import annotations

import math

import gradio as gr

from unlearnviz import plots
from unlearnviz.errors import UserError
from unlearnviz.session import Limits, catalogue, shown, sweeps
from unlearnviz.session import attacks as session_attacks
from unlearnviz.session import progress as progress_model
from unlearnviz.ui import inputs, progress_view
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


def metrics_table(session: UISession, result: dict) -> dict:
    """The table of ``result`` (``Session.evaluate``) with its columns named by edit: original |
    edit #X | change, and | edit #Y | change when a compared edit's metrics are in it."""
    first, second = shown.wanted(session, "evaluate")
    rows = metrics_rows(result)
    headers = ["metric", "original", first.text(), "change"]
    if second is not None and result.get("compare") is not None:
        other = {r[0]: r[2:] for r in metrics_rows({"before": result["before"], "after": result["compare"]})}
        rows = [[*r, *other.get(r[0], [None, None])] for r in rows]
        headers = [*headers[:3], f"change (#{first.number})", second.text(), f"change (#{second.number})"]
    return {"headers": headers, "data": rows}


def metrics_bars(session: UISession, result: dict):
    """The forget/retain bars of ``result``, each edit named in the legend and the title."""
    first, second = shown.wanted(session, "evaluate")
    compare = result.get("compare") if second is not None else None
    names = [first.text()] + ([second.text()] if compare is not None else [])
    fig = plots.before_after_bars(result.get("before") or {}, result.get("after") or {}, names=names, compare=compare)
    return plots.for_edit(fig, " vs ".join(names))


def cached_result(session: UISession) -> dict | None:
    """The Evaluate numbers of the selection as it stands, from what the session measured (after
    each edit's fit, or an earlier Evaluate), or None when something is not measured yet."""
    first, second = shown.wanted(session, "evaluate")
    if session.before is None:
        return None
    result = {"before": session.before}
    for key, t in (("after", first), ("compare", second)):
        if t is not None and t.index is not None:
            if t.index not in session.after:
                return None
            result[key] = session.after[t.index]
    return result


def shown_result(session: UISession, result: dict) -> tuple[dict, object]:
    """Table and bars of ``result``, recorded as what the Evaluate view shows."""
    shown.mark(session, "evaluate")
    return metrics_table(session, result), metrics_bars(session, result)


def sweep_points(methods: list[str] | None, grid_text: str | None, limits: Limits, lm=None) -> list[tuple[str, dict]]:
    """The grid a visitor typed, checked against this server's limits before anything is fitted."""
    lines = [ln.strip() for ln in (grid_text or "").replace(";", "\n").splitlines() if ln.strip()]
    return sweeps.grid_points(methods, lines, limits, lm)


def evaluate_with_progress(session: UISession, with_letter: bool, progress=None):
    """``Session.evaluate`` (the original, the selected edit, the compared one; what is kept is
    not scored again) in a worker thread, cancellable; yield (snapshot, None) about twice a
    second while it scores, then (the finished snapshot, the result). ``progress``: a
    ``gr.Progress`` (API clients see the same line)."""
    session.cancel_flag.clear()
    if with_letter:
        session.before, session.after = None, {}
    tracker = progress_model.evaluate_tracker(compare=session.compare is not None)
    out: dict = {}

    def work():
        return session.evaluate(letter=with_letter, should_stop=session.should_stop, compare=True, tracker=tracker)

    for snap, _ in progress_view.run_tracked(work, tracker, out, progress=progress):
        yield snap, out["value"] if snap.finished else None


def build(state: gr.State, config: AppConfig) -> dict:
    gr.Markdown(INTRO)
    with gr.Row():
        run_eval = gr.Button("Evaluate before / after", variant="primary")
        eval_cancel = gr.Button("Cancel", variant="stop")
        letter = gr.Checkbox(value=False, label="also lettered A–D scoring (slower)")
    eval_progress = gr.HTML("", elem_id="uv-evaluate-progress")  # the scoring's stages, bar and ETA
    relearn_defaults = catalogue.relearn_defaults()
    with gr.Row(equal_height=True):
        tag = gr.Markdown(elem_id="uv-tag-evaluate", elem_classes=["uv-tag"])
        refresh = gr.Button("↻ Refresh for the selected edit", visible=False, size="sm", scale=0, min_width=240)
    table = gr.Dataframe(headers=["metric", "original", "edited", "change"], value=[], interactive=False)
    bars = gr.Plot(label="Forget and retain accuracy", show_label=False)
    gr.Markdown("### Relearning attack")
    with gr.Row():
        steps = gr.Slider(5, 200, value=30, step=5, label="fine-tuning steps on forget half A")
        lr = gr.Number(value=relearn_defaults.lr, label="learning rate")
        relearn = gr.Button("Run relearning attack")
    relearn_tag = gr.Markdown(elem_id="uv-tag-relearn", elem_classes=["uv-tag"])
    relearn_plot = gr.Plot(label="Half-B accuracy while relearning", show_label=False)
    whitebox = gr.JSON(label="White-box attacks (half-B cloze accuracy)")
    api_out = gr.JSON(visible=False)

    @readable(args=inputs.Evaluate)
    def on_eval(session: UISession, with_letter: bool, progress=gr.Progress()):
        ensure_ready(session, config)
        result = None
        for _snap, result in evaluate_with_progress(session, with_letter, progress):
            pass
        return session, *shown_result(session, result), result

    # the page's form streams the bar beside the button (no Gradio overlay over it); the API's,
    # on a hidden button, keeps its four outputs
    @readable(args=inputs.Evaluate, restore=lambda session, *_: (session, gr.skip(), gr.skip(), gr.skip(), ""))
    def on_eval_page(session: UISession, with_letter: bool):
        ensure_ready(session, config)
        for snap, result in evaluate_with_progress(session, with_letter):
            if result is None:
                yield session, gr.skip(), gr.skip(), gr.skip(), progress_view.html(snap)
        yield session, *shown_result(session, result), result, progress_view.html(snap)

    page_io = ([state, letter], [state, table, bars, api_out, eval_progress])
    eval_event = run_eval.click(on_eval_page, *page_io, api_visibility="private", show_progress="hidden")
    refresh_event = refresh.click(on_eval_page, *page_io, api_visibility="private", show_progress="hidden")
    eval_api_btn = gr.Button(visible=False)
    eval_api_event = eval_api_btn.click(on_eval, [state, letter], [state, table, bars, api_out], api_name="evaluate")

    def on_eval_cancel(session: UISession) -> str:
        session.cancel_flag.set()  # the scoring stops at its next batch; nothing half-scored is kept
        gr.Info("Evaluation cancelled")
        return ""

    eval_cancel.click(on_eval_cancel, state, eval_progress, cancels=[eval_event, refresh_event, eval_api_event],
                      api_visibility="private")

    @readable(args=inputs.Relearn)
    def on_relearn(session: UISession, n_steps: float, rate: float, progress=gr.Progress()):
        ensure_ready(session, config)
        if n_steps is None or not 1 <= n_steps <= config.limits.max_steps:
            raise UserError(f"steps must be 1..{config.limits.max_steps} (this server's limit)")
        if rate is None or not (math.isfinite(rate) and 0 < rate <= 1):
            raise UserError(f"the learning rate must be a number in (0, 1], got {rate}")
        seed = config.run_config.seed if config.run_config is not None else relearn_defaults.seed
        # Session.run_relearn keeps the settings with the result, so the exported config and bundle carry them
        tracker = progress_model.relearn_tracker(int(n_steps))  # its stages, bar and ETA in the overlay
        result = session.run_relearn(steps=int(n_steps), lr=float(rate), eval_every=max(1, int(n_steps) // 5),
                                     seed=seed, progress=lambda _ev: progress_view.to_gradio(progress, tracker.snapshot()),
                                     should_stop=session.should_stop, tracker=tracker)
        shown.mark(session, "relearn")
        return session, *relearn_outputs(result)

    relearn_event = relearn.click(on_relearn, [state, steps, lr], [state, relearn_plot, whitebox], api_name="relearn")

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

    @readable(args=inputs.Sweep)
    def on_sweep(session: UISession, methods: list[str], grid_text: str, progress=gr.Progress()):
        ensure_ready(session, config)
        points = sweep_points(methods, grid_text, config.limits, session.lm)
        session.cancel_flag.clear()

        tracker = sweeps.sweep_tracker(points)  # a stage per point: its bar and ETA in the overlay

        def tick(i: int, n: int, event: dict) -> None:
            progress_view.to_gradio(progress, tracker.snapshot())

        for rows, front, before in sweeps.live_sweep(session, points, progress=tick, should_stop=session.should_stop,
                                                     tracker=tracker):
            if len(rows) == len(points):
                tracker.finish()
            status = f"{len(rows)} of {len(points)} points done. {tracker.line()}"
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
        card_tag = gr.Markdown(elem_id="uv-tag-attacks", elem_classes=["uv-tag"])
        attack_status = gr.Markdown()
        card_plot = gr.Plot(label="Forget accuracy under each attack", show_label=False)
        card_curve = gr.Plot(label="Recovery curves of the relearning attacks", show_label=False)
        card_table = gr.Dataframe(headers=session_attacks.CARD_HEADERS, value=[], interactive=False)
        card_out = gr.JSON(visible=False)

    @readable(args=inputs.Attacks)
    def on_attacks(session: UISession, names: list[str], n_steps: float, n_items: float, progress=gr.Progress()):
        ensure_ready(session, config)
        chosen, settings = session_attacks.ui_settings(names, n_steps, n_items, config.limits)
        session.cancel_flag.clear()

        tracker = session_attacks.card_tracker(chosen)  # a stage per attack: its bar and ETA in the overlay
        card = session_attacks.run_session_card(
            session, chosen, settings, progress=lambda _ev: progress_view.to_gradio(progress, tracker.snapshot()),
            should_stop=session.should_stop, tracker=tracker)
        shown.mark(session, "attacks")
        return session, *card_outputs(card)

    attack_event = attack_btn.click(on_attacks, [state, attack_boxes, attack_steps, attack_items],
                                    [state, attack_status, card_plot, card_table, card_out], api_name="attacks")

    def on_attack_cancel(session: UISession) -> str:
        session.cancel_flag.set()
        return "Attacks cancelled; nothing was kept."

    attack_cancel.click(on_attack_cancel, state, attack_status, cancels=[attack_event], api_name="cancel_attacks")

    def sync(session: UISession) -> list:
        """The tab for the selection as it stands: each result the session holds for it redrawn
        (Evaluate's numbers, the relearning attack, the robustness card, all kept per edit), the
        others left as they are and marked stale, with the button that refreshes them."""
        out = []
        result = cached_result(session)
        if result is not None:
            out += [*shown_result(session, result)]
        else:
            out += [gr.skip(), gr.skip()]
        out += [shown.line(session, "evaluate", "press ↻ Refresh (or Evaluate)"),
                gr.update(visible=shown.is_stale(session, "evaluate"))]
        idx = session.current_index
        kept = session.relearn.get(idx) if idx is not None else None
        if kept is not None:
            shown.mark(session, "relearn")
        out += [*(relearn_outputs(kept) if kept is not None else (gr.skip(), gr.skip())),
                shown.line(session, "relearn", "press Run relearning attack to refresh")]
        card = session.attacks.get(idx) if idx is not None else None
        if card is not None:
            shown.mark(session, "attacks")
        out += [*(card_outputs(card) if card is not None else (gr.skip(),) * 4),
                shown.line(session, "attacks", "press Run attacks to refresh")]
        out.append(card_curve_figure(card) if card is not None else gr.skip())
        return out

    sync_outputs = [table, bars, tag, refresh, relearn_plot, whitebox, relearn_tag, attack_status, card_plot,
                    card_table, card_out, card_tag, card_curve]
    for event in (eval_event, eval_api_event, refresh_event, relearn_event, attack_event):  # the tags follow each result
        event.then(sync, state, sync_outputs, api_visibility="private", show_progress="hidden")
    return {"table": table, "bars": bars, "relearn_plot": relearn_plot, "card_plot": card_plot, "card_curve": card_curve,
            "sync": (sync, sync_outputs)}


def relearn_outputs(result: dict) -> tuple:
    """The relearning curve and the white-box results of one kept attack."""
    return plots.relearning_curve(result["edited"], result["original"]), result["whitebox"]


def card_outputs(card: dict) -> tuple:
    """Headline, figure, table and JSON of one kept robustness card."""
    rows, floor, chance = session_attacks.card_figure(card)
    return (session_attacks.card_headline(card), plots.robustness_card(rows, floor=floor, chance=chance),
            session_attacks.card_table(card), card)


def card_curve_figure(card: dict):
    """The recovery curves of a kept card's relearning attacks (None: neither was run). Drawn by
    the tab's sync, which follows every attack run, so the /attacks API keeps its outputs."""
    series, floor, chance = session_attacks.card_curves(card)
    return plots.recovery_curves(series, floor=floor, chance=chance) if series else None
