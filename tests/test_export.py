"""Standalone checkpoints: MRP's "stream" placement folds exactly into the weights.

The exported folder is loaded with a plain ``AutoModelForCausalLM.from_pretrained`` (no
unlearnviz hooks) and must give the hooked model's logits within 1e-4, on padded batches, for
the tiny synthetic GPT-2 (Conv1D weights, learned positions, tied lm_head) and tiny random
Llama (tied embeddings) and Gemma (tied, √d-scaled embedding) models. The base model's
fingerprint never changes, and the "site" placement still exports as before (side file).
"""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import FAMILIES, HIDDEN, byte_tokenizer, one_thread, tiny_config, tiny_model

from unlearnviz.errors import UserError
from unlearnviz.methods import EditStack, get_method, make_hparams
from unlearnviz.methods.edit import Edit, export_checkpoint, load_exported
from unlearnviz.model import wrap_model
from unlearnviz.model.adapter import linear_weight
from unlearnviz.model.routing import StreamProjection, orthonormal_rows

TOL = 1e-4
PROMPTS = ["The capital of France is", "Hi", "Alice was born in the city of", "x"]

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


def _mrp(lm, placement="stream", **over):
    base = {"layers": [1], "k": 4, "steps": 4, "batch_size": 8, "placement": placement,
            "spare_first": placement == "site"}
    return make_hparams(get_method("mrp").hparams_cls, {**base, **over})


def _tied_tiny(family: str):
    """A tiny random model of ``family`` with tied input/output embeddings, wrapped."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = tiny_config(family, layers=4)
    cfg.tie_word_embeddings = True
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    return wrap_model(model, byte_tokenizer(), name=f"tiny-tied-{family}")


def _plain(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval()


def _max_diff(lm, plan, model, left_pad: bool) -> tuple[float, float]:
    """(max |hooked − exported| logit, max |hooked − unedited|) over the non-pad positions."""
    lm.tokenizer.padding_side = "left" if left_pad else "right"
    enc = lm.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    keep = enc["attention_mask"].bool()
    assert not keep.all()  # the batch really is padded
    with torch.no_grad():
        with lm.router.apply(plan):
            hooked = lm.model(**enc).logits
        plain = lm.model(**enc).logits
        exported = model(**enc).logits
    return float((hooked - exported)[keep].abs().max()), float((hooked - plain)[keep].abs().max())


def _check_stream_export(lm, stack, folder):
    fp = lm.fingerprint()
    info = export_checkpoint(lm, stack, folder)
    assert lm.fingerprint() == fp
    assert "stream_folded" in info and "note" not in info
    assert not (folder / "unlearnviz_projections.safetensors").exists()
    written = json.loads((folder / "unlearnviz_export.json").read_text())
    assert written["stream_folded"]["untied_lm_head"] is True
    assert written["stream_folded"]["check"]["max_abs_logit_diff"] < TOL
    model = _plain(folder)
    assert model.config.tie_word_embeddings is False
    # the lm_head keeps the original embedding matrix; the input embedding is projected
    assert torch.equal(model.get_output_embeddings().weight, lm.adapter.unembed.weight)
    assert not torch.allclose(model.get_input_embeddings().weight, lm.adapter.embed.weight)
    plan = stack.plan()
    diffs = []
    for left in (True, False):
        diff, effect = _max_diff(lm, plan, model, left_pad=left)
        assert diff < TOL, (diff, effect)
        assert effect > 1e-2  # the edit really changes the logits
        diffs.append(diff)
    return max(diffs)


def test_stream_export_gpt2_matches_hooked(tiny_lm, tiny_data, tmp_path):
    """Tiny synthetic GPT-2: Conv1D [in, out] weights with biases, wte + wpe, tied lm_head."""
    edit = get_method("mrp").fit(tiny_lm, tiny_data, _mrp(tiny_lm))
    assert edit.stream is not None and not edit.projections and edit.stream.last == 1
    _check_stream_export(tiny_lm, EditStack([edit]), tmp_path / "ckpt")


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_stream_export_tied_families_match_hooked(family, tiny_data, tmp_path):
    """Llama with tied embeddings (as SmolLM2), and Gemma (tied, embedding scaled by √d)."""
    lm = _tied_tiny(family)
    edit = get_method("mrp").fit(lm, tiny_data, _mrp(lm, layers=[2]))
    _check_stream_export(lm, EditStack([edit]), tmp_path / "ckpt")


def test_stream_export_of_a_stack_with_deltas_and_two_streams(tiny_lm, tiny_data, tmp_path):
    """RMU deltas inside the projected blocks (W + Δ merged, then projected), and a second,
    deeper, continual stream request (union basis, deepest block)."""
    stack = EditStack()
    stack.push(get_method("rmu").fit(tiny_lm, tiny_data, make_hparams(
        get_method("rmu").hparams_cls, {"layer": 2, "window": 2, "steps": 4, "batch_size": 8})))
    stack.push(get_method("mrp").fit(tiny_lm, tiny_data, _mrp(tiny_lm), prior=stack.plan()))
    stack.push(get_method("mrp").fit(tiny_lm, tiny_data, _mrp(tiny_lm, layers=[2], steps=2), prior=stack.plan()))
    first, second = stack.edits[1].stream, stack.edits[2].stream
    assert (first.q @ second.q.T).abs().max() < 1e-4  # new directions orthogonal to the frozen ones
    plan = stack.plan()
    assert plan.stream.last == 2 and plan.stream.q.shape[0] == first.q.shape[0] + second.q.shape[0]
    assert torch.equal(plan.stream.offset, first.offset)  # the first request's μ is kept
    _check_stream_export(tiny_lm, stack, tmp_path / "ckpt")


def test_site_export_keeps_its_side_file(tiny_lm, tiny_data, tmp_path):
    """Placement "site" exports as before: weights unchanged, projections in a side file that
    load_exported applies; a plain load is the model without them."""
    fp = tiny_lm.fingerprint()
    edit = get_method("mrp").fit(tiny_lm, tiny_data, _mrp(tiny_lm, placement="site"))
    assert edit.stream is None and 1 in edit.projections
    stack = EditStack([edit])
    info = export_checkpoint(tiny_lm, stack, tmp_path / "ckpt")
    assert tiny_lm.fingerprint() == fp
    assert "stream_folded" not in info and info["projection_layers"] == [1] and "note" in info
    assert (tmp_path / "ckpt" / "unlearnviz_projections.safetensors").exists()
    plain = _plain(tmp_path / "ckpt")
    tiny_lm.tokenizer.padding_side = "left"
    enc = tiny_lm.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        base = tiny_lm.model(**enc).logits
        assert (plain(**enc).logits - base).abs().max() < TOL  # the unedited model
        with tiny_lm.router.apply(stack.plan()):
            hooked = tiny_lm.model(**enc).logits
        back = load_exported(tmp_path / "ckpt")
        back.tokenizer.padding_side = "left"
        with back.router.apply(back.default_plan):
            reloaded = back.model(**enc).logits
    assert (reloaded - hooked).abs().max() < TOL


def test_stream_placement_refusals(tiny_lm, tiny_data):
    with pytest.raises(UserError, match="spare_first=false"):
        get_method("mrp").fit(tiny_lm, tiny_data, _mrp(tiny_lm, spare_first=True))
    with pytest.raises(UserError, match="must be one of"):
        _mrp(tiny_lm, placement="everywhere")
    gemma2 = wrap_model(tiny_model("gemma2"), byte_tokenizer(), name="tiny-gemma2")
    with pytest.raises(UserError, match="post-norms"):
        get_method("mrp").fit(gemma2, tiny_data, _mrp(gemma2))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_stream_fold_is_exact_for_every_family(family, tmp_path):
    """A random stream projection plus a delta inside it, on every supported family's layout
    (biases, parallel residual, fused projections): the plain load equals the hooked model;
    families with post-norms after the writes (Gemma-2/3) are refused with a clear message."""
    lm = wrap_model(tiny_model(family), byte_tokenizer(), name=f"tiny-{family}")
    g = torch.Generator().manual_seed(7)
    delta = torch.randn(linear_weight(lm.adapter.mlp_out(0)).shape, generator=g) * 0.3
    stream = StreamProjection(q=orthonormal_rows(torch.randn(3, HIDDEN, generator=g)),
                              offset=torch.randn(HIDDEN, generator=g), last=1)
    stack = EditStack([Edit(method="mrp", hparams={}, deltas={0: delta}, stream=stream,
                            meta={"placement": "stream"})])
    fp = lm.fingerprint()
    if lm.adapter.stream_unsupported():
        with pytest.raises(UserError, match="post-norms"):
            export_checkpoint(lm, stack, tmp_path / "ckpt")
        assert not (tmp_path / "ckpt").exists()
        return
    info = export_checkpoint(lm, stack, tmp_path / "ckpt")
    assert lm.fingerprint() == fp and info["merged_weights"]
    model = _plain(tmp_path / "ckpt")
    for left in (True, False):
        diff, effect = _max_diff(lm, stack.plan(), model, left_pad=left)
        assert diff < TOL and effect > 1e-3, (diff, effect)


def test_export_checksums_and_an_interrupted_replace(tiny_lm, tiny_data, tmp_path, monkeypatch):
    """The export manifest lists every file's SHA-256 and load_exported verifies them; replacing
    an export that fails before the swap leaves the old one intact and loadable."""
    from pathlib import Path

    edit = get_method("rmu").fit(tiny_lm, tiny_data, make_hparams(get_method("rmu").hparams_cls,
                                                                   {"steps": 2, "layer": 2, "window": 2}))
    out = tmp_path / "ckpt"
    info = export_checkpoint(tiny_lm, EditStack([edit]), out)
    assert {"config.json", "model.safetensors"} <= set(info["files"])
    assert all(len(d) == 64 for d in info["files"].values())
    load_exported(out)  # verifies
    before = (out / "model.safetensors").read_bytes()
    real_rename = Path.rename

    def crash_on_swap(self, target):
        if self.name == "ckpt.tmp":
            raise OSError("disk full")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", crash_on_swap)
    with pytest.raises(OSError):
        export_checkpoint(tiny_lm, EditStack([edit, edit]), out)
    monkeypatch.undo()
    assert (out / "model.safetensors").read_bytes() == before  # the previous export is back in place
    assert not out.with_name("ckpt.old").exists()
    load_exported(out)
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (out / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError, match="checksum mismatch"):
        load_exported(out)
