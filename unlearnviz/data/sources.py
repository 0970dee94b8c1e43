"""Where each part of an unlearning data set comes from: sources, their string form, and presets.

An unlearning data set has four parts, as in WMDP (Li et al. 2024, arXiv 2403.03218): a forget
corpus (what RMU pushes away from), a retain corpus (what it anchors), a forget multiple-choice set
(what forgetting is measured on) and a retain one. The paper takes them from four datasets (PubMed
papers or GitHub passages, WikiText, WMDP, MMLU), so each part has a source of its own.

**One source**, as a string (the CLI's flags, a config's ``data`` section)::

    BASE[?KEY=VALUE&KEY=VALUE...]

``BASE`` is ``builtin:NAME`` or ``synthetic[:E]`` (that part of the built-in set), ``preset:NAME``
(that part of a preset), ``hf:DATASET[:CONFIG[:SPLIT]]`` (a Hugging Face dataset, streamed), or a
path: a ``.jsonl``/``.json``/``.csv``/``.parquet`` file, a ``.txt`` file (one text per line, or per
blank-line separated paragraph with ``unit=paragraph``) or a folder written by datasets'
``save_to_disk``. A file with a ``split`` column (the single-file format) gives the rows of its
forget or retain split. Keys:

- ``max_rows=N``, ``seed=S``: a seeded random sample of N rows (documents), kept in file order;
- ``min_chars=N`` (corpora): drop texts of N characters or fewer (the RMU loader's ``min_len``),
  documents and chunks alike;
- ``chunk_tokens=N`` (corpora): cut every document into consecutive pieces of at most N tokens
  (WMDP trains on 512-token pieces of PubMed papers, 768 of cyber passages); with the model's
  tokenizer when one is given, else ``3N/4`` whitespace words per piece (about N tokens of
  English BPE text: an approximation, said so in the provenance);
- ``unit=line|paragraph`` (``.txt`` files), ``config=``, ``split=``, ``revision=`` (hf);
- a column map ``FIELD=COLUMN``: corpora read ``text`` (and ``half``), multiple-choice sets read
  ``question``, ``choices``, ``answer`` (an index or a letter), ``blind_question``, ``subject``,
  ``relation``, ``half``; each from the column of its own name unless mapped, ``FIELD=`` (empty)
  reads none.

Values are percent-decoded (``%26`` is ``&``, ``%3B`` is ``;``). A source that is only options
(``?max_rows=500``) means the base data set's own part with those options.

**A data set** is one single spec (``builtin:NAME``, ``synthetic[:E]``, ``hf:DATASET[:CONFIG]``, a
single file, ``preset:NAME[@DIR]``) or a composition of parts over an optional base::

    [BASE;]PART=SOURCE[;PART=SOURCE...]      PART: forget_corpus, retain_corpus, forget_mcq, retain_mcq

where a part given overrides that part of the base, and a part given twice is the two sources
one after the other. ``preset:NAME@DIR`` reads the preset's parts from local copies in ``DIR``
(``DIR/forget_corpus`` ... as written by ``python -m unlearnviz data fetch``), keeping its options.
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import quote, unquote

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from unlearnviz.errors import UserError

PARTS = ("forget_corpus", "retain_corpus", "forget_mcq", "retain_mcq")
CORPUS_FIELDS = ("text", "half")
MCQ_FIELDS = ("question", "choices", "answer", "blind_question", "subject", "relation", "half")
OPTION_KEYS = ("config", "split", "revision", "max_rows", "seed", "min_chars", "chunk_tokens", "unit")
CORPUS_ONLY = ("min_chars", "chunk_tokens", "unit")
_PART_ASSIGN = re.compile(r"^(forget_corpus|retain_corpus|forget_mcq|retain_mcq)=")


def is_corpus(part: str) -> bool:
    return part.endswith("_corpus")


def part_split(part: str) -> str:
    """``forget`` or ``retain``: the value of a single-file ``split`` column this part reads."""
    return part.split("_", 1)[0]


def source_kind(s: str) -> str:
    """What a source (or single spec) string names: builtin, synthetic, preset, hf, path, or
    inherit (empty: the base data set's own part)."""
    if not s:
        return "inherit"
    if s.startswith("builtin:"):
        return "builtin"
    if s == "synthetic" or s.startswith("synthetic:"):
        return "synthetic"
    if s.startswith("preset:"):
        return "preset"
    if s.startswith("hf:"):
        return "hf"
    return "path"


class Source(BaseModel):
    """One part's source: where it is and how its rows become texts or questions."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field("", description="builtin:NAME, synthetic[:E], preset:NAME, hf:DATASET or a path; "
                                        "empty: the base data set's own part")
    config: str | None = Field(None, description="hf: the dataset's config (subset)")
    split: str | None = Field(None, description="hf or a save_to_disk DatasetDict: the split")
    revision: str | None = Field(None, description="hf: a commit, tag or branch")
    columns: dict[str, str] = Field(default_factory=dict, description="FIELD: COLUMN ('' = none)")
    max_rows: int | None = Field(None, ge=1, description="a seeded random sample of this many rows")
    seed: int = Field(0, ge=0, description="seed of the max_rows sample")
    min_chars: int = Field(0, ge=0, description="corpora: drop texts of this many characters or fewer")
    chunk_tokens: int | None = Field(None, ge=8, le=1_000_000, description="corpora: pieces of at most this many tokens")
    unit: Literal["line", "paragraph"] = Field("line", description=".txt files: one text per line or paragraph")

    @field_validator("columns")
    @classmethod
    def _known_fields(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if key not in set(CORPUS_FIELDS) | set(MCQ_FIELDS):
                raise ValueError(f"unknown field {key!r} in the column map; fields: "
                                 f"{', '.join(dict.fromkeys(CORPUS_FIELDS + MCQ_FIELDS))}")
        return value

    @model_validator(mode="after")
    def _split_hf_name(self) -> Source:
        """``hf:DATASET:CONFIG:SPLIT`` in ``source`` is the same as the separate keys."""
        if self.source.startswith("hf:"):
            name, *rest = self.source[3:].split(":")
            if not name:
                raise ValueError("hf: needs a dataset name (hf:DATASET[:CONFIG[:SPLIT]])")
            if len(rest) > 2:
                raise ValueError(f"{self.source!r}: use hf:DATASET[:CONFIG[:SPLIT]]")
            for key, value in zip(("config", "split"), rest):
                if value and getattr(self, key) not in (None, value):
                    raise ValueError(f"{self.source!r} and {key}={getattr(self, key)!r} disagree")
                if value:
                    setattr(self, key, value)
            self.source = f"hf:{name}"
        return self

    @property
    def kind(self) -> str:
        """builtin, synthetic, preset, hf, path or inherit (options on the base's own part)."""
        return source_kind(self.source)

    @property
    def options_set(self) -> set[str]:
        return set(self.model_fields_set) - {"source"}

    def with_options_of(self, other: Source) -> Source:
        """This source with ``other``'s processing options (columns, sampling, filters, chunking,
        split) where it sets none of its own."""
        keep = {k: getattr(other, k) for k in ("columns", "max_rows", "seed", "min_chars", "chunk_tokens", "unit",
                                               "split") if k in other.model_fields_set}
        return self.model_copy(update={**keep, **{k: getattr(self, k) for k in self.options_set}})

    def overridden_by(self, other: Source) -> Source:
        """This source with every option ``other`` sets in place of its own."""
        return self.model_copy(update={k: getattr(other, k) for k in other.options_set})


class DataSpec(BaseModel):
    """A data set: a base single spec and the parts given over it."""

    model_config = ConfigDict(extra="forbid")

    base: str | None = None
    parts: dict[str, list[Source]] = Field(default_factory=dict)


# ---- the string form ----------------------------------------------------------------------------
def _quote(value: str) -> str:
    return quote(value, safe="/:,.-_~@+")


def _quote_base(base: str) -> str:
    return base.replace("%", "%25").replace("?", "%3F").replace(";", "%3B")


def _unquote_base(base: str) -> str:
    return base.replace("%3F", "?").replace("%3f", "?").replace("%3B", ";").replace("%3b", ";").replace("%25", "%")


def _validation_line(exc: ValidationError) -> str:
    e = exc.errors()[0]
    where = ".".join(str(p) for p in e["loc"])
    msg = e["msg"].removeprefix("Value error, ")
    if where and not isinstance(e.get("input"), dict):
        where += f"={e['input']!r}"
    return f"{where}: {msg}" if where else msg


def parse_source(text: str, part: str) -> Source:
    """One source from its string form (module docstring); errors name the part."""
    raw = (text or "").strip()
    if not raw:
        raise UserError(f"{part}: empty source; give builtin:NAME, a file, a folder or hf:DATASET")
    base, _, query = raw.partition("?")
    values: dict = {"source": _unquote_base(base.strip())}
    columns: dict[str, str] = {}
    for pair in filter(None, query.split("&")):
        key, eq, value = pair.partition("=")
        key, value = unquote(key).strip(), unquote(value).strip()
        if not eq:
            raise UserError(f"{part}: {pair!r} in {raw!r} is not KEY=VALUE")
        if key in values or key in columns:
            raise UserError(f"{part}: {key} is given twice in {raw!r}")
        if key in OPTION_KEYS:
            values[key] = value
        elif key in CORPUS_FIELDS + MCQ_FIELDS:
            columns[key] = value
        else:
            raise UserError(f"{part}: unknown option {key!r} in {raw!r}; options: {', '.join(OPTION_KEYS)}, "
                            f"or a column map FIELD=COLUMN with FIELD one of "
                            f"{', '.join(CORPUS_FIELDS if is_corpus(part) else MCQ_FIELDS)}")
    if columns:
        values["columns"] = columns
    return check_source(values, part)


def check_source(value, part: str) -> Source:
    """A Source from a string, a mapping (a config's form) or a Source, checked for its part."""
    if isinstance(value, str):
        return parse_source(value, part)
    try:
        src = value if isinstance(value, Source) else Source.model_validate(value)
    except ValidationError as exc:
        raise UserError(f"{part}: {_validation_line(exc)}") from None
    corpus = is_corpus(part)
    wrong = [k for k in CORPUS_ONLY if k in src.model_fields_set] if not corpus else []
    if wrong:
        raise UserError(f"{part}: {wrong[0]} applies to corpora only (forget_corpus, retain_corpus)")
    allowed = CORPUS_FIELDS if corpus else MCQ_FIELDS
    bad = [k for k in src.columns if k not in allowed]
    if bad:
        raise UserError(f"{part}: a {'corpus' if corpus else 'multiple-choice set'} reads no field {bad[0]!r}; "
                        f"its fields: {', '.join(allowed)}")
    if src.kind != "hf" and src.kind != "path" and ({"config", "revision"} & src.model_fields_set):
        raise UserError(f"{part}: config and revision apply to hf: sources only")
    return src


def format_source(src: Source) -> str:
    """The canonical string form of a source (``parse_source`` reads it back equal)."""
    base = src.source
    opts: list[tuple[str, str]] = []
    if src.kind == "hf":
        base += f":{src.config or ''}:{src.split}" if src.split else (f":{src.config}" if src.config else "")
    else:
        opts += [(k, getattr(src, k)) for k in ("config", "split") if getattr(src, k) is not None]
    if src.revision is not None:
        opts.append(("revision", src.revision))
    for key in ("max_rows", "seed", "min_chars", "chunk_tokens", "unit"):
        if getattr(src, key) != Source.model_fields[key].default:
            opts.append((key, str(getattr(src, key))))
    order = {f: i for i, f in enumerate(dict.fromkeys(CORPUS_FIELDS + MCQ_FIELDS))}
    opts += sorted(src.columns.items(), key=lambda kv: order[kv[0]])
    query = "&".join(f"{_quote(k)}={_quote(str(v))}" for k, v in opts)
    return _quote_base(base) + (f"?{query}" if query else "")


def is_composed(spec: str) -> bool:
    """Whether a data spec names parts (``...;forget_corpus=...``) or a preset."""
    text = (spec or "").strip()
    return text.startswith("preset:") or any(_PART_ASSIGN.match(s.strip()) for s in text.split(";"))


def parse_data_spec(spec: str) -> DataSpec:
    """A data spec (single or composed) as its base and parts."""
    text = (spec or "").strip()
    segments = [s.strip() for s in text.split(";")]
    out = DataSpec()
    for i, seg in enumerate(segments):
        if not seg:
            continue
        m = _PART_ASSIGN.match(seg)
        if m:
            part = m[1]
            out.parts.setdefault(part, []).append(parse_source(seg[m.end():], part))
        elif i == 0:
            out.base = _unquote_base(seg)
        else:
            raise UserError(f"data {text!r}: {seg!r} is not PART=SOURCE; parts: {', '.join(PARTS)}")
    return out


def format_data_spec(d: DataSpec) -> str:
    """The canonical string of a data set: the base, then each part in PARTS order."""
    if not d.parts:
        return d.base or ""
    segs = [_quote_base(d.base)] if d.base else []
    segs += [f"{part}={format_source(s)}" for part in PARTS for s in d.parts.get(part, [])]
    return ";".join(segs)


def compose_spec(base: str | None, parts: dict | None = None) -> str:
    """One data spec string from a base spec (single or composed; may be None) and parts, each a
    source string, a mapping, a Source or a list of them; a part given replaces the base's.
    Without parts a single base is returned unchanged (the spec strings of before stay as they were)."""
    given = {p: v for p, v in (parts or {}).items() if v not in (None, "", [])}
    for p in given:
        if p not in PARTS:
            raise UserError(f"unknown data part {p!r}; parts: {', '.join(PARTS)}")
    base = (base or "").strip() or None
    if not given:
        if base is None:
            raise UserError(f"no data: give a data set or all four parts ({', '.join(PARTS)})")
        return base
    d = parse_data_spec(base) if base and is_composed(base) else DataSpec(base=base)
    for part, value in given.items():
        values = value if isinstance(value, list) else [value]
        d.parts[part] = [check_source(v, part) for v in values]
    missing = [p for p in PARTS if p not in d.parts] if d.base is None else []
    if missing:
        raise UserError(f"data: no source for {', '.join(missing)}: give each its own ("
                        + " ".join(f"--{p.replace('_', '-')} SOURCE" for p in missing)
                        + "), or a data set to take them from (--data, or spec in a config)")
    return format_data_spec(d)


# ---- presets ----------------------------------------------------------------------------------
def _hf(name: str, config: str | None, split: str, **opts) -> Source:
    return Source(source=f"hf:{name}", config=config, split=split, **opts)


# WikiText-2 (raw) test lines longer than 50 characters: the RMU reference loader's retain set
# (``load_dataset("wikitext", "wikitext-2-raw-v1", split="test")``, ``len(text) > min_len=50``);
# the hub now keeps it as Salesforce/wikitext.
WIKITEXT = _hf("Salesforce/wikitext", "wikitext-2-raw-v1", "test", min_chars=50)
# MMLU, all 57 subjects, test split (14,042 questions). Its ``subject`` column is the MMLU subject
# name, not an entity span, so it is not read.
MMLU = _hf("cais/mmlu", "all", "test", columns={"subject": ""})
# The WMDP forget corpora (Li et al. 2024 §5): PubMed papers (gated: request access on the hub)
# and GitHub passages, at the paper's sequence lengths (512 bio, 768 cyber); texts of 50
# characters or fewer dropped as the RMU loader does.
BIO_FORGET = _hf("cais/wmdp-bio-forget-corpus", None, "train", min_chars=50, chunk_tokens=512)
CYBER_FORGET = _hf("cais/wmdp-corpora", "cyber-forget-corpus", "train", min_chars=50, chunk_tokens=768)
WMDP_BIO = _hf("cais/wmdp", "wmdp-bio", "test")  # 1,273 questions
WMDP_CYBER = _hf("cais/wmdp", "wmdp-cyber", "test")  # 1,987 questions

PRESETS: dict[str, dict[str, list[Source]]] = {
    "wmdp-bio": {"forget_corpus": [BIO_FORGET], "retain_corpus": [WIKITEXT], "forget_mcq": [WMDP_BIO],
                 "retain_mcq": [MMLU]},
    "wmdp-cyber": {"forget_corpus": [CYBER_FORGET], "retain_corpus": [WIKITEXT], "forget_mcq": [WMDP_CYBER],
                   "retain_mcq": [MMLU]},
    "wmdp": {"forget_corpus": [BIO_FORGET, CYBER_FORGET], "retain_corpus": [WIKITEXT],
             "forget_mcq": [WMDP_BIO, WMDP_CYBER], "retain_mcq": [MMLU]},
}
PRESET_NOTES = {
    "wmdp-bio": "WMDP-Bio (Li et al. 2024): PubMed forget corpus (512-token pieces), WikiText retain, "
                "WMDP-Bio and MMLU questions",
    "wmdp-cyber": "WMDP-Cyber (Li et al. 2024): GitHub-passage forget corpus (768-token pieces), WikiText retain, "
                  "WMDP-Cyber and MMLU questions",
    "wmdp": "WMDP bio and cyber together, as the released RMU run (both forget corpora and both question sets)",
}
GATED = {"cais/wmdp-bio-forget-corpus"}


def preset_names() -> list[str]:
    return list(PRESETS)


def local_name(part: str, index: int, count: int) -> str:
    """The name of a part's local copy in a preset folder (``data fetch`` writes these)."""
    return part if count == 1 else f"{part}_{index + 1}"


def parse_preset(base: str) -> tuple[str, str | None]:
    """``preset:NAME[@DIR]`` as (NAME, DIR or None)."""
    name, _, folder = base[len("preset:"):].partition("@")
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return name, (folder or None)


def preset_sources(base: str) -> dict[str, list[Source]]:
    """The four parts of ``preset:NAME[@DIR]``; with DIR, local copies that keep the options."""
    from pathlib import Path

    name, folder = parse_preset(base)
    parts = PRESETS[name]
    if folder is None:
        return {p: list(v) for p, v in parts.items()}
    out = {}
    for part, sources in parts.items():
        local = []
        for i, src in enumerate(sources):
            stem = Path(folder).expanduser() / local_name(part, i, len(sources))
            found = next((c for c in (stem, *(stem.with_suffix(s) for s in (".jsonl", ".parquet", ".csv", ".txt")))
                          if c.exists()), None)
            if found is None:
                raise UserError(f"{part}: preset {name}@{folder}: no local copy {stem} (a save_to_disk folder or "
                                f"{stem.name}.jsonl); write it with `python -m unlearnviz data fetch {name} "
                                f"--out {folder}` where there is a network")
            local.append(src.model_copy(update={"source": str(found), "config": None, "revision": None,
                                                "split": None}))
        out[part] = local
    return out
