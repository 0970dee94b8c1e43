"""Which edit each shown result belongs to (``unlearnviz.session.shown``): one numbering from 1,
tags that change when the stack under them changes, the stale check after select / undo / new
edit / other data, chat turns naming their edits, and the compared entry (Evaluate, Chat). Real
fits on the tiny synthetic model (a few steps each)."""

from __future__ import annotations

import pytest
from tiny_models import tiny_session

from unlearnviz.errors import UserError
from unlearnviz.session import shown

RMU = {"steps": 3, "layer": 2, "window": 2}
PROMPTS = ("The capital of Velmora is", "The river of Velmora is")


@pytest.fixture()
def two(tiny_model_path):
    """A session with two edits (RMU, then MRP on top), the last selected."""
    s = tiny_session()
    s.run_edit("rmu", RMU, evaluate=False)
    s.run_edit("mrp", {"steps": 2, "k": 2}, evaluate=False)
    return s


@pytest.mark.parametrize("value,n,index", [(None, 3, None), ("", 3, None), ("  ", 0, None), (1, 3, 0), (3, 3, 2),
                                           (2.0, 3, 1), ("2", 3, 1)])
def test_edit_numbers_count_from_one(value, n, index):
    assert shown.index_of(value, n) == index
    assert shown.number(index) == (None if index is None else index + 1)


@pytest.mark.parametrize("value,n,message", [
    (0, 2, r"there is no edit #0; the timeline has #1..#2"),
    (3, 2, r"there is no edit #3; the timeline has #1..#2"),
    (1, 0, r"there is no edit #1; the timeline is empty"),
    (1.5, 2, r"whole number"),
    ("two", 2, r"whole number"),
])
def test_a_missing_edit_number_is_refused_in_the_pages_numbering(value, n, message):
    with pytest.raises(UserError, match=message):
        shown.index_of(value, n)


def test_session_select_speaks_the_same_numbers(two):
    with pytest.raises(UserError, match=r"there is no edit #3; the timeline has #1..#2"):
        two.select(2)
    with pytest.raises(UserError, match=r"there is no edit #5"):
        two.select_compare(4)
    assert two.selected is None and two.compare is None  # a refused choice changes nothing


def test_tags_name_the_stack_up_to_an_edit(two):
    first, second = shown.tag(two, 0), shown.tag(two, 1)
    assert (first.number, second.number) == (1, 2) and first.index == 0
    assert first.label == "1. rmu" and second.label == "2. mrp"
    assert first.hash != second.hash and len(first.hash) == 24
    assert first.text() == f"edit #1 · {first.hash[:6]}" and second.named() == f"{second.text()} (2. mrp)"
    assert shown.tag(two, None).text() == "the original model (no edit)" and shown.tag(two, None).number is None
    assert shown.selected(two) == second  # the last edit unless one is chosen
    two.select(0)
    assert shown.selected(two) == first
    two.undo()  # the top edit goes; the first's tag is the same (nothing under it changed)
    assert shown.tag(two, 0) == first and shown.selected(two) == first


def test_an_edit_refitted_at_the_same_position_gets_another_tag(two):
    old = shown.tag(two, 1)
    two.undo()
    two.run_edit("rmu", {**RMU, "steering_coeff": 3.0}, evaluate=False)
    new = shown.tag(two, 1)
    assert new.number == old.number == 2 and new.hash != old.hash


def test_stale_after_select_undo_and_new_edit(two):
    assert shown.line(two, "evaluate") == "" and not shown.is_stale(two, "evaluate")  # nothing shown yet
    shown.mark(two, "evaluate")
    assert not shown.is_stale(two, "evaluate")
    assert shown.line(two, "evaluate") == f"Shows **{shown.tag(two, 1).named()}**."
    two.select(0)  # another edit selected: the view still shows #2
    assert shown.is_stale(two, "evaluate")
    text = shown.line(two, "evaluate")
    assert text.startswith(shown.STALE) and f"computed for **{shown.tag(two, 1).named()}**" in text
    assert f"the selected one is now **{shown.tag(two, 0).named()}**" in text and "Refresh" in text
    two.select(None)  # back to the last: current again
    assert not shown.is_stale(two, "evaluate")
    removed = shown.tag(two, 1)
    two.undo()  # the shown edit is gone
    assert shown.is_stale(two, "evaluate") and removed.text() in shown.line(two, "evaluate")
    shown.mark(two, "evaluate")
    two.run_edit("rmu", RMU, evaluate=False)  # a new edit is selected (the last)
    assert shown.is_stale(two, "evaluate")
    shown.forget(two, "evaluate")
    assert not shown.is_stale(two, "evaluate") and shown.line(two, "evaluate") == ""


def test_other_data_makes_a_view_stale_and_says_so(two):
    shown.mark(two, "residual")
    two.load_data("synthetic")  # the same data again: the view is still of it
    assert not shown.is_stale(two, "residual")
    two.load_data("synthetic:0.1:1")  # another world (seed 1)
    assert shown.is_stale(two, "residual")
    assert "on other data" in shown.line(two, "residual")


def test_only_the_comparing_views_follow_the_compared_edit(two):
    two.select(0)
    two.select_compare(1)
    geo, imp = shown.mark(two, "geometry"), shown.mark(two, "importance")
    assert geo == (shown.tag(two, 0), shown.tag(two, 1)) and imp == (shown.tag(two, 0), None)
    assert shown.line(two, "geometry") == (f"Shows **{shown.tag(two, 0).named()}** beside "
                                           f"**{shown.tag(two, 1).named()}**.")
    two.select_compare(None)
    assert shown.is_stale(two, "geometry") and not shown.is_stale(two, "importance")
    two.select_compare(1)
    two.undo()  # the compared edit is gone: no compared entry any more
    assert two.compare is None and shown.compared(two) is None


def test_evaluate_measures_the_compared_entry_once(two):
    two.select(0)
    two.select_compare(1)
    result = two.evaluate(compare=True)
    assert set(result) == {"before", "after", "compare"}
    assert result["after"] is two.after[0] and result["compare"] is two.after[1]
    assert result["after"] != result["compare"]
    assert "compare" not in two.evaluate()  # only when asked


def test_chat_turns_name_their_edits_and_a_new_selection_starts_afresh(two):
    for _ in two.chat_stream(PROMPTS[0], 4, follow_up=True):
        pass
    assert shown.chat_shown(two) == (shown.tag(two, 1), None)
    assert not shown.is_stale(two, "chat", have=shown.chat_shown(two))
    two.select(0)
    assert shown.is_stale(two, "chat", have=shown.chat_shown(two))
    assert shown.tag(two, 1).text() in shown.line(two, "chat", have=shown.chat_shown(two))
    for _ in two.chat_stream(PROMPTS[1], 4, follow_up=True):
        pass
    assert len(two.conversation_turns()) == 1  # a conversation is with one edit
    assert shown.chat_shown(two) == (shown.tag(two, 0), None)
    two.undo()
    two.run_edit("rmu", RMU, evaluate=False)  # another edit at #2: a chat with the old #2 cannot go on
    two.select(None)
    for _ in two.chat_stream(PROMPTS[0], 4, follow_up=True):
        pass
    assert two.conversation_turns()[-1]["edit_hash"] == shown.tag(two, 1).hash


def test_the_compared_pane_answers_as_that_edit_would_when_selected(two):
    """Two turns with #1 selected and #2 compared: #2's answers (with its own history) equal what
    #2 answers when it is the selected edit; the original's answers are the same either way."""
    two.select(0)
    two.select_compare(1)
    compared = []
    for p in PROMPTS:
        for _ in two.chat_stream(p, 6, follow_up=True):
            pass
        answer = None
        for answer in two.compare_stream():
            pass
        compared.append(answer)
    turns = two.conversation_turns()
    assert [t["compared"] for t in turns] == compared and len(turns) == 2
    assert shown.chat_shown(two) == (shown.tag(two, 0), shown.tag(two, 1))
    two.select(1)
    two.select_compare(None)
    alone = []
    for p in PROMPTS:
        for state in two.chat_stream(p, 6, follow_up=True):
            pass
        alone.append(state.texts(two.lm.tokenizer))
    assert [b for _, b in alone] == compared
    assert [a for a, _ in alone] == [t["original"] for t in turns]
    assert list(two.compare_stream()) == []  # nothing compared: nothing generated
