"""Accelerate offload and several devices: an edited model gives what it gives in one piece.

The tiny synthetic GPT-2 is loaded from its save_pretrained folder through ``load_model`` with
a real accelerate ``device_map`` from ``infer_auto_device_map``: the embeddings and blocks 0-1
in CPU memory, blocks 2-3, the final norm and the head offloaded to disk (their weights are
meta tensors between calls, loaded by accelerate's hooks for each call). Nothing is mocked:
accelerate's own hooks run, and the router's must compose with them. A GPU test spreads the
model over two CUDA devices where two exist.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from tiny_models import one_thread, prompt_batch

from unlearnviz.evaluation.mcq import evaluate
from unlearnviz.generation import GenSettings, side_by_side
from unlearnviz.methods import get_method, make_hparams
from unlearnviz.methods.engine import zero_delta
from unlearnviz.model import LoadOptions, RoutingPlan, load_model, wrap_model
from unlearnviz.model.adapter import linear_weight

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)

TEXTS = ["Paris is the capital of", "Hi"]


def _device_map(path, blocks_in_memory: int) -> dict:
    """accelerate's own map for a CPU budget of the embeddings plus ``blocks_in_memory`` blocks."""
    from accelerate import infer_auto_device_map, init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    empty.tie_weights()

    def nbytes(m):
        return sum(p.numel() * p.element_size() for p in m.parameters())

    t = empty.transformer
    budget = nbytes(t.wte) + nbytes(t.wpe) + nbytes(t.ln_f) + blocks_in_memory * nbytes(t.h[0])
    return dict(infer_auto_device_map(empty, max_memory={"cpu": budget},
                                      no_split_module_classes=empty._no_split_modules))


@pytest.fixture(scope="module")
def offloaded(tiny_model_path, tmp_path_factory):
    """The synthetic model with blocks 2-3 on disk (offload folder under a temporary cache)."""
    cache = tmp_path_factory.mktemp("offload-cache")
    before = os.environ.get("UNLEARNVIZ_CACHE")
    os.environ["UNLEARNVIZ_CACHE"] = str(cache)
    try:
        dm = _device_map(tiny_model_path, blocks_in_memory=3)
        assert {dm["transformer.h.0"], dm["transformer.h.1"], dm["transformer.h.2"]} == {"cpu", "disk"}, dm
        lm = load_model(str(tiny_model_path), LoadOptions(device="cpu", device_map=dm))
    finally:
        if before is None:
            os.environ.pop("UNLEARNVIZ_CACHE", None)
        else:
            os.environ["UNLEARNVIZ_CACHE"] = before
    disk = [b for b in range(lm.n_layers) if dm[f"transformer.h.{b}"] == "disk"]
    assert disk and linear_weight(lm.adapter.mlp_out(disk[0])).device.type == "meta"  # really offloaded
    return lm


def _logits(lm, plan=None, texts=TEXTS):
    ids, mask = prompt_batch(lm.tokenizer, texts)
    with torch.no_grad(), lm.router.apply(plan):
        return lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device)).logits.cpu()


def _rmu(lm, data, **over):
    spec = get_method("rmu")
    hp = make_hparams(spec.hparams_cls, {"layer": 2, "window": 3, "steps": 6, "batch_size": 8, "steering_coeff": 8.0,
                                         "lr": 1e-2, "alpha": 100, **over})
    return spec.fit(lm, data, hp)


@pytest.fixture(scope="module")
def rmu_edit(tiny_lm, tiny_data):
    """An RMU edit of blocks 0-2 (across the CPU/disk boundary), fitted on the model in one piece."""
    return _rmu(tiny_lm, tiny_data)


def test_offloaded_model_without_an_edit_equals_the_model_in_memory(tiny_lm, offloaded):
    ref = _logits(tiny_lm)
    torch.testing.assert_close(_logits(offloaded), ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(_logits(offloaded, RoutingPlan()), ref, atol=1e-6, rtol=0)


def test_offloaded_model_routes_an_edit_on_every_row_and_on_chosen_rows(tiny_lm, offloaded, rmu_edit):
    plan = rmu_edit.plan()
    assert set(plan.deltas) == {0, 1, 2}
    ref = _logits(tiny_lm, plan)
    assert (ref - _logits(tiny_lm)).abs().max() > 1e-2  # the edit does something
    torch.testing.assert_close(_logits(offloaded, plan), ref, atol=1e-5, rtol=0)
    rows = _logits(offloaded, rmu_edit.plan(rows=torch.tensor([0.0, 1.0])))
    torch.testing.assert_close(rows[1], ref[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(rows[0], _logits(tiny_lm)[0], atol=1e-5, rtol=0)


def test_offloaded_model_gives_the_same_metrics_and_chat(tiny_lm, offloaded, tiny_data, rmu_edit):
    for plan in (None, rmu_edit.plan()):
        want = evaluate(tiny_lm, tiny_data, plan=plan, letter=False)
        got = evaluate(offloaded, tiny_data, plan=plan, letter=False)
        assert want.keys() == got.keys()
        for k in want:
            if k != "wall_s":
                assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), k
    item = tiny_data.forget_mcq[0]
    settings = GenSettings(max_new_tokens=8, cross_probs=False)
    a = side_by_side(tiny_lm, item.question, rmu_edit.plan(), settings)
    b = side_by_side(offloaded, item.question, rmu_edit.plan(), settings)
    assert (a.original_ids, a.edited_ids) == (b.original_ids, b.edited_ids)


def test_fitting_on_the_offloaded_model_gives_the_same_edit(tiny_lm, offloaded, tiny_data, rmu_edit):
    """Trainable deltas live on each module's execution device, never on an offloaded weight's
    meta placeholder; the fit then follows the in-memory one."""
    assert zero_delta(offloaded, 2).device.type == "cpu"
    edit = _rmu(offloaded, tiny_data)
    _same_fit(edit, rmu_edit, rel=1e-4)
    torch.testing.assert_close(_logits(offloaded, edit.plan()), _logits(tiny_lm, rmu_edit.plan()), atol=1e-4, rtol=0)


def _same_fit(got, want, rel: float) -> None:
    """The same loss trajectory, step by step (deltas themselves are compared through what they
    do: Adam turns rounding-level gradients into full-size steps of either sign)."""
    a, b = [r["loss"] for r in got.meta["losses"]], [r["loss"] for r in want.meta["losses"]]
    assert len(a) == len(b) and all(math.isclose(x, y, rel_tol=rel, abs_tol=1e-6) for x, y in zip(a, b)), (a, b)



def test_wrapping_an_offloaded_model_again_keeps_accelerates_hooks(tiny_lm, offloaded, rmu_edit):
    """A second router on the same model takes the first one's hooks off: accelerate's
    forward wrappers, which load the offloaded weights, must stay."""
    again = wrap_model(offloaded.model, offloaded.tokenizer)
    torch.testing.assert_close(_logits(again), _logits(tiny_lm), atol=1e-6, rtol=0)
    torch.testing.assert_close(_logits(again, rmu_edit.plan()), _logits(tiny_lm, rmu_edit.plan()), atol=1e-5, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_a_model_spread_over_two_gpus_fits_and_routes_like_one_device(tiny_model_path, tiny_lm, tiny_data):
    """Embedding and blocks 0-1 on cuda:0, blocks 2-3 and the head on cuda:1: RMU's target and
    SRMU's importance map and signs act on block 2's device, loaded deltas on each block's."""
    dm = {"transformer.wte": 0, "transformer.wpe": 0, "transformer.drop": 0, "transformer.h.0": 0,
          "transformer.h.1": 0, "transformer.h.2": 1, "transformer.h.3": 1, "transformer.ln_f": 1, "lm_head": 1}
    lm = load_model(str(tiny_model_path), LoadOptions(dtype="float32", device_map=dm))
    assert {p.device.index for p in lm.model.parameters()} == {0, 1}
    for method in ("rmu", "srmu"):
        spec = get_method(method)
        over = {"layer": 2, "window": 2, "steps": 6, "batch_size": 8, "lr": 1e-2, "alpha": 100}
        ref = spec.fit(tiny_lm, tiny_data, make_hparams(spec.hparams_cls, dict(over)))
        got = spec.fit(lm, tiny_data, make_hparams(spec.hparams_cls, dict(over)))
        for layer in ref.deltas:
            assert got.deltas[layer].device == linear_weight(lm.adapter.mlp_out(layer)).device
        _same_fit(got, ref, rel=1e-3)
        torch.testing.assert_close(_logits(lm, got.plan()), _logits(tiny_lm, ref.plan()), atol=1e-3, rtol=0)
        plan = RoutingPlan(deltas={k: v.to("cuda:0") for k, v in ref.deltas.items()})  # as a loaded edit
        for rows in (None, torch.tensor([1.0, 1.0])):
            torch.testing.assert_close(_logits(lm, plan if rows is None else RoutingPlan(deltas=plan.deltas, rows=rows)),
                                       _logits(tiny_lm, ref.plan()), atol=1e-3, rtol=0)
