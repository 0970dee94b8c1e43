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
