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


# ---- the robustness columns ------------------------------------------------------------------
# An RMU setting that opens a forgetting gap on the tiny model in 10 steps (forget ~45%).
FORGETS = ["--grid", "method=rmu", "--grid", "steps=10", "--grid", "layer=2", "--grid", "alpha=10",
           "--grid", "lr=0.02"]
ATTACK_SETS = ["--attack-set", "relearn_forget.steps=4", "--attack-set", "relearn_forget.eval_every=2",
               "--attack-set", "max_items=16"]


def test_robustness_columns_on_hand_made_numbers():
    """R and Q are the share of the forgetting gap (original − edited) that survives relearning
    (its last point) and NF4, HM their harmonic mean; an edit with no gap has none of them."""
    from unlearnviz.attacks.base import AttackResult, Variant
    from unlearnviz.attacks.card import summary
    from unlearnviz.sweep import Robustness, robustness_columns

    def relearn(edited, original, last_edited, last_original):
        return AttackResult("relearn_forget", "forget_b", edited={"forget_b": edited}, original={"forget_b": original},
                            variants=[Variant("step 5", {"forget_b": 0.99}, {"forget_b": 0.0}),  # not the last: unused
                                      Variant("step 10", {"forget_b": last_edited}, {"forget_b": last_original})])

    def quantize(edited, original, nf4_edited, nf4_original):
        return AttackResult("quantize", "forget", edited={"forget": edited}, original={"forget": original},
                            variants=[Variant("int8", {"forget": 0.99}, {"forget": 0.0}, info={"bits": 8}),
                                      Variant("nf4", {"forget": nf4_edited}, {"forget": nf4_original},
                                              info={"bits": 4})])

    # gap 0.8 → 0.4 after relearning (R 0.5); 0.8 → 0.5 after NF4 (Q 0.625); HM = 2·0.5·0.625/1.125
    s = summary({"relearn_forget": relearn(0.2, 1.0, 0.6, 1.0), "quantize": quantize(0.2, 1.0, 0.4, 0.9)})
    assert robustness_columns({"summary": s}) == {"R": 0.5, "Q": 0.625, "HM": round(2 * 0.5 * 0.625 / 1.125, 5)}
    # the gap widens under the attack (the original gains more): clipped at 1; it closes past zero: 0
    s = summary({"relearn_forget": relearn(0.2, 0.6, 0.2, 1.0), "quantize": quantize(0.2, 1.0, 0.95, 0.9)})
    assert robustness_columns({"summary": s}) == {"R": 1.0, "Q": 0.0, "HM": 0.0}
    # nothing was forgotten (edited = original): no gap to keep, so no R, Q or HM
    s = summary({"relearn_forget": relearn(0.7, 0.7, 0.9, 1.0), "quantize": quantize(0.2, 1.0, 0.2, 1.0)})
    assert robustness_columns({"summary": s}) == {"R": "", "Q": 1.0, "HM": ""}
    rob = Robustness(settings={"relearn_forget.steps": 4})
    assert rob.pairs() == {"quantize.formats": "nf4", "relearn_forget.steps": "4"}
    assert Robustness(attacks=("relearn_forget",)).pairs() == {}  # the NF4 default only for the quantizer
    assert rob.key() != Robustness().key() and json.loads(rob.key())["attacks"] == ["relearn_forget", "quantize"]
    with pytest.raises(UserError, match="no chosen attack has it"):
        Robustness(settings={"bogus": 1}).check()


@pytest.mark.slow
def test_robustness_sweep_columns_cards_and_page(tiny_model_path, tmp_path, capsys):
    """A tiny real sweep with --robustness: each row carries R, Q, HM read from its point's card
    (saved beside the CSV), rows measured without them are measured again, and the page colours
    the trade-off by each."""
    from unlearnviz.attacks.base import harmonic_mean
    from unlearnviz.attacks.card import read_card

    out = tmp_path / "sweep"
    base = ["sweep", "--model", "synthetic", "--device", "cpu", "--data", "synthetic", "--out", str(out), *FORGETS,
            "--grid", "steering_coeff=0.5,20"]
    assert main(base) == 0
    assert "R" not in read_results(out)[0] and not (out / "cards").exists()
    capsys.readouterr()
    assert main([*base, "--robustness", *ATTACK_SETS]) == 0
    assert "2 points, 0 already done, 2 to run" in capsys.readouterr().err  # no R yet: measured again
    rows = read_results(out)
    assert len(rows) == 2 and len({r["id"] for r in rows}) == 2
    for r in rows:
        card = read_card(out / "cards" / r["id"])
        assert card["order"] == ["relearn_forget", "quantize"] and card["edit"]["sweep_point"] == r["id"]
        assert [v["label"] for v in card["attacks"]["quantize"]["variants"]] == ["nf4"]
        assert card["attacks"]["relearn_forget"]["settings"]["steps"] == 4
        for key in ("R", "Q", "HM"):
            want = card["summary"][key]
            assert r[key] == "" if want is None else float(r[key]) == pytest.approx(want, abs=1e-5)
            assert r[key] == "" or 0.0 <= float(r[key]) <= 1.0
        if r["R"] and r["Q"]:
            assert float(r["HM"]) == pytest.approx(harmonic_mean(float(r["R"]), float(r["Q"])), abs=1e-4)
    strong = next(r for r in rows if json.loads(r["settings"])["steering_coeff"] == "20")
    assert float(strong["forget_b_cloze_acc"]) < float(strong["before.forget_cloze_acc"]) and strong["R"] != ""
    page = (out / "tradeoff.html").read_text()
    assert page.count('class="plotly-graph-div') == 4 and "coloured by HM" in page and "coloured by Q" in page
    assert main([*base, "--robustness", *ATTACK_SETS]) == 0
    assert "2 points, 2 already done, 0 to run" in capsys.readouterr().err
    assert main(base) == 0  # without --robustness the rows are done as they are (and keep their columns)
    assert read_results(out) == rows
    assert main([*base, "--attack-set", "max_items=8"]) == 2
    assert "--attack-set needs --robustness" in capsys.readouterr().err
    assert main([*base, "--robustness", "--attack-set", "noise.scales=1"]) == 2
