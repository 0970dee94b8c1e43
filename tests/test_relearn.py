"""Relearning attacks on the tiny model: the curve is measured on half B while training on half A,
the base weights stay untouched, and the white-box attacks report what they remove."""

from __future__ import annotations

import pytest

from unlearnviz.errors import UserError
from unlearnviz.evaluation.relearn import RelearnSettings, finetune_attack, steps_to_recovery, whitebox_attacks
from unlearnviz.methods import get_method, make_hparams


def test_finetune_attack_curve_and_weights(tiny_lm, tiny_data):
    fp = tiny_lm.fingerprint()
    edit = get_method("rmu").fit(tiny_lm, tiny_data, make_hparams(get_method("rmu").hparams_cls, {
        "layer": 2, "window": 3, "alpha": 1.0, "steps": 80}))
    s = RelearnSettings(steps=20, lr=3e-3, eval_every=10)
    curve = finetune_attack(tiny_lm, tiny_data, edit.plan(), s)
    assert [p["step"] for p in curve] == [0, 10, 20]
    assert all(0.0 <= p["acc"] <= 1.0 for p in curve)
    assert curve[-1]["acc"] >= curve[0]["acc"]  # fine-tuning on half A never makes half B harder here
    assert tiny_lm.fingerprint() == fp
    assert steps_to_recovery([{"step": 0, "acc": 0.2}, {"step": 10, "acc": 0.7}], 1.0, 0.2) == 10
    wb = whitebox_attacks(tiny_lm, tiny_data, edit.plan(), layer=2)
    assert set(wb) >= {"edited", "original", "shift_direction_ablated"}
    assert tiny_lm.fingerprint() == fp


def test_relearn_needs_both_halves(tiny_lm, tiny_data):
    import dataclasses

    no_b = dataclasses.replace(tiny_data, forget_half=["A"] * len(tiny_data.forget_mcq))
    with pytest.raises(UserError, match="half"):
        finetune_attack(tiny_lm, no_b, None, RelearnSettings(steps=2))


# ---- the window (max_tokens auto) -------------------------------------------------------------
def _long_half_a(data, words: int = 60):
    """The data with each half-A forget text repeated into a document of ~``words``×3 tokens."""
    import dataclasses

    texts = [(t + " ") * max(1, words // max(1, len(t.split()))) if h == "A" else t
             for t, h in zip(data.forget_texts, data.forget_text_half)]
    return dataclasses.replace(data, forget_texts=texts)


def test_window_follows_the_methods_auto_rule(tiny_lm, tiny_data):
    """Short facts keep the 32-token window; documents get the longer window the methods'
    auto rule picks (not a fixed 32); a window that cuts off most tokens says so."""
    from unlearnviz.data.batching import resolve_max_tokens
    from unlearnviz.evaluation.relearn import resolve_settings

    assert RelearnSettings().max_tokens == -1
    short, info = resolve_settings(tiny_lm, tiny_data, None, RelearnSettings())
    assert short.max_tokens == 32 and info["warnings"] == []
    docs = _long_half_a(tiny_data)
    long, info = resolve_settings(tiny_lm, docs, None, RelearnSettings())
    rule = resolve_max_tokens(tiny_lm, docs.forget_texts_half("A"), -1)[0]
    assert long.max_tokens == rule > 32 and info["truncated_share"] < 0.05
    events = []
    finetune_attack(tiny_lm, docs, None, RelearnSettings(steps=1, eval_every=1, max_tokens=8), progress=events.append)
    assert "max_tokens=8 cuts off" in events[0]["warning"], events


# ---- bounded state: the trained blocks' bytes ------------------------------------------------
def test_auto_layers_fit_the_budget_around_the_edit(tiny_lm):
    """"auto": every block when their state fits (every built-in model); past the budget, the
    edited blocks then their nearest neighbours; at Mistral-7B shapes (32 blocks of 4096 × 14336)
    the default 4096 MiB keeps 4 blocks instead of 28 GiB for all."""
    from unlearnviz.evaluation.relearn import STATE_BYTES_PER_PARAM, choose_layers

    mistral = [4096 * 14336 * STATE_BYTES_PER_PARAM] * 32
    assert sum(mistral) / 2**30 == 28.0
    seven = choose_layers(mistral, [5, 6, 7], RelearnSettings().max_state_mb * 2**20)
    assert seven == [4, 5, 6, 7] and sum(mistral[x] for x in seven) <= 4 * 2**30
    assert choose_layers([10] * 8, [3], 80) == list(range(8))
    assert choose_layers([10] * 8, [3], 35) == [2, 3, 4]
    assert choose_layers([10] * 8, [], 5) == [4]  # never nothing; no edit: the middle block
    default_135m = 30 * 576 * 1536 * STATE_BYTES_PER_PARAM
    assert default_135m <= RelearnSettings().max_state_mb * 2**20  # the default model trains every block


def test_measured_state_bytes_equal_the_stated(tiny_lm, tiny_data):
    """Parameters + gradients + Adam state of the attack, counted tensor by tensor after a step,
    are the stated 16 bytes a trained parameter, and under a small budget only the chosen blocks."""
    from unlearnviz.evaluation.relearn import layer_state_bytes, relearn_record

    edit = get_method("rmu").fit(tiny_lm, tiny_data, make_hparams(get_method("rmu").hparams_cls, {
        "layer": 2, "window": 1, "steps": 5}))
    per = layer_state_bytes(tiny_lm, 0)
    full = relearn_record(tiny_lm, tiny_data, edit.plan(), RelearnSettings(steps=1, eval_every=1))
    assert full["settings"]["layers"] == "0,1,2,3"
    assert full["memory"]["measured_bytes"] == full["memory"]["state_bytes"] == 4 * per
    assert per == 2**20  # 128 × 512 × 16 B: a budget of 2 MiB holds two of the tiny model's blocks
    assert edit.plan().edited_layers() == [2]
    rec = relearn_record(tiny_lm, tiny_data, edit.plan(), RelearnSettings(steps=1, eval_every=1, max_state_mb=2))
    assert rec["settings"]["layers"] == "1,2"  # the edited block, then its nearest (lower) neighbour
    assert rec["memory"]["measured_bytes"] == rec["memory"]["state_bytes"] == 2 * per
    stats: dict = {}
    finetune_attack(tiny_lm, tiny_data, edit.plan(), RelearnSettings(steps=1, eval_every=1, layers="2"), stats=stats)
    assert stats["measured_bytes"] == per and stats["state_bytes"] == per
