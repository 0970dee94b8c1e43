"""One side of a memory benchmark, alone in a fresh process: ``python -m bench.memprobe b4 ours|plain``
(or ``b9 ...``: one RMU fit of B9, see bench/b9.py).

Prints one JSON line: the peak resident memory of the measured call above the resident memory
just before it (MB). The kernel's high-water mark (VmHWM, the ru_maxrss of a live process) is
reset to the current resident size through ``/proc/self/clear_refs`` right before the call, so
model loading and imports do not count; torch's CPU tensors live in malloc'd memory and show in
the resident size (tracemalloc would not see them).
"""

from __future__ import annotations

import gc
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(fn) -> dict:
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS to the current RSS
        method = "high-water mark reset before the call"
    except OSError:  # no reset: the peak since start (model loading included) bounds it from above
        method = "high-water mark since process start (no reset available)"
    before = _status_kb("VmRSS")
    fn()
    peak = _status_kb("VmHWM")
    return {"peak_mb": (peak - before) / 1024, "rss_before_mb": before / 1024, "method": method}


def main() -> None:
    which, side = sys.argv[1], sys.argv[2]
    from bench import suite

    if which == "b4":
        lm = suite.default_lm()
        texts = suite.bench_texts(int(sys.argv[3]) if len(sys.argv) > 3 else 500)
        fn = (lambda: suite.capture_all(lm, texts)) if side == "ours" else (lambda: suite.plain_hidden_pooled(lm, texts))
    elif which == "b9":  # b9 ours|old N quick|full MODEL FORGET.jsonl RETAIN.jsonl: one fit, its own report
        from bench.b9 import probe

        print(json.dumps(probe(side, int(sys.argv[3]), sys.argv[4] == "quick", *sys.argv[5:8])))
        return
    else:
        raise SystemExit(f"unknown probe {which}")
    print(json.dumps(measure(fn)))


if __name__ == "__main__":
    main()
