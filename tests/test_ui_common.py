"""The dashboard's error rule: a refused action shows one message and leaves the page as it was."""

from __future__ import annotations

import contextlib

import gradio as gr
import pytest
from gradio.context import LocalContext

from unlearnviz.errors import UserError
from unlearnviz.ui.common import field_number, from_browser, readable


@contextlib.contextmanager
def called_from(user_header: str | None):
    """The request Gradio sets around an event: the page sends no x-gradio-user, gradio_client 'api'."""
    headers = {} if user_header is None else {"x-gradio-user": user_header}
    token = LocalContext.request.set(gr.Request(headers=headers))
    try:
        yield
    finally:
        LocalContext.request.reset(token)


def test_the_page_gets_a_warning_and_unchanged_outputs():
    @readable
    def refuse(x):
        raise UserError(f"steps={x} is below 1; use 1..5000")

    with called_from(None), pytest.warns(UserWarning, match=r"steps=-5 is below 1"):
        assert from_browser()
        out = refuse(-5)
    assert out == gr.skip()  # every output left as it was: no "Error" badge on any of them


def test_api_clients_and_direct_calls_still_get_the_error():
    @readable
    def refuse():
        raise UserError("the prompt is empty")

    for header in ("api", "mcp"):
        with called_from(header), pytest.raises(gr.Error, match="the prompt is empty"):
            refuse()
    assert not from_browser()
    with pytest.raises(gr.Error, match="the prompt is empty"):
        refuse()


def test_a_stream_that_fails_midway_redraws_from_the_session():
    """A stream that already showed work in progress puts back what the session holds, once."""
    shown = {"status": "edit 1 (rmu)"}

    @readable(restore=lambda session: ("restored", session["status"]))
    def run(session):
        yield "training step 1", None
        raise UserError("loss became nan at step 2; lower the learning rate")

    with called_from(None), pytest.warns(UserWarning) as caught:
        outs = list(run(shown))
    assert outs == [("training step 1", None), ("restored", "edit 1 (rmu)")]
    assert len([w for w in caught if "nan" in str(w.message)]) == 1  # one message, once

    @readable(restore=lambda session: ("restored",))
    def refuse_first(session):
        raise UserError("bad value")
        yield  # pragma: no cover

    with called_from(None), pytest.warns(UserWarning):
        assert list(refuse_first(shown)) == [gr.skip()]  # nothing was shown yet: nothing to put back


def test_field_number_shows_its_range_and_leaves_the_check_to_the_validator():
    box = field_number(value=400, minimum=1, maximum=5000, precision=0, label="steps")
    assert type(box) is gr.Number  # drawn by the frontend's own Number
    assert box.get_config()["minimum"] == 1 and box.get_config()["maximum"] == 5000
    assert box.preprocess(-5) == -5  # not an error in preprocessing (that marks every output)
    with pytest.raises(gr.Error):
        gr.Number(minimum=1).preprocess(-5)


def test_the_unlearn_form_refuses_a_field_on_that_field():
    """The hyperparameter form: each field read alone by the method's validator; the widget carries
    the method's range."""
    from unlearnviz.session import catalogue
    from unlearnviz.ui.tab_unlearn import _component, field_verdicts

    verdicts = field_verdicts("rmu", ["steps", "lr", "window"], [-5, 0.003, 3])
    assert [v["is_valid"] for v in verdicts] == [False, True, True]
    assert "steps" in verdicts[0]["message"] and "\n" not in verdicts[0]["message"]
    steps = next(r for r in catalogue.hparam_rows("rmu") if r["name"] == "steps")
    box = _component(steps)
    assert (box.minimum, box.maximum) == (steps["min"], steps["max"]) == (1, 5000)


def test_a_refused_field_leaves_the_plan_line_as_it_was():
    """steps = -5: the field and the run say why, once; the memory-plan line keeps its text
    (``gr.skip()``) instead of a second copy of the refusal. A readable value still gets its line."""
    from unlearnviz.ui.common import UISession
    from unlearnviz.ui.tab_unlearn import plan_line

    names = ["steps", "lr", "window"]
    assert plan_line(UISession(), "rmu", names, [-5, 0.003, 3]) == gr.skip()
    assert plan_line(UISession(), "rmu", names, [None, 0.003, 3]) == gr.skip()  # a box emptied while typing
    line = plan_line(UISession(), "rmu", names, [5, 0.003, 3])
    assert isinstance(line, str) and "Load a model" in line


def test_evaluate_table_uses_percentages():
    from unlearnviz.ui.tab_evaluate import metrics_rows

    rows = metrics_rows({"before": {"forget_cloze_acc": 0.9583, "retain_ppl": 12.345},
                         "after": {"forget_cloze_acc": 0.2083, "retain_ppl": 13.0}})
    assert rows[0][1:] == ["95.8%", "20.8%", "-75.0 pts"]
    assert rows[-1][1:] == ["12.35", "13.00", "+0.66"]
