"""Figures: each plot function's traces, data, labels and colours, from hand-made results."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from unlearnviz import plots
from unlearnviz.analysis.geometry import GeometryView
from unlearnviz.analysis.importance import (
    SplitPass,
    TokenMap,
    footprint_from_passes,
    importance_from_passes,
)
from unlearnviz.analysis.probes import LogitLens, ProbeResult, judge

L, D = 3, 16


@pytest.fixture(scope="module")
def passes():
    g = torch.Generator().manual_seed(0)
    mk = lambda: torch.rand(L, D, generator=g) + 0.1  # noqa: E731
    fp_f = torch.zeros(L, D)
    fp_f[1:, 3] = 2.0
    fp_f[1:] += 0.1
    fp_r = torch.zeros(L, D)
    fp_r[1:] += 0.05
    f = SplitPass(["f"], [0, 1, 2], {}, None, mk(), mk(), fp_f, 10)
    r = SplitPass(["r"], [0, 1, 2], {}, None, mk(), mk(), fp_r, 10)
    return f, r


def titles(fig: go.Figure) -> str:
    """Title and subtitle text."""
    return f"{fig.layout.title.text} {fig.layout.title.subtitle.text or ''}"


def test_importance_heatmap_with_footprint(passes):
    imp = importance_from_passes(*passes)
    fp = footprint_from_passes(*passes, imp)
    fig = plots.importance_heatmap(imp, fp, top_n=2)
    heat, marks = fig.data
    assert isinstance(heat, go.Heatmap) and np.allclose(np.asarray(heat.z), imp.i_norm.numpy())
    assert list(heat.y) == [0, 1, 2] and heat.zmin == 0 and heat.zmax == 1
    assert 3 in marks.x and 0 not in marks.y  # layer 0 is untouched: no crosses there
    assert len(marks.x) == 4 and all("forget |Δh|" in t for t in marks.text)
    assert fig.layout.xaxis.title.text == "feature" and fig.layout.yaxis.title.text == "layer"
    assert "importance" in titles(fig)
    assert len(plots.importance_heatmap(imp).data) == 1
    shares = [sel.share_top10 for sel in imp.selectivity]
    flat = max(shares) - min(shares) < 0.01  # a "most selective layer" only when one stands out
    assert ("no layer stands out" in titles(fig)) == flat and ("most selective layer" in titles(fig)) != flat


def test_footprint_and_selectivity(passes):
    imp = importance_from_passes(*passes)
    fp = footprint_from_passes(*passes, imp)
    fig = plots.footprint_lines(fp)
    names = [t.name for t in fig.data]
    assert names[:2] == ["forget: mean |Δh|", "retain: mean |Δh|"]
    assert fig.data[0].line.color == plots.COLORS["forget"] and fig.data[1].line.color == plots.COLORS["retain"]
    assert list(fig.data[0].y) == pytest.approx(fp.forget.mean(1).tolist())
    assert np.isnan(fig.data[2].y[0])  # no correlation where the edit moved nothing
    sel = imp.selectivity[1]
    h = plots.selectivity_histogram(sel)
    assert list(h.data[0].y) == sel.counts and sum(h.data[0].y) == D
    assert sel.verdict.split(":")[0] in titles(h) and "top 10%" in h.layout.annotations[0].text
    assert h.layout.xaxis.title.text == "I_norm"


def test_token_heatmap():
    scores = torch.tensor([[float("nan")] * L, [0.5, 1.0, 2.5], [-1.0, 0.0, 1.0]])
    tm = TokenMap("The cat", ["The", " c", "at"], [0, 1, 2], scores, scores * 0.5)
    fig = plots.token_layer_heatmap(tm)
    assert len(fig.data) == 2 and [d.name for d in fig.data] == ["original", "edited"]
    z = np.asarray(fig.data[0].z, dtype=float)
    assert z.shape == (L, 3) and np.isnan(z[:, 0]).all() and z[2, 1] == 2.5
    assert list(fig.data[0].x) == ["0:The", "1: c", "2:at"] and fig.data[0].zmid == 0
    assert len(plots.token_layer_heatmap(TokenMap("x", ["a"], [0], torch.zeros(1, 1))).data) == 1


def view(dims=2, method="pca", edited=True, layer=4):
    rng = np.random.default_rng(layer)
    pts = rng.normal(size=(5, dims)).astype(np.float32)
    return GeometryView(layer, method, dims, pts, pts + 1 if edited else None,
                        ["forget", "forget", "retain", "retain", "probe"], ["f1", "f2", "r1", "r2", "my prompt"],
                        [0.5, 0.2, 0.1][:dims] if method == "pca" else [])


def test_geometry_scatter():
    v = view()
    fig = plots.geometry_scatter(v)
    names = [t.name for t in fig.data]
    assert names == ["forget · original", "retain · original", "probe · original",
                     "forget · edited", "retain · edited", "probe · edited"]
    f_orig, f_edit = fig.data[0], fig.data[3]
    assert f_orig.marker.color == f_edit.marker.color == plots.COLORS["forget"]
    assert f_orig.marker.symbol == "circle" and f_edit.marker.symbol == "x"
    assert list(f_orig.text) == ["f1", "f2"] and list(f_orig.x) == pytest.approx(v.original[:2, 0].tolist())
    assert list(f_edit.y) == pytest.approx((v.original[:2, 1] + 1).tolist())
    assert "PC1 (50%" in fig.layout.xaxis.title.text and "layer 4" in titles(fig)
    assert len(plots.geometry_scatter(view(edited=False)).data) == 3
    fig3 = plots.geometry_scatter(view(dims=3, method="umap"))
    assert isinstance(fig3.data[0], go.Scatter3d) and "UMAP" in titles(fig3)


def test_geometry_slider():
    views = {1: view(layer=1), 2: view(layer=2)}
    fig = plots.geometry_slider(views)
    assert len(fig.data) == 12 and [t.visible for t in fig.data] == [True] * 6 + [False] * 6
    steps = fig.layout.sliders[0].steps
    assert [s.label for s in steps] == ["1", "2"] and steps[1].args[0]["visible"] == [False] * 6 + [True] * 6
    assert steps[1].args[0]["showlegend"] == steps[1].args[0]["visible"]  # the legend follows the slider
    opened = plots.geometry_slider(views, start=2)  # where the edit changed most, not layer 0
    assert opened.layout.sliders[0].active == 1 and [t.visible for t in opened.data] == [False] * 6 + [True] * 6
    assert [t.showlegend for t in opened.data] == [False] * 6 + [True] * 6
    with pytest.raises(ValueError, match="no geometry view of layer 7"):
        plots.geometry_slider(views, start=7)



def test_layer_metric_lines():
    rows = [{"layer": i, "separability_original": 0.8, "separability_edited": 0.9 + i / 100,
             "centroid_distance_rel_original": 0.3, "centroid_distance_rel_edited": 0.5, "mean_norm_original": 5,
             "mean_norm_edited": 6, "cka": 1.0 - i / 10} for i in range(4)]
    fig = plots.layer_metric_lines(rows, edit_layers=[2])
    by_name = {}
    for t in fig.data:
        by_name.setdefault(t.name, []).append(t)
    assert len(by_name["original"]) == 3 and len(by_name["edited"]) == 3 and len(by_name["CKA"]) == 1
    assert list(by_name["CKA"][0].y) == pytest.approx([1.0, 0.9, 0.8, 0.7])
    assert by_name["edited"][0].line.dash == "dash" and by_name["original"][0].line.dash == "solid"
    assert len(fig.layout.shapes) == 4  # the edited layer shaded in every panel


def test_logit_lens_heatmap():
    ll = LogitLens("The capital of X is", "Paris", " Paris", [0, 1], [[(" the", 0.3)], [(" Paris", 0.8)]],
                   [[(" the", 0.3)], [(" Rome", 0.6)]], [0.1, 0.8], [0.1, 0.05], [3, 1], [3, 9])
    fig = plots.logit_lens_heatmap(ll)
    h = fig.data[0]
    assert [list(r) for r in h.z] == [[0.1, 0.8], [0.1, 0.05]] and list(h.y) == ["original", "edited"]
    assert h.text[1][1] == "' Rome'" and "Paris" in titles(fig)


def test_probe_accuracy_lines():
    pr = ProbeResult(layers=[0, 1, 2], chance=0.25, n_items={"forget": 10, "retain": 10}, folds=2,
                     probe={"original": {"forget": [0.9, 0.9, 0.9], "retain": [0.8] * 3},
                            "edited": {"forget": [0.9, 0.85, 0.8], "retain": [0.8] * 3}},
                     probe_floor=[0.2, 0.2, 0.2], output={"original": {"forget": 0.95, "retain": 0.9},
                                                          "edited": {"forget": 0.25, "retain": 0.9}},
                     output_floor=0.25, edit_layers=[1],
                     lens={"original": {"forget": [0.3, 0.5, 1.0], "retain": [0.9] * 3},
                           "edited": {"forget": [0.3, 0.4, 0.3], "retain": [0.9] * 3}},
                     lens_floor=[0.1, 0.3, 0.1])
    judge(pr)
    fig = plots.probe_accuracy_lines(pr)
    names = [t.name for t in fig.data]
    assert "probe · forget · edited" in names and "floor (subject-blind stems)" in names
    fe = fig.data[names.index("probe · forget · edited")]
    assert list(fe.y) == [0.9, 0.85, 0.8] and fe.line.color == plots.COLORS["forget"] and fe.line.dash == "dash"
    assert list(fig.data[names.index("lens · forget · original")].y) == [0.3, 0.5, 1.0]
    assert list(fig.data[names.index("best readout · retain · original")].y) == [0.9, 0.9, 0.9]
    assert list(fig.data[names.index("floor (subject-blind stems)")].y) == [0.2, 0.3, 0.2]
    assert any("chance" in (a.text or "") for a in fig.layout.annotations)
    assert "hidden, not erased" in titles(fig)


def test_behaviour_figures():
    fig = plots.relearning_curve([{"step": 0, "acc": 0.2}, {"step": 10, "acc": 0.6}],
                                 [{"step": 0, "acc": 0.9}, {"step": 10, "acc": 0.95}], chance=0.25, floor=0.3)
    assert [t.name for t in fig.data] == ["edited", "original"] and list(fig.data[0].y) == [0.2, 0.6]
    assert fig.layout.xaxis.title.text == "fine-tuning step"
    losses = [{"loss": 3.0, "forget_loss": 2.0, "retain_loss": 0.01}, {"loss": 1.0, "forget_loss": 0.5, "retain_loss": 0.02}]
    lf = plots.loss_curves(losses)
    assert [t.name for t in lf.data] == ["loss", "forget loss", "retain loss"] and list(lf.data[0].x) == [1, 2]
    assert lf.layout.yaxis.type == "log"  # 0.01 .. 3 spans over two decades: the terms stay readable
    assert plots.loss_curves(losses[:1] + [{"loss": 2.0, "forget_loss": -0.5}]).layout.yaxis.type != "log"
    assert plots.loss_curves([{"loss": 3.0}, {"loss": 2.0}]).layout.yaxis.type != "log"
    before = {"forget_cloze_acc": 0.95, "retain_cloze_acc": 0.8, "forget_floor_acc": 0.26, "chance": 0.25}
    after = {"forget_cloze_acc": 0.1, "retain_cloze_acc": 0.78}
    bars = plots.before_after_bars(before, after)
    assert [t.name for t in bars.data] == ["before the edit", "after the edit"]
    assert list(bars.data[1].y) == [0.1, 0.78] and list(bars.data[0].marker.color) == [
        plots.COLORS["forget"], plots.COLORS["retain"]]
    texts = " ".join(a.text for a in bars.layout.annotations)
    assert "chance 25%" in texts and "forget floor 26%" in texts
    positions = {a.text.split()[0]: a.yanchor for a in bars.layout.annotations}
    assert positions["chance"] != positions["forget"]  # labels of nearby lines sit on opposite sides


def test_readable_fonts():
    fig = plots.relearning_curve([{"step": 0, "acc": 0.5}])
    assert fig.layout.font.size >= 16 and fig.layout.title.font.size >= 20


def test_loss_axis_has_plain_ticks_never_si_prefixes():
    """A loss that reaches 1e-12 reads as 1e-12, not "1p"."""
    for losses in ([{"loss": 3.0}, {"loss": 1e-12}], [{"loss": 3.0}, {"loss": 2.0}]):
        y = plots.loss_curves(losses).layout.yaxis
        assert y.tickformat == "~g" and y.exponentformat == "e"


def test_long_subtitles_get_room():
    """Every wrapped subtitle line fits in the top margin (two were cut off)."""
    text = "word " * 90
    fig = plots.relearning_curve([{"step": 0, "acc": 0.5}])
    plots._style(fig, "t", subtitle=text)
    lines = fig.layout.title.subtitle.text.split("<br>")
    assert len(lines) >= 4 and max(len(x) for x in lines) <= plots.SUBTITLE_WRAP
    assert fig.layout.margin.t >= 70 + 14 * 1.5 * len(lines)  # title plus each 14 px line with its spacing


def test_layer_axis_runs_to_the_last_layer():
    rows = [{"layer": i, "separability_original": 0.8, "separability_edited": 0.9} for i in range(30)]
    x = plots.layer_metric_lines(rows, metrics=("separability",)).layout.xaxis
    assert list(x.range) == [-0.5, 29.5] and x.dtick == 2 and x.tick0 == 0  # 30 layers: 0..29, not 32


def test_each_floor_sits_on_its_own_bars():
    before = {"forget_cloze_acc": 0.95, "retain_cloze_acc": 0.8, "forget_floor_acc": 0.26,
              "retain_floor_acc": 0.4, "chance": 0.25}
    bars = plots.before_after_bars(before, {"forget_cloze_acc": 0.3, "retain_cloze_acc": 0.78})
    labels = {a.text: a for a in bars.layout.annotations if "floor" in a.text}
    assert set(labels) == {"forget floor 26%", "retain floor 40%"}
    assert labels["forget floor 26%"].x == 0 and labels["retain floor 40%"].x == 1  # forget is the first bar pair
    lines = {(sh.x0, sh.x1, sh.y0) for sh in bars.layout.shapes if sh.line.color == plots.COLORS["floor"]}
    assert lines == {(-0.45, 0.45, 0.26), (0.55, 1.45, 0.4)}


def test_token_heatmap_caption_names_the_colours_it_draws():
    tm = TokenMap("The cat", ["The", " c"], [0, 1], torch.zeros(2, L))
    fig = plots.token_layer_heatmap(tm)
    scale = fig.data[0].colorscale
    assert scale[-1][1] == plots.COLORS["forget"] == "#D55E00" and scale[0][1] == plots.COLORS["retain"]
    assert "orange = like forget" in titles(fig) and "blue = like retain" in titles(fig) and "red =" not in titles(fig)



def test_tradeoff_coloured_by_robustness():
    """A --robustness sweep's points coloured by HM on a fixed 0..1 scale, methods told apart by
    shape; a point with no HM (it forgot nothing) is a hollow grey marker of its own trace."""
    rows = [{"id": "a", "method": "rmu", "forget_cloze_acc": "0.3", "retain_cloze_acc": "0.9", "HM": "0.25"},
            {"id": "b", "method": "rmu", "forget_cloze_acc": "0.9", "retain_cloze_acc": "1.0", "HM": ""},
            {"id": "c", "method": "mrp", "forget_cloze_acc": "0.5", "retain_cloze_acc": "0.95", "HM": 0.75}]
    plain = plots.tradeoff_figure(rows, {"a"})
    assert [t.name for t in plain.data] == ["rmu", "mrp"] and plain.data[0].marker.color == plots.METHOD_COLORS["rmu"]
    fig = plots.tradeoff_figure(rows, {"a"}, color_by="HM")
    assert [t.name for t in fig.data] == ["rmu", "rmu: no gap (HM n/a)", "mrp"]
    rmu, missing, mrp = fig.data
    assert list(rmu.marker.color) == [0.25] and list(rmu.x) == [0.3] and rmu.marker.symbol == "circle"
    assert list(mrp.marker.color) == [0.75] and mrp.marker.symbol == "square"
    assert (rmu.marker.cmin, rmu.marker.cmax) == (0.0, 1.0) and rmu.marker.showscale and not mrp.marker.showscale
    assert list(missing.x) == [0.9] and missing.marker.line.color == plots.COLORS["chance"]
    assert rmu.marker.size[0] > 11  # the Pareto front stays ringed and larger
    assert "coloured by HM" in fig.layout.title.text


def test_recovery_curves():
    series = [{"attack": "relearn_forget", "split": "half B", "steps": [0, 5, 10], "edited": [0.2, 0.5, None],
               "original": [1.0, 1.0, 0.9], "retain_edited": [0.9, 0.9, 0.8], "recovered": [0.0, 0.375, None]},
              {"attack": "relearn_retain", "split": "all", "steps": [0, 10], "edited": [0.25, 0.3],
               "original": [1.0, 1.0]}]
    fig = plots.recovery_curves(series, floor=0.3, chance=0.25)
    assert [t.name for t in fig.data] == ["relearn_forget (half B): edited", "relearn_forget (half B): original",
                                          "relearn_retain (all): edited", "relearn_retain (all): original"]
    assert list(fig.data[0].y[:2]) == [0.2, 0.5] and np.isnan(fig.data[0].y[2])  # a missing point is a gap
    assert fig.data[0].line.color == plots.COLORS["forget"] and fig.data[2].line.color == plots.COLORS["retain"]
    assert fig.data[0].line.dash == "dash" and fig.data[1].line.dash == "solid"
    assert [list(c) for c in fig.data[0].customdata] == [["+0%", "90%"], ["+38%", "90%"], ["n/a", "80%"]]
    assert fig.layout.xaxis.title.text == "fine-tuning step"
    texts = " ".join(a.text for a in fig.layout.annotations)
    assert "chance" in texts and "forget floor" in texts


def test_figures_fill_their_container():
    """No figure fixes its width (the page's plot would draw at that width, not its column's): each
    autosizes; only heights are set."""
    losses = [{"loss": 3.0, "forget_loss": 2.0, "retain_loss": 0.5}, {"loss": 1.0, "forget_loss": 0.5}]
    figs = [plots.loss_curves(losses), plots.for_edit(plots.loss_curves(losses), "edit #1 · abc123"),
            plots.relearning_curve([{"step": 0, "acc": 0.5}]),
            plots.before_after_bars({"forget_cloze_acc": 0.9, "retain_cloze_acc": 0.8}, {"forget_cloze_acc": 0.2})]
    for fig in figs:
        assert fig.layout.width is None and fig.layout.autosize is True, fig.layout.title.text
