"""An offline WMDP-shaped data set, cut from real text that installs without a hub.

WMDP (Li et al., arXiv 2403.03218) unlearns from a forget corpus of long domain documents (PubMed
papers chunked to 512 tokens), keeps a retain corpus of general text (WikiText), and measures a
forget multiple-choice set (WMDP-Bio) and a retain one (MMLU). Tests and benchmarks of that
workload need the same shape with nothing downloaded at run time, so this fixture takes its text
from GCIDE (the GNU Collaborative International Dictionary of English: Webster's 1913 and
WordNet), which Debian packages as dict-gcide (``make corpora`` unpacks its data files):

- forget corpus: the dictionary's life-science entries (those marked Zool., Bot., Anat., Physiol.,
  Med., Biol., Pathol., ..., or naming a genus or species: the bio analogue), packed in dictionary
  order into documents of at most ``tokens`` tokens of the default model's tokenizer (an entry
  longer than that is split at paragraph and word boundaries, as WMDP's loader chunks papers);
- retain corpus: entries with no life-science mark (general vocabulary), packed the same way;
- forget / retain questions: cloze items "In zoology, the term for "<definition>" is" with the
  entry's headword and three headwords of the same field as choices, each from an entry inside
  the corpus of its split (so the documents hold every answer).

Everything is deterministic for a seed: the order in which runs of entries are packed is a seeded
shuffle, and asking for fewer documents gives a prefix of the larger set. The files are plain
JSONL in the loaders' row format (``text`` rows for corpora, ``question``/``choices``/``answer``
rows for items, each with its ``split``), written once to the project cache under a key of every
input (the GCIDE files, the tokenizer, the arguments).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from unlearnviz.data.loaders import rows_to_data
from unlearnviz.data.schema import UnlearningData
from unlearnviz.errors import UserError
from unlearnviz.io import atomic_write_text
from unlearnviz.model.loading import cache_dir, prepare_default

VERSION = 2
GROUP = 32  # entries per run: runs are shuffled, entries inside a run keep dictionary order
SYSTEM_GCIDE = Path("/usr/share/dictd")
_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}

# GCIDE's subject marks of the life sciences ("(Zool.)", "(Zo["o]l.)", "(Bot. & Med.)"), and the
# field each names in a question
_FIELDS = {"zo": "zoology", "bot": "botany", "anat": "anatomy", "physiol": "physiology", "med": "medicine",
           "biol": "biology", "pathol": "pathology", "surg": "surgery", "embryol": "embryology",
           "bacteriol": "bacteriology", "biochem": "biochemistry", "microbiol": "microbiology",
           "histol": "histology", "entom": "entomology", "ornith": "ornithology", "ichth": "ichthyology"}
_BIO_MARK = re.compile(r"\((?:[^()]{0,24}?\b)?(Zo(?:\[\"o\]|\W{0,2}o|\u00f6)?l|Bot|Anat|Physiol|Med|Biol|Pathol|Surg|Embryol|"
                       r"Bacteriol|Biochem|Microbiol|Histol|Entom|Ornith|Ichth)[a-z]*\.?[^()]{0,24}\)")
# words that make an unmarked (often WordNet) entry biological all the same
_BIO_WORDS = re.compile(r"\b(genus|genera|species|family \{?[A-Z][a-z]+idae|order \{?[A-Z][a-z]+)\b")
_SOURCE = re.compile(r"\[(?:[^\[\]]*(?:Webster|WordNet|PJC|Dict\.)[^\[\]]*)\]")
_HEAD = re.compile(r"^(?P<hw>[A-Z][a-z]{2,}(?:[ -][a-z]{2,})?) \\[^\\]*\\")
_SKIP_DEF = re.compile(r"^(See|Same as|Of or pertaining|Pertaining|Relating|Alt\.|Pl\.|pl\.|An? old|Obs|"
                       r"Any one of|One of|A variety of|The act of|The state of|Like|Resembling)\b")


@dataclass(frozen=True)
class FixtureFiles:
    """The fixture's JSONL files: each part alone (for composable sources) and all four in one
    file (``combined``: what ``--data FILE`` reads)."""

    folder: Path
    forget_corpus: Path
    retain_corpus: Path
    forget_mcq: Path
    retain_mcq: Path
    combined: Path

    @property
    def meta(self) -> dict:
        """Counts, token statistics and provenance, as written with the files."""
        return json.loads((self.folder / "meta.json").read_text())


def gcide_folder() -> Path:
    """Where GCIDE's ``gcide.index`` and ``gcide.dict.dz`` are: ``UNLEARNVIZ_GCIDE``, the project
    cache (``make corpora``) or Debian's own install of dict-gcide."""
    env = os.environ.get("UNLEARNVIZ_GCIDE")
    candidates = [Path(env)] if env else [cache_dir() / "corpora" / "gcide", SYSTEM_GCIDE]
    for folder in candidates:
        if (folder / "gcide.index").is_file() and (folder / "gcide.dict.dz").is_file():
            return folder
    where = f"UNLEARNVIZ_GCIDE={env} has" if env else "neither the project cache nor /usr/share/dictd has"
    raise UserError(f"the WMDP-shaped fixture needs GCIDE, and {where} gcide.index and gcide.dict.dz: run "
                    "`make corpora` (Debian's dict-gcide) or point UNLEARNVIZ_GCIDE at a folder with both files")


def _b64(s: str) -> int:
    v = 0
    for ch in s:
        v = v * 64 + _B64[ch]
    return v


def clean(article: str) -> str:
    """One entry as prose: source marks dropped, each paragraph's hard-wrapped lines joined,
    GCIDE's braces (cross-references, italics) removed; accent codes are kept as written."""
    text = _SOURCE.sub("", article).replace("{", "").replace("}", "")
    paras = [" ".join(line.strip() for line in p.splitlines() if line.strip()) for p in re.split(r"\n\s*\n", text)]
    return "\n".join(p for p in paras if p)


def read_entries(folder: Path | None = None) -> list[str]:
    """Every GCIDE entry once (headwords that share an entry share it), as written, in dictionary
    order; the database's own notes (``00-database-*``) left out. Entries are cleaned
    (:func:`clean`) where they are used: most of the dictionary never is."""
    folder = folder or gcide_folder()
    raw = gzip.open(folder / "gcide.dict.dz").read()  # dictzip is gzip with an index in its header
    spans = {}
    for line in (folder / "gcide.index").read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) != 3 or parts[0].startswith("00-database") or parts[0].startswith("00database"):
            continue
        spans[_b64(parts[1])] = _b64(parts[2])
    out = []
    for offset in sorted(spans):
        text = raw[offset:offset + spans[offset]].decode("utf-8", "replace")
        if len(text) >= 20 and "GNU General Public License" not in text:
            out.append(text)
    return out


def split_domains(entries: list[str]) -> tuple[list[str], list[str]]:
    """(life-science entries, general entries): a mark of the life sciences or a taxonomic word
    (WordNet's entries carry no marks) makes an entry forget; every other entry is retain."""
    forget, retain = [], []
    for e in entries:
        (forget if _BIO_MARK.search(e) or _BIO_WORDS.search(e) else retain).append(e)
    return forget, retain


def _field(mark: str) -> str:
    key = mark.lower()
    return next((f for k, f in _FIELDS.items() if key.startswith(k)), "biology")


def _strip_brackets(s: str) -> str:
    """Leading bracketed etymologies (nested: GCIDE writes accents as [ae], ["o])."""
    s = s.lstrip()
    while s.startswith("["):
        depth = 0
        for i, ch in enumerate(s):
            depth += (ch == "[") - (ch == "]")
            if depth == 0:
                s = s[i + 1:].lstrip()
                break
        else:
            return ""
    return s


def parse_item(entry: str, bio: bool) -> tuple[str, str, str] | None:
    """(headword, field, definition) of a cleaned entry's first sense, or None where it makes no
    fair question (a cross-reference, markup left in it, the headword inside its own definition)."""
    first = entry.split("\n", 1)[0]
    m = _HEAD.match(first)
    if not m:
        return None
    hw = m.group("hw")
    rest = first[m.end():]
    rest = re.sub(r"^\s*\([^)]*\)", "", rest)  # pronunciation
    rest = re.sub(r"^\s*,\s*(?:[a-z]+\.\s*(?:&\s*)?)+", "", rest)  # part of speech
    rest = _strip_brackets(rest)
    rest = re.sub(r"^\s*1\.\s*", "", rest)
    field = "English"
    while True:
        tag = re.match(r"^\s*\(([^()]{2,30})\)\s*", rest)
        if not tag:
            break
        mark = _BIO_MARK.match(tag.group(0).strip())
        if mark:
            field = _field(mark.group(1))
        rest = rest[tag.end():]
    if bio and field == "English":
        return None
    d = re.match(r"^([A-Z][^;:.]{24,150}?)(?:[.;:](?:\s|$))", rest)
    if not d or _SKIP_DEF.match(d.group(1)):
        return None
    definition = d.group(1).strip()
    if any(c in definition for c in '[]\\"=*') or "--" in definition:
        return None
    stem = hw.lower()[:5]
    if stem in definition.lower():
        return None
    return hw, field, definition[0].lower() + definition[1:]


def _tokens(tok, texts: list[str]) -> list[int]:
    return [len(ids) for ids in tok(texts, add_special_tokens=True)["input_ids"]] if texts else []


def _pieces(tok, text: str, budget: int) -> list[str]:
    """A text cut at paragraph, then word boundaries into pieces of at most ``budget`` tokens."""
    out = []
    for para in text.split("\n"):
        while para:
            enc = tok(para, add_special_tokens=False, return_offsets_mapping=True)
            if len(enc["input_ids"]) <= budget:
                out.append(para)
                break
            end = enc["offset_mapping"][budget - 1][1]
            cut = para.rfind(" ", 0, end)
            cut = end if cut <= 0 else cut
            out.append(para[:cut].rstrip())
            para = para[cut:].lstrip()
    return out


def pack_documents(tok, entries: list[str], n: int, tokens: int, seed: int) -> tuple[list[str], list[list[int]]]:
    """``n`` documents of at most ``tokens`` tokens (special tokens included), packed from runs of
    GROUP entries taken in a seeded order; with each, the indices of the entries it holds whole.
    Raises where the entries make fewer than ``n``."""
    runs = list(range(0, len(entries), GROUP))
    random.Random(seed).shuffle(runs)
    docs: list[list[tuple[str, int | None]]] = []  # (piece, entry index where the piece is a whole entry)
    cur: list[tuple[str, int | None]] = []
    cur_len = 0
    for start in runs:
        if len(docs) >= n:
            break
        texts = {i: clean(entries[i]) for i in range(start, min(start + GROUP, len(entries)))}
        idx = [i for i, t in texts.items() if len(t) >= 20]
        for i, length in zip(idx, _tokens(tok, [texts[i] for i in idx])):
            pieces = [(texts[i], length, i)] if length <= tokens else \
                [(p, _tokens(tok, [p])[0], None) for p in _pieces(tok, texts[i], tokens - 2)]
            for piece, plen, whole in pieces:
                if cur and cur_len + plen + 1 > tokens:  # + 1: the separator (checked on the text below)
                    if plen > tokens // 2 and cur_len < tokens // 2:  # a long piece alone; keep filling
                        docs.append([(piece, whole)])
                        continue
                    docs.append(cur)
                    cur, cur_len = [], 0
                cur.append((piece, whole))
                cur_len += plen + (1 if len(cur) > 1 else 0)
    if len(docs) < n and cur:
        docs.append(cur)
    docs = docs[:n]
    texts = ["\n\n".join(p for p, _ in d) for d in docs]
    # exact check: a separator may merge with its neighbours otherwise than estimated
    for k, length in enumerate(_tokens(tok, texts)):
        while length > tokens and len(docs[k]) > 1:
            docs[k] = docs[k][:-1]
            texts[k] = "\n\n".join(p for p, _ in docs[k])
            length = _tokens(tok, [texts[k]])[0]
    if len(docs) < n:
        raise UserError(f"the WMDP-shaped fixture: these entries make only {len(docs)} documents of at most "
                        f"{tokens} tokens; ask for at most {len(docs)} (or fewer tokens per document)")
    return texts, [[i for _, i in d if i is not None] for d in docs]


def make_items(entries: list[str], members: list[list[int]], bio: bool, n: int, seed: int) -> list[dict]:
    """Up to ``n`` cloze items from the entries the documents hold, each with three distractor
    headwords of its field (else of its domain)."""
    rng = random.Random(seed)
    parsed = []
    for i in sorted({i for m in members for i in m}):
        got = parse_item(clean(entries[i]), bio)
        if got:
            parsed.append(got)
    seen, unique = set(), []
    for hw, field, definition in parsed:
        if hw.lower() not in seen:
            seen.add(hw.lower())
            unique.append((hw, field, definition))
    rng.shuffle(unique)
    by_field: dict[str, list[str]] = {}
    for hw, field, _ in unique:
        by_field.setdefault(field, []).append(hw)
    everyone = [hw for hw, _, _ in unique]
    items = []
    for hw, field, definition in unique[:n]:
        pool = [h for h in by_field[field] if h != hw]
        if len(pool) < 3:
            pool = [h for h in everyone if h != hw]
        if len(pool) < 3:
            continue
        choices = rng.sample(pool, 3)
        answer = rng.randrange(4)
        choices.insert(answer, hw)
        where = f"In {field}, the term" if bio else "In English, the word"
        items.append({"split": "forget" if bio else "retain", "question": f'{where} for "{definition}" is',
                      "choices": choices, "answer": answer, "blind_question": f"{where} for it is",
                      "relation": field})
    return items


def _tokenizer_key(tok) -> str:
    probe = tok("In zoology, the term for 1913 is Caloriduct.", add_special_tokens=True)["input_ids"]
    return f"{type(tok).__name__}:{len(tok)}:{probe}"


def _default_tokenizer_key() -> str:
    """The default model's tokenizer by its files' hashes: a cached fixture is found without
    loading the tokenizer."""
    folder = prepare_default()
    files = sorted(p for p in folder.iterdir() if p.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")))
    return "default:" + ",".join(f"{p.name}={hashlib.sha256(p.read_bytes()).hexdigest()[:16]}" for p in files)


def default_tokenizer():
    """The default model's tokenizer (the model is converted into the cache on first use)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(prepare_default())


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def wmdp_shaped(n_forget: int = 4000, n_retain: int = 4000, tokens: int = 512, n_mcq: int = 200,
                seed: int = 0, tokenizer=None, log: Callable[[str], None] | None = None) -> FixtureFiles:
    """The WMDP-shaped fixture's files (built on first use, about a minute at the default sizes;
    then read from the cache). ``tokenizer``: whose tokens ``tokens`` counts (the default
    model's when None)."""
    if min(n_forget, n_retain) < 1 or n_mcq < 0 or tokens < 16:
        raise UserError("the WMDP-shaped fixture needs n_forget, n_retain ≥ 1, n_mcq ≥ 0 and tokens ≥ 16")
    folder = gcide_folder()
    index = folder / "gcide.index"
    tok_key = _tokenizer_key(tokenizer) if tokenizer is not None else _default_tokenizer_key()
    key = hashlib.sha256(json.dumps([VERSION, n_forget, n_retain, tokens, n_mcq, seed, tok_key,
                                     hashlib.sha256(index.read_bytes()).hexdigest(),
                                     (folder / "gcide.dict.dz").stat().st_size]).encode()).hexdigest()[:16]
    out = cache_dir() / "fixtures" / f"wmdp-shaped-{key}"
    files = FixtureFiles(out, out / "forget_corpus.jsonl", out / "retain_corpus.jsonl", out / "forget_mcq.jsonl",
                         out / "retain_mcq.jsonl", out / "wmdp_shaped.jsonl")
    if (out / "meta.json").is_file():
        return files
    if log:
        log(f"building the WMDP-shaped fixture ({n_forget} + {n_retain} documents) from {folder}")
    tok = tokenizer if tokenizer is not None else default_tokenizer()
    forget_entries, retain_entries = split_domains(read_entries(folder))
    f_docs, f_members = pack_documents(tok, forget_entries, n_forget, tokens, seed)
    r_docs, r_members = pack_documents(tok, retain_entries, n_retain, tokens, seed + 1)
    f_items = make_items(forget_entries, f_members, True, n_mcq, seed)
    r_items = make_items(retain_entries, r_members, False, n_mcq, seed + 1)
    parts = {files.forget_corpus: [{"split": "forget", "text": t} for t in f_docs],
             files.retain_corpus: [{"split": "retain", "text": t} for t in r_docs],
             files.forget_mcq: f_items, files.retain_mcq: r_items}
    for path, rows in parts.items():
        _write_jsonl(path, rows)
    _write_jsonl(files.combined, [r for rows in parts.values() for r in rows])
    lengths = sorted(_tokens(tok, f_docs) + _tokens(tok, r_docs))
    meta = {"version": VERSION, "source": "GCIDE 0.48 (Debian dict-gcide): life-science entries forget, "
                                          "general entries retain", "gcide": str(folder), "seed": seed,
            "tokens": tokens, "forget_docs": len(f_docs), "retain_docs": len(r_docs),
            "forget_mcq": len(f_items), "retain_mcq": len(r_items),
            "distinct_entries": {"forget": len(forget_entries), "retain": len(retain_entries)},
            "doc_tokens": {"min": lengths[0], "median": lengths[len(lengths) // 2], "max": lengths[-1],
                           "total": sum(lengths)}}
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2) + "\n")  # last: marks the set complete
    return files


def load_wmdp_shaped(**kwargs) -> UnlearningData:
    """The fixture as one UnlearningData (arguments as for :func:`wmdp_shaped`)."""
    files = wmdp_shaped(**kwargs)
    rows = []
    for path in (files.forget_corpus, files.retain_corpus, files.forget_mcq, files.retain_mcq):
        rows += [(n, json.loads(line)) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)]
    return rows_to_data(rows, name="fixture:wmdp-shaped", provenance=files.meta["source"])


# The fixtures by name, for the data sources that name them
FIXTURES: dict[str, Callable[..., FixtureFiles]] = {"wmdp-shaped": wmdp_shaped}
