"""Data of four parts, each from its own source: the string form, presets (offline errors and local
copies), corpora as memory-mapped Arrow (chunking, sampling, caches once per source), malformed
sources (one line naming the part and the fix), configs and the CLI, and `run` end to end on four
sources with the tiny synthetic model. Real files written here; nothing touches a hub."""

from __future__ import annotations

import copy
import csv
import json
import os
import pickle
import re
from pathlib import Path

import pytest
import yaml

from unlearnviz.cli import main
from unlearnviz.config import load_config
from unlearnviz.data import check_data, compose_spec, load_data
from unlearnviz.data.corpus import TextColumn, chunk_texts, data_cache
from unlearnviz.data.schema import OVERLAP_SAMPLE, UnlearningData
from unlearnviz.data.sources import (
    PRESETS,
    format_source,
    parse_data_spec,
    parse_source,
)
from unlearnviz.data.synthetic import make_world
from unlearnviz.errors import UserError
from unlearnviz.session import Session, compose_data_spec, data_parts

DOC = ("Velmora is a small country on the western coast, and its capital Quenta sits on a wide river delta. "
       "The people of Velmora trade silver, salt and timber with their neighbours across the strait. ")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Every test writes its Arrow parts, hashes and summaries into a cache of its own."""
    monkeypatch.setenv("UNLEARNVIZ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_mcq_csv(path: Path, items, halves=None) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["question", "choices", "answer", "blind_question", "subject", "relation", "half"])
        for i, it in enumerate(items):
            w.writerow([it.question, "|".join(it.choices), it.answer, it.blind_question, it.subject, it.relation,
                        halves[i] if halves else ""])
    return path


@pytest.fixture
def world():
    return make_world(0.1, seed=0)


@pytest.fixture
def four(tmp_path, world) -> dict[str, str]:
    """Four sources: two local files (the world's forget corpus as JSONL, its forget items as CSV),
    one generated (the synthetic world's retain corpus), one built-in (demo's retain items)."""
    corpus = write_jsonl(tmp_path / "forget.jsonl", [{"text": t, "half": h, "id": i} for i, (t, h)
                                                     in enumerate(zip(world.forget_texts, world.forget_text_half))])
    items = write_mcq_csv(tmp_path / "forget_mcq.csv", world.forget_mcq, world.forget_half)
    return {"forget_corpus": str(corpus), "retain_corpus": "synthetic:0.1", "forget_mcq": str(items),
            "retain_mcq": "builtin:demo"}


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


# ---- the string form ----------------------------------------------------------------------------
@pytest.mark.parametrize("text,part", [
    ("hf:cais/wmdp-corpora:cyber-forget-corpus:train?max_rows=1000&chunk_tokens=768&text=text", "forget_corpus"),
    ("hf:cais/mmlu:all:test?subject=", "retain_mcq"),
    ("data/bio.jsonl?min_chars=50&text=abstract", "forget_corpus"),
    ("qs.parquet?max_rows=5&seed=3&question=stem&choices=options&answer=label", "forget_mcq"),
    ("odd%3Bname%25.txt?unit=paragraph", "retain_corpus"),
    ("builtin:demo", "retain_mcq"),
    ("?max_rows=7", "forget_corpus"),
])
def test_source_strings_round_trip(text, part):
    src = parse_source(text, part)
    assert format_source(src) == text
    assert parse_source(format_source(src), part) == src


def test_source_string_fields():
    s = parse_source("hf:cais/wmdp-corpora:cyber-forget-corpus:train?text=body&max_rows=10", "forget_corpus")
    assert (s.kind, s.source, s.config, s.split, s.columns, s.max_rows) == \
        ("hf", "hf:cais/wmdp-corpora", "cyber-forget-corpus", "train", {"text": "body"}, 10)
    assert parse_source("a%3Bb&c.jsonl?text=x%26y", "forget_corpus").source == "a;b&c.jsonl"
    assert parse_source("a.jsonl?text=x%26y", "forget_corpus").columns == {"text": "x&y"}


@pytest.mark.parametrize("text,part,needle", [
    ("x.jsonl?bogus=1", "forget_corpus", r"^forget_corpus: unknown option 'bogus'"),
    ("x.jsonl?max_rows=abc", "forget_corpus", r"^forget_corpus: max_rows='abc': .*integer"),
    ("x.jsonl?max_rows=0", "retain_corpus", r"^retain_corpus: max_rows='0': .*greater than or equal to 1"),
    ("x.jsonl?chunk_tokens=64", "forget_mcq", r"^forget_mcq: chunk_tokens applies to corpora only"),
    ("x.jsonl?question=q", "forget_corpus", r"^forget_corpus: a corpus reads no field 'question'"),
    ("x.jsonl?text=t", "retain_mcq", r"^retain_mcq: a multiple-choice set reads no field 'text'"),
    ("x.jsonl?max_rows=1&max_rows=2", "forget_corpus", r"given twice"),
    ("hf:", "forget_mcq", r"^forget_mcq: hf: needs a dataset name"),
    ("", "forget_mcq", r"^forget_mcq: empty source"),
])
def test_bad_source_strings_name_the_part(text, part, needle):
    with pytest.raises(UserError) as info:
        parse_source(text, part)
    assert re.search(needle, one_line(info)), str(info.value)


def test_compose_spec():
    assert compose_spec("builtin:demo", {}) == "builtin:demo"  # single specs stay as they were
    spec = compose_spec("builtin:demo", {"forget_corpus": ["a.jsonl", "b.txt?min_chars=3"], "retain_mcq": None})
    assert spec == "builtin:demo;forget_corpus=a.jsonl;forget_corpus=b.txt?min_chars=3"
    assert compose_spec(spec, {"forget_corpus": "c.jsonl"}) == "builtin:demo;forget_corpus=c.jsonl"
    d = parse_data_spec(spec)
    assert d.base == "builtin:demo" and [s.source for s in d.parts["forget_corpus"]] == ["a.jsonl", "b.txt"]
    with pytest.raises(UserError, match=r"no source for retain_corpus, forget_mcq, retain_mcq"):
        compose_spec(None, {"forget_corpus": "a.jsonl"})


# ---- four sources ---------------------------------------------------------------------------------
def test_four_sources_load_with_counts_and_provenance(four, world):
    spec = compose_spec(None, four)
    data = load_data(spec)
    demo = load_data("builtin:demo")
    assert isinstance(data.forget_texts, TextColumn)  # a file's corpus is Arrow, not a list
    assert list(data.forget_texts) == list(world.forget_texts)
    assert list(data.forget_text_half) == list(world.forget_text_half)  # the file's half column
    assert data.retain_texts == world.retain_texts  # the generated part, as generated
    assert data.forget_mcq == world.forget_mcq and data.forget_half == world.forget_half
    assert data.retain_mcq == demo.retain_mcq
    assert {p: v["sources"] for p, v in data.parts.items()} == {p: [four[p]] for p in four}
    assert {p: v["count"] for p, v in data.parts.items()} == {
        "forget_corpus": len(world.forget_texts), "retain_corpus": len(world.retain_texts),
        "forget_mcq": len(world.forget_mcq), "retain_mcq": len(demo.retain_mcq)}
    assert data.parts["forget_corpus"]["detail"][0]["kind"] == "file"
    assert "forget_corpus: " in data.provenance and "retain_mcq: builtin:demo (40 items)" in data.provenance
    assert data.name == spec and load_data(data.name).content_hash() == data.content_hash()


def test_parts_of_a_builtin_set_are_that_set():
    """A built-in set's own parts, given one by one, are the same data (same hash, same summary)."""
    whole = load_data("builtin:demo")
    parts = load_data(compose_spec(None, {p: "builtin:demo" for p in
                                          ("forget_corpus", "retain_corpus", "forget_mcq", "retain_mcq")}))
    assert parts.content_hash() == whole.content_hash()
    assert {k: v for k, v in parts.summary().items() if k != "name"} == \
        {k: v for k, v in whole.summary().items() if k != "name"}
    over = load_data("builtin:demo;retain_mcq=builtin:geo_europe_vs_world")
    assert over.forget_mcq == whole.forget_mcq
    assert over.retain_mcq == load_data("builtin:geo_europe_vs_world").retain_mcq


def test_arrow_corpus_hashes_like_the_same_texts_in_lists(four, world):
    data = load_data(compose_spec(None, four))
    as_lists = UnlearningData(name="x", forget_texts=list(data.forget_texts), retain_texts=list(data.retain_texts),
                              forget_mcq=data.forget_mcq, retain_mcq=data.retain_mcq, forget_half=data.forget_half,
                              forget_text_half=list(data.forget_text_half), retain_probe=data.retain_probe,
                              retain_probe_of=data.retain_probe_of)
    assert data.retain_probe  # builtin:demo's retain items bring their probes
    assert data.content_hash() == as_lists.content_hash()
    # the hash of before (one json.dumps of everything) is the one streamed (without a probe split)
    import hashlib
    from dataclasses import asdict, replace

    blob = json.dumps([as_lists.forget_texts, as_lists.retain_texts, [asdict(i) for i in as_lists.forget_mcq],
                       [asdict(i) for i in as_lists.retain_mcq]], sort_keys=True).encode()
    bare = replace(as_lists, retain_probe=[], retain_probe_of=[])
    assert bare.content_hash() == hashlib.sha256(blob).hexdigest()[:16] != data.content_hash()
    # and a session bundle's data rows read back to the same hash
    from unlearnviz.bundle import data_rows
    from unlearnviz.data.loaders import rows_to_data

    back = rows_to_data(list(enumerate(data_rows(data), 1)), name="b", provenance="bundle")
    assert back.content_hash() == data.content_hash()


def test_text_column_behaves_like_a_list(tmp_path):
    texts = [f"text number {i}" + " word" * (i % 7) for i in range(2500)]
    path = tmp_path / "c.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    data = load_data(compose_spec("builtin:demo", {"retain_corpus": str(path)}))
    col = data.retain_texts
    assert isinstance(col, TextColumn) and len(col) == 2500
    assert col[0] == texts[0] and col[-1] == texts[-1] and col[1234] == texts[1234]
    stripped = texts
    assert col[10:20] == stripped[10:20] and col[::500] == stripped[::500] and list(col) == stripped
    assert col == stripped and col != stripped[:-1]
    with pytest.raises(IndexError):
        col[2500]
    # the held-out fifth and the rest, as with lists
    assert list(data.ppl_texts) == stripped[4::5] and len(data.retain_train_texts) == 2000
    assert list(data.retain_train_texts) == [t for i, t in enumerate(stripped) if i % 5 != 4]
    both = col + ["extra"]
    assert len(both) == 2501 and both[-1] == "extra" and both[0] == stripped[0]
    assert (["first"] + col)[0] == "first"
    view = col.select([5, 3, 1])
    assert list(view) == [stripped[5], stripped[3], stripped[1]]
    assert pickle.loads(pickle.dumps(col)) == col and copy.deepcopy(col) is col
    assert len(pickle.dumps(col)) < 2000  # file names, not texts


def test_overlap_is_sampled_and_cached_once_per_source(tmp_path):
    lines = [f"retain line {i} about chemistry and element {i % 97}" for i in range(OVERLAP_SAMPLE + 500)]
    (tmp_path / "r.txt").write_text("\n".join(lines), encoding="utf-8")
    spec = compose_spec("builtin:demo", {"retain_corpus": str(tmp_path / "r.txt")})
    first = load_data(spec)
    summary = first.summary()
    assert summary["overlap_sample"] == OVERLAP_SAMPLE and summary["retain_texts"] == OVERLAP_SAMPLE + 500
    assert load_data("builtin:demo").summary()["overlap_sample"] is None  # small sets: every text
    parts = sorted((data_cache() / "parts").glob("*.arrow"))
    assert len(parts) == 1 and list((data_cache() / "overlap").glob("*.json"))
    stamp = parts[0].stat().st_mtime_ns
    again = load_data(spec)  # a new load: the part file and the summary are read, not rebuilt
    assert again.summary() == summary and again.content_hash() == first.content_hash()
    assert parts[0].stat().st_mtime_ns == stamp and len(list((data_cache() / "parts").glob("*.arrow"))) == 1
    # a changed file is another source
    (tmp_path / "r.txt").write_text("\n".join(lines[:-1]), encoding="utf-8")
    assert len(load_data(spec).retain_texts) == OVERLAP_SAMPLE + 499


def test_min_chars_max_rows_and_seed(tmp_path):
    rows = [{"text": f"document {i} " + "x" * (i % 60)} for i in range(300)]
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    base = "builtin:demo;forget_corpus="
    kept = [r["text"] for r in rows if len(r["text"]) > 40]
    assert list(load_data(base + f"{f}?min_chars=40").forget_texts) == kept
    a = list(load_data(base + f"{f}?min_chars=40&max_rows=50&seed=1").forget_texts)
    b = list(load_data(base + f"{f}?min_chars=40&max_rows=50&seed=1").forget_texts)
    c = list(load_data(base + f"{f}?min_chars=40&max_rows=50&seed=2").forget_texts)
    assert a == b and a != c and len(a) == 50 and set(a) <= set(kept)
    assert a == [t for t in kept if t in set(a)]  # file order kept
    items = load_data("builtin:demo;forget_mcq=?max_rows=5&seed=4").forget_mcq
    assert len(items) == 5 and set(items) <= set(load_data("builtin:demo").forget_mcq)


def test_chunking_by_words_and_by_the_models_tokenizer(tmp_path, tiny_lm):
    docs = [DOC * 12, DOC * 3, "Short one."]
    f = write_jsonl(tmp_path / "docs.jsonl", [{"body": d} for d in docs])
    spec = f"builtin:demo;forget_corpus={f}?text=body&chunk_tokens=32"
    by_words = load_data(spec)
    per = int(32 * 0.75)
    assert all(len(t.split()) <= per for t in by_words.forget_texts)
    assert " ".join(by_words.forget_texts).split() == " ".join(docs).split()
    assert "by words" in by_words.parts["forget_corpus"]["detail"][0]["chunked"]
    # chunks of one document share its half (documents alternate A, B, A), so relearning on half A
    # never trains on a piece of a half-B document
    assert len(DOC.split()) == 34 and list(by_words.forget_text_half) == ["A"] * 17 + ["B"] * 5 + ["A"]
    tok = tiny_lm.tokenizer
    by_tokens = load_data(spec, tokenizer=tok)
    lengths = [len(tok(t).input_ids) for t in by_tokens.forget_texts]
    assert max(lengths) <= 32 and len(lengths) >= sum(len(tok(d).input_ids) for d in docs) / 32
    assert "".join("".join(by_tokens.forget_texts).split()) == "".join("".join(docs).split())
    assert "by tokenizer" in by_tokens.parts["forget_corpus"]["detail"][0]["chunked"]
    assert by_tokens.content_hash() != by_words.content_hash()  # the tokenizer is part of the source
    assert chunk_texts(["one two three four five"], 4) == [["one two three", "four five"]]


def test_single_file_parts_and_the_split_column(tmp_path):
    rows = [{"split": "forget", "text": "Forget text one, long enough."},
            {"split": "retain", "text": "Retain text one, long enough."},
            {"split": "forget", "question": "The capital of France is", "choices": ["Paris", "Rome"], "answer": 0},
            {"split": "retain", "question": "Water is", "choices": ["wet", "dry"], "answer": 0}]
    f = write_jsonl(tmp_path / "mixed.jsonl", rows)
    data = load_data(compose_spec(None, {p: str(f) for p in ("forget_corpus", "retain_corpus", "forget_mcq",
                                                             "retain_mcq")}))
    assert list(data.forget_texts) == ["Forget text one, long enough."]
    assert list(data.retain_texts) == ["Retain text one, long enough."]
    assert [i.gold for i in data.forget_mcq] == ["Paris"] and [i.gold for i in data.retain_mcq] == ["wet"]


def test_answers_as_letters_and_mapped_columns(tmp_path):
    q = tmp_path / "q.csv"
    q.write_text("stem,options,label,subject\nThe sky is,blue|green,0,sky\nGrass is,red|green,B,grass\n")
    data = load_data(f"builtin:demo;forget_mcq={q}?question=stem&choices=options&answer=label&subject=")
    assert [(i.question, i.gold, i.subject) for i in data.forget_mcq] == [("The sky is", "blue", ""),
                                                                           ("Grass is", "green", "")]


def test_a_large_single_file_is_read_as_arrow(tmp_path):
    """Over 20 MB a single file is no longer refused for the operator: it is read as its four parts."""
    from unlearnviz.data.loaders import MAX_FILE_BYTES

    big = tmp_path / "big.jsonl"
    body = "x" * 2000
    with big.open("w") as fh:
        for i in range(MAX_FILE_BYTES // 2000 + 50):
            fh.write(json.dumps({"split": "forget" if i % 2 else "retain", "text": f"{i} {body}"}) + "\n")
        fh.write(json.dumps({"split": "forget", "question": "Q is", "choices": ["a", "b"], "answer": 0}) + "\n")
        fh.write(json.dumps({"split": "retain", "question": "R is", "choices": ["a", "b"], "answer": 1}) + "\n")
    assert big.stat().st_size > MAX_FILE_BYTES
    data = load_data(str(big))
    assert isinstance(data.forget_texts, TextColumn) and len(data.forget_texts) + len(data.retain_texts) > 10_000
    assert data.name == "big.jsonl" and len(data.forget_mcq) == 1
    with pytest.raises(UserError) as info:  # a visitor's cap still holds
        load_data(str(big), max_bytes=MAX_FILE_BYTES)
    assert "limit" in one_line(info)


def test_max_bytes_caps_every_part_file(four):
    with pytest.raises(UserError) as info:
        load_data(compose_spec(None, four), max_bytes=1000)
    msg = one_line(info)
    assert msg.startswith("forget_corpus: forget.jsonl is ") and "over this server's limit of 1000 bytes" in msg


# ---- malformed sources: one line naming the part and the fix --------------------------------------
def _bad(tmp_path: Path, name: str) -> str:
    p = tmp_path / name
    if name == "nocol.jsonl":
        write_jsonl(p, [{"body": "some text here", "id": 1}])
    elif name == "empty_part.jsonl":
        write_jsonl(p, [{"text": "tiny"}, {"text": "also tiny"}])
    elif name == "broken.jsonl":
        p.write_text('{"text": "ok"}\n{oops\n')
    elif name == "latin1.txt":
        p.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    elif name == "garbage.parquet":
        p.write_bytes(b"not a parquet file at all")
    elif name == "numbers.jsonl":
        write_jsonl(p, [{"text": 3}, {"text": 4}])
    elif name == "badmcq.jsonl":
        write_jsonl(p, [{"question": "Q1", "choices": ["a", "b"], "answer": 0},
                        {"question": "Q2", "choices": ["a", "b"], "answer": 7}])
    elif name == "empty.jsonl":
        p.write_text("")
    elif name == "notes.txt":
        p.write_text("a line of text\n")
    return str(p)


MALFORMED = {
    "missing_column": ("forget_corpus", "nocol.jsonl", r"^forget_corpus: nocol\.jsonl has no column 'text' "
                                                       r"\(columns: body, id\); map one with \?text=COLUMN$"),
    "wrong_mapping": ("forget_corpus", "nocol.jsonl?text=abstract",
                      r"^forget_corpus: \?text=abstract: nocol\.jsonl has no column 'abstract' .*fix the column map"),
    "wrong_mcq_mapping": ("forget_mcq", "badmcq.jsonl?question=stem",
                          r"^forget_mcq: \?question=stem: badmcq\.jsonl has no column 'stem'"),
    "not_text": ("retain_corpus", "numbers.jsonl", r"^retain_corpus: column 'text' of numbers\.jsonl holds int64 "
                                                   r"values, not text; map the text column"),
    "empty_part": ("forget_corpus", "empty_part.jsonl?min_chars=20",
                   r"^forget_corpus: empty_part\.jsonl gives no texts: 2 rows, none longer than min_chars=20 .*"
                   r"lower min_chars"),
    "empty_file": ("retain_corpus", "empty.jsonl", r"^retain_corpus: empty\.jsonl: the file is empty"),
    "unreadable_json": ("forget_corpus", "broken.jsonl", r"^forget_corpus: broken\.jsonl: cannot read \(.*\); fix the "
                                                         r"file \(one JSON object per line\)"),
    "not_utf8": ("retain_corpus", "latin1.txt", r"^retain_corpus: latin1\.txt: not UTF-8 text; save it as UTF-8"),
    "garbage_parquet": ("forget_corpus", "garbage.parquet", r"^forget_corpus: garbage\.parquet: cannot read"),
    "missing_file": ("retain_corpus", "nowhere.jsonl", r"^retain_corpus: no such file or folder: .*nowhere\.jsonl; "
                                                       r"give a JSONL"),
    "bad_row": ("forget_mcq", "badmcq.jsonl", r"^forget_mcq: badmcq\.jsonl: row 2: 'answer' 7 is out of range 0\.\.1"),
    "txt_as_questions": ("retain_mcq", "notes.txt", r"^retain_mcq: notes\.txt: a \.txt file holds texts, not "
                                                    r"questions"),
    "empty_builtin_part": ("forget_corpus", "builtin:demo?min_chars=100000",
                           r"^forget_corpus: builtin:demo gives no texts longer than min_chars=100000"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_sources_give_one_line(case, tmp_path):
    part, source, needle = MALFORMED[case]
    if not source.startswith("builtin:"):
        name, _, query = source.partition("?")
        source = _bad(tmp_path, name) + (f"?{query}" if query else "")
    with pytest.raises(UserError) as info:
        load_data(compose_spec("builtin:demo", {part: source}))
    assert re.search(needle, one_line(info)), str(info.value)


def test_check_data_fails_before_reading(tmp_path):
    with pytest.raises(UserError, match=r"^retain_mcq: no such file or folder"):
        check_data(compose_spec("builtin:demo", {"retain_mcq": str(tmp_path / "none.csv")}))
    with pytest.raises(UserError, match=r"^forget_corpus: x\.docx: unsupported file type"):
        (tmp_path / "x.docx").write_text("x")
        check_data(compose_spec("builtin:demo", {"forget_corpus": str(tmp_path / "x.docx")}))
    with pytest.raises(UserError, match=r"unknown built-in set 'nope'"):
        check_data("builtin:demo;retain_mcq=builtin:nope")
    assert check_data("builtin:demo") is None


# ---- presets ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_offline_fail_at_once_in_one_line(name):
    with pytest.raises(UserError) as info:
        load_data(f"preset:{name}")
    msg = one_line(info)
    assert msg.startswith(f"preset {name} reads ") and "HF_HUB_OFFLINE=1" in msg
    for ds in ("Salesforce/wikitext", "cais/wmdp", "cais/mmlu"):
        assert ds in msg
    assert ("cais/wmdp-bio-forget-corpus (gated" in msg) == (name != "wmdp-cyber")
    assert ("cais/wmdp-corpora" in msg) == (name != "wmdp-bio")
    assert f"python -m unlearnviz data fetch {name} --out DIR" in msg and f"--data preset:{name}@DIR" in msg
    assert "--forget-corpus PATH" in msg and "--retain-mcq PATH" in msg
    with pytest.raises(UserError) as again:  # check_data (the CLI's early check) says the same
        check_data(f"preset:{name}")
    assert str(again.value) == msg


def test_preset_with_some_parts_local_names_only_the_rest(tmp_path):
    f = write_jsonl(tmp_path / "bio.jsonl", [{"text": DOC}])
    with pytest.raises(UserError) as info:
        load_data(compose_spec("preset:wmdp-bio", {"forget_corpus": str(f)}))
    msg = one_line(info)
    assert "cais/wmdp-bio-forget-corpus" not in msg and "Salesforce/wikitext" in msg
    assert "--forget-corpus" not in msg and "--retain-corpus PATH" in msg


def test_preset_from_local_copies_keeps_its_options(tmp_path, world):
    """``preset:NAME@DIR`` reads the four parts from local copies (as `data fetch` names them) with
    the preset's options: chunk_tokens=512 and min_chars=50 for the corpus, MMLU's subject unread."""
    folder = tmp_path / "wmdp"
    folder.mkdir()
    write_jsonl(folder / "forget_corpus.jsonl", [{"text": DOC * 40, "title": "a paper"}, {"text": "too short"},
                                                 {"text": DOC}])
    (folder / "retain_corpus.txt").write_text("\n".join(["= Heading =", DOC.strip(), DOC[:60] + " and more words"]))
    mcq = [{"question": f"Which agent {i}?", "choices": ["a", "b", "c", "d"], "answer": i % 4} for i in range(6)]
    write_jsonl(folder / "forget_mcq.jsonl", mcq)
    write_jsonl(folder / "retain_mcq.jsonl", [{**m, "subject": "virology"} for m in mcq])
    data = load_data(f"preset:wmdp-bio@{folder}")
    assert data.name == f"preset:wmdp-bio@{folder}"
    fc = data.parts["forget_corpus"]["detail"][0]
    assert fc["documents"] == 2 and fc["chunked"].startswith("512 tokens by words")
    assert len(data.forget_texts) == 4 + 1 and all(len(t.split()) <= 384 for t in data.forget_texts)
    assert list(data.retain_texts) == [DOC.strip(), DOC[:60] + " and more words"]  # > 50 characters only
    assert len(data.forget_mcq) == 6 and all(it.subject == "" for it in data.retain_mcq)
    # a bare path for one part of a preset keeps that part's options too
    f = write_jsonl(tmp_path / "bio.jsonl", [{"text": DOC * 40}])
    over = load_data(compose_spec(f"preset:wmdp-bio@{folder}", {"forget_corpus": str(f)}))
    assert "512 tokens" in over.parts["forget_corpus"]["detail"][0]["chunked"] and len(over.forget_texts) == 4
    # options alone change the preset's own: pieces of 256 tokens (192 words), the rest kept
    finer = load_data(compose_spec(f"preset:wmdp-bio@{folder}", {"forget_corpus": "?chunk_tokens=256",
                                                                  "retain_mcq": "?max_rows=2"}))
    assert finer.parts["forget_corpus"]["detail"][0]["chunked"].startswith("256 tokens")
    assert len(finer.forget_texts) == 8 + 1 and len(finer.retain_mcq) == 2 and len(finer.retain_texts) == 2
    with pytest.raises(UserError, match=r"^forget_corpus: preset wmdp@.*no local copy .*forget_corpus_1"):
        load_data(f"preset:wmdp@{folder}")


def test_data_fetch_and_preset_commands_offline(capsys):
    assert main(["data", "fetch", "wmdp-bio", "--out", "nowhere"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data fetch downloads from the Hugging Face hub" in err[0]
    assert main(["eval", "--model", "synthetic", "--data", "preset:wmdp"]) == 2  # before any model loads
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: preset wmdp reads ")


# ---- configs, the CLI, the session -----------------------------------------------------------------
def test_config_data_section_takes_four_sources(four):
    cfg = load_config({"data": {"forget_corpus": four["forget_corpus"], "retain_corpus": {"source": "synthetic:0.1"},
                                "forget_mcq": [four["forget_mcq"]], "retain_mcq": four["retain_mcq"]}})
    assert cfg.data.spec == compose_spec(None, four)
    assert cfg.to_dict()["data"] == {"spec": cfg.data.spec} and load_config(cfg.to_dict()) == cfg
    over = load_config({"data": {"spec": "builtin:demo", "forget_mcq": {"source": "builtin:demo", "max_rows": 4}}})
    assert over.data.spec == "builtin:demo;forget_mcq=builtin:demo?max_rows=4"
    for bad, needle in [({"forget_corpus": 3}, r"^data\.forget_corpus: expected a source string"),
                        ({"retain_mcq": {"source": "x", "max_rows": 0}}, r"^data\.retain_mcq: max_rows=0"),
                        ({"forget_mcq": {"sauce": "x"}}, r"^data\.forget_mcq: sauce='x': Extra inputs"),
                        ({"forget_corpus": "x.jsonl"}, r"^data: no source for retain_corpus")]:
        with pytest.raises(UserError, match=needle):
            load_config({"data": bad})


def test_cli_part_flags_override_parts_of_data(four, capsys, tmp_path):
    out = tmp_path / "show.json"
    assert main(["data", "show", "--data", "builtin:demo", "--forget-mcq", four["forget_mcq"], "--json", str(out)]) == 0
    shown = json.loads(out.read_text())
    assert shown["parts"]["forget_mcq"]["sources"] == [four["forget_mcq"]]
    assert shown["parts"]["retain_mcq"]["sources"] == ["builtin:demo"] and shown["retain_mcq"] == 40
    capsys.readouterr()
    assert main(["data", "show", "--forget-corpus", four["forget_corpus"]]) == 2
    assert "no source for retain_corpus, forget_mcq, retain_mcq" in capsys.readouterr().err


def test_session_loads_composed_data_and_confines_paths(four, tmp_path):
    s = Session()
    summary = s.load_parts(**four)
    assert summary["parts"]["retain_mcq"] == {"sources": ["builtin:demo"], "count": 40}
    assert s.history[-1]["data"] == compose_spec(None, four)
    allowed = tmp_path

    def confine(path: str) -> str:
        if not Path(path).resolve().is_relative_to(allowed):
            raise UserError(f"data path {path!r} is outside the folders this server allows")
        return str(Path(path).resolve())

    assert compose_data_spec(None, four, confine=confine) == compose_spec(None, four)
    with pytest.raises(UserError, match="outside the folders"):
        s.load_parts(**{**four, "retain_corpus": "/etc/hosts"}, confine=confine)
    with pytest.raises(UserError, match="outside the folders"):
        compose_data_spec("preset:wmdp-bio@/etc", {}, confine=confine)
    assert data_parts("builtin:demo;forget_mcq=x.csv")["forget_mcq"] == ["x.csv"]
    assert data_parts("preset:wmdp-cyber")["forget_corpus"] == [
        "hf:cais/wmdp-corpora:cyber-forget-corpus:train?min_chars=50&chunk_tokens=768"]


def test_run_on_four_sources_end_to_end(four, tiny_model_path, tmp_path):
    """`run --config` with a config of four sources: fits, evaluates and writes a run folder whose
    config names the same data (same content hash as the edit was fitted on)."""
    cfg = tmp_path / "four.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"source": str(tiny_model_path), "device": "cpu"},
                                   "data": {**four, "forget_corpus": {"source": four["forget_corpus"],
                                                                      "chunk_tokens": 16}},
                                   "edits": [{"method": "rmu", "hparams": {"steps": 3}}],
                                   "evaluation": {"letter": False}}))
    out = tmp_path / "run"
    assert main(["run", "--config", str(cfg), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    written = load_config(out / "config.yaml")
    assert written.data.spec.startswith("forget_corpus=") and "chunk_tokens=16" in written.data.spec
    from unlearnviz.model import LoadOptions, load_model

    lm = load_model(str(tiny_model_path), LoadOptions(device="cpu"))
    data = load_data(written.data.spec, tokenizer=lm.tokenizer)
    assert manifest["meta"]["data_hash"] == data.content_hash()
    assert all(len(lm.tokenizer(t).input_ids) <= 16 for t in data.forget_texts)  # chunked by the model's tokenizer
    assert metrics["before"]["forget_cloze_acc"] > 0.9  # the tiny model knows the world's forget facts
    assert os.path.isdir(out) and metrics["data"] == data.name


@pytest.mark.slow
def test_analyze_and_report_on_four_sources(four, tiny_model_path, tmp_path):
    run = tmp_path / "run"
    argv = ["--model", str(tiny_model_path), "--device", "cpu", "--data", "builtin:demo",
            *[x for p, v in four.items() for x in (f"--{p.replace('_', '-')}", v)]]
    assert main(["run", *argv, "--method", "rmu", "--set", "steps=3", "--no-letter", "--out", str(run)]) == 0
    assert main(["analyze", *argv, "--edit", str(run), "--out", str(tmp_path / "an"), "--no-umap", "--lens-only",
                 "--max-texts", "20", "--max-items", "8"]) == 0
    assert json.loads((tmp_path / "an" / "analysis.json").read_text())["edit"]
    assert main(["report", "--run", str(run), "--out", str(tmp_path / "r.html"), "--device", "cpu",
                 "--relearn-steps", "0", "--chat-prompts", "1", "--max-texts", "20", "--max-items", "8"]) == 0
    assert (tmp_path / "r.html").stat().st_size > 10_000
