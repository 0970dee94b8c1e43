"""Load forget/retain data from local files, built-in sets or Hugging Face datasets.

One row per record, in JSONL, CSV or Parquet (schema in the README):

- a corpus text: ``split`` (forget | retain), ``text``, optional ``half`` (A | B);
- a multiple-choice item: ``split``, ``question`` (a cloze stem or a question), ``choices`` (a
  list; in CSV a JSON list or ``|``-separated), ``answer`` (0-based index), optional
  ``blind_question`` (the stem with the subject removed, for the floor), ``subject``,
  ``relation`` and ``half``. Other columns are allowed and ignored;
- a probe item (optional; the probe split): the same fields with ``split`` forget_probe |
  retain_probe, and optional ``probe_of`` (the question of the item it rephrases). Probes are
  held-out phrasings of the same facts, scored beside the main items and never trained on.

Every bad row is reported with its line number and what is wrong, all at once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from unlearnviz.data.schema import MCQItem, UnlearningData
from unlearnviz.errors import UserError

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "data"
MAX_FILE_BYTES = 20 * 2**20  # single files up to this size are read into lists; larger ones as Arrow
LOW_ENTANGLEMENT_SET = "geo_europe_vs_science_books"
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
PROBE_SPLITS = ("forget_probe", "retain_probe")  # the probe split's rows (optional in any file)


def _read_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) pairs; line numbers are 1-based file lines (CSV: header is line 1)."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        rows, errors = [], []
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"{path.name}: not UTF-8 text (byte {exc.start})") from None
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                errors.append(f"line {n}: invalid JSON ({exc.msg})")
                continue
            except RecursionError:  # brackets nested thousands deep: no row of this format
                errors.append(f"line {n}: invalid JSON (nested too deeply)")
                continue
            if not isinstance(row, dict):
                errors.append(f"line {n}: expected a JSON object")
                continue
            rows.append((n, row))
        if errors:
            raise UserError(f"{path.name}: " + "; ".join(errors[:10])
                            + (f"; and {len(errors) - 10} more" if len(errors) > 10 else ""))
        return rows
    import pandas as pd

    try:
        if suffix == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
            first_line = 2
        elif suffix == ".parquet":
            frame = pd.read_parquet(path)
            first_line = 1
        else:
            raise UserError(f"{path.name}: unsupported file type; use {', '.join(SUFFIXES)}")
    except UserError:
        raise
    except UnicodeDecodeError:
        raise UserError(f"{path.name}: not UTF-8 text") from None
    except Exception as exc:  # pandas/pyarrow raise many types for malformed files
        raise UserError(f"{path.name}: cannot read ({str(exc).splitlines()[0][:160]})") from None
    return [(first_line + i, {k: v for k, v in row.items()}) for i, row in enumerate(frame.to_dict("records"))]


MAX_CHOICES = 26  # options of one item: lettered scoring names each by a letter, A to Z


def _choices(value) -> list[str]:
    if isinstance(value, str):
        value = value.strip()
        if value.startswith("["):
            value = json.loads(value)
        else:
            value = [v.strip() for v in value.split("|")]
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not all(isinstance(c, str) and c for c in value):
        raise ValueError("'choices' must be a list of non-empty strings")
    if len(value) > MAX_CHOICES:
        raise ValueError(f"'choices' has {len(value):,} options; the limit is {MAX_CHOICES} (A to Z)")
    return list(value)


def mcq_from_row(row: dict, letters: bool = False) -> MCQItem:
    """One multiple-choice item from a row's ``question``, ``choices``, ``answer`` (a 0-based
    index; with ``letters`` also A, B, ...) and optional ``blind_question``, ``subject``,
    ``relation``; a ValueError says what is wrong."""
    if row.get("choices") is None or row.get("answer") in (None, ""):
        raise ValueError("an item with 'question' needs 'choices' and 'answer'")
    value = row["answer"]
    if letters and isinstance(value, str) and len(value.strip()) == 1 and value.strip().isalpha():
        value = ord(value.strip().upper()) - ord("A")
    try:
        answer = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"'answer' must be an integer index{' or a letter' if letters else ''}, "
                         f"got {row['answer']!r}") from None
    choices = _choices(row["choices"])
    if not 0 <= answer < len(choices):
        raise ValueError(f"'answer' {answer} is out of range 0..{len(choices) - 1}")
    return MCQItem(question=str(row["question"]), choices=tuple(choices), answer=answer,
                   blind_question=str(row.get("blind_question") or ""),
                   subject=str(row.get("subject") or ""),
                   relation=str(row.get("relation") or ""))


def rows_to_data(rows: list[tuple[int, dict]], name: str, provenance: str,
                 default_split: str | None = None, card: dict | None = None) -> UnlearningData:
    """Build UnlearningData from rows, collecting every bad row's line and reason."""
    forget_texts, retain_texts, forget_mcq, retain_mcq = [], [], [], []
    forget_half, text_half, errors = [], [], []
    probes: dict[str, tuple[list[MCQItem], list[str]]] = {"forget": ([], []), "retain": ([], [])}
    for n, row in rows:
        try:
            if "split" not in row and not default_split:
                raise ValueError("no 'split' column (forget | retain); columns found: "
                                 f"{', '.join(sorted(map(str, row))) or 'none'}")
            split = str(row.get("split") or default_split or "").strip().lower()
            if split not in ("forget", "retain", *PROBE_SPLITS):
                raise ValueError("'split' must be 'forget' or 'retain' (or forget_probe / retain_probe for a probe "
                                 "item)")
            half = str(row.get("half") or "").strip().upper()
            if half not in ("", "A", "B"):
                raise ValueError("'half' must be A or B")
            if split in PROBE_SPLITS:
                if row.get("question") in (None, ""):
                    raise ValueError(f"a {split} row is a multiple-choice item: it needs 'question', 'choices' and "
                                     "'answer'")
                items, of = probes[split.split("_", 1)[0]]
                items.append(mcq_from_row(row))
                of.append(str(row.get("probe_of") or ""))
            elif row.get("question") not in (None, ""):
                item = mcq_from_row(row)
                if split == "forget":
                    forget_mcq.append(item)
                    forget_half.append(half)
                else:
                    retain_mcq.append(item)
            elif str(row.get("text") or "").strip():
                text = str(row["text"])
                if split == "forget":
                    forget_texts.append(text)
                    text_half.append(half)
                else:
                    retain_texts.append(text)
            else:
                raise ValueError("needs a non-empty 'text' (corpus row) or 'question' (MCQ row); "
                                 f"columns found: {', '.join(sorted(map(str, row))) or 'none'}")
        except (ValueError, json.JSONDecodeError) as exc:
            errors.append(f"line {n}: {exc}")
        except RecursionError:  # a 'choices' cell of brackets nested thousands deep
            errors.append(f"line {n}: 'choices' is nested too deeply")
    if errors:
        raise UserError(f"{name}: " + "; ".join(errors[:10])
                        + (f"; and {len(errors) - 10} more bad rows" if len(errors) > 10 else ""))
    if not forget_texts and not forget_mcq:
        raise UserError(f"{name}: the forget set is empty (no rows with split=forget)")
    if any(h == "" for h in forget_half):
        forget_half = [h or ("A" if i % 2 == 0 else "B") for i, h in enumerate(forget_half)]
    if not forget_texts:  # corpora default to the MCQ facts stated as sentences
        forget_texts = [f"{it.question} {it.gold}." for it in forget_mcq]
        text_half = list(forget_half)
    # Texts without a half alternate A/B, so relearning on A never trains on every forget text.
    text_half = [h or ("A" if i % 2 == 0 else "B") for i, h in enumerate(text_half)]
    if not retain_texts and retain_mcq:
        retain_texts = [f"{it.question} {it.gold}." for it in retain_mcq]
    return UnlearningData(name=name, forget_texts=forget_texts, retain_texts=retain_texts,
                          forget_mcq=forget_mcq, retain_mcq=retain_mcq, forget_half=forget_half,
                          forget_text_half=text_half, provenance=provenance, card=card or {},
                          forget_probe=probes["forget"][0], forget_probe_of=probes["forget"][1],
                          retain_probe=probes["retain"][0], retain_probe_of=probes["retain"][1])


def builtin_names() -> list[str]:
    return sorted(p.name[: -len(".jsonl")] for p in ASSETS.glob("*.jsonl"))


def builtin_card(name: str) -> dict:
    path = ASSETS / f"{name}.card.json"
    return json.loads(path.read_text()) if path.exists() else {}


def load_builtin(name: str) -> UnlearningData:
    path = ASSETS / f"{name}.jsonl"
    if "/" in name or ".." in name or not path.exists():
        raise UserError(f"unknown built-in set {name!r}; available: {', '.join(builtin_names()) or 'none'}")
    return rows_to_data(_read_rows(path), name=f"builtin:{name}", provenance=f"built-in set {name}",
                        card=builtin_card(name))


def load_file(path: Path, name: str | None = None, max_bytes: int | None = None) -> UnlearningData:
    """A single data file in the row format above, read into lists. ``max_bytes``: the caller's
    cap (the dashboard's for visitor uploads; None for the operator)."""
    if not path.exists():
        raise UserError(f"data file not found: {path}")
    if path.is_dir() or path.suffix.lower() not in SUFFIXES:
        raise UserError(f"{path.name}: unsupported data file; use {', '.join(SUFFIXES)}")
    if max_bytes is not None and path.stat().st_size > max_bytes:
        raise UserError(f"{path.name}: {path.stat().st_size / 2**20:.0f} MB is over the "
                        f"{max_bytes / 2**20:.0f} MB limit for data files")
    if path.stat().st_size == 0:
        raise UserError(f"{path.name}: the file is empty")
    return rows_to_data(_read_rows(path), name=name or path.name, provenance=f"file {path.name}")


def load_hf(spec: str) -> UnlearningData:
    """``DATASET[:CONFIG]`` in WMDP's shape (question/choices/answer, or text), all rows forget.

    Rows with a ``split`` column keep it. Retain data, when the dataset has none, comes from the
    built-in low-entanglement set so that retain accuracy stays measurable.
    """
    dataset, _, config = spec.partition(":")
    if os.environ.get("HF_DATASETS_OFFLINE", "0") in ("1", "true") or \
            os.environ.get("HF_HUB_OFFLINE", "0") in ("1", "true"):
        raise UserError(f"cannot load hf:{spec}: offline (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE=1); "
                        "use a built-in set or a local JSONL/CSV/Parquet file")
    try:
        import datasets

        ds = datasets.load_dataset(dataset, config or None)
    except Exception as exc:
        raise UserError(f"cannot load hf:{spec}: {str(exc).splitlines()[0][:200]}") from None
    split_name = "test" if "test" in ds else next(iter(ds))
    rows = [(i + 1, dict(r)) for i, r in enumerate(ds[split_name])]
    data = rows_to_data(rows, name=f"hf:{spec}", provenance=f"Hugging Face dataset {spec} ({split_name})",
                        default_split="forget")
    if not data.retain_mcq:
        fallback = load_builtin(LOW_ENTANGLEMENT_SET)
        data.retain_mcq, data.retain_texts = fallback.retain_mcq, fallback.retain_texts
        data.provenance += f"; retain from {fallback.name}"
    return data


def load_single(spec: str, max_bytes: int | None = None) -> UnlearningData:
    """One single spec: ``builtin:NAME``, ``hf:DATASET[:CONFIG]``, ``synthetic[:ENTANGLEMENT]`` or a
    file path (read into lists; ``unlearnviz.data.compose.load_data`` reads large files and
    composed specs as Arrow)."""
    if spec.startswith("builtin:"):
        return load_builtin(spec.split(":", 1)[1])
    if spec.startswith("hf:"):
        return load_hf(spec[3:])
    if spec == "synthetic" or spec.startswith("synthetic:"):
        from unlearnviz.data.synthetic import load_synthetic

        return load_synthetic(spec)
    return load_file(Path(spec).expanduser(), max_bytes=max_bytes)
