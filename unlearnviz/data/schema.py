"""The data that unlearning is measured on: forget/retain corpora and multiple-choice sets."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field

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


@dataclass
class UnlearningData:
    """Forget and retain corpora plus MCQ sets, with provenance.

    ``forget_mcq_b`` is the held-out half B of the forget facts: relearning attacks train on
    half A (``forget_mcq`` minus B, and the texts that state those facts) and measure B.
    """

    name: str
    forget_texts: list[str]
    retain_texts: list[str]
    forget_mcq: list[MCQItem]
    retain_mcq: list[MCQItem]
    forget_half: list[str] = field(default_factory=list)  # "A"/"B" per forget_mcq item
    forget_text_half: list[str] = field(default_factory=list)  # "A"/"B" per forget text
    provenance: str = ""
    card: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.forget_texts:
            raise UserError(f"data {self.name!r}: the forget corpus is empty")
        if not self.retain_texts:
            raise UserError(f"data {self.name!r}: the retain corpus is empty")
        if not self.forget_half:
            self.forget_half = ["A" if i % 2 == 0 else "B" for i in range(len(self.forget_mcq))]
        if not self.forget_text_half:
            self.forget_text_half = ["A"] * len(self.forget_texts)

    @property
    def retain_train_texts(self) -> list[str]:
        """The retain texts methods train on: all but every fifth, which are kept out so that
        ``ppl_texts`` is a held-out perplexity (a method that trains retain NLL, as MRP does,
        would otherwise lower the perplexity of its own training texts and look harmless)."""
        if len(self.retain_texts) < PPL_HELDOUT_EVERY:
            return list(self.retain_texts)
        return [t for i, t in enumerate(self.retain_texts) if i % PPL_HELDOUT_EVERY != PPL_HELDOUT_EVERY - 1]

    @property
    def ppl_texts(self) -> list[str]:
        """Held-out retain texts for perplexity (every fifth; all of them when there are fewer than five)."""
        if len(self.retain_texts) < PPL_HELDOUT_EVERY:
            return list(self.retain_texts)
        return [t for i, t in enumerate(self.retain_texts) if i % PPL_HELDOUT_EVERY == PPL_HELDOUT_EVERY - 1]

    def forget_mcq_half(self, half: str) -> list[MCQItem]:
        return [it for it, h in zip(self.forget_mcq, self.forget_half) if h == half]

    def forget_texts_half(self, half: str) -> list[str]:
        return [t for t, h in zip(self.forget_texts, self.forget_text_half) if h == half]

    def content_hash(self) -> str:
        """Hash of everything that changes results; written into edit manifests."""
        blob = json.dumps(
            [self.forget_texts, self.retain_texts,
             [asdict(i) for i in self.forget_mcq], [asdict(i) for i in self.retain_mcq]],
            sort_keys=True,
        ).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def overlap(self) -> dict[str, float]:
        """Unigram and bigram overlap between the forget and retain corpora (as SRMU reports)."""
        return corpus_overlap(self.forget_texts, self.retain_texts)

    def summary(self) -> dict:
        ov = self.overlap()
        return {
            "name": self.name,
            "forget_texts": len(self.forget_texts),
            "retain_texts": len(self.retain_texts),
            "forget_mcq": len(self.forget_mcq),
            "retain_mcq": len(self.retain_mcq),
            "forget_half_b": len(self.forget_mcq_half("B")),
            "unigram_overlap": round(ov["unigram"], 4),
            "bigram_overlap": round(ov["bigram"], 4),
        }


_WORD = re.compile(r"[A-Za-z0-9']+")


def _ngrams(texts: list[str], n: int) -> set[tuple[str, ...]]:
    grams: set[tuple[str, ...]] = set()
    for t in texts:
        words = [w.lower() for w in _WORD.findall(t)]
        grams.update(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return grams


def corpus_overlap(forget: list[str], retain: list[str]) -> dict[str, float]:
    """Share of the forget corpus's distinct n-grams that also occur in the retain corpus.

    Dang et al. (quoted by SRMU) report overlap as the fraction of forget n-grams found in the
    retain corpus; we use distinct lower-cased word n-grams, which is exact and reproducible.
    """
    out = {}
    for name, n in (("unigram", 1), ("bigram", 2)):
        f, r = _ngrams(forget, n), _ngrams(retain, n)
        out[name] = len(f & r) / len(f) if f else 0.0
    return out
