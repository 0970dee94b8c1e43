"""B10: what calibration costs and what it buys (issue 17): ``unlearnviz.calibrate`` for RMU and
SRMU on the default model and on Gemma-3-270M (when its packages are installed), on
``builtin:geo_europe_vs_science_books``: trials, pruned trials, wall time, and the chosen
setting's metrics on the held-out items against the method's defaults (full default steps) on the
same held-out items.

"ours" is the calibration's wall time in minutes (the study, the refit of the chosen setting and
its held-out scoring; the defaults' fit is timed apart), against the issue's 45 minutes. Each
calibration runs in a fresh temporary folder, so nothing is resumed from an earlier run.
``--quick`` runs a smoke of the path on the tiny lab model (``synthetic:0.1``, a few trials at
a few steps); its figures are not the measured ones.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bench.common import Result, device_name

DATA = "builtin:geo_europe_vs_science_books"
FULL = {"trials": int(os.environ.get("B10_TRIALS", "24")),
        "steps": int(os.environ["B10_STEPS"]) if os.environ.get("B10_STEPS") else None,
        "methods": ("rmu", "srmu")}
QUICK = {"trials": 3, "steps": 4, "methods": ("rmu", "srmu")}
TARGET_MIN = 45.0
MODELS = tuple(m for m in (("gemma3-270m", "Gemma-3-270M", "g"), ("default", "default model (SmolLM2-135M-Instruct)", "d"))
               if m[2] in os.environ.get("B10_MODELS", "g,d").split(","))  # B10_MODELS=g: Gemma only


def _load(source: str):
    """The model, or None with the one-line reason it cannot be loaded here."""
    from unlearnviz.errors import UserError
    from unlearnviz.model import load_model

    try:
        return load_model(source), ""
    except UserError as exc:
        return None, str(exc)


def _defaults_heldout(lm, data, method: str, split: dict, seed: int) -> tuple[dict, float]:
    """The method at its defaults (full default steps), fitted on the whole data and scored on the
    calibration's held-out items; and its fit time."""
    from unlearnviz.calibrate import split_view
    from unlearnviz.evaluation.mcq import evaluate
    from unlearnviz.methods import get_method, make_hparams

    spec = get_method(method)
    t0 = time.perf_counter()
    edit = spec.fit(lm, data, make_hparams(spec.hparams_cls, {"seed": seed}))
    fit_s = time.perf_counter() - t0
    return evaluate(lm, split_view(data, split, "heldout"), plan=edit.plan(), letter=False), fit_s


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _line(m: dict) -> str:
    return f"{_pct(m.get('forget_cloze_acc'))} / {_pct(m.get('retain_cloze_acc'))} / {m.get('retain_ppl', 0):.2f}"


def b10_calibration(quick: bool = False) -> dict:
    from unlearnviz.calibrate import CalibrationSettings, calibrate, meets_bars, split_items
    from unlearnviz.data import load_data

    s = QUICK if quick else FULL
    models = (("synthetic:0.1", "tiny lab model (--quick)", "d"),) if quick else MODELS
    data_spec = "synthetic:0.1" if quick else DATA
    results, table = [], []
    for source, label, tag in models:
        if quick:
            from unlearnviz.data.synthetic import synthetic_model_path
            from unlearnviz.model import load_model

            lm, why = load_model(str(synthetic_model_path(0.1, seed=0))), ""
        else:
            lm, why = _load(source)
        for method in s["methods"]:
            rid = f"B10{tag}{method[0]}"
            what = f"calibrate {method.upper()} on {label}, {data_spec}"
            if lm is None:  # no row: the table says why
                table.append(f"| {label} | {method.upper()} | not run: it could not be loaded here ({why}) "
                             "| | | | | | |")
                continue
            data = load_data(data_spec, tokenizer=lm.tokenizer)
            settings = CalibrationSettings(trials=s["trials"], steps=s["steps"])
            with tempfile.TemporaryDirectory(prefix="b10-") as tmp:
                t0 = time.perf_counter()
                res = calibrate(lm, data, method, settings, Path(tmp), data_spec=data_spec)
                wall = (time.perf_counter() - t0) / 60
            split = split_items(data, settings.fraction, settings.seed)
            base, base_fit = _defaults_heldout(lm, data, method, split, settings.seed)
            before, after = res.heldout.get("before", {}), res.heldout.get("after", {})
            pruned = sum(r["state"] == "pruned" for r in res.rows)
            base_ok = meets_bars(before, base) if before else False
            note = (f"{len(res.rows)} trials ({pruned} stopped early), steps up to "
                    f"{max((int(r.get('hp.steps', 0)) for r in res.rows), default=0)}; held-out forget / retain / ppl: "
                    f"original {_line(before)}, defaults {_line(base)} (bars: {'yes' if base_ok else 'no'}, fit "
                    f"{base_fit:.0f} s), calibrated {_line(after)} (bars: "
                    f"{'yes' if res.heldout.get('meets_bars') else 'no'}); "
                    + ("a setting met the bars on the calibration items" if res.meets_bars
                       else "none in the searched space met the bars on the calibration items"))
            met = wall <= TARGET_MIN
            results.append(Result(rid, what, wall, None, None, f"≤ {TARGET_MIN:.0f} min", met, "min", device_name(),
                                  note, "" if met else f"{len(res.rows)} trials took {wall:.1f} min"))
            table.append(f"| {label} | {method.upper()} | {len(res.rows)} ({pruned}) | {wall:.1f} | {_line(before)} | "
                         f"{_line(base)} | {_line(after)} | {'yes' if res.heldout.get('meets_bars') else 'no'} | "
                         f"`{res.chosen['settings'] if res.chosen else '–'}` |")
    md = ["### B10: calibration (held-out items: forget / retain cloze accuracy / perplexity)", "",
          "| model | method | trials (stopped early) | wall min | original | defaults | calibrated | calibrated "
          "meets the bars | chosen setting |", "|---|---|---|---|---|---|---|---|---|", *table, ""]
    return {"results": results, "markdown": md}
