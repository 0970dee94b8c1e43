"""The entanglement study: RMU, SRMU and MRP on the synthetic lab world at every entanglement
level, each at its lab-calibrated setting and a small grid around it, with the robustness card
of every edit; writes docs/entanglement_study.json (results, appended as they come), .md
(tables and verdicts) and .html (the trade-off figures, self-contained).

    python scripts/entanglement_study.py [--levels 0.0,0.1,0.2,0.3] [--methods rmu,srmu,mrp]
        [--grid 0-3] [--seeds 0] [--attacks relearn_forget,...] [--relearn-steps 40]
        [--max-items 64] [--threads 1] [--out docs/entanglement_study] [--fresh] [--report-only]

Two published claims are put to the test in a world whose features we control
(``unlearnviz.data.synthetic``: the same invented facts at entanglement 0.0-0.3, where a rising
share of retain facts reuses the forget domain's relations and entities):

- SRMU (its paper): the importance map helps over RMU, giving *higher forget efficacy and higher
  retain* in the high-entanglement regime. RMU and SRMU share the calibrated setting (layer,
  alpha, lr, steps; SRMU's ``c_map`` = RMU's ``steering_coeff``), so each grid point is a pair
  that differs only by the map.
- MRP: its projection *survives relearning* better. Read on R, the share of the forgetting gap
  (original − edited, half B) left after relearning on forget half A, and R_benign, the same after
  relearning on unrelated retain text (``unlearnviz.attacks``).

The budget knobs: ``--levels``, ``--methods``, ``--grid`` (0: the calibrated setting only; 1: its
strength knob ×0.5 and ×2 too; 2: and its steps ×0.5 and ×2; 3: the full 3×3 of both),
``--seeds`` (fit seeds, each point once per seed), ``--attacks`` (the card's attacks; the prompt
attacks are left out by default: templates in other languages mean nothing to a 1M-parameter
model trained on one invented world, and they are the card's slowest), ``--relearn-steps`` and
``--max-items``. The results file is keyed per (level, method, grid point, seed): a rerun skips
what is there, so a larger budget extends a smaller one; a different attack protocol is refused
(``--fresh`` starts again). Runs on one thread by default (``--threads``): on a shared 2-core
machine two OpenMP threads spin against the other load and run several times slower.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

FORMAT = 1
DEFAULT_ATTACKS = ("relearn_forget", "relearn_retain", "ablation", "quantize", "noise", "projection_removal")
# Each method's strength knob (scaled ×0.5 and ×2 by the grid) and its step count. RMU's steering
# coefficient and SRMU's map scale name the same thing: the grid labels them both "coeff" so the
# two methods' points pair up.
KNOBS = {"rmu": ("steering_coeff", "coeff"), "srmu": ("c_map", "coeff"), "mrp": ("retain_weight", "retain_weight")}
FACTORS = (0.5, 2.0)
MEASURES = ("forget_cloze_acc", "forget_b_cloze_acc", "retain_cloze_acc", "retain_ppl", "forget_floor_acc",
            "chance", "forget_n", "retain_n", "forget_b_n")
# A difference in R (or R_benign) smaller than this is no difference (half B has 20 items, so one
# item of a 10-item gap moves R by 0.1).
R_MARGIN = 0.1
RETAIN_BAR = 0.03  # the project's retain bar: a drop of at most 3 points


@dataclass
class Budget:
    """What one run of the study measures (the knobs; see the module docstring)."""

    levels: tuple[str, ...] = ("0.0", "0.1", "0.2", "0.3")
    methods: tuple[str, ...] = ("rmu", "srmu", "mrp")
    grid: int = 1
    seeds: tuple[int, ...] = (0,)
    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    relearn_steps: int = 40
    max_items: int = 64

    def protocol(self) -> dict:
        """What every point of one results file must share (the attacks and their budget)."""
        return {"attacks": list(self.attacks), "relearn_steps": self.relearn_steps, "max_items": self.max_items}

    def attack_settings(self) -> dict[str, str]:
        """The card's settings (``attacks.card.split_settings`` pairs) for this budget."""
        out = {"max_items": str(self.max_items)}
        if any(a.startswith("relearn") for a in self.attacks):
            out["steps"] = str(self.relearn_steps)
            out["eval_every"] = str(max(1, self.relearn_steps // 4))
        return out


# ---- the settings ------------------------------------------------------------------------------
def calibrated(presets: Mapping[str, Any], method: str, level: str) -> tuple[dict, str]:
    """The lab-calibrated setting of ``method`` for ``level`` (docs/lab_presets.json) and the level
    it was calibrated on: the row calibrated on this level if there is one, else the method's row
    (calibrated on one level and applied at every level, as scripts/calibrate_presets.py does)."""
    rows = [r for r in presets.get("rows", []) if r["method"] == method]
    if not rows:
        raise SystemExit(f"docs/lab_presets.json has no calibrated setting for {method}: run "
                         "scripts/calibrate_presets.py first")
    row = next((r for r in rows if str(r["calibrated_on"]) == level), rows[0])
    return dict(row["settings"]), str(row["calibrated_on"])


def grid_points(method: str, center: Mapping[str, Any], grid: int) -> list[tuple[str, dict]]:
    """(label, settings) of the calibrated setting and the grid around it (``Budget.grid``)."""
    key, name = KNOBS[method]

    def scaled(k: str, f: float):
        return max(1, round(center[k] * f)) if k == "steps" else center[k] * f

    points = [("calibrated", dict(center))]
    if grid >= 1:
        points += [(f"{name} ×{f:g}", {**center, key: scaled(key, f)}) for f in FACTORS]
    if grid >= 2:
        points += [(f"steps ×{f:g}", {**center, "steps": scaled("steps", f)}) for f in FACTORS]
    if grid >= 3:
        points += [(f"{name} ×{a:g}, steps ×{b:g}", {**center, key: scaled(key, a), "steps": scaled("steps", b)})
                   for a in FACTORS for b in FACTORS]
    return points


def point_key(level: str, method: str, label: str, seed: int) -> str:
    return f"{level}|{method}|{label}|seed {seed}"


# ---- measuring ---------------------------------------------------------------------------------
def load_results(path: Path, budget: Budget, fresh: bool) -> dict:
    """The results file (a new one when absent or ``fresh``); one of another protocol is refused."""
    if path.exists() and not fresh:
        results = json.loads(path.read_text())
        if results.get("protocol") != budget.protocol():
            raise SystemExit(f"{path} holds results of another attack protocol ({results.get('protocol')}); "
                             "use --out elsewhere or --fresh")
        return results
    return {"format": FORMAT, "protocol": budget.protocol(), "runs": [], "levels": {}, "points": []}


def save_results(path: Path, results: dict) -> None:
    from unlearnviz.io import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(results, indent=1, default=float) + "\n")


def depth_from_curve(series: Mapping[str, Any]) -> float | None:
    """R of one recovery curve: the share of the forgetting gap left at its last step."""
    from unlearnviz.attacks.base import depth_kept

    e, o = series["edited"], series["original"]
    if None in (e[0], o[0], e[-1], o[-1]):
        return None
    return depth_kept(o[0] - e[0], o[-1] - e[-1])


def measure_point(lm, data, method: str, settings: Mapping[str, Any], budget: Budget) -> dict:
    """Fit, evaluate and attack one edit; what the study keeps of it."""
    from unlearnviz.attacks.card import curve_series, figure_rows, run_card
    from unlearnviz.evaluation.mcq import evaluate
    from unlearnviz.methods import get_method, make_hparams

    spec = get_method(method)
    c0, t0 = time.process_time(), time.perf_counter()
    edit = spec.fit(lm, data, make_hparams(spec.hparams_cls, dict(settings)))
    fit_s = time.perf_counter() - t0
    after = evaluate(lm, data, plan=edit.plan(), letter=False)
    t1 = time.perf_counter()
    card = run_card(lm, data, edit.plan(), list(budget.attacks), budget.attack_settings(),
                    edit={"label": edit.label(), "method": method})
    curves = curve_series(card)
    benign = next((s for s in curves if s["attack"] == "relearn_retain"), None)
    return {"after": {k: after[k] for k in MEASURES if k in after}, "fit_s": round(fit_s, 2),
            "card_s": round(time.perf_counter() - t1, 2), "cpu_s": round(time.process_time() - c0, 2),
            "summary": card["summary"], "R_benign": depth_from_curve(benign) if benign else None,
            "strongest": figure_rows(card), "curves": curves, "baseline": card["baseline"],
            "notes": {n: a["notes"] for n, a in card["attacks"].items() if a.get("notes")}}


def run_study(budget: Budget, out: Path, fresh: bool = False, log=print) -> dict:
    """Measure every point of ``budget`` not yet in ``out``.json, saving after each one."""
    import torch

    from unlearnviz.data import load_data
    from unlearnviz.data.synthetic import synthetic_model_path
    from unlearnviz.evaluation.mcq import evaluate
    from unlearnviz.model import LoadOptions, load_model

    path = out.with_suffix(".json")
    results = load_results(path, budget, fresh)
    presets = json.loads((ROOT / "docs" / "lab_presets.json").read_text())
    done = {p["key"] for p in results["points"]}
    run = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "budget": asdict(budget),
           "threads": torch.get_num_threads(), "command": " ".join(sys.argv[1:]), "points": 0, "cpu_s": 0.0,
           "wall_s": 0.0}
    results["runs"].append(run)
    t_run, c_run = time.perf_counter(), time.process_time()
    for level in budget.levels:
        todo = [(m, label, s, seed) for m in budget.methods
                for label, s in grid_points(m, calibrated(presets, m, level)[0], budget.grid) for seed in budget.seeds
                if point_key(level, m, label, seed) not in done]
        if not todo:
            continue
        lm = load_model(str(synthetic_model_path(float(level), seed=0)), LoadOptions(device="cpu"))
        data = load_data(f"synthetic:{level}", tokenizer=lm.tokenizer)
        fp = lm.fingerprint()
        if level not in results["levels"]:
            before = evaluate(lm, data, letter=False)
            results["levels"][level] = {"before": {k: before[k] for k in MEASURES if k in before},
                                        "fingerprint": fp, "overlap": data.overlap()}
        for n, (method, label, settings, seed) in enumerate(todo, 1):
            _, on = calibrated(presets, method, level)
            rec = {"key": point_key(level, method, label, seed), "level": level, "method": method, "label": label,
                   "seed": seed, "calibrated_on": on, "settings": {**settings, "seed": seed}}
            rec.update(measure_point(lm, data, method, rec["settings"], budget))
            results["points"].append(rec)
            run["points"] += 1
            run["cpu_s"] = round(time.process_time() - c_run, 1)
            run["wall_s"] = round(time.perf_counter() - t_run, 1)
            save_results(path, results)
            a, s = rec["after"], rec["summary"]
            log(f"e={level} [{n}/{len(todo)}] {method} {label} seed {seed}: forget {a['forget_cloze_acc']:.0%} "
                f"retain {a['retain_cloze_acc']:.0%} R {fmt(s['R'])} Q {fmt(s['Q'])} R_benign {fmt(rec['R_benign'])} "
                f"({rec['cpu_s']:.0f} CPU-s)")
        if lm.fingerprint() != fp:
            raise AssertionError("base weights changed during the study")
    run["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    save_results(path, results)
    return results


# ---- the verdicts (pure: records in, findings out) -----------------------------------------------
def fmt(v: float | None, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0%}"


def compare_pair(rmu: Mapping, srmu: Mapping, tol_forget: float, tol_retain: float) -> str:
    """Which of two edits is better on forget accuracy (lower) and retain accuracy (higher), a
    difference under one item being none: "SRMU", "RMU" (better on one, worse on neither),
    "trade-off" (each better on one) or "same"."""
    df = srmu["forget_cloze_acc"] - rmu["forget_cloze_acc"]
    dr = srmu["retain_cloze_acc"] - rmu["retain_cloze_acc"]
    f = -1 if df <= -tol_forget else (1 if df >= tol_forget else 0)  # -1: SRMU forgets more
    r = 1 if dr >= tol_retain else (-1 if dr <= -tol_retain else 0)  # 1: SRMU keeps more
    if f == 0 and r == 0:
        return "same"
    if f <= 0 and r >= 0:
        return "SRMU"
    if f >= 0 and r <= 0:
        return "RMU"
    return "trade-off"


def srmu_vs_rmu(points: Sequence[Mapping], before: Mapping) -> dict:
    """The SRMU claim at one level: per pair of points with the same grid label and seed, which
    method is better on both axes; and per method the best forget accuracy among its points within
    the retain bar (a drop of at most 3 points)."""
    tol_f = 1 / max(1, before.get("forget_n", 40)) - 1e-9
    tol_r = 1 / max(1, before.get("retain_n", 60)) - 1e-9
    by = {(p["method"], p["label"], p["seed"]): p for p in points}
    pairs = []
    for (m, label, seed), p in by.items():
        q = by.get(("rmu", label, seed))
        if m == "srmu" and q is not None:
            pairs.append({"label": label, "seed": seed, "winner": compare_pair(q["after"], p["after"], tol_f, tol_r),
                          "d_forget": p["after"]["forget_cloze_acc"] - q["after"]["forget_cloze_acc"],
                          "d_retain": p["after"]["retain_cloze_acc"] - q["after"]["retain_cloze_acc"]})
    counts = {w: sum(x["winner"] == w for x in pairs) for w in ("SRMU", "RMU", "trade-off", "same")}
    best = {}
    for m in ("rmu", "srmu"):
        ok = [p["after"]["forget_cloze_acc"] for p in points if p["method"] == m
              and before["retain_cloze_acc"] - p["after"]["retain_cloze_acc"] <= RETAIN_BAR + 1e-9]
        best[m] = min(ok) if ok else None
    n = len(pairs)
    if not n:
        verdict = "not measured (no RMU/SRMU pair)"
    elif counts["SRMU"] * 2 >= n and counts["SRMU"] > counts["RMU"]:
        verdict = "holds"
    elif counts["RMU"] * 2 >= n and counts["RMU"] > counts["SRMU"]:
        verdict = "reversed (RMU better)"
    else:
        verdict = "neither"
    return {"pairs": pairs, "counts": counts, "best_within_retain_bar": best, "verdict": verdict,
            "mean_d_forget": sum(x["d_forget"] for x in pairs) / n if n else None,
            "mean_d_retain": sum(x["d_retain"] for x in pairs) / n if n else None}


def medians(points: Iterable[Mapping], key) -> dict[str, tuple[float | None, int, int]]:
    """Per method: (median of ``key(point)`` over the points where it is defined, how many are,
    how many points there are)."""
    out: dict[str, list] = {}
    for p in points:
        out.setdefault(p["method"], []).append(key(p))
    return {m: (median([v for v in vs if v is not None]) if any(v is not None for v in vs) else None,
                sum(v is not None for v in vs), len(vs)) for m, vs in out.items()}


def mrp_survives(points: Sequence[Mapping]) -> dict:
    """The MRP claim at one level: MRP's median R (relearning on half A) and R_benign (on retain
    text) against RMU's and SRMU's, a difference under ``R_MARGIN`` being none."""
    out = {}
    for name, key in (("R", lambda p: p["summary"].get("R")), ("R_benign", lambda p: p.get("R_benign"))):
        med = medians(points, key)
        mrp = med.get("mrp", (None, 0, 0))[0]
        others = [med[m][0] for m in ("rmu", "srmu") if m in med and med[m][0] is not None]
        if mrp is None or not others:
            verdict = "not measured"
        elif mrp >= max(others) + R_MARGIN:
            verdict = "holds"
        elif mrp <= min(others) - R_MARGIN:
            verdict = "reversed (MRP relearns faster)"
        else:
            verdict = "neither (within 0.1)"
        out[name] = {"medians": med, "verdict": verdict}
    return out


# ---- the documents -----------------------------------------------------------------------------
HAND_WRITTEN = "<!-- hand-written below: scripts/entanglement_study.py keeps everything from this line on -->"


def figures(results: Mapping) -> list[tuple[str, Any]]:
    """The study's figures: per level the trade-off coloured by HM(R, Q), the measures by level,
    and per level the calibrated points' recovery curves."""
    from unlearnviz import plots
    from unlearnviz.sweep import pareto_front

    pts = results["points"]
    levels = sorted(results["levels"], key=float)
    out = []
    for level in levels:
        rows = [{"id": p["key"], "method": p["method"], "settings": f"{p['label']}, seed {p['seed']}",
                 "forget_cloze_acc": p["after"]["forget_cloze_acc"], "retain_cloze_acc": p["after"]["retain_cloze_acc"],
                 "HM": p["summary"].get("HM")} for p in pts if p["level"] == level]
        if not rows:
            continue
        before = results["levels"][level]["before"]
        fig = plots.tradeoff_figure(rows, pareto_front(rows), before, color_by="HM")
        fig.update_layout(title_text=f"Entanglement {level}: forget vs retain, coloured by HM(R, Q)")
        out.append((f"Trade-off at entanglement {level}", fig))
    for key, label, get in (
            ("R", "R: forgetting gap left after relearning on forget half A",
             lambda p: p["summary"].get("R")),
            ("R_benign", "R_benign: gap left after relearning on unrelated retain text", lambda p: p.get("R_benign")),
            ("Q", "Q: gap left after NF4 quantization", lambda p: p["summary"].get("Q")),
            ("forget", "forget accuracy after the edit", lambda p: p["after"]["forget_cloze_acc"]),
            ("retain", "retain accuracy after the edit", lambda p: p["after"]["retain_cloze_acc"])):
        series = [{"method": p["method"], "level": p["level"], "value": get(p),
                   "text": f"{p['label']}, seed {p['seed']}"} for p in pts]
        out.append((label, plots.metric_by_level(series, key, label, "thin markers: each grid point; line: "
                                                 "each method's median per level")))
    for level in levels:
        series = []
        for p in pts:
            if p["level"] != level or p["label"] != "calibrated" or p["seed"] != min(x["seed"] for x in pts):
                continue
            for s in p["curves"]:
                if s["attack"] == "relearn_forget":
                    series.append({**s, "name": f"{p['method']} ({s['split']})",
                                   "color": plots.METHOD_COLORS.get(p["method"])})
        if series:
            base = results["levels"][level]["before"]
            fig = plots.recovery_curves(series, floor=base.get("forget_floor_acc"), chance=base.get("chance"))
            fig.update_layout(title_text=f"Entanglement {level}: relearning on half A, the calibrated edits")
            out.append((f"Recovery curves at entanglement {level}", fig))
    return out


def write_documents(results: Mapping, out: Path) -> None:
    """``out``.md (tables and verdicts, from the JSON alone) and ``out``.html (the figures)."""
    from unlearnviz.io import atomic_write_text
    from unlearnviz.report.page import figures_page

    pts = results["points"]
    levels = sorted(results["levels"], key=float)
    runs = results["runs"]
    cpu_min = sum(r.get("cpu_s", 0.0) for r in runs) / 60
    wall_min = sum(r.get("wall_s", 0.0) for r in runs) / 60
    budgets = [r["budget"] for r in runs if r.get("points")]
    proto = results["protocol"]
    md = ["# The entanglement study: RMU, SRMU and MRP on the lab world, with robustness", "",
          f"Generated by `python scripts/entanglement_study.py` from [{out.name}.json]"
          f"({out.name}.json); figures in [{out.name}.html]({out.name}.html) "
          "(self-contained: open it in a browser). Everything below the tables is computed from the JSON; the "
          "discussion at the end is hand-written.", "",
          "## What was measured", "",
          f"- **Points**: {len(pts)} edits ({', '.join(f'{k}: {v}' for k, v in count_by(pts, 'method').items())}) on "
          f"{len(levels)} level(s) ({', '.join(levels)}); {cpu_min:.0f} CPU-minutes, {wall_min:.0f} min wall in "
          f"{len(runs)} run(s) on a shared 2-core machine (one thread, `nice -n 15`).",
          "- **Budget of the run(s)**: " + "; ".join(
              f"levels {','.join(b['levels'])}, methods {','.join(b['methods'])}, grid {b['grid']}, "
              f"seeds {','.join(map(str, b['seeds']))}" for b in budgets) + ".",
          f"- **Attacks per edit** (the robustness card, `unlearnviz.attacks`): {', '.join(proto['attacks'])}; "
          f"relearning {proto['relearn_steps']} steps at the attack's default rate (scored every "
          f"{max(1, proto['relearn_steps'] // 4)}), at most {proto['max_items']} questions per side"
          + (" (the lab world has 40 forget questions, 20 in half B, and 60 retain questions: every one is scored)"
             if proto["max_items"] >= 60 else "") + ". Each attack also runs on the original, the reference.",
          "- **Settings**: each method's lab-calibrated setting (docs/lab_presets.json: calibrated on entanglement "
          f"{', '.join(sorted({p['calibrated_on'] for p in pts}))}, the one setting applied at every level) and a grid "
          "around it: the strength knob (RMU `steering_coeff`, SRMU `c_map`, both labelled *coeff*; MRP "
          "`retain_weight`) ×0.5 and ×2, and (grid ≥ 2) `steps` ×0.5 and ×2. RMU and SRMU share the calibrated "
          "setting, so a grid point of each is a pair that differs only by SRMU's importance map.",
          "- **Resolution**: one forget question is 2.5 points, one retain question 1.7 points, one half-B "
          "question 5 points; a difference of less than one question is counted as none. One world seed (0) and "
          "the fit seeds listed: these are single measurements of a small world, not estimates with error bars.",
          "- **R, Q, R_benign**: the share of the forgetting gap (original − edited accuracy) that survives "
          "relearning on forget half A (half B scored; R), NF4 quantization (all forget questions; Q) and relearning "
          "on unrelated retain text (R_benign), each model attacked the same way: 1 = the forgetting survives, 0 = "
          "it is undone; n/a where the edit opened no gap. HM = harmonic mean of R and Q (unlearning-depth-score).",
          ""]
    md += ["## The calibrated settings at each level", "",
           "| level | method | forget | forget half B | retain | retain ppl | R | R_benign | Q | HM | strongest attack |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    seed0 = min((p["seed"] for p in pts), default=0)
    for level in levels:
        b = results["levels"][level]["before"]
        md.append(f"| {level} | original | {pct(b['forget_cloze_acc'])} | {pct(b.get('forget_b_cloze_acc'))} | "
                  f"{pct(b['retain_cloze_acc'])} | {b['retain_ppl']:.2f} | | | | | floor {pct(b.get('forget_floor_acc'))}"
                  f", chance {pct(b.get('chance'))} |")
        for p in pts:
            if p["level"] == level and p["label"] == "calibrated" and p["seed"] == seed0:
                a, s = p["after"], p["summary"]
                best = s.get("strongest")
                strong = f"{best['attack']} ({best['condition']}): {best['recovered']:+.0%}" if best else "none"
                md.append(f"| {level} | {p['method'].upper()} | {pct(a['forget_cloze_acc'])} | "
                          f"{pct(a.get('forget_b_cloze_acc'))} | {pct(a['retain_cloze_acc'])} | {a['retain_ppl']:.2f} | "
                          f"{fmt(s.get('R'))} | {fmt(p.get('R_benign'))} | {fmt(s.get('Q'))} | {fmt(s.get('HM'))} | "
                          f"{strong} |")
    md += ["", "*Strongest attack*: the condition that brought back the largest share of the forgotten knowledge, "
           "(attacked − edited) / (original − edited); it can exceed 100% (past the original) or be negative.", ""]
    md += ["## Claim 1 (SRMU paper): the importance map gives higher forget efficacy and higher retain than RMU, "
           "at high entanglement", "",
           "Per level: each RMU/SRMU pair (same grid point, same seed) counted as won by SRMU or RMU (better on one "
           "axis by at least one question and worse on neither), a trade-off, or the same; the mean differences "
           "SRMU − RMU (forget: negative = SRMU forgets more; retain: positive = SRMU keeps more); and each method's "
           "lowest forget accuracy among its points within the retain bar (drop ≤ 3 points). Verdict: *holds* when "
           "SRMU wins at least half the pairs and more than RMU does; *reversed* the other way round; *neither* "
           "otherwise.", "",
           "| level | pairs | SRMU wins | RMU wins | trade-off | same | mean Δforget | mean Δretain | best forget "
           "within the retain bar: RMU / SRMU | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    verdicts: dict[str, dict] = {}
    for level in levels:
        mine = [p for p in pts if p["level"] == level]
        v = srmu_vs_rmu(mine, results["levels"][level]["before"])
        m = mrp_survives(mine)
        verdicts[level] = {"srmu": v, "mrp": m}
        c, best = v["counts"], v["best_within_retain_bar"]
        md.append(f"| {level} | {len(v['pairs'])} | {c['SRMU']} | {c['RMU']} | {c['trade-off']} | {c['same']} | "
                  f"{fmt(None if v['mean_d_forget'] is None else 100 * v['mean_d_forget'], '+.1f')} pts | "
                  f"{fmt(None if v['mean_d_retain'] is None else 100 * v['mean_d_retain'], '+.1f')} pts | "
                  f"{pct(best.get('rmu'))} / {pct(best.get('srmu'))} | **{v['verdict']}** |")
    md += ["", "## Claim 2 (MRP): the projection survives relearning better", "",
           "Per level and method: the median of R (relearning on half A) and of R_benign (relearning on unrelated "
           "retain text) over the method's points where the edit opened a gap (how many of all in brackets). "
           f"Verdict: *holds* when MRP's median is at least {R_MARGIN} above both RMU's and SRMU's; *reversed* when "
           f"at least {R_MARGIN} below both; *neither* otherwise.", "",
           "| level | R: RMU | R: SRMU | R: MRP | verdict (R) | R_benign: RMU | R_benign: SRMU | R_benign: MRP | "
           "verdict (R_benign) |", "|---|---|---|---|---|---|---|---|---|"]

    def cell(med: Mapping, m: str) -> str:
        v, k, n = med.get(m, (None, 0, 0))
        return f"{fmt(v)} ({k}/{n})"

    for level in levels:
        m = verdicts[level]["mrp"]
        r, rb = m["R"]["medians"], m["R_benign"]["medians"]
        md.append(f"| {level} | {cell(r, 'rmu')} | {cell(r, 'srmu')} | {cell(r, 'mrp')} | **{m['R']['verdict']}** | "
                  f"{cell(rb, 'rmu')} | {cell(rb, 'srmu')} | {cell(rb, 'mrp')} | **{m['R_benign']['verdict']}** |")
    md += ["", "## Verdicts, both ways", ""]
    for name, get in (("SRMU's importance map helps over RMU (higher forget efficacy and retain)",
                       lambda v: v["srmu"]["verdict"]),
                      ("MRP's projection survives relearning on forget text better (R)",
                       lambda v: v["mrp"]["R"]["verdict"]),
                      ("MRP's projection survives benign relearning better (R_benign)",
                       lambda v: v["mrp"]["R_benign"]["verdict"])):
        groups: dict[str, list[str]] = {}
        for level in levels:
            groups.setdefault(get(verdicts[level]), []).append(level)
        md.append(f"- {name}: " + "; ".join(f"**{k}** at entanglement {', '.join(v)}" for k, v in groups.items()) + ".")
    md += ["", "## Every point", "",
           "| level | method | grid point | seed | forget | retain | ppl | R | R_benign | Q | HM | CPU s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {"rmu": 0, "srmu": 1, "mrp": 2}
    for p in sorted(pts, key=lambda p: (float(p["level"]), order.get(p["method"], 9), p["label"], p["seed"])):
        a, s = p["after"], p["summary"]
        md.append(f"| {p['level']} | {p['method']} | {p['label']} | {p['seed']} | {pct(a['forget_cloze_acc'])} | "
                  f"{pct(a['retain_cloze_acc'])} | {a['retain_ppl']:.2f} | {fmt(s.get('R'))} | {fmt(p.get('R_benign'))} "
                  f"| {fmt(s.get('Q'))} | {fmt(s.get('HM'))} | {p['cpu_s']:.0f} |")
    path = out.with_suffix(".md")
    old = path.read_text() if path.exists() else ""
    tail = old[old.index(HAND_WRITTEN):] if HAND_WRITTEN in old else HAND_WRITTEN + "\n"
    atomic_write_text(path, "\n".join(md) + "\n\n" + tail)
    header = {"points": len(pts), "levels": ", ".join(levels), "attacks": ", ".join(proto["attacks"]),
              "CPU-minutes": f"{cpu_min:.0f}"}
    notes = ["Each point is one edit of the lab model at one entanglement level; colours in the trade-offs are "
             "HM(R, Q), from the forget colour (0: the attacks undid the forgetting) to the retain colour (1: it "
             "survived); hollow grey points forgot nothing.", "Tables and verdicts: entanglement_study.md."]
    atomic_write_text(out.with_suffix(".html"), figures_page("The entanglement study", header, figures(results),
                                                             notes))
    results_verdicts = {lv: {"srmu": {k: v for k, v in d["srmu"].items() if k != "pairs"},
                             "mrp": {k: v["verdict"] for k, v in d["mrp"].items()}} for lv, d in verdicts.items()}
    print(json.dumps(results_verdicts, indent=1, default=str))


def count_by(points: Iterable[Mapping], key: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in points:
        out[p[key]] = out.get(p[key], 0) + 1
    return out


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = Budget()
    p.add_argument("--levels", default=",".join(d.levels))
    p.add_argument("--methods", default=",".join(d.methods))
    p.add_argument("--grid", type=int, default=d.grid, choices=range(4),
                   help="0: calibrated only; 1: strength ×0.5, ×2; 2: and steps ×0.5, ×2; 3: the full 3×3")
    p.add_argument("--seeds", default=",".join(map(str, d.seeds)), help="fit seeds (each point once per seed)")
    p.add_argument("--attacks", default=",".join(d.attacks), help="the card's attacks (`attack --attacks`)")
    p.add_argument("--relearn-steps", type=int, default=d.relearn_steps)
    p.add_argument("--max-items", type=int, default=d.max_items)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    p.add_argument("--out", default=str(ROOT / "docs" / "entanglement_study"),
                   help="path without suffix: .json (results), .md and .html are written beside it")
    p.add_argument("--fresh", action="store_true", help="start a new results file (the old one is replaced)")
    p.add_argument("--report-only", action="store_true", help="write the .md and .html from the .json; measure nothing")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.report_only:
        write_documents(json.loads(out.with_suffix(".json").read_text()), out)
        return
    import torch

    from unlearnviz.attacks.card import attack_names, split_settings
    from unlearnviz.errors import UserError

    torch.set_num_threads(args.threads)
    try:  # a bad budget fails in one line before any fit
        budget = Budget(levels=tuple(x.strip() for x in args.levels.split(",") if x.strip()),
                        methods=tuple(x.strip() for x in args.methods.split(",") if x.strip()), grid=args.grid,
                        seeds=tuple(int(x) for x in args.seeds.split(",") if x.strip()),
                        attacks=tuple(attack_names(args.attacks)), relearn_steps=args.relearn_steps,
                        max_items=args.max_items)
        split_settings(list(budget.attacks), budget.attack_settings())
    except UserError as exc:
        raise SystemExit(str(exc)) from None
    unknown = [m for m in budget.methods if m not in KNOBS]
    if unknown:
        raise SystemExit(f"the study knows rmu, srmu and mrp, not {', '.join(unknown)}")
    results = run_study(budget, out, fresh=args.fresh, log=lambda m: print(m, file=sys.stderr, flush=True))
    write_documents(results, out)


if __name__ == "__main__":
    main()
