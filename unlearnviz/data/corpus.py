"""Corpora of any size: texts in memory-mapped Arrow files, read through datasets, cut to a token
budget and cached once per source.

WMDP's bio forget corpus is about 24k PubMed papers; as Python lists it and its chunks would sit
in every process's memory, and every load would re-read and re-chunk it. Here a corpus part is
read once through ``datasets`` (JSONL, CSV, Parquet and text files become Arrow; hf sources are
streamed), filtered, sampled and chunked in batches into one Arrow file under the project cache
(``cache_dir()/datasets``), named by a fingerprint of everything that decides its texts (the
input file's SHA-256 or the hub revision, the options, the tokenizer). Later loads open that file
memory-mapped: a ``TextColumn`` holds no texts, only where they are, and reads them on demand.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from unlearnviz.errors import UserError
from unlearnviz.io import atomic_write_text

FORMAT_VERSION = 1
READ_ROWS = 1024  # texts read per Arrow batch: iteration memory is one batch, never the corpus
CHUNK_DOCS = 32  # documents tokenised at once when chunking (their offsets are the memory that counts)
WORDS_PER_TOKEN = 0.75  # English BPE: about 4 tokens per 3 words (the whitespace approximation)
READERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


def data_cache() -> Path:
    """Where converted sources, processed parts and per-source summaries live: ``datasets`` in the
    project cache (``UNLEARNVIZ_CACHE``, as ``model.loading.cache_dir``, read here without
    importing torch, so that a bad data argument fails before the model layer loads)."""
    return Path(os.environ.get("UNLEARNVIZ_CACHE", Path.home() / ".cache" / "unlearnviz")) / "datasets"


def digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


# ---- Arrow files --------------------------------------------------------------------------------
@functools.lru_cache(maxsize=256)
def _open_table(path: str, stamp: tuple[int, int]):
    import pyarrow as pa

    return pa.ipc.open_stream(pa.memory_map(path, "r")).read_all()


def open_table(path: str | Path):
    """An Arrow IPC stream file (datasets' cache format, and ours) as a memory-mapped table."""
    st = os.stat(path)
    return _open_table(str(path), (st.st_size, st.st_mtime_ns))


class TextColumn(Sequence):
    """A sequence of texts in memory-mapped Arrow files (or short in-memory runs), optionally seen
    through an index array: ``len``, indexing, slicing (a list), iteration by batches, ``select``
    (a view), ``+`` (a concatenation) and ``==`` behave like a list's, without holding its texts.

    ``segments``: ``("arrow", (file, ...), column)`` or ``("list", (text, ...))``, in order.
    ``fingerprint`` names the content (part caches key on it); views and sums derive theirs.
    Pickling and copying keep the file names only, so sessions copy it for free."""

    def __init__(self, segments: Sequence[tuple], indices=None, fingerprint: str = ""):
        import numpy as np

        self.segments = tuple(tuple(s) for s in segments)
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        self.fingerprint = fingerprint
        self._chunks = None
        self._offsets = None

    @classmethod
    def from_file(cls, path: str | Path, column: str = "text", fingerprint: str = "") -> TextColumn:
        return cls([("arrow", (str(path),), column)], fingerprint=fingerprint)

    def _load(self):
        if self._chunks is None:
            import numpy as np
            import pyarrow as pa

            chunks = []
            for seg in self.segments:
                if seg[0] == "arrow":
                    for f in seg[1]:
                        chunks += [c for c in open_table(f).column(seg[2]).chunks if len(c)]
                else:
                    chunks.append(pa.array(list(seg[1]), pa.large_string()))
            self._offsets = np.cumsum([0] + [len(c) for c in chunks])
            self._chunks = chunks
        return self._chunks, self._offsets

    @property
    def total(self) -> int:
        """Texts in the segments, before the index array."""
        return int(self._load()[1][-1])

    def __len__(self) -> int:
        return self.total if self.indices is None else len(self.indices)

    def _global(self, positions):
        import numpy as np

        positions = np.asarray(positions, dtype=np.int64)
        return positions if self.indices is None else self.indices[positions]

    def _fetch(self, positions) -> list[str]:
        """The texts at these global positions, in their order."""
        import numpy as np

        chunks, offsets = self._load()
        if len(positions) == 0:
            return []
        which = np.searchsorted(offsets, positions, side="right") - 1
        out: list = [None] * len(positions)
        for c in np.unique(which):
            sel = np.flatnonzero(which == c)
            local = positions[sel] - offsets[c]
            lo, hi = int(local.min()), int(local.max()) + 1
            if hi - lo == len(local) and np.all(np.diff(local) == 1):
                values = chunks[c].slice(lo, hi - lo).to_pylist()
            else:
                values = chunks[c].take(local).to_pylist()
            for i, v in zip(sel, values):
                out[i] = v
        return out

    def __getitem__(self, key):
        import numpy as np

        n = len(self)
        if isinstance(key, slice):
            r = range(n)[key]
            return self._fetch(self._global(np.arange(r.start, r.stop, r.step)))
        i = int(key)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("TextColumn index out of range")
        return self._fetch(self._global([i]))[0]

    def __iter__(self) -> Iterator[str]:
        import numpy as np

        n = len(self)
        for s in range(0, n, READ_ROWS):
            yield from self._fetch(self._global(np.arange(s, min(n, s + READ_ROWS))))

    def batches(self, size: int = READ_ROWS) -> Iterator[list[str]]:
        import numpy as np

        n = len(self)
        for s in range(0, n, size):
            yield self._fetch(self._global(np.arange(s, min(n, s + size))))

    def take(self, positions) -> list[str]:
        return self._fetch(self._global(positions))

    def select(self, positions, tag: str = "") -> TextColumn:
        """A view of the texts at these positions (no texts are read)."""
        import numpy as np

        pos = np.asarray(positions, dtype=np.int64)
        fp = digest(self.fingerprint, tag or hashlib.sha256(pos.tobytes()).hexdigest()) if self.fingerprint else ""
        return TextColumn(self.segments, self._global(pos), fp)

    def positions_equal(self, value: str):
        """The positions whose text equals ``value`` (vectorised: for the A/B halves column)."""
        import numpy as np
        import pyarrow.compute as pc

        chunks, _ = self._load()
        hits = np.concatenate([pc.fill_null(pc.equal(c, value), False).to_numpy(zero_copy_only=False)
                               for c in chunks]) if chunks else np.zeros(0, bool)
        if self.indices is not None:
            hits = hits[self.indices]
        return np.flatnonzero(hits)

    def _plain(self) -> tuple[tuple, object]:
        import numpy as np

        return self.segments, (np.arange(self.total) if self.indices is None else self.indices)

    def __add__(self, other):
        import numpy as np

        if isinstance(other, TextColumn):
            o_segments, o_total, o_idx = other.segments, other.total, other.indices
        elif isinstance(other, (list, tuple)):
            o_segments, o_total, o_idx = (("list", tuple(other)),), len(other), None
        else:
            return NotImplemented
        if self.indices is None and o_idx is None:
            idx = None
        else:
            own = np.arange(self.total) if self.indices is None else self.indices
            theirs = np.arange(o_total) if o_idx is None else o_idx
            idx = np.concatenate([own, self.total + theirs])
        fp = digest(self.fingerprint, other.fingerprint if isinstance(other, TextColumn) else list(other))
        return TextColumn(self.segments + tuple(o_segments), idx, fp if self.fingerprint else "")

    def __radd__(self, other):
        if isinstance(other, (list, tuple)):
            return TextColumn([("list", tuple(other))]) + self
        return NotImplemented

    def __eq__(self, other) -> bool:
        if not isinstance(other, (Sequence, TextColumn)) or isinstance(other, str):
            return NotImplemented
        if len(self) != len(other):
            return False
        if isinstance(other, TextColumn) and other.fingerprint and other.fingerprint == self.fingerprint:
            return True
        return all(a == b for a, b in zip(self, other))

    __hash__ = None

    def __repr__(self) -> str:
        return f"TextColumn({len(self)} texts)"

    def __reduce__(self):
        return (TextColumn, (self.segments, self.indices, self.fingerprint))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self  # immutable: the files it reads are written once under their fingerprint


def write_part(path: Path, batches: Iterator[tuple[list[str], list[str]]]) -> int:
    """Write (texts, halves) batches as one Arrow stream file, atomically; returns the row count."""
    import pyarrow as pa

    schema = pa.schema([("text", pa.large_string()), ("half", pa.string())])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    n = 0
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for texts, halves in batches:
                if texts:
                    writer.write_batch(pa.record_batch([pa.array(texts, pa.large_string()), pa.array(halves)],
                                                       schema=schema))
                    n += len(texts)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return n


# ---- fingerprints -------------------------------------------------------------------------------
def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, computed once per (path, size, mtime) and remembered in the cache."""
    st = path.stat()
    key = digest(str(path.resolve()), st.st_size, st.st_mtime_ns)
    memo = data_cache() / "filehash" / key
    if memo.exists():
        return memo.read_text().strip()
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    atomic_write_text(memo, h.hexdigest())
    return h.hexdigest()


_TOKENIZER_IDS: dict[int, tuple[object, str]] = {}


def tokenizer_id(tokenizer) -> str:
    """A content hash of a tokenizer (its vocabulary and rules), so chunks cached with one model's
    tokenizer are never taken for another's."""
    hit = _TOKENIZER_IDS.get(id(tokenizer))
    if hit is not None and hit[0] is tokenizer:
        return hit[1]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    blob = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    value = hashlib.sha256(blob.encode()).hexdigest()[:16]
    _TOKENIZER_IDS[id(tokenizer)] = (tokenizer, value)
    return value


# ---- reading a source into Arrow ----------------------------------------------------------------
@dataclass
class RawTable:
    """A source's rows as Arrow: the files, their columns, and where the rows came from."""

    files: tuple[str, ...]
    what: str  # how messages name it: the file name, or hf:DATASET
    fingerprint: str
    first_line: int = 1  # line number of row 0 (CSV: 2, after the header)

    @functools.cached_property
    def schema(self):
        return open_table(self.files[0]).schema if self.files else None

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names) if self.schema is not None else []

    def column_type(self, name: str):
        return self.schema.field(name).type

    def chunks(self, name: str) -> list:
        return [c for f in self.files for c in open_table(f).column(name).chunks]

    @property
    def num_rows(self) -> int:
        return sum(open_table(f).num_rows for f in self.files)

    def rows(self, names: list[str], positions) -> Iterator[tuple[int, dict]]:
        """(position, {name: value}) for these positions (sorted), read a batch at a time."""
        import numpy as np

        cols = {n: ColumnReader(self.chunks(n)) for n in names}
        positions = np.asarray(positions, dtype=np.int64)
        for s in range(0, len(positions), READ_ROWS):
            pos = positions[s:s + READ_ROWS]
            values = {n: c.take(pos) for n, c in cols.items()}
            for i, p in enumerate(pos):
                yield int(p), {n: values[n][i] for n in names}


class ColumnReader:
    """Positional access to one column's chunks of any type (a TextColumn for non-text columns)."""

    def __init__(self, chunks: list):
        import numpy as np

        self.chunks = chunks
        self.offsets = np.cumsum([0] + [len(c) for c in chunks])

    def take(self, positions) -> list:
        import numpy as np

        which = np.searchsorted(self.offsets, positions, side="right") - 1
        out: list = [None] * len(positions)
        for c in np.unique(which):
            sel = np.flatnonzero(which == c)
            for i, v in zip(sel, self.chunks[c].take(positions[sel] - self.offsets[c]).to_pylist()):
                out[i] = v
        return out


@contextlib.contextmanager
def quiet_datasets():
    """datasets without progress bars or its own error log lines (our errors are one line)."""
    import datasets

    datasets.disable_progress_bars()
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield datasets
    finally:
        logger.setLevel(level)


def root_cause(exc: BaseException) -> str:
    """The innermost reason of an exception chain, as one short line."""
    seen = exc
    while seen.__cause__ is not None or (seen.__context__ is not None and not seen.__suppress_context__):
        seen = seen.__cause__ or seen.__context__
    text = (str(seen).strip().splitlines() or [type(seen).__name__])[0]
    return text[:200]


def size_text(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 // 10 else f"{n} bytes"


def size_check(part: str, what: str, size: int, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise UserError(f"{part}: {what} is {size_text(size)}, over this server's limit of {size_text(max_bytes)} "
                        "for data files; use a smaller file")


def read_path(path: Path, part: str, unit: str = "line", split: str | None = None,
              max_bytes: int | None = None) -> RawTable:
    """A local file (JSONL/CSV/Parquet/text) or a save_to_disk folder as Arrow, through datasets."""
    if not path.exists():
        raise UserError(f"{part}: no such file or folder: {path}; give a JSONL/CSV/Parquet/.txt file or a "
                        "datasets save_to_disk folder")
    if path.is_dir():
        return _read_folder(path, part, split, max_bytes)
    suffix = path.suffix.lower()
    if suffix not in READERS:
        raise UserError(f"{part}: {path.name}: unsupported file type; use {', '.join(READERS)} or a datasets "
                        "save_to_disk folder")
    size = path.stat().st_size
    size_check(part, path.name, size, max_bytes)
    if size == 0:
        raise UserError(f"{part}: {path.name}: the file is empty")
    if not os.access(path, os.R_OK):
        raise UserError(f"{part}: {path.name}: cannot read the file (permission denied)")
    kwargs: dict = {}
    if suffix == ".txt":
        kwargs = {"sample_by": "paragraph" if unit == "paragraph" else "line"}
    elif suffix == ".csv":
        kwargs = {"keep_default_na": False, "na_filter": False}
    try:
        with quiet_datasets() as datasets:
            ds = datasets.load_dataset(READERS[suffix], data_files=str(path), split="train",
                                       cache_dir=str(data_cache() / "hf"), **kwargs)
    except Exception as exc:  # datasets/pyarrow/pandas raise many types for malformed files
        reason = root_cause(exc)
        if READERS[suffix] == "json" and reason.startswith("Couldn't cast"):
            return _read_json_whole(path, part)
        if isinstance(exc, UnicodeDecodeError) or "codec can't decode" in reason or "UTF-8" in reason:
            raise UserError(f"{part}: {path.name}: not UTF-8 text; save it as UTF-8") from None
        hint = {"json": "one JSON object per line", "csv": "a header row, then one row per record",
                "parquet": "a Parquet file", "text": "UTF-8 text"}[READERS[suffix]]
        raise UserError(f"{part}: {path.name}: cannot read ({reason}); fix the file ({hint})") from None
    files = tuple(f["filename"] for f in ds.cache_files)
    return RawTable(files, path.name, digest("file", file_sha256(path), kwargs),
                    first_line=2 if suffix == ".csv" else 1)


def _read_json_whole(path: Path, part: str) -> RawTable:
    """JSON lines whose keys change down the file (the single-file format mixes text rows and
    question rows): datasets casts each block to the first block's columns and fails, so the file
    is read whole by pyarrow (which adds columns as they appear; memory about the file's size,
    once) and kept as Arrow under its SHA-256."""
    import pyarrow as pa
    import pyarrow.json as paj

    sha = file_sha256(path)
    out = data_cache() / "json" / f"{sha[:32]}.arrow"
    if not out.exists():
        try:
            table = paj.read_json(str(path), parse_options=paj.ParseOptions(newlines_in_values=False))
        except (pa.ArrowInvalid, OSError) as exc:
            raise UserError(f"{part}: {path.name}: cannot read ({root_cause(exc)}); fix the file (one JSON object "
                            "per line, each key with one type of value)") from None
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        try:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        del table
    return RawTable((str(out),), path.name, digest("file", sha, {}))


def _read_folder(path: Path, part: str, split: str | None, max_bytes: int | None) -> RawTable:
    if not ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        raise UserError(f"{part}: {path} is a folder but not a datasets save_to_disk folder "
                        "(no state.json or dataset_dict.json); give a file or such a folder")
    try:
        with quiet_datasets() as datasets:
            ds = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise UserError(f"{part}: {path.name}: cannot read the saved dataset ({root_cause(exc)})") from None
    if hasattr(ds, "keys"):  # a DatasetDict
        names = list(ds.keys())
        want = split or ("train" if part.endswith("corpus") else "test")
        if want not in names:
            if split is None and len(names) == 1:
                want = names[0]
            else:
                raise UserError(f"{part}: {path.name} has no split {want!r} (splits: {', '.join(names)}); "
                                "choose one with ?split=NAME")
        ds = ds[want]
    files = tuple(f["filename"] for f in ds.cache_files)
    if not files:
        raise UserError(f"{part}: {path.name}: the saved dataset has no Arrow files")
    size_check(part, path.name, sum(os.path.getsize(f) for f in files), max_bytes)
    return RawTable(files, path.name, digest("folder", [file_sha256(Path(f)) for f in files]))


def offline() -> bool:
    return any(os.environ.get(k, "0").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def read_hf(name: str, config: str | None, split: str | None, revision: str | None, part: str) -> RawTable:
    """A Hugging Face dataset split, streamed once into an Arrow file under the project cache
    (keyed by the hub revision); later loads read that file."""
    import pyarrow as pa

    what = f"hf:{name}" + (f":{config}" if config else "")
    try:
        with quiet_datasets() as datasets:
            from huggingface_hub import HfApi

            sha = HfApi().dataset_info(name, revision=revision).sha or revision or "main"
            if split is None:
                names = datasets.get_dataset_split_names(name, config, revision=revision)
                want = "train" if part.endswith("corpus") else "test"
                split = want if want in names else names[0]
            fp = digest("hf", name, config, split, sha)
            out = data_cache() / "hub" / f"{fp}.arrow"
            if not out.exists():
                stream = datasets.load_dataset(name, config, split=split, streaming=True, revision=revision)
                out.parent.mkdir(parents=True, exist_ok=True)
                tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
                try:
                    writer = None
                    schema = stream.features.arrow_schema if stream.features is not None else None
                    with pa.OSFile(str(tmp), "wb") as sink:
                        for batch in stream.iter(batch_size=READ_ROWS):
                            table = pa.Table.from_pydict(batch, schema=schema)
                            if writer is None:
                                writer = pa.ipc.new_stream(sink, table.schema)
                            writer.write_table(table.cast(writer.schema) if table.schema != writer.schema else table)
                        if writer is None:
                            raise UserError(f"{part}: {what} split {split!r} has no rows")
                        writer.close()
                    os.replace(tmp, out)
                finally:
                    tmp.unlink(missing_ok=True)
    except UserError:
        raise
    except Exception as exc:
        hint = "request access on the dataset's page and log in (huggingface-cli login)" \
            if "gated" in str(exc).lower() or "401" in str(exc) or "403" in str(exc) else \
            "check the name, config and split, or save it with datasets' save_to_disk and pass the folder"
        raise UserError(f"{part}: cannot load {what}: {root_cause(exc)}; {hint}") from None
    return RawTable((str(out),), f"{what}:{split}", fp)


# ---- chunking -----------------------------------------------------------------------------------
_WORD_SPAN = re.compile(r"\S+")


def _cut(starts: list[bool], k: int, size: int) -> int:
    """The end of a piece from token ``k`` of at most ``size`` tokens, before a word start if one is in reach."""
    end = min(k + size, len(starts))
    if end < len(starts):
        end = next((j for j in range(end, k, -1) if starts[j]), end)
    return end


def _token_pieces(text: str, offsets, n_tokens: int, budget: int, tokenizer) -> list[str]:
    spans = [(a, b) for a, b in offsets if b > a]
    starts = [i == 0 or a > spans[i - 1][1] or text[a - 1].isspace() or text[a].isspace()
              for i, (a, _) in enumerate(spans)]
    ranges, k = [], 0
    while k < len(spans):
        ranges.append((k, _cut(starts, k, budget)))
        k = ranges[-1][1]
    pieces = [text[spans[a][0]:spans[b - 1][1]].strip() for a, b in ranges]
    counts = [len(ids) for ids in tokenizer(pieces, verbose=False).input_ids] if pieces else []
    if any(c > n_tokens for c in counts):  # rare: redo this text a piece at a time, checking each
        pieces, k = [], 0
        while k < len(spans):
            end = _cut(starts, k, budget)
            while True:
                piece = text[spans[k][0]:spans[end - 1][1]].strip()
                over = len(tokenizer(piece, verbose=False).input_ids) - n_tokens
                if over <= 0 or end - k <= 1:
                    break
                end = _cut(starts, k, max(1, end - k - over))
            pieces.append(piece)
            k = end
    return [p for p in pieces if p]


def chunk_texts(texts: list[str], n_tokens: int, tokenizer=None) -> list[list[str]]:
    """Each text cut into consecutive pieces that encode to at most ``n_tokens`` tokens, the
    tokenizer's special tokens included (so a method reading ``max_tokens = n_tokens`` keeps every
    one), as substrings cut before a word start (a word longer than a piece is cut inside). With
    a fast tokenizer each piece is checked by encoding it (its first word may take more tokens
    without the space before it) and shortened while it is over; without one, a piece is
    ``WORDS_PER_TOKEN * n_tokens`` whitespace words (about ``n_tokens`` tokens of English text)."""
    if tokenizer is not None and getattr(tokenizer, "is_fast", False):
        budget = max(1, n_tokens - tokenizer.num_special_tokens_to_add())
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return [_token_pieces(text, offsets, n_tokens, budget, tokenizer)
                for text, offsets in zip(texts, enc["offset_mapping"])]
    out: list[list[str]] = []
    per = max(1, int(n_tokens * WORDS_PER_TOKEN))
    for text in texts:
        spans = [m.span() for m in _WORD_SPAN.finditer(text)]
        out.append([text[spans[k][0]:spans[min(k + per, len(spans)) - 1][1]] for k in range(0, len(spans), per)])
    return out


def chunked_by(tokenizer) -> str:
    if tokenizer is not None and getattr(tokenizer, "is_fast", False):
        return f"tokenizer {tokenizer_id(tokenizer)}"
    return f"words ({WORDS_PER_TOKEN:g} words a token)"


def sample_positions(n: int, max_rows: int | None, seed: int) -> list[int] | None:
    """A seeded random sample of ``max_rows`` of ``n`` positions, in order (None: all of them)."""
    if max_rows is None or max_rows >= n:
        return None
    return sorted(random.Random(seed).sample(range(n), max_rows))


# ---- small JSON caches --------------------------------------------------------------------------
def cached_json(kind: str, key: str, compute):
    """``compute()`` once per key, remembered under the project cache (per-source summaries and hashes)."""
    path = data_cache() / kind / f"{key}.json"
    if path.exists():
        try:
            return json.loads(path.read_text())["value"]
        except (OSError, ValueError, KeyError):
            pass
    value = compute()
    with contextlib.suppress(OSError):
        atomic_write_text(path, json.dumps({"value": value}))
    return value
