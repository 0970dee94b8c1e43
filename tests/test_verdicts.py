"""The verdict rules and metric formatting: plain sentences that say what the numbers mean, and
the bar (forget within 10 points of the floor, retain at most 3 points lost, perplexity at most
10% up) checked on both sides of each edge."""

from __future__ import annotations

import math

import pytest

from unlearnviz.evaluation.verdicts import (
    FORGET_MARGIN,
    METRICS,
    PPL_RISE,
    RETAIN_DROP,
    Verdict,
    fmt_metric,
    forget_verdict,
    headline,
    metric_rows,
    pct,
    relearn_verdict,
    residual_verdict,
    retain_verdict,
    round4,
)

BEFORE = {"forget_cloze_acc": 1.0, "forget_floor_acc": 0.3, "chance": 0.25, "retain_cloze_acc": 1.0,
          "retain_ppl": 100.0}


def test_verdicts_in_plain_words():
    before = {"forget_cloze_acc": 1.0, "forget_floor_acc": 0.3, "chance": 0.25, "retain_cloze_acc": 1.0,
              "retain_ppl": 100.0}
    assert forget_verdict(before, {"forget_cloze_acc": 0.35}).ok is True
    v = forget_verdict(before, {"forget_cloze_acc": 0.6})
    assert v.ok is False and v.text.startswith("The edit did not forget") and "30%" in v.text
    assert forget_verdict({**before, "forget_cloze_acc": 0.35}, {"forget_cloze_acc": 0.3}).ok is None
    assert retain_verdict(before, {"retain_cloze_acc": 0.98, "retain_ppl": 105.0}).ok is True
    assert retain_verdict(before, {"retain_cloze_acc": 0.9, "retain_ppl": 105.0}).ok is False
    assert retain_verdict(before, {"retain_cloze_acc": 1.0, "retain_ppl": 130.0}).ok is False
    kept, damaged = Verdict(True, ""), Verdict(False, "")
    assert headline(Verdict(True, ""), kept).text == "In one line: The edit forgot the forget facts and kept the rest."
    assert headline(Verdict(True, ""), damaged).ok is False and "but it also damaged" in \
        headline(Verdict(True, ""), damaged).text
    assert headline(Verdict(False, ""), kept).text == "In one line: The edit did not forget."
    curve = {"edited": [{"step": 0, "acc": 0.25}, {"step": 20, "acc": 0.3}], "original": [{"step": 0, "acc": 1.0}]}
    assert relearn_verdict(curve, True).ok is True
    assert relearn_verdict(curve, False).ok is None  # nothing forgotten: the attack cannot say more
    back = {"edited": [{"step": 0, "acc": 0.25}, {"step": 10, "acc": 0.875}], "original": [{"step": 0, "acc": 1.0}]}
    v = relearn_verdict(back, True)
    assert v.ok is False and v.text.startswith("The knowledge came back: after 10 fine-tuning steps")


def test_the_bar_is_the_documented_one():
    assert (FORGET_MARGIN, RETAIN_DROP, PPL_RISE) == (0.10, 0.03, 0.10)


@pytest.mark.parametrize("after, ok", [
    (0.3 + FORGET_MARGIN, True),  # exactly at the margin above the floor: forgotten
    (0.3 + FORGET_MARGIN + 0.01, False),  # one point more: not forgotten
    (0.0, True),  # below the floor is still forgotten
])
def test_forget_bar_is_measured_from_the_floor(after, ok):
    assert forget_verdict(BEFORE, {"forget_cloze_acc": after}).ok is ok


def test_forget_bar_uses_chance_when_it_is_above_the_floor():
    before = {**BEFORE, "chance": 0.5}
    assert forget_verdict(before, {"forget_cloze_acc": 0.5 + FORGET_MARGIN}).ok is True
    v = forget_verdict(before, {"forget_cloze_acc": 0.61})
    assert v.ok is False and "about 50%" in v.text and "11 points above" in v.text


@pytest.mark.parametrize("b, ok", [
    (0.3 + FORGET_MARGIN, None),  # the original barely knew the facts: nothing to show
    (0.3 + FORGET_MARGIN + 0.01, True),  # it knew them, and the edit brought it to the floor
])
def test_forget_needs_something_to_forget(b, ok):
    v = forget_verdict({**BEFORE, "forget_cloze_acc": b}, {"forget_cloze_acc": 0.3})
    assert v.ok is ok
    assert ("barely knew" in v.text) is (ok is None)


def test_forget_without_numbers_cannot_tell():
    assert forget_verdict({}, {"forget_cloze_acc": 0.3}).ok is None
    assert forget_verdict(BEFORE, {}).text.startswith("No forget accuracy was measured")


@pytest.mark.parametrize("after, ok", [
    (1.0 - RETAIN_DROP, True),  # exactly the allowed loss
    (1.0 - RETAIN_DROP - 0.01, False),  # one point more
    (1.0, True),
])
def test_retain_bar(after, ok):
    v = retain_verdict({"retain_cloze_acc": 1.0}, {"retain_cloze_acc": after})
    assert v.ok is ok
    assert v.text.startswith("Retain knowledge was kept" if ok else "The edit damaged knowledge")
    assert "Perplexity" not in v.text  # no perplexity measured: none reported


@pytest.mark.parametrize("after_ppl, ok", [
    (100.0 * (1 + PPL_RISE) - 0.1, True),
    (110.0, True),  # exactly at the bar: allowed, as "at most 10%" says (110/100 - 1 > 0.1 in floats)
    (100.0 * (1 + PPL_RISE) + 0.1, False),
    (80.0, True),  # more fluent is fine
])
def test_perplexity_bar(after_ppl, ok):
    v = retain_verdict(BEFORE, {"retain_cloze_acc": 1.0, "retain_ppl": after_ppl})
    assert v.ok is ok
    assert ("less fluent" in v.text) is (not ok)
    assert f"from 100.0 to {after_ppl:.1f}" in v.text


def test_retain_without_numbers_cannot_tell():
    assert retain_verdict(BEFORE, {}) == Verdict(None, "No retain accuracy was measured.")


def test_headline_when_forgetting_cannot_be_shown():
    unknown = Verdict(None, "")
    assert headline(unknown, Verdict(True, "")) == Verdict(None, "In one line: Forgetting could not be shown.")
    v = headline(unknown, Verdict(False, ""))
    assert v.ok is False and v.text.endswith("and the edit damaged knowledge it should have kept.")
    assert headline(Verdict(False, ""), Verdict(False, "")).text == \
        "In one line: The edit did not forget, and it damaged knowledge it should have kept."


@pytest.mark.parametrize("probe, ok", [
    ("erased at every layer", True),
    ("hidden: a readout still finds the answers", False),
    ("not forgotten", False),
    ("too few items to tell", None),
])
def test_residual_verdict_trusts_only_erased(probe, ok):
    v = residual_verdict(probe)
    assert v.ok is ok and v.text == f"Inside the model: {probe}."
    assert v.css == {True: "good", False: "bad", None: "unknown"}[ok]


def _curve(start: float, end: float, ref: float) -> dict:
    return {"edited": [{"step": 0, "acc": start}, {"step": 8, "acc": end}], "original": [{"step": 0, "acc": ref}]}


def test_relearn_verdict_needs_a_curve():
    assert relearn_verdict(None, True) is None
    assert relearn_verdict({"edited": []}, True) is None


@pytest.mark.parametrize("start, ok", [
    (1.0 - FORGET_MARGIN, None),  # the edit removed no more than the margin on half B: the attack cannot say
    (1.0 - FORGET_MARGIN - 0.05, True),  # it removed more, and nothing came back
])
def test_relearn_needs_a_gap_to_close(start, ok):
    assert relearn_verdict(_curve(start, start, 1.0), True).ok is ok


@pytest.mark.parametrize("end, ok", [
    (0.25 + 0.5 * 0.75, False),  # half of the lost accuracy regained: it came back
    (0.25 + 0.5 * 0.75 - 0.01, True),  # just under half: it did not
])
def test_relearn_recovery_is_half_the_gap(end, ok):
    v = relearn_verdict(_curve(0.25, end, 1.0), True)
    assert v.ok is ok
    assert v.text.startswith("The knowledge came back: after 8" if not ok else "The forgotten facts did not come back")


def test_metric_rows_and_formatting():
    before = {"forget_cloze_acc": 0.8, "retain_ppl": 12.345678}
    after = {"forget_cloze_acc": 0.3}
    assert metric_rows(before, after) == [["forget cloze acc", 0.8, 0.3, -0.5], ["retain perplexity", 12.3457, None,
                                                                                None]]
    assert metric_rows({}, {}) == []
    assert [k for k, *_ in METRICS][:2] == ["forget_cloze_acc", "forget_floor_acc"]
    assert round4(None) is None and round4(1 / 3) == 0.3333
    assert fmt_metric("forget_cloze_acc", 0.375) == "37.5%" and fmt_metric("chance", 0.25) == "25.0%"
    assert fmt_metric("retain_ppl", 12.345) == "12.35" and fmt_metric("retain_ppl", 12345.6) == "12346"
    assert fmt_metric("retain_ppl", None) == "–" and fmt_metric("retain_ppl", math.nan) == "–"
    assert pct(0.25) == "25%" and pct(0.375) == "37.5%" and pct(1 / 3) == "33.3%"
