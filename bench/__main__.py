"""Run the benchmark suite and write docs/benchmarks.md and docs/benchmarks.json.

``python -m bench [--only B1,B3] [--quick]``: the default model, the machine's threads.
``--quick`` is a smoke run (fewer texts, steps and repeats; B8 and B9 on the tiny synthetic model): its
rows are marked "quick" and are not the measured figures. A partial run (``--only``) keeps the
other rows, each with its own date and run conditions. Each row also records how much CPU other
processes used while it ran (from /proc/stat, less this process and its children): absolute
times from a busy machine are inflated, pair-by-pair ratios much less so.
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
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from bench import suite  # noqa: E402
from bench.common import device_name  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"
EXTRA = DOCS / "benchmarks.extra.json"  # each benchmark's extra markdown (the scaling table), kept across partial runs
GPU_PREFIX = "G"  # rows of `make gpu-smoke` (scripts/gpu_smoke.py): their own section, kept by `make bench`


def _cpu_busy_s() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores)."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return (sum(vals[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class OtherLoad:
    """Average number of cores other processes kept busy between start() and stop()."""

    def start(self) -> None:
        self.wall, self.busy, self.own = time.perf_counter(), _cpu_busy_s(), _own_cpu_s()

    def stop(self) -> float:
        wall = time.perf_counter() - self.wall
        others = (_cpu_busy_s() - self.busy) - (_own_cpu_s() - self.own)
        return max(0.0, others / max(wall, 1e-9))


def _bench_of(row_id: str) -> str:
    """The benchmark that writes a row: the longest benchmark id its id starts with (B1s → B1)."""
    return max((b for b, _ in suite.BENCHMARKS if row_id.startswith(b)), key=len, default=row_id)


def write(results: list, extra_md: dict[str, list[str]], run: dict) -> None:
    DOCS.mkdir(exist_ok=True)
    rows = [{**r.to_dict(), **run[r.id]} for r in results]
    old = DOCS / "benchmarks.json"
    if old.exists():  # a partial run (--only) keeps the other benchmarks' rows, with their own date
        kept = [r for r in json.loads(old.read_text()) if _bench_of(r["id"]) not in run["_ran"]]
        rows = sorted(kept + rows, key=lambda r: r["id"])
    (DOCS / "benchmarks.json").write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
    extras = json.loads(EXTRA.read_text()) if EXTRA.exists() else {}
    extras.update(extra_md)
    EXTRA.write_text(json.dumps(extras, indent=2, ensure_ascii=False) + "\n")

    fmt = (lambda v: "—" if v is None else f"{v:.3g}")
    lines = ["# Benchmarks", "", _header(run), "",
             "| id | what | ours | baseline | ratio | target | met | unit | device | measured | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["id"].startswith(GPU_PREFIX):
            continue
        when = f"{r.get('date', '?')}, {r.get('mode', '?')}, other load {r.get('other_load', float('nan')):.1f}"
        lines.append(f"| {r['id']} | {r['what']} | {fmt(r['ours'])} | {fmt(r['baseline'])} | {fmt(r['ratio'])} | "
                     f"{r['target']} | {'yes' if r['met'] else '**no**'} | {r['unit']} | {r['device']} | {when} | "
                     f"{r['note']} |")
    missed = [r for r in rows if not r["met"] and r["ours"] is not None]
    if missed:
        lines += ["", "## What limits the missed targets", ""]
        for r in missed:
            lines.append(f"- **{r['id']}** ({r['what']}): {r.get('limit') or 'see the note in its row.'}")
    lines.append("")
    for bid, _ in suite.BENCHMARKS:
        if bid in extras:
            lines += extras[bid]["markdown"] + [f"_({extras[bid]['date']}, {extras[bid]['mode']} mode, other load "
                                                f"{extras[bid]['other_load']:.1f})_", ""]
    lines += _gpu_section([r for r in rows if r["id"].startswith(GPU_PREFIX)], fmt)
    (DOCS / "benchmarks.md").write_text("\n".join(lines) + "\n")


def _header(run: dict) -> str:
    """The page's first paragraph: the latest `make bench` run. Rows of ``make gpu-smoke`` (a run
    with no ``_date``) keep the paragraph the last bench run wrote."""
    if "_date" not in run:
        old = DOCS / "benchmarks.md"
        for line in old.read_text().splitlines() if old.exists() else []:
            if line.startswith("Written by `make bench`"):
                return line
        return "Written by `make bench` (`python -m bench`); no benchmark run yet."
    return (f"Written by `make bench` (`python -m bench`); the latest run ({run['_which']}): {device_name()}, "
            f"{run['_date']}, {run['_mode']} mode, {run['_total_s'] / 60:.1f} min. Each row alternates ours and the "
            "baseline (after a warm-up where one is cheap) and reports medians; the ratio is the median of per-pair "
            "ratios. *other load* is the average number of cores other processes kept busy while the row ran "
            "(from /proc/stat): on a busy machine absolute times are inflated, pair-by-pair ratios much less. "
            "Rows marked *quick* come from a `--quick` smoke run (fewer texts, steps and repeats; B8 and B9 on "
            "the tiny synthetic model) and are not the measured figures.")


def _gpu_section(rows: list[dict], fmt) -> list[str]:
    """The G rows (``make gpu-smoke``, scripts/gpu_smoke.py) in their own table, whose GPU column is
    the device that measured them, or "not measured" until a GPU has run the script."""
    if not rows:
        return []
    lines = ["## GPU (`make gpu-smoke`)", "",
             "Written by `make gpu-smoke` (scripts/gpu_smoke.py): a randomly initialised Mistral-7B-shaped model "
             "in bfloat16 (weights do not change speed or memory), nothing downloaded. A row whose GPU column says "
             "*not measured* has not run on a GPU yet; a row with no figures names, in its note, why that step "
             "could not run there.", "",
             "| id | what | GPU | ours | baseline | ratio | target | met | unit | measured | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        met = "—" if r["ours"] is None else ("yes" if r["met"] else "**no**")
        when = "—" if r["device"] == "not measured" else f"{r.get('date', '?')}, {r.get('mode', '?')}"
        lines.append(f"| {r['id']} | {r['what']} | {r['device']} | {fmt(r['ours'])} | {fmt(r['baseline'])} | "
                     f"{fmt(r['ratio'])} | {r['target']} | {met} | {r['unit']} | {when} | {r['note']} |")
    return lines + [""]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--only", default="", help="comma-separated benchmark ids (B1,B1e,B2,B3,B4,B5,B6,B7,B8,B9,B10,B11,B12,S)")
    p.add_argument("--quick", action="store_true", help="smoke run: fewer texts, steps and repeats")
    args = p.parse_args()
    wanted = {x.strip() for x in args.only.split(",") if x.strip()}
    unknown = wanted - {bid for bid, _ in suite.BENCHMARKS}
    if unknown:
        p.error(f"unknown benchmark ids: {', '.join(sorted(unknown))}")
    t_start = time.perf_counter()
    mode = "quick" if args.quick else "full"
    date = time.strftime("%Y-%m-%d")
    results, extra, run = [], {}, {"_ran": []}
    load = OtherLoad()
    for bid, fn in suite.BENCHMARKS:
        if wanted and bid not in wanted:
            continue
        print(f"running {bid} …", flush=True)
        t0 = time.perf_counter()
        load.start()
        out = fn(quick=args.quick)
        other = load.stop()
        run["_ran"].append(bid)
        for r in out["results"]:
            run[r.id] = {"date": date, "mode": mode, "other_load": round(other, 2)}
            print(f"  {r.id}: ours {r.ours:.4g} baseline {r.baseline} ratio {r.ratio} met {r.met} {r.note}", flush=True)
        if out.get("markdown"):
            extra[bid] = {"markdown": out["markdown"], "date": date, "mode": mode, "other_load": round(other, 2)}
        print(f"  ({time.perf_counter() - t0:.0f} s, other load {other:.1f} cores)", flush=True)
        results += out["results"]
    run.update({"_date": date, "_mode": mode, "_total_s": time.perf_counter() - t_start,
                "_which": "every benchmark" if not wanted else "only " + ", ".join(run["_ran"])})
    write(results, extra, run)
    print(f"bench took {(time.perf_counter() - t_start) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
