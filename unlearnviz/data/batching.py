"""Texts to token ids, loss masks and padded batches: shared by training, analysis and evaluation.

Training (the methods' forget and retain batches), the activation statistics of the analysis and
the relearning attack all read the same tokens under the same masks, so that a statistic is taken
on exactly the tokens a method trains on. Scoring encodes (context, continuation) pairs the way
lm-eval does, and the synthetic lab model's cloze check uses that very encoding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from unlearnviz.data.schema import UnlearningData
from unlearnviz.model.loading import LoadedModel


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    loss_mask: torch.Tensor  # [B, T] bool: tokens the loss is taken on


def subject_spans(data: UnlearningData, split: str = "forget") -> list[str]:
    """The entity strings of a split's facts (subjects and answers), longest first: where a
    forget text's loss mask starts (or, with spans only, the only tokens it holds)."""
    items = data.forget_mcq if split == "forget" else data.retain_mcq
    spans = {it.subject for it in items if it.subject} | {it.gold for it in items}
    return sorted((s for s in spans if len(s) >= 2), key=len, reverse=True)


def tokenize_texts(lm: LoadedModel, texts: list[str], max_tokens: int,
                   mask_from: list[str] | None = None, include_first: bool = False,
                   spans_only: bool = False, later_spans_only: bool = False) -> list[tuple[list[int], list[bool]]]:
    """Token ids and loss mask per text. Position 0 is never in the mask (an attention sink
    with a residual norm hundreds of times the others); with ``mask_from``, the mask starts at
    the first token of the earliest subject/answer span, since the tokens before it ("The
    capital of") are shared with retain text and pushing them fights the retain loss. With
    ``spans_only`` as well, the mask holds only the tokens inside those spans (every
    occurrence): the function words between them ("is the capital of") stay out of the push.
    ``include_first`` puts position 0 back (retain anchoring: an edit that moves the sink moves
    every later token's attention). ``later_spans_only``: only the tokens of the spans after the
    text's first one ("Paris" in "Visitors to France ... its capital, Paris"): the tokens the fact
    makes predictable, where a loss on next-token predictions belongs (a loss on the first
    entity itself only teaches the model not to name such entities at all)."""
    tok = lm.tokenizer
    out = []
    for text in texts:
        enc = tok(text, add_special_tokens=True, return_offsets_mapping=True, truncation=True,
                  max_length=max_tokens)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        start_tok = 1
        ranges = [(m.start(), m.end()) for s in (mask_from or []) for m in re.finditer(re.escape(s), text)]
        if ranges:
            first = min(a for a, _ in ranges)
            hit = next((i for i, (_, end) in enumerate(offsets) if end > first), 1)
            start_tok = max(1, hit)
        by_spans = bool(ranges) and (spans_only or later_spans_only)
        if later_spans_only and ranges:  # may leave none: a text naming one entity supervises nothing
            first = min(a for a, _ in ranges)
            first_end = max(b for a, b in ranges if a == first)
            ranges = [(a, b) for a, b in ranges if a >= first_end]
        if by_spans:
            inside = [any(a < e and s < b for a, b in ranges) for s, e in offsets]
            mask = [(i >= 1 and inside[i]) or (include_first and i == 0) for i in range(len(ids))]
        else:
            mask = [i >= start_tok or (include_first and i == 0) for i in range(len(ids))]
        out.append((ids, mask))
    return out


def make_batches(encoded: list[tuple[list[int], list[bool]]], batch_size: int, pad_id: int) -> list[Batch]:
    """Consecutive chunks of ``batch_size`` texts, each right-padded to its longest text (the
    order is kept: callers line cached per-batch tensors up with these batches by index)."""
    batches = []
    for s in range(0, len(encoded), batch_size):
        chunk = encoded[s:s + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        att = torch.zeros((len(chunk), width), dtype=torch.long)
        lm_ = torch.zeros((len(chunk), width), dtype=torch.bool)
        for r, (i, m) in enumerate(chunk):
            ids[r, : len(i)] = torch.tensor(i)
            att[r, : len(i)] = 1
            lm_[r, : len(m)] = torch.tensor(m)
        batches.append(Batch(ids, att, lm_))
    return batches


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's convention: encode context+continuation whole, split at the context length."""
    ctx = tokenizer(context, add_special_tokens=True).input_ids
    whole = tokenizer(context + continuation, add_special_tokens=True).input_ids
    cont = whole[len(ctx):]
    if not cont:  # merged into the context token: fall back to separate encoding
        cont = tokenizer(continuation, add_special_tokens=False).input_ids
        whole = ctx + cont
    return whole[: len(whole) - len(cont)], cont
