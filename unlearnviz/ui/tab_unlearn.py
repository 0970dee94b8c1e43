"""Unlearn tab: choose a method, set its hyperparameters, run with live loss curves, manage the
edit timeline (stack, undo, which edit the other tabs compare against the original)."""

from __future__ import annotations

import queue
import threading
import time

import gradio as gr

from unlearnviz import plots
from unlearnviz.errors import UserError
from unlearnviz.session import calibration, catalogue, planning
from unlearnviz.ui.common import AppConfig, UISession, ensure_ready, field_number, readable, valid

INTRO = ("**Unlearn.** Run an edit on the loaded model. *RMU* pushes forget activations at one layer toward a "
         "random direction; *SRMU* shapes that target with an importance map of forget-specific features; *MRP* "
         "projects a forget-specific subspace out of the residual stream. Edits stack (continual unlearning); the "
         "selected edit is what every other tab compares with the original. The base weights never change.")


def _component(row: dict):
    info = row["doc"] + (f" Paper: {row['paper']}." if row.get("paper") else "")
    label = row["name"]
    default = row["default"]
    if isinstance(default, bool):
        return gr.Checkbox(value=default, label=label, info=info)
    if row.get("choices"):
        return gr.Dropdown(list(row["choices"]), value=default, label=label, info=info)
    if isinstance(default, list):
        return gr.Textbox(value=",".join(map(str, default)), label=label, info=info)
    # the widget shows and enforces the method's range; a typed value past it meets the validator
    return field_number(value=default, label=label, info=info, precision=0 if isinstance(default, int) else None,
                       minimum=row.get("min"), maximum=row.get("max"))


def field_verdicts(method: str, names: list[str], values: list) -> list[dict]:
    """Each field read alone by the method's own validator: valid, or its one-line refusal (the
    page highlights that field). Cross-field rules are the run's to refuse."""
    out = []
    for name, value in zip(names, values):
        try:
            catalogue.changed_hparams(method, {name: value})
            out.append(valid())
        except UserError as exc:
            out.append(valid(str(exc)))
    return out


CALIBRATE_INTRO = (
    "**Calibrate.** Defaults tuned on one model rarely fit another. This searches the chosen method's key "
    "settings (RMU/SRMU: layer, steering scale, retain weight, learning rate, steps; MRP: site, rank, retain weight, "
    "steps) with Optuna, each trial a short fit on the original model (your timeline is left alone), scored on half "
    "of the forget and retain questions. The chosen setting is the one that meets the bars (forget within 10 points "
    "of chance, retain down at most 3 points, perplexity up at most 10%), or the closest; its figures below are on "
    "the other half, which no trial was scored on. *Use the chosen setting* fills the fields above; then press Run.")


def calibrate_with_live_updates(session: UISession, method: str, settings, progress=None):
    """Run the calibration in a worker thread; yield (status, result-so-far dict) after each trial
    and once at the end (with the result)."""
    events: queue.Queue = queue.Queue()
    result: dict = {}
    session.cancel_flag.clear()

    def work():
        try:
            result["out"] = calibration.run_calibration(session, method, settings, progress=events.put,
                                                        should_stop=session.should_stop)
        except BaseException as exc:  # re-raised in the caller's thread
            result["error"] = exc

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    while worker.is_alive() or not events.empty():
        try:
            ev = events.get(timeout=0.25)
        except queue.Empty:
            continue
        n = max(1, ev.get("trials") or 1)
        if ev["phase"] == "fit" and progress is not None:
            progress((ev["trial"] - 1 + ev["step"] / max(1, ev["total"])) / n, desc=f"trial {ev['trial']}/{n}")
        elif ev["phase"] == "final" and progress is not None:
            progress(ev["step"] / max(1, ev["total"]), desc="refitting the chosen setting")
        elif ev["phase"] == "trial":
            yield f"{ev['trial']} of {n} trials done …", ev
    worker.join()
    if "error" in result:
        raise result["error"]
    yield "done", result["out"]


def timeline_rows(session: UISession) -> list[list]:
    rows = []
    for i, e in enumerate(session.stack.edits):
        after = session.after.get(i, {})
        rows.append([i, e.label(), e.method, e.meta.get("steps"), round(e.meta.get("fit_s", 0.0), 1),
                     _pct(after.get("forget_cloze_acc")), _pct(after.get("retain_cloze_acc")),
                     "◀ selected" if i == session.current_index else ""])
    return rows


def _pct(v):
    return None if v is None else f"{v:.0%}"


def overrides_from(method: str, names: list[str], values: list) -> dict:
    """Only the fields that differ from the method's defaults, read as a config file would be."""
    return catalogue.changed_hparams(method, dict(zip(names, values)))


def run_with_live_updates(session: UISession, method: str, overrides: dict, progress=None):
    """Run the edit in a worker thread; yield (status, loss figure) while it trains."""
    events: queue.Queue = queue.Queue()
    result: dict = {}
    session.cancel_flag.clear()

    def work():
        try:
            result["out"] = session.run_edit(method, overrides, progress=events.put,
                                             should_stop=session.should_stop, evaluate=True)
        except BaseException as exc:  # re-raised in the caller's thread
            result["error"] = exc

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    history: list[dict] = []
    last_yield = 0.0
    while worker.is_alive() or not events.empty():
        try:
            ev = events.get(timeout=0.25)
            history.append(ev)
        except queue.Empty:
            ev = None
        if progress is not None and history:
            h = history[-1]
            progress((h["step"], h["total"]), desc=f"{method}: step {h['step']}/{h['total']}")
        if time.perf_counter() - last_yield > 0.8 and history:
            last_yield = time.perf_counter()
            h = history[-1]
            yield (f"Training **{method}**: step {h['step']}/{h['total']}, loss {h['loss']:.4g} "
                   f"({h['elapsed']:.0f} s)", plots.loss_curves(history))
    worker.join()
    if "error" in result:
        raise result["error"]
    if history or session.current_edit() is not None:
        edit = session.current_edit()
        losses = edit.meta.get("losses") or history
        yield ("Evaluating before/after …", plots.loss_curves(losses))


def edit_summary(session: UISession) -> str:
    edit = session.current_edit()
    if edit is None:
        return "_No edit yet: choose a method and press Run._"
    after = session.after.get(session.current_index, {})
    before = session.before or {}
    line = (f"**{edit.label()}** trained in {edit.meta.get('fit_s', 0):.1f} s. "
            f"Forget cloze accuracy {before.get('forget_cloze_acc', float('nan')):.0%} → "
            f"{after.get('forget_cloze_acc', float('nan')):.0%} (floor {before.get('forget_floor_acc', float('nan')):.0%}, "
            f"chance {before.get('forget_chance', 0.25):.0%}); retain {before.get('retain_cloze_acc', float('nan')):.0%} → "
            f"{after.get('retain_cloze_acc', float('nan')):.0%}; retain perplexity "
            f"{before.get('retain_ppl', float('nan')):.1f} → {after.get('retain_ppl', float('nan')):.1f}.")
    if edit.method == "srmu" and "selectivity_top10" in edit.meta:
        s = edit.meta["selectivity_top10"]
        line += (f" The importance map's top 10% of features hold {s:.0%} of its mass "
                 + ("(near-uniform: the map barely singles out features)." if s < 0.15 else "(selective)."))
    return line


def build(state: gr.State, config: AppConfig) -> dict:
    gr.Markdown(INTRO)
    methods = catalogue.method_names()
    method = gr.Radio(methods, value=config.demo_method, label="Method",
                      info="; ".join(f"{m}: {catalogue.method_summary(m)}" for m in methods))
    fields: dict[str, tuple[list[str], list]] = {}
    groups = {}
    for m in methods:
        with gr.Accordion(f"{m.upper()} hyperparameters", open=False, visible=(m == config.demo_method)) as group:
            rows = catalogue.hparam_rows(m)
            comps = []
            with gr.Row(equal_height=False):
                cols = [gr.Column(), gr.Column()]
            for j, row in enumerate(rows):
                with cols[j % 2]:
                    comps.append(_component(row))
            fields[m] = ([r["name"] for r in rows], comps)
        groups[m] = group
    with gr.Row():
        run = gr.Button("Run edit", variant="primary")
        cancel = gr.Button("Cancel", variant="stop")
        undo = gr.Button("Undo last edit")
    plan_md = gr.Markdown(planning.fit_line(UISession(), config.demo_method))
    status = gr.Markdown(edit_summary(UISession()))
    loss_plot = gr.Plot(label="Loss curves", show_label=False)
    with gr.Row():
        timeline = gr.Dataframe(headers=["#", "edit", "method", "steps", "fit s", "forget after", "retain after", ""],
                                value=[], label="Edit timeline (continual unlearning)", interactive=False, scale=4)
        selected = gr.Number(value=None, label="Compare edit # (empty = last)", precision=0, scale=1)
    api_out = gr.JSON(visible=False)

    def show_group(m):
        return [gr.update(visible=(k == m)) for k in methods]

    method.change(show_group, method, [groups[m] for m in methods], api_visibility="private")

    all_comps = [c for m in methods for c in fields[m][1]]

    def chosen_overrides(m: str, values) -> dict:
        """The overrides the chosen method's components ask for (the other methods' are skipped)."""
        offset = 0
        for name in methods:
            names, comps = fields[name]
            if name == m:
                return overrides_from(m, names, list(values[offset:offset + len(comps)]))
            offset += len(comps)
        return {}

    def on_plan(session: UISession, m: str, *values):
        """The planned peak memory of the fit these hyperparameters ask for, before it runs."""
        try:
            return planning.fit_line(session, m, chosen_overrides(m, values))
        except Exception as exc:  # a half-typed value: the plan waits for a readable one
            return f"_No memory plan yet: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}_"

    for comp in [method, *all_comps]:
        comp.change(on_plan, [state, method, *all_comps], plan_md, api_visibility="private")

    def check_run(session: UISession, m: str, *values):
        """The chosen method's fields, each checked before anything runs (the others pass)."""
        verdicts = []
        offset = 0
        for name in methods:
            names, comps = fields[name]
            chunk = list(values[offset:offset + len(comps)])
            verdicts += field_verdicts(m, names, chunk) if name == m else [valid()] * len(comps)
            offset += len(comps)
        return [valid(), valid(), *verdicts]

    def shown(session: UISession, *_):
        """The status, curve and timeline of the session as it stands (a refused run changed nothing)."""
        edit = session.current_edit()
        return (session, edit_summary(session), plots.loss_curves(edit.meta.get("losses", [])) if edit else None,
                timeline_rows(session), {})

    @readable(restore=shown)
    def on_run(session: UISession, m: str, *values, progress=gr.Progress()):
        ensure_ready(session, config)
        offset = 0
        chosen = {}
        for name in methods:
            names, comps = fields[name]
            if name == m:
                chosen = overrides_from(m, names, list(values[offset:offset + len(comps)]))
            offset += len(comps)
        fig = None
        for msg, fig in run_with_live_updates(session, m, chosen, progress):
            yield session, msg, fig, timeline_rows(session), {}
        edit = session.current_edit()
        yield (session, edit_summary(session), plots.loss_curves(edit.meta.get("losses", [])),
               timeline_rows(session), {"index": session.current_index, "method": m, "hparams": edit.hparams,
                                        "fit_s": edit.meta.get("fit_s"), "metrics": session.evaluate()})

    run_event = run.click(on_run, [state, method, *all_comps], [state, status, loss_plot, timeline, api_out],
                          api_visibility="private", validator=check_run)

    # The API form of the same action: a method name and a JSON object of overrides.
    api_method = gr.Textbox(visible=False, label="method")
    api_hparams = gr.JSON(visible=False, label="hparams")
    api_btn = gr.Button(visible=False)

    @readable
    def on_run_api(session: UISession, m: str, hparams: dict | None, progress=gr.Progress()):
        ensure_ready(session, config)
        for _ in run_with_live_updates(session, m, {} if hparams is None else hparams, progress):
            pass
        edit = session.current_edit()
        return (session, edit_summary(session), timeline_rows(session),
                {"index": session.current_index, "method": m, "hparams": edit.hparams,
                 "fit_s": edit.meta.get("fit_s"), "metrics": session.evaluate()})

    api_event = api_btn.click(on_run_api, [state, api_method, api_hparams], [state, status, timeline, api_out],
                              api_name="run_edit")  # no validator: an API client gets the one-line error itself

    def on_cancel(session: UISession):
        session.cancel_flag.set()
        return "Cancelled; nothing was applied."

    cancel.click(on_cancel, state, status, cancels=[run_event, api_event], api_name="cancel")

    @readable
    def on_undo(session: UISession):
        session.undo()
        return session, edit_summary(session), timeline_rows(session)

    undo.click(on_undo, state, [state, status, timeline], api_name="undo")

    @readable
    def on_select(session: UISession, idx):
        session.select(None if idx is None or idx == "" else int(idx))
        return session, edit_summary(session), timeline_rows(session)

    selected.submit(on_select, [state, selected], [state, status, timeline], api_name="select_edit")

    with gr.Accordion("Calibrate: search this method's key settings", open=False):
        gr.Markdown(CALIBRATE_INTRO)
        with gr.Row():
            cal_trials = field_number(value=12, precision=0, minimum=1, label="trials",
                                      info="fits in all (the first: the defaults)")
            cal_steps = field_number(value=50, precision=0, minimum=1, label="steps per trial, at most",
                                     info="steps are searched from a quarter of this up to it")
        with gr.Row():
            cal_btn = gr.Button("Calibrate", variant="primary")
            cal_cancel = gr.Button("Cancel", variant="stop")
            cal_use = gr.Button("Use the chosen setting")
        cal_status = gr.Markdown()
        cal_plot = gr.Plot(label="Trials", show_label=False)
        cal_table = gr.Dataframe(headers=calibration.FRONT_HEADERS, value=[], interactive=False)
        cal_out = gr.JSON(visible=False)

    @readable
    def on_calibrate(session: UISession, m: str, trials, steps, progress=gr.Progress()):
        ensure_ready(session, config)
        settings = calibration.ui_settings(m, trials, steps, config.limits)
        for msg, res in calibrate_with_live_updates(session, m, settings, progress):
            if msg != "done":
                fig = plots.calibration_figure(res["rows"], res["front"], res["before"])
                yield session, msg, fig, calibration.front_table(res["rows"], res["front"]), {}
                continue
            chosen = res.chosen["trial"] if res.chosen else None
            out = {"method": res.method, "chosen": chosen, "meets_bars": res.meets_bars,
                   "statement": res.statement, "overrides": res.overrides, "heldout": res.heldout,
                   "front": res.front, "rows": res.rows}
            yield (session, res.statement, plots.calibration_figure(res.rows, res.front, res.before, chosen, res.bars),
                   calibration.front_table(res.rows, res.front), out)

    cal_event = cal_btn.click(on_calibrate, [state, method, cal_trials, cal_steps],
                              [state, cal_status, cal_plot, cal_table, cal_out], api_name="calibrate")

    def on_cal_cancel(session: UISession) -> str:
        session.cancel_flag.set()
        return "Calibration cancelled."

    cal_cancel.click(on_cal_cancel, state, cal_status, cancels=[cal_event], api_name="cancel_calibration")

    @readable
    def on_use(result: dict | None):
        """The chosen setting into the chosen method's fields (the others stay as they are)."""
        if not result or not result.get("overrides"):
            raise gr.Error("There is no chosen setting yet: run a calibration first (one where a trial finished).",
                       print_exception=False)
        m = result["method"]
        values = calibration.chosen_fields(m, result["overrides"])
        updates = [gr.update(value=values[n]) if name == m else gr.update()
                   for name in methods for n in fields[name][0]]
        note = (f"The fields of {m.upper()} now hold trial {result['chosen']}'s setting"
                + ("" if result.get("meets_bars") else " (the closest: none met the bars)") + "; press Run edit.")
        return [m, *updates, note, {"method": m, "fields": values}]

    cal_use.click(on_use, cal_out, [method, *all_comps, cal_status, api_out], api_name="use_calibration")
    # the plan line follows the session (a model or data loaded in another tab, the demo, a bundle):
    # the app refreshes it whenever this tab is opened
    return {"status": status, "loss_plot": loss_plot, "timeline": timeline,
            "plan": (on_plan, [state, method, *all_comps], plan_md)}
