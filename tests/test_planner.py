"""The memory planner: its arithmetic against parameter counts and against what autograd really
keeps, a measured CPU peak (a memory check, loose bound stated), the refusal of a fit over the
budget, and the config-only plans of the named 7B-class models."""

from __future__ import annotations

import json

import pytest
import torch

from tests.tiny_models import byte_tokenizer, tiny_config, tiny_model
from unlearnviz import planner
from unlearnviz.errors import UserError
from unlearnviz.model.loading import wrap_model


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
def test_weights_are_the_parameter_count_on_real_and_meta_models(family):
    model = tiny_model(family)
    s = planner.shapes_of(model)
    n = sum(p.numel() for p in model.parameters())
    assert s.params == n and s.weight_bytes == 4 * n
    meta = planner.shapes_of(planner.meta_model(tiny_config(family)), dtype=torch.bfloat16)
    assert meta.params == n and meta.weight_bytes == 2 * n and meta.dtype_bytes == 2
    assert (meta.hidden, meta.mlp, meta.layers, meta.vocab) == (s.hidden, s.mlp, s.layers, s.vocab)


def test_trainable_state_is_deltas_gradients_and_adam_moments():
    s = planner.shapes_of(tiny_model("llama"))
    plan = planner.plan_fit(s, "rmu", {"window": 2, "layer": 2, "batch_size": 2, "max_tokens": 16, "steps": 3})
    # two [hidden, mlp] float32 deltas, each with its gradient and Adam's two moments
    assert plan.parts["trainable state"] == 2 * s.hidden * s.mlp * 4 * 4
    mrp = planner.plan_fit(s, "mrp", {"layers": [1], "k": 3, "batch_size": 2, "max_tokens": 16, "steps": 3})
    assert mrp.parts["trainable state"] == 3 * s.hidden * 4 * 4


def _saved_bytes(fn, params) -> int:
    """Bytes of the distinct storages autograd saves while ``fn`` runs, parameters left out."""
    skip = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


@pytest.mark.parametrize("family,tol", [("llama", 0.1), ("qwen2", 0.1), ("phi3", 0.1), ("gemma2", 0.1), ("gpt2", 0.1),
                                        ("gpt_neox", 0.15)])
def test_saved_activations_per_token_match_autograd(family, tol):
    """The oracle: every tensor autograd keeps for one block's backward (frozen weights, padded
    batch with its mask), against ``saved_per_token``: within 10% (15% for GPT-NeoX, whose partial
    rotary embedding keeps a few more head-wide pieces than the count has)."""
    from unlearnviz.data.batching import Batch
    from unlearnviz.methods.engine import WindowEngine
    from unlearnviz.model.routing import run_block_window

    lm = wrap_model(tiny_model(family), byte_tokenizer())
    B, T = 4, 48
    ids = torch.randint(3, 200, (B, T))
    att = torch.ones(B, T, dtype=torch.long)
    att[1, T // 2:] = 0
    engine = WindowEngine(lm, 1, 1, [Batch(ids, att, att.bool())])
    c = engine.capture(0)
    h = c.h.clone().requires_grad_(True)
    saved = _saved_bytes(lambda: run_block_window(lm.adapter, 1, 1, h, c.kw), lm.model.parameters())
    want = planner.saved_per_token(planner.shapes_of(lm.model), T, padded=True) * B * T
    assert saved == pytest.approx(want, rel=tol), (saved / (B * T), want / (B * T))


def test_a_fit_over_the_budget_is_refused_with_both_figures(tiny_lm, tiny_data):
    from unlearnviz.session import Session

    session = Session()
    session.lm, session.data = tiny_lm, tiny_data
    fp = tiny_lm.fingerprint(refresh=True)
    weights = planner.shapes_of(tiny_lm.model).weight_bytes
    with pytest.raises(UserError) as err:
        session.run_edit("rmu", {"steps": 2}, budget_bytes=weights + 2**20)
    msg = str(err.value)
    assert "\n" not in msg and "this rmu fit needs ~" in msg and "GB available" in msg
    needs, has = (float(x.split()[0]) for x in (msg.split("needs ~")[1], msg.split("the device has ")[1]))
    assert needs > has == pytest.approx((weights + 2**20) / 2**30, abs=0.01)
    assert len(session.stack) == 0 and tiny_lm.fingerprint(refresh=True) == fp


def test_a_fit_within_the_budget_is_planned_not_refused(tiny_lm, tiny_data):
    from unlearnviz.session.planning import check_fit, fit_line

    plan = check_fit(tiny_lm, tiny_data, "srmu", {"steps": 2}, budget_bytes=64 * 2**30)
    assert plan.peak_bytes > plan.parts["weights"] > 0 and plan.settings["max_tokens"] > 0

    class _S:  # what fit_line reads of a session
        lm, data, stack = tiny_lm, tiny_data, None

    assert "Planned peak memory" in fit_line(_S(), "mrp", {"batch_size": 2})


def test_named_configs_plan_without_weights(capsys):
    """Zephyr-7B's public shapes on the meta device: Mistral-7B's 7.24 B parameters, 13.5 GiB in
    bfloat16; ``info --plan --config-only`` prints every action's plan."""
    from unlearnviz.cli import main

    s = planner.shapes_of(planner.meta_model(planner.named_config("zephyr-7b")), dtype=torch.bfloat16)
    assert 7.2e9 < s.params < 7.3e9 and s.weight_bytes == 2 * s.params
    assert main(["info", "--plan", "--config-only", "zephyr-7b", "--dtype", "bfloat16", "--device", "cuda",
                 "--batch-size", "4", "--max-tokens", "512"]) == 0
    out = json.loads(capsys.readouterr().out)
    actions = [p["action"] for p in out["plans"]]
    assert actions[:3] == ["fit rmu", "fit srmu", "fit mrp"] and "activation capture" in actions
    rmu = out["plans"][0]
    assert rmu["settings"]["batch_size"] == 4 and rmu["settings"]["max_tokens"] == 512
    assert rmu["peak_gb"] > rmu["parts_gb"]["weights"] == pytest.approx(s.weight_bytes / 2**30, abs=1e-3)
    with pytest.raises(UserError, match="no named config"):
        planner.named_config("gpt-5")
