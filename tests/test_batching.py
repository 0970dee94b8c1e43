"""Tokenisation and loss masks of training and analysis texts (unlearnviz.data.batching)."""

from __future__ import annotations

from unlearnviz.data.batching import tokenize_texts


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
