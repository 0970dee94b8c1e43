"""Texts to token ids, loss masks and padded batches: shared by training, analysis and evaluation.

Training (the methods' forget and retain batches), the activation statistics of the analysis and
the relearning attack all read the same tokens under the same masks, so that a statistic is taken
on exactly the tokens a method trains on. Scoring encodes (context, continuation) pairs the way
lm-eval does, and the synthetic lab model's cloze check uses that very encoding.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from unlearnviz.data.schema import UnlearningData
from unlearnviz.errors import UserError
from unlearnviz.model.loading import LoadedModel

# max_tokens = AUTO: the window is resolved from the forget corpus (resolve_max_tokens).
AUTO = -1
SHORT_WINDOW, LONG_WINDOW = 32, 512
# auto keeps at least this share of the forget corpus's tokens (measured on LENGTH_SAMPLE texts)
AUTO_KEEP = 0.95
LENGTH_SAMPLE = 512
# a run whose truncation drops more than this share of the forget tokens says so
MOST_DROPPED = 0.5
# texts tokenised per tokenizer call (one call for many texts runs in the tokenizer's own threads)
ENCODE_CHUNK = 256


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


@functools.lru_cache(maxsize=8)
def span_pattern(spans: tuple[str, ...]) -> tuple[re.Pattern, int] | None:
    """One compiled pattern for every span, and the longest span's length (None without spans).

    The pattern is the alternation of the escaped spans, longest first, factored into a prefix
    tree (``Velmora|Velsk`` is ``Vel(?:mora|sk)``): at each position the longest span starting
    there matches, and a position costs the tree's depth instead of one comparison per span
    (with 2,500 spans a flat alternation scanned 150 kB of text 3x slower than the 2,500 literal
    scans it replaces; the tree, 10x faster than them). Cached: batches tokenised one at a time
    share it."""
    spans = tuple(s for s in spans if s)
    if not spans:
        return None
    try:
        pattern = re.compile(_trie_regex(spans))
    except RecursionError:  # spans nested hundreds deep: the flat alternation, same matches
        pattern = re.compile("|".join(re.escape(s) for s in sorted(set(spans), key=len, reverse=True)))
    return pattern, max(len(s) for s in spans)


def _trie_regex(spans: Sequence[str]) -> str:
    """The alternation of ``spans`` as a prefix tree; a node that ends a span makes what follows
    optional and greedy, so the longest span wins."""
    root: dict = {}
    for s in spans:
        node = root
        for ch in s:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: dict) -> str:
        alts = [re.escape(ch) + emit(child) for ch, child in sorted(node.items()) if ch]
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        return f"(?:{body})?" if "" in node else body

    return emit(root)


def span_ranges(pattern: re.Pattern, longest: int, text: str, end: int) -> list[tuple[int, int]]:
    """(start, end) of the longest span at every position before ``end`` where one starts
    (overlapping ones included), searching only ``text[:end + longest - 1]``."""
    out: list[tuple[int, int]] = []
    pos, stop = 0, min(len(text), end + longest - 1)
    while pos < end and (m := pattern.search(text, pos, stop)) is not None and m.start() < end:
        out.append(m.span())
        pos = m.start() + 1
    return out


def _merged(ranges: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Overlapping ranges merged (touching ones kept apart): sorted starts and ends."""
    starts: list[int] = []
    ends: list[int] = []
    for a, b in sorted(ranges):
        if starts and a < ends[-1]:
            ends[-1] = max(ends[-1], b)
        else:
            starts.append(a)
            ends.append(b)
    return starts, ends


def _inside(offsets: list[tuple[int, int]], ranges: list[tuple[int, int]]) -> list[bool]:
    """Per token: does its character range [s, e) overlap any of ``ranges``?"""
    starts, ends = _merged(ranges)
    out = []
    for s, e in offsets:
        k = bisect.bisect_right(ends, s)  # the first merged range ending after s
        out.append(k < len(starts) and starts[k] < e)
    return out


def tokenize_texts(lm: LoadedModel, texts: Sequence[str], max_tokens: int,
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
    entity itself only teaches the model not to name such entities at all).

    Spans are found by one compiled pattern (:func:`span_pattern`) in the part of the text that
    survives truncation to ``max_tokens``, so the cost follows the kept text, not the spans times
    the whole text. A text whose spans all lie past the cut still counts as naming one (its span
    mask stays empty, not every token): finding that out is the only scan past the kept part,
    made only for such a text under ``spans_only``/``later_spans_only``."""
    compiled = span_pattern(tuple(mask_from)) if mask_from else None
    by_spans_mode = spans_only or later_spans_only
    tok = lm.tokenizer
    out = []
    for c in range(0, len(texts), ENCODE_CHUNK):
        chunk = [texts[i] for i in range(c, min(c + ENCODE_CHUNK, len(texts)))]
        enc = tok(chunk, add_special_tokens=True, return_offsets_mapping=True, truncation=True,
                  max_length=max_tokens, return_attention_mask=False)
        for text, ids, offsets in zip(chunk, enc["input_ids"], enc["offset_mapping"]):
            offsets = [tuple(o) for o in offsets]
            start_tok = 1
            ranges: list[tuple[int, int]] = []
            named = False
            if compiled is not None:
                pattern, longest = compiled
                end = max((e for _, e in offsets), default=0)
                ranges = span_ranges(pattern, longest, text, end)
                named = bool(ranges) or (by_spans_mode and pattern.search(text, end) is not None)
            if ranges:
                first = ranges[0][0]
                hit = next((i for i, (_, e) in enumerate(offsets) if e > first), 1)
                start_tok = max(1, hit)
            if later_spans_only and ranges:  # may leave none: a text naming one entity supervises nothing
                first_end = ranges[0][1]
                ranges = [(a, b) for a, b in ranges if a >= first_end]
            if named and by_spans_mode:
                inside = _inside(offsets, ranges)
                mask = [(i >= 1 and inside[i]) or (include_first and i == 0) for i in range(len(ids))]
            else:
                mask = [i >= start_tok or (include_first and i == 0) for i in range(len(ids))]
            out.append((list(ids), mask))
    return out


def sample_token_lengths(lm: LoadedModel, texts: Sequence[str], sample: int = LENGTH_SAMPLE) -> list[int]:
    """Untruncated token counts of up to ``sample`` texts spread evenly over the corpus (every
    text of a smaller one): a fixed-size look at a corpus of any size."""
    n = len(texts)
    idx = list(range(n)) if n <= sample else sorted({round(i * (n - 1) / (sample - 1)) for i in range(sample)})
    lengths: list[int] = []
    for c in range(0, len(idx), 16):  # a few long documents' ids at a time
        chunk = [texts[i] for i in idx[c:c + 16]]
        enc = lm.tokenizer(chunk, add_special_tokens=True, return_attention_mask=False, verbose=False)
        lengths += [len(ids) for ids in enc["input_ids"]]
    return lengths


def dropped_share(lengths: Sequence[int], max_tokens: int) -> float:
    """Share of the tokens that truncation to ``max_tokens`` cuts off."""
    total = sum(lengths)
    return sum(max(0, n - max_tokens) for n in lengths) / total if total else 0.0


def resolve_max_tokens(lm: LoadedModel, texts: Sequence[str], max_tokens: int) -> tuple[int, float, str | None]:
    """The training window, the share of the forget tokens it cuts off, and a warning when that
    is most of them.

    ``max_tokens = AUTO`` (-1) takes the smallest power of two from SHORT_WINDOW (32) to
    LONG_WINDOW (512) that keeps at least AUTO_KEEP (95%) of the forget texts' tokens (measured
    on up to LENGTH_SAMPLE of them), and never more than the model's context: short facts keep
    the 32-token window they were tuned with, documents get 512 (the WMDP corpora's chunks,
    Li et al. 2024). Any other value is used as given (at least 4)."""
    if max_tokens != AUTO and max_tokens < 4:
        raise UserError(f"max_tokens={max_tokens} is too small: give at least 4, or -1 for auto")
    lengths = sample_token_lengths(lm, texts)
    if max_tokens == AUTO:
        cap = max(SHORT_WINDOW, min(LONG_WINDOW, lm.max_length))
        max_tokens = SHORT_WINDOW
        while max_tokens < cap and dropped_share(lengths, max_tokens) > 1 - AUTO_KEEP:
            max_tokens = min(cap, max_tokens * 2)
    share = dropped_share(lengths, max_tokens)
    warning = None
    if share > MOST_DROPPED:
        warning = (f"max_tokens={max_tokens} cuts off {share:.0%} of the forget tokens (the longest text has "
                   f"{max(lengths)}): raise max_tokens or chunk the corpus into shorter texts")
    return max_tokens, share, warning


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
