"""`python -m unlearnviz analyze`: JSON + self-contained HTML, clear errors, a real browser."""

from __future__ import annotations

import json
import re

import pytest
from offline_page import offline_page

from unlearnviz.cli import main

FAST = ["--no-umap", "--max-texts", "30", "--max-items", "12"]
EDIT = ["--method", "rmu", "--set", "layer=2", "--set", "window=2", "--set", "steps=8"]


@pytest.fixture(scope="module")
def report(tiny_model_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("analysis")
    rc = main(["analyze", "--model", str(tiny_model_path), "--data", "synthetic", "--device", "cpu", "--out",
               str(out), *EDIT, *FAST, "--probe-prompt", "Tell me about the capital"])
    assert rc == 0
    return out


def test_writes_json_with_every_per_layer_number(report, tiny_lm):
    res = json.loads((report / "analysis.json").read_text())
    assert res["layers"] == list(range(tiny_lm.n_layers)) and res["geometry_layer"] == 2
    assert res["edit"]["method"] == "rmu" and res["edit"]["layers"] == [1, 2]
    rows = res["per_layer"]
    assert [r["layer"] for r in rows] == res["layers"]
    for key in ("separability_original", "separability_edited", "centroid_distance_original",
                "centroid_distance_edited", "cka", "probe_forget_original", "probe_forget_edited",
                "forget_mean_abs_delta", "importance_share_top10", "verdict"):
        assert all(key in r for r in rows), key
    assert rows[0]["cka"] == 1.0 and rows[2]["cka"] < 1.0  # the edit acts from layer 1 on
    assert 0.0 <= rows[3]["separability_edited"] <= 1.0
    top = res["importance"]["top_features"]
    assert set(top) == {"0", "1", "2", "3"} and len(top["2"]) == 10
    assert res["selectivity"]["verdict"].startswith("near-uniform")
    assert res["logit_lens"]["gold_token"] and len(res["logit_lens"]["gold_prob_edited"]) == tiny_lm.n_layers
    assert res["probes"]["verdict"] == res["verdict"] and res["probes"]["n_items"] == {"forget": 12, "retain": 12}
    assert res["token_signature"]["tokens"] and res["footprint"]["summary"]


def test_html_is_self_contained(report):
    page = (report / "analysis.html").read_text()
    assert page.count("Plotly.newPlot") >= 10
    assert len(re.findall(r"plotly\.js v\d", page)) == 1  # the library, inlined once
    assert not re.search(r"<script[^>]+src=", page)  # nothing fetched from the network
    for section in ("Importance map", "Selectivity", "Footprint", "Token signature", "Logit lens",
                    "Residual knowledge", "PCA, all layers"):
        assert f"<h2>{section}</h2>" in page
    assert "Tell me about the capital" in page  # the probe prompt is a hover text in the geometry views


def test_uses_a_saved_edit(tiny_lm, tiny_data, tiny_model_path, tmp_path):
    from unlearnviz.methods import get_method, make_hparams, save_edit

    spec = get_method("srmu")
    edit = spec.fit(tiny_lm, tiny_data, make_hparams(spec.hparams_cls, {"layer": 1, "window": 1, "steps": 3}))
    save_edit(edit, tmp_path / "edit", tiny_lm)
    out = tmp_path / "out"
    rc = main(["analyze", "--model", str(tiny_model_path), "--data", "synthetic", "--device", "cpu",
               "--edit", str(tmp_path / "edit"), "--out", str(out), "--layers", "0-2", "--lens-only", *FAST])
    assert rc == 0
    res = json.loads((out / "analysis.json").read_text())
    assert res["edit"]["method"] == "srmu" and res["layers"] == [0, 1, 2]
    assert {r["probe_forget_original"] for r in res["per_layer"]} == {0.25} and "lens_forget_edited" in res["per_layer"][0]
    assert res["per_layer"][0]["cka"] == 1.0 and res["per_layer"][1]["cka"] < 1.0


@pytest.mark.parametrize("args,message", [
    (["--layers", "0,9"], "layer 9 is out of range"),
    (["--layer", "7"], "layer 7 is out of range"),
    (["--layers", "one"], "--layers"),
    (["--prompt", "word " * 400], "too long"),
    (["--edit", "/nonexistent/edit"], "not an edit folder"),
    (["--edit", "x", "--set", "steps=3"], "--set"),
])
def test_bad_input_is_one_clear_line(tiny_model_path, tmp_path, capsys, args, message):
    base = ["analyze", "--model", str(tiny_model_path), "--data", "synthetic", "--device", "cpu", "--out",
            str(tmp_path / "o"), *FAST]
    if "--edit" not in args:
        base += EDIT
    rc = main(base + args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: ") and message in err[-1], err


def test_empty_data_is_refused(tiny_model_path, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    rc = main(["analyze", "--model", str(tiny_model_path), "--data", str(empty), "--out", str(tmp_path / "o")])
    assert rc == 2 and "empty" in capsys.readouterr().err


BUILTIN_SETS = ("geo_europe_vs_world", "geo_europe_vs_science_books", "demo")
# A shorter SRMU than the default 400 steps keeps three sets affordable; every figure section is still made
# (UMAP included); --lens-only skips the ridge probes, not the residual-knowledge figure.
SLOW = ["--set", "steps=60", "--max-texts", "60", "--max-items", "32", "--lens-only"]
DEFAULT_FIGURES = ["Importance map", "Selectivity", "Footprint", "Token signature", "Per-layer geometry metrics",
                   "PCA at layer 7", "PCA, all layers", "UMAP at layer 7", "Logit lens", "Residual knowledge",
                   "Training losses"]
PER_LAYER_KEYS = ("separability_original", "separability_edited", "centroid_distance_original",
                  "centroid_distance_edited", "cka", "probe_forget_original", "probe_forget_edited",
                  "lens_forget_original", "lens_forget_edited", "lens_forget_floor", "forget_mean_abs_delta",
                  "retain_mean_abs_delta", "forget_retain_ratio", "corr_with_importance", "importance_share_top10",
                  "verdict")


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.parametrize("name", BUILTIN_SETS)
def test_analyze_default_model_on_each_builtin_set(name, default_lm, tmp_path, monkeypatch):
    """`analyze` with an SRMU edit on the default model and each built-in set: both files, every
    per-layer number and verdict, and a page that draws every figure in Chromium with no network."""
    import unlearnviz.cli.analyze as cli_analyze

    def one_load(args):  # the three sets share the session's one load of the default model
        assert args.model == "default" and args.device == "cpu"
        return default_lm

    monkeypatch.setattr(cli_analyze, "load_model_from_args", one_load)
    out = tmp_path / name
    assert main(["analyze", "--model", "default", "--data", f"builtin:{name}", "--device", "cpu", "--out", str(out),
                 *SLOW]) == 0
    res = json.loads((out / "analysis.json").read_text())
    assert res["edit"]["method"] == "srmu" and res["edit"]["hparams"]["steps"] == 60
    assert res["layers"] == list(range(30)) and res["edit"]["layers"] == [5, 6, 7] and res["geometry_layer"] == 7
    rows = res["per_layer"]
    assert [r["layer"] for r in rows] == res["layers"]
    for key in PER_LAYER_KEYS:
        assert all(key in r for r in rows), key
    assert all(isinstance(r["verdict"], str) and r["verdict"] for r in rows)
    assert {r["verdict"] for r in rows[:5]} == {"before the edit (unchanged)"}
    assert all(r["cka"] == 1.0 and r["forget_mean_abs_delta"] == 0.0 for r in rows[:5])  # nothing before the edit
    assert rows[7]["cka"] < 1.0 and rows[7]["forget_retain_ratio"] > 1.0  # it moves forget more than retain
    assert res["verdict"] and res["probes"]["verdict"] == res["verdict"]
    assert res["selectivity"]["layer"] == 7 and res["selectivity"]["verdict"]
    assert res["footprint"]["summary"] and res["logit_lens"]["gold_token"] and res["geometry"]["umap_layer"] == 7
    assert (out / "analysis.html").stat().st_size > 1_000_000  # plotly.js inlined
    shown = open_offline(out / "analysis.html")
    assert shown["requests"] == [] and shown["errors"] == []
    assert shown["titles"] == DEFAULT_FIGURES
    assert shown["n_plots"] == shown["n_drawn"] == shown["sections"] == len(DEFAULT_FIGURES)


def open_offline(path) -> dict:
    """Open an HTML file offline (tests/offline_page.py); wait until every plotly figure has drawn.
    Returns what the page fetched, its script errors, and what it shows."""
    with offline_page(path) as (page, log):
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length > 0 && "
                               "[...document.querySelectorAll('.js-plotly-plot')].every("
                               "p => p.querySelector('.main-svg'))", timeout=60_000)
        shown = {"n_plots": page.locator(".js-plotly-plot").count(),
                 "n_drawn": page.locator(".js-plotly-plot:has(.main-svg)").count(),
                 "n_svgs": page.locator(".main-svg").count(),
                 "sections": page.locator("section").count(),
                 "titles": page.locator("section > h2").all_inner_texts()}
    return {"requests": log.requests, "errors": log.errors, **shown}


@pytest.mark.browser
def test_html_opens_offline_in_chromium(report):
    shown = open_offline(report / "analysis.html")
    assert shown["requests"] == [] and shown["errors"] == []
    assert shown["n_plots"] == shown["n_drawn"] == shown["sections"] >= 10 and shown["n_svgs"] >= shown["n_plots"]
