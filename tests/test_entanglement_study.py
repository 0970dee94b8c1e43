"""scripts/entanglement_study.py: the grid around a calibrated setting, the verdicts on hand-made
records (both ways, and neither), and a tiny real run on the lab model that resumes and refuses
to mix attack protocols."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("entanglement_study", ROOT / "scripts" / "entanglement_study.py")
study = importlib.util.module_from_spec(_spec)
sys.modules["entanglement_study"] = study  # dataclasses look their module up while the script loads
_spec.loader.exec_module(study)

CENTER = {"rmu": {"steering_coeff": 10.0, "steps": 58, "layer": 2},
          "srmu": {"c_map": 10.0, "steps": 58, "layer": 2},
          "mrp": {"retain_weight": 40.0, "steps": 46, "k": 11}}


def test_grid_around_the_calibrated_setting():
    sizes = {g: len(study.grid_points("rmu", CENTER["rmu"], g)) for g in range(4)}
    assert sizes == {0: 1, 1: 3, 2: 5, 3: 9}
    rmu = dict(study.grid_points("rmu", CENTER["rmu"], 3))
    srmu = dict(study.grid_points("srmu", CENTER["srmu"], 3))
    assert rmu.keys() == srmu.keys()  # RMU's and SRMU's points pair up by label
    assert rmu["coeff ×0.5"] == {"steering_coeff": 5.0, "steps": 58, "layer": 2}
    assert srmu["coeff ×2, steps ×0.5"] == {"c_map": 20.0, "steps": 29, "layer": 2}
    assert isinstance(rmu["steps ×0.5"]["steps"], int) and rmu["calibrated"] == CENTER["rmu"]
    mrp = dict(study.grid_points("mrp", CENTER["mrp"], 1))
    assert mrp["retain_weight ×0.5"]["retain_weight"] == 20.0 and mrp["retain_weight ×2"]["k"] == 11


def test_calibrated_prefers_the_level_own_row():
    presets = {"rows": [{"method": "rmu", "calibrated_on": "0.1", "settings": {"steps": 1}},
                        {"method": "rmu", "calibrated_on": "0.3", "settings": {"steps": 3}}]}
    assert study.calibrated(presets, "rmu", "0.3") == ({"steps": 3}, "0.3")
    assert study.calibrated(presets, "rmu", "0.0") == ({"steps": 1}, "0.1")  # none for 0.0: the first row's
    with pytest.raises(SystemExit, match="no calibrated setting for mrp"):
        study.calibrated(presets, "mrp", "0.1")


def point(method, label, forget, retain, R=None, R_benign=None, seed=0):
    return {"method": method, "label": label, "seed": seed, "R_benign": R_benign, "summary": {"R": R},
            "after": {"forget_cloze_acc": forget, "retain_cloze_acc": retain}}


BEFORE = {"forget_n": 40, "retain_n": 60, "retain_cloze_acc": 1.0}


def test_the_srmu_claim_both_ways_and_neither():
    # one question is 2.5 points of forget and 1.7 of retain: smaller differences are none
    assert study.compare_pair({"forget_cloze_acc": 0.5, "retain_cloze_acc": 1.0},
                              {"forget_cloze_acc": 0.45, "retain_cloze_acc": 1.0}, 0.025, 1 / 60) == "SRMU"
    assert study.compare_pair({"forget_cloze_acc": 0.5, "retain_cloze_acc": 1.0},
                              {"forget_cloze_acc": 0.49, "retain_cloze_acc": 0.99}, 0.025, 1 / 60) == "same"
    assert study.compare_pair({"forget_cloze_acc": 0.5, "retain_cloze_acc": 0.9},
                              {"forget_cloze_acc": 0.4, "retain_cloze_acc": 0.8}, 0.025, 1 / 60) == "trade-off"
    holds = [point("rmu", "calibrated", 0.6, 1.0), point("srmu", "calibrated", 0.5, 1.0),
             point("rmu", "coeff ×2", 0.4, 0.95), point("srmu", "coeff ×2", 0.3, 0.98),
             point("rmu", "coeff ×0.5", 0.9, 1.0), point("srmu", "coeff ×0.5", 0.9, 1.0)]
    v = study.srmu_vs_rmu(holds, BEFORE)
    assert v["counts"] == {"SRMU": 2, "RMU": 0, "trade-off": 0, "same": 1} and v["verdict"] == "holds"
    assert v["mean_d_forget"] == pytest.approx(-0.2 / 3) and v["best_within_retain_bar"] == {"rmu": 0.6,
                                                                                            "srmu": 0.3}
    flipped = [{**p, "method": {"rmu": "srmu", "srmu": "rmu"}[p["method"]]} for p in holds]
    assert study.srmu_vs_rmu(flipped, BEFORE)["verdict"] == "reversed (RMU better)"
    mixed = holds[:2] + [point("rmu", "coeff ×2", 0.3, 0.98), point("srmu", "coeff ×2", 0.4, 0.95)]
    assert study.srmu_vs_rmu(mixed, BEFORE)["verdict"] == "neither"
    assert study.srmu_vs_rmu(holds[:1], BEFORE)["verdict"].startswith("not measured")


def test_the_mrp_claim_both_ways_and_neither():
    pts = [point("rmu", "a", 0.5, 1.0, R=0.4, R_benign=0.9), point("rmu", "b", 0.5, 1.0, R=0.6, R_benign=None),
           point("srmu", "a", 0.5, 1.0, R=0.5, R_benign=0.9), point("mrp", "a", 0.8, 1.0, R=0.9, R_benign=0.95)]
    m = study.mrp_survives(pts)
    assert m["R"]["medians"]["rmu"] == (0.5, 2, 2) and m["R"]["verdict"] == "holds"
    assert m["R_benign"]["medians"]["rmu"] == (0.9, 1, 2) and m["R_benign"]["verdict"] == "neither (within 0.1)"
    pts[-1] = point("mrp", "a", 0.8, 1.0, R=0.3, R_benign=None)
    m = study.mrp_survives(pts)
    assert m["R"]["verdict"] == "reversed (MRP relearns faster)" and m["R_benign"]["verdict"] == "not measured"


@pytest.mark.slow
def test_a_tiny_study_runs_resumes_and_writes_its_documents(tiny_model_path, tmp_path, capsys):
    out = tmp_path / "study"
    tiny = ["--levels", "0.1", "--methods", "rmu,srmu", "--grid", "0", "--attacks", "relearn_forget,noise",
            "--relearn-steps", "2", "--max-items", "8", "--out", str(out)]
    study.main(tiny)
    res = json.loads(out.with_suffix(".json").read_text())
    assert [p["key"] for p in res["points"]] == ["0.1|rmu|calibrated|seed 0", "0.1|srmu|calibrated|seed 0"]
    assert res["protocol"] == {"attacks": ["relearn_forget", "noise"], "relearn_steps": 2, "max_items": 8}
    for p in res["points"]:
        assert p["calibrated_on"] == "0.1" and p["settings"]["seed"] == 0
        assert [c["steps"] for c in p["curves"]] == [[0, 1, 2]] and p["R_benign"] is None
        assert p["summary"]["R"] is None or 0.0 <= p["summary"]["R"] <= 1.0
    md = out.with_suffix(".md").read_text()
    assert "| 0.1 | 1 |" in md and "## Verdicts, both ways" in md and md.rstrip().endswith(study.HAND_WRITTEN)
    assert out.with_suffix(".html").read_text().count('class="plotly-graph-div') >= 3
    (out.with_suffix(".md")).write_text(md + "A hand-written finding.\n")
    res["points"].pop()  # as if interrupted after the first point
    out.with_suffix(".json").write_text(json.dumps(res))
    capsys.readouterr()
    study.main(tiny)
    err = capsys.readouterr().err
    assert err.count("e=0.1 [") == 1 and "srmu calibrated" in err  # only the missing point was measured
    again = json.loads(out.with_suffix(".json").read_text())
    assert len(again["points"]) == 2 and again["points"][0] == res["points"][0] and len(again["runs"]) == 2
    assert out.with_suffix(".md").read_text().endswith("A hand-written finding.\n")  # kept across rebuilds
    with pytest.raises(SystemExit, match="another attack protocol"):
        study.main([*tiny[:-2], "--relearn-steps", "3", "--out", str(out)])
    with pytest.raises(SystemExit, match="unknown attack setting|no chosen attack|unknown attack"):
        study.main([*tiny[:6], "--attacks", "bogus", "--out", str(tmp_path / "x")])
