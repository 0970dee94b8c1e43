"""Side-by-side generation: one batched pass gives exactly the original's and the edit's own
greedy answers, for every kind of edit (deltas, centred site projections sparing the sink, a
stream projection)."""

from __future__ import annotations

import pytest
import torch

from unlearnviz.generation import GenSettings, build_prompt_ids, side_by_side
from unlearnviz.methods import get_method, make_hparams

EDITS = {
    "rmu": {"steps": 40, "layer": 2, "window": 3, "alpha": 1.0},
    "mrp-site": {"steps": 10, "layers": [1], "k": 24, "retain_weight": 1.2, "forget_tokens": "from_subject"},  # centred, spare_first: offsets and the sink matter
    "mrp-stream": {"steps": 10, "layers": [1], "k": 24, "placement": "stream", "spare_first": False,
                   "retain_weight": 1.2, "forget_tokens": "from_subject"},
}


def _greedy(lm, ids: list[int], n: int, plan) -> list[int]:
    """The reference: the plain model (or the edit on every row) generating alone."""
    with torch.no_grad(), lm.router.apply(plan):
        out = lm.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                max_new_tokens=n, do_sample=False,
                                pad_token_id=lm.tokenizer.pad_token_id or 0)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("kind", list(EDITS))
def test_side_by_side_equals_separate_generations(tiny_lm, tiny_data, kind):
    method = kind.split("-")[0]
    spec = get_method(method)
    plan = spec.fit(tiny_lm, tiny_data, make_hparams(spec.hparams_cls, EDITS[kind])).plan()
    n = 10
    prompts = [it.question for it in tiny_data.forget_mcq[:4]] + [tiny_data.retain_mcq[0].question]
    differs = False
    for prompt in prompts:
        state = side_by_side(tiny_lm, prompt, plan, GenSettings(max_new_tokens=n, cross_probs=True))
        ids = build_prompt_ids(tiny_lm, prompt, None)
        original, edited = _greedy(tiny_lm, ids, n, None), _greedy(tiny_lm, ids, n, plan)
        assert state.original_ids == original[: len(state.original_ids)]
        assert state.edited_ids == edited[: len(state.edited_ids)]
        assert len(state.edited_ids) >= 1
        differs |= original != edited
    assert differs, "the edit changed no answer: the comparison would prove nothing"
