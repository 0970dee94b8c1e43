"""The data that unlearning is measured on: forget/retain corpora and multiple-choice sets."""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from unlearnviz.data.corpus import TextColumn, cached_json, digest
from unlearnviz.errors import UserError


@dataclass(frozen=True)
class MCQItem:
    """One multiple-choice fact.

    ``question`` is the stem as a cloze prefix (``"The capital of France is"``); the answer
    continues it. ``blind_question`` is the same stem with the subject removed, used for the
    subject-blind floor (what option popularity alone scores). ``subject`` is the text span that
    names the entity (used to mask training losses from the subject token on).
    """

    question: str
    choices: tuple[str, ...]
    answer: int
    blind_question: str = ""
    subject: str = ""
    relation: str = ""

    def __post_init__(self) -> None:
        if len(self.choices) < 2:
            raise UserError(f"item {self.question!r}: needs at least 2 choices")
        if not 0 <= self.answer < len(self.choices):
            raise UserError(
                f"item {self.question!r}: answer index {self.answer} out of range "
                f"0..{len(self.choices) - 1}"
            )

    @property
    def gold(self) -> str:
        return self.choices[self.answer]


PPL_HELDOUT_EVERY = 5  # every fifth retain text measures perplexity and is never trained on
OVERLAP_SAMPLE = 2000  # texts per side the n-gram overlap is measured on (a seeded sample beyond it)


def _every(texts: Sequence[str], keep) -> Sequence[str]:
    """The texts at the positions ``keep(i)`` accepts: a list from a list, a view of a TextColumn."""
    if isinstance(texts, TextColumn):
        import numpy as np

        pos = np.arange(len(texts))
        mask = keep(pos)
        return texts.select(np.flatnonzero(mask), tag=f"every:{keep.__name__}")
    return [t for i, t in enumerate(texts) if keep(i)]


def _train_position(i):
    return i % PPL_HELDOUT_EVERY != PPL_HELDOUT_EVERY - 1


def _heldout_position(i):
    return i % PPL_HELDOUT_EVERY == PPL_HELDOUT_EVERY - 1


def _sample(texts: Sequence[str], n: int, seed: int = 0) -> list[str]:
    if len(texts) <= n:
        return list(texts)
    keep = sorted(random.Random(seed).sample(range(len(texts)), n))
    return texts.take(keep) if isinstance(texts, TextColumn) else [texts[i] for i in keep]


@dataclass
class UnlearningData:
    """Forget and retain corpora plus MCQ sets, with provenance.

    ``forget_mcq_b`` is the held-out half B of the forget facts: relearning attacks train on
    half A (``forget_mcq`` minus B, and the texts that state those facts) and measure B.

    The corpora are lists, or for corpora of any size ``TextColumn``s (memory-mapped Arrow that
    index, slice and iterate like a list). ``parts``: for data composed of four sources, each
    part's provenance (its source string, kind, counts, how it was chunked).

    ``forget_probe`` / ``retain_probe``: the probe split, held-out phrasings of the same facts with
    freshly drawn distractors (``*_probe_of``: the main item's question each probes, "" where not
    known). No method trains or selects on them; the evaluation scores them beside the main items,
    so a fall on the main stems alone says the edit forgot a phrasing, not the fact. Optional.
    """

    name: str
    forget_texts: Sequence[str]
    retain_texts: Sequence[str]
    forget_mcq: list[MCQItem]
    retain_mcq: list[MCQItem]
    forget_half: list[str] = field(default_factory=list)  # "A"/"B" per forget_mcq item
    forget_text_half: Sequence[str] = field(default_factory=list)  # "A"/"B" per forget text
    provenance: str = ""
    card: dict = field(default_factory=dict)
    parts: dict = field(default_factory=dict)
    forget_probe: list[MCQItem] = field(default_factory=list)
    retain_probe: list[MCQItem] = field(default_factory=list)
    forget_probe_of: list[str] = field(default_factory=list)
    retain_probe_of: list[str] = field(default_factory=list)
    _memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not len(self.forget_texts):
            raise UserError(f"data {self.name!r}: the forget corpus is empty")
        if not len(self.retain_texts):
            raise UserError(f"data {self.name!r}: the retain corpus is empty")
        if not self.forget_half:
            self.forget_half = ["A" if i % 2 == 0 else "B" for i in range(len(self.forget_mcq))]
        if not len(self.forget_text_half):
            self.forget_text_half = ["A"] * len(self.forget_texts)
        for split in ("forget", "retain"):
            probes, of = getattr(self, f"{split}_probe"), getattr(self, f"{split}_probe_of")
            if not of:
                setattr(self, f"{split}_probe_of", [""] * len(probes))
            elif len(of) != len(probes):
                raise ValueError(f"{len(probes)} {split} probes but {len(of)} {split}_probe_of entries")

    @property
    def has_probes(self) -> bool:
        return bool(self.forget_probe or self.retain_probe)

    @property
    def retain_train_texts(self) -> Sequence[str]:
        """The retain texts methods train on: all but every fifth, which are kept out so that
        ``ppl_texts`` is a held-out perplexity (a method that trains retain NLL, as MRP does,
        would otherwise lower the perplexity of its own training texts and look harmless)."""
        if len(self.retain_texts) < PPL_HELDOUT_EVERY:
            return list(self.retain_texts) if not isinstance(self.retain_texts, TextColumn) else self.retain_texts
        return _every(self.retain_texts, _train_position)

    @property
    def ppl_texts(self) -> Sequence[str]:
        """Held-out retain texts for perplexity (every fifth; all of them when there are fewer than five)."""
        if len(self.retain_texts) < PPL_HELDOUT_EVERY:
            return list(self.retain_texts) if not isinstance(self.retain_texts, TextColumn) else self.retain_texts
        return _every(self.retain_texts, _heldout_position)

    def forget_mcq_half(self, half: str) -> list[MCQItem]:
        return [it for it, h in zip(self.forget_mcq, self.forget_half) if h == half]

    def forget_texts_half(self, half: str) -> Sequence[str]:
        if isinstance(self.forget_texts, TextColumn):
            halves = self.forget_text_half
            pos = halves.positions_equal(half) if isinstance(halves, TextColumn) else \
                [i for i, h in enumerate(halves) if h == half]
            return self.forget_texts.select(pos, tag=f"half:{half}")
        return [t for t, h in zip(self.forget_texts, self.forget_text_half) if h == half]

    def _arrow_key(self) -> str | None:
        """A key of the corpora when they are files (TextColumns with fingerprints), else None."""
        cols = (self.forget_texts, self.retain_texts)
        if not any(isinstance(c, TextColumn) and c.fingerprint for c in cols):
            return None
        return digest([c.fingerprint if isinstance(c, TextColumn) and c.fingerprint else
                       hashlib.sha256(json.dumps(list(c)).encode()).hexdigest() for c in cols])

    def content_hash(self) -> str:
        """Hash of everything that changes results; written into edit manifests. The SHA-256 of
        the JSON of [forget texts, retain texts, forget items, retain items], written a text at a
        time (the same hash whether the corpora are lists or files); for file-backed corpora it is
        computed once per source and remembered in the project cache."""
        mcq = [[asdict(i) for i in self.forget_mcq], [asdict(i) for i in self.retain_mcq]]
        key = self._arrow_key()
        if key is None:
            return self._with_probes(_stream_hash(self.forget_texts, self.retain_texts, *mcq))
        key = digest(key, hashlib.sha256(json.dumps(mcq, sort_keys=True).encode()).hexdigest())
        if key not in self._memo:
            self._memo[key] = cached_json("hashes", key, lambda: _stream_hash(self.forget_texts, self.retain_texts,
                                                                              *mcq))
        return self._with_probes(self._memo[key])

    def _with_probes(self, base: str) -> str:
        """The hash with the probe split folded in, when there is one (data without probes keep
        the hash they always had, so older run folders and bundles still match)."""
        if not self.has_probes:
            return base
        probes = [[asdict(i) for i in self.forget_probe], [asdict(i) for i in self.retain_probe],
                  self.forget_probe_of, self.retain_probe_of]
        return hashlib.sha256(json.dumps([base, probes], sort_keys=True).encode()).hexdigest()[:16]

    def overlap(self) -> dict[str, float]:
        """Unigram and bigram overlap between the forget and retain corpora (as SRMU reports),
        on a seeded sample of OVERLAP_SAMPLE texts per side where a corpus is larger."""
        key = self._arrow_key()

        def compute():
            return corpus_overlap(_sample(self.forget_texts, OVERLAP_SAMPLE), _sample(self.retain_texts, OVERLAP_SAMPLE))

        if key is None:
            return compute()
        key = digest(key, OVERLAP_SAMPLE, "overlap")
        if key not in self._memo:
            self._memo[key] = cached_json("overlap", key, compute)
        return self._memo[key]

    def summary(self) -> dict:
        ov = self.overlap()
        sampled = max(len(self.forget_texts), len(self.retain_texts)) > OVERLAP_SAMPLE
        return {
            "name": self.name,
            "forget_texts": len(self.forget_texts),
            "retain_texts": len(self.retain_texts),
            "forget_mcq": len(self.forget_mcq),
            "retain_mcq": len(self.retain_mcq),
            "forget_half_b": len(self.forget_mcq_half("B")),
            "unigram_overlap": round(ov["unigram"], 4),
            "bigram_overlap": round(ov["bigram"], 4),
            "overlap_sample": OVERLAP_SAMPLE if sampled else None,  # texts per side, when sampled
            **({"forget_probe": len(self.forget_probe), "retain_probe": len(self.retain_probe)}
               if self.has_probes else {}),
        }


def _stream_hash(forget: Sequence[str], retain: Sequence[str], forget_mcq: list, retain_mcq: list) -> str:
    """``sha256(json.dumps([forget, retain, forget_mcq, retain_mcq], sort_keys=True))`` fed piece
    by piece (json.dumps of a list is "[" + ", ".join(items) + "]"), so no corpus-sized string."""
    h = hashlib.sha256(b"[")
    for k, seq in enumerate((forget, retain, forget_mcq, retain_mcq)):
        if k:
            h.update(b", ")
        h.update(b"[")
        for i, item in enumerate(seq):
            if i:
                h.update(b", ")
            h.update(json.dumps(item, sort_keys=True).encode())
        h.update(b"]")
    h.update(b"]")
    return h.hexdigest()[:16]


_WORD = re.compile(r"[A-Za-z0-9']+")


def _ngrams(texts: Sequence[str], n: int) -> set[tuple[str, ...]]:
    grams: set[tuple[str, ...]] = set()
    for t in texts:
        words = [w.lower() for w in _WORD.findall(t)]
        grams.update(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return grams


def corpus_overlap(forget: Sequence[str], retain: Sequence[str]) -> dict[str, float]:
    """Share of the forget corpus's distinct n-grams that also occur in the retain corpus.

    Dang et al. (quoted by SRMU) report overlap as the fraction of forget n-grams found in the
    retain corpus; we use distinct lower-cased word n-grams, which is exact and reproducible.
    """
    out = {}
    for name, n in (("unigram", 1), ("bigram", 2)):
        f, r = _ngrams(forget, n), _ngrams(retain, n)
        out[name] = len(f & r) / len(f) if f else 0.0
    return out
