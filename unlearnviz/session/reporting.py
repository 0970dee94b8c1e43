"""The report of a dashboard session's selected edit.

The report package knows ReportData, not sessions; this is where a session's state (its metrics,
relearning results and chats) becomes one. What the session does not hold (analysis views,
example answers) is computed now with the report's fast settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from unlearnviz.errors import UserError
from unlearnviz.report import ReportSettings, check_out_path, edit_summary, gather, write_report

if TYPE_CHECKING:
    from unlearnviz.session import Session


def write_session_report(session: Session, path: Path, tracker=None) -> Path:
    """The report of a dashboard session's selected edit: its metrics and relearning results
    when the session has them; analysis views and example answers computed now (fast settings).
    Stops between batches when the session's cancel flag is set (if it has one). ``tracker``: a
    ``session.progress.Tracker`` (``progress.report_tracker``) moved through its stages."""
    from unlearnviz.analysis.activations import stoppable
    from unlearnviz.session import progress as P

    tracker = tracker if tracker is not None else P.report_tracker()

    def log(message: str) -> None:
        """``gather``'s account of what it computes, as the report's stages."""
        stage = P.ANALYSING if message.startswith("analysis views") else (
            P.EXAMPLES if message.startswith("example answers") else None)
        if stage is not None and tracker.has(stage):
            tracker.begin(stage)

    lm, data = session.require_model(), session.require_data()
    edit = session.current_edit()
    if edit is None:
        raise UserError("there is no edit yet (Unlearn tab): a report compares the edited model with the original")
    path = Path(path)
    check_out_path(path, "report file")
    should_stop = getattr(session, "should_stop", None)
    with stoppable(should_stop):
        result = session.evaluate(should_stop=should_stop, tracker=tracker)
        idx = session.current_index
        relearn = session.relearn.get(idx)
        edits = [edit_summary(e) for e in session.stack.edits[: idx + 1]]
        report = gather(lm, data, edits, session.plan(), result["before"], result.get("after"), relearn,
                        ReportSettings(relearn_steps=0), source="a dashboard session", log=log)
    if relearn is None:
        report.relearn_note = "not run in this session (Evaluate tab → Run relearning attack, then export again)."
    report.attacks = session.attacks.get(idx)
    if report.attacks is None:
        report.attacks_note = "not run in this session (Evaluate tab → Robustness → Run attacks, then export again)."
    own = [c for c in session.chats if c.get("edit") == edit.label()][-5:]
    report.chats += [{"split": "asked in this session", "prompt": c["prompt"], "original": c["original"],
                      "edited": c["edited"]} for c in own]
    tracker.begin(P.WRITING)
    return write_report(path, report)


# The presenter view's answer pairs, per (model, data, timeline entry): greedy answers do not change,
# and a presenter flips between the same few edits.
_STORY_ANSWERS: dict[tuple, list[dict]] = {}
STORY_CACHE = 16  # entries kept


def story(session: Session, answers: bool = True, tracker=None) -> dict:
    """The selected edit told as the report's summary tells it, for the presenter view: which
    timeline entry it is (``shown.Tag``), the report's verdicts (``evaluation.verdicts``: the
    headline, forgetting, what was kept), three key figures (forget and retain accuracy and retain
    perplexity, original → edited) and two answer pairs (the first forget and the first retain
    question, greedy, as ``report.chat_pairs`` makes them). The metrics are measured if the
    session has none yet; ``answers=False``: only answers already made are shown (no generation:
    a redraw after the selection changes must be quick). Refused without an edit. ``tracker``: a
    ``session.progress.Tracker`` (``progress.story_tracker``) moved through what is measured."""
    from unlearnviz.evaluation.verdicts import PPL_RISE, fmt_metric, forget_verdict, headline, retain_verdict
    from unlearnviz.methods import REGISTRY
    from unlearnviz.report import chat_pairs
    from unlearnviz.session import shown

    lm, data = session.require_model(), session.require_data()
    edit = session.current_edit()
    if edit is None:
        raise UserError("there is no edit yet (Unlearn tab): the presenter view tells the story of one")
    from unlearnviz.session import progress as P

    tracker = tracker if tracker is not None else P.story_tracker()
    tag = shown.selected(session)
    metrics = session.evaluate(should_stop=getattr(session, "should_stop", None), tracker=tracker) if answers else {
        "before": session.before, "after": session.after.get(session.current_index)}
    before, after = metrics.get("before") or {}, metrics.get("after") or {}
    fv, rv = forget_verdict(before, after), retain_verdict(before, after)
    level = max(before.get("chance", 0.0), before.get("forget_floor_acc", 0.0))
    figures = [
        {"label": "forget questions answered right", "key": "forget_cloze_acc", "want": "should fall",
         "note": f"guessing from the options alone scores {fmt_metric('forget_floor_acc', level)}"},
        {"label": "retain questions answered right", "key": "retain_cloze_acc", "want": "should stay", "note": ""},
        {"label": "perplexity on held-out retain text", "key": "retain_ppl", "want": "should stay",
         "note": f"lower is more fluent; the bar allows +{PPL_RISE:.0%}"},
    ]
    for f in figures:
        b, a = before.get(f["key"]), after.get(f["key"])
        f.update(before=b, after=a, before_text=fmt_metric(f["key"], b), after_text=fmt_metric(f["key"], a))
    key = (id(lm.model), *tag.context, tag.hash)
    pairs = _STORY_ANSWERS.get(key)
    if pairs is None and answers:
        tracker.begin(P.EXAMPLES)
        pairs = chat_pairs(lm, data, session.plan(), 1)
        while len(_STORY_ANSWERS) >= STORY_CACHE:
            _STORY_ANSWERS.pop(next(iter(_STORY_ANSWERS)))
        _STORY_ANSWERS[key] = pairs
    spec = REGISTRY.get(edit.method)
    return {"tag": tag, "title": f"{spec.plain_name if spec else edit.method.upper()} on {lm.name}",
            "method": edit.method, "data": data.name, "measured": bool(before and after),
            "verdicts": [headline(fv, rv), fv, rv], "figures": figures, "pairs": pairs}
