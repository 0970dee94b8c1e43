"""The benchmark suite's baselines compute what ours computes, and its bookkeeping is right
(no timings are asserted anywhere)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import __main__ as bench_main  # noqa: E402
from bench import common, memprobe, suite  # noqa: E402


def test_b4_plain_forward_pools_the_same_vectors(tiny_lm, tiny_data):
    """B4's baseline (output_hidden_states + pooling afterwards) gives our capture's vectors at
    every block but the last, which the plain API returns after the final norm."""
    texts = (tiny_data.forget_texts + tiny_data.retain_texts)[:40]
    ours = suite.capture_all(tiny_lm, texts)
    plain = suite.plain_hidden_pooled(tiny_lm, texts, batch_size=7)
    assert sorted(ours) == sorted(plain) == list(range(tiny_lm.n_layers))
    for layer in range(tiny_lm.n_layers - 1):
        assert torch.allclose(ours[layer], plain[layer], rtol=1e-4, atol=1e-5), layer
    assert not torch.allclose(ours[tiny_lm.n_layers - 1], plain[tiny_lm.n_layers - 1], atol=1e-3)


def test_b5_naive_loop_agrees_with_batched_scoring(tiny_lm, tiny_data):
    from unlearnviz.evaluation.mcq import score_items, summarise

    items = (tiny_data.forget_mcq + tiny_data.retain_mcq)[:12]
    ours = summarise(score_items(tiny_lm, items, letter=False, floor=False))["cloze_acc"]
    assert suite.b5_naive_loop(tiny_lm, items)["cloze_acc"] == pytest.approx(ours)


def test_step_flops_separates_one_time_and_per_step_work(tiny_lm, tiny_data):
    import unlearnviz.methods.misdirection as misdirection
    from unlearnviz.methods import get_method, make_hparams

    spec = get_method("rmu")
    hp = make_hparams(spec.hparams_cls, {"steps": 3, "layer": 2, "window": 2})
    once_f, step_f = common.step_flops(lambda: spec.fit(tiny_lm, tiny_data, hp), misdirection)
    once_n, step_n = common.step_flops(lambda: spec.fit(tiny_lm, tiny_data, hp, naive=True), misdirection)
    assert 0 < step_f < step_n and once_f > 0 and once_n > 0
    assert misdirection.optimizer_step.__name__ == "optimizer_step"  # put back


def test_memprobe_sees_torch_tensors():
    """The peak above the resident size before the call counts torch's CPU tensors."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("no /proc/self/clear_refs")

    def alloc():
        t = torch.ones(64 * 2**20 // 4)  # 64 MB, touched
        return float(t.sum())

    out = memprobe.measure(alloc)
    assert 50 < out["peak_mb"] < 200


def _result(rid: str, met: bool = True) -> common.Result:
    return common.Result(rid, f"row {rid}", 1.0, 2.0, 2.0, "≥ 1×", met, "s", "cpu", "n", "" if met else "why")


def test_partial_run_keeps_other_benchmarks_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_main, "DOCS", tmp_path)
    monkeypatch.setattr(bench_main, "EXTRA", tmp_path / "benchmarks.extra.json")
    run = {"_ran": ["B1", "B3", "S"], "_date": "d1", "_mode": "full", "_total_s": 60.0, "_which": "every benchmark"}
    for rid in ("B1", "B1s", "B3", "B3m"):
        run[rid] = {"date": "d1", "mode": "full", "other_load": 0.0}
    bench_main.write([_result("B1"), _result("B1s"), _result("B3"), _result("B3m")],
                     {"S": {"markdown": ["## Scaling", "table"], "date": "d1", "mode": "full", "other_load": 0.0}}, run)
    # a partial run of B3 alone: B1's rows and the scaling table stay, B3's are replaced
    run = {"_ran": ["B3"], "_date": "d2", "_mode": "quick", "_total_s": 5.0, "_which": "only B3",
           "B3": {"date": "d2", "mode": "quick", "other_load": 1.5}}
    bench_main.write([_result("B3", met=False)], {}, run)
    rows = {r["id"]: r for r in json.loads((tmp_path / "benchmarks.json").read_text())}
    assert sorted(rows) == ["B1", "B1s", "B3"]  # B3m was B3's: not written by this run, dropped
    assert rows["B1"]["date"] == "d1" and rows["B3"]["date"] == "d2" and rows["B3"]["mode"] == "quick"
    assert set(rows["B3"]) >= {"id", "what", "ours", "baseline", "ratio", "target", "met", "unit", "device"}
    md = (tmp_path / "benchmarks.md").read_text()
    assert "## Scaling" in md and "What limits the missed targets" in md and "- **B3**" in md and ": why" in md
    assert "d2, quick, other load 1.5" in md and "the latest run (only B3)" in md


def _corpus_file(path: Path, split: str, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"split": split, "text": t}) + "\n" for t in texts))
    return path


def test_b9_repeats_documents_past_the_corpus_in_a_seeded_shuffle(tmp_path):
    from bench import b9

    f = _corpus_file(tmp_path / "f.jsonl", "forget", [f"doc {i}" for i in range(10)])
    assert b9.read_texts(f, 4, seed=1) == ["doc 0", "doc 1", "doc 2", "doc 3"]
    many = b9.read_texts(f, 30, seed=1)
    assert sorted(many) == sorted([f"doc {i}" for i in range(10)] * 3)
    assert many != [f"doc {i % 10}" for i in range(30)] and many == b9.read_texts(f, 30, seed=1)


def test_b9_probe_reports_one_fit(tmp_path, tiny_model_path, tiny_data):
    """One B9 fit as the fresh process runs it (here in-process): memory, time, the steps'
    losses and the tokens they read."""
    from bench import b9

    f = _corpus_file(tmp_path / "f.jsonl", "forget", list(tiny_data.forget_texts))
    r = _corpus_file(tmp_path / "r.jsonl", "retain", list(tiny_data.retain_texts))
    out = b9.probe("ours", 40, True, str(tiny_model_path), str(f), str(r))
    steps = b9.QUICK["steps"]
    assert out["steps"] == steps and len(out["losses"]) == steps and out["fit_s"] >= out["train_s"] > 0
    assert out["n_batches"] == 10 + 8 and 0 < out["used_batches"] <= out["n_batches"]  # 40 forget, 32 retain-train
    assert 0 < out["tokens_per_step"] <= 2 * b9.BATCH * b9.QUICK["max_tokens"]
    assert out["shapes"]["hidden"] == tiny_lm_hidden(tiny_model_path) and out["peak_mb"] >= 0


def tiny_lm_hidden(path: Path) -> int:
    return json.loads((Path(path) / "config.json").read_text())["n_embd"]


def test_b9_baseline_tree_imports_the_baseline_package():
    import subprocess

    from bench import b9

    tree, why = b9.baseline_tree()
    if tree is None:
        pytest.skip(why)
    try:
        want = subprocess.run(["git", "-C", str(common.ROOT), "show", f"{b9.B9_BASELINE}:unlearnviz/methods/engine.py"],
                              capture_output=True, text=True, check=True).stdout
        assert (tree / "unlearnviz" / "methods" / "engine.py").read_text() == want
        assert (tree / "bench" / "b9.py").read_text() == (common.ROOT / "bench" / "b9.py").read_text()
        where = subprocess.run([sys.executable, "-c", "import unlearnviz; print(unlearnviz.__file__)"],
                               cwd=tree, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}, capture_output=True,
                               text=True, check=True).stdout.strip()
        assert Path(where).resolve().is_relative_to(tree.resolve())
    finally:
        import shutil

        shutil.rmtree(tree, ignore_errors=True)


@pytest.mark.slow
def test_b9_quick_run(tmp_path, monkeypatch, tiny_model_path):
    """`python -m bench --only B9 --quick` end to end: the fixture, one fresh process per corpus
    size and for the baseline engine, the naive-loop check, the rows and the extrapolation."""
    import os

    from bench import b9
    from unlearnviz.data.fixtures import gcide_folder
    from unlearnviz.model.loading import cache_dir

    real = cache_dir()
    monkeypatch.setenv("UNLEARNVIZ_GCIDE", str(gcide_folder()))
    (tmp_path / "models").symlink_to(real / "models")  # the converted default model and the tiny one
    monkeypatch.setenv("UNLEARNVIZ_CACHE", str(tmp_path))
    out = b9.b9_corpus_memory(quick=True)
    rows = {r.id: r for r in out["results"]}
    assert sorted(rows) == ["B9", "B9l", "B9t"]
    assert rows["B9l"].met and rows["B9l"].ours <= 1e-4  # the engine's losses are the naive loop's
    assert rows["B9"].ours > 0 and rows["B9"].baseline > 0 and rows["B9t"].baseline is not None
    md = "\n".join(out["markdown"])
    assert all(f"| this tree | {n} |" in md for n in b9.QUICK["sizes"]) and f"| up-front ({b9.B9_BASELINE})" in md
    assert "Extrapolation to a 7B model's shapes" in md and "24,000 (WMDP-Bio papers)" in md
    assert os.listdir(tmp_path / "fixtures")  # the fixture went to this test's cache
