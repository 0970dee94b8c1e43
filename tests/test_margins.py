"""The retain margin criterion (unlearnviz.evaluation.margins): hand-made margins, the margin's
agreement with cloze scoring on a real tiny model, and the criterion as the built-in cards state it."""

from __future__ import annotations

import pytest

from unlearnviz.data import load_data
from unlearnviz.data.loaders import builtin_card
from unlearnviz.data.schema import MCQItem
from unlearnviz.evaluation.margins import MIN_RETAIN_MARGIN, cloze_margin, item_margins, split_by_margin
from unlearnviz.evaluation.mcq import score_items

CHOICES = ("Rome", "Oslo", "Bern", "Riga")  # four characters each: a score is the log-prob over 4


def test_margin_is_gold_minus_best_distractor_per_character():
    assert cloze_margin([-2.0, -2.2, -9.0, -9.0], CHOICES, 0) == pytest.approx(0.05)
    assert cloze_margin([-2.0, -8.0, -9.0, -9.0], CHOICES, 0) == pytest.approx(1.5)
    assert cloze_margin([-2.2, -2.0, -9.0, -9.0], CHOICES, 0) == pytest.approx(-0.05)  # wrong: negative
    # per character of the choice, as lm-eval's acc_norm: a longer gold may have the lower sum and still win
    assert cloze_margin([-6.0, -3.0], ("Canberra", "Bern"), 0) == pytest.approx(-6 / 8 + 3 / 4)


def test_thin_margin_items_are_removed_and_wide_ones_kept():
    thin = MCQItem("The capital of Italy is", CHOICES, 0)
    wide = MCQItem("The capital of Norway is", ("Oslo", "Rome", "Bern", "Riga"), 0)
    edge = MCQItem("The capital of Latvia is", ("Riga", "Rome", "Oslo", "Bern"), 0)
    margins = [cloze_margin([-2.0, -2.2, -9.0, -9.0], CHOICES, 0),  # 0.05: flips under any edit
               cloze_margin([-1.0, -8.0, -9.0, -9.0], wide.choices, 0),  # 1.75
               MIN_RETAIN_MARGIN]  # exactly at the threshold: kept
    kept, removed = split_by_margin([thin, wide, edge], margins)
    assert kept == [wide, edge] and removed == [thin]
    assert len(kept) + len(removed) == 3
    assert split_by_margin([thin, wide, edge], margins, threshold=2.0) == ([], [thin, wide, edge])
    with pytest.raises(ValueError):
        split_by_margin([thin, wide], margins)


def test_margins_agree_with_cloze_scoring(tiny_lm, tiny_data):
    items = tiny_data.forget_mcq[:12] + tiny_data.retain_mcq[:12]
    # a wrong gold on some items, so both signs occur
    items = [MCQItem(it.question, it.choices, (it.answer + 1) % 4 if i % 3 == 0 else it.answer)
             for i, it in enumerate(items)]
    margins = item_margins(tiny_lm, items)
    right = [r["cloze"] for r in score_items(tiny_lm, items, letter=False, floor=False)]
    assert {m > 0 for m in margins} == {True, False}
    assert [float(m > 0) for m in margins] == right


@pytest.mark.parametrize("name", ["geo_europe_vs_world", "geo_europe_vs_science_books", "demo"])
def test_every_builtin_card_states_the_criterion_and_what_it_removed(name):
    card, data = builtin_card(name), load_data(f"builtin:{name}")
    c = card["margin_criterion"]
    assert c["threshold"] == MIN_RETAIN_MARGIN and str(MIN_RETAIN_MARGIN) in c["rule"]
    assert c["retain_before"] - c["removed"] == c["retain_after"]
    assert c["removed"] == len(c["removed_items"]) > 0
    assert all(r["margin"] < MIN_RETAIN_MARGIN for r in c["removed_items"])
    shipped = {it.question for it in data.retain_mcq}
    assert not shipped & {r["question"] for r in c["removed_items"]}
    assert any(step.startswith("Retain margin criterion:") for step in card["how_built"])
    if name == "demo":  # its retain items are redrawn from the parent's, which all meet the criterion
        assert "redrawn" in c and len(data.retain_mcq) == 40
        assert shipped <= {it.question for it in load_data("builtin:geo_europe_vs_world").retain_mcq}
    else:
        assert c["retain_after"] == len(data.retain_mcq) == card["counts"]["shipped"]["retain_mcq"]


@pytest.mark.slow
def test_shipped_retain_items_meet_the_criterion_on_the_default_model(default_lm):
    for name in ("geo_europe_vs_world", "geo_europe_vs_science_books", "demo"):
        margins = item_margins(default_lm, load_data(f"builtin:{name}").retain_mcq)
        assert min(margins) >= MIN_RETAIN_MARGIN - 1e-3, (name, min(margins))
