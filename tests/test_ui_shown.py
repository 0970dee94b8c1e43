"""The served dashboard names edits one way (from 1, with the hash the timeline shows) and compares
two timeline entries side by side (``/select_edit``, ``/compare_edit``, ``/evaluate``, ``/chat``),
driven by a real HTTP client on the tiny model; plus the tabs' pure pieces (the Evaluate table's
columns, the chat's compared pane)."""

from __future__ import annotations

import pytest
from app_server import Server
from gradio_client import Client

from unlearnviz.session import shown
from unlearnviz.ui import tab_chat, tab_evaluate, tab_unlearn
from unlearnviz.ui.common import UISession

RMU = {"steps": 3, "layer": 2, "window": 2}
MRP = {"steps": 2, "k": 2}


@pytest.fixture(scope="module")
def server(tiny_model_path):
    srv = Server("--model", "synthetic", "--data", "synthetic")
    yield srv
    srv.stop()


def test_the_tabs_pieces_name_their_edits(tiny_model_path):
    s = UISession()
    s.load_model("synthetic", "float32", "cpu")
    s.load_data("synthetic")
    s.run_edit("rmu", RMU)
    s.run_edit("mrp", MRP)
    rows = tab_unlearn.timeline_rows(s)
    assert [r[0] for r in rows] == [1, 2] and rows[1][-1] == "◀ selected" and rows[0][-1] == ""
    assert [r[7] for r in rows] == [shown.tag(s, i).hash[:6] for i in (0, 1)]
    s.select(0)
    s.select_compare(1)
    rows = tab_unlearn.timeline_rows(s)
    assert (rows[0][-1], rows[1][-1]) == ("◀ selected", "◀ compared")
    assert tab_unlearn.edit_summary(s).startswith(f"Selected: **{shown.tag(s, 0).named()}**")
    fig = tab_unlearn.loss_figure(s)
    assert fig.layout.title.text.endswith(shown.tag(s, 0).text())  # the selected edit's curve, named
    assert list(fig.data[0].y) == [r["loss"] for r in s.stack.edits[0].meta["losses"]]
    assert tab_evaluate.cached_result(s) is not None  # both were evaluated when fitted
    table = tab_evaluate.metrics_table(s, tab_evaluate.cached_result(s))
    assert table["headers"] == ["metric", "original", shown.tag(s, 0).text(), "change (#1)",
                                shown.tag(s, 1).text(), "change (#2)"]
    forget = next(r for r in table["data"] if r[0] == "forget cloze acc")
    assert forget[2] == f"{s.after[0]['forget_cloze_acc']:.1%}" and forget[4] == f"{s.after[1]['forget_cloze_acc']:.1%}"
    bars = tab_evaluate.metrics_bars(s, tab_evaluate.cached_result(s))
    assert [t.name for t in bars.data] == ["before the edit", shown.tag(s, 0).text(), shown.tag(s, 1).text()]
    s.after.pop(1)
    assert tab_evaluate.cached_result(s) is None  # the compared edit is not measured: nothing to redraw


def test_compared_pane_highlights_where_it_departs():
    turns = [{"prompt": "Q", "original": "Paris is", "edited": "Paris is", "compared": "Pa river"}]
    pane = tab_chat.compared_pane(turns, ("Q2", "same", "same"))
    assert [m["role"] for m in pane] == ["user", "assistant", "user", "assistant"]
    assert pane[1]["content"] == 'Pa<mark style="background:#fde68a"> river</mark>'
    assert pane[3]["content"] == "same"  # the same answer: no highlight
    assert tab_chat.compared_pane([{"prompt": "Q", "original": "a", "edited": "b"}]) == []  # not asked


def test_numbers_and_compare_over_http(server):
    c = Client(server.url, verbose=False)
    c.predict("synthetic", "float32", "cpu", api_name="/load_model")
    c.predict("synthetic", "", None, api_name="/load_data")
    first = c.predict("rmu", RMU, api_name="/run_edit")[-1]
    second = c.predict("mrp", MRP, api_name="/run_edit")[-1]
    status, timeline = c.predict(1, api_name="/select_edit")  # edit #1, as the timeline numbers it
    rows = timeline["data"]
    assert [r[0] for r in rows] == [1, 2] and rows[0][-1] == "◀ selected"
    h1, h2 = rows[0][7], rows[1][7]
    assert h1 != h2 and status.startswith(f"Selected: **edit #1 · {h1} (1. rmu)**")
    timeline, out = c.predict(2, api_name="/compare_edit")
    assert out == {"compare": 2} and timeline["data"][1][-1] == "◀ compared"
    table, _bars, ev = c.predict(False, api_name="/evaluate")
    assert table["headers"] == ["metric", "original", f"edit #1 · {h1}", "change (#1)", f"edit #2 · {h2}",
                                "change (#2)"]
    assert ev["after"] == first["metrics"]["after"] and ev["compare"] == second["metrics"]["after"]
    chat = c.predict("The capital of Velmora is", 6, 0.0, api_name="/chat")[-1]
    assert chat["compared"] and chat["conversation"][-1]["compare_edit"] == "2. mrp"
    with pytest.raises(Exception, match=r"there is no edit #3; the timeline has #1..#2"):
        c.predict(3, api_name="/compare_edit")
    with pytest.raises(Exception, match=r"there is no edit #0"):
        c.predict(0, api_name="/select_edit")
    c.predict(api_name="/undo")  # the compared edit goes: one entry left, selected, nothing compared
    status, timeline = c.predict(None, api_name="/select_edit")
    assert [r[-1] for r in timeline["data"]] == ["◀ selected"] and status.startswith("Selected: **edit #1 · " + h1)
    table, _bars, ev = c.predict(False, api_name="/evaluate")
    assert table["headers"] == ["metric", "original", f"edit #1 · {h1}", "change"] and "compare" not in ev
    assert server.alive()
