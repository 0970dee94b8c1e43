"""A self-contained HTML report of one edit, for people who have never heard of RMU.

:func:`build_report` is pure (a :class:`ReportData` in, one HTML string out, rendered from
``templates/report.html.j2``; figures from :mod:`unlearnviz.plots`, plotly.js inlined once so the
file opens offline). :func:`write_run_report` reports a ``python -m unlearnviz run`` folder,
computing with fast settings whatever the folder does not hold (analysis views, relearning curve,
chat pairs: :mod:`unlearnviz.report.gather`); the session layer reports a dashboard session
through :func:`gather` and :func:`write_report`. Verdicts and metric labels come from
:mod:`unlearnviz.evaluation.verdicts`; each method's plain-words description from its registration.

Every piece of text that comes from data, models or users is escaped: forget texts and chat
answers are untrusted.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from unlearnviz.errors import UserError
from unlearnviz.evaluation.verdicts import (
    METRICS,
    fmt_metric,
    forget_verdict,
    headline,
    pct,
    relearn_verdict,
    residual_verdict,
    retain_verdict,
)
from unlearnviz.report.gather import ReportData, ReportSettings, chat_pairs, edit_summary, gather
from unlearnviz.report.page import render

__all__ = ["SECTIONS", "ReportData", "ReportSettings", "build_report", "chat_pairs", "check_out_path",
           "edit_summary", "gather", "write_report", "write_run_report"]

# (anchor, heading) of every section, in reading order: the tests check them all.
SECTIONS = [
    ("summary", "Summary"),
    ("what", "What was unlearned and why"),
    ("model-data", "Model and data"),
    ("method", "Method and settings"),
    ("metrics", "Before and after: accuracy and fluency"),
    ("importance", "Where the forget knowledge lives"),
    ("geometry", "Hidden-state geometry before and after"),
    ("residual", "Residual knowledge: erased or hidden?"),
    ("relearning", "Relearning attack"),
    ("robustness", "Robustness card: does the knowledge come back?"),
    ("chats", "Example answers, side by side"),
    ("about", "How this report was made"),
]

WHITEBOX_LABELS = {"edited": "edited model, no attack", "original": "original model",
                   "projection_removed": "edit's projection removed",
                   "shift_direction_ablated": "the edit's main direction of change removed"}


def _metric_rows(before: dict, after: dict) -> list[dict]:
    """The metrics table: exact values in data-value (the tests read them back), formatted text shown."""
    rows = []
    for key, label, meaning, _ in METRICS:
        if key not in before and key not in after:
            continue
        b, a = before.get(key), after.get(key)
        change = "–" if a is None or b is None else (
            f"{(a - b) * 100:+.1f} pts" if key.endswith("_acc") else f"{a - b:+.2f}")
        cells = [(repr(float(v)) if v is not None else "", fmt_metric(key, v)) for v in (b, a)]
        rows.append({"key": key, "label": label, "meaning": meaning, "cells": cells, "change": change})
    return rows


def _model_rows(r: ReportData) -> list[tuple[str, object]]:
    m, s = r.model, r.data.summary()
    rows = [("model", m.get("name")), ("family", m.get("family")), ("layers", m.get("layers")),
            ("hidden size", m.get("hidden_size")),
            ("parameters", f"{m['parameters'] / 1e6:.1f} M" if m.get("parameters") else None),
            ("weights fingerprint", m.get("fingerprint")), ("data", r.data.name),
            ("provenance", r.data.provenance or None),
            ("forget / retain questions", f"{s['forget_mcq']} / {s['retain_mcq']}"),
            ("forget / retain training texts", f"{s['forget_texts']} / {s['retain_texts']}"),
            ("word overlap forget vs retain", f"{s['unigram_overlap']:.0%} of words, {s['bigram_overlap']:.0%} of "
                                              "word pairs (high overlap: harder to separate)")]
    return [(k, v) for k, v in rows if v is not None]


def _figures(r: ReportData) -> dict:
    """Every figure the page can show (None where its data is missing); the template places them."""
    from unlearnviz import plots

    a, before = r.analysis, r.before
    pr = a.probes if a is not None else None
    curve = r.relearn if r.relearn and r.relearn.get("edited") else None
    return {
        "bars": plots.before_after_bars(r.before, r.after) if r.before and r.after else None,
        "importance": plots.importance_heatmap(a.importance, a.footprint) if a is not None else None,
        "pca": plots.geometry_scatter(a.pca[a.geometry_layer]) if a is not None and a.geometry_layer in a.pca
        else None,
        "layers": plots.layer_metric_lines(a.metrics, edit_layers=a.edit.get("layers") or None) if a is not None
        else None,
        "probes": plots.probe_accuracy_lines(pr) if pr is not None else None,
        "lens": plots.logit_lens_heatmap(a.lens) if a is not None and a.lens is not None else None,
        "relearn": plots.relearning_curve(curve["edited"], curve.get("original"), chance=before.get("chance"),
                                          floor=before.get("forget_floor_acc")) if curve else None,
        "card": _card_figure(r.attacks) if r.attacks else None,
        "card_curve": _card_curve(r.attacks) if r.attacks else None,
    }


def _card_figure(card: dict):
    from unlearnviz import plots
    from unlearnviz.attacks.card import figure_rows

    base = card.get("baseline") or {}
    rows = figure_rows(card)
    return plots.robustness_card(rows, floor=base.get("floor"), chance=base.get("chance")) if rows else None


def _card_curve(card: dict):
    """The card's relearning attacks as recovery curves (None when neither was run)."""
    from unlearnviz import plots
    from unlearnviz.attacks.card import curve_series

    base = card.get("baseline") or {}
    series = curve_series(card)
    return plots.recovery_curves(series, floor=base.get("floor"), chance=base.get("chance")) if series else None


def _card_context(card: dict | None) -> dict:
    """The robustness section's table, headline and summary figures (empty without a card)."""
    if not card:
        return {"card_rows": [], "card_headline": "", "card_summary": [], "card_notes": []}
    from unlearnviz.attacks.card import CARD_HEADERS, card_results, card_rows, headline

    def cell(v, signed: bool = False) -> str:
        if v is None:
            return "n/a"
        return f"{v * 100:+.0f}%" if signed else pct(float(v))

    rows = [[*row[:3], *(cell(v) for v in row[3:7]), cell(row[7], signed=True), *(cell(v) for v in row[8:])]
            for row in card_rows(card)]
    s = card.get("summary") or {}
    summary = [(k, f"{s[k]:.2f}" if s.get(k) is not None else "n/a", s.get(f"{k}_from") or "") for k in ("R", "Q")]
    summary.append(("HM(R, Q)", f"{s['HM']:.2f}" if s.get("HM") is not None else "n/a", "harmonic mean"))
    notes = [f"{name}: {n}" for name, r in card_results(card).items() for n in r.notes]
    return {"card_rows": rows, "card_headers": CARD_HEADERS, "card_headline": headline(card), "card_summary": summary,
            "card_notes": notes}


def build_report(r: ReportData) -> str:
    """The report as one HTML string (pure: no model, no files)."""
    from unlearnviz.methods import REGISTRY  # importing the package registers every method
    from unlearnviz.methods.base import describe_hparams

    edit = r.edits[-1] if r.edits else {"method": "none", "hparams": {}}
    method = str(edit.get("method", "none"))
    spec = REGISTRY.get(method)
    fv, rv = forget_verdict(r.before, r.after), retain_verdict(r.before, r.after)
    lv = relearn_verdict(r.relearn, fv.ok)
    a = r.analysis
    pr = a.probes if a is not None else None
    residual = residual_verdict(pr.verdict) if pr is not None else None
    docs = {d["name"]: d.get("doc", "") for d in describe_hparams(spec.hparams_cls)} if spec else {}
    relearn = r.relearn or {}
    return render(
        "report.html.j2",
        title=f"Unlearning report: {spec.plain_name if spec else method.upper()} on {r.model.get('name', '?')}",
        sections=SECTIONS, headings=dict(SECTIONS), data=r.data, created=r.created, source=r.source,
        summary=[v for v in (headline(fv, rv), fv, rv, residual, lv) if v is not None],
        forget=fv, retain=rv, residual=residual, relearn_v=lv,
        card_description=(r.data.card or {}).get("description"),
        model_rows=_model_rows(r),
        method_text=spec.description if spec else f"Method {method}.",
        stacked=", ".join(f"{i + 1}. {e.get('method')}" for i, e in enumerate(r.edits)) if len(r.edits) > 1 else "",
        edit_layers=", ".join(map(str, edit.get("layers") or [])) or "–",
        edit_steps=edit.get("steps") or "–",
        fit_time=f"{edit['fit_s']:.1f} s" if edit.get("fit_s") else "–",
        hparams=[(k, v, docs.get(k, "")) for k, v in sorted((edit.get("hparams") or {}).items())],
        metric_rows=_metric_rows(r.before, r.after),
        figs=_figures(r),
        analysis=a,
        selectivity={x.layer: x for x in a.importance.selectivity}.get(a.geometry_layer) if a is not None else None,
        probes_skipped="; ".join(n for n in a.notes if "probes skipped" in n) if a is not None else "",
        whitebox=[(WHITEBOX_LABELS.get(k, k), pct(float(v))) for k, v in (relearn.get("whitebox") or {}).items()],
        attack_settings=", ".join(f"{k}={v}" for k, v in (relearn.get("settings") or {}).items()),
        relearn_note=r.relearn_note,
        attacks_note=r.attacks_note,
        **_card_context(r.attacks),
        chats=[{"prompt": c["prompt"], "split": c.get("split", ""), "original": c["original"], "edited": c["edited"],
                "same": c["original"].strip() == c["edited"].strip()} for c in r.chats],
        settings=list(r.settings.items()),
        notes=[*r.notes, *(a.notes if a is not None else [])],
    )


def _attach_card(report: ReportData, run_dir: Path, plan) -> None:
    """The run folder's attacks.json, when it was measured on this edit (its content hash)."""
    from unlearnviz.attacks.card import ATTACKS_FILE, card_matches, read_card

    card = read_card(run_dir)
    if card is None:
        report.attacks_note = (f"no {ATTACKS_FILE} in {run_dir}: `python -m unlearnviz attack --edit {run_dir}` "
                               "writes one, and the report then shows it.")
    elif not card_matches(card, plan):
        report.attacks_note = (f"{run_dir / ATTACKS_FILE} was measured on another edit (not this folder's): ignored; "
                               f"rerun `python -m unlearnviz attack --edit {run_dir}`.")
    else:
        report.attacks = card
        report.notes.append(f"robustness card read from {run_dir / ATTACKS_FILE}")


def write_report(path: Path, report: ReportData) -> Path:
    """Render and write atomically; an unwritable target is one readable error."""
    from unlearnviz.io import atomic_write_text

    text = build_report(report)
    try:
        atomic_write_text(path, text)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def check_out_path(out: Path, what: str = "--out") -> None:
    """Refuse an output path that cannot be written, before any minute of work."""
    import os

    if out.is_dir():
        raise UserError(f"{what} {out} is a folder; give a file name such as {out / 'report.html'}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"{what} {out}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UserError(f"{what} {out}: the folder {parent} is not writable")


def write_run_report(run_dir: Path, out: Path, model: str | None = None, data: str | None = None,
                     settings: ReportSettings | None = None, relearn_json: Path | None = None,
                     load_options=None, log: Callable[[str], None] = lambda _m: None) -> Path:
    """The report of a ``run`` folder: metrics from metrics.json (or the manifest), a relearning
    curve and chats from the folder's relearn.json / chats.json (or ``relearn_json``) when it has
    them; the rest is computed from the model and data the run names (the edit must fit that
    model; the data must be the data it was fitted on)."""
    from unlearnviz.data import check_data, load_data
    from unlearnviz.data.synthetic import resolve_model_source
    from unlearnviz.model import LoadOptions, load_model
    from unlearnviz.runs import (
        CHATS_FILE,
        METRICS_FILE,
        RELEARN_FILE,
        load_stack,
        model_source_for,
        read_chats,
        read_config_mapping,
        read_json,
        read_run_folder,
        relearn_result,
        section_value,
    )

    settings = settings or ReportSettings()
    run_dir, out = Path(run_dir), Path(out)
    manifest, metrics = read_run_folder(run_dir)
    metrics = metrics or {}
    check_out_path(out)
    config = read_config_mapping(run_dir)
    meta = manifest.get("meta") if isinstance(manifest.get("meta"), dict) else {}
    saved_data = section_value(config.get("data"), "spec") or metrics.get("data") or meta.get("data")
    data_spec = data or saved_data
    if not data_spec:
        raise UserError(f"{run_dir} does not name its data; pass --data")

    def named(exc: UserError) -> UserError:
        return UserError(f"{exc} (the data {run_dir} names; pass --data to give it)" if not data else str(exc))

    try:
        check_data(str(data_spec))  # before the model loads; read after it (chunking uses its tokenizer)
    except UserError as exc:
        raise named(exc) from None
    index = manifest.get("stack_index")
    rel_path = Path(relearn_json) if relearn_json else run_dir / RELEARN_FILE
    if relearn_json and not rel_path.exists():
        raise UserError(f"--relearn {rel_path}: no such file")
    relearn = relearn_result(read_json(rel_path), index, rel_path) if rel_path.exists() else None
    chats = None
    saved = read_chats(run_dir)
    if saved is not None:
        chats = [{"split": f"from the run (temperature {c.get('temperature', 0)})", "prompt": str(c["prompt"]),
                  "original": str(c["original"]), "edited": str(c["edited"])}
                 for c in saved if isinstance(c, dict) and c.get("edit_index", index) == index
                 and all(k in c for k in ("prompt", "original", "edited"))] or None
    source = model or model_source_for(manifest, config)
    log(f"loading {source}")
    lm = load_model(resolve_model_source(source), load_options or LoadOptions())
    stack = load_stack(lm, run_dir)  # refuses an edit made for another model
    try:
        dataset = load_data(str(data_spec), tokenizer=lm.tokenizer)
    except UserError as exc:
        raise named(exc) from None
    if meta.get("data_hash") and dataset.content_hash() != meta["data_hash"]:
        raise UserError(f"the edit in {run_dir} was fitted on other data than {data_spec} (content hash "
                        f"{meta['data_hash']} vs {dataset.content_hash()}); pass the run's --data")
    plan = stack.plan()
    saved_metrics = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
    before = metrics.get("original") or metrics.get("before") or saved_metrics.get("before")
    after = metrics.get("after") or saved_metrics.get("after")
    if data and not meta.get("data_hash") and data != saved_data:
        before = after = None  # cannot tell whether the saved numbers are for this data: measure again
    edits = [edit_summary(e) for e in stack.edits]
    report = gather(lm, dataset, edits, plan, before, after, relearn, settings,
                    source=f"run folder {run_dir}", log=log, chats=chats)
    _attach_card(report, run_dir, plan)
    if relearn is not None:
        report.notes.append(f"relearning curve read from {rel_path}")
    if chats:
        report.notes.append(f"example answers read from {run_dir / CHATS_FILE}")
    if metrics and before is not None:
        report.notes.append(f"before/after metrics read from {run_dir / METRICS_FILE}")
    return write_report(out, report)
