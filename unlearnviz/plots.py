"""Pure functions from analysis results to plotly figures (no model, no I/O).

One colour scheme for everything (:data:`COLORS`, Okabe–Ito, safe for colour-blind viewers):
forget is vermillion and retain blue wherever they appear; the original model is drawn with
filled circles / solid lines and the edited one with crosses / dashed lines; chance and floor
are grey and orange dotted lines. Fonts are sized for a projector.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

COLORS = {
    "forget": "#D55E00",
    "retain": "#0072B2",
    "probe": "#009E73",
    "original": "#444444",
    "edited": "#CC79A7",
    "chance": "#7F7F7F",
    "floor": "#E69F00",
    "footprint": "#FFFFFF",
    "loss": "#000000",
}
MARKERS = {"original": "circle", "edited": "x"}
DASHES = {"original": "solid", "edited": "dash"}
FONT = {"size": 16, "family": "Arial, Helvetica, sans-serif"}
TITLE_SIZE = 20
HEATMAP = "Viridis"
DIVERGING = [[0.0, COLORS["retain"]], [0.5, "#F7F7F7"], [1.0, COLORS["forget"]]]
SUBTITLE_WRAP = 96  # characters a subtitle line holds at 14 px in a half-width (≈700 px) plot
SUBTITLE_LINE = 22  # pixels of top margin per subtitle line (14 px font, line spacing)
PLAIN_TICKS = {"tickformat": "~g", "exponentformat": "e"}  # 0.001, 1e-12: never SI prefixes ("1p")


def _style(fig: go.Figure, title: str, x: str | None = None, y: str | None = None,
           subtitle: str = "", height: int | None = None) -> go.Figure:
    lines = textwrap.wrap(subtitle, SUBTITLE_WRAP) if subtitle else []
    heading = {"text": title, "font": {"size": TITLE_SIZE}, "x": 0.01, "xanchor": "left",
               "yref": "container", "y": 0.99, "yanchor": "top", "pad": {"t": 8}}
    if lines:
        heading["subtitle"] = {"text": "<br>".join(lines), "font": {"size": 14}}
    # no fixed width, ever: a figure fills its container (a page's column, the report's page); only heights are set
    fig.update_layout(title=heading, font=FONT, template="plotly_white", legend={"font": {"size": 14}}, autosize=True,
                      margin={"t": 76 + SUBTITLE_LINE * len(lines), "l": 70, "r": 30, "b": 60},
                      hoverlabel={"font": {"size": 14}})
    if height:
        fig.update_layout(height=height)
    if x is not None:
        fig.update_xaxes(title_text=x)
    if y is not None:
        fig.update_yaxes(title_text=y)
    return fig


def for_edit(fig: go.Figure, name: str) -> go.Figure:
    """The figure's title followed by the edit it shows (``edit #2 · 1a2b3c``), so a figure read
    alone, or a screenshot of it, still says which edit it is of."""
    title = fig.layout.title.text or ""
    fig.update_layout(title_text=f"{title} · {name}" if title else name)
    return fig


def _layer_axis(fig: go.Figure, layers: Sequence[int], **kw) -> None:
    """Integer ticks for a layer axis (every layer up to 20 layers, every other up to 40), running
    from the first layer to the last (not to the next tick past it: 32 for 30 layers)."""
    if not layers:
        return
    if fig.layout.xaxis.range is None:  # a figure that set its own (room for labels) keeps it
        kw.setdefault("range", [min(layers) - 0.5, max(layers) + 0.5])
    if len(layers) <= 40:
        kw.update(tickmode="linear", tick0=min(layers), dtick=1 if len(layers) <= 20 else 2)
    fig.update_xaxes(**kw)


def _edit_band(fig: go.Figure, edit_layers: Sequence[int] | None, **kw) -> None:
    """Shade the layers an edit acts on."""
    if edit_layers:
        fig.add_vrect(x0=min(edit_layers) - 0.5, x1=max(edit_layers) + 0.5, fillcolor=COLORS["edited"],
                      opacity=0.12, line_width=0, annotation_text="edited layers", annotation_position="bottom left",
                      **kw)


def _hline(fig: go.Figure, y: float | None, name: str, color: str, position: str = "bottom right", **kw) -> None:
    if y is not None and math.isfinite(y):
        fig.add_hline(y=y, line={"color": color, "dash": "dot", "width": 2},
                      annotation_text=f"{name} {y:.0%}", annotation_position=position, **kw)


# ------------------------------------------------------------------------------------------
# Importance
# ------------------------------------------------------------------------------------------


def importance_heatmap(imp, footprint=None, top_n: int = 5) -> go.Figure:
    """I_norm per layer × feature; with a footprint, crosses mark the ``top_n`` features the
    edit moved most on forget tokens at each layer (do they sit on the bright cells?)."""
    z = imp.i_norm.detach().float().numpy()
    fig = go.Figure(go.Heatmap(z=z, x=list(range(z.shape[1])), y=imp.layers, colorscale=HEATMAP, zmin=0, zmax=1,
                               colorbar={"title": "I_norm"}, name="importance",
                               hovertemplate="layer %{y}<br>feature %{x}<br>I_norm %{z:.3f}<extra></extra>"))
    subtitle = f"SRMU {imp.variant} map; "
    if imp.selectivity:
        best = max(imp.selectivity, key=lambda s: s.share_top10)
        worst = min(imp.selectivity, key=lambda s: s.share_top10)
        if best.share_top10 - worst.share_top10 < 0.01:  # within a point: naming a "best" layer would mislead
            subtitle += f"no layer stands out (top-10% share {worst.share_top10:.1%}–{best.share_top10:.1%}); {best.verdict}"
        else:
            subtitle += f"most selective layer {best.layer}: {best.verdict}"
    if footprint is not None:
        xs, ys, text = [], [], []
        f = footprint.forget.detach().float()
        r = footprint.retain.detach().float()
        for i, layer in enumerate(footprint.layers):
            if layer not in imp.layers or float(f[i].max()) == 0.0:
                continue
            idx = f[i].topk(min(top_n, f.shape[1])).indices.tolist()
            row = imp.row(layer)
            for j in idx:
                xs.append(j)
                ys.append(layer)
                text.append(f"layer {layer}, feature {j}<br>forget |Δh| {float(f[i, j]):.3g}, retain |Δh| "
                            f"{float(r[i, j]):.3g}<br>I_norm {float(row[j]):.3f}")
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=f"top {top_n} moved features (forget)",
                                 marker={"symbol": "x", "size": 12, "color": COLORS["footprint"],
                                         "line": {"color": "#000000", "width": 1}},
                                 text=text, hovertemplate="%{text}<extra></extra>"))
        subtitle += " — crosses: where the edit moved forget activations most"
    fig.update_yaxes(autorange="reversed", dtick=1 if len(imp.layers) <= 16 else 2 if len(imp.layers) <= 40 else None)
    fig.update_layout(legend={"orientation": "h", "y": -0.2})
    return _style(fig, "Where the forget data lives: importance per layer × feature", "feature", "layer", subtitle,
                  height=max(450, 260 + 16 * len(imp.layers)))


def footprint_lines(fp) -> go.Figure:
    """Per layer: mean |Δh| on forget vs retain tokens, and the footprint's rank correlation
    with the importance map (right axis)."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    f = fp.forget.detach().float().mean(1).tolist()
    r = fp.retain.detach().float().mean(1).tolist()
    for name, vals in (("forget", f), ("retain", r)):
        fig.add_trace(go.Scatter(x=fp.layers, y=vals, mode="lines+markers", name=f"{name}: mean |Δh|",
                                 line={"color": COLORS[name], "width": 3}), secondary_y=False)
    corr = [np.nan if v is None else v for v in fp.corr_forget]
    fig.add_trace(go.Scatter(x=fp.layers, y=corr, mode="lines+markers", name="rank corr. with importance",
                             line={"color": COLORS["probe"], "dash": "dot", "width": 2}), secondary_y=True)
    fig.update_yaxes(title_text="mean |Δh| per feature", secondary_y=False)
    fig.update_yaxes(title_text="Spearman ρ", range=[-1.05, 1.05], tickvals=[-1, -0.5, 0, 0.5, 1],
                     showgrid=False, secondary_y=True)
    _layer_axis(fig, fp.layers)
    return _style(fig, "The edit's footprint: how far it moves forget and retain activations", "layer",
                  subtitle=fp.summary)


def selectivity_histogram(sel) -> go.Figure:
    """Histogram of I_norm at one layer, with the top-10% share and the verdict."""
    edges = np.asarray(sel.bin_edges)
    centers = (edges[:-1] + edges[1:]) / 2
    fig = go.Figure(go.Bar(x=centers, y=sel.counts, width=np.diff(edges) * 0.95, name="features",
                           marker={"color": COLORS["forget"]},
                           hovertemplate="I_norm %{x:.2f}<br>%{y} features<extra></extra>"))
    fig.add_annotation(text=f"top 10% of features hold <b>{sel.share_top10:.0%}</b> of the importance "
                            f"(uniform: 10%)", xref="paper", yref="paper", x=0.01, y=0.98, showarrow=False,
                       align="left", font={"size": 16})
    fig.update_xaxes(range=[0, 1])
    return _style(fig, f"How selective is the importance map? (layer {sel.layer})", "I_norm", "number of features",
                  sel.verdict)


TOKEN_COLOURS = "orange = like forget text, blue = like retain text"  # the ends of DIVERGING


def token_layer_heatmap(tm) -> go.Figure:
    """Per token × layer forget signature (+1 like forget, −1 like retain), original and edited."""
    labels = [f"{i}:{t}" for i, t in enumerate(tm.tokens)]
    panels = [("original", tm.scores)] + ([("edited", tm.edited_scores)] if tm.edited_scores is not None else [])
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[0] for p in panels], shared_yaxes=True,
                        horizontal_spacing=0.04)
    for c, (name, scores) in enumerate(panels, start=1):
        z = scores.detach().float().numpy().T  # [L, T]
        fig.add_trace(go.Heatmap(z=z, x=labels, y=tm.layers, colorscale=DIVERGING, zmid=0, zmin=-2, zmax=2,
                                 name=name, showscale=c == len(panels), colorbar={"title": "signature"},
                                 hovertemplate="token %{x}<br>layer %{y}<br>signature %{z:.2f}<extra>" + name
                                 + "</extra>"), row=1, col=c)
    fig.update_yaxes(autorange="reversed", title_text="layer", col=1)
    fig.update_xaxes(tickangle=-45)
    return _style(fig, f"Forget signature per token and layer: {tm.prompt!r}", None, None,
                  f"{TOKEN_COLOURS} (importance-weighted forget−retain direction); "
                  "position 0 (attention sink) is not scored")


# ------------------------------------------------------------------------------------------
# Geometry
# ------------------------------------------------------------------------------------------


def _short(text: str, n: int = 120) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _geometry_traces(view, visible: bool = True) -> list:
    groups = np.asarray(view.groups)
    texts = np.asarray([_short(t) for t in view.texts], dtype=object)
    traces = []
    sides = [("original", view.original)] + ([("edited", view.edited)] if view.edited is not None else [])
    for side, pts in sides:
        for g in [x for x in ("forget", "retain", "probe") if (groups == x).any()]:
            m = groups == g
            p = pts[m]
            marker = {"color": COLORS[g], "symbol": MARKERS[side], "size": 7 if side == "original" else 6,
                      "opacity": 0.55 if side == "original" else 0.9}
            common = {"name": f"{g} · {side}", "text": texts[m], "visible": visible, "legendgroup": f"{g}{side}",
                      "hovertemplate": "%{text}<extra>" + f"{g} · {side}" + "</extra>"}
            if view.dims == 3:
                if marker["symbol"] == "x":
                    marker["symbol"] = "cross"
                traces.append(go.Scatter3d(x=p[:, 0], y=p[:, 1], z=p[:, 2], mode="markers",
                                           marker={**marker, "size": 4}, **common))
            else:
                traces.append(go.Scatter(x=p[:, 0], y=p[:, 1], mode="markers", marker=marker, **common))
    return traces


def _axis_names(view) -> tuple[str, str]:
    if view.method == "pca":
        ex = view.explained + [0.0] * 3
        return f"PC1 ({ex[0]:.0%} of variance)", f"PC2 ({ex[1]:.0%})"
    return "UMAP 1", "UMAP 2"


def geometry_scatter(view) -> go.Figure:
    """Forget/retain (and probe) points before and after the edit, on one basis fitted on the
    original activations; hover shows each point's text."""
    fig = go.Figure(_geometry_traces(view))
    xname, yname = _axis_names(view)
    subtitle = ("basis fitted on the original model's activations; edited activations of the same texts are "
                "projected into it (circles: original, crosses: edited)")
    if view.dims == 3:
        fig.update_layout(scene={"xaxis_title": xname, "yaxis_title": yname, "zaxis_title": "3"})
        return _style(fig, f"Hidden-state geometry at layer {view.layer} ({view.method.upper()}, 3-D)",
                      subtitle=subtitle, height=650)
    return _style(fig, f"Hidden-state geometry at layer {view.layer} ({view.method.upper()})", xname, yname,
                  subtitle, height=600)


def geometry_slider(views: dict, start: int | None = None) -> go.Figure:
    """All layers' views in one figure with a layer slider (each layer its own fitted basis),
    opened at layer ``start`` (default: the first; the dashboard opens where the edit changed the
    activations most, since the layers before an edit look the same on both sides)."""
    layers = sorted(views)
    if not layers:
        raise ValueError("no geometry views to plot")
    if start is not None and start not in views:
        raise ValueError(f"no geometry view of layer {start} (layers {layers[0]}-{layers[-1]})")
    opened = layers.index(start) if start is not None else 0
    fig = go.Figure()
    counts = []
    for k, layer in enumerate(layers):
        traces = _geometry_traces(views[layer], visible=k == opened)
        for t in traces:
            t.showlegend = k == opened
            fig.add_trace(t)
        counts.append(len(traces))
    steps = []
    start = 0
    total = sum(counts)
    for layer, n in zip(layers, counts):
        vis = [False] * total
        vis[start:start + n] = [True] * n
        xname, yname = _axis_names(views[layer])
        # the legend lists the shown layer's traces: a trace hidden by ``visible`` leaves the legend,
        # so each step moves ``showlegend`` with it (else the legend is empty past the first layer)
        steps.append({"method": "update", "label": str(layer),
                      "args": [{"visible": vis, "showlegend": vis},
                               {"xaxis.title.text": xname, "yaxis.title.text": yname}]})
        start += n
    fig.update_layout(sliders=[{"active": opened, "steps": steps, "currentvalue": {"prefix": "layer "},
                                "pad": {"t": 50}}])
    first = views[layers[opened]]
    xname, yname = _axis_names(first)
    return _style(fig, f"Hidden-state geometry per layer ({first.method.upper()}; slide through the layers)",
                  xname, yname, "each layer's basis is fitted on the original activations; the edited activations "
                  "of the same texts are projected into it (circles: original, crosses: edited)", height=650)


METRIC_LABELS = {
    "separability": "forget vs retain separability (CV logistic accuracy)",
    "centroid_distance": "centroid distance",
    "centroid_distance_rel": "centroid distance / mean norm",
    "mean_norm": "mean activation norm",
    "cka": "CKA(original, edited)",
}


def layer_metric_lines(rows: Sequence[dict], metrics: Sequence[str] = ("separability", "centroid_distance_rel",
                                                                         "mean_norm", "cka"),
                       edit_layers: Sequence[int] | None = None) -> go.Figure:
    """One panel per metric over layers: original solid, edited dashed (CKA: one line)."""
    metrics = list(metrics)
    layers = [r["layer"] for r in rows]
    fig = make_subplots(rows=len(metrics), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[METRIC_LABELS.get(m, m) for m in metrics])
    for i, m in enumerate(metrics, start=1):
        if m == "cka":
            ys = [r.get("cka", np.nan) for r in rows]
            fig.add_trace(go.Scatter(x=layers, y=ys, mode="lines+markers", name="CKA", showlegend=True,
                                     line={"color": COLORS["edited"], "width": 3}), row=i, col=1)
            fig.update_yaxes(range=[0, 1.05], row=i, col=1)
            continue
        for side in ("original", "edited"):
            key = f"{m}_{side}"
            if not any(key in r for r in rows):
                continue
            fig.add_trace(go.Scatter(x=layers, y=[r.get(key, np.nan) for r in rows], mode="lines+markers",
                                     name=side, legendgroup=side, showlegend=i == 1,
                                     line={"color": COLORS[side], "dash": DASHES[side], "width": 3},
                                     marker={"symbol": MARKERS[side], "size": 8}), row=i, col=1)
        if m == "separability":
            fig.update_yaxes(range=[0.4, 1.02], row=i, col=1)
    if edit_layers:
        for i in range(1, len(metrics) + 1):
            fig.add_vrect(x0=min(edit_layers) - 0.5, x1=max(edit_layers) + 0.5, fillcolor=COLORS["edited"],
                          opacity=0.12, line_width=0, row=i, col=1)
    fig.update_xaxes(title_text="layer", row=len(metrics), col=1)
    _layer_axis(fig, layers)
    return _style(fig, "Forget vs retain per layer, before and after the edit", subtitle=(
        "shaded: the layers the edit acts on" if edit_layers else ""), height=250 * len(metrics) + 120)


# ------------------------------------------------------------------------------------------
# Residual knowledge
# ------------------------------------------------------------------------------------------


def logit_lens_heatmap(ll) -> go.Figure:
    """p(gold first token) per layer through the final norm + unembedding, original vs edited;
    cells show the top-1 token, hover the top-k."""
    rows = [("original", ll.top_original, ll.gold_prob_original)]
    if ll.top_edited is not None:
        rows.append(("edited", ll.top_edited, ll.gold_prob_edited))
    z, text, hover = [], [], []
    for _, tops, probs in rows:
        z.append(probs if probs is not None else [t[0][1] for t in tops])
        text.append([repr(t[0][0]) for t in tops])
        hover.append(["<br>".join(f"{tok!r}: {p:.3f}" for tok, p in t) for t in tops])
    metric = f"p({ll.gold_token!r})" if ll.gold_prob_original is not None else "p(top-1)"
    fig = go.Figure(go.Heatmap(z=z, x=ll.layers, y=[r[0] for r in rows], text=text, texttemplate="%{text}",
                               textfont={"size": 13}, customdata=hover, colorscale="Blues", zmin=0, zmax=1,
                               colorbar={"title": metric},
                               hovertemplate="layer %{x} (%{y})<br>" + metric + " = %{z:.3f}<br>top tokens:<br>"
                               "%{customdata}<extra></extra>"))
    _layer_axis(fig, ll.layers)
    sub = f"prompt {ll.prompt!r}" + (f", answer {ll.answer!r}" if ll.answer else "") + \
        "; each layer's residual read through the final norm and unembedding; cells: top-1 token"
    return _style(fig, f"Logit lens: {metric} per layer", "layer", None, sub, height=330)


def probe_accuracy_lines(pr) -> go.Figure:
    """Per-layer readout accuracy on forget items, original (solid) vs edited (dashed): the trained
    probe (circles) and the untrained lens readout (diamonds); retain items' best readout (thin
    blue); chance, the subject-blind floor, the output accuracy (stars) and the verdict."""
    fig = go.Figure()
    sides = [s for s in ("original", "edited") if s in pr.probe]
    for side in sides:
        fig.add_trace(go.Scatter(x=pr.layers, y=pr.probe[side]["forget"], mode="lines+markers",
                                 name=f"probe · forget · {side}",
                                 line={"color": COLORS["forget"], "dash": DASHES[side], "width": 3},
                                 marker={"symbol": MARKERS[side], "size": 9}))
    for side in sides:
        if side in pr.lens:
            fig.add_trace(go.Scatter(x=pr.layers, y=pr.lens[side]["forget"], mode="lines+markers",
                                     name=f"lens · forget · {side}", opacity=0.75,
                                     line={"color": COLORS["forget"], "dash": DASHES[side], "width": 2},
                                     marker={"symbol": "diamond" if side == "original" else "diamond-open",
                                             "size": 9}))
    for side in sides:
        fig.add_trace(go.Scatter(x=pr.layers, y=pr.readout(side, "retain"), mode="lines+markers",
                                 name=f"best readout · retain · {side}", opacity=0.6,
                                 line={"color": COLORS["retain"], "dash": DASHES[side], "width": 2},
                                 marker={"symbol": MARKERS[side], "size": 7}))
    floor = pr.floor()
    if floor is not None:
        fig.add_trace(go.Scatter(x=pr.layers, y=floor, mode="lines", name="floor (subject-blind stems)",
                                 line={"color": COLORS["floor"], "dash": "dot", "width": 2}))
    _hline(fig, pr.chance, "chance", COLORS["chance"])
    out = pr.output
    for side in out:
        fig.add_trace(go.Scatter(x=[pr.layers[-1] + 0.6], y=[out[side]["forget"]], mode="markers+text",
                                 name=f"output · forget · {side}", text=[f"{out[side]['forget']:.0%}"],
                                 textposition="middle right",
                                 marker={"symbol": "star" if side == "original" else "star-open", "size": 16,
                                         "color": COLORS["forget"]}))
    _edit_band(fig, pr.edit_layers)
    fig.update_yaxes(range=[0, 1.05], tickformat=".0%")
    _layer_axis(fig, pr.layers)
    fig.update_xaxes(range=[pr.layers[0] - 0.5, pr.layers[-1] + 3.5])
    return _style(fig, "Residual knowledge: can a linear readout still find the forget answers?", "layer",
                  "item accuracy", pr.verdict, height=580)


# ------------------------------------------------------------------------------------------
# Behaviour and training
# ------------------------------------------------------------------------------------------


def relearning_curve(edited: Sequence[dict], original: Sequence[dict] | None = None, chance: float | None = None,
                     floor: float | None = None, key: str = "acc") -> go.Figure:
    """Forget accuracy while fine-tuning on forget data: the edited model vs the original."""
    fig = go.Figure()
    for side, curve in (("edited", edited), ("original", original)):
        if not curve:
            continue
        fig.add_trace(go.Scatter(x=[p["step"] for p in curve], y=[p[key] for p in curve], mode="lines+markers",
                                 name=side, line={"color": COLORS[side], "dash": DASHES[side], "width": 3},
                                 marker={"symbol": MARKERS[side], "size": 9}))
    _hline(fig, chance, "chance", COLORS["chance"])
    _hline(fig, floor, "floor", COLORS["floor"])
    fig.update_yaxes(range=[0, 1.05], tickformat=".0%")
    return _style(fig, "Relearning attack: how fast does the forgotten knowledge come back?", "fine-tuning step",
                  "forget accuracy (held-out half)")


def robustness_card(rows: Sequence[dict], floor: float | None = None, chance: float | None = None,
                    subtitle: str = "") -> go.Figure:
    """Forget accuracy under each attack (its strongest condition) beside the edited model with no
    attack and the original, with the floor and chance. ``rows``: {attack, condition, split,
    edited, attacked, original, recovered} (``attacks.card.figure_rows``)."""
    fig = go.Figure()
    xs = [f"{r['attack']}<br>{r.get('condition', '')}<br>({r.get('split', '')})" for r in rows]

    def pct(v) -> str:
        return "" if v is None else f"{v:.0%}"

    for key, name, color, pattern in (("edited", "edited, no attack", COLORS["edited"], ""),
                                      ("attacked", "edited, attacked", COLORS["forget"], "/"),
                                      ("original", "original", COLORS["original"], "")):
        ys = [np.nan if r.get(key) is None else r[key] for r in rows]
        text = [pct(r.get(key)) + (f"<br>{r['recovered']:+.0%} back" if key == "attacked"
                                   and r.get("recovered") is not None else "") for r in rows]
        fig.add_trace(go.Bar(x=xs, y=ys, name=name, text=text, textposition="outside",
                             marker={"color": color, "pattern": {"shape": pattern},
                                     "line": {"color": "#000000", "width": 1}}))
    _hline(fig, chance, "chance", COLORS["chance"], position="top left")
    _hline(fig, floor, "forget floor", COLORS["floor"])
    fig.update_layout(barmode="group")
    fig.update_yaxes(range=[0, 1.2], tickformat=".0%")
    return _style(fig, "Robustness card: forget accuracy under each attack", None, "forget accuracy",
                  subtitle or "the strongest condition of each attack; 'back': share of the forgotten knowledge "
                              "it recovered", height=560)


def recovery_curves(series: Sequence[dict], floor: float | None = None, chance: float | None = None) -> go.Figure:
    """The robustness card's relearning attacks as recovery curves: forget accuracy (each attack's
    held-out split) against fine-tuning steps, the edited model dashed with crosses, the original
    solid, in the forget colour for training on forget half A and the retain colour for training
    on unrelated retain text; the share recovered on hover. ``series``:
    ``attacks.card.curve_series``, each optionally with its own ``color`` and ``name`` (curves of
    several edits on one figure)."""
    fig = go.Figure()
    colors = {"relearn_forget": COLORS["forget"], "relearn_retain": COLORS["retain"]}
    for n, s in enumerate(series):
        color = s.get("color") or colors.get(s["attack"], ("#CC79A7", "#E69F00", "#56B4E9")[n % 3])
        label = s.get("name") or f"{s['attack']} ({s['split']})"
        shares = ["n/a" if v is None else f"{v:+.0%}" for v in s.get("recovered") or [None] * len(s["steps"])]
        retain = ["n/a" if v is None else f"{v:.0%}" for v in s.get("retain_edited") or [None] * len(s["steps"])]
        for side in ("edited", "original"):
            ys = [np.nan if v is None else v for v in s[side]]
            extra = (list(zip(shares, retain)) if side == "edited" else None)
            fig.add_trace(go.Scatter(
                x=s["steps"], y=ys, mode="lines+markers", name=f"{label}: {side}", customdata=extra,
                line={"color": color, "dash": DASHES[side], "width": 3}, marker={"symbol": MARKERS[side], "size": 9},
                hovertemplate=f"{label}, {side}<br>step %{{x}}: forget %{{y:.1%}}"
                              + ("<br>recovered %{customdata[0]}, retain %{customdata[1]}" if extra else "")
                              + "<extra></extra>"))
    _hline(fig, chance, "chance", COLORS["chance"], position="top left")
    _hline(fig, floor, "forget floor", COLORS["floor"])
    fig.update_yaxes(range=[0, 1.05], tickformat=".0%")
    return _style(fig, "Recovery curves: forget accuracy while an attacker fine-tunes", "fine-tuning step",
                  "forget accuracy (held-out)", "dashed: the edited model; solid: the original fine-tuned the same "
                  "way; a dashed line climbing to the solid one means the forgotten knowledge returns")


def metric_by_level(points: Sequence[dict], metric: str, title: str, subtitle: str = "",
                    unit_range: bool = True) -> go.Figure:
    """A measure against a world's entanglement level, one colour per method: every measured point
    (its settings on hover, nudged sideways by method so they do not hide each other) and a line
    through each method's median per level. ``points``: {method, level, value, text}; a value of
    None (not defined for that edit) is left out and counted in the hover of the median."""
    fig = go.Figure()
    methods = list(dict.fromkeys(p["method"] for p in points))
    extra = ["#CC79A7", "#E69F00", "#56B4E9", "#F0E442"]
    for n, method in enumerate(methods):
        mine = [p for p in points if p["method"] == method]
        color = METHOD_COLORS.get(method, extra[n % len(extra)])
        shift = (n - (len(methods) - 1) / 2) * 0.008
        have = [p for p in mine if p.get("value") is not None]
        fig.add_trace(go.Scatter(x=[float(p["level"]) + shift for p in have], y=[p["value"] for p in have],
                                 mode="markers", name=f"{method}: each point", legendgroup=method, showlegend=False,
                                 marker={"color": color, "size": 8, "opacity": 0.55,
                                         "symbol": METHOD_SYMBOLS.get(method, "circle")},
                                 text=[p.get("text", "") for p in have],
                                 hovertemplate=f"{method} %{{text}}<br>%{{y:.2f}}<extra></extra>"))
        levels = sorted({float(p["level"]) for p in mine})
        medians, counts = [], []
        for lv in levels:
            vals = [p["value"] for p in have if float(p["level"]) == lv]
            medians.append(float(np.median(vals)) if vals else np.nan)
            counts.append(f"{len(vals)} of {sum(float(p['level']) == lv for p in mine)} points defined")
        fig.add_trace(go.Scatter(x=levels, y=medians, mode="lines+markers", name=method, legendgroup=method,
                                 line={"color": color, "width": 3},
                                 marker={"size": 12, "symbol": METHOD_SYMBOLS.get(method, "circle")},
                                 customdata=counts,
                                 hovertemplate=f"{method} median %{{y:.2f}} (%{{customdata}})<extra></extra>"))
    if unit_range:
        fig.update_yaxes(range=[-0.05, 1.05])
    fig.update_xaxes(tickformat=".1f", dtick=0.1)
    return _style(fig, title, "entanglement level of the world", metric, subtitle)


def loss_curves(losses: Sequence[dict], log_y: bool | None = None) -> go.Figure:
    """Training losses per step (total, forget term, retain term: whichever are present).
    ``log_y`` None: a log axis when every value is positive and they span over two decades (a
    few spikes of the total would otherwise flatten the terms)."""
    fig = go.Figure()
    steps = [r.get("step", i + 1) for i, r in enumerate(losses)]
    styles = {"loss": (COLORS["loss"], "solid"), "forget_loss": (COLORS["forget"], "solid"),
              "retain_loss": (COLORS["retain"], "solid")}
    for key, (color, dash) in styles.items():
        if any(key in r for r in losses):
            fig.add_trace(go.Scatter(x=steps, y=[r.get(key, np.nan) for r in losses], mode="lines",
                                     name=key.replace("_", " "), line={"color": color, "dash": dash, "width": 3}))
    if log_y is None:
        values = [float(r[k]) for r in losses for k in styles if isinstance(r.get(k), (int, float))]
        log_y = bool(values) and min(values) > 0 and max(values) / min(values) > 100
    if log_y:
        fig.update_yaxes(type="log")
    fig.update_yaxes(**PLAIN_TICKS)
    return _style(fig, "Training losses", "step", "loss")


def before_after_bars(before: dict, after: dict, metric: str = "cloze_acc", splits: Sequence[str] = ("forget", "retain"),
                      chance: float | None = None, floor: float | None = None,
                      names: Sequence[str] = ("after the edit",), compare: dict | None = None) -> go.Figure:
    """``{split}_{metric}`` before and after the edit (forget/retain colours; after hatched),
    with the chance level and the subject-blind floor. ``compare``: a second edit's metrics,
    cross-hatched beside the first (``names``: the legend's name of each edit)."""
    edited = [after] + ([compare] if compare is not None else [])
    splits = [s for s in splits if f"{s}_{metric}" in before or any(f"{s}_{metric}" in e for e in edited)]
    fig = go.Figure()
    names = list(names) + [f"edit {i + 1}" for i in range(len(names), len(edited))]
    for side, values, pattern in (("before the edit", before, ""), *zip(names, edited, ("/", "x"))):
        ys = [values.get(f"{s}_{metric}", np.nan) for s in splits]
        fig.add_trace(go.Bar(x=splits, y=ys, name=side, text=[f"{v:.0%}" for v in ys],
                             textposition="outside",
                             marker={"color": [COLORS.get(s.split("_")[0], COLORS["original"]) for s in splits],
                                     "pattern": {"shape": pattern},
                                     "line": {"color": "#000000", "width": 1}}))
    if chance is None:
        chance = before.get("chance")
    floors = {s: before.get(f"{s}_floor_acc") for s in splits}
    if floor is not None:
        floors["forget"] = floor
    _hline(fig, chance, "chance", COLORS["chance"], position="top left")
    for i, split in enumerate(splits):  # each split's floor over its own pair of bars, labelled there
        level = floors.get(split)
        if level is None or not math.isfinite(level):
            continue
        fig.add_shape(type="line", x0=i - 0.45, x1=i + 0.45, y0=level, y1=level, xref="x", yref="y",
                      line={"color": COLORS["floor"], "dash": "dot", "width": 3})
        fig.add_annotation(x=i, y=level, xref="x", yref="y", text=f"{split} floor {level:.0%}", showarrow=False,
                           yanchor="top", yshift=-2, font={"size": 14, "color": "#7A4F00"},
                           bgcolor="rgba(255,255,255,0.8)")
    fig.update_layout(barmode="group")
    fig.update_yaxes(range=[0, 1.1], tickformat=".0%")
    hatches = "hatched: after" if compare is None else "hatched: the first edit, cross-hatched: the second"
    return _style(fig, f"Before and after the edit: {metric.replace('_', ' ')}", None, "accuracy",
                  f"solid: before, {hatches}; each split's floor (dotted, on its bars) is what option "
                  "popularity alone scores")


METHOD_COLORS = {"rmu": "#0072B2", "srmu": "#D55E00", "mrp": "#009E73"}


METHOD_SYMBOLS = {"rmu": "circle", "srmu": "diamond", "mrp": "square"}
# Robustness scores (R, Q, HM: 1 = the forgetting survives the attack): 0 in the forget colour
# (the knowledge came back), 1 in the retain colour (it stayed forgotten).
ROBUSTNESS_SCALE = [[0.0, COLORS["forget"]], [0.5, "#F7F7F7"], [1.0, COLORS["retain"]]]


def _num(v) -> float | None:
    """A sweep cell as a number (CSV rows hold strings; an empty cell is None)."""
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    x = float(v)
    return x if math.isfinite(x) else None


def tradeoff_figure(rows: Sequence[dict], front: set[str] | None = None, before: dict | None = None,
                    forget: str = "forget_cloze_acc", retain: str = "retain_cloze_acc",
                    color_by: str | None = None) -> go.Figure:
    """Forget vs retain accuracy of every sweep point, one colour per method, the Pareto front
    ringed, the original model as a star, the settings on hover. ``color_by``: a column in [0, 1]
    (a robustness score of a ``--robustness`` sweep: R, Q or HM) colours the points instead, from
    the forget colour (0: the attack undid the forgetting) to the retain colour (1: it survived);
    methods then differ by marker shape, and a point without a value (it forgot nothing, so there
    was no gap to keep) is a hollow grey marker."""
    front = front or set()
    fig = go.Figure()
    extra = ["#CC79A7", "#E69F00", "#56B4E9", "#F0E442"]
    shapes = ["triangle-up", "cross", "star-triangle-up", "hexagon"]
    scale_shown = False
    for n, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
        mine = [r for r in rows if r["method"] == method]
        color = METHOD_COLORS.get(method, extra[n % len(extra)])
        scored = mine if color_by is None else [r for r in mine if _num(r.get(color_by)) is not None]
        marker = {"size": [16 if r["id"] in front else 11 for r in scored], "color": color,
                  "line": {"width": [3 if r["id"] in front else 0 for r in scored], "color": "#000000"}}
        hover = "%{text}<br>forget %{x:.1%}, retain %{y:.1%}"
        if color_by is not None:
            values = [_num(r[color_by]) for r in scored]
            marker.update(color=values, colorscale=ROBUSTNESS_SCALE, cmin=0.0, cmax=1.0, showscale=not scale_shown,
                          symbol=METHOD_SYMBOLS.get(method, shapes[n % len(shapes)]),
                          colorbar={"title": {"text": color_by}, "tickformat": ".1f"},
                          line={"width": [3 if r["id"] in front else 1 for r in scored], "color": "#000000"})
            scale_shown = scale_shown or bool(scored)
            hover += f", {color_by} %{{marker.color:.2f}}"
        if scored:
            fig.add_trace(go.Scatter(
                x=[float(r[forget]) for r in scored], y=[float(r[retain]) for r in scored], mode="markers",
                name=method, marker=marker, text=[f"{method} {r.get('settings', '')}" for r in scored],
                hovertemplate=hover + "<extra></extra>"))
        missing = [r for r in mine if r not in scored]
        if missing:
            fig.add_trace(go.Scatter(
                x=[float(r[forget]) for r in missing], y=[float(r[retain]) for r in missing], mode="markers",
                name=f"{method}: no gap ({color_by} n/a)",
                marker={"size": 11, "color": "rgba(0,0,0,0)", "symbol": METHOD_SYMBOLS.get(method, shapes[n % 4]),
                        "line": {"width": 2, "color": COLORS["chance"]}},
                text=[f"{method} {r.get('settings', '')}" for r in missing],
                hovertemplate=f"%{{text}}<br>forget %{{x:.1%}}, retain %{{y:.1%}}, {color_by} n/a<extra></extra>"))
    if before and forget in before and retain in before:
        fig.add_trace(go.Scatter(x=[before[forget]], y=[before[retain]], mode="markers", name="original model",
                                 marker={"symbol": "star", "size": 18, "color": COLORS["original"]},
                                 hovertemplate="original: forget %{x:.1%}, retain %{y:.1%}<extra></extra>"))
    if before and "chance" in before:
        fig.add_vline(x=before["chance"], line={"color": COLORS["chance"], "dash": "dot"},
                      annotation_text="chance", annotation_position="top")
    fig.update_xaxes(tickformat=".0%", range=[-0.03, 1.05])  # accuracies: the whole 0-100% scale, never 200%
    fig.update_yaxes(tickformat=".0%", range=[-0.03, 1.05])
    note = "ringed: the Pareto front (nothing forgets more while keeping more)"
    if color_by is not None:
        note += f"; colour: {color_by}, 1 = the forgetting survives the attack, 0 = it is undone"
    title = "Forget vs retain: every setting of the sweep" + (f", coloured by {color_by}" if color_by else "")
    return _style(fig, title, "forget accuracy (lower is better)", "retain accuracy", note)


def calibration_figure(rows: Sequence[dict], front: Sequence[int] = (), before: dict | None = None,
                       chosen: int | None = None, bars: dict | None = None) -> go.Figure:
    """A calibration's trials: forget vs retain accuracy on the calibration items, coloured by the
    perplexity change, the Pareto front (of all three) ringed, the chosen setting and the original
    model as stars, and the region within the bars shaded. ``rows``: calibration rows (trial,
    state, forget_cloze_acc, retain_cloze_acc, ppl_rise, settings); ``bars``: forget_margin,
    retain_drop (shares), measured from ``before``'s level (chance or floor) and retain accuracy."""
    done = [r for r in rows if r.get("state") == "complete"]
    front = set(front)
    fig = go.Figure()
    if before and bars and "retain_cloze_acc" in before:
        level = max(before.get("chance", 0.0), before.get("forget_floor_acc", 0.0))
        fig.add_shape(type="rect", x0=-0.03, x1=level + bars["forget_margin"], y0=before["retain_cloze_acc"]
                      - bars["retain_drop"], y1=1.05, fillcolor="#009E73", opacity=0.12, line_width=0)
        fig.add_annotation(x=level + bars["forget_margin"], y=1.03, text="within the bars", showarrow=False,
                           xanchor="right", font={"size": 13})
    if done:
        rise = [100 * float(r.get("ppl_rise") or 0.0) for r in done]
        fig.add_trace(go.Scatter(
            x=[float(r["forget_cloze_acc"]) for r in done], y=[float(r["retain_cloze_acc"]) for r in done],
            mode="markers", name="trials",
            marker={"size": [16 if r["trial"] in front else 11 for r in done], "color": rise,
                    "colorscale": [[0.0, COLORS["retain"]], [1.0, COLORS["forget"]]],
                    "cmin": min(0.0, min(rise)), "cmax": max(10.0, max(rise)),
                    "colorbar": {"title": {"text": "perplexity<br>change %"}},
                    "line": {"width": [3 if r["trial"] in front else 0 for r in done], "color": "#000000"}},
            text=[f"trial {r['trial']}: {r.get('settings', '')}" for r in done], customdata=rise,
            hovertemplate="%{text}<br>forget %{x:.1%}, retain %{y:.1%}, perplexity %{customdata:+.1f}%"
                          "<extra></extra>"))
    pick = [r for r in done if r["trial"] == chosen]
    if pick:
        fig.add_trace(go.Scatter(x=[float(pick[0]["forget_cloze_acc"])], y=[float(pick[0]["retain_cloze_acc"])],
                                 mode="markers", name=f"chosen (trial {chosen})",
                                 marker={"symbol": "star", "size": 22, "color": COLORS["edited"],
                                         "line": {"width": 1, "color": "#000000"}},
                                 hovertemplate="chosen: forget %{x:.1%}, retain %{y:.1%}<extra></extra>"))
    if before and "forget_cloze_acc" in before and "retain_cloze_acc" in before:
        fig.add_trace(go.Scatter(x=[before["forget_cloze_acc"]], y=[before["retain_cloze_acc"]], mode="markers",
                                 name="original model", marker={"symbol": "star", "size": 18,
                                                                "color": COLORS["original"]},
                                 hovertemplate="original: forget %{x:.1%}, retain %{y:.1%}<extra></extra>"))
    fig.update_xaxes(tickformat=".0%", range=[-0.03, 1.05])
    fig.update_yaxes(tickformat=".0%", range=[-0.03, 1.05])
    stopped = len(rows) - len(done)
    return _style(fig, "Calibration: every trial on the calibration items", "forget accuracy (lower is better)",
                  "retain accuracy", "ringed: the Pareto front of forgetting, retain damage and perplexity"
                  + (f"; {stopped} trial(s) stopped early are not drawn" if stopped else ""))
