"""Calibration: the Optuna study on the tiny lab model, its calibration split, resume, cancel,
bad settings, the config it writes (reproduced by ``run --config``), and the dashboard's button
through the real Gradio server."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from unlearnviz.calibrate import (
    HELDOUT_FILES,
    RESULT_FILE,
    SPLIT_FILE,
    STUDY_FILE,
    CalibrationSettings,
    Range,
    calibrate,
    choose_setting,
    split_items,
)
from unlearnviz.cli import main
from unlearnviz.errors import UserError
from unlearnviz.methods.base import Cancelled
from unlearnviz.sweep import pareto_ids

ROOT = Path(__file__).resolve().parents[1]
SPEC = "synthetic:0.1"  # the tiny_data fixture's world, as a spec `run --config` loads
SMALL = {"trials": 3, "steps": 4}


def _study(folder: Path):
    import optuna

    return optuna.load_study(study_name="calibration", storage=f"sqlite:///{folder / STUDY_FILE}")


@pytest.fixture(scope="module")
def calibrated(tiny_lm, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("calibration")
    events = []
    result = calibrate(tiny_lm, tiny_data, "rmu", CalibrationSettings(**SMALL), out, progress=events.append,
                       data_spec=SPEC)
    return out, result, events


@pytest.mark.slow
def test_the_study_runs_and_returns_the_front(calibrated, tiny_lm):
    out, result, events = calibrated
    assert [r["trial"] for r in result.rows] == [0, 1, 2]
    assert result.rows[0]["defaults"] and not any(r["defaults"] for r in result.rows[1:])
    first = json.loads(result.rows[0]["settings"])
    assert first["alpha"] == 300.0 and first["lr"] == 0.003 and first["steps"] == SMALL["steps"]
    done = [r for r in result.rows if r["state"] == "complete"]
    assert result.front and set(result.front) <= {r["trial"] for r in done}
    for r in done:  # the front: no complete trial beats a front trial on all three objectives
        if r["trial"] in result.front:
            v = (r["forget_gap"], r["retain_drop"], r["ppl_rise"])
            assert not any(all(a <= b for a, b in zip(w, v)) and w != v for w in
                           [(o["forget_gap"], o["retain_drop"], o["ppl_rise"]) for o in done])
    assert result.chosen is not None and result.chosen["trial"] in {r["trial"] for r in done}
    assert ("meet the bars" in result.statement) == result.meets_bars
    assert "held-out items" in result.statement
    for r in result.rows:
        params = json.loads(r["settings"])
        assert 1 <= params["steps"] <= SMALL["steps"] and 2 <= params["layer"] <= tiny_lm.n_layers - 1
        assert 0.25 <= params["steering_coeff"] <= 16 and 10 <= params["alpha"] <= 3000
    with (out / "results.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [int(r["trial"]) for r in table] == [0, 1, 2]
    saved = json.loads((out / RESULT_FILE).read_text())
    assert saved["front"] == result.front and saved["chosen"]["trial"] == result.chosen["trial"]
    trials_seen = [e for e in events if e["phase"] == "trial"]
    assert [e["trial"] for e in trials_seen] == [1, 2, 3] and len(trials_seen[-1]["rows"]) == 3
    assert any(e["phase"] == "fit" and e["step"] == 1 for e in events)
    assert tiny_lm.fingerprint() == tiny_lm.fingerprint(refresh=False)  # base weights unchanged


@pytest.mark.slow
def test_the_split_is_disjoint_from_the_reported_items(calibrated, tiny_data):
    out, result, _ = calibrated
    split = json.loads((out / SPLIT_FILE).read_text())
    for side, items in (("forget", tiny_data.forget_mcq), ("retain", tiny_data.retain_mcq)):
        cal, held = set(split["calibration"][side]), set(split["heldout"][side])
        assert cal and held and not cal & held and cal | held == set(range(len(items)))
    # both halves of the forget set on both sides, so half B is measured on the held-out items too
    for part in ("calibration", "heldout"):
        assert {tiny_data.forget_half[i] for i in split[part]["forget"]} == {"A", "B"}
    rows = [json.loads(line) for line in (out / HELDOUT_FILES["forget_mcq"]).read_text().splitlines()]
    assert [r["question"] for r in rows] == [tiny_data.forget_mcq[i].question for i in split["heldout"]["forget"]]
    calib_questions = {tiny_data.forget_mcq[i].question for i in split["calibration"]["forget"]}
    assert not calib_questions & {r["question"] for r in rows}
    h = result.heldout["after"]
    assert h["forget_n"] == len(split["heldout"]["forget"]) and h["retain_n"] == len(split["heldout"]["retain"])
    assert h["forget_b_n"] == sum(tiny_data.forget_half[i] == "B" for i in split["heldout"]["forget"])
    assert split == split_items(tiny_data, 0.5, 0)  # seeded: the same split again
    assert split != split_items(tiny_data, 0.5, 1)


@pytest.mark.slow
def test_the_written_config_reproduces_the_chosen_setting(calibrated, tmp_path):
    out, result, _ = calibrated
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "unlearnviz", "run", "--config", str(out / "config.yaml"),
                           "--out", str(run)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["hparams"]["alpha"] == result.overrides["alpha"]
    for side in ("before", "after"):
        for key in ("forget_cloze_acc", "retain_cloze_acc", "forget_b_cloze_acc", "forget_gold_logprob",
                    "retain_ppl"):
            assert metrics[side][key] == pytest.approx(result.heldout[side][key], rel=1e-5, abs=1e-6), (side, key)
        assert metrics[side]["forget_n"] == result.heldout[side]["forget_n"]


@pytest.mark.slow
def test_a_rerun_continues_the_study(tiny_lm, tiny_data, tmp_path):
    first = calibrate(tiny_lm, tiny_data, "srmu", CalibrationSettings(trials=2, steps=3), tmp_path, data_spec=SPEC)
    assert first.new_trials == 2 and len(first.rows) == 2
    more = calibrate(tiny_lm, tiny_data, "srmu", CalibrationSettings(trials=4, steps=3), tmp_path, data_spec=SPEC)
    assert more.new_trials == 2 and [r["trial"] for r in more.rows] == [0, 1, 2, 3]
    assert more.rows[:2] == first.rows  # the first two trials were kept, not fitted again
    again = calibrate(tiny_lm, tiny_data, "srmu", CalibrationSettings(trials=4, steps=3), tmp_path, data_spec=SPEC)
    assert again.new_trials == 0 and again.rows == more.rows and again.heldout == more.heldout
    assert len(_study(tmp_path).trials) == 4
    with pytest.raises(UserError, match="differs in method"):
        calibrate(tiny_lm, tiny_data, "rmu", CalibrationSettings(trials=4, steps=3), tmp_path)


@pytest.mark.slow
def test_cancel_stops_between_and_within_trials_and_the_rerun_goes_on(tiny_lm, tiny_data, tmp_path):
    seen = []
    with pytest.raises(Cancelled):
        calibrate(tiny_lm, tiny_data, "rmu", CalibrationSettings(trials=4, steps=3), tmp_path,
                  progress=seen.append, should_stop=lambda: any(e["phase"] == "trial" for e in seen))
    assert [e["trial"] for e in seen if e["phase"] == "trial"] == [1]  # stopped after the first trial
    fit_events = []
    with pytest.raises(Cancelled):  # within the second trial's fit
        calibrate(tiny_lm, tiny_data, "rmu", CalibrationSettings(trials=4, steps=3), tmp_path,
                  progress=fit_events.append, should_stop=lambda: bool(fit_events))
    import optuna

    states = [t.state for t in _study(tmp_path).trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]
    done = calibrate(tiny_lm, tiny_data, "rmu", CalibrationSettings(trials=4, steps=3), tmp_path)
    assert done.new_trials == 3 and [r["trial"] for r in done.rows] == [0, 2, 3, 4]
    assert tiny_lm.fingerprint() == tiny_lm.fingerprint(refresh=False)


@pytest.mark.slow
def test_a_collapsing_trial_is_stopped_early(tiny_lm, tiny_data):
    """A learning rate far too large wrecks retain accuracy: the trial stops before the forget
    items and perplexity are scored, and stays off the front."""
    settings = CalibrationSettings(trials=2, steps=20, space={"lr": Range(0.5, 1.0), "steering_coeff": Range(8, 16)},
                                   prune_retain_drop=0.02)
    result = calibrate(tiny_lm, tiny_data, "rmu", settings, None)
    pruned = [r for r in result.rows if r["state"] == "pruned"]
    assert pruned, result.rows
    for r in pruned:
        assert ("retain accuracy fell" in r["pruned"] or "the fit stopped" in r["pruned"])
        assert "forget_gap" not in r and "forget_cloze_acc" not in r and r["trial"] not in result.front


@pytest.mark.parametrize("settings, match", [
    ({"trials": 0}, "trials must be a whole number"),
    ({"steps": 0}, "steps must be a whole number"),
    ({"steps": 10**6}, "above its maximum"),
    ({"fraction": 1.0}, "between 0 and 1"),
    ({"space": {"bogus": Range(1, 2)}}, "rmu has no such hyperparameter"),
    ({"space": {"alpha": Range(5, 1)}}, "no larger than high"),
    ({"space": {"alpha": Range(0, 10, log=True)}}, "log range needs low > 0"),
    ({"space": {"layer": Range(0.1, 2.0, integer=True, of="depth")}}, "fractions from 0 to 1"),
    ({"space": {"lr": Range(1e-3, 5.0)}}, "above its maximum"),
    ({"space": {"alpha": Range(1, 10)}, "fixed": {"alpha": 10}}, "both given a range and fixed"),
    ({"fixed": {"layer": 2, "alpha": 10, "lr": 1e-3, "steps": 3, "steering_coeff": 2}}, "nothing left to search"),
    ({"fixed": {"nope": 1}}, "unknown hyperparameter 'nope'"),
])
def test_bad_settings_are_one_line(tiny_lm, tiny_data, settings, match):
    with pytest.raises(UserError, match=match) as exc:
        calibrate(tiny_lm, tiny_data, "rmu", CalibrationSettings(**settings), None)
    assert "\n" not in str(exc.value)


def test_too_few_items_to_split(tiny_data):
    import dataclasses

    one = dataclasses.replace(tiny_data, forget_mcq=tiny_data.forget_mcq[:1], forget_half=["A"])
    with pytest.raises(UserError, match="has 1 forget MCQ item"):
        split_items(one, 0.5, 0)


@pytest.mark.parametrize("argv, match", [
    (["--method", "nope"], "unknown method 'nope'"),
    (["--method", "rmu", "--trials", "0"], "trials must be"),
    (["--method", "rmu", "--range", "alpha=1"], "use KEY=LOW,HIGH"),
    (["--method", "rmu", "--range", "alpha=a,b"], "must be numbers"),
])
def test_cli_bad_input_is_one_line_and_exit_2(argv, match, tmp_path, capsys):
    code = main(["calibrate", "--model", "synthetic", "--data", "synthetic", "--out", str(tmp_path / "c"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and match in err and len(err.splitlines()) == 1
    assert not (tmp_path / "c").exists()  # refused before anything was written


def test_choosing_a_setting():
    def row(n, gap, drop, rise, meets):
        return {"trial": n, "state": "complete", "settings": json.dumps({"n": n}), "forget_gap": gap,
                "retain_drop": drop, "ppl_rise": rise, "meets_bars": meets}

    rows = [row(0, 0.05, 0.02, 0.05, True), row(1, 0.01, 0.0, 0.01, True), row(2, 0.0, 0.5, 0.0, False),
            {"trial": 3, "state": "pruned", "settings": "{}", "meets_bars": False}]
    best, ok, text = choose_setting(rows, "rmu")
    assert best["trial"] == 1 and ok and "2 of 3 scored rmu settings meet the bars" in text
    best, ok, text = choose_setting([row(0, 0.3, 0.0, 0.0, False), row(1, 0.12, 0.04, 0.0, False)], "mrp")
    assert best["trial"] == 1 and not ok and text.startswith("None of the 2 scored mrp settings")
    assert choose_setting(rows[3:], "rmu")[0] is None


def test_the_front_of_three_objectives():
    rows = [{"id": "a", "x": 0.1, "y": 0.5, "z": 0.0}, {"id": "b", "x": 0.2, "y": 0.1, "z": 0.0},
            {"id": "c", "x": 0.2, "y": 0.5, "z": 0.1}, {"id": "d", "x": 0.1, "y": 0.5, "z": 0.0}]
    assert pareto_ids(rows, lower=("x", "y", "z")) == {"a", "b", "d"}  # c is beaten by a; a and d tie


def test_the_calibration_figure():
    from unlearnviz.plots import calibration_figure

    rows = [{"trial": 0, "state": "complete", "forget_cloze_acc": 0.9, "retain_cloze_acc": 0.95, "ppl_rise": 0.02,
             "settings": "{}"},
            {"trial": 1, "state": "complete", "forget_cloze_acc": 0.3, "retain_cloze_acc": 0.9, "ppl_rise": 0.2,
             "settings": "{}"},
            {"trial": 2, "state": "pruned", "retain_cloze_acc": 0.2, "settings": "{}"}]
    before = {"forget_cloze_acc": 1.0, "retain_cloze_acc": 0.97, "chance": 0.25, "forget_floor_acc": 0.3}
    fig = calibration_figure(rows, [1], before, chosen=1, bars={"forget_margin": 0.1, "retain_drop": 0.03})
    names = [t.name for t in fig.data]
    assert names == ["trials", "chosen (trial 1)", "original model"]
    assert list(fig.data[0].x) == [0.9, 0.3] and list(fig.data[0].marker.line.width) == [0, 3]
    rect = fig.layout.shapes[0]
    assert rect.x1 == pytest.approx(0.4) and rect.y0 == pytest.approx(0.94)
    assert "1 trial(s) stopped early" in fig.layout.title.subtitle.text


# ---- the dashboard ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tiny_model_path):
    from app_server import Server

    srv = Server("--model", "synthetic", "--data", "synthetic", env={"OMP_NUM_THREADS": "1"})
    yield srv
    srv.stop()


@pytest.mark.slow
def test_calibrate_button_and_use_the_chosen_setting(server):
    from gradio_client import Client

    c = Client(server.url, verbose=False)
    c.predict("synthetic", "float32", "cpu", api_name="/load_model")
    c.predict("synthetic", "", None, api_name="/load_data")
    fp0 = c.predict(api_name="/fingerprint")
    out = c.predict("mrp", 2, 3, api_name="/calibrate")[-1]
    assert out["method"] == "mrp" and len(out["rows"]) == 2 and out["chosen"] in {r["trial"] for r in out["rows"]}
    assert out["heldout"]["after"]["forget_n"] > 0 and out["statement"]
    assert out["overrides"]["steps"] <= 3 and len(out["overrides"]["layers"]) == 1
    used = c.predict(out, api_name="/use_calibration")
    assert used[0] == "mrp" and used[-1]["method"] == "mrp"
    fields = used[-1]["fields"]
    assert fields["steps"] == out["overrides"]["steps"] and fields["k"] == out["overrides"]["k"]
    assert fields["layers"] == str(out["overrides"]["layers"][0])
    fp1 = c.predict(api_name="/fingerprint")
    assert fp1["fingerprint"] == fp0["fingerprint"] == fp1["loaded_fingerprint"]
    with pytest.raises(Exception, match="trials: 0 is below the minimum 1"):
        c.predict("rmu", 0, 3, api_name="/calibrate")
    with pytest.raises(Exception, match="over this server's budget"):
        c.predict("rmu", 1000, 1000, api_name="/calibrate")
    with pytest.raises(Exception, match="no chosen setting yet"):
        c.predict(None, api_name="/use_calibration")
    assert server.alive()
