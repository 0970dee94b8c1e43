"""The base weights' fingerprint (unlearnviz.model.fingerprint): what it reads, what it catches,
and offloaded (meta) weights."""

from __future__ import annotations

import pytest
import torch
from tiny_models import byte_tokenizer, one_thread, save_tiny

from unlearnviz.model import LoadOptions, load_model, wrap_model
from unlearnviz.model.fingerprint import SAMPLES, sample_view, sampled_bytes

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("UNLEARNVIZ_CACHE", str(tmp_path / "cache"))


def wide_llama(seed: int = 0):
    """A llama whose matrices are larger than the sample (every other tiny model is hashed whole)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("llama", vocab_size=4099, hidden_size=128, intermediate_size=1024,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()


def sampled_positions(t: torch.Tensor) -> set[int]:
    flat = t.detach().reshape(-1)
    view = sample_view(t)
    stride = view.stride(0) if view.numel() > 1 else 1
    return set(range(0, flat.numel(), stride)) if view.numel() < flat.numel() else set(range(flat.numel()))


def test_sample_view_holds_every_row_and_copies_nothing():
    t = torch.randn(300, 1024)
    v = sample_view(t)
    assert v.data_ptr() == t.data_ptr() and v.numel() >= SAMPLES  # a view, at least the budget
    rows = {p // 1024 for p in sampled_positions(t)}
    cols = {p % 1024 for p in sampled_positions(t)}
    assert rows == set(range(300))  # a write confined to any one row meets the sample
    assert len(cols) > 1000  # the column moves from row to row (stride coprime with the row)
    small = torch.randn(10, 20)
    assert sample_view(small).numel() == small.numel()  # small tensors are hashed whole


def test_a_check_at_7b_hashes_megabytes_not_the_model():
    """Mistral-7B's shapes on the meta device (no memory): what a check reads, against 14.5 GB."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("mistral", vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                               num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    assert total > 14e9
    assert sampled_bytes(model) < 8e6  # ~3.8 MB: one element per row plus 4096 per tensor


def test_take_and_check_read_only_the_sample():
    lm = wrap_model(wide_llama(), byte_tokenizer())
    total = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    loaded = lm.fingerprint_bytes
    assert loaded == sampled_bytes(lm.model) and loaded < 0.05 * total
    lm.fingerprint()  # a check: the same bytes again, nothing more
    assert lm.fingerprint_bytes == loaded


def test_a_write_outside_the_sample_is_caught_by_the_version_counter():
    lm = wrap_model(wide_llama(), byte_tokenizer())
    fp = lm.fingerprint()
    w = lm.adapter.mlp_out(1).weight
    hidden = next(i for i in range(w.numel()) if i not in sampled_positions(w))
    with torch.no_grad():
        w.view(-1)[hidden] += 1.0
    assert lm.fingerprint() != fp
    with torch.no_grad():
        w.view(-1)[hidden] -= 1.0
    assert lm.fingerprint() != fp  # written to once: remembered, even when undone


def test_a_write_behind_autograd_is_caught_by_the_sample():
    """``.data`` writes do not bump the version counter; the row's sampled element changes."""
    lm = wrap_model(wide_llama(), byte_tokenizer())
    fp = lm.fingerprint()
    w = lm.adapter.mlp_out(0).weight
    version, old = w._version, w.data[77].clone()
    w.data[77] += 0.5  # every element of one row
    assert w._version == version
    assert lm.fingerprint() != fp
    w.data[77] = old  # put back, again behind the counter: the check reads the same values
    assert w._version == version and lm.fingerprint() == fp


def test_same_weights_same_fingerprint_in_any_process_layout(tmp_path):
    folder = save_tiny(tmp_path / "m", "llama", layers=2)
    a, b = load_model(str(folder), LoadOptions(device="cpu")), load_model(str(folder), LoadOptions(device="cpu"))
    assert a.fingerprint(refresh=False) == b.fingerprint(refresh=False) == a.fingerprint()
    other = load_model(str(save_tiny(tmp_path / "n", "llama", seed=1, layers=2)), LoadOptions(device="cpu"))
    assert other.fingerprint() != a.fingerprint()


OFFLOAD = {"model.embed_tokens": "disk", "model.layers.0": "cpu", "model.layers.1": "disk",
           "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}


def test_offloaded_model_has_the_resident_fingerprint_and_tracks_resident_writes(tmp_path):
    """accelerate disk offload (parameters on the meta device): the fingerprint is read from the
    offload store, equals the fully resident model's, survives forwards (which swap the meta
    placeholders), and changes after an in-place write to a resident weight."""
    folder = save_tiny(tmp_path / "m", "llama", layers=2)
    resident = load_model(str(folder), LoadOptions(device="cpu"))
    lm = load_model(str(folder), LoadOptions(device_map=OFFLOAD))
    assert lm.adapter.mlp_out(1).weight.device.type == "meta" and lm.adapter.embed.weight.device.type == "meta"
    fp = lm.fingerprint(refresh=False)
    assert fp == resident.fingerprint(refresh=False)
    ids = resident.tokenizer(["hello there"], return_tensors="pt").input_ids
    with torch.no_grad():
        out, ref = lm.model(ids.to(lm.device)).logits, resident.model(ids).logits
    assert torch.allclose(out, ref, atol=1e-5)
    assert lm.fingerprint() == fp == lm.fingerprint()
    w = lm.adapter.mlp_out(0).weight  # resident (layer 0 is on the CPU)
    assert w.device.type == "cpu"
    with torch.no_grad():
        w[3, 5] += 1e-3
    assert lm.fingerprint() != fp
