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


def test_each_model_continues_its_own_conversation(tiny_lm, tiny_data):
    """Turn two: the original reads its own first answer, the edit its own; their prompts differ
    in length (left-padded in one batch) and each row still equals that model generating alone."""
    spec = get_method("rmu")
    plan = spec.fit(tiny_lm, tiny_data, make_hparams(spec.hparams_cls, EDITS["rmu"])).plan()
    first, second = tiny_data.forget_mcq[0].question, tiny_data.forget_mcq[1].question
    turn1 = side_by_side(tiny_lm, first, plan, GenSettings(max_new_tokens=6))
    a1, b1 = turn1.texts(tiny_lm.tokenizer)
    history_a, history_b = [(first, a1)], [(first, b1 + " and more words")]  # unequal lengths on purpose
    state = side_by_side(tiny_lm, second, plan, GenSettings(max_new_tokens=8), history_a, history_b)
    ids_a = build_prompt_ids(tiny_lm, second, None, history_a)
    ids_b = build_prompt_ids(tiny_lm, second, None, history_b)
    assert len(ids_a) != len(ids_b)
    assert tiny_lm.tokenizer.decode(ids_a) == f"{first}{a1}\n{second}"  # plain concatenation: no template
    assert state.prompt_ids_original == ids_a and state.prompt_ids_edited == ids_b
    assert state.original_ids == _greedy(tiny_lm, ids_a, 8, None)[: len(state.original_ids)]
    assert state.edited_ids == _greedy(tiny_lm, ids_b, 8, plan)[: len(state.edited_ids)]
    # the cross rows re-score the other answer in the other conversation: p of the edit's first token
    # under the original model, reading the edit's conversation
    with torch.no_grad():
        logits = tiny_lm.model(torch.tensor([ids_b])).logits[0, -1].float()
    assert state.p_original_of_edited[0] == pytest.approx(float(torch.softmax(logits, -1)[state.edited_ids[0]]),
                                                          rel=1e-4, abs=1e-6)


@pytest.mark.slow
def test_chat_template_turns_and_no_special_tokens(default_lm):
    """An instruct model: the second turn reads the first through the chat template, the answer
    stops at the template's end-of-turn marker, and no special token reaches the text."""
    from unlearnviz.generation import divergence_tokens, stop_ids

    tok = default_lm.tokenizer
    end = stop_ids(default_lm)
    assert tok.convert_tokens_to_ids("<|im_end|>") in end
    turn1 = side_by_side(default_lm, "What is the capital of Germany?", None, GenSettings(max_new_tokens=24))
    a1, _ = turn1.texts(tok)
    assert "<|im_end|>" not in a1 and a1.strip()
    state = side_by_side(default_lm, "And what language do people speak there?", None,
                         GenSettings(max_new_tokens=12), [("What is the capital of Germany?", a1)],
                         [("What is the capital of Germany?", a1)])
    seen, _ = state.prompt_texts(tok)
    assert seen.count("<|im_start|>user") == 2 and a1.strip() in seen and "Germany" in seen
    assert all("<|" not in row["token"] for row in divergence_tokens(default_lm, state))
    assert not any("<|" in t for t in state.texts(tok))
