"""Unlearn tab: choose a method, set its hyperparameters, run with live loss curves, manage the
edit timeline (stack, undo, which edit the other tabs compare against the original)."""

from __future__ import annotations

import queue
import time

import gradio as gr

from unlearnviz import plots
from unlearnviz.config import check_method_hparams
from unlearnviz.errors import UserError
from unlearnviz.session import calibration, catalogue, planning, shown
from unlearnviz.session import progress as progress_model
from unlearnviz.ui import inputs, progress_view
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
    """Run the calibration in a worker thread; yield (status, result so far, snapshot) about twice
    a second: the status and the rows so far after each trial (None, None between: only the bar
    moved), then ("done", the result, the finished snapshot). The bar counts trials ("trial 3/8 ·
    step 20/50"), its ETA the mean trial time so far; ``progress``: a ``gr.Progress`` (API
    clients see the same line)."""
    data = session.require_data()
    session.cancel_flag.clear()
    tracker = progress_model.calibration_tracker(method, settings.trials, settings.steps or 100,
                                                 len(data.forget_mcq) + len(data.retain_mcq))
    tracker.begin(progress_model.SCORING_ORIGINAL)
    events: queue.Queue = queue.Queue()
    tick = progress_model.on_calibration(tracker, lambda ev: events.put(ev) if ev["phase"] == "trial" else None)
    out: dict = {}

    def work():
        return calibration.run_calibration(session, method, settings, progress=tick, should_stop=session.should_stop)

    for snap, arrived in progress_view.run_tracked(work, tracker, out, events, progress=progress):
        if snap.finished:
            yield "done", out["value"], snap
        elif arrived:
            ev = arrived[-1]
            yield f"{ev['trial']} of {max(1, ev.get('trials') or 1)} trials done …", ev, snap
        else:
            yield None, None, snap


TIMELINE_HEADERS = ["#", "edit", "method", "steps", "fit s", "forget after", "retain after", "hash", ""]


def timeline_rows(session: UISession) -> list[list]:
    """One row a timeline entry, numbered from 1 as everywhere on the page, with the hash its
    views' tags carry and which entries are selected and compared."""
    rows = []
    for i, e in enumerate(session.stack.edits):
        after = session.after.get(i, {})
        mark = "◀ selected" if i == session.current_index else ("◀ compared" if i == session.compare else "")
        rows.append([shown.number(i), e.label(), e.method, e.meta.get("steps"), round(e.meta.get("fit_s", 0.0), 1),
                     _pct(after.get("forget_cloze_acc")), _pct(after.get("retain_cloze_acc")),
                     shown.tag(session, i).hash[:shown.HASH_CHARS], mark])
    return rows


def _pct(v):
    return None if v is None else f"{v:.0%}"


def overrides_from(method: str, names: list[str], values: list) -> dict:
    """Only the fields that differ from the method's defaults, read as a config file would be."""
    return catalogue.changed_hparams(method, dict(zip(names, values)))


def plan_line(session: UISession, method: str, names: list[str], values: list):
    """The plan line for these fields: the planned peak of the fit they ask for, or ``gr.skip()``
    while one of them is refused. The field's highlight and the run say why once; a second copy
    here would break "one message, once", so the line keeps what it showed."""
    try:
        overrides = overrides_from(method, names, values)
    except UserError:
        return gr.skip()
    try:
        return planning.fit_line(session, method, overrides)
    except Exception as exc:  # the plan is advice: a planner that cannot read this fit says so, not an Error pill
        return f"_No memory plan yet: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}_"


FIGURE_EVERY_S = 1.0  # the live loss curve is redrawn at most this often (the bar: progress_view.REFRESH_S)


def run_with_live_updates(session: UISession, method: str, overrides: dict, progress=None, tracker=None):
    """Run the edit in a worker thread; yield (status line, loss figure or ``gr.skip()``, progress
    snapshot) about twice a second until it is evaluated: the line names the stage (preparing,
    training, evaluating before/after) with a bar and an ETA, and the curve grows while it trains.
    ``tracker``: the job's tracker when the edit is part of a longer one (the demo: it is not
    finished here); ``progress``: a ``gr.Progress`` (API clients see the same line)."""
    events: queue.Queue = queue.Queue()
    own = tracker is None
    tracker = progress_model.edit_tracker(method) if own else tracker
    session.cancel_flag.clear()
    history: list[dict] = []
    drawn = 0.0
    out: dict = {}

    def work():
        return session.run_edit(method, overrides, progress=events.put, should_stop=session.should_stop,
                                evaluate=True, tracker=tracker)

    for snap, arrived in progress_view.run_tracked(work, tracker, out, events, progress=progress, finish=own):
        history += arrived
        fig = gr.skip()
        if arrived and time.perf_counter() - drawn >= FIGURE_EVERY_S:
            drawn, fig = time.perf_counter(), plots.loss_curves(history)
        yield snap.line(), fig, snap
    edit = session.current_edit()
    yield tracker.line(), plots.loss_curves(edit.meta.get("losses") or history), tracker.snapshot()


def loss_figure(session: UISession):
    """The selected edit's own loss curve, its title naming the edit (None: no edit, or an import)."""
    edit = session.current_edit()
    if edit is None or not edit.meta.get("losses"):
        return None
    return plots.for_edit(plots.loss_curves(edit.meta["losses"]), shown.selected(session).text())


def edit_summary(session: UISession) -> str:
    """The selected edit's status line, led by its tag (the one every other tab names)."""
    edit = session.current_edit()
    if edit is None:
        return "_No edit yet: choose a method and press Run._"
    after = session.after.get(session.current_index, {})
    before = session.before or {}
    line = (f"Selected: **{shown.selected(session).named()}**, trained in {edit.meta.get('fit_s', 0):.1f} s. "
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
        undo_ask = gr.Button("Undo last edit …")
        redo = gr.Button("Redo")
    with gr.Row(visible=False, elem_id="uv-undo-confirm") as undo_row:  # undo asks first (redo can bring it back)
        undo_question = gr.Markdown()
        undo = gr.Button("Yes, undo it", variant="stop")
        undo_keep = gr.Button("Keep it")
    plan_md = gr.Markdown(planning.fit_line(UISession(), config.demo_method), elem_id="uv-memory-plan")
    status = gr.Markdown(edit_summary(UISession()))
    run_progress = gr.HTML("", elem_id="uv-run-progress")  # the fit's bar and stages (progress_view)
    loss_plot = gr.Plot(label="Loss curves", show_label=False)
    with gr.Row():
        timeline = gr.Dataframe(headers=TIMELINE_HEADERS, value=[], interactive=False, scale=4,
                                label="Edit timeline (continual unlearning; click a row to select it)")
        with gr.Column(scale=1, min_width=220):
            selected = field_number(value=None, label="Selected edit # (Enter; empty = the last)", precision=0,
                                    minimum=1, elem_id="uv-selected-edit")
            compare = field_number(value=None, label="Compare with edit # (Enter; empty = none)", precision=0,
                                   minimum=1, elem_id="uv-compare-edit",
                                   info="Evaluate, Chat and Geometry show it beside the selected edit")
    api_out = gr.JSON(visible=False)

    def show_group(m):
        return [gr.update(visible=(k == m)) for k in methods]

    method.change(show_group, method, [groups[m] for m in methods], api_visibility="private")

    all_comps = [c for m in methods for c in fields[m][1]]

    def chosen_fields(m: str, values) -> tuple[list[str], list]:
        """The chosen method's field names and values (the other methods' are skipped)."""
        offset = 0
        for name in methods:
            names, comps = fields[name]
            if name == m:
                return names, list(values[offset:offset + len(comps)])
            offset += len(comps)
        return [], []

    def on_plan(session: UISession, m: str, *values):
        """The planned peak memory of the fit these hyperparameters ask for, before it runs."""
        return plan_line(session, m, *chosen_fields(m, values))

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

    def as_is(session: UISession, *_):
        """The status, curve and timeline of the session as it stands (a refused run changed nothing)."""
        return session, edit_summary(session), loss_figure(session), timeline_rows(session), {}

    @readable(restore=lambda *args: (*as_is(*args), ""))
    def on_run(session: UISession, m: str, *values):
        tracker = progress_model.edit_tracker(m)
        tracker.begin(progress_model.PREPARING, detail="loading the model and data" if session.lm is None
                      or session.data is None else "")
        yield session, tracker.line(), gr.skip(), gr.skip(), {}, progress_view.html(tracker.snapshot(), False)
        ensure_ready(session, config)
        offset = 0
        chosen = {}
        for name in methods:
            names, comps = fields[name]
            if name == m:
                chosen = overrides_from(m, names, list(values[offset:offset + len(comps)]))
            offset += len(comps)
        for line, fig, snap in run_with_live_updates(session, m, chosen, tracker=tracker):
            yield session, line, fig, gr.skip(), {}, progress_view.html(snap, with_line=False)
        tracker.finish()
        edit = session.current_edit()
        yield (session, edit_summary(session), loss_figure(session),
               timeline_rows(session), {"index": session.current_index, "method": m, "hparams": edit.hparams,
                                        "fit_s": edit.meta.get("fit_s"), "metrics": session.evaluate()},
               progress_view.html(tracker.snapshot()))

    # no Gradio overlay: it would cover the live loss curve; run_progress shows the stage, bar and ETA
    run_event = run.click(on_run, [state, method, *all_comps],
                          [state, status, loss_plot, timeline, api_out, run_progress],
                          api_visibility="private", validator=check_run, show_progress="hidden")

    # The API form of the same action: a method name and a JSON object of overrides.
    api_method = gr.Textbox(visible=False, label="method")
    api_hparams = gr.JSON(visible=False, label="hparams")
    api_btn = gr.Button(visible=False)

    @readable(args=inputs.RunEdit)
    def on_run_api(session: UISession, m: str, hparams: dict | None, progress=gr.Progress()):
        check_method_hparams(m, hparams)  # JSON's own types: no bool for a number, no text for one
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
    cancel.click(lambda: "", None, run_progress, api_visibility="private")  # no half-full bar left behind

    @readable
    def on_undo_ask(session: UISession):
        """The confirmation, naming the edit and what it cost (an edit can take minutes to fit)."""
        if not len(session.stack):
            raise UserError("there is no edit to undo")
        edit = session.stack.edits[-1]  # undo takes the last edit, whichever is selected
        return gr.update(visible=True), (f"Undo **{edit.label()}** (fitted in {edit.meta.get('fit_s', 0):.0f} s)? "
                                         "Redo brings it back with its results until you run a new edit.")

    undo_ask.click(on_undo_ask, state, [undo_row, undo_question], api_visibility="private")
    undo_keep.click(lambda: gr.update(visible=False), None, undo_row, api_visibility="private")

    @readable
    def on_undo(session: UISession):
        out = session.undo()
        gr.Info(f"Undid {out['undone']}; Redo brings it back.")
        return session, edit_summary(session), timeline_rows(session)

    undo_event = undo.click(on_undo, state, [state, status, timeline], api_name="undo")
    undo.click(lambda: gr.update(visible=False), None, undo_row, api_visibility="private")

    @readable
    def on_redo(session: UISession):
        session.redo()
        return session, edit_summary(session), timeline_rows(session)

    redo_event = redo.click(on_redo, state, [state, status, timeline], api_name="redo")

    @readable(args=inputs.EditNumber)
    def on_select(session: UISession, value):
        """Select edit number ``value`` (from 1, as the timeline numbers them; empty: the last)."""
        session.select(shown.index_of(value, len(session.stack)))
        return session, edit_summary(session), timeline_rows(session)

    select_event = selected.submit(on_select, [state, selected], [state, status, timeline], api_name="select_edit")

    @readable
    def on_row(session: UISession, evt: gr.SelectData):
        """A click on a timeline row selects that edit."""
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        session.select(int(row))
        return session, edit_summary(session), timeline_rows(session)

    row_event = timeline.select(on_row, state, [state, status, timeline], api_visibility="private")

    @readable(args=inputs.EditNumber)
    def on_compare(session: UISession, value):
        """Show edit number ``value`` beside the selected one in Evaluate, Chat and Geometry (empty: none)."""
        session.select_compare(shown.index_of(value, len(session.stack)))
        return session, timeline_rows(session), {"compare": shown.number(session.compare)}

    compare_event = compare.submit(on_compare, [state, compare], [state, timeline, api_out], api_name="compare_edit")

    def sync(session: UISession) -> list:
        """The tab redrawn for the selection as it stands: status, the SELECTED edit's loss curve,
        the timeline, both edit-number boxes (after a select, undo, new edit or import)."""
        shown.mark(session, "unlearn")
        return [edit_summary(session), loss_figure(session), timeline_rows(session),
                shown.number(session.selected), shown.number(session.compare)]

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
        cal_progress = gr.HTML("", elem_id="uv-calibrate-progress")  # the trials' bar and ETA (progress_view)
        cal_status = gr.Markdown()
        cal_plot = gr.Plot(label="Trials", show_label=False)
        cal_table = gr.Dataframe(headers=calibration.FRONT_HEADERS, value=[], interactive=False)
        cal_out = gr.JSON(visible=False)

    def calibration_updates(session: UISession, m: str, trials, steps, progress=None):
        """(status, figure, table, result) after each trial and at the end (None between), with the
        job's snapshot about twice a second."""
        ensure_ready(session, config)
        settings = calibration.ui_settings(m, trials, steps, config.limits)
        for msg, res, snap in calibrate_with_live_updates(session, m, settings, progress):
            if msg is None:
                yield None, snap
            elif msg != "done":
                fig = plots.calibration_figure(res["rows"], res["front"], res["before"])
                yield (msg, fig, calibration.front_table(res["rows"], res["front"]), {}), snap
            else:
                chosen = res.chosen["trial"] if res.chosen else None
                out = {"method": res.method, "chosen": chosen, "meets_bars": res.meets_bars,
                       "statement": res.statement, "overrides": res.overrides, "heldout": res.heldout,
                       "front": res.front, "rows": res.rows}
                yield (res.statement, plots.calibration_figure(res.rows, res.front, res.before, chosen, res.bars),
                       calibration.front_table(res.rows, res.front), out), snap

    @readable(args=inputs.Calibrate)
    def on_calibrate(session: UISession, m: str, trials, steps, progress=gr.Progress()):
        for outs, _snap in calibration_updates(session, m, trials, steps, progress):
            if outs is not None:
                yield session, *outs

    # the page's form streams the bar beside the button (no Gradio overlay over it); the API's,
    # on a hidden button, keeps its outputs
    @readable(args=inputs.Calibrate, restore=lambda session, *_: (session, *[gr.skip()] * 4, ""))
    def on_calibrate_page(session: UISession, m: str, trials, steps):
        for outs, snap in calibration_updates(session, m, trials, steps):
            yield session, *(outs if outs is not None else [gr.skip()] * 4), progress_view.html(snap)

    cal_inputs = [state, method, cal_trials, cal_steps]
    cal_event = cal_btn.click(on_calibrate_page, cal_inputs, [state, cal_status, cal_plot, cal_table, cal_out,
                                                              cal_progress], api_visibility="private",
                              show_progress="hidden")
    cal_api_btn = gr.Button(visible=False)
    cal_api_event = cal_api_btn.click(on_calibrate, cal_inputs, [state, cal_status, cal_plot, cal_table, cal_out],
                                      api_name="calibrate")

    def on_cal_cancel(session: UISession) -> str:
        session.cancel_flag.set()
        return "Calibration cancelled."

    cal_cancel.click(on_cal_cancel, state, cal_status, cancels=[cal_event, cal_api_event], api_name="cancel_calibration")
    cal_cancel.click(lambda: "", None, cal_progress, api_visibility="private")  # no half-full bar left behind

    @readable(args=inputs.ChosenSetting)
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
    return {"status": status, "loss_plot": loss_plot, "timeline": timeline, "progress": run_progress,
            "plan": (on_plan, [state, method, *all_comps], plan_md),
            # what changes the selection or the stack (the app redraws every tab after each) and this tab's redraw
            "changed": [run_event, api_event, undo_event, redo_event, select_event, row_event, compare_event],
            "sync": (sync, [status, loss_plot, timeline, selected, compare])}
