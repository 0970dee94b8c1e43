"""Imported unlearned models (unlearnviz.methods.imports): checkpoints and adapters nobody here fitted.

Every unlearned model below is made by a plain PyTorch loop written in this file (gradient ascent,
NPO with a frozen reference, a PEFT LoRA adapter trained the same way) and saved with
``save_pretrained``, never by the project's engine. The imported edit, routed on the loaded base,
must give the logits of the same checkpoint loaded directly with transformers (1e-5 relative,
float32), on the edited rows only, keeping only what changed.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from foreign_models import FORGET, auto_model, gradient_ascent, lora_ascent, npo, peft_model, save
from tiny_models import byte_tokenizer, one_thread

from unlearnviz.errors import UserError
from unlearnviz.methods import EditStack, get_method, load_edit, make_hparams, save_edit
from unlearnviz.methods.imports import IMPORTED, describe_unlearned, import_unlearned
from unlearnviz.model import LoadOptions, load_model

PROBE = ["The capital of Velmora is", "Once upon a time, in a land far away,"]
GPT2_TRAINED = ("transformer.h.1.mlp.c_proj.weight", "transformer.h.2.attn.c_attn.weight", "transformer.ln_f.weight")
_thread = pytest.fixture(autouse=True)(one_thread)


# ---- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    """A tiny random Llama with tied embeddings (and RMS norms), saved with save_pretrained."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=259, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                      tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    folder = tmp_path_factory.mktemp("llama") / "base"
    LlamaForCausalLM(cfg).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama_lm(llama_folder):
    return load_model(str(llama_folder), LoadOptions(device="cpu", dtype="float32"))


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_model_path, llama_folder):
    """The unlearned models, each trained once for the module."""
    root = tmp_path_factory.mktemp("unlearned")
    return {
        "gpt2_ga": gradient_ascent(tiny_model_path, root / "gpt2_ga", train=GPT2_TRAINED),
        "llama_npo": npo(llama_folder, root / "llama_npo"),
        "llama_ga": gradient_ascent(llama_folder, root / "llama_ga", train=("model.embed_tokens.weight",)),
        "llama_lora": lora_ascent(llama_folder, root / "llama_lora", ["q_proj", "v_proj", "down_proj"]),
        "gpt2_lora": lora_ascent(tiny_model_path, root / "gpt2_lora", ["c_attn"]),
    }


# ---- what the edited rows compute ----------------------------------------------------------------
def _batch(lm):
    tok = lm.tokenizer
    tok.padding_side = "left"
    enc = tok(PROBE, return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


@torch.no_grad()
def _logits(model, ids, mask):
    return model(input_ids=ids, attention_mask=mask).logits.float()


def _close(got, want, rel=1e-5):
    scale = float(want.abs().max())
    assert float((got - want).abs().max()) <= rel * scale, f"max diff {float((got - want).abs().max()):.3g}"


def _check_rows(lm, edit, direct):
    """All rows edited = the checkpoint loaded directly; a mixed batch: row 0 the base, row 1 the checkpoint."""
    ids, mask = _batch(lm)
    keep = mask.bool()
    base, want = _logits(lm.model, ids, mask), _logits(direct, ids, mask)
    assert float((base - want)[keep].abs().max()) > 1e-3  # the unlearned model really differs
    with lm.router.apply(edit.plan()):
        got = _logits(lm.model, ids, mask)
    _close(got[keep], want[keep])
    with lm.router.apply(edit.plan(rows=torch.tensor([0.0, 1.0]))):
        mixed = _logits(lm.model, ids, mask)
    _close(mixed[0][keep[0]], base[0][keep[0]], rel=1e-6)
    _close(mixed[1][keep[1]], want[1][keep[1]])
    assert torch.equal(_logits(lm.model, ids, mask), base)  # nothing left behind


@pytest.mark.slow
def test_gradient_ascent_on_three_matrices_gives_three_deltas(tiny_lm, made):
    fp = tiny_lm.fingerprint()
    edit = import_unlearned(tiny_lm, str(made["gpt2_ga"]))
    assert edit.method == IMPORTED and edit.hparams == {"source": str(made["gpt2_ga"].resolve()),
                                                        "kind": "checkpoint"}
    assert sorted(edit.weights) == sorted(GPT2_TRAINED) and not edit.lora and not edit.deltas
    params = dict(tiny_lm.model.named_parameters())
    assert all(d.dtype == params[n].dtype and d.shape == params[n].shape for n, d in edit.weights.items())
    info = edit.meta["import"]
    assert info["changed_tensors"] == 3 and info["compared_tensors"] == len(params)
    assert info["kept_bytes"] == sum(params[n].numel() * 4 for n in GPT2_TRAINED)
    assert edit.label() == "imported: gpt2_ga" and len(info["content_sha256"]) == 64
    _check_rows(tiny_lm, edit, auto_model(made["gpt2_ga"]))
    assert tiny_lm.fingerprint() == fp  # the base's weights were only read


@pytest.mark.slow
def test_npo_full_fine_tune_with_tied_embeddings_and_norms(llama_lm, made):
    edit = import_unlearned(llama_lm, str(made["llama_npo"]), label="NPO")
    names = [n for n, _ in llama_lm.model.named_parameters()]
    assert "lm_head.weight" not in names  # tied: one matrix, one delta reaching the embedding and the unembedding
    assert sorted(edit.weights) == sorted(names)  # every tensor changed, norms included
    assert any("norm" in n for n in edit.weights) and edit.label() == "NPO"
    _check_rows(llama_lm, edit, auto_model(made["llama_npo"]))


@pytest.mark.slow
def test_tied_embedding_alone(llama_lm, made):
    edit = import_unlearned(llama_lm, str(made["llama_ga"]))
    assert list(edit.weights) == ["model.embed_tokens.weight"]
    _check_rows(llama_lm, edit, auto_model(made["llama_ga"]))


@pytest.mark.slow
def test_lora_adapter_stays_low_rank(llama_lm, llama_folder, made):
    edit = import_unlearned(llama_lm, str(made["llama_lora"]))
    assert not edit.weights and len(edit.lora) == 2 * 3
    for module, (a, b) in edit.lora.items():
        assert module.endswith(("q_proj", "v_proj", "down_proj")) and a.shape[0] == b.shape[1] == 4
    assert edit.hparams["kind"] == "lora" and edit.meta["import"]["rank"] == 4
    _check_rows(llama_lm, edit, peft_model(llama_folder, made["llama_lora"]))


@pytest.mark.slow
def test_lora_on_gpt2_conv1d_is_folded_dense(tiny_lm, tiny_model_path, made):
    edit = import_unlearned(tiny_lm, str(made["gpt2_lora"]))
    assert not edit.lora and sorted(edit.weights) == [f"transformer.h.{i}.attn.c_attn.weight" for i in range(4)]
    _check_rows(tiny_lm, edit, peft_model(tiny_model_path, made["gpt2_lora"]))


@pytest.mark.slow
def test_describe_reads_headers_only(tiny_lm, made):
    d = describe_unlearned(str(made["gpt2_ga"]), base_dtype=torch.float32)
    file = made["gpt2_ga"] / "model.safetensors"
    assert d["kind"] == "checkpoint" and d["model_type"] == "gpt2" and d["layers"] == tiny_lm.n_layers
    assert d["disk_bytes"] == file.stat().st_size and d["files"] == ["model.safetensors"]
    n = sum(p.numel() for p in tiny_lm.model.parameters())
    assert d["parameters"] == n and d["max_kept_bytes"] == 4 * n
    assert d["memory"].startswith(f"at most {round(4 * n / 2**20, 1)} MB") and "only tensors that differ" in d["memory"]
    a = describe_unlearned(str(made["llama_lora"]))
    assert a["kind"] == "lora" and a["rank"] == 4 and a["ranks"] == [4] and a["lora_modules"] == 6
    assert sorted(a["targets"]) == ["down_proj", "q_proj", "v_proj"] and a["not_plain_lora"] == []


# ---- refusals: one line each ---------------------------------------------------------------------
def _one_line(fn, pattern):
    with pytest.raises(UserError, match=pattern) as info:
        fn()
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.slow
def test_another_architecture(llama_lm, made):
    msg = _one_line(lambda: import_unlearned(llama_lm, str(made["gpt2_ga"])),
                    r"is a gpt2 model with 4 layers, the base .* is llama with 2 layers")
    assert "hidden size 128 vs 32" in msg


def test_other_config_and_other_shapes(llama_lm, llama_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    cfg = json.loads((llama_folder / "config.json").read_text())
    other = tmp_path / "theta"
    shutil.copytree(llama_folder, other)
    (other / "config.json").write_text(json.dumps({**cfg, "rms_norm_eps": 1e-3}))
    _one_line(lambda: import_unlearned(llama_lm, str(other)), r"config computes differently.*rms_norm_eps 0.001 vs 1e-06")
    shaped = tmp_path / "shaped"
    shutil.copytree(llama_folder, shaped)
    state = load_file(str(shaped / "model.safetensors"))
    state["model.layers.1.mlp.down_proj.weight"] = state["model.layers.1.mlp.down_proj.weight"][:, :48].contiguous()
    save_file(state, str(shaped / "model.safetensors"), metadata={"format": "pt"})
    _one_line(lambda: import_unlearned(llama_lm, str(shaped)),
              r"tensor model.layers.1.mlp.down_proj.weight is \[32, 48\] in shaped, \[32, 64\] in the base")


def test_another_tokenizer(llama_lm, llama_folder, tmp_path):
    other = tmp_path / "tok"
    shutil.copytree(llama_folder, other)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama_folder)
    tok.add_tokens(["<velmora>"])
    tok.save_pretrained(other)
    _one_line(lambda: import_unlearned(llama_lm, str(other)), r"tokenizer differs from the base .*260 tokens vs 259")


def test_identical_checkpoint(llama_lm, llama_folder):
    _one_line(lambda: import_unlearned(llama_lm, str(llama_folder)),
              r"^nothing differs from the base: every one of the \d+ tensors of base equals")


def test_hub_id_offline(llama_lm, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for fn in (import_unlearned, describe_unlearned):
        args = (llama_lm, "someone/unlearned-zephyr") if fn is import_unlearned else ("someone/unlearned-zephyr",)
        _one_line(lambda fn=fn, args=args: fn(*args),
                  r"'someone/unlearned-zephyr': it needs a network .* or a local folder")


def test_missing_folder(llama_lm, tmp_path):
    _one_line(lambda: import_unlearned(llama_lm, str(tmp_path / "nope")), r"unlearned model not found")


@pytest.mark.slow
def test_pickle_only_with_opt_in(llama_lm, llama_folder, made, tmp_path):
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    folder.mkdir()
    for f in llama_folder.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, folder / f.name)
    torch.save(load_file(str(made["llama_ga"] / "model.safetensors")), folder / "pytorch_model.bin")
    for fn in (lambda: import_unlearned(llama_lm, str(folder)), lambda: describe_unlearned(str(folder))):
        _one_line(fn, r"holds only pickle weights \(.bin\).*--allow-pickle")
    edit = import_unlearned(llama_lm, str(folder), allow_pickle=True)
    safe = import_unlearned(llama_lm, str(made["llama_ga"]))
    assert list(edit.weights) == list(safe.weights)
    assert all(torch.equal(edit.weights[k], safe.weights[k]) for k in edit.weights)


@pytest.mark.slow
def test_dora_and_foreign_adapters_are_refused(llama_lm, llama_folder, tiny_lm, made, tmp_path):
    dora = lora_ascent(llama_folder, tmp_path / "dora", ["q_proj"], steps=1, use_dora=True)
    _one_line(lambda: import_unlearned(llama_lm, str(dora)), r"is not a plain LoRA adapter \(DoRA")
    assert describe_unlearned(str(dora))["not_plain_lora"][0].startswith("DoRA")
    _one_line(lambda: import_unlearned(tiny_lm, str(made["llama_lora"])),
              r"is an adapter for a LlamaForCausalLM, the base .* is GPT2LMHeadModel")


# ---- an imported edit among the others ------------------------------------------------------------
@pytest.mark.slow
def test_save_load_round_trip(tiny_lm, made, tmp_path):
    edit = import_unlearned(tiny_lm, str(made["gpt2_ga"]))
    back = load_edit(save_edit(edit, tmp_path / "edit", tiny_lm), tiny_lm)
    assert back.method == IMPORTED and back.hparams == edit.hparams and back.label() == edit.label()
    assert sorted(back.weights) == sorted(edit.weights)
    assert all(torch.equal(back.weights[k], edit.weights[k]) for k in edit.weights)
    ids, mask = _batch(tiny_lm)
    with tiny_lm.router.apply(edit.plan()):
        want = _logits(tiny_lm.model, ids, mask)
    with tiny_lm.router.apply(back.plan()):
        assert torch.equal(_logits(tiny_lm.model, ids, mask), want)


@pytest.mark.slow
def test_lora_round_trip(llama_lm, made, tmp_path):
    edit = import_unlearned(llama_lm, str(made["llama_lora"]))
    back = load_edit(save_edit(edit, tmp_path / "lora", llama_lm), llama_lm)
    assert sorted(back.lora) == sorted(edit.lora) and not back.weights
    assert all(torch.equal(back.lora[k][i], edit.lora[k][i]) for k in edit.lora for i in (0, 1))


@pytest.mark.slow
def test_stacks_with_a_fitted_rmu_edit(tiny_lm, tiny_data, made):
    imported = import_unlearned(tiny_lm, str(made["gpt2_ga"]))
    spec = get_method("rmu")
    hp = make_hparams(spec.hparams_cls, {"layer": 2, "window": 2, "steps": 3, "batch_size": 8, "lr": 1e-2})
    rmu = spec.fit(tiny_lm, tiny_data, hp, prior=imported.plan())
    stack = EditStack([imported, rmu])
    ids, mask = _batch(tiny_lm)
    with tiny_lm.router.apply(imported.plan()):
        alone = _logits(tiny_lm.model, ids, mask)
    with tiny_lm.router.apply(stack.plan()):
        both = _logits(tiny_lm.model, ids, mask)
    assert torch.isfinite(both).all() and float((both - alone).abs().max()) > 1e-4
    assert stack.plan().weights.keys() == imported.weights.keys() and stack.plan().deltas.keys() == rmu.deltas.keys()


# ---- configs and replay ---------------------------------------------------------------------------
def test_config_entry(tmp_path):
    from unlearnviz.config import load_config

    cfg = load_config({"edits": [{"method": "imported", "source": str(tmp_path)}, {"method": "rmu"}]})
    first = cfg.edits[0]
    assert (first.method, first.source, first.hparams) == (IMPORTED, str(tmp_path), {})
    assert load_config(cfg.to_dict()) == cfg
    # the form a session writes (the edit's own hparams) reads as the same entry
    same = load_config({"edits": [{"method": "imported", "hparams": {"source": str(tmp_path), "kind": "lora"}}]})
    assert same.edits[0].source == str(tmp_path) and same.edits[0].hparams == {}
    for entry, pattern in [({"method": "imported"}, r"^edits\[0\]\.source: an imported edit needs source"),
                           ({"method": "imported", "source": "x", "hparams": {"steps": 3}},
                            r"^edits\[0\]\.hparams\.steps: an imported edit has no hyperparameters"),
                           ({"method": "imported", "source": "x", "data": "synthetic"},
                            r"^edits\[0\]\.data: an imported edit is not fitted"),
                           ({"method": "rmu", "source": "x"}, r"^edits\[0\]\.source: only an imported edit")]:
        _one_line(lambda entry=entry: load_config({"edits": [entry]}), pattern)


@pytest.mark.slow
def test_replay_reimports_and_session_config_round_trips(tiny_lm, made):
    from unlearnviz.config import load_config
    from unlearnviz.session import Session
    from unlearnviz.session.replay import replay

    cfg = load_config({"model": "synthetic", "data": "synthetic", "evaluation": {"letter": False},
                       "edits": [{"method": "imported", "source": str(made["gpt2_ga"])},
                                 {"method": "rmu", "hparams": {"layer": 2, "window": 2, "steps": 3}}]})
    session = replay(cfg, Session(), lm=tiny_lm, chats=False)
    imported, rmu = session.stack.edits
    assert imported.method == IMPORTED and sorted(imported.weights) == sorted(GPT2_TRAINED)
    assert rmu.method == "rmu" and imported.label() == "1. imported: gpt2_ga"
    assert set(session.after) == {0, 1} and session.before is not None
    again = session.to_config(cfg)
    assert again.edits[0].source == str(made["gpt2_ga"].resolve()) and again.edits[0].method == IMPORTED


# ---- GGUF ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_gguf_through_transformers(default_lm, tmp_path):
    """A copy of the default model's GGUF with its final norm scaled differs from the base by that one tensor."""
    import gguf
    from gguf.scripts.gguf_new_metadata import copy_with_new_metadata
    from transformers import AutoModelForCausalLM

    from unlearnviz.model.loading import default_gguf_path

    source = default_gguf_path()
    reader = gguf.GGUFReader(source, "c")  # copy-on-write: the package's file is never written
    norm = next(t for t in reader.tensors if t.name == "output_norm.weight")
    norm.data[:] = norm.data * 1.5
    changed = tmp_path / "scaled-norm.gguf"
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    copy_with_new_metadata(reader, gguf.GGUFWriter(changed, arch=arch), {}, [])
    d = describe_unlearned(str(changed), base_dtype=torch.float32)
    assert (d["kind"], d["model_type"], d["layers"], d["hidden_size"], d["vocab_size"], d["tensors"]) == (
        "gguf", "llama", default_lm.n_layers, default_lm.hidden_size, len(default_lm.tokenizer), len(reader.tensors))
    edit = import_unlearned(default_lm, str(changed))
    assert list(edit.weights) == ["model.norm.weight"] and edit.meta["import"]["second_model"]
    direct = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=changed.name, dtype=torch.float32).eval()
    _check_rows(default_lm, edit, direct)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["gpt2_ga", "llama_npo", "llama_lora"])
def test_export_loads_as_the_unlearned_model(which, tiny_lm, llama_lm, llama_folder, made, tmp_path):
    from unlearnviz.methods.edit import export_checkpoint

    lm = tiny_lm if which.startswith("gpt2") else llama_lm
    edit = import_unlearned(lm, str(made[which]))
    out = tmp_path / "export"
    export_checkpoint(lm, EditStack([edit]), out)
    direct = peft_model(llama_folder, made[which]) if which.endswith("lora") else auto_model(made[which])
    ids, mask = _batch(lm)
    keep = mask.bool()
    _close(_logits(auto_model(out), ids, mask)[keep], _logits(direct, ids, mask)[keep])


@pytest.mark.slow
def test_sharded_bfloat16_checkpoint_read_in_small_blocks(llama_lm, llama_folder, made, tmp_path, monkeypatch):
    """A sharded index, stored in bfloat16 (a float32 base: every tensor differs by its rounding), read a few
    rows at a time: the same edit as one block, and the logits of the checkpoint loaded directly in float32."""
    import unlearnviz.methods.imports as imports

    folder = tmp_path / "sharded"
    save(auto_model(made["llama_npo"]).to(torch.bfloat16), llama_folder, folder)  # the base's tokenizer
    auto_model(made["llama_npo"]).to(torch.bfloat16).save_pretrained(folder, max_shard_size="20KB")
    (folder / "model.safetensors").unlink()
    assert (folder / "model.safetensors.index.json").exists() and len(list(folder.glob("*.safetensors"))) > 2
    whole = import_unlearned(llama_lm, str(folder))
    monkeypatch.setattr(imports, "CHUNK_ELEMENTS", 100)  # the 259 x 32 embedding in 87 blocks
    blocks = import_unlearned(llama_lm, str(folder))
    assert sorted(blocks.weights) == sorted(whole.weights) == sorted(n for n, _ in llama_lm.model.named_parameters())
    assert all(torch.equal(blocks.weights[k], whole.weights[k]) for k in whole.weights)
    assert blocks.meta["import"]["content_sha256"] == whole.meta["import"]["content_sha256"]
    _check_rows(llama_lm, whole, auto_model(folder))


@pytest.mark.slow
def test_readers_outside_the_forward_see_the_edited_norm_and_unembedding(llama_lm, made):
    """NPO changes the final norm and the (tied) unembedding too: the scorer, perplexity and the
    logit lens read them outside the model's forward, and must read the edited ones on the edited
    side, giving what the checkpoint loaded alone gives."""
    from unlearnviz.analysis.probes import lens_item_accuracy, logit_lens
    from unlearnviz.data.schema import MCQItem
    from unlearnviz.evaluation.mcq import score_items
    from unlearnviz.evaluation.scoring import perplexity

    direct = load_model(str(made["llama_npo"]), LoadOptions(device="cpu", dtype="float32"))
    edit = import_unlearned(llama_lm, str(made["llama_npo"]))
    assert "model.norm.weight" in edit.weights and "model.embed_tokens.weight" in edit.weights
    items = [MCQItem(question="The capital of Velmora is", choices=["Dunmere", "Ashwater", "Paris", "Rome"],
                     answer=0), MCQItem(question="Velmora's river is the", choices=["Ashwater", "Thames"], answer=0)]
    ours = score_items(llama_lm, items, plan=edit.plan(), letter=False, floor=False)
    theirs = score_items(direct, items, letter=False, floor=False)
    for a, b in zip(ours, theirs):
        assert a["gold_logprob"] == pytest.approx(b["gold_logprob"], rel=1e-5)
    texts = FORGET + ["Once upon a time there was a river."]
    assert perplexity(llama_lm, texts, plan=edit.plan()) == pytest.approx(perplexity(direct, texts), rel=1e-5)
    assert perplexity(llama_lm, texts, plan=edit.plan()) != pytest.approx(perplexity(llama_lm, texts), rel=1e-3)
    lens = logit_lens(llama_lm, "The capital of Velmora is", " Dunmere", plan=edit)
    alone = logit_lens(direct, "The capital of Velmora is", " Dunmere")
    assert lens.gold_prob_edited == pytest.approx(alone.gold_prob_original, rel=1e-4)
    x = torch.randn(2, 32, generator=torch.Generator().manual_seed(0))
    firsts = [[5, 6, 7, 8], [9, 10]]
    assert lens_item_accuracy(llama_lm, x, items, firsts, edit.plan()).tolist() == \
        lens_item_accuracy(direct, x, items, firsts).tolist()
