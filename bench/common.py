"""Timing helpers: warm-up, then ours and the baseline alternated, medians of pair ratios."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch


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
