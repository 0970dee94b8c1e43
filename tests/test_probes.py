"""Logit lens and residual-knowledge probes on the tiny model; verdict logic on set numbers."""

from __future__ import annotations

import pytest
import torch

from unlearnviz.analysis.probes import ProbeResult, _ranges, judge, lens_logits, logit_lens, residual_knowledge
from unlearnviz.evaluation.mcq import score_items, summarise
from unlearnviz.model.adapter import linear_weight
from unlearnviz.model.routing import RoutingPlan


def random_plan(lm, layer=2, scale=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return RoutingPlan(deltas={layer: torch.randn(tuple(linear_weight(lm.adapter.mlp_out(layer)).shape), generator=g)
                               * scale})


def test_last_layer_lens_is_the_models_own_output(tiny_lm, tiny_data):
    item = tiny_data.forget_mcq[0]
    ll = logit_lens(tiny_lm, item.question, item.gold)
    ids = tiny_lm.tokenizer(item.question, return_tensors="pt").input_ids
    with torch.no_grad():
        probs = torch.softmax(tiny_lm.model(input_ids=ids).logits[0, -1].float(), -1)
    top_p, top_i = probs.topk(5)
    assert [t for t, _ in ll.top_original[-1]] == [tiny_lm.tokenizer.decode([int(i)]) for i in top_i]
    assert [p for _, p in ll.top_original[-1]] == pytest.approx(top_p.tolist(), abs=1e-4)
    gold_id = tiny_lm.tokenizer(" " + item.gold).input_ids[0]
    assert ll.gold_prob_original[-1] == pytest.approx(float(probs[gold_id]), abs=1e-5)
    assert ll.gold_rank_original[-1] == 1 and ll.gold_prob_original[-1] > 0.5  # the tiny model knows it
    assert ll.top_edited is None and ll.gold_prob_edited is None
    assert len(ll.top_original) == tiny_lm.n_layers
    s = ll.summary()
    assert s["gold_token"] == ll.gold_token and len(s["top1_original"]) == tiny_lm.n_layers


def test_lens_with_an_edit(tiny_lm, tiny_data):
    item = tiny_data.forget_mcq[1]
    ll = logit_lens(tiny_lm, item.question, item.gold, plan=random_plan(tiny_lm, layer=2, scale=1.0))
    assert ll.gold_prob_edited[:2] == pytest.approx(ll.gold_prob_original[:2], abs=1e-5)
    assert ll.gold_prob_edited[3] != pytest.approx(ll.gold_prob_original[3], abs=1e-4)
    assert lens_logits(tiny_lm, torch.zeros(2, tiny_lm.hidden_size)).shape[0] == 2


def test_one_pass_output_accuracy_equals_the_evaluator(tiny_lm, tiny_data):
    plan = random_plan(tiny_lm, layer=2, scale=0.6)
    res = residual_knowledge(tiny_lm, tiny_data, plan=plan, layers=[1, 3], max_items=24, floor=True)
    forget, retain = res.n_items["forget"], res.n_items["retain"]
    assert (forget, retain) == (24, 24) and res.chance == pytest.approx(0.25)
    from unlearnviz.analysis.probes import _sample_items

    items_f = _sample_items(tiny_data.forget_mcq, 24, 0)
    for side, p in (("original", None), ("edited", plan)):
        ev = summarise(score_items(tiny_lm, items_f, plan=p, letter=False, floor=side == "original"))
        assert res.output[side]["forget"] == pytest.approx(ev["cloze_acc"])
        if side == "original":
            assert res.output_floor == pytest.approx(ev["floor_acc"])
    assert res.probe["edited"]["forget"][0] == res.probe["original"]["forget"][0]  # layer 1: before the edit
    assert res.lens["edited"]["forget"][0] == res.lens["original"]["forget"][0]
    assert len(res.lens_floor) == 2 and "lens_forget_edited" in res.per_layer()[0]
    assert res.layer_verdicts[0] == "before the edit (unchanged)"
    assert len(res.probe_floor) == 2 and res.edit_layers == [2]
    js = res.to_json()
    assert js["per_layer"][1]["layer"] == 3 and "probe_forget_edited" in js["per_layer"][1]


def test_probe_reads_what_the_model_knows(tiny_lm, tiny_data):
    res = residual_knowledge(tiny_lm, tiny_data, layers=[2, 3], max_items=None, floor=False)
    assert res.output["original"]["forget"] > 0.9
    fast = residual_knowledge(tiny_lm, tiny_data, layers=[3], max_items=16, floor=False, train_probe=False)
    assert fast.probe["original"]["forget"] == [0.25] and fast.lens["original"]["forget"][0] > 0.8
    # a tuned-lens probe on the stem reads the held-out facts well above chance (measured ~0.89)
    assert res.probe["original"]["forget"][-1] > 0.6
    # and the untrained lens restricted to the choices does too (it is what the output reads at the last layer)
    assert res.lens["original"]["forget"][-1] > 0.8
    assert "edited" not in res.probe and res.verdict.startswith("no edit")


def _float64_shapes(run) -> list[tuple[int, ...]]:
    """Shapes of the float64 tensors that torch functions return while ``run()`` runs."""
    seen: list[tuple[int, ...]] = []

    class Watch(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.dtype == torch.float64:
                seen.append(tuple(out.shape))
            return out

    with Watch():
        run()
    return seen


def test_probes_copy_only_the_answer_rows_of_the_unembedding(tiny_lm, tiny_data):
    """The probes' targets are the answer tokens' output embeddings: a float64 copy of the whole
    unembedding (1 GiB at a 7B vocabulary; before, one per layer, side and floor) never happens."""
    vocab = tuple(tiny_lm.adapter.unembed.weight.shape)
    plan = random_plan(tiny_lm, layer=2, scale=0.6)
    seen = _float64_shapes(lambda: residual_knowledge(tiny_lm, tiny_data, plan=plan, layers=[1, 3], max_items=12))
    assert seen and vocab not in seen
    assert max(s[0] for s in seen if len(s) == 2) < vocab[0]


def test_answer_table_reads_what_the_whole_unembedding_reads(tiny_lm, tiny_data):
    from unlearnviz.analysis.probes import answer_embeddings, probe_item_accuracy
    from unlearnviz.data.batching import encode_pair

    items = tiny_data.forget_mcq[:16] + tiny_data.retain_mcq[:16]
    firsts = [[encode_pair(tiny_lm.tokenizer, it.question, " " + c)[1][0] for c in it.choices] for it in items]
    x = torch.randn(len(items), tiny_lm.hidden_size, generator=torch.Generator().manual_seed(0))
    folds = [i % 2 for i in range(len(items))]
    table, rows = answer_embeddings(tiny_lm, firsts)
    assert table.dtype == torch.float64 and table.shape[0] == len({t for f in firsts for t in f})
    whole = tiny_lm.adapter.unembed.weight.detach().float().cpu()
    assert torch.equal(table[rows[0][0]], whole[firsts[0][0]].double())
    want = probe_item_accuracy(x, items, firsts, whole, folds, 2)
    assert probe_item_accuracy(x, items, rows, table, folds, 2).tolist() == want.tolist()


def _result(out_o, out_e, probe_o, probe_e, edit_layers=(2,), floor=None):
    layers = list(range(len(probe_o)))
    return ProbeResult(layers=layers, chance=0.25, n_items={"forget": 20, "retain": 20}, folds=2,
                       probe={"original": {"forget": probe_o, "retain": probe_o},
                              "edited": {"forget": probe_e, "retain": probe_o}},
                       probe_floor=floor, output={"original": {"forget": out_o, "retain": 0.9},
                                                  "edited": {"forget": out_e, "retain": 0.9}},
                       output_floor=0.25, edit_layers=list(edit_layers))


def test_verdicts():
    hidden = _result(0.95, 0.25, [0.9, 0.9, 0.9, 0.9], [0.9, 0.9, 0.85, 0.8])
    judge(hidden)
    assert hidden.verdict.startswith("hidden, not erased") and hidden.readable_layers == [2, 3]
    assert hidden.layer_verdicts == ["before the edit (unchanged)", "before the edit (unchanged)",
                                     "still readable", "still readable"]
    erased = _result(0.95, 0.25, [0.9, 0.9, 0.9, 0.9], [0.9, 0.9, 0.3, 0.28], edit_layers=(1, 2))
    judge(erased)
    assert erased.verdict.startswith("erased") and erased.readable_layers == []
    assert erased.layer_verdicts[1] == "inside the edit window: still readable" and "layers 1" in erased.verdict
    partly = _result(0.95, 0.55, [0.9] * 4, [0.9, 0.9, 0.5, 0.55])
    judge(partly)  # the inside shows what the output shows, no more
    assert partly.verdict.startswith("partly erased, not hidden") and partly.layer_verdicts[3] == "weakened"
    kept = _result(0.95, 0.9, [0.9] * 4, [0.9] * 4)
    judge(kept)
    assert kept.verdict.startswith("not forgotten")
    floor = _result(0.95, 0.25, [0.9] * 4, [0.9, 0.9, 0.55, 0.55], floor=[0.5] * 4)
    judge(floor)  # 55% is far above chance but only 5 points above the probe's floor
    assert floor.verdict.startswith("erased")
    assert "5 points above what it reads with the subject removed" in floor.verdict
    for res in (hidden, erased, partly, kept, floor):  # one floor per verdict: the output's
        assert res.verdict.count("floor") == 1, res.verdict
    # the untrained lens readout counts too: the probe is at chance after the edit, the lens is not
    lens = _result(0.95, 0.25, [0.3] * 4, [0.3] * 4)
    lens.lens = {"original": {"forget": [0.3, 0.3, 0.9, 1.0]}, "edited": {"forget": [0.3, 0.3, 0.8, 0.9]}}
    judge(lens)
    assert lens.readout("edited") == [0.3, 0.3, 0.8, 0.9] and lens.verdict.startswith("hidden, not erased")


def test_ranges():
    assert _ranges([3, 4, 5, 9]) == "3–5, 9"
    assert _ranges([1]) == "1"
