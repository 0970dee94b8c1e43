"""Tokenisation and loss masks of training and analysis texts (unlearnviz.data.batching)."""

from __future__ import annotations

import re

import pytest
import torch

from unlearnviz.data.batching import (
    AUTO,
    LONG_WINDOW,
    SHORT_WINDOW,
    resolve_max_tokens,
    span_pattern,
    span_ranges,
    subject_spans,
    tokenize_texts,
)
from unlearnviz.data.loaders import builtin_names, load_builtin
from unlearnviz.data.synthetic import KNOB_VALUES, make_world
from unlearnviz.errors import UserError


def per_span_scan(lm, texts, max_tokens, mask_from=None, include_first=False, spans_only=False,
                  later_spans_only=False):
    """The slow reference kept as a test oracle: tokenize_texts as it was, one regex scan per
    span over each whole, untruncated text."""
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
        if later_spans_only and ranges:
            first = min(a for a, _ in ranges)
            first_end = max(b for a, b in ranges if a == first)
            ranges = [(a, b) for a, b in ranges if a >= first_end]
        if by_spans:
            inside = [any(a < e and s < b for a, b in ranges) for s, e in offsets]
            mask = [(i >= 1 and inside[i]) or (include_first and i == 0) for i in range(len(ids))]
        else:
            mask = [i >= start_tok or (include_first and i == 0) for i in range(len(ids))]
        out.append((list(ids), mask))
    return out


MASK_MODES = [{}, {"spans_only": True}, {"later_spans_only": True}, {"spans_only": True, "include_first": True}]


def _assert_same_masks(lm, data, max_tokens):
    for split, texts in (("forget", data.forget_texts), ("retain", data.retain_train_texts)):
        spans = subject_spans(data, split)
        for mode in MASK_MODES:
            want = per_span_scan(lm, texts, max_tokens, spans, **mode)
            assert tokenize_texts(lm, texts, max_tokens, spans, **mode) == want, (data.name, split, mode)
        assert tokenize_texts(lm, texts, max_tokens, include_first=True) == per_span_scan(
            lm, texts, max_tokens, include_first=True)


def _byte_lm(positions: int = 64):
    """A tiny Llama with the byte-level tokenizer (one token a byte), ``positions`` long."""
    from tiny_models import byte_tokenizer, tiny_config
    from transformers import AutoModelForCausalLM

    from unlearnviz.model import wrap_model

    cfg = tiny_config("llama", layers=2)
    cfg.max_position_embeddings = positions
    torch.manual_seed(0)
    return wrap_model(AutoModelForCausalLM.from_config(cfg), byte_tokenizer(), name=f"tiny-llama-{positions}")


def _documents(data, n_docs: int, per_doc: int) -> list[str]:
    """Long texts made of the world's own sentences (``per_doc`` each), so they name its entities."""
    texts = list(data.forget_texts) + list(data.retain_train_texts)
    return [" ".join(texts[(d * per_doc + j) % len(texts)] for j in range(per_doc)) for d in range(n_docs)]


def test_loss_masks_spans_and_later_spans(tiny_lm):
    """'spans' holds every entity token; 'answers' (later spans only) holds the entities after a
    text's first one, the tokens the fact makes predictable, and nothing in a one-entity text."""
    texts = ["Visitors to Velmora often begin their trip in Ostrava.", "Far away lies Velmora."]
    spans = ["Velmora", "Ostrava"]
    tok = tiny_lm.tokenizer

    def masked(**kw):
        return [tok.decode([i for i, m in zip(ids, mask) if m]).strip()
                for ids, mask in tokenize_texts(tiny_lm, texts, 64, spans, **kw)]

    both, later = masked(spans_only=True), masked(later_spans_only=True)
    assert both[0].replace(" ", "") == "VelmoraOstrava" and both[1].replace(" ", "") == "Velmora"
    assert later == ["Ostrava", ""]


@pytest.mark.parametrize("name", [*builtin_names(), "synthetic"])
def test_masks_equal_the_per_span_scan_on_the_builtin_sets(tiny_lm, tiny_data, name):
    """One compiled pattern over the kept prefix gives every mask the per-span scan of the whole
    text gave, on every built-in set and the synthetic world, in every masking mode."""
    _assert_same_masks(tiny_lm, tiny_data if name == "synthetic" else load_builtin(name), 32)


@pytest.mark.slow
def test_masks_equal_the_per_span_scan_on_other_tokenizers_and_windows(default_lm):
    """The same on the default model's tokenizer and a byte-level one (where a 32-token window
    cuts most facts short, some before their only entity), every synthetic world, short and long windows."""
    sets = [load_builtin(n) for n in builtin_names()] + [make_world(e) for e in KNOB_VALUES]
    for lm in (default_lm, _byte_lm()):
        for data in sets:
            for max_tokens in (8, 32, 64):
                _assert_same_masks(lm, data, max_tokens)


def test_masks_equal_the_per_span_scan_on_long_documents(tiny_lm, tiny_data):
    """Documents far longer than the window: spans inside, straddling and past the cut (a text
    whose entities all lie past it keeps an empty span mask, as before)."""
    docs = _documents(tiny_data, 12, 20)
    spans = sorted(set(subject_spans(tiny_data, "forget") + subject_spans(tiny_data, "retain")), key=len, reverse=True)
    for max_tokens in (6, 40, 200):
        for mode in MASK_MODES:
            assert tokenize_texts(tiny_lm, docs, max_tokens, spans, **mode) == per_span_scan(
                tiny_lm, docs, max_tokens, spans, **mode), (max_tokens, mode)
    late = ["Nothing here at all, then much later: Velmora."]
    (_, mask), = tokenize_texts(tiny_lm, late, 4, ["Velmora"], spans_only=True)
    assert not any(mask)
    (_, mask), = tokenize_texts(tiny_lm, ["Nothing here names an entity."], 4, ["Velmora"], spans_only=True)
    assert mask == [False, True, True, True]


def test_span_pattern_finds_the_longest_span_at_every_start_overlaps_included():
    """Partly overlapping spans ("New York" / "York City") each count (their union is masked),
    and at one position the longer span wins; the search stops at the kept text's end."""
    pattern, longest = span_pattern(("York City", "New York", "York", "Ne"))
    text = "In New York City, York."
    assert span_ranges(pattern, longest, text, len(text)) == [(3, 11), (7, 16), (18, 22)]
    assert span_ranges(pattern, longest, text, 8) == [(3, 11), (7, 16)]  # starts before 8, ends past it
    assert span_ranges(pattern, longest, text, 3) == []
    assert span_pattern(()) is None


def test_auto_window_is_32_on_the_builtin_sets(tiny_lm, tiny_data):
    """Short facts keep the 32-token window they were tuned with (nothing is cut off); a given
    number is used as given, and one below 4 is refused."""
    for data in [load_builtin(n) for n in builtin_names()] + [tiny_data]:
        n, share, warning = resolve_max_tokens(tiny_lm, data.forget_texts, AUTO)
        assert (n, warning) == (SHORT_WINDOW, None), data.name
        assert share < 0.05
    assert resolve_max_tokens(tiny_lm, tiny_data.forget_texts, 17)[0] == 17
    with pytest.raises(UserError, match="max_tokens=2 is too small"):
        resolve_max_tokens(tiny_lm, tiny_data.forget_texts, 2)


@pytest.mark.slow
def test_auto_window_on_the_default_model(default_lm):
    """The default model's tokenizer: 32 on every built-in set and synthetic world, 512 on documents."""
    for data in [load_builtin(n) for n in builtin_names()] + [make_world(e) for e in KNOB_VALUES]:
        assert resolve_max_tokens(default_lm, data.forget_texts, AUTO)[::2] == (SHORT_WINDOW, None), data.name
    docs = _documents(make_world(), 40, 24)
    assert resolve_max_tokens(default_lm, docs, AUTO)[::2] == (LONG_WINDOW, None)


def test_auto_window_is_512_on_documents_and_capped_by_the_context(tiny_data):
    """Documents of ~500 tokens get 512 (nothing cut off, no warning) where the model's context
    allows it, and the model's context where it is shorter; a 32-token window on them warns."""
    docs = [d[:480] for d in _documents(tiny_data, 30, 12)]  # one token a byte: ~480 tokens
    n, share, warning = resolve_max_tokens(_byte_lm(1024), docs, AUTO)
    assert (n, share, warning) == (LONG_WINDOW, 0.0, None)
    assert resolve_max_tokens(_byte_lm(64), docs, AUTO)[0] == 64
    n, share, warning = resolve_max_tokens(_byte_lm(1024), docs, 32)
    assert n == 32 and share > 0.9 and "max_tokens=32 cuts off 9" in warning
