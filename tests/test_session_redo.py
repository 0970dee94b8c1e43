"""Undo keeps what it takes off, redo puts it back (unlearnviz/session/__init__.py: Session.undo,
Session.redo): the same Edit object with the metrics it had, newest undone first; a new edit ends
the redo list; new data keeps the undone edits but not their results (measured on the old data);
another model ends it. Tiny synthetic model; one evaluation in all."""

from __future__ import annotations

import copy

import pytest
from tiny_models import tiny_session

from unlearnviz.errors import UserError
from unlearnviz.ui.common import UISession

FAST = {"steps": 2}


@pytest.fixture(scope="module")
def two(tiny_model_path):
    """Two stacked RMU edits, the second measured (before and after)."""
    s = tiny_session()
    s.run_edit("rmu", FAST, evaluate=False)
    s.run_edit("rmu", {**FAST, "steering_coeff": 3.0}, evaluate=True)
    return s


def fresh(s) -> UISession:
    """A copy to change: the model shared (read-only), the edits, metrics and chats copied."""
    u = UISession()
    u.adopt(s)
    return copy.deepcopy(u)


def test_redo_puts_back_the_undone_edit_with_its_metrics(two):
    s = fresh(two)
    second, metrics = s.stack.edits[1], s.after[1]
    out = s.undo()
    assert len(s.stack) == 1 and 1 not in s.after and out == {"undone": second.label(), "remaining": 1, "redo": 1}
    assert s.current_edit() is s.stack.edits[0]
    out = s.redo()
    assert s.stack.edits[1] is second and s.after[1] is metrics  # nothing refitted or re-measured
    assert out == {"redone": second.label(), "index": 1, "redo": 0}
    assert s.current_index == 1 and s.evaluate()["after"] is metrics
    assert [h["action"] for h in s.history[-2:]] == ["undo", "redo"]
    with pytest.raises(UserError, match="no undone edit to redo"):
        s.redo()


def test_redo_goes_back_newest_first(two):
    s = fresh(two)
    first, second = s.stack.edits
    s.undo()
    s.undo()
    assert len(s.stack) == 0 and [u["edit"] for u in s.undone] == [second, first]
    with pytest.raises(UserError, match="no edit to undo"):
        s.undo()
    s.redo()
    assert s.stack.edits == [first]
    s.redo()
    assert s.stack.edits == [first, second] and s.after[1] is not None


def test_a_new_edit_ends_the_redo_list(two):
    s = fresh(two)
    s.undo()
    s.run_edit("rmu", {"steps": 1}, evaluate=False)
    assert s.undone == [] and len(s.stack) == 2 and s.stack.edits[1].meta["steps"] == 1
    with pytest.raises(UserError):
        s.redo()


def test_new_data_keeps_undone_edits_but_not_their_results(two):
    s = fresh(two)
    second = s.stack.edits[1]
    s.undo()
    assert s.undone[0]["after"] is not None
    s.load_data("synthetic")
    assert s.undone[0]["after"] is None  # measured on the data that was replaced
    s.redo()
    assert s.stack.edits[1] is second and 1 not in s.after


def test_another_model_ends_the_redo_list(two):
    s = fresh(two)
    s.undo()
    s.load_model("synthetic", "bfloat16", "cpu")  # another copy of the weights: the old edits do not apply
    assert s.undone == [] and len(s.stack) == 0


def test_adopt_carries_the_redo_list(two):
    s = fresh(two)
    s.undo()
    other = UISession()
    other.adopt(s)
    assert other.undone is s.undone and other.redo()["index"] == 1
