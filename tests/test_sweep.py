"""Sweeps: grid expansion and validation, a resumable run, the Pareto front, the CLI and its page."""

from __future__ import annotations

import csv
import json

import pytest

from unlearnviz.cli import main
from unlearnviz.errors import UserError
from unlearnviz.sweep import expand, pareto_front, parse_grid, point_id, read_results, run_sweep

TINY = {"steps": "3", "layer": "2", "window": "2", "batch_size": "8"}


def test_grid_expansion_scopes_keys_per_method():
    grid = parse_grid(["method=rmu,srmu,mrp", "steps=2,4", "srmu.c_map=0.5,1,2"])
    points = expand(grid, None)
    by_method = {m: [o for mm, o in points if mm == m] for m in ("rmu", "srmu", "mrp")}
    assert len(by_method["rmu"]) == 2 and len(by_method["mrp"]) == 2
    assert len(by_method["srmu"]) == 6 and all("c_map" in o for o in by_method["srmu"])
    assert not any("c_map" in o for o in by_method["rmu"])
    assert len({point_id(m, o) for m, o in points}) == len(points)


@pytest.mark.parametrize("items, match", [
    (["steps"], "key=v1,v2"),
    (["steps=1", "steps=2"], "given twice"),
    (["bogus=1,2"], "no method in this sweep"),
    (["steps=-3"], "below its minimum"),
    (["nomethod.steps=1"], "is not a method"),
])
def test_bad_grids_are_one_line_errors(items, match):
    with pytest.raises(UserError, match=match):
        expand(parse_grid(items), "rmu")


def test_pareto_front():
    rows = [{"id": "a", "forget_cloze_acc": 0.3, "retain_cloze_acc": 0.9},
            {"id": "b", "forget_cloze_acc": 0.5, "retain_cloze_acc": 0.95},
            {"id": "c", "forget_cloze_acc": 0.5, "retain_cloze_acc": 0.9},  # beaten by a and b
            {"id": "d", "forget_cloze_acc": 0.2, "retain_cloze_acc": 0.5}]
    assert pareto_front(rows) == {"a", "b", "d"}


def test_interrupted_sweep_resumes_without_redoing_points(tiny_lm, tiny_data, tmp_path):
    points = expand(parse_grid(["steering_coeff=2,4,8"]), "rmu", TINY)
    messages = []

    def stop_after_first(msg: str) -> None:
        messages.append(msg)
        if msg.startswith("[1/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(tiny_lm, tiny_data, points, tmp_path, log=stop_after_first)
    first = read_results(tmp_path)
    assert len(first) == 1
    seen = []
    rows = run_sweep(tiny_lm, tiny_data, points, tmp_path, log=seen.append)
    assert seen[0].startswith("3 points, 1 already done, 2 to run")
    assert sum(m.startswith("[") for m in seen) == 2
    assert len(rows) == 3 and rows[0] == first[0]  # the finished point was not rerun
    assert {r["id"] for r in rows} == {point_id(m, o) for m, o in points}
    coeffs = sorted(float(r["hp.steering_coeff"]) for r in rows)
    assert coeffs == [2.0, 4.0, 8.0]


def test_sweep_cli_writes_csv_and_offline_page(tiny_model_path, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "--model", "synthetic", "--device", "cpu", "--data", "synthetic", "--out", str(out),
            "--grid", "method=rmu,srmu", "--grid", "steps=2,3", "--grid", "layer=2", "--grid", "window=2"]
    assert main(args) == 0
    with (out / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["method"] for r in rows) == ["rmu", "rmu", "srmu", "srmu"]
    for r in rows:
        assert 0.0 <= float(r["forget_cloze_acc"]) <= 1.0 and float(r["retain_ppl"]) > 1
        assert json.loads(r["settings"])["layer"] == "2"
    page = (out / "tradeoff.html").read_text()
    assert "Forget vs retain" in page and "Plotly" in page
    assert "<script src=" not in page  # plotly.js inlined: opens offline
    assert main(args) == 0  # a rerun finds every point done
    assert "4 points, 4 already done, 0 to run" in capsys.readouterr().err
    assert main(["sweep", "--data", "synthetic", "--out", str(tmp_path / "x"), "--grid", "method=nope"]) == 2
