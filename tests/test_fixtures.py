"""The offline WMDP-shaped fixture: real GCIDE text in ~512-token documents, two domains, and
questions whose answers its documents hold (small slices; the benchmark builds the full set)."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

from unlearnviz.data import fixtures
from unlearnviz.errors import UserError


@pytest.fixture(scope="module")
def tokenizer():
    """The default model's tokenizer, read from the real cache (where `make prepare` put it)."""
    return fixtures.default_tokenizer()


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fixture-cache")


@pytest.fixture()
def in_cache(cache, monkeypatch):
    """The fixture's files go to a test cache; GCIDE is read where `make corpora` put it."""
    monkeypatch.setenv("UNLEARNVIZ_GCIDE", str(fixtures.gcide_folder()))
    monkeypatch.setenv("UNLEARNVIZ_CACHE", str(cache))
    return cache


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture()
def small(in_cache, tokenizer):
    return fixtures.wmdp_shaped(n_forget=50, n_retain=50, n_mcq=100, tokenizer=tokenizer)


def test_documents_are_about_512_tokens_of_real_text(small, tokenizer):
    for path, split in ((small.forget_corpus, "forget"), (small.retain_corpus, "retain")):
        rows = _rows(path)
        assert len(rows) == 50 and all(r["split"] == split and r["text"].strip() for r in rows)
        lengths = [len(ids) for ids in tokenizer([r["text"] for r in rows])["input_ids"]]
        assert max(lengths) <= 512
        assert 420 <= statistics.median(lengths) <= 512, lengths
    assert small.meta["doc_tokens"]["max"] <= 512 and small.meta["forget_docs"] == 50


def test_forget_and_retain_come_from_different_domains(small):
    forget = [r["text"] for r in _rows(small.forget_corpus)]
    retain = [r["text"] for r in _rows(small.retain_corpus)]
    life = re.compile(r"\((?:Zool|Zo\[\"o\]l|Bot|Anat|Physiol|Med)\.\)")
    assert sum(bool(life.search(t)) for t in forget) >= 45  # nearly every forget document
    assert not any(life.search(t) for t in retain)
    assert not set(forget) & set(retain)


def test_questions_are_answered_by_their_own_corpus(small):
    forget_text = "\n".join(r["text"] for r in _rows(small.forget_corpus))
    retain_text = "\n".join(r["text"] for r in _rows(small.retain_corpus))
    for path, text, split in ((small.forget_mcq, forget_text, "forget"), (small.retain_mcq, retain_text, "retain")):
        items = _rows(path)
        assert len(items) >= 30, len(items)  # 50 documents hold fewer fair questions than the 100 asked for
        for it in items:
            assert it["split"] == split and len(it["choices"]) == 4 and len(set(it["choices"])) == 4
            gold = it["choices"][it["answer"]]
            definition = re.search(r'"(.+)"', it["question"]).group(1)
            assert gold in text, gold  # the headword...
            assert definition[1:] in text, definition  # ...and its definition are in a document
            assert gold.lower()[:5] not in definition.lower()  # the stem does not give the answer away
        assert len({it["answer"] for it in items}) == 4  # the gold is not always in one place


def test_the_files_load_as_data(small, tokenizer):
    from unlearnviz.data.loaders import load_file

    data = fixtures.load_wmdp_shaped(n_forget=50, n_retain=50, n_mcq=100, tokenizer=tokenizer)
    assert len(data.forget_texts) == 50 and len(data.retain_texts) == 50
    assert len(data.forget_mcq) == small.meta["forget_mcq"] and data.retain_mcq
    combined = load_file(small.combined)  # the single-file form of today's --data
    assert list(combined.forget_texts) == list(data.forget_texts)
    assert [i.gold for i in combined.retain_mcq] == [i.gold for i in data.retain_mcq]


@pytest.mark.slow
def test_seeded_prefix_and_cache(in_cache, small, tokenizer):
    fewer = fixtures.wmdp_shaped(n_forget=20, n_retain=30, n_mcq=10, tokenizer=tokenizer)
    assert fewer.folder != small.folder
    assert _rows(fewer.forget_corpus) == _rows(small.forget_corpus)[:20]  # fewer documents: a prefix
    assert _rows(fewer.retain_corpus) == _rows(small.retain_corpus)[:30]
    other = fixtures.wmdp_shaped(n_forget=20, n_retain=30, n_mcq=10, seed=1, tokenizer=tokenizer)
    assert _rows(other.forget_corpus) != _rows(fewer.forget_corpus)
    stamp = (fewer.folder / "meta.json").stat().st_mtime_ns
    again = fixtures.wmdp_shaped(n_forget=20, n_retain=30, n_mcq=10, tokenizer=tokenizer)
    assert again == fewer and (fewer.folder / "meta.json").stat().st_mtime_ns == stamp  # read, not rebuilt


def test_parse_item_takes_a_fair_question_from_an_entry():
    retain = "Caloriduct \\Ca*lor\"i*duct\\, n. [L. calor heat (fr. calere to warm) + E. duct.] A tube or duct " \
             "for conducting heat; a caliduct.\nCalorie \\Cal\"o*rie\\, n. The unit of heat."
    assert fixtures.parse_item(retain, bio=False) == ("Caloriduct", "English", "a tube or duct for conducting heat")
    assert fixtures.parse_item(retain, bio=True) is None  # no life-science mark
    bio = "Caloricity \\Cal`o*ric\"i*ty\\, n. (Physiol.) A faculty in animals of developing and preserving the heat " \
          "necessary to life, that is, the animal heat."
    hw, field, definition = fixtures.parse_item(bio, bio=True)
    assert (hw, field) == ("Caloricity", "physiology") and definition.startswith("a faculty in animals")
    # a definition that names its own headword, or only points elsewhere, makes no question
    assert fixtures.parse_item("Calorimetry \\Cal`o*rim\"e*try\\, n. (Physics) Measurement of calorimetry in "
                               "bodies by the heat.", bio=False) is None
    assert fixtures.parse_item("Calorifiant \\Ca*lor`i*fi\"ant\\, a. (Physiol.) See Calorificient, a word of "
                               "the physiologists.", bio=True) is None


def test_bad_arguments_and_missing_gcide_say_what_to_do(tmp_path, monkeypatch, tokenizer):
    with pytest.raises(UserError, match="n_forget"):
        fixtures.wmdp_shaped(n_forget=0, tokenizer=tokenizer)
    monkeypatch.setenv("UNLEARNVIZ_GCIDE", str(tmp_path))
    with pytest.raises(UserError, match="make corpora") as err:
        fixtures.wmdp_shaped(n_forget=5, n_retain=5, tokenizer=tokenizer)
    assert "\n" not in str(err.value)


def test_asking_for_more_documents_than_the_domain_makes(in_cache, tokenizer):
    entries = fixtures.read_entries()[:200]
    with pytest.raises(UserError, match="make only"):
        fixtures.pack_documents(tokenizer, entries, 10_000, 512, 0)


def test_a_fixture_spec_loads_as_its_four_files():
    """``fixture:wmdp-shaped:N`` is a data spec like any other: N documents a side, its questions."""
    from unlearnviz.data.compose import check_data, load_data

    check_data("fixture:wmdp-shaped:40")
    data = load_data("fixture:wmdp-shaped:40")
    assert len(data.forget_texts) == 40 and len(data.retain_texts) == 40
    assert data.forget_mcq and data.retain_mcq
    for bad, needle in [("fixture:nope", "unknown fixture 'nope'"), ("fixture:wmdp-shaped:x", "whole number")]:
        with pytest.raises(UserError, match=needle):
            load_data(bad)
