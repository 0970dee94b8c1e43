"""RMU, SRMU and MRP on the tiny synthetic model: registry, validation, engine equivalence,
edits that never touch the base weights, stacking, save/load and export."""

from __future__ import annotations

import json
import math
from contextlib import contextmanager

import pytest
import torch

from unlearnviz.errors import UserError
from unlearnviz.evaluation.mcq import score_items, summarise
from unlearnviz.methods import EditStack, get_method, load_edit, make_hparams, save_edit
from unlearnviz.methods.base import Cancelled, describe_hparams
from unlearnviz.methods.edit import export_checkpoint
from unlearnviz.model.routing import RoutingPlan


def small(lm, method: str, **over):
    layer = min(2, lm.n_layers - 2)
    # few steps at a high rate: the tiny model, not the default model the defaults are tuned on
    base = {"rmu": {"layer": layer, "window": 2, "steps": 12, "batch_size": 8, "steering_coeff": 8.0, "lr": 1e-2,
                    "alpha": 100},
            "srmu": {"layer": layer, "window": 2, "steps": 12, "batch_size": 8, "lr": 1e-2, "alpha": 100},
            "mrp": {"layers": [1], "k": 4, "steps": 6, "batch_size": 8},
            "mrp-stream": {"layers": [1], "k": 4, "steps": 6, "batch_size": 8, "placement": "stream",
                           "spare_first": False},
            "mrp-kl": {"layers": [1], "k": 4, "steps": 6, "batch_size": 8, "retain_loss": "kl"}}[method]
    return make_hparams(get_method(method.split("-")[0]).hparams_cls, {**base, **over})


def test_registry_and_docs():
    for name in ("rmu", "srmu", "mrp"):
        spec = get_method(name)
        rows = describe_hparams(spec.hparams_cls)
        assert rows and all(r["doc"] for r in rows), name
    with pytest.raises(UserError, match="unknown method"):
        get_method("nope")


@pytest.mark.parametrize("over,match", [
    ({"nope": 1}, "unknown hyperparameter"),
    ({"steps": "many"}, "cannot read"),
    ({"steps": 0}, "below its minimum"),
    ({"alpha": -1.0}, "below its minimum"),
    ({"lr": float("nan")}, "finite"),
    ({"steering_coeff": float("inf")}, "finite"),
])
def test_hparam_validation(over, match):
    with pytest.raises(UserError, match=match):
        make_hparams(get_method("rmu").hparams_cls, over)


@pytest.mark.parametrize("method", ["rmu", "srmu", "mrp", "mrp-stream", "mrp-kl"])
def test_window_engine_matches_naive_loop(tiny_lm, tiny_data, method):
    """Same seed and batches: the cached layer-window loss trajectory equals the full forward's
    (MRP's stream placement: a window from block 0, whose cached input is the raw embedding)."""
    spec = get_method(method.split("-")[0])
    hp = small(tiny_lm, method)
    fast = spec.fit(tiny_lm, tiny_data, hp)
    naive = spec.fit(tiny_lm, tiny_data, hp, naive=True)
    a = [r["loss"] for r in fast.meta["losses"]]
    b = [r["loss"] for r in naive.meta["losses"]]
    assert len(a) == len(b) == hp.steps
    for x, y in zip(a, b):
        assert math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-6), (a, b)
    if not method.startswith("mrp"):  # the first trained block is collapsed to cached output + delta·x
        assert fast.meta["linear_first"] and not naive.meta["linear_first"]
    # the naive loop never joins forget and retain batches into one call
    assert naive.meta.get("joined_steps", 0) == 0


@pytest.mark.parametrize("window", [1, 2])
def test_window_engine_matches_naive_on_a_stack(tiny_lm, tiny_data, window):
    """A second RMU request on top of a first one (prior deltas in the window), and the
    one-block window (no block runs at all), still follow the naive loop's losses."""
    spec = get_method("rmu")
    first = spec.fit(tiny_lm, tiny_data, small(tiny_lm, "rmu"))
    hp = make_hparams(spec.hparams_cls, {"steps": 6, "layer": 2, "window": window, "seed": 3})
    fast = spec.fit(tiny_lm, tiny_data, hp, prior=first.plan())
    naive = spec.fit(tiny_lm, tiny_data, make_hparams(spec.hparams_cls, {"steps": 6, "layer": 2, "window": window,
                                                                         "seed": 3}), prior=first.plan(), naive=True)
    assert fast.meta["linear_first"]
    for x, y in zip([r["loss"] for r in fast.meta["losses"]], [r["loss"] for r in naive.meta["losses"]]):
        assert math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-6)


@pytest.mark.parametrize("method", ["rmu", "srmu", "mrp", "mrp-stream"])
def test_edit_forgets_more_than_it_costs_and_leaves_weights(tiny_lm, tiny_data, method):
    fp = tiny_lm.fingerprint()
    over = {"rmu": {"steps": 60}, "srmu": {"steps": 60, "c_map": 8.0},
            "mrp": {"steps": 30, "k": 16, "retain_weight": 5.0},
            "mrp-stream": {"steps": 30, "k": 16, "retain_weight": 5.0}}[method]
    edit = get_method(method.split("-")[0]).fit(tiny_lm, tiny_data, small(tiny_lm, method, **over))
    assert tiny_lm.fingerprint() == fp
    before_f = summarise(score_items(tiny_lm, tiny_data.forget_mcq, letter=False, floor=False))
    after_f = summarise(score_items(tiny_lm, tiny_data.forget_mcq, plan=edit.plan(), letter=False, floor=False))
    before_r = summarise(score_items(tiny_lm, tiny_data.retain_mcq, letter=False, floor=False))
    after_r = summarise(score_items(tiny_lm, tiny_data.retain_mcq, plan=edit.plan(), letter=False, floor=False))
    forget_drop = before_f["gold_logprob"] - after_f["gold_logprob"]
    retain_drop = before_r["gold_logprob"] - after_r["gold_logprob"]
    assert forget_drop > 0.5, (before_f, after_f)
    assert forget_drop > 2 * retain_drop, (forget_drop, retain_drop)


def test_rows_mask_applies_edit_to_chosen_rows_only(tiny_lm, tiny_data):
    edit = get_method("rmu").fit(tiny_lm, tiny_data, small(tiny_lm, "rmu", steps=20))
    ids = tiny_lm.tokenizer([tiny_data.forget_texts[0]] * 2, return_tensors="pt").input_ids
    plain = tiny_lm.model(ids).logits
    with tiny_lm.router.apply(edit.plan(rows=torch.tensor([0.0, 1.0]))):
        mixed = tiny_lm.model(ids).logits
    with tiny_lm.router.apply(edit.plan()):
        edited = tiny_lm.model(ids).logits
    assert torch.allclose(mixed[0], plain[0], atol=1e-5)
    assert torch.allclose(mixed[1], edited[1], atol=1e-5)
    assert not torch.allclose(mixed[1], plain[1], atol=1e-3)


def test_stack_undo_and_continual_mrp(tiny_lm, tiny_data):
    stack = EditStack()
    first = get_method("mrp").fit(tiny_lm, tiny_data, small(tiny_lm, "mrp", steps=0))
    stack.push(first)
    second = get_method("mrp").fit(tiny_lm, tiny_data, small(tiny_lm, "mrp", steps=3), prior=stack.plan())
    q1, q2 = first.projections[1], second.projections[1]
    assert torch.allclose(q1 @ q1.T, torch.eye(len(q1)), atol=1e-4)
    assert (q1 @ q2.T).abs().max() < 1e-4  # new directions are orthogonal to the frozen ones
    stack.push(second)
    assert stack.plan().projections[1].shape[0] == len(q1) + len(q2)
    # the combined projection removes both requests' directions from the site's output
    captured = {}
    plan = stack.plan().merged(RoutingPlan(capture={1: lambda h: captured.__setitem__("h", h)}))
    ids = tiny_lm.tokenizer(tiny_data.forget_texts[:2], return_tensors="pt", padding=True)
    with tiny_lm.router.apply(plan):
        tiny_lm.model(**ids)
    mu = stack.plan().offsets[1]  # centred projection: the variation along Q is gone, the mean kept
    h = captured["h"][:, 1:]  # position 0 (attention sink) is spared by default
    assert ((h - mu) @ torch.cat([q1, q2]).T).abs().max() < 1e-3
    assert stack.undo() is second and len(stack) == 1
    with pytest.raises(UserError):
        EditStack().undo()


def test_stream_mrp_empties_the_subspace_up_to_the_site(tiny_lm, tiny_data, tmp_path):
    """Placement "stream": at every block <= the site, every position (no spared sink) has the
    constant component μQᵀ along Q; the block after it does not. Saves and loads as it was."""
    edit = get_method("mrp").fit(tiny_lm, tiny_data, small(tiny_lm, "mrp-stream", steps=3))
    s = edit.stream
    assert s is not None and s.last == 1 and not edit.projections and s.offset is not None
    assert torch.allclose(s.q @ s.q.T, torch.eye(len(s.q)), atol=1e-4)
    seen: dict = {}
    plan = edit.plan().merged(RoutingPlan(capture={k: (lambda h, k=k: seen.__setitem__(k, h))
                                                   for k in range(3)}))
    ids = tiny_lm.tokenizer(tiny_data.forget_texts[:3], return_tensors="pt", padding=True)
    with torch.no_grad(), tiny_lm.router.apply(plan):
        tiny_lm.model(**ids)
    keep = ids["attention_mask"].bool()
    for layer in (0, 1):
        assert ((seen[layer] - s.offset) @ s.q.T)[keep].abs().max() < 1e-3, layer
    assert ((seen[2] - s.offset) @ s.q.T)[keep].abs().max() > 1e-2
    back = load_edit(save_edit(edit, tmp_path / "e", tiny_lm), tiny_lm)
    assert back.stream.last == s.last and torch.equal(back.stream.q, s.q) and torch.equal(back.stream.offset, s.offset)
    assert back.meta["placement"] == "stream" and EditStack([back]).plan().stream is not None


def test_cancel_leaves_nothing(tiny_lm, tiny_data):
    calls = []
    with pytest.raises(Cancelled):
        get_method("rmu").fit(tiny_lm, tiny_data, small(tiny_lm, "rmu", steps=50),
                              progress=calls.append, should_stop=lambda: len(calls) >= 3)
    assert len(calls) == 3


def test_nan_loss_is_a_clear_error(tiny_lm, tiny_data, monkeypatch):
    """A loss that overflows stops the run with a message naming the term, and nothing is applied."""
    import unlearnviz.methods.misdirection as md

    real = md.masked_mse
    monkeypatch.setattr(md, "masked_mse", lambda *a, **k: real(*a, **k) * float("inf"))
    fp = tiny_lm.fingerprint()
    with pytest.raises(UserError, match="loss term .* became"):
        get_method("rmu").fit(tiny_lm, tiny_data, small(tiny_lm, "rmu", steps=5))
    assert tiny_lm.fingerprint() == fp


def test_bad_layers_and_k(tiny_lm, tiny_data):
    with pytest.raises(UserError, match="out of range"):
        get_method("rmu").fit(tiny_lm, tiny_data, small(tiny_lm, "rmu", layer=99))
    with pytest.raises(UserError, match="hidden size"):
        get_method("mrp").fit(tiny_lm, tiny_data, small(tiny_lm, "mrp", k=tiny_lm.hidden_size))


def test_save_load_roundtrip_and_refusals(tiny_lm, tiny_data, tmp_path):
    edit = get_method("srmu").fit(tiny_lm, tiny_data, small(tiny_lm, "srmu"))
    folder = save_edit(edit, tmp_path / "e", tiny_lm)
    back = load_edit(folder, tiny_lm)
    for k, v in edit.deltas.items():
        assert torch.equal(v.cpu(), back.deltas[k].cpu())
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["method"] == "srmu" and manifest["model"]["fingerprint"] == tiny_lm.fingerprint()
    # tampered tensor file
    blob = bytearray((folder / "edit.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (folder / "edit.safetensors").write_bytes(bytes(blob))
    with pytest.raises(UserError, match="checksum"):
        load_edit(folder, tiny_lm)
    # another model's edit
    folder = save_edit(edit, tmp_path / "f", tiny_lm)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["model"]["fingerprint"] = "0" * 32
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="made for model"):
        load_edit(folder, tiny_lm)


def test_export_merges_deltas_exactly(tiny_lm, tiny_data, tmp_path):
    from transformers import AutoModelForCausalLM

    edit = get_method("rmu").fit(tiny_lm, tiny_data, small(tiny_lm, "rmu", steps=20))
    stack = EditStack([edit])
    info = export_checkpoint(tiny_lm, stack, tmp_path / "ckpt")
    assert info["merged_weights"]
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    ids = tiny_lm.tokenizer(tiny_data.forget_texts[:3], return_tensors="pt", padding=True)
    with torch.no_grad():
        with tiny_lm.router.apply(stack.plan()):
            hooked = tiny_lm.model(**ids).logits
        plain = exported(**ids).logits
    assert (hooked - plain).abs().max() < 1e-4


_FAMILY_LMS: dict = {}


def _family_lm(family: str):
    from tiny_models import byte_tokenizer, tiny_model

    from unlearnviz.model import wrap_model

    if family not in _FAMILY_LMS:
        _FAMILY_LMS[family] = wrap_model(tiny_model(family, layers=4), byte_tokenizer(), name=f"tiny-{family}")
    return _FAMILY_LMS[family]


# widths differ between batches, some batches are padded and one is not (the model then passes no
# mask at all), so every kind of join is exercised: longer/shorter, left-out mask on either side
_PAIR_TEXTS = [["The capital of France is Paris.", "Hi there", "Rome is in Italy"],
               ["Madrid, Spain", "Oslo"],
               ["Berlin is the capital", "Vienna is the capital"],  # no padding
               ["A much longer sentence about Lisbon and Portugal.", "Bern"]]


@contextmanager
def _pair_batches(family: str):
    """The family's tiny model on one thread, with the _PAIR_TEXTS batches (one per list)."""
    from tiny_models import one_thread

    from unlearnviz.data.batching import make_batches, tokenize_texts

    gen = one_thread()
    next(gen)
    try:
        lm = _family_lm(family)
        yield lm, [make_batches(tokenize_texts(lm, texts, 64), 8, lm.tokenizer.pad_token_id)[0]
                   for texts in _PAIR_TEXTS]
    finally:
        next(gen, None)


@pytest.mark.parametrize("linear_first", [True, False])
@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "gemma", "gemma2", "gemma3_text", "phi3", "gpt2",
                                    "gpt_neox"])
def test_output_pair_equals_two_calls(family, linear_first, monkeypatch):
    """One batched call for two batches (padded to the longer width, kwargs joined) gives every
    real position what two separate calls give, on every family, with a delta in the window."""

    from unlearnviz.methods import engine
    from unlearnviz.methods.engine import WindowEngine, zero_delta

    monkeypatch.setattr(engine, "JOIN_MAX_PADDING", 100.0)  # join every pair, however unequal

    with _pair_batches(family) as (lm, batches):
        assert len({b.input_ids.shape[1] for b in batches}) > 2
        eng = WindowEngine(lm, 1, 3, batches, linear_first=linear_first)
        assert eng.linear_first == (linear_first and lm.adapter.mlp_adds_to_residual)
        torch.manual_seed(0)
        deltas = {layer: zero_delta(lm, layer).detach().normal_(0, 0.05) for layer in (1, 2, 3)}
        plan = RoutingPlan(deltas=deltas)
        with torch.no_grad():
            for i in range(len(batches)):
                for j in range(len(batches)):
                    a, b = eng.output_pair(i, j, plan)
                    assert eng.joint and eng._joined[(i, j)] is not None, (family, i, j)
                    for got, k in ((a, i), (b, j)):
                        want = eng.output(k, plan)
                        real = batches[k].attention_mask.bool()  # pads are never read by a loss
                        assert got.shape == want.shape and torch.isfinite(got).all()
                        assert torch.allclose(got[real], want[real], rtol=1e-4, atol=1e-5), (family, i, j, k)
        assert len(eng._join_checked) >= 3
        # SDPA families leave the mask out of an unpadded batch; Gemma 2 (eager) always passes one
        assert family == "gemma2" or any(kind[2] or kind[3] for kind in eng._join_checked)


def test_output_pair_runs_apart_when_padding_would_cost_more(tiny_lm):
    from unlearnviz.data.batching import make_batches, tokenize_texts
    from unlearnviz.methods.engine import JOIN_MAX_PADDING, WindowEngine

    texts = [["The capital of France is Paris, and the capital of Italy is Rome."], ["Oslo"], ["Oslo."]]
    batches = [make_batches(tokenize_texts(tiny_lm, t, 64), 8, 0)[0] for t in texts]
    widths = [b.input_ids.shape[1] for b in batches]
    assert 2 * widths[0] / (widths[0] + widths[1]) - 1 > JOIN_MAX_PADDING
    eng = WindowEngine(tiny_lm, 1, 2, batches)
    with torch.no_grad():
        a, b = eng.output_pair(0, 1, None)
        assert (0, 1) not in eng._joined and torch.equal(a, eng.output(0, None))
        eng.output_pair(1, 2, None)  # widths within the limit: joined
        assert eng._joined[(1, 2)] is not None


def test_output_pair_keeps_a_batch_unpadded_when_asked(tiny_lm, tiny_data, monkeypatch):
    from unlearnviz.data.batching import make_batches, tokenize_texts
    from unlearnviz.methods import engine
    from unlearnviz.methods.engine import WindowEngine

    monkeypatch.setattr(engine, "JOIN_MAX_PADDING", 100.0)

    texts = [["The capital of Velmora is the old harbour city"], ["The capital of Velmora is"]]
    batches = [make_batches(tokenize_texts(tiny_lm, t, 64), 8, 0)[0] for t in texts]
    assert batches[0].input_ids.shape[1] > batches[1].input_ids.shape[1]
    eng = WindowEngine(tiny_lm, 1, 2, batches)
    with torch.no_grad():
        eng.output_pair(0, 1, None, pad_j=False)  # batch 1 is the shorter: two calls
        assert (0, 1) not in eng._joined and eng.joined_calls == 0
        eng.output_pair(1, 0, None, pad_j=False)  # batch 0, the longer, is not padded: one call
        assert eng._joined[(1, 0)] is not None and eng.joined_calls == 1 and eng.pair_calls == 2


def test_output_pair_falls_back_when_kwargs_do_not_join(tiny_lm, tiny_data):
    """A value the join does not know how to merge makes that pair run as two calls (same result)."""
    from unlearnviz.data.batching import make_batches, tokenize_texts
    from unlearnviz.methods.engine import WindowEngine

    batches = make_batches(tokenize_texts(tiny_lm, tiny_data.forget_texts[:6], 32), 3, 0)
    eng = WindowEngine(tiny_lm, 1, 2, batches)
    for layer in eng.kwargs[1]:
        eng.kwargs[1][layer]["opaque"] = object()
        eng.kwargs[0][layer]["opaque"] = object()
    with torch.no_grad():
        a, b = eng.output_pair(0, 1, None)
        assert eng._joined[(0, 1)] is None
        assert torch.equal(a, eng.output(0, None)) and torch.equal(b, eng.output(1, None))


@pytest.mark.parametrize("keep_first_out", [True, False])
@pytest.mark.parametrize("family", ["llama", "gemma2", "gemma3_text", "gpt2", "gpt_neox"])
def test_capture_without_frozen_outputs_stops_early_and_keeps_the_same_window(family, keep_first_out):
    """Without frozen outputs, captures after the first stop once the window's remaining kwargs
    are known to be objects an earlier block got; the window then runs exactly as before."""

    from unlearnviz.methods.engine import WindowEngine, zero_delta

    with _pair_batches(family) as (lm, batches):
        full = WindowEngine(lm, 0, 3, batches, keep_first_out=True)
        cut = WindowEngine(lm, 0, 3, batches, keep_frozen=False, keep_first_out=keep_first_out)
        assert cut._cut is None and cut.captured == 0  # captures are made when first read
        cut.capture(0)
        assert cut._cut is not None and cut._cut < 3, family
        torch.manual_seed(0)
        plan = RoutingPlan(deltas={layer: zero_delta(lm, layer).detach().normal_(0, 0.05) for layer in range(4)})
        with torch.no_grad():
            for i in range(len(batches)):
                assert torch.equal(cut.inputs[i], full.inputs[i])
                if keep_first_out:
                    assert torch.equal(cut.first_out[i], full.first_out[i])
                assert torch.equal(cut.output(i, plan), full.output(i, plan))
                assert cut.frozen[i] is None


@pytest.mark.parametrize("family", ["llama", "gemma2", "gemma3_text", "gpt2", "gpt_neox"])
def test_output_pair_cuts_a_batch_after_the_positions_its_loss_reads(family, monkeypatch):
    """With need_i, batch i comes back cut (to batch j's width, joining unpadded, or else to
    need_i) and equals the uncut output on every real position it keeps."""

    from unlearnviz.methods import engine
    from unlearnviz.methods.engine import WindowEngine, zero_delta

    monkeypatch.setattr(engine, "JOIN_MAX_PADDING", 100.0)
    with _pair_batches(family) as (lm, batches):
        eng = WindowEngine(lm, 1, 3, batches, linear_first=True)
        torch.manual_seed(0)
        plan = RoutingPlan(deltas={layer: zero_delta(lm, layer).detach().normal_(0, 0.05) for layer in (1, 2, 3)})
        widths = [b.input_ids.shape[1] for b in batches]
        with torch.no_grad():
            for i in range(len(batches)):
                for j in range(len(batches)):
                    if widths[i] == widths[j]:
                        continue
                    for need in (widths[i] - 1, min(widths[i], widths[j])):
                        a, b = eng.output_pair(i, j, plan, pad_j=False, need_i=need)
                        assert eng.joint, (family, i, j)
                        want_a, want_b = eng.output(i, plan), eng.output(j, plan)
                        assert need <= a.shape[1] <= widths[i]
                        if widths[j] < widths[i] and need <= widths[j]:
                            assert a.shape[1] == widths[j] and eng._joined[(i, j, widths[j])] is not None
                        real = batches[i].attention_mask.bool()[:, : a.shape[1]]
                        assert torch.allclose(a[real], want_a[:, : a.shape[1]][real], rtol=1e-4, atol=1e-5)
                        real_b = batches[j].attention_mask.bool()
                        assert torch.allclose(b[real_b], want_b[real_b], rtol=1e-4, atol=1e-5)
        assert any(kind[1] for kind in eng._join_checked)  # a cut was checked against the full call


def test_a_truncation_that_cuts_off_most_forget_tokens_says_so(tiny_lm, tiny_data, capsys):
    """max_tokens=32 on documents: the fit records the resolved window and a warning in its meta,
    the first progress event carries it, and the CLI's progress callback prints it as one line on
    stderr; with auto on the synthetic world (short facts) nothing is cut off and nothing warns."""
    import dataclasses

    from unlearnviz.cli.common import tqdm_progress

    texts = list(tiny_data.forget_texts)
    docs = [" ".join(texts[(d * 16 + j) % len(texts)] for j in range(16)) for d in range(8)]
    data = dataclasses.replace(tiny_data, forget_texts=docs, forget_text_half=[])
    events: list[dict] = []
    edit = get_method("rmu").fit(tiny_lm, data, small(tiny_lm, "rmu", steps=2, max_tokens=32), progress=events.append)
    (warning,) = edit.meta["warnings"]
    assert edit.hparams["max_tokens"] == 32 and not edit.meta["max_tokens_auto"] and edit.meta["truncated_share"] > 0.5
    assert "max_tokens=32 cuts off" in warning and events[0]["warning"] == warning
    assert all("warning" not in e for e in events[1:])
    progress, bar = tqdm_progress(2)
    progress(events[0])
    bar.close()
    assert capsys.readouterr().err.strip().splitlines() == [f"warning: {warning}"]
    mrp = get_method("mrp").fit(tiny_lm, data, small(tiny_lm, "mrp", steps=0, max_tokens=32))
    assert mrp.meta["warnings"] == [warning]  # no step: the meta still says so

    quiet: list[dict] = []
    edit = get_method("srmu").fit(tiny_lm, tiny_data, small(tiny_lm, "srmu", steps=2), progress=quiet.append)
    assert edit.hparams["max_tokens"] == 32 and edit.meta["max_tokens_auto"] and edit.meta["warnings"] == []
    assert edit.meta["truncated_share"] == 0.0 and all("warning" not in e for e in quiet)
