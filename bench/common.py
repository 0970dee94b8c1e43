"""Timing helpers: warm-up, then ours and the baseline alternated, medians of pair ratios; FLOP
counts of a training loop's steps; peak memory of one side in a fresh process."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    id: str
    what: str
    ours: float
    baseline: float | None
    ratio: float | None
    target: str
    met: bool
    unit: str
    device: str
    note: str = ""
    limit: str = ""  # for a missed target: what bounds it, with the measured numbers

    def to_dict(self) -> dict:
        return asdict(self)


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def paired(ours: Callable[[], object], baseline: Callable[[], object], repeats: int = 3, warmup: int = 1):
    """Median time of each and the median of the per-pair ratios baseline/ours."""
    for _ in range(warmup):
        ours()
        baseline()
    a, b, ratios = [], [], []
    for _ in range(repeats):
        ta, tb = timed(ours), timed(baseline)
        a.append(ta)
        b.append(tb)
        ratios.append(tb / ta)
    return statistics.median(a), statistics.median(b), statistics.median(ratios)


def median_time(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn) for _ in range(repeats))


def step_flops(fit: Callable[[], object], module) -> tuple[float, float]:
    """(one-time FLOPs, FLOPs per step) of a training fit, counted by torch's FlopCounterMode
    (matrix products and attention, forward and backward). ``module`` is where the fit looks up
    ``optimizer_step``; its calls mark where each step ends. The fit needs at least 2 steps."""
    from torch.utils.flop_counter import FlopCounterMode

    marks: list[int] = []
    orig = module.optimizer_step
    with FlopCounterMode(display=False) as counter:
        def counted(*args, **kwargs):
            orig(*args, **kwargs)
            marks.append(counter.get_total_flops())

        module.optimizer_step = counted
        try:
            fit()
        finally:
            module.optimizer_step = orig
    per_step = (marks[-1] - marks[0]) / max(1, len(marks) - 1)
    return marks[0] - per_step, per_step


def step_profile(fit: Callable[[], object], module, skip: int = 2) -> dict:
    """torch.profiler over a fit's training steps after the first ``skip`` (the profiler starts
    at that step's optimizer_step): the share of CPU time in matrix products, the operator calls
    per step, and the heaviest other operators."""
    from torch.profiler import ProfilerActivity, profile

    orig = module.optimizer_step
    state: dict = {"n": 0, "prof": None}

    def marked(*args, **kwargs):
        orig(*args, **kwargs)
        state["n"] += 1
        if state["n"] == skip:
            state["prof"] = profile(activities=[ProfilerActivity.CPU])
            state["prof"].__enter__()

    module.optimizer_step = marked
    try:
        fit()
    finally:
        module.optimizer_step = orig
        if state["prof"] is not None:
            state["prof"].__exit__(None, None, None)
    steps = max(1, state["n"] - skip)
    ops = [e for e in state["prof"].key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in ops) or 1.0
    mm = sum(e.self_cpu_time_total for e in ops if e.key in ("aten::mm", "aten::addmm", "aten::bmm"))
    others = sorted((e for e in ops if e.key not in ("aten::mm", "aten::addmm", "aten::bmm")),
                    key=lambda e: -e.self_cpu_time_total)[:4]
    return {"mm_share": mm / total, "ops_per_step": sum(e.count for e in ops) / steps,
            "top": [(e.key.removeprefix("aten::"), e.self_cpu_time_total / total) for e in others]}


def peak_rss_mb(*args: str, timeout: float = 900) -> dict:
    """Run ``python -m bench.memprobe ARGS`` in a fresh process and return its JSON report: the
    peak resident memory of the measured call above the process's resident memory just before
    it (the kernel's high-water mark, reset through /proc/self/clear_refs), in MB."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-m", "bench.memprobe", *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"memprobe {args} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


