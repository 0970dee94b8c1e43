"""bitsandbytes 8-bit and 4-bit models on the CPU (unlearnviz.model.quantized): they load, report
their real size, analyse, fit through output deltas, keep a stable fingerprint, and refuse
folding a delta into their integer weights with one line."""

from __future__ import annotations

import pytest
import torch
from tiny_models import one_thread

from unlearnviz.errors import UserError
from unlearnviz.evaluation.mcq import score_items, summarise
from unlearnviz.methods import get_method, make_hparams
from unlearnviz.model import LoadOptions, load_model
from unlearnviz.model.adapter import linear_weight
from unlearnviz.model.quantized import linear_shape, quantization_of, refuse_quantized

pytest.importorskip("bitsandbytes")
_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


@pytest.fixture(scope="module", params=["8bit", "4bit"])
def qlm(request, tiny_model_path):
    """The tiny synthetic GPT-2, quantised by transformers' BitsAndBytesConfig on the CPU."""
    return load_model(str(tiny_model_path), LoadOptions(device="cpu", quantization=request.param))


def test_quantized_model_loads_with_its_real_shapes(qlm, tiny_lm):
    q = qlm.quantization
    assert q in ("8bit", "4bit") and quantization_of(qlm.model) == q and qlm.info()["quantization"] == q
    assert quantization_of(tiny_lm.model) is None and tiny_lm.info()["quantization"] is None
    mlp, ref = qlm.adapter.mlp_out(1), tiny_lm.adapter.mlp_out(1)
    assert type(mlp).__name__ == ("Linear4bit" if q == "4bit" else "Linear8bitLt")
    if q == "4bit":
        assert tuple(mlp.weight.shape) != tuple(linear_weight(ref).shape)  # packed: two values a byte
    assert linear_shape(mlp) == tuple(linear_weight(ref).shape) == (tiny_lm.hidden_size, 4 * tiny_lm.hidden_size)
    assert qlm.n_params() == tiny_lm.n_params()  # the values the model stands for, not its bytes
    assert qlm.info()["memory_mb"] < tiny_lm.info()["memory_mb"]
    with pytest.raises(UserError, match=f"{q} .*packed integers") as exc:
        linear_weight(mlp)
    assert "\n" not in str(exc.value)


def test_quantized_model_scores_like_the_float_one(qlm, tiny_lm, tiny_data):
    """Evaluation runs, and the quantised model still knows the facts it was trained on."""
    fp = qlm.fingerprint()
    acc = summarise(score_items(qlm, tiny_data.forget_mcq, letter=False, floor=False))["cloze_acc"]
    ref = summarise(score_items(tiny_lm, tiny_data.forget_mcq, letter=False, floor=False))["cloze_acc"]
    assert acc >= ref - 0.15
    assert qlm.fingerprint() == fp  # forwards leave the packed weights as they were


def test_fingerprint_survives_the_cpu_repacking(qlm):
    """bitsandbytes repacks a 4-bit weight's storage on the first CPU inference call where the CPU
    has AVX-512 BF16; loading switches that off, so a forward never rewrites the frozen base."""
    fp = qlm.fingerprint()
    ptrs = [p.data_ptr() for p in qlm.model.parameters()]
    with torch.no_grad():
        qlm.model(torch.tensor([[5, 6, 7, 8]]))
    assert [p.data_ptr() for p in qlm.model.parameters()] == ptrs
    assert qlm.fingerprint() == fp


def test_capture_on_a_quantized_model(qlm, tiny_data):
    from unlearnviz.analysis.activations import capture

    acts = capture(qlm, tiny_data.forget_texts[:6], layers=[1, 3], use_cache=False)
    assert set(acts) == {1, 3} and acts[1].shape == (6, qlm.hidden_size)
    assert torch.isfinite(acts[3]).all()


def test_a_delta_adds_exactly_x_delta_to_the_quantized_layer_output(qlm):
    """The fitting path in one layer: a zero delta of the layer's real shape (``engine.zero_delta``),
    made nonzero, changes that layer's output by x·Δᵀ and nothing else."""
    from unlearnviz.methods.engine import zero_delta
    from unlearnviz.model.routing import RoutingPlan

    delta = zero_delta(qlm, 2)
    assert tuple(delta.shape) == linear_shape(qlm.adapter.mlp_out(2)) and delta.dtype == torch.float32
    delta = torch.randn(delta.shape, generator=torch.Generator().manual_seed(0)) * 0.01
    seen: list = []
    handle = qlm.adapter.mlp_out(2).register_forward_hook(lambda m, i, o: seen.append((i[0].detach(), o.detach())))
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    try:
        with torch.no_grad():
            qlm.model(ids)
            with qlm.router.apply(RoutingPlan(deltas={2: delta})):
                qlm.model(ids)
    finally:
        handle.remove()
    (x, plain), (x2, edited) = seen
    assert torch.equal(x, x2)
    torch.testing.assert_close(edited - plain, torch.nn.functional.linear(x.float(), delta).to(plain.dtype),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rmu", "srmu"])
def test_fit_on_a_quantized_model_edits_through_output_deltas(qlm, tiny_data, method):
    """The deltas have the layer's [out, in] shape (from its features, not the packed weight), act
    on its output through the router's additive hook, and the base weights stay as they were."""
    fp = qlm.fingerprint()
    extra = {"rmu": {"steering_coeff": 8.0}, "srmu": {"c_map": 8.0}}[method]  # as test_methods on this model
    hp = make_hparams(get_method(method).hparams_cls, {"layer": 2, "window": 2, "steps": 60, "batch_size": 8,
                                                       "lr": 1e-2, "alpha": 100, **extra})
    edit = get_method(method).fit(qlm, tiny_data, hp)
    deltas = edit.plan().deltas
    assert deltas and all(tuple(d.shape) == linear_shape(qlm.adapter.mlp_out(k)) for k, d in deltas.items())
    before = summarise(score_items(qlm, tiny_data.forget_mcq, letter=False, floor=False))
    after = summarise(score_items(qlm, tiny_data.forget_mcq, plan=edit.plan(), letter=False, floor=False))
    assert after["gold_logprob"] < before["gold_logprob"] - 2.0  # it forgets (float32: -0.1 -> -3.6 / -5.4)
    assert qlm.fingerprint() == fp


def test_folding_into_quantized_weights_is_refused_in_one_line(qlm, tiny_lm):
    refuse_quantized(tiny_lm.model, "exporting a merged checkpoint", "-")  # float: nothing to refuse
    with pytest.raises(UserError, match=rf"exporting a merged checkpoint is not possible on a {qlm.quantization} "
                                        r"\(bitsandbytes\) model.*load it in float") as exc:
        refuse_quantized(qlm.model, "exporting a merged checkpoint",
                         "load it in float32 or bfloat16 to export (the edit itself saves and loads as it is)")
    assert "\n" not in str(exc.value)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("q", ["8bit", "4bit"])
def test_quantized_model_on_the_gpu(tiny_model_path, q):
    """Loaded straight to the GPU in the compute dtype auto picks (bfloat16), forward, fingerprint."""
    lm = load_model(str(tiny_model_path), LoadOptions(device="cuda", quantization=q))
    assert lm.quantization == q and lm.device.type == "cuda" and lm.dtype == torch.bfloat16
    fp = lm.fingerprint()
    with torch.no_grad():
        out = lm.model(torch.tensor([[5, 6, 7, 8]], device=lm.device)).logits
    assert torch.isfinite(out).all() and lm.fingerprint() == fp
