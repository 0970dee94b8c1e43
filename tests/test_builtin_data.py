"""The built-in real-fact sets in assets/data (built by scripts/build_builtin_data.py).

Fast tests read the shipped files and cards only; the slow test re-measures the baselines with the
default model.
"""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from unlearnviz.data import builtin_names, load_data
from unlearnviz.data.loaders import ASSETS, builtin_card

REAL_SETS = ["geo_europe_vs_world", "geo_europe_vs_science_books"]
ALL_SETS = [*REAL_SETS, "demo"]
MIN_ITEMS = {"geo_europe_vs_world": (60, 100), "geo_europe_vs_science_books": (60, 100), "demo": (24, 40)}
REQUIRED_BASELINE = ("forget_cloze_acc", "forget_floor_acc", "retain_cloze_acc", "retain_floor_acc",
                     "forget_mcq_acc", "retain_mcq_acc", "retain_ppl")


@pytest.fixture(scope="module", params=ALL_SETS)
def built(request):
    name = request.param
    return name, load_data(f"builtin:{name}"), builtin_card(name)


def _has(text: str, phrase: str) -> bool:
    """``phrase`` occurs in ``text`` as whole words ("Romania" is not in "Romanian")."""
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text) is not None


def _raw_rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (ASSETS / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()]


def test_listed():
    assert set(ALL_SETS) <= set(builtin_names())
    for name in ALL_SETS:
        assert (ASSETS / f"{name}.card.json").exists()
    assert (ASSETS / "README.md").exists()


def test_sizes(built):
    name, data, card = built
    min_f, min_r = MIN_ITEMS[name]
    assert len(data.forget_mcq) >= min_f
    assert len(data.retain_mcq) >= min_r
    assert data.forget_texts and data.retain_texts
    shipped = card["counts"]["shipped"]
    assert shipped["forget_mcq"] == len(data.forget_mcq)
    assert shipped["retain_mcq"] == len(data.retain_mcq)
    assert card["texts"]["forget"] == len(data.forget_texts)
    assert card["texts"]["retain"] == len(data.retain_texts)


def test_items_well_formed(built):
    _, data, _ = built
    for it in data.forget_mcq + data.retain_mcq:
        assert len(it.choices) == 4, it
        assert len(set(it.choices)) == 4, f"duplicate choices: {it}"
        assert 0 <= it.answer < 4
        assert it.subject and _has(it.question, it.subject), it
        assert it.blind_question and not _has(it.blind_question, it.subject), it
        assert it.relation
    # gold positions balanced (only letter scoring can be biased by position)
    for items in (data.forget_mcq, data.retain_mcq):
        pos = Counter(it.answer for it in items)
        assert max(pos.values()) - min(pos.values()) <= 1, pos


def test_halves_balanced(built):
    name, data, _ = built
    rows = [r for r in _raw_rows(name) if r["split"] == "forget"]
    assert all(r.get("half") in ("A", "B") for r in rows), "every forget row is marked A or B"
    halves = Counter(data.forget_half)
    assert set(halves) == {"A", "B"}
    assert abs(halves["A"] - halves["B"]) <= 2, halves
    text_halves = Counter(data.forget_text_half)
    assert min(text_halves.values()) >= 0.4 * len(data.forget_texts), text_halves


def test_text_halves_match_the_facts_they_state(built):
    _, data, _ = built
    for text, half in zip(data.forget_texts, data.forget_text_half):
        stating = [h for it, h in zip(data.forget_mcq, data.forget_half)
                   if _has(text, it.subject) and _has(text, it.gold)]
        assert stating, f"forget text states no forget item: {text!r}"
        assert set(stating) == {half}, f"{text!r} is marked {half} but states facts of {set(stating)}"


def test_stems_are_not_training_texts(built):
    _, data, _ = built
    texts = [t.lower() for t in data.forget_texts + data.retain_texts]
    for it in data.forget_mcq + data.retain_mcq + data.forget_probe + data.retain_probe:
        stem = it.question.lower()
        assert not any(stem in t for t in texts), f"MCQ stem {it.question!r} occurs in a training text"


def test_probes_rephrase_every_fact_with_fresh_distractors(built):
    """The probe split: each forget and retain fact under two held-out stems (a paraphrase and a
    question), each stem its own, never a main stem, with the same gold and a new distractor draw."""
    name, data, card = built
    main_stems = {it.question for it in data.forget_mcq + data.retain_mcq}
    all_probes = data.forget_probe + data.retain_probe
    assert len({p.question for p in all_probes}) == len(all_probes), "a probe stem is used twice"
    for split in ("forget", "retain"):
        items, probes = getattr(data, f"{split}_mcq"), getattr(data, f"{split}_probe")
        of = getattr(data, f"{split}_probe_of")
        by_q = {it.question: it for it in items}
        assert Counter(of) == dict.fromkeys(by_q, 2), f"{split}: every fact, and only its facts, twice"
        for p, q in zip(probes, of):
            it = by_q[q]
            assert p.question not in main_stems and p.question != q
            assert p.gold == it.gold and p.relation == it.relation and p.subject == it.subject
            assert _has(p.question, p.subject), p
            assert p.blind_question and not _has(p.blind_question, p.subject), p
            assert len(p.choices) == 4 and len(set(p.choices)) == 4 and all(c.strip() for c in p.choices), p
        assert {p.question.startswith("Q: ") for p in probes} == {True, False}  # a question and a paraphrase
        fresh = sum(set(p.choices) != set(by_q[q].choices) for p, q in zip(probes, of))
        assert fresh >= 0.75 * len(probes), f"{split}: {fresh} of {len(probes)} probes have new distractors"
        pos = Counter(p.answer for p in probes)
        assert max(pos.values()) - min(pos.values()) <= 1, pos
        assert card["probes"][split] == len(probes)
        for key in ("cloze_acc", "floor_acc"):
            assert 0 <= card["baseline"][f"{split}_probe_{key}"] <= 1


def test_texts_short(built):
    _, data, _ = built
    # the generator caps texts at 25 tokens; 20 words is a tokenizer-free upper bound for that
    for t in data.forget_texts + data.retain_texts:
        assert len(t.split()) <= 20, t


def test_forget_facts_shared_by_the_real_sets():
    a, b = (load_data(f"builtin:{n}") for n in REAL_SETS)
    assert a.forget_mcq == b.forget_mcq and a.forget_half == b.forget_half
    assert a.forget_texts == b.forget_texts
    assert not {it.question for it in a.forget_mcq} & {it.question for it in a.retain_mcq}


def test_card(built):
    name, data, card = built
    assert card["name"] == name
    for key in ("description", "regime", "sources", "licence", "how_built", "counts", "baseline", "overlap"):
        assert card.get(key), key
    assert all(k in card["baseline"] for k in REQUIRED_BASELINE)
    b, t = card["baseline"], card["thresholds"]
    assert b["forget_cloze_acc"] >= 0.80 and b["retain_cloze_acc"] >= 0.80, b
    assert b["forget_floor_acc"] <= 0.35 and b["retain_floor_acc"] <= 0.35, b
    assert t["min_cloze"] == 0.80 and t["max_floor"] == 0.35
    ov = data.overlap()
    assert card["overlap"]["unigram"] == pytest.approx(ov["unigram"], abs=1e-4)
    assert card["overlap"]["bigram"] == pytest.approx(ov["bigram"], abs=1e-4)
    if name in REAL_SETS:
        for split in ("forget", "retain"):
            c = card["counts"][split]
            assert c["candidates"] == c["pruned_unknown"] + c["pruned_subject_blind"] + c["kept"]


def test_regimes_differ_in_overlap():
    hi, lo = (builtin_card(n) for n in REAL_SETS)
    assert hi["regime"] == "high entanglement" and lo["regime"] == "low entanglement"
    assert hi["overlap"]["bigram"] > 2 * lo["overlap"]["bigram"]
    assert hi["overlap"]["unigram"] > lo["overlap"]["unigram"]


@pytest.mark.slow
def test_baselines_with_default_model():
    from unlearnviz.evaluation.mcq import evaluate
    from unlearnviz.model import load_model

    lm = load_model("default")
    for name in ALL_SETS:
        m = evaluate(lm, load_data(f"builtin:{name}"), letter=False, ppl=False)
        assert m["forget_cloze_acc"] >= 0.80 and m["retain_cloze_acc"] >= 0.80, (name, m)
        assert m["forget_floor_acc"] <= 0.35 and m["retain_floor_acc"] <= 0.35, (name, m)
        card = builtin_card(name)["baseline"]
        for key in ("forget_cloze_acc", "retain_cloze_acc", "forget_floor_acc", "retain_floor_acc"):
            assert m[key] == pytest.approx(card[key], abs=0.03), (name, key)
