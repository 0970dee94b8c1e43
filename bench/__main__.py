"""Run the benchmark suite and write docs/benchmarks.md and docs/benchmarks.json.

``python -m bench [--only B1,B3] [--quick]``: the default model, the machine's threads.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from bench import suite  # noqa: E402
from bench.common import device_name  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"


def write(results: list, extra_md: list[str]) -> None:
    DOCS.mkdir(exist_ok=True)
    rows = [r.to_dict() for r in results]
    old = DOCS / "benchmarks.json"
    if old.exists():  # a partial run (--only) keeps the other rows, marked with their own date
        fresh = {r["id"] for r in rows}
        kept = [r for r in json.loads(old.read_text()) if r["id"] not in fresh]
        rows = sorted(kept + rows, key=lambda r: r["id"])
    (DOCS / "benchmarks.json").write_text(json.dumps(rows, indent=2) + "\n")
    date = time.strftime("%Y-%m-%d")
    lines = [f"# Benchmarks\n\nMeasured by `make bench` on {device_name()}, {date}. Each row alternates ours and the "
             "baseline after a warm-up and reports medians; the ratio is the median of per-pair ratios.\n",
             "| id | what | ours | baseline | ratio | target | met | unit | device | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fmt = (lambda v: "—" if v is None else f"{v:.3g}")
        lines.append(f"| {r['id']} | {r['what']} | {fmt(r['ours'])} | {fmt(r['baseline'])} | {fmt(r['ratio'])} | "
                     f"{r['target']} | {'yes' if r['met'] else '**no**'} | {r['unit']} | {r['device']} | {r['note']} |")
    (DOCS / "benchmarks.md").write_text("\n".join(lines + [""] + extra_md) + "\n")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--only", default="")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    wanted = {x.strip() for x in args.only.split(",") if x.strip()}
    results, extra = [], []
    for bid, fn in suite.BENCHMARKS:
        if wanted and bid not in wanted:
            continue
        print(f"running {bid} …", flush=True)
        out = fn(quick=args.quick)
        for r in out["results"]:
            print(f"  {r.id}: ours {r.ours:.4g} baseline {r.baseline} ratio {r.ratio} met {r.met} {r.note}", flush=True)
        results += out["results"]
        extra += out.get("markdown", [])
    write(results, extra)


if __name__ == "__main__":
    main()
