"""Importance maps (equal to SRMU's own), selectivity verdicts, token signatures, footprints."""

from __future__ import annotations

import math

import pytest
import torch

from unlearnviz.analysis.importance import (
    edit_footprint,
    importance,
    selectivity_report,
    selectivity_verdict,
    spearman,
    token_layer_map,
)
from unlearnviz.errors import UserError
from unlearnviz.methods import get_method, make_hparams
from unlearnviz.model.adapter import linear_weight
from unlearnviz.model.routing import RoutingPlan


@pytest.fixture(scope="module")
def imp(tiny_lm, tiny_data):
    return importance(tiny_lm, tiny_data)


def test_map_equals_the_one_srmu_trains_with(tiny_lm, tiny_data, imp):
    spec = get_method("srmu")
    # SRMU takes its statistics on the batches its steps read: five steps of 64 read every text
    edit = spec.fit(tiny_lm, tiny_data, make_hparams(spec.hparams_cls, {"layer": 2, "window": 2, "steps": 5,
                                                                        "batch_size": 64}))
    assert edit.meta["captured"] == 9
    assert torch.allclose(imp.row(2), torch.tensor(edit.meta["importance"]), atol=1e-5)
    assert imp.selectivity[imp.layers.index(2)].share_top10 == pytest.approx(edit.meta["selectivity_top10"], abs=1e-5)


def test_map_shapes_and_top_features(tiny_lm, imp):
    n, d = tiny_lm.n_layers, tiny_lm.hidden_size
    assert imp.layers == list(range(n)) and imp.i_norm.shape == (n, d) and imp.v_f.shape == (n, d)
    assert torch.allclose(imp.i_norm.max(1).values, torch.ones(n))
    top = imp.top_features(5)
    for layer, feats in top.items():
        vals = [v for _, v in feats]
        assert len(feats) == 5 and vals == sorted(vals, reverse=True) and vals[0] == pytest.approx(1.0)
        assert float(imp.row(layer)[feats[0][0]]) == pytest.approx(1.0)
    # templated facts: the map is near-uniform, and the view says so
    assert all(s.verdict.startswith("near-uniform") for s in imp.selectivity)
    assert imp.to_json(3)["top_features"]["0"][0][1] == pytest.approx(1.0)


def test_selectivity_report_says_what_it_sees():
    flat = selectivity_report(torch.full((100,), 0.9), layer=3)
    assert flat.share_top10 == pytest.approx(0.1) and flat.verdict.startswith("near-uniform")
    assert sum(flat.counts) == 100 and len(flat.bin_edges) == len(flat.counts) + 1
    peaked = torch.full((100,), 0.01)
    peaked[:10] = 1.0
    rep = selectivity_report(peaked)
    assert rep.share_top10 > 0.9 and rep.verdict.startswith("selective")
    assert selectivity_verdict(0.2).startswith("weakly selective")
    assert rep.to_json()["histogram"]["counts"][-1] == 10


def test_token_signature(tiny_lm, tiny_data, imp):
    prompt = tiny_data.forget_mcq[0].question
    plan = RoutingPlan(deltas={2: torch.randn(tuple(linear_weight(tiny_lm.adapter.mlp_out(2)).shape)) * 0.05})
    tm = token_layer_map(tiny_lm, prompt, imp, plan)
    assert tm.scores.shape == (len(tm.tokens), tiny_lm.n_layers) and "".join(tm.tokens) == prompt
    assert torch.isnan(tm.scores[0]).all() and not torch.isnan(tm.scores[1:]).any()
    assert torch.allclose(tm.edited_scores[1:, :2], tm.scores[1:, :2], atol=1e-4)  # blocks before the edit
    assert not torch.allclose(tm.edited_scores[1:, 2:], tm.scores[1:, 2:], atol=1e-3)
    assert token_layer_map(tiny_lm, prompt, imp).edited_scores is None
    # the signature is scaled so that the mean forget token sits at +1 and the mean retain token at −1
    u, mid, scale = imp.signature_direction(1)
    i = imp.layers.index(1)
    assert float((imp.mu_f[i] - mid) @ u) / scale == pytest.approx(1.0)
    assert float((imp.mu_r[i] - mid) @ u) / scale == pytest.approx(-1.0)
    js = tm.to_json()
    assert js["scores"][0][0] is None and len(js["edited_scores"]) == len(tm.tokens)


def test_footprint(tiny_lm, tiny_data, imp):
    spec = get_method("rmu")
    edit = spec.fit(tiny_lm, tiny_data, make_hparams(spec.hparams_cls, {"layer": 2, "window": 2, "steps": 8}))
    fp = edit_footprint(tiny_lm, tiny_data, edit, imp=imp, max_texts=60)
    assert fp.forget.shape == (tiny_lm.n_layers, tiny_lm.hidden_size)
    assert float(fp.forget[0].abs().max()) == 0.0 and float(fp.retain[0].abs().max()) == 0.0  # window is 1..2
    assert float(fp.forget[2].mean()) > 0 and fp.corr_forget[0] is None
    assert -1.0 <= fp.corr_forget[2] <= 1.0 and 0.0 <= fp.top_share[2] <= 1.0
    rows = fp.per_layer()
    assert rows[2]["forget_mean_abs_delta"] > 0 and rows[0]["forget_retain_ratio"] is None
    assert "layer 1" in fp.summary and "rank correlation" in fp.summary
    # "most at layer L" ranks layers by |Δh| relative to |h| (absolute |Δh| grows with the norm)
    best = max(range(len(fp.relative)), key=lambda i: fp.relative[i])
    assert f"most at layer {fp.layers[best]} (" in fp.summary and rows[best]["forget_relative_delta"] == fp.relative[best]
    assert fp.relative[0] == 0.0 and fp.relative[2] > 0
    with pytest.raises(UserError, match="needs an edit"):
        edit_footprint(tiny_lm, tiny_data, None)


def test_spearman():
    a = torch.arange(10.0)
    assert spearman(a, a * 3 + 1) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, torch.zeros(10)) is None
    assert math.isfinite(spearman(a, torch.randn(10)))


def test_spearman_ties_share_their_average_rank():
    """Tied values take their average rank (scipy.stats.spearmanr): [1, 1, 2, 3] has ranks
    [1.5, 1.5, 3, 4], which correlate 3/√10 with [1, 2, 3, 4]; breaking the tie by position
    would rank it [1, 2, 3, 4] and give exactly 1."""
    from scipy.stats import spearmanr

    a, b = torch.tensor([1.0, 1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert spearman(a, b) == pytest.approx(3 / math.sqrt(10))
    assert spearman(a, b) == pytest.approx(spearmanr(a.numpy(), b.numpy()).statistic)
    assert spearman(b, a) == pytest.approx(spearman(a, b))  # symmetric: the tie's position does not matter
