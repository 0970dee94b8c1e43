"""The synthetic lab set: deterministic world, entanglement knob, well-formed MCQ, a tiny model
that knows its facts, and a cache that is reused."""

from __future__ import annotations

import re
from collections import Counter

import pytest
import torch

from unlearnviz.data import load_data
from unlearnviz.data.synthetic import (
    KNOB_VALUES,
    RELATIONS_A,
    TEMPLATES,
    make_world,
    model_dir,
    parse_spec,
    synthetic_model_path,
)
from unlearnviz.errors import UserError
from unlearnviz.evaluation.mcq import score_items, summarise


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tiny model scores ~10x faster on one thread than on two on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


WORD = re.compile(r"[A-Za-z0-9']+")


def words(texts) -> set[str]:
    return {w.lower() for t in texts for w in WORD.findall(t)}


def test_world_is_deterministic_per_seed():
    a, b = make_world(0.2, seed=3), make_world(0.2, seed=3)
    assert a.content_hash() == b.content_hash()
    assert a.forget_half == b.forget_half and a.forget_text_half == b.forget_text_half
    assert make_world(0.2, seed=4).content_hash() != a.content_hash()
    # the forget facts do not depend on the knob, only on the seed
    golds = {e: [(m.question, m.gold) for m in make_world(e).forget_mcq] for e in KNOB_VALUES}
    assert all(g == golds[0.0] for g in golds.values())


def test_sizes_halves_and_specs():
    d = make_world(0.1, n_forget=24, n_retain=40)
    assert (len(d.forget_mcq), len(d.retain_mcq)) == (24, 40)
    assert len(d.forget_texts) == 5 * 24 and len(d.retain_texts) > 5 * 40  # plus fillers
    assert Counter(d.forget_half) == {"A": 12, "B": 12}
    # each forget text belongs to the half of the fact it states
    for text, half in zip(d.forget_texts, d.forget_text_half):
        owners = [h for m, h in zip(d.forget_mcq, d.forget_half) if m.subject in text and m.gold in text]
        assert owners == [half], text
    assert load_data("synthetic").name == "synthetic:0.1"
    assert load_data("synthetic:0.2").content_hash() == make_world(0.2).content_hash()
    assert parse_spec("synthetic:0.3:7") == (0.3, 7)
    for bad in ("synthetic:lots", "synthetic:0.9", "synthetic:0.1:x", "synthetical", "synthetic:0.1:2:3"):
        with pytest.raises(UserError):
            load_data(bad)


def test_overlap_grows_with_the_knob():
    ovs = [make_world(e).overlap() for e in KNOB_VALUES]
    for key in ("unigram", "bigram"):
        values = [o[key] for o in ovs]
        assert values == sorted(values) and len(set(values)) == len(values), (key, values)
    assert ovs[0]["unigram"] < 0.15 and ovs[0]["bigram"] < 0.01
    assert ovs[-1]["unigram"] > 0.35


def test_zero_entanglement_shares_only_function_words():
    d = make_world(0.0)
    shared = words(d.forget_texts) & words(d.retain_texts)
    assert shared <= {"the", "of", "is", "in", "a", "by", "its", "for", "to", "are", "from"}, shared
    forget_templates = {t for r in RELATIONS_A for t in TEMPLATES[r]}
    names = {m.subject for m in d.forget_mcq} | {m.gold for m in d.forget_mcq}
    assert not any(n in t for n in names for t in d.retain_texts)
    assert not any(m.relation in RELATIONS_A for m in d.retain_mcq)
    # at 0.3, forget relations, templates and entities do occur in the retain set
    d3 = make_world(0.3)
    assert sum(m.relation in RELATIONS_A for m in d3.retain_mcq) == 18
    assert any(n in t for n in {m.subject for m in d3.forget_mcq} for t in d3.retain_texts)
    assert len(forget_templates) == 20


@pytest.mark.parametrize("entanglement", KNOB_VALUES)
def test_mcq_items_are_well_formed(entanglement):
    d = make_world(entanglement)
    for items in (d.forget_mcq, d.retain_mcq):
        objects: dict[str, set[str]] = {}
        for m in items:
            objects.setdefault(m.relation, set()).add(m.gold)
        all_objects = {r: {m.gold for m in d.forget_mcq + d.retain_mcq if m.relation == r} for r in objects}
        for m in items:
            assert len(m.choices) == 4 and len(set(m.choices)) == 4, m
            assert set(m.choices) <= all_objects[m.relation], m  # distractors of the same kind
            assert m.subject and m.subject in m.question and m.subject not in m.blind_question
            assert f"this {'country' if m.relation in RELATIONS_A else 'element'}" in m.blind_question.lower()
            assert m.question == m.question.strip() and m.question[-1].isalpha()
        # the gold option is not always at the same index
        assert set(Counter(m.answer for m in items)) == {0, 1, 2, 3}
        assert max(Counter(m.answer for m in items).values()) < 0.5 * len(items)


def test_tiny_model_knows_its_facts(tiny_lm, tiny_data):
    assert tiny_lm.adapter.family == "gpt2" and tiny_lm.n_layers == 4
    for items in (tiny_data.forget_mcq, tiny_data.retain_mcq):
        res = summarise(score_items(tiny_lm, items, letter=False))
        assert res["cloze_acc"] >= 0.9, res
        assert res["floor_acc"] <= 0.5, res
        assert res["cloze_acc"] - res["floor_acc"] >= 0.4, res


def test_tokenizer_round_trips_and_pads(tiny_lm, tiny_model_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    text = "The capital of Drokand is Dalford."
    assert tok.decode(tok(text).input_ids) == text
    assert tok.eos_token and tok.pad_token_id == tok.eos_token_id
    assert tiny_lm.max_length >= 256  # room for lm-eval's lettered prompts


def test_second_call_reuses_the_cached_folder(tiny_model_path, monkeypatch):
    import unlearnviz.data.synthetic as synthetic

    assert tiny_model_path == model_dir(0.1, 0) and tiny_model_path.name.startswith("synthetic-e0.1-s0-v")
    weights = next(tiny_model_path.glob("*.safetensors"))
    stamp = (weights.stat().st_ino, weights.stat().st_mtime_ns)

    def no_training(*args, **kwargs):
        raise AssertionError("the cached model was retrained")

    monkeypatch.setattr(synthetic, "train_synthetic", no_training)
    assert synthetic_model_path(0.1, 0) == tiny_model_path
    assert (weights.stat().st_ino, weights.stat().st_mtime_ns) == stamp


def test_missing_model_is_trained_into_its_own_folder(tmp_path, monkeypatch):
    """A cold cache trains (stubbed here: the real run is the session fixture) and renames
    a complete folder into place; a half-written folder is rebuilt."""
    import unlearnviz.data.synthetic as synthetic

    monkeypatch.setenv("UNLEARNVIZ_CACHE", str(tmp_path))
    calls = []

    def fake_train(data, out, seed=0, config=None, log=None):
        calls.append((data.name, out))
        out.mkdir(parents=True)
        for name in ("config.json", "synthetic.json", "tokenizer.json", "model.safetensors"):
            (out / name).write_text("{}")
        return {}

    monkeypatch.setattr(synthetic, "train_synthetic", fake_train)
    broken = model_dir(0.3, 5)
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{}")  # no weights: an interrupted copy by hand
    path = synthetic_model_path(0.3, 5)
    assert path == tmp_path / "models" / f"synthetic-e0.3-s5-v{synthetic.VERSION}"
    assert calls == [("synthetic:0.3:5", path)]
    assert synthetic_model_path(0.3, 5) == path and len(calls) == 1
