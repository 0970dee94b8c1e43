"""The Evaluate tab's small sweep: the in-memory sweep loop, the grid checks, and the real `/sweep`
endpoint driven by gradio_client (rows, Pareto front, the user's edit and the weights untouched)."""

from __future__ import annotations

import json

import pytest
from app_server import Server
from gradio_client import Client

from unlearnviz.errors import UserError
from unlearnviz.session import Limits
from unlearnviz.sweep import expand, iter_sweep, parse_grid, point_id, run_sweep
from unlearnviz.ui.tab_evaluate import sweep_points

TINY = {"steps": "2", "layer": "2", "window": "2"}


def test_in_memory_sweep_equals_the_cli_loop_and_writes_nothing(tiny_lm, tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    points = expand(parse_grid(["steering_coeff=2,8"]), "rmu", TINY)
    seen, events = [], []
    before = {"forget_cloze_acc": 1.0, "retain_cloze_acc": 1.0, "chance": 0.25}
    for rows, b in iter_sweep(tiny_lm, tiny_data, points, None, log=lambda _m: None, before=before,
                              progress=lambda i, n, ev: events.append((i, n, ev["step"]))):
        seen.append(len(rows))
        assert b is before  # the caller's original-model metrics are used, not measured again
    assert seen == [0, 1, 2] and list(tmp_path.iterdir()) == []
    assert {(i, n) for i, n, _ in events} == {(1, 2), (2, 2)} and max(s for *_, s in events) == 2
    disk = run_sweep(tiny_lm, tiny_data, points, tmp_path / "cli", log=lambda _m: None)
    for a, b in zip(rows, disk):
        assert a["id"] == b["id"] == point_id("rmu", json.loads(a["settings"]))
        assert a["forget_cloze_acc"] == float(b["forget_cloze_acc"])
        assert a["retain_ppl"] == float(b["retain_ppl"])


def test_a_cancelled_sweep_stops_between_steps(tiny_lm, tiny_data):
    from unlearnviz.methods.base import Cancelled

    points = expand(parse_grid(["steps=50"]), "rmu", {"layer": "2", "window": "2"})
    stop = {"now": False}
    sweep = iter_sweep(tiny_lm, tiny_data, points, None, log=lambda _m: None, before={"chance": 0.25},
                       progress=lambda i, n, ev: stop.update(now=ev["step"] >= 3), should_stop=lambda: stop["now"])
    assert next(sweep)[0] == []
    with pytest.raises(Cancelled):
        next(sweep)


@pytest.mark.parametrize("methods,grid,message", [
    ([], "steps=2", "choose at least one method"),
    (["rmu"], "steps", "grid line 'steps': use key=v1,v2"),
    (["rmu"], "steps=1\nsteps=2", "grid line 'steps' is given twice"),
    (["rmu"], "bogus=1,2", "grid line 'bogus': no method in this sweep has that hyperparameter"),
    (["rmu"], "method=srmu", "check boxes"),
    (["rmu", "srmu"], "steps=1,2,3,4", "the grid has 8 points; this server's limit is 6"),
    (["rmu"], "steps=5000", "over this server's limit of 1000"),
    (["rmu"], "steps=-1", "below its minimum"),
    (["nope"], "steps=2", "unknown method"),
])
def test_bad_grids_are_readable_errors(methods, grid, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        sweep_points(methods, grid, Limits())


def test_a_grid_line_separator_and_fixed_settings():
    points = sweep_points(["rmu", "srmu"], "steps=2; layer=2\nsrmu.c_map=1,2", Limits())
    assert [m for m, _ in points] == ["rmu", "srmu", "srmu"]
    assert all(o["steps"] == "2" and o["layer"] == "2" for _, o in points)


@pytest.fixture(scope="module")
def server(tiny_model_path):
    srv = Server("--model", "synthetic", "--data", "synthetic", env={"OMP_NUM_THREADS": "1"})
    yield srv
    srv.stop()


def test_sweep_endpoint_leaves_the_edit_and_the_weights(server):
    c = Client(server.url, verbose=False)
    c.predict("synthetic", "float32", "cpu", api_name="/load_model")
    c.predict("synthetic", "", None, api_name="/load_data")
    c.predict("rmu", {"steps": 5, "layer": 2, "window": 2}, api_name="/run_edit")
    fp0 = c.predict(api_name="/fingerprint")
    ev0 = c.predict(False, api_name="/evaluate")[-1]
    out = c.predict(["rmu", "srmu"], "steps=3\nlayer=2\nwindow=2\nrmu.steering_coeff=2,6", api_name="/sweep")[-1]
    rows = out["rows"]
    assert out["points"] == 3 and len(rows) == 3
    assert sorted(r["method"] for r in rows) == ["rmu", "rmu", "srmu"]
    assert sorted(json.loads(r["settings"]).get("steering_coeff", "-") for r in rows) == ["-", "2", "6"]
    for r in rows:
        assert 0.0 <= r["forget_cloze_acc"] <= 1.0 and 0.0 <= r["retain_cloze_acc"] <= 1.0 and r["retain_ppl"] > 1
        assert r["before.forget_cloze_acc"] == pytest.approx(ev0["before"]["forget_cloze_acc"], abs=1e-5)
    assert out["front"] and set(out["front"]) <= {r["id"] for r in rows}
    fp1 = c.predict(api_name="/fingerprint")
    assert fp1["fingerprint"] == fp0["fingerprint"] == fp1["loaded_fingerprint"]
    _, timeline = c.predict(1, api_name="/select_edit")  # edits are numbered from 1
    assert len(timeline["data"]) == 1 and timeline["data"][0][2] == "rmu"  # the user's one edit, no sweep point
    assert c.predict(False, api_name="/evaluate")[-1]["after"] == ev0["after"]


def test_sweep_endpoint_bad_grid_is_a_readable_error(server):
    c = Client(server.url, verbose=False)
    with pytest.raises(Exception, match="grid line 'steps': use key=v1,v2"):
        c.predict(["rmu"], "steps", api_name="/sweep")
    with pytest.raises(Exception, match="this server's limit is 6"):
        c.predict(["rmu", "srmu", "mrp"], "steps=1,2,3", api_name="/sweep")
    assert server.alive()


@pytest.mark.slow
def test_in_memory_sweep_with_robustness_columns(tiny_model_path):
    """The session's sweep with the robustness columns: the visitor's relearning steps within the
    server's limit, R, Q and HM in every row and in the table, the session's edits untouched."""
    from tiny_models import tiny_session

    from unlearnviz.session import sweeps
    from unlearnviz.sweep import ROBUSTNESS_KEYS

    s = tiny_session()
    with pytest.raises(UserError, match="over this server's limit of 3"):
        sweeps.robustness_for(5, 8, Limits(max_steps=3))
    rob = sweeps.robustness_for(4, 16, Limits())
    assert rob.attacks == ("relearn_forget", "quantize") and rob.pairs()["steps"] == "4"
    points = expand(parse_grid(["steps=10"]), "rmu", {"layer": "2", "alpha": "10", "lr": "0.02", "steering_coeff": "20"})
    *_, (rows, front, _before) = sweeps.live_sweep(s, points, robustness=rob)
    assert len(rows) == 1 and set(ROBUSTNESS_KEYS) <= set(rows[0]) and len(s.stack) == 0
    assert rows[0]["R"] != "" and 0.0 <= rows[0]["R"] <= 1.0  # this setting forgets, so there is a gap to keep
    headers = sweeps.sweep_headers(robustness=True)
    table = sweeps.sweep_table(rows, front, robustness=True)
    assert len(table[0]) == len(headers) and headers[-1] == "Pareto front"
    assert table[0][headers.index("R (relearning)")] == round(rows[0]["R"], 4)
    assert len(sweeps.sweep_table(rows, front)[0]) == len(sweeps.SWEEP_HEADERS)
