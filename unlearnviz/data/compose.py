"""Unlearning data composed of four parts, each from its own source, and ``load_data``, the one
door to every data spec (the string forms are in ``unlearnviz.data.sources``).

A part's source is read once: built-in and synthetic sets are small lists; files, save_to_disk
folders and hf datasets become a ``TextColumn`` (corpora, memory-mapped Arrow, see
``unlearnviz.data.corpus``) or a list of items (multiple-choice sets, thousands of rows at most).
Every problem names the part and what to do about it, in one line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from unlearnviz.data import corpus
from unlearnviz.data.corpus import TextColumn, digest
from unlearnviz.data.loaders import MAX_FILE_BYTES, load_builtin, load_single, mcq_from_row
from unlearnviz.data.schema import MCQItem, UnlearningData
from unlearnviz.data.sources import (
    GATED,
    MCQ_FIELDS,
    PARTS,
    DataSpec,
    Source,
    format_data_spec,
    format_source,
    is_composed,
    is_corpus,
    local_name,
    parse_data_spec,
    parse_preset,
    part_split,
    preset_sources,
    source_kind,
)
from unlearnviz.errors import UserError
from unlearnviz.io import atomic_write_text

MAX_ROW_ERRORS = 10
REQUIRED_MCQ = ("question", "choices", "answer")


# ---- the door ---------------------------------------------------------------------------------
def expand_fixture(text: str) -> str:
    """``fixture:NAME[:N]`` (N forget and N retain documents; the fixture's default without) as the
    composed spec of the fixture's four files, built on first use and cached; any other spec as is."""
    if not text.startswith("fixture:"):
        return text
    from unlearnviz.data.fixtures import FIXTURES

    name, _, count = text[len("fixture:"):].partition(":")
    if name not in FIXTURES:
        raise UserError(f"unknown fixture {name!r}; available: {', '.join(sorted(FIXTURES))}")
    if count and (not count.isdigit() or int(count) < 1):
        raise UserError(f"{text}: the document count after the name must be a whole number >= 1")
    files = FIXTURES[name](**({"n_forget": int(count), "n_retain": int(count)} if count else {}))
    return ";".join(f"{part}={getattr(files, part)}" for part in PARTS)


def load_data(spec: str, tokenizer=None, max_bytes: int | None = None) -> UnlearningData:
    """Any data spec: a single one (``builtin:NAME``, ``synthetic[:E]``, ``hf:DATASET[:CONFIG]``, a
    file) or a composed one (``preset:NAME``, ``[BASE;]PART=SOURCE;...``). ``tokenizer``: the
    model's, for chunking corpora to a token budget (else whitespace words approximate it).
    ``max_bytes``: a cap on every local file read (the dashboard's for visitors; None: no cap).
    A single file over MAX_FILE_BYTES is read as Arrow, as its four parts."""
    text = expand_fixture((spec or "").strip())
    if not text:
        raise UserError("no data given: use builtin:NAME, a file, hf:DATASET, preset:NAME or four parts")
    if is_composed(text):
        return load_composed(parse_data_spec(text), tokenizer=tokenizer, max_bytes=max_bytes)
    path = Path(text).expanduser()
    if source_kind(text) == "path" and path.is_file() \
            and path.stat().st_size > MAX_FILE_BYTES and (max_bytes is None or path.stat().st_size <= max_bytes):
        d = DataSpec(parts={p: [Source(source=text)] for p in PARTS})
        return load_composed(d, tokenizer=tokenizer, max_bytes=max_bytes, name=path.name)
    return load_single(text, max_bytes=max_bytes)


def check_data(spec: str, max_bytes: int | None = None) -> dict[str, list[Source]] | None:
    """The checks that need no reading, so a command fails before its model loads: the spec's
    form, presets, built-in names, that files exist (and fit ``max_bytes``), hub access. Returns
    the resolved parts of a composed spec (None for a single one)."""
    text = expand_fixture((spec or "").strip())
    if not text:
        raise UserError("no data given: use builtin:NAME, a file, hf:DATASET, preset:NAME or four parts")
    if not is_composed(text):
        kind = source_kind(text)
        if kind in ("builtin", "synthetic"):
            load_single(text)  # small: loading is the check
        elif kind == "hf":
            if corpus.offline():
                load_single(text)  # its one-line offline error
        else:
            _check_path(Path(text).expanduser(), "data", max_bytes, single=True)
        return None
    d = parse_data_spec(text)
    resolved = resolve(d)
    _check_hub(d, resolved)
    for part, sources in resolved.items():
        for src in sources:
            if src.kind == "builtin":
                load_builtin(src.source.split(":", 1)[1])
            elif src.kind == "synthetic":
                from unlearnviz.data.synthetic import parse_spec

                parse_spec(src.source)
            elif src.kind == "path":
                _check_path(Path(src.source).expanduser(), part, max_bytes)
    if d.base and not d.base.startswith("preset:") and any(s.kind == "inherit" for v in resolved.values() for s in v):
        check_data(d.base, max_bytes)
    return resolved


def _check_path(path: Path, part: str, max_bytes: int | None, single: bool = False) -> None:
    if not path.exists():
        if single:
            raise UserError(f"data file not found: {path}")
        raise UserError(f"{part}: no such file or folder: {path}; give a JSONL/CSV/Parquet/.txt file or a "
                        "datasets save_to_disk folder")
    if path.is_file():
        if single and path.suffix.lower() not in (".jsonl", ".json", ".csv", ".parquet"):
            raise UserError(f"{path.name}: unsupported data file; use .jsonl, .json, .csv, .parquet")
        if not single and path.suffix.lower() not in corpus.READERS:
            raise UserError(f"{part}: {path.name}: unsupported file type; use {', '.join(corpus.READERS)} or a "
                            "datasets save_to_disk folder")
        if not single:
            corpus.size_check(part, path.name, path.stat().st_size, max_bytes)
        elif max_bytes is not None and path.stat().st_size > max_bytes:
            load_single(str(path), max_bytes=max_bytes)  # its own message


# ---- resolving a spec into sources --------------------------------------------------------------
def resolve(d: DataSpec) -> dict[str, list[Source]]:
    """Every part's sources: those given, else the preset's or the base's own (``inherit``); a
    preset as a part source becomes that part of the preset; a bare local path given for a part
    of a preset keeps the preset's options for it (column map, min_chars, chunk_tokens)."""
    preset = preset_sources(d.base) if d.base and d.base.startswith("preset:") else None
    out: dict[str, list[Source]] = {}
    for part in PARTS:
        given = d.parts.get(part)
        if given is None:
            if preset is not None:
                out[part] = list(preset[part])
            elif d.base:
                out[part] = [Source()]
            else:
                flag = "--" + part.replace("_", "-")
                raise UserError(f"{part}: no source given and no data set to take it from; give {flag} SOURCE "
                                "or --data")
            continue
        sources: list[Source] = []
        for i, src in enumerate(given):
            if src.kind == "preset":
                sources += [s.overridden_by(src) for s in preset_sources(src.source)[part]]
            elif src.kind == "inherit":
                if preset is not None:
                    sources += [s.overridden_by(src) for s in preset[part]]
                elif d.base:
                    sources.append(src)
                else:
                    raise UserError(f"{part}: {format_source(src)!r} gives options only, for the part of a data set "
                                    "to take them to; give a source before the '?' or --data")
            elif preset is not None and src.kind == "path" and not src.options_set:
                ref = preset[part][min(i, len(preset[part]) - 1)]
                sources.append(src.with_options_of(ref.model_copy(update={"split": None})))
            else:
                sources.append(src)
        out[part] = sources
    return out


def _hub_names(resolved: dict[str, list[Source]]) -> list[str]:
    names = [s.source[3:] + (" (gated: request access on its page)" if s.source[3:] in GATED else "")
             for v in resolved.values() for s in v if s.kind == "hf"]
    return list(dict.fromkeys(names))


def offline_hint(d: DataSpec, resolved: dict[str, list[Source]]) -> str:
    """How to get the hub's parts of a spec onto this machine, and how to point at them."""
    parts = [p for p, v in resolved.items() if any(s.kind == "hf" for s in v)]
    on = "HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0"
    if d.base and d.base.startswith("preset:"):
        name, _ = parse_preset(d.base)
        return (f"with a network set {on}; or where there is one run `{on} python -m unlearnviz data fetch "
                f"{name} --out DIR`, copy DIR here and use --data preset:{name}@DIR (or give each part a local "
                "copy: " + ", ".join(f"--{p.replace('_', '-')} PATH" for p in parts) + ")")
    return (f"with a network set {on}; or save each with datasets' save_to_disk (`{on} python -m unlearnviz data "
            "fetch SPEC --out DIR` does) and give the folders: "
            + ", ".join(f"--{p.replace('_', '-')} DIR/{p}" for p in parts))


def _check_hub(d: DataSpec, resolved: dict[str, list[Source]]) -> None:
    """Offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE), a spec that needs the hub fails at once."""
    names = _hub_names(resolved)
    if names and corpus.offline():
        what = f"preset {parse_preset(d.base)[0]}" if d.base and d.base.startswith("preset:") else "this data"
        raise UserError(f"{what} reads {', '.join(names)} from the Hugging Face hub, and hub access is off "
                        f"(HF_HUB_OFFLINE=1): {offline_hint(d, resolved)}")


# ---- building the parts -------------------------------------------------------------------------
@dataclass
class _Part:
    """One loaded part: corpus texts and their A/B halves, or items and theirs; and provenance."""

    values: Sequence = ()
    halves: Sequence = ()
    info: list[dict] = field(default_factory=list)
    probes: list = field(default_factory=list)  # an MCQ part's probe split (held-out phrasings)
    probe_of: list = field(default_factory=list)

    def extend(self, other: _Part) -> None:
        if not self.info:
            self.values, self.halves = other.values, other.halves
        else:
            self.values = self.values + other.values
            self.halves = None if self.halves is None or other.halves is None else self.halves + other.halves
        self.info += other.info
        self.probes, self.probe_of = self.probes + other.probes, self.probe_of + other.probe_of


class _Loader:
    """Loads the sources of one spec, each single data set at most once."""

    def __init__(self, base: str | None, tokenizer, max_bytes: int | None, hub_hint: str = ""):
        self.base, self.tokenizer, self.max_bytes, self.hub_hint = base, tokenizer, max_bytes, hub_hint
        self._sets: dict[str, UnlearningData] = {}

    def whole(self, spec: str) -> UnlearningData:
        if spec not in self._sets:
            self._sets[spec] = load_data(spec, tokenizer=self.tokenizer, max_bytes=self.max_bytes)
        return self._sets[spec]

    def load(self, part: str, src: Source) -> _Part:
        label = format_source(src) if src.kind != "inherit" else (self.base or "") + format_source(src)
        if src.kind in ("builtin", "synthetic", "inherit"):
            data = self.whole(src.source if src.kind != "inherit" else self.base)
            if is_corpus(part):
                texts = data.forget_texts if part == "forget_corpus" else data.retain_texts
                halves = data.forget_text_half if part == "forget_corpus" else None  # retain: no halves
                out = self._corpus_seq(part, src, texts, halves, data.name)
            else:
                items = data.forget_mcq if part == "forget_mcq" else data.retain_mcq
                halves = data.forget_half if part == "forget_mcq" else ["A"] * len(items)  # items: small
                out = self._mcq_seq(part, src, items, halves, data.name)
                _carry_probes(out, data, part, whole=len(out.values) == len(items))
        else:
            if src.kind == "hf":
                try:
                    raw = corpus.read_hf(src.source[3:], src.config, src.split, src.revision, part)
                except UserError as exc:  # no network, no access, no such dataset: and how to do without
                    raise UserError(f"{exc} ({self.hub_hint})" if self.hub_hint else str(exc)) from None
            else:
                raw = corpus.read_path(Path(src.source).expanduser(), part, unit=src.unit, split=src.split,
                                       max_bytes=self.max_bytes)
            out = self._corpus_table(part, src, raw) if is_corpus(part) else self._mcq_table(part, src, raw)
        out.info[0]["source"] = label
        return out

    # -- corpora ------------------------------------------------------------------------------
    def _process(self, part: str, src: Source, batches: Iterator[tuple[list[str], list[str]]]):
        """Filter (min_chars), chunk (chunk_tokens) batch by batch."""
        for texts, halves in batches:
            keep = [(t, h) for t, h in zip(texts, halves) if t is not None and len(t) > src.min_chars]
            if src.chunk_tokens and keep:
                # a few documents at a time: a long paper's token offsets take far more memory than its text
                pieces = [cs for s in range(0, len(keep), corpus.CHUNK_DOCS)
                          for cs in corpus.chunk_texts([t for t, _ in keep[s:s + corpus.CHUNK_DOCS]], src.chunk_tokens,
                                                       self.tokenizer)]
                keep = [(c, h) for (_, h), cs in zip(keep, pieces) for c in cs if len(c) > src.min_chars and c]
            yield [t for t, _ in keep], [h for _, h in keep]

    def _info(self, src: Source, kind: str, rows: int, documents: int, texts: int) -> dict:
        info = {"kind": kind, "rows": rows, "documents": documents, "texts": texts}
        if src.chunk_tokens:
            info["chunked"] = f"{src.chunk_tokens} tokens by {corpus.chunked_by(self.tokenizer)}"
        return info

    def _corpus_seq(self, part: str, src: Source, texts: Sequence[str], halves: Sequence[str] | None,
                    name: str) -> _Part:
        """A corpus part of a data set already loaded (built-in, synthetic, the base)."""
        if not ({"max_rows", "min_chars", "chunk_tokens"} & src.options_set):
            return _Part(texts, halves, [self._info(src, f"part of {name}", len(texts), len(texts), len(texts))])
        pick = corpus.sample_positions(len(texts), src.max_rows, src.seed)
        if pick is None:
            pick = range(len(texts))
        texts = texts.take(pick) if isinstance(texts, TextColumn) else [texts[i] for i in pick]
        if halves is None:
            halves = ["A"] * len(texts)
        else:
            halves = halves.take(pick) if isinstance(halves, TextColumn) else [halves[i] for i in pick]
        out_t: list[str] = []
        out_h: list[str] = []
        for t, h in self._process(part, src, iter([(list(texts), list(halves))])):
            out_t += t
            out_h += h
        if not out_t:
            raise UserError(f"{part}: {name} gives no texts longer than min_chars={src.min_chars} characters; "
                            "lower min_chars")
        return _Part(out_t, out_h if part == "forget_corpus" else None,
                     [self._info(src, f"part of {name}", len(texts), len(texts), len(out_t))])

    def _corpus_table(self, part: str, src: Source, raw: corpus.RawTable) -> _Part:
        import pyarrow as pa
        import pyarrow.compute as pc

        text_col = src.columns.get("text", "text")
        if not text_col:
            raise UserError(f"{part}: text= names no column; a corpus reads its texts from one (?text=COLUMN)")
        _need_column(part, raw, text_col, "text", "text" in src.columns)
        typ = raw.column_type(text_col)
        if not (pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_null(typ)):
            raise UserError(f"{part}: column {text_col!r} of {raw.what} holds {typ} values, not text; map the text "
                            "column with ?text=COLUMN")
        half_col = src.columns.get("half", "half")
        if half_col and half_col not in raw.columns:
            if "half" in src.columns:
                _need_column(part, raw, half_col, "half", True)
            half_col = ""
        split = part_split(part) if "split" in raw.columns else None
        chunking = corpus.chunked_by(self.tokenizer) if src.chunk_tokens else None
        fp = digest(corpus.FORMAT_VERSION, raw.fingerprint, text_col, half_col, split, src.min_chars, src.max_rows,
                    src.seed, src.chunk_tokens, chunking)
        out = corpus.data_cache() / "parts" / f"{fp}.arrow"
        meta = out.with_suffix(".json")
        if out.exists() and meta.exists():
            info = json.loads(meta.read_text())
        else:
            masks = [pc.fill_null(pc.greater(pc.utf8_length(c), src.min_chars), False) for c in raw.chunks(text_col)]
            positions = _pick_rows(raw, masks, split, src)
            if not len(positions):
                where = f" with split={split}" if split else ""
                raise UserError(f"{part}: {raw.what} gives no texts: {raw.num_rows} rows, none{where} longer than "
                                f"min_chars={src.min_chars} characters in column {text_col!r}; lower min_chars or "
                                "give another source")
            reader = corpus.ColumnReader(raw.chunks(text_col))
            halves_reader = corpus.ColumnReader(raw.chunks(half_col)) if half_col else None

            def batches():
                for s in range(0, len(positions), corpus.READ_ROWS):
                    pos = positions[s:s + corpus.READ_ROWS]
                    given = halves_reader.take(pos) if halves_reader else [None] * len(pos)
                    halves = [str(h).strip().upper() if str(h or "").strip().upper() in ("A", "B")
                              else ("A" if (s + k) % 2 == 0 else "B") for k, h in enumerate(given)]
                    yield reader.take(pos), halves

            n = corpus.write_part(out, self._process(part, src, batches()))
            if n == 0:
                out.unlink(missing_ok=True)
                raise UserError(f"{part}: {raw.what} gives no texts longer than min_chars={src.min_chars} after "
                                f"chunking to {src.chunk_tokens} tokens; lower min_chars")
            info = self._info(src, "file" if not raw.what.startswith("hf:") else "hf", raw.num_rows,
                              int(len(positions)), n)
            atomic_write_text(meta, json.dumps(info))
        halves = TextColumn.from_file(out, "half", f"{fp}:half") if part == "forget_corpus" else None
        return _Part(TextColumn.from_file(out, "text", fp), halves, [dict(info)])

    # -- multiple-choice sets -----------------------------------------------------------------
    def _mcq_seq(self, part: str, src: Source, items: list[MCQItem], halves: list[str], name: str) -> _Part:
        pick = corpus.sample_positions(len(items), src.max_rows, src.seed)
        if pick is not None:
            items, halves = [items[i] for i in pick], [halves[i] for i in pick]
        if not items:
            raise UserError(f"{part}: {name} has no {part_split(part)} questions; give another source for {part}")
        return _Part(list(items), list(halves), [{"kind": f"part of {name}", "items": len(items)}])

    def _mcq_table(self, part: str, src: Source, raw: corpus.RawTable) -> _Part:
        import pyarrow as pa
        import pyarrow.compute as pc

        if raw.what.endswith(".txt"):
            raise UserError(f"{part}: {raw.what}: a .txt file holds texts, not questions; give a JSONL/CSV/Parquet "
                            "file with question, choices and answer columns")
        cols: dict[str, str] = {}
        for f in MCQ_FIELDS:
            col = src.columns.get(f, f)
            if not col:
                if f in REQUIRED_MCQ:
                    raise UserError(f"{part}: {f}= names no column; a multiple-choice set needs {f} (?{f}=COLUMN)")
                continue
            if col in raw.columns:
                cols[f] = col
            elif f in REQUIRED_MCQ or f in src.columns:
                _need_column(part, raw, col, f, f in src.columns)
        split = part_split(part) if "split" in raw.columns else None

        masks = []
        for c in raw.chunks(cols["question"]):
            present = pc.fill_null(pc.invert(pc.is_null(c)), False)
            if pa.types.is_string(c.type) or pa.types.is_large_string(c.type):
                present = pc.and_(present, pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(c)), 0),
                                                        False))
            masks.append(present)
        positions = _pick_rows(raw, masks, split, src)
        if not len(positions):
            where = f" with split={split}" if split else ""
            raise UserError(f"{part}: {raw.what} has no questions{where} ({raw.num_rows} rows, none with a "
                            f"{cols['question']!r}); give a multiple-choice file for {part}")
        items, halves, errors = [], [], []
        for k, (pos, row) in enumerate(raw.rows(list(cols.values()), positions)):
            mapped = {f: row[c] for f, c in cols.items()}
            try:
                items.append(mcq_from_row(mapped, letters=True))
            except (ValueError, UserError) as exc:
                errors.append(f"row {pos + raw.first_line}: {exc}")
                continue
            h = str(mapped.get("half") or "").strip().upper()
            halves.append(h if h in ("A", "B") else ("A" if k % 2 == 0 else "B"))
        if errors:
            more = f"; and {len(errors) - MAX_ROW_ERRORS} more bad rows" if len(errors) > MAX_ROW_ERRORS else ""
            raise UserError(f"{part}: {raw.what}: " + "; ".join(errors[:MAX_ROW_ERRORS]) + more)
        return _Part(items, halves, [{"kind": "file" if not raw.what.startswith("hf:") else "hf",
                                      "rows": raw.num_rows, "items": len(items)}])


def _carry_probes(out: _Part, data: UnlearningData, part: str, whole: bool) -> None:
    """An MCQ part taken from a loaded set brings that set's probes of the items it kept (all of
    them when it kept every item), so a built-in set given as four parts is the same data. Files
    and hub tables read as parts carry none: their rows with ``split`` forget_probe/retain_probe are
    not questions of either part."""
    split = part_split(part)
    kept = {it.question for it in out.values}
    pairs = [(p, of) for p, of in zip(getattr(data, f"{split}_probe"), getattr(data, f"{split}_probe_of"))
             if of in kept or (whole and not of)]
    out.probes, out.probe_of = [p for p, _ in pairs], [of for _, of in pairs]


def _need_column(part: str, raw: corpus.RawTable, col: str, field_name: str, mapped: bool) -> None:
    if col in raw.columns:
        return
    have = ", ".join(raw.columns) or "none"
    if mapped:
        raise UserError(f"{part}: ?{field_name}={col}: {raw.what} has no column {col!r} (columns: {have}); "
                        "fix the column map")
    raise UserError(f"{part}: {raw.what} has no column {col!r} (columns: {have}); map one with "
                    f"?{field_name}=COLUMN")


def load_composed(d: DataSpec, tokenizer=None, max_bytes: int | None = None, name: str | None = None) -> UnlearningData:
    """An UnlearningData from the four parts of a composed spec, with each part's provenance."""
    resolved = resolve(d)
    _check_hub(d, resolved)
    hint = offline_hint(d, resolved) if d.base and d.base.startswith("preset:") else ""
    loader = _Loader(d.base, tokenizer, max_bytes, hub_hint=hint)
    parts: dict[str, _Part] = {}
    for part in PARTS:
        acc = _Part()
        for src in resolved[part]:
            acc.extend(loader.load(part, src))
        parts[part] = acc
    fc, rc, fm, rm = (parts[p] for p in PARTS)
    record = {p: {"sources": [i["source"] for i in parts[p].info], "count": len(parts[p].values),
                  "detail": parts[p].info} for p in PARTS}
    provenance = "; ".join(f"{p}: " + " + ".join(i["source"] for i in parts[p].info)
                           + f" ({len(parts[p].values)} {'texts' if is_corpus(p) else 'items'})" for p in PARTS)
    return UnlearningData(name=name or format_data_spec(d), forget_texts=fc.values, retain_texts=rc.values,
                          forget_mcq=list(fm.values), retain_mcq=list(rm.values), forget_half=list(fm.halves),
                          forget_text_half=fc.halves, provenance=provenance, parts=record,
                          forget_probe=fm.probes, retain_probe=rm.probes, forget_probe_of=fm.probe_of,
                          retain_probe_of=rm.probe_of)


# ---- local copies of hub sources ----------------------------------------------------------------
def fetch(spec: str, out: Path, log=lambda _m: None) -> dict[str, list[str]]:
    """Save every hub source of a spec (a preset's, say) under ``out`` with datasets'
    save_to_disk, named as ``preset:NAME@OUT`` reads them; returns the local folder per part."""
    text = spec.strip()
    if not is_composed(text) and not text.startswith("preset:"):
        text = f"preset:{text}" if text in ("wmdp", "wmdp-bio", "wmdp-cyber") else text
    d = parse_data_spec(text)
    resolved = resolve(d)
    if corpus.offline() and _hub_names(resolved):
        raise UserError("data fetch downloads from the Hugging Face hub and hub access is off (HF_HUB_OFFLINE=1): "
                        "run it where there is a network with HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0")
    if not _hub_names(resolved):
        raise UserError(f"nothing to fetch: {spec!r} reads nothing from the hub; give a preset (wmdp-bio, wmdp-cyber, "
                        "wmdp) or parts from hf: sources")
    saved: dict[str, list[str]] = {}
    for part, sources in resolved.items():
        for i, src in enumerate(sources):
            if src.kind != "hf":
                continue
            log(f"{part}: streaming {format_source(src)}")
            raw = corpus.read_hf(src.source[3:], src.config, src.split, src.revision, part)
            target = out / local_name(part, i, len(sources))
            with corpus.quiet_datasets() as datasets:
                datasets.Dataset.from_file(raw.files[0]).save_to_disk(str(target))
            saved.setdefault(part, []).append(str(target))
    return saved


def _pick_rows(raw, masks: list, split: str | None, src: Source):
    """Positions of the rows that pass the part's per-chunk masks (and its split, where the file has a
    ``split`` column), sampled to ``max_rows`` with the source's seed, in file order."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if split:
        for i, c in enumerate(raw.chunks("split")):
            is_split = pc.equal(pc.utf8_lower(pc.utf8_trim_whitespace(pc.cast(c, pa.string()))), split)
            masks[i] = pc.and_(masks[i], pc.fill_null(is_split, False))
    positions = np.flatnonzero(np.concatenate([m.to_numpy(zero_copy_only=False) for m in masks])) \
        if masks else np.zeros(0, np.int64)
    pick = corpus.sample_positions(len(positions), src.max_rows, src.seed)
    return positions if pick is None else positions[pick]
