"""Safe model loading: local folders, pickle refusal, offline hub ids, GGUF files, fingerprints."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from tiny_models import byte_tokenizer, one_thread, save_tiny, tiny_model

from unlearnviz.errors import UserError
from unlearnviz.model import DEFAULT_MODEL, LoadedModel, LoadOptions, load_model, wrap_model
from unlearnviz.model.loading import resolve_dtype

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Offline hub, and GGUF conversions cached under tmp_path, for every test here."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("UNLEARNVIZ_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny-llama"), "llama", layers=2)


@pytest.fixture(scope="module")
def tiny(tiny_dir) -> LoadedModel:
    return load_model(str(tiny_dir))


def _copy_without(src, dst, suffix):
    dst.mkdir()
    for f in src.iterdir():
        if not f.name.endswith(suffix):
            shutil.copy(f, dst / f.name)
    return dst


def test_load_local_folder(tiny, tiny_dir):
    assert tiny.adapter.family == "llama"
    assert tiny.n_layers == 2 and tiny.hidden_size == 32
    assert tiny.name == tiny_dir.name and tiny.source == str(tiny_dir)
    assert tiny.dtype == torch.float32 and tiny.device.type == "cpu"
    assert tiny.tokenizer.pad_token is not None
    info = tiny.info()
    for key in ("family", "layers", "hidden_size", "parameters", "dtype", "device", "fingerprint"):
        assert key in info
    assert info["parameters"] == sum(p.numel() for p in tiny.model.parameters())
    # same weights as the model that was saved
    ref = tiny_model("llama", layers=2)
    for name, p in ref.state_dict().items():
        assert torch.equal(tiny.model.state_dict()[name], p), name
    with torch.no_grad():
        out = tiny.model(**tiny.tokenizer(["hello"], return_tensors="pt")).logits
    assert torch.isfinite(out).all()


def test_loaded_model_is_frozen(tiny):
    assert not tiny.model.training
    assert all(not m.training for m in tiny.model.modules())
    assert all(not p.requires_grad for p in tiny.model.parameters())


def test_fingerprint_is_stable_and_tracks_weights(tiny, tiny_dir):
    fp = tiny.fingerprint()
    assert fp == tiny.fingerprint() == tiny.fingerprint(refresh=False) == tiny.info()["fingerprint"]
    lm = load_model(str(tiny_dir))  # same weights, same fingerprint (its own copy: written to below)
    assert lm.fingerprint() == fp
    w = lm.adapter.mlp_out(0).weight
    with torch.no_grad():
        w[0, 0] += 1e-3
    assert lm.fingerprint(refresh=False) == fp  # cached until refreshed
    assert lm.fingerprint() != fp
    with torch.no_grad():
        w[0, 0] -= 1e-3
    assert lm.fingerprint() != fp  # the frozen base was written to: remembered, even when undone
    assert tiny.fingerprint() == fp  # the other copy is untouched


def test_fingerprint_of_bfloat16_weights():
    lm = wrap_model(tiny_model("llama", layers=1).to(torch.bfloat16), byte_tokenizer())
    assert len(lm.fingerprint()) == 32 and lm.dtype == torch.bfloat16


def test_pickle_only_folder_is_refused_unless_opted_in(tiny_dir, tmp_path):
    folder = _copy_without(tiny_dir, tmp_path / "pickled", ".safetensors")
    torch.save(tiny_model("llama", layers=2).state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(UserError, match=r"pickle.*--allow-pickle") as exc:
        load_model(str(folder))
    assert "\n" not in str(exc.value)
    lm = load_model(str(folder), LoadOptions(allow_pickle=True))
    assert lm.adapter.family == "llama"
    assert lm.fingerprint() == load_model(str(tiny_dir)).fingerprint()


def test_hub_id_offline_says_so():
    with pytest.raises(UserError, match="offline") as exc:
        load_model("someone/not-a-cached-model")
    assert "\n" not in str(exc.value)
    with pytest.raises(UserError, match="offline"):
        load_model("gpt2-not-cached-either")


def test_missing_or_wrong_folder(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        load_model(str(tmp_path / "empty"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        load_model(str(tmp_path / "file.txt"))
    with pytest.raises(UserError, match="not found"):
        load_model(str(tmp_path / "missing.gguf"))


def test_folder_without_weights(tiny_dir, tmp_path):
    folder = _copy_without(tiny_dir, tmp_path / "noweights", ".safetensors")
    with pytest.raises(UserError, match="no weights"):
        load_model(str(folder))


def test_corrupt_weights_give_a_user_error(tiny_dir, tmp_path):
    folder = _copy_without(tiny_dir, tmp_path / "corrupt", ".safetensors")
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="cannot load model") as exc:
        load_model(str(folder))
    assert "\n" not in str(exc.value)


def test_trust_remote_code_defaults_off_and_custom_code_never_runs(tiny_dir, tmp_path):
    assert LoadOptions().trust_remote_code is False and LoadOptions().allow_pickle is False
    folder = _copy_without(tiny_dir, tmp_path / "remote", "config.json")
    cfg = json.loads((tiny_dir / "config.json").read_text())
    cfg.update(model_type="evilmodel", auto_map={"AutoConfig": "configuration_evil.EvilConfig",
                                                 "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"})
    (folder / "config.json").write_text(json.dumps(cfg))
    marker = tmp_path / "RAN"
    for mod in ("configuration_evil", "modeling_evil"):
        (folder / f"{mod}.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    with pytest.raises(UserError, match="--trust-remote-code"):
        load_model(str(folder))
    assert not marker.exists()


def test_bad_options_fail_before_loading(tmp_path):
    missing = str(tmp_path / "nope")  # the option is checked first: no "not found" here
    with pytest.raises(UserError, match="unknown dtype 'float8'"):
        load_model(missing, LoadOptions(dtype="float8"))
    with pytest.raises(UserError, match="unknown device 'tpu'"):
        load_model(missing, LoadOptions(device="tpu"))
    with pytest.raises(UserError, match="unknown quantization"):
        load_model(missing, LoadOptions(quantization="3bit"))
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            load_model(missing, LoadOptions(device="cuda"))


def test_dtype_defaults_to_auto_and_means_float32_on_the_cpu(tiny_dir):
    """auto: bfloat16 on CUDA (a 7B model in 14 GB, not 28), float32 on the CPU (as before)."""
    from unlearnviz.config import ModelSection
    from unlearnviz.model.loading import resolve_placement
    from unlearnviz.session import ModelStore

    assert LoadOptions().dtype == "auto" and ModelSection().dtype == "auto"
    assert resolve_placement(LoadOptions(device="cpu")) == ("cpu", torch.float32)
    lm = load_model(str(tiny_dir), LoadOptions(device="cpu"))
    assert lm.dtype == torch.float32 and lm.device.type == "cpu"
    store = ModelStore()  # "auto" and what it resolves to are one loaded copy, not two
    assert store.get(str(tiny_dir), LoadOptions(device="cpu")) is store.get(
        str(tiny_dir), LoadOptions(dtype="float32", device="cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_load_goes_straight_to_the_gpu_in_bfloat16(tiny_dir):
    lm = load_model(str(tiny_dir), LoadOptions(device="cuda"))
    assert lm.dtype == torch.bfloat16 and lm.device.type == "cuda"
    assert all(p.device.type == "cuda" for p in lm.model.parameters())
    assert lm.fingerprint() == lm.fingerprint(refresh=False)


def test_offloaded_embedding_device_is_where_it_computes(tiny_dir):
    """With the embedding offloaded to disk (a meta placeholder), inputs still go to the CPU."""
    dm = {"model.embed_tokens": "disk", "model.layers": "cpu", "model.norm": "cpu",
          "model.rotary_emb": "cpu", "lm_head": "cpu"}
    lm = load_model(str(tiny_dir), LoadOptions(device_map=dm))
    assert lm.adapter.embed.weight.device.type == "meta"
    assert lm.device == torch.device("cpu")
    assert lm.info()["device"] == "cpu" and lm.fingerprint() == load_model(str(tiny_dir)).fingerprint()


def test_dtype_resolution(tiny_dir):
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    assert resolve_dtype("float16", "cpu") == torch.float16
    lm = load_model(str(tiny_dir), LoadOptions(dtype="bfloat16", device="cpu"))
    assert lm.dtype == torch.bfloat16 and lm.info()["dtype"] == "bfloat16"


def test_unsupported_architecture_via_load_model(tmp_path):
    from transformers import AutoConfig, BertForMaskedLM

    cfg = AutoConfig.for_model("bert", vocab_size=259, hidden_size=16, intermediate_size=32,
                               num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16)
    BertForMaskedLM(cfg).save_pretrained(tmp_path / "bert")
    byte_tokenizer().save_pretrained(tmp_path / "bert")
    with pytest.raises(UserError, match="unsupported architecture 'bert'.*decoder blocks"):
        load_model(str(tmp_path / "bert"))


def _write_tiny_gguf(path, layers=2, hidden=32, inter=64, heads=4, kv_heads=2):
    """A llama GGUF with byte-level tokens and random float32 weights, written with `gguf`."""
    import numpy as np
    from tokenizers import pre_tokenizers

    gguf = pytest.importorskip("gguf")
    tokens = ["<pad>", "<s>", "</s>"] + list(pre_tokenizers.ByteLevel.alphabet())
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_context_length(64)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(inter)
    w.add_rope_dimension_count(hidden // heads)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_merges([])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    rng = np.random.default_rng(0)
    tensors = {}

    def add(name, *shape):
        tensors[name] = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        w.add_tensor(name, tensors[name])

    add("token_embd.weight", len(tokens), hidden)
    add("output.weight", len(tokens), hidden)
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    kv = kv_heads * hidden // heads
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        add(f"blk.{i}.attn_q.weight", hidden, hidden)
        add(f"blk.{i}.attn_k.weight", kv, hidden)
        add(f"blk.{i}.attn_v.weight", kv, hidden)
        add(f"blk.{i}.attn_output.weight", hidden, hidden)
        add(f"blk.{i}.ffn_gate.weight", inter, hidden)
        add(f"blk.{i}.ffn_up.weight", inter, hidden)
        add(f"blk.{i}.ffn_down.weight", hidden, inter)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensors


def test_gguf_file_is_converted_once_and_cached(tmp_path):
    path = tmp_path / "tiny.gguf"
    tensors = _write_tiny_gguf(path)
    lm = load_model(str(path))
    assert lm.adapter.family == "llama" and lm.n_layers == 2 and lm.hidden_size == 32
    assert lm.name == "tiny"
    down = tensors["blk.1.ffn_down.weight"]
    assert torch.equal(lm.adapter.mlp_out(1).weight, torch.from_numpy(down))
    assert len(lm.tokenizer("Hello there").input_ids) >= 11  # byte-level: one token per byte
    cached = list((tmp_path / "cache" / "models").iterdir())
    assert len(cached) == 1 and (cached[0] / "config.json").exists()
    assert any(f.suffix == ".safetensors" for f in cached[0].iterdir())
    assert not [p for p in cached[0].parent.iterdir() if ".tmp" in p.name]  # no leftovers
    again = load_model(str(path))  # from the cache this time
    assert again.fingerprint() == lm.fingerprint()


def test_unreadable_gguf_is_a_user_error(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + b"\x00" * 60)
    with pytest.raises(UserError, match="cannot convert broken.gguf"):
        load_model(str(path))


@pytest.mark.slow
def test_default_model(monkeypatch):
    monkeypatch.delenv("UNLEARNVIZ_CACHE")  # the converted copy from `python -m unlearnviz prepare`
    lm = load_model("default")
    assert lm.name == DEFAULT_MODEL
    assert lm.adapter.family == "llama"
    assert lm.n_layers == 30 and lm.hidden_size == 576
    assert lm.adapter.mlp_out_rel == "mlp.down_proj" and lm.adapter.final_norm is not None
    assert lm.is_chat
    assert all(not p.requires_grad for p in lm.model.parameters()) and not lm.model.training


def test_tied_weights_count_once():
    """n_params over modules (for packed 4-bit weights) must not count a tied unembedding twice."""
    model = tiny_model("gemma", layers=1)  # gemma ties the unembedding to the embedding
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    lm = wrap_model(model, byte_tokenizer())
    assert lm.n_params() == sum(p.numel() for p in model.parameters())


def test_the_model_store_keys_a_model_by_what_it_is(tiny_dir, tmp_path, monkeypatch):
    """One copy per set of weights and resolved placement, however named: cpu and auto on a CPU
    machine, a relative path, a symlink, the default model by its alias or its folder."""
    from unlearnviz.model.loading import model_key
    from unlearnviz.session import ModelStore

    if torch.cuda.is_available():
        pytest.skip("auto means cuda here")
    link = tmp_path / "link"
    link.symlink_to(tiny_dir)
    monkeypatch.chdir(tiny_dir.parent)
    keys = {model_key(src, LoadOptions(dtype=dt, device=dev))
            for src in (str(tiny_dir), str(link), tiny_dir.name, f"./{tiny_dir.name}")
            for dt, dev in (("auto", "auto"), ("float32", "cpu"), ("auto", "cpu"), ("float32", "auto"))}
    assert len(keys) == 1, keys
    default = (tmp_path / "cache" / "models" / DEFAULT_MODEL)  # UNLEARNVIZ_CACHE of this module
    default.mkdir(parents=True)
    assert model_key("default", LoadOptions()) == model_key(str(default), LoadOptions(device="cpu")) \
        == model_key(DEFAULT_MODEL, LoadOptions(dtype="float32"))
    assert model_key(str(tiny_dir), LoadOptions(dtype="float16")) not in keys  # another dtype is another copy
    store = ModelStore()
    assert store.get(str(link), LoadOptions()) is store.get(f"./{tiny_dir.name}", LoadOptions(device="cpu"))
    assert len(store.loaded()) == 1


def test_the_model_store_never_holds_its_lock_while_loading(tiny_dir, tmp_path):
    """While one model loads (here held mid-load: the real loader, started only once the test says
    so), another model's load and a lookup of a loaded one go ahead: only that model's own lock is
    held. A second caller of the loading model waits for that one load, not a second."""
    import threading

    from unlearnviz.session import ModelStore

    other = tmp_path / "other"
    shutil.copytree(tiny_dir, other)
    entered, release, calls = threading.Event(), threading.Event(), []

    def gated(source, opts):
        calls.append(source)
        if source == str(other):
            entered.set()
            assert release.wait(300), "never released"
        return load_model(source, opts)

    store, done = ModelStore(load=gated), {}
    loaded = store.get(str(tiny_dir), LoadOptions(device="cpu"))

    def get(name: str, source: str) -> None:
        done[name] = store.get(source, LoadOptions(device="cpu"))

    slow = [threading.Thread(target=get, args=(f"slow{i}", str(other)), daemon=True) for i in range(2)]
    slow[0].start()
    assert entered.wait(300)
    slow[1].start()  # the same model: waits for the load in progress
    fast = threading.Thread(target=get, args=("fast", str(tiny_dir)), daemon=True)
    fast.start()
    fast.join(timeout=300)  # a deadlock check, not a timing: with the store's lock held it never ends
    assert not fast.is_alive() and done["fast"] is loaded and "slow0" not in done
    release.set()
    for t in slow:
        t.join(timeout=300)
    assert done["slow0"] is done["slow1"] and calls.count(str(other)) == 1
