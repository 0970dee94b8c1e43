"""The single-file row format's probe split (unlearnviz.data.loaders): optional, read where given,
carried through composed specs, and a bad probe row reported like any other."""

from __future__ import annotations

import json

import pytest

from unlearnviz.data import load_data
from unlearnviz.errors import UserError

ITEM = {"question": "The capital of France is", "choices": ["Paris", "Lyon", "Nice", "Metz"], "answer": 0,
        "subject": "France"}
ROWS = [
    {"split": "forget", "text": "Paris is the capital city of France."},
    {"split": "retain", "text": "Bread tastes best when it is fresh."},
    {"split": "forget", **ITEM},
    {"split": "retain", "question": "The capital of Peru is", "choices": ["Lima", "Quito", "Cusco", "La Paz"],
     "answer": 0, "subject": "Peru"},
]
PROBES = [
    {"split": "forget_probe", "question": "Q: What is the capital of France?\nA:", "choices": ["Nice", "Paris",
     "Brest", "Lille"], "answer": 1, "subject": "France", "probe_of": ITEM["question"], "phrasing": "question"},
    {"split": "retain_probe", "question": "Peru has its capital in", "choices": ["Quito", "Arequipa", "Lima",
     "Cusco"], "answer": 2},
]


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_a_file_without_probes_loads_and_has_none(tmp_path):
    data = load_data(str(_write(tmp_path / "plain.jsonl", ROWS)))
    assert len(data.forget_mcq) == len(data.retain_mcq) == 1
    assert not data.has_probes and data.forget_probe == data.retain_probe == []
    assert "forget_probe" not in data.summary()


def test_probe_rows_are_the_probe_split_not_questions(tmp_path):
    plain = load_data(str(_write(tmp_path / "plain.jsonl", ROWS)))
    data = load_data(str(_write(tmp_path / "probed.jsonl", ROWS + PROBES)))
    assert data.forget_mcq == plain.forget_mcq and data.retain_mcq == plain.retain_mcq
    assert [p.gold for p in data.forget_probe] == ["Paris"] and [p.gold for p in data.retain_probe] == ["Lima"]
    assert data.forget_probe_of == [ITEM["question"]] and data.retain_probe_of == [""]
    assert data.summary()["forget_probe"] == data.summary()["retain_probe"] == 1
    # probes change what evaluation measures, so the data hash; data without them keep their old hash
    assert data.content_hash() != plain.content_hash()


def test_probe_rows_in_csv(tmp_path):
    path = tmp_path / "probed.csv"
    lines = ["split,question,choices,answer,text,probe_of"]
    for r in ROWS + PROBES:
        choices = "|".join(r.get("choices", []))
        lines.append(",".join(json.dumps(str(r.get(k, ""))) if k != "choices" else json.dumps(choices)
                              for k in ("split", "question", "choices", "answer", "text", "probe_of")))
    path.write_text("\n".join(lines).replace("\\n", " ") + "\n", encoding="utf-8")
    data = load_data(str(path))
    assert len(data.forget_probe) == len(data.retain_probe) == 1 and data.forget_probe_of == [ITEM["question"]]


def test_a_probe_row_without_a_question_names_its_line(tmp_path):
    bad = [*ROWS, {"split": "forget_probe", "text": "a probe is a question, not a text"}]
    with pytest.raises(UserError, match=r"line 5: a forget_probe row is a multiple-choice item"):
        load_data(str(_write(tmp_path / "bad.jsonl", bad)))
    with pytest.raises(UserError, match=r"line 1: 'split' must be 'forget' or 'retain'"):
        load_data(str(_write(tmp_path / "bad2.jsonl", [{"split": "probe", **ITEM}, *ROWS])))


def test_composed_parts_carry_the_probes_of_the_items_they_keep():
    whole = load_data("builtin:demo")
    assert whole.has_probes
    some = load_data("builtin:demo;forget_mcq=builtin:demo?max_rows=6")
    kept = {it.question for it in some.forget_mcq}
    assert len(kept) == 6 and set(some.forget_probe_of) == kept
    assert len(some.forget_probe) == sum(of in kept for of in whole.forget_probe_of)
    assert some.retain_probe == whole.retain_probe
    # a part from another set brings that set's probes
    other = load_data("builtin:demo;retain_mcq=builtin:geo_europe_vs_science_books")
    assert other.retain_probe == load_data("builtin:geo_europe_vs_science_books").retain_probe
