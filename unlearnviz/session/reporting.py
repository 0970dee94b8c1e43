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


def write_session_report(session: Session, path: Path) -> Path:
    """The report of a dashboard session's selected edit: its metrics and relearning results
    when the session has them; analysis views and example answers computed now (fast settings).
    Stops between batches when the session's cancel flag is set (if it has one)."""
    from unlearnviz.analysis.activations import stoppable

    lm, data = session.require_model(), session.require_data()
    edit = session.current_edit()
    if edit is None:
        raise UserError("there is no edit yet (Unlearn tab): a report compares the edited model with the original")
    path = Path(path)
    check_out_path(path, "report file")
    should_stop = getattr(session, "should_stop", None)
    with stoppable(should_stop):
        result = session.evaluate(should_stop=should_stop)
        idx = session.current_index
        relearn = session.relearn.get(idx)
        edits = [edit_summary(e) for e in session.stack.edits[: idx + 1]]
        report = gather(lm, data, edits, session.plan(), result["before"], result.get("after"), relearn,
                        ReportSettings(relearn_steps=0), source="a dashboard session")
    if relearn is None:
        report.relearn_note = "not run in this session (Evaluate tab → Run relearning attack, then export again)."
    report.attacks = session.attacks.get(idx)
    if report.attacks is None:
        report.attacks_note = "not run in this session (Evaluate tab → Robustness → Run attacks, then export again)."
    own = [c for c in session.chats if c.get("edit") == edit.label()][-5:]
    report.chats += [{"split": "asked in this session", "prompt": c["prompt"], "original": c["original"],
                      "edited": c["edited"]} for c in own]
    return write_report(path, report)
