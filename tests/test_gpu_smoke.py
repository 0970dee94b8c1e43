"""``make gpu-smoke`` (scripts/gpu_smoke.py) works before a GPU is at hand: its dry mode runs every
step end to end on tiny shapes on the CPU, and its rows reach docs/ as "not measured" until a GPU
has run it (no timings are asserted: the rows' figures are benchmarks)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import __main__ as bench_main  # noqa: E402
from bench.common import Result  # noqa: E402

_spec = importlib.util.spec_from_file_location("gpu_smoke", ROOT / "scripts" / "gpu_smoke.py")
gpu_smoke = importlib.util.module_from_spec(_spec)
sys.modules["gpu_smoke"] = gpu_smoke  # its dataclasses look their module up
_spec.loader.exec_module(gpu_smoke)
IDS = [rid for rid, *_ in gpu_smoke.ROWS]
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    """One dry run in a subprocess: its rows, its checks, and whether it left docs/ alone."""
    out = tmp_path_factory.mktemp("smoke")
    docs = {p.name: p.read_bytes() for p in (ROOT / "docs").glob("benchmarks*")}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_smoke.py"), "--dry", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    rows = {r["id"]: r for r in json.loads((out / "rows.json").read_text())} if (out / "rows.json").exists() else {}
    checks = json.loads((out / "checks.json").read_text()) if (out / "checks.json").exists() else {}
    after = {p.name: p.read_bytes() for p in (ROOT / "docs").glob("benchmarks*")}
    return {"proc": proc, "out": out, "rows": rows, "checks": checks, "docs_unchanged": docs == after}


def test_dry_run_runs_every_step(dry):
    proc, checks = dry["proc"], dry["checks"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert checks["mode"] == "dry"
    steps = checks["steps"]
    for name in ("build", "rmu", "srmu", "mrp", "memory", "chat", "capture", "export"):
        assert steps[name] == "ran", (name, steps[name])
    # what a CPU cannot do says why, and bitsandbytes' paths run wherever it is importable
    assert steps["device_map"].startswith("skipped: dry mode")
    for bits in ("8bit", "4bit"):
        assert steps[bits] == ("ran" if HAS_BNB else "skipped: bitsandbytes is not importable"), steps[bits]


def test_dry_run_writes_every_row_and_leaves_docs_alone(dry):
    rows = dry["rows"]
    assert list(rows) == IDS
    for rid, r in rows.items():
        assert r["device"].startswith("dry: CPU"), rid
        if r["ours"] is None:  # a step that could not run names why, with no figures
            assert r["note"].startswith("not run: ") and r["baseline"] is None and r["ratio"] is None, r
        else:
            assert r["ours"] > 0 and r["note"], r
    assert rows["G7"]["ours"] is None
    assert all(rows[rid]["ours"] is not None for rid in ("G1", "G1s", "G2", "G3", "G4", "G5", "G6"))
    assert dry["docs_unchanged"]


def test_dry_fits_follow_the_naive_loop(dry):
    fits = dry["checks"]["fits"]
    assert sorted(fits) == ["mrp", "rmu", "srmu"]
    for method, f in fits.items():
        assert f["steps"] == f["steps_naive"] == dry["checks"]["shape"]["steps"], method
        assert f["tolerance"] == 1e-4
        for a, b in zip(f["losses"], f["losses_naive"]):
            assert abs(a - b) <= 1e-4 * abs(b) + 1e-9, (method, f["losses"], f["losses_naive"])
        assert f["hparams"] == {"steps": 5, "batch_size": 2, "max_tokens": 128}, method
    assert dry["checks"]["base_unchanged_after_fits"] is True


def test_dry_export_reloads_with_equal_logits(dry):
    ex = dry["checks"]["export"]
    assert ex["reloaded_dtype"] == "torch.float32" and ex["reloaded_device"] == "cpu"
    assert ex["max_abs_logit_diff"] <= ex["tolerance"] <= 1e-4 * max(1.0, 100.0)
    assert ex["edit_effect"] > 100 * max(ex["max_abs_logit_diff"], 1e-7)  # the edit is in the weights
    cap = dry["checks"]["capture"]
    assert cap["edit_moves_window"] and cap["moved_below_window"] == 0.0 and cap["max_rel_vs_plain"] <= 1e-4


def test_a_failing_step_says_why_and_the_run_goes_on(tmp_path):
    smoke = gpu_smoke.Smoke(True, tmp_path, set())

    def broken():
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    smoke.step("chat", ["G4"], broken)
    smoke.step("capture", ["G5"], lambda: "one GPU visible")
    rows = {r["id"]: r for r in json.loads((tmp_path / "rows.json").read_text())}
    assert rows["G4"]["ours"] is None and rows["G4"]["note"] == (
        "failed: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert rows["G5"]["note"] == "not run: one GPU visible"
    checks = json.loads((tmp_path / "checks.json").read_text())
    assert checks["steps"] == {"chat": "failed: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB",
                               "capture": "skipped: one GPU visible"}


@pytest.fixture
def docs(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_main, "DOCS", tmp_path)
    monkeypatch.setattr(bench_main, "EXTRA", tmp_path / "benchmarks.extra.json")
    run = {"_ran": ["B1"], "_date": "d1", "_mode": "full", "_total_s": 60.0, "_which": "only B1",
           "B1": {"date": "d1", "mode": "full", "other_load": 0.0}}
    bench_main.write([Result("B1", "row B1", 1.0, 2.0, 2.0, "≥ 1×", True, "ms", "cpu", "n")], {}, run)
    return tmp_path


def _gpu_table(md: str) -> list[str]:
    section = md.split("## GPU (`make gpu-smoke`)")[1]
    return [line for line in section.splitlines() if line.startswith("| G")]


def test_placeholders_say_not_measured_until_a_gpu_row_replaces_them(docs):
    gpu_smoke.write_docs(gpu_smoke.placeholders(), "not measured")
    md = (docs / "benchmarks.md").read_text()
    table = _gpu_table(md)
    assert [line.split(" | ")[0][2:] for line in table] == IDS
    assert all(line.split(" | ")[2] == "not measured" for line in table)
    assert "the latest run (only B1)" in md  # the bench run's header stays
    assert "What limits" not in md  # rows not yet measured are not missed targets
    main_table = md.split("## GPU")[0]
    assert "| B1 |" in main_table and "| G1 |" not in main_table

    measured = Result("G1", "RMU step", 10.0, 80.0, 8.0, "≥ 5×", True, "ms/step", "NVIDIA H200", "n")
    gpu_smoke.write_docs([measured], "gpu-smoke")
    rows = {r["id"]: r for r in json.loads((docs / "benchmarks.json").read_text())}
    assert rows["G1"]["device"] == "NVIDIA H200" and rows["G1s"]["device"] == "not measured" and "B1" in rows
    assert [r.id for r in gpu_smoke.placeholders()] == IDS[1:]  # a measured row is never overwritten
    table = _gpu_table((docs / "benchmarks.md").read_text())
    assert table[0].startswith("| G1 | RMU step | NVIDIA H200 | 10 | 80 | 8 |")


def test_the_docs_carry_every_gpu_row():
    rows = {r["id"]: r for r in json.loads((ROOT / "docs" / "benchmarks.json").read_text())}
    assert set(IDS) <= set(rows)
    md = (ROOT / "docs" / "benchmarks.md").read_text()
    assert [line.split(" | ")[0][2:] for line in _gpu_table(md)] == IDS


def test_rows_of_a_gpu_run_elsewhere_reach_the_docs_and_dry_rows_never_do(docs, dry, tmp_path):
    with pytest.raises(SystemExit):  # the dry run's rows (device "dry: CPU ...") are refused
        gpu_smoke.main(["--from", str(dry["out"])])
    assert "| G" not in (docs / "benchmarks.md").read_text()
    rows = [Result(rid, what, 1.0, 2.0, 2.0, target, True, unit, "NVIDIA H200", "n").to_dict()
            for rid, what, unit, target in gpu_smoke.ROWS]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    (tmp_path / "checks.json").write_text(json.dumps({"date": "2027-01-05"}))
    assert gpu_smoke.main(["--from", str(tmp_path)]) == 0
    table = _gpu_table((docs / "benchmarks.md").read_text())
    assert len(table) == len(IDS) and all(" | NVIDIA H200 | 1 | 2 | 2 | " in line for line in table)
    assert all(" | 2027-01-05, gpu-smoke | " in line for line in table)
