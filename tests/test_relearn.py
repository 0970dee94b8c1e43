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
