"""Measure every method on every built-in real-fact set with default hyperparameters, and the
relearning and white-box attacks on the high-entanglement set. (Settings sweeps and the
SRMU-vs-RMU comparison at matched forgetting: ``python -m unlearnviz sweep``.)

Writes docs/methods_results.json and docs/methods_results.md. Usage:
``python scripts/measure_methods.py [--only runs,relearn] [--relearn-steps N] [--relearn-lr LR]``
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from unlearnviz.attacks.projection_removal import without_projections  # noqa: E402
from unlearnviz.data import load_data  # noqa: E402
from unlearnviz.evaluation.mcq import evaluate, score_items, summarise  # noqa: E402
from unlearnviz.evaluation.relearn import RelearnSettings, finetune_attack, whitebox_attacks  # noqa: E402
from unlearnviz.methods import get_method, make_hparams  # noqa: E402
from unlearnviz.model import load_model  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"
# docs/methods_results.md: the tables above this line are generated; the sweeps below it are written
# by hand and kept across rebuilds.
HAND_WRITTEN = "<!-- hand-written below: scripts/measure_methods.py keeps everything from this line on -->"
SETS = ["geo_europe_vs_world", "geo_europe_vs_science_books", "demo"]
KEYS = ["forget_cloze_acc", "forget_floor_acc", "forget_b_cloze_acc", "retain_cloze_acc", "retain_floor_acc", "chance",
        "forget_gold_logprob", "retain_gold_logprob", "retain_ppl", "forget_mcq_acc", "retain_mcq_acc"]


def short(m: dict) -> dict:
    return {k: round(m[k], 4) for k in KEYS if k in m}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--only", default="runs,relearn")
    p.add_argument("--methods", default="rmu,srmu,mrp", help="rerun only these; other rows are kept")
    p.add_argument("--relearn-steps", type=int, default=40)
    p.add_argument("--relearn-lr", type=float, default=RelearnSettings.lr)
    args = p.parse_args()
    parts = set(args.only.split(","))
    torch.manual_seed(0)
    lm = load_model("default")
    fp = lm.fingerprint()
    out_path = DOCS / "methods_results.json"
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    DOCS.mkdir(exist_ok=True)

    def save():
        out_path.write_text(json.dumps(results, indent=2, default=float) + "\n")

    edits = {}
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if "runs" in parts:
        results["runs"] = [r for r in results.get("runs", []) if r["method"] not in methods]
        for name in SETS:
            data = load_data(f"builtin:{name}")
            t0 = time.perf_counter()
            before = evaluate(lm, data, letter=True)
            eval_s = time.perf_counter() - t0
            for method in methods:
                spec = get_method(method)
                hp = make_hparams(spec.hparams_cls, {})
                t0 = time.perf_counter()
                edit = spec.fit(lm, data, hp)
                fit_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                after = evaluate(lm, data, plan=edit.plan(), letter=True)
                after_s = time.perf_counter() - t0
                edits[(name, method)] = edit
                row = {"set": name, "method": method, "hparams": edit.hparams, "fit_s": fit_s,
                       "eval_s": after_s, "before": short(before), "after": short(after),
                       "meets": {"forget_within_10pt_of_chance": after["forget_cloze_acc"] <= before["chance"] + 0.10,
                                 "retain_drop_le_3pt": before["retain_cloze_acc"] - after["retain_cloze_acc"] <= 0.03,
                                 "ppl_rise_le_10pct": after["retain_ppl"] <= 1.10 * before["retain_ppl"]}}
                for key in ("selectivity_top10", "importance_range"):  # SRMU: how selective its map was
                    if key in edit.meta:
                        row[key] = edit.meta[key]
                results["runs"].append(row)
                print(json.dumps({k: row[k] for k in ("set", "method", "fit_s")}), short(after), row["meets"], flush=True)
                save()
            results.setdefault("baseline_eval_s", {})[name] = eval_s
    if "relearn" in parts:
        data = load_data("builtin:geo_europe_vs_world")
        s = RelearnSettings(steps=args.relearn_steps, lr=args.relearn_lr, eval_every=max(1, args.relearn_steps // 5))
        rel = results.get("relearn") or {}
        if rel.get("settings") != vars(s) or "original" not in rel:  # other settings: start afresh
            rel = {"settings": vars(s), "original": finetune_attack(lm, data, None, s), "methods": {}}
        for method in methods:
            edit = edits.get(("geo_europe_vs_world", method))
            if edit is None:
                spec = get_method(method)
                edit = spec.fit(lm, data, make_hparams(spec.hparams_cls, {}))
            plan = edit.plan()
            layer = max(plan.edited_layers())
            curve = finetune_attack(lm, data, plan, s)
            wb = whitebox_attacks(lm, data, plan, layer)
            if plan.projections or plan.stream is not None:  # the robustness card's projection removal
                wb["projection_removed"] = summarise(score_items(lm, data.forget_mcq_half("B"),
                                                                 plan=without_projections(plan), letter=False,
                                                                 floor=False))["cloze_acc"]
            rel["methods"][method] = {"curve": curve, "whitebox": wb}
            print(method, curve, wb, flush=True)
            results["relearn"] = rel
            save()
    assert lm.fingerprint() == fp, "base weights changed"
    results["fingerprint_unchanged"] = True
    save()
    write_markdown(results)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def write_markdown(results: dict) -> None:
    """docs/methods_results.md: the tables the README quotes (the hand-written sweeps after
    HAND_WRITTEN are kept)."""
    lines = ["# Methods on the default model (measured by scripts/measure_methods.py)", "",
             "Cloze accuracy (lm-eval acc_norm), before → after; forget half B in brackets; held-out retain "
             "perplexity; 'bar' = forget within 10 points of chance, retain drop ≤ 3 points, perplexity rise ≤ 10%.",
             "", "| set | method | forget | retain | retain ppl | fit | bar |", "|---|---|---|---|---|---|---|"]
    order = {"rmu": 0, "srmu": 1, "mrp": 2}
    runs = sorted(results.get("runs", []), key=lambda r: (SETS.index(r["set"]) if r["set"] in SETS else 99,
                                                          order.get(r["method"], 9)))
    for r in runs:
        b, a, m = r["before"], r["after"], r["meets"]
        met = "met" if all(m.values()) else "not met: " + ", ".join(k for k, v in m.items() if not v)
        lines.append(f"| {r['set']} | {r['method']} | {_pct(b['forget_cloze_acc'])} → {_pct(a['forget_cloze_acc'])} "
                     f"({_pct(a['forget_b_cloze_acc'])}) | {_pct(b['retain_cloze_acc'])} → {_pct(a['retain_cloze_acc'])} "
                     f"| {b['retain_ppl']:.1f} → {a['retain_ppl']:.1f} | {r['fit_s']:.0f} s | {met} |")
    rel = results.get("relearn")
    if rel:
        s = rel["settings"]
        lines += ["", f"## Relearning (fine-tune every MLP output projection on forget half A, lr {s['lr']}, "
                  f"{s['steps']} steps; cloze accuracy on held-out half B)", "",
                  "| model | " + " | ".join(f"step {p['step']}" for p in rel["original"]) + " |",
                  "|---|" + "---|" * len(rel["original"])]
        lines.append("| original | " + " | ".join(_pct(p["acc"]) for p in rel["original"]) + " |")
        for method, v in rel["methods"].items():
            lines.append(f"| {method} | " + " | ".join(_pct(p["acc"]) for p in v["curve"]) + " |")
        lines += ["", "White-box attacks (half B accuracy):", ""]
        for method, v in rel["methods"].items():
            lines.append(f"- {method}: " + ", ".join(f"{k} {_pct(x)}" for k, x in v["whitebox"].items()))
    path = DOCS / "methods_results.md"
    old = path.read_text() if path.exists() else ""
    tail = old[old.index(HAND_WRITTEN):] if HAND_WRITTEN in old else ""
    path.write_text("\n".join(lines) + "\n" + ("\n" + tail if tail else ""))


if __name__ == "__main__":
    main()
