"""A self-contained HTML report of one edit, for people who have never heard of RMU.

:func:`build_report` is pure (a :class:`ReportData` in, one HTML string out; figures from
:mod:`unlearnviz.plots`, plotly.js inlined once so the file opens offline). Two entry points
gather the data: :func:`write_run_report` from a ``python -m unlearnviz run`` folder (computing
with fast settings whatever the folder does not hold: analysis views, relearning curve, chat
pairs) and :func:`write_session_report` from a dashboard session. The page machinery
(:class:`FigureWriter`, :func:`html_document`) is shared with the ``analyze`` and ``sweep`` pages.

Every piece of text that comes from data, models or users is escaped: forget texts and chat
answers are untrusted.
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from unlearnviz.errors import UserError

if TYPE_CHECKING:
    from unlearnviz.analysis import Analysis
    from unlearnviz.data.schema import UnlearningData
    from unlearnviz.model.loading import LoadedModel
    from unlearnviz.model.routing import RoutingPlan
    from unlearnviz.session import Session

# ------------------------------------------------------------------------------------------
# Page machinery (shared with the analyze and sweep pages)
# ------------------------------------------------------------------------------------------

BASE_CSS = """
body { font-family: Arial, Helvetica, sans-serif; font-size: 17px; max-width: 1280px; margin: 1.5em auto;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.7em; } h2 { font-size: 1.3em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; } th, td { text-align: left; padding: .25em .8em .25em 0; vertical-align: top; }
.verdict { font-size: 1.15em; background: #f4f4f4; padding: .6em .9em; border-left: 5px solid #CC79A7; }
"""

REPORT_CSS = """
h3 { font-size: 1.1em; margin-bottom: .3em; }
.plain { color: #333; max-width: 60em; }
.verdict.good { border-left-color: #009E73; } .verdict.bad { border-left-color: #D55E00; }
.verdict.unknown { border-left-color: #7F7F7F; }
table.grid td, table.grid th { border-bottom: 1px solid #e4e4e4; padding: .3em .9em .3em .3em; }
table.grid td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0 2em 0; } figcaption { color: #333; max-width: 60em; margin-top: .3em; }
.chat td { max-width: 30em; white-space: pre-wrap; } .tag { font-size: .85em; color: #555; }
nav ol { columns: 2; } .muted { color: #666; font-size: .9em; }
"""


class FigureWriter:
    """Plotly figures as HTML divs; plotly.js is inlined with the first figure only, so a page
    of many figures carries the 4.8 MB library once and still opens with no network."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, fig) -> str:
        div = fig.to_html(full_html=False, include_plotlyjs=self.count == 0,
                          config={"displaylogo": False, "responsive": True})
        self.count += 1
        return div


def html_document(title: str, body: str, css: str = "") -> str:
    """The page shell: escaped title, the shared style sheet, the body as given (already safe)."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{BASE_CSS}{css}</style></head><body>
{body}
</body></html>
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


# ------------------------------------------------------------------------------------------
# Metrics: labels, formatting, verdicts (also used by the Evaluate tab)
# ------------------------------------------------------------------------------------------

# (key, label, plain meaning, which direction an edit wants)
METRICS = [
    ("forget_cloze_acc", "forget cloze acc", "share of forget questions answered right (should fall)", "down"),
    ("forget_floor_acc", "forget floor acc", "the same options with the subject removed: what guessing from the "
                                             "answers alone scores", None),
    ("forget_b_cloze_acc", "forget half-B cloze acc", "forget questions held out for the relearning attack", "down"),
    ("retain_cloze_acc", "retain cloze acc", "share of retain questions answered right (should stay)", "up"),
    ("retain_floor_acc", "retain floor acc", "guessing from the retain answers alone", None),
    ("forget_gold_logprob", "forget gold log-prob", "how likely the model finds the right forget answers "
                                                    "(log scale; should fall)", "down"),
    ("retain_gold_logprob", "retain gold log-prob", "how likely it finds the right retain answers (should stay)",
     "up"),
    ("retain_ppl", "retain perplexity", "surprise on held-out retain text (lower is more fluent; should stay)",
     "same"),
    ("forget_mcq_acc", "lettered (lm-eval) forget acc", "A–D lettered format (near chance for small models)", "down"),
    ("retain_mcq_acc", "lettered (lm-eval) retain acc", "A–D lettered format", "up"),
]
FORGET_MARGIN = 0.10  # forgotten = within 10 points of the floor (the project's bar, docs/methods_results.md)
RETAIN_DROP = 0.03  # retain kept = at most 3 points lost
PPL_RISE = 0.10  # fluency kept = perplexity up by at most 10%


def metric_rows(before: dict, after: dict) -> list[list]:
    """[label, before, after, change] for every metric either side has (the Evaluate tab's table)."""
    rows = []
    for key, label, _, _ in METRICS:
        if key in before or key in after:
            b, a = before.get(key), after.get(key)
            rows.append([label, round4(b), round4(a), round4(None if a is None or b is None else a - b)])
    return rows


def round4(v):
    """Numbers for tables: 4 decimals, None kept."""
    return None if v is None else round(float(v), 4)


def fmt_metric(key: str, v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    v = float(v)
    if key.endswith("_acc") or key == "chance":
        return f"{v:.1%}"
    return f"{v:.2f}" if abs(v) < 1000 else f"{v:.0f}"


def _pct(v: float) -> str:
    return f"{v:.0%}" if abs(v * 100 - round(v * 100)) < 0.05 else f"{v:.1%}"


@dataclass
class Verdict:
    """One plain sentence and whether it is good news (None: cannot tell)."""

    ok: bool | None
    text: str

    @property
    def css(self) -> str:
        return {True: "good", False: "bad", None: "unknown"}[self.ok]


def forget_verdict(before: dict, after: dict) -> Verdict:
    """Forgetting means falling to the floor (what the options alone score), not to zero."""
    b, a = before.get("forget_cloze_acc"), after.get("forget_cloze_acc")
    if b is None or a is None:
        return Verdict(None, "No forget accuracy was measured, so this report cannot say whether the edit forgot.")
    level = max(before.get("chance", 0.0), before.get("forget_floor_acc", 0.0))
    if b <= level + FORGET_MARGIN:
        return Verdict(None, f"The original model barely knew the forget facts ({_pct(b)} right, while guessing "
                             f"from the answer options alone scores {_pct(level)}), so there was little to forget "
                             f"and this report cannot show forgetting.")
    if a <= level + FORGET_MARGIN:
        return Verdict(True, f"The edit forgot: forget accuracy fell from {_pct(b)} to {_pct(a)}, within "
                             f"{FORGET_MARGIN * 100:.0f} points of the {_pct(level)} that guessing from the answer options "
                             f"alone scores.")
    return Verdict(False, f"The edit did not forget: forget accuracy is {_pct(a)} after the edit ({_pct(b)} before). "
                          f"Forgetting means falling to about {_pct(level)} (what guessing from the answer options "
                          f"alone scores); it is still {(a - level) * 100:.0f} points above that.")


def retain_verdict(before: dict, after: dict) -> Verdict:
    b, a = before.get("retain_cloze_acc"), after.get("retain_cloze_acc")
    if b is None or a is None:
        return Verdict(None, "No retain accuracy was measured.")
    text = ""
    ok = b - a <= RETAIN_DROP + 1e-9
    if ok:
        text = f"Retain knowledge was kept: retain accuracy {_pct(b)} before, {_pct(a)} after."
    else:
        text = (f"The edit damaged knowledge it should have kept: retain accuracy fell from {_pct(b)} to {_pct(a)} "
                f"({(b - a) * 100:.0f} points; the bar is {RETAIN_DROP * 100:.0f}).")
    pb, pa = before.get("retain_ppl"), after.get("retain_ppl")
    if pb and pa:
        rise = pa / pb - 1
        text += f" Perplexity on held-out retain text went from {pb:.1f} to {pa:.1f} ({rise:+.1%})"
        if rise > PPL_RISE:
            ok = False
            text += f", more than the {PPL_RISE:.0%} the bar allows: the model got less fluent."
        else:
            text += "."
    return Verdict(ok, text)


def headline(forget: Verdict, retain: Verdict) -> Verdict:
    """The report in one line: did it forget, and at what cost to what it should keep."""
    damaged = retain.ok is False
    if forget.ok is None:
        text = "Forgetting could not be shown" + (", and the edit damaged knowledge it should have kept." if damaged
                                                  else ".")
        return Verdict(False if damaged else None, "In one line: " + text)
    if forget.ok:
        text = ("The edit forgot the forget facts, but it also damaged knowledge it should have kept." if damaged else
                "The edit forgot the forget facts and kept the rest.")
    else:
        text = "The edit did not forget" + (", and it damaged knowledge it should have kept." if damaged else ".")
    return Verdict(forget.ok and not damaged, "In one line: " + text)


def residual_verdict(probe_verdict: str) -> Verdict:
    """The probes' own sentence, marked good only where it says the answers are erased."""
    ok = False if probe_verdict.startswith(("hidden", "not forgotten")) else \
        True if probe_verdict.startswith("erased") else None
    return Verdict(ok, f"Inside the model: {probe_verdict}.")


def relearn_verdict(relearn: dict | None, forgot: bool | None) -> Verdict | None:
    """Did fine-tuning on half the forget facts bring the other half back?"""
    from unlearnviz.evaluation.relearn import steps_to_recovery

    if not relearn or not relearn.get("edited"):
        return None
    edited, original = relearn["edited"], relearn.get("original") or []
    start, end = edited[0]["acc"], edited[-1]["acc"]
    ref = original[0]["acc"] if original else None
    n = edited[-1]["step"]
    if ref is None or ref - start <= FORGET_MARGIN or forgot is False:
        return Verdict(None, f"Relearning attack: half-B forget accuracy went from {_pct(start)} to {_pct(end)} in "
                             f"{n} fine-tuning steps; the edit had not removed enough on half B for the attack to "
                             f"say more.")
    step = steps_to_recovery(edited, ref, start)
    if step is None:
        return Verdict(True, f"The forgotten facts did not come back within {n} fine-tuning steps on the other half "
                             f"of the forget set: half-B accuracy {_pct(start)} → {_pct(end)} (original model "
                             f"{_pct(ref)}). This is a short attack: more steps or a larger learning rate may still "
                             f"bring them back.")
    return Verdict(False, f"The knowledge came back: after {step} fine-tuning steps on the other half of the forget "
                          f"set the edited model regained half of what it had lost (half-B accuracy {_pct(start)} → "
                          f"{_pct(end)} after {n} steps; original {_pct(ref)}). It was suppressed, not removed.")


# ------------------------------------------------------------------------------------------
# The report's data and its rendering
# ------------------------------------------------------------------------------------------

METHOD_PLAIN = {
    "rmu": "RMU (Representation Misdirection for Unlearning) trains a small change to a few layers so that, on "
           "forget text, the model's internal state at one layer is pushed towards a fixed random direction (which "
           "scrambles what later layers read), while on retain text the internal state is kept as it was.",
    "srmu": "SRMU (Feature-Selective Representation Misdirection) works like RMU but first measures which internal "
            "features respond much more to forget text than to retain text, and aims its push at those features, "
            "to spare what the retain data needs.",
    "mrp": "MRP (Metamorphosis Representation Projection) learns a small set of directions in the model's internal "
           "state that carry the forget knowledge and projects them out, at a few layers.",
}

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
    ("chats", "Example answers, side by side"),
    ("about", "How this report was made"),
]


@dataclass
class ReportData:
    """Everything a report shows. Built by the two entry points; rendered by :func:`build_report`."""

    model: dict  # LoadedModel.info()
    data: UnlearningData
    edits: list[dict]  # the stack up to the reported edit, oldest first: {method, hparams, layers, steps, fit_s}
    before: dict
    after: dict
    analysis: Analysis | None = None
    relearn: dict | None = None  # {"edited": curve, "original": curve, "whitebox": {...}, "settings": {...}}
    relearn_note: str = ""  # why there is no relearning curve
    chats: list[dict] = field(default_factory=list)  # {"split", "prompt", "original", "edited"}
    source: str = ""  # "run folder …" or "dashboard session"
    settings: dict = field(default_factory=dict)  # how the missing parts were computed
    notes: list[str] = field(default_factory=list)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))


def _table(rows: Sequence[Sequence[str]], head: Sequence[str] | None = None, cls: str = "grid") -> str:
    """Rows of already-escaped cell HTML."""
    h = "<tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>" if head else ""
    body = "".join("<tr>" + "".join(c if c.startswith("<t") else f"<td>{c}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f'<table class="{cls}">{h}{body}</table>'


def _figure(figs: FigureWriter, fig, caption: str) -> str:
    return f"<figure>{figs(fig)}<figcaption>{esc(caption)}</figcaption></figure>"


def _section(anchor: str, heading: str, *parts: str) -> str:
    return f'<section id="{anchor}"><h2>{esc(heading)}</h2>{"".join(parts)}</section>'


def _p(text: str, cls: str = "plain") -> str:
    return f'<p class="{cls}">{esc(text)}</p>'


def _verdict(v: Verdict) -> str:
    return f'<p class="verdict {v.css}">{esc(v.text)}</p>'


def _metric_table(before: dict, after: dict) -> str:
    rows = []
    for key, label, meaning, _ in METRICS:
        if key not in before and key not in after:
            continue
        b, a = before.get(key), after.get(key)
        change = "–" if a is None or b is None else (
            f"{(a - b) * 100:+.1f} pts" if key.endswith("_acc") else f"{a - b:+.2f}")
        cells = [esc(label), esc(meaning)]
        for v in (b, a):
            cells.append(f'<td class="num" data-value="{esc(repr(float(v)) if v is not None else "")}">'
                         f"{esc(fmt_metric(key, v))}</td>")
        cells.append(f'<td class="num">{esc(change)}</td>')
        rows.append(f'<tr data-key="{esc(key)}">' + "".join(c if c.startswith("<t") else f"<td>{c}</td>"
                                                            for c in cells) + "</tr>")
    head = "<tr><th>metric</th><th>what it means</th><th>original</th><th>edited</th><th>change</th></tr>"
    return f'<table class="grid" id="metrics-table">{head}{"".join(rows)}</table>'


def _examples(items, n: int = 3) -> str:
    lis = "".join(f"<li>{esc(it.question)} <b>{esc(it.gold)}</b></li>" for it in items[:n])
    return f"<ul>{lis}</ul>" if lis else "<p class='muted'>(no questions)</p>"


def build_report(r: ReportData) -> str:
    """The report as one HTML string (pure: no model, no files)."""
    from unlearnviz import plots
    from unlearnviz.methods.base import REGISTRY, describe_hparams, get_method

    figs = FigureWriter()
    edit = r.edits[-1] if r.edits else {"method": "none", "hparams": {}}
    method = str(edit.get("method", "none"))
    fv, rv = forget_verdict(r.before, r.after), retain_verdict(r.before, r.after)
    lv = relearn_verdict(r.relearn, fv.ok)
    pr = r.analysis.probes if r.analysis is not None else None
    title = f"Unlearning report: {method.upper()} on {r.model.get('name', '?')}"
    out: list[str] = [f"<h1>{esc(title)}</h1>",
                      _p(f"Data: {r.data.name}. Made {r.created} from {r.source}.", "muted")]
    out.append("<nav><ol>" + "".join(f'<li><a href="#{a}">{esc(h)}</a></li>' for a, h in SECTIONS) + "</ol></nav>")

    # Summary
    summary = [_verdict(headline(fv, rv)), _verdict(fv), _verdict(rv)]
    if pr is not None:
        summary.append(_verdict(residual_verdict(pr.verdict)))
    if lv is not None:
        summary.append(_verdict(lv))
    out.append(_section("summary", "Summary", *summary))

    # What was unlearned and why
    card = r.data.card or {}
    what = [_p("Unlearning removes specific knowledge from a trained language model (for example private, "
               "hazardous or outdated facts) without training it again from scratch. It is judged on two sets of "
               "questions: the forget set, which the edited model should no longer answer, and the retain set, "
               "which it should still answer as before.")]
    if card.get("description"):
        what.append(_p(f"About this data: {card['description']}"))
    what += ["<h3>Forget set: examples the model should no longer answer (right answer in bold)</h3>",
             _examples(r.data.forget_mcq),
             "<h3>Retain set: examples it should keep answering</h3>", _examples(r.data.retain_mcq)]
    out.append(_section("what", "What was unlearned and why", *what))

    # Model and data
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
    out.append(_section("model-data", "Model and data", _table([(esc(k), esc(v)) for k, v in rows if v is not None]),
                        _p("The base weights are never changed: the edit is applied on the fly, and the fingerprint "
                           "(a hash of every weight) is the same before and after.")))

    # Method and settings
    docs = {}
    if method in REGISTRY or method in ("rmu", "srmu", "mrp"):
        try:
            docs = {d["name"]: d.get("doc", "") for d in describe_hparams(get_method(method).hparams_cls)}
        except UserError:
            docs = {}
    hp_rows = [(esc(k), esc(v), esc(docs.get(k, ""))) for k, v in sorted((edit.get("hparams") or {}).items())]
    meth = [_p(METHOD_PLAIN.get(method, f"Method {method}.")),
            _table([(esc("edited layers"), esc(", ".join(map(str, edit.get("layers") or [])) or "–")),
                    (esc("training steps"), esc(edit.get("steps") or "–")),
                    (esc("fit time"), esc(f"{edit['fit_s']:.1f} s" if edit.get("fit_s") else "–"))]),
            "<h3>Settings</h3>", _table(hp_rows, ["setting", "value", "meaning"])]
    if len(r.edits) > 1:
        meth.insert(1, _p("This edit is stacked on earlier edits (continual unlearning), applied in this order: "
                          + ", ".join(f"{i + 1}. {e.get('method')}" for i, e in enumerate(r.edits))
                          + ". The numbers below compare the original model with all of them applied."))
    out.append(_section("method", "Method and settings", *meth))

    # Metrics
    met = [_p("Each question has several answer options; the model's pick is the option it finds most likely. "
              "Numbers for the original model and for the edited model, on the same questions."),
           _metric_table(r.before, r.after), _verdict(fv), _verdict(rv)]
    if r.before and r.after:
        met.append(_figure(figs, plots.before_after_bars(r.before, r.after),
                           "Each bar is the share of questions answered right, before (solid) and after (hatched) "
                           "the edit; after a good edit the forget bar drops to the floor line (what guessing from "
                           "the answer options alone scores) and the retain bar stays where it was."))
    out.append(_section("metrics", "Before and after: accuracy and fluency", *met))

    # Analysis sections
    a = r.analysis
    if a is not None:
        sel = {x.layer: x for x in a.importance.selectivity}.get(a.geometry_layer)
        imp = [_figure(figs, plots.importance_heatmap(a.importance, a.footprint),
                       "Each row is a layer of the model and each column one internal feature; bright cells are "
                       "features that respond much more to forget text than to retain text, that is, where the "
                       "forget knowledge seems to live. Crosses mark the features the edit moved most.")]
        if sel is not None:
            imp.insert(0, _p(f"At layer {sel.layer}: {sel.verdict}."))
        out.append(_section("importance", "Where the forget knowledge lives", *imp))
        geo = []
        if a.geometry_layer in a.pca:
            geo.append(_figure(figs, plots.geometry_scatter(a.pca[a.geometry_layer]),
                               f"Each dot is one text, placed by the model's internal state at layer "
                               f"{a.geometry_layer} (the deepest edited layer): circles for the original model, "
                               f"crosses for the edited one, in the same coordinates. If the edit acts on forget "
                               f"text only, the orange-red forget crosses move away from their circles while the blue "
                               f"retain crosses stay on theirs."))
        geo.append(_figure(figs, plots.layer_metric_lines(a.metrics, edit_layers=a.edit.get("layers") or None),
                           "Layer by layer, how easily forget and retain texts can be told apart inside the model, "
                           "before (solid) and after (dashed) the edit; CKA near 1 means the edit left that layer's "
                           "internal states as they were."))
        out.append(_section("geometry", "Hidden-state geometry before and after", *geo))
        res = []
        if pr is not None:
            res += [_verdict(residual_verdict(pr.verdict)),
                    _figure(figs, plots.probe_accuracy_lines(pr),
                            "A model can stop saying an answer while the answer is still written in its internal "
                            "state. For each layer, this shows how often a simple readout still picks the right "
                            "forget answer from that state (dashed: edited model); lines well above the orange floor "
                            "after the edit mean the knowledge is hidden, not erased.")]
        else:
            res.append(_p("The residual-knowledge probes were skipped: " + "; ".join(
                n for n in a.notes if "probes skipped" in n) or "not computed."))
        if a.lens is not None:
            res.append(_figure(figs, plots.logit_lens_heatmap(a.lens),
                               "For one forget question, how likely each layer already makes the right answer when "
                               "read directly as the model's output (darker: more likely); a dark edited row in the "
                               "middle layers means the answer is still there inside the model."))
        out.append(_section("residual", "Residual knowledge: erased or hidden?", *res))
    else:
        for anchor, heading in SECTIONS[5:8]:
            out.append(_section(anchor, heading, _p("Not computed for this report.")))

    # Relearning
    rel = [_p("An attacker who gets the edited model fine-tunes it briefly on half of the forgotten facts (half A), "
              "and we watch whether it starts answering questions about the other half (half B) again. Knowledge "
              "that comes back was only suppressed.")]
    if r.relearn and r.relearn.get("edited"):
        if lv is not None:
            rel.append(_verdict(lv))
        chance = r.before.get("chance")
        rel.append(_figure(figs, plots.relearning_curve(r.relearn["edited"], r.relearn.get("original"), chance=chance,
                                                        floor=r.before.get("forget_floor_acc")),
                           "Half-B forget accuracy while fine-tuning on half A: the edited model (dashed) and, for "
                           "comparison, the original model under the same attack (solid). A dashed line climbing "
                           "back towards the solid one means the forgotten knowledge returns."))
        wb = r.relearn.get("whitebox") or {}
        labels = {"edited": "edited model, no attack", "original": "original model",
                  "projection_removed": "edit's projection removed", "shift_direction_ablated":
                  "the edit's main direction of change removed"}
        if wb:
            rel += ["<h3>White-box attacks (half-B forget accuracy)</h3>",
                    _p("Attacks by someone who can see inside the edited model: undo its most visible parts and "
                       "check whether the answers return."),
                    _table([(esc(labels.get(k, k)), f'<td class="num">{esc(_pct(float(v)))}</td>')
                            for k, v in wb.items()], ["attack", "half-B accuracy"])]
        settings = r.relearn.get("settings") or {}
        if settings:
            rel.append(_p("Attack settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()), "muted"))
    else:
        rel.append(_p(f"Not run: {r.relearn_note or 'no relearning attack was run for this edit.'}"))
    out.append(_section("relearning", "Relearning attack", *rel))

    # Chats
    chat = [_p("The same questions put to both models. Answers are greedy (always the most likely next word), so "
               "they are reproducible; the original model is on the left.")]
    if r.chats:
        rows = []
        for c in r.chats:
            same = c["original"].strip() == c["edited"].strip()
            rows.append((f'{esc(c["prompt"])}<br><span class="tag">{esc(c.get("split", ""))}'
                         f'{" · same answer" if same else ""}</span>', esc(c["original"]), esc(c["edited"])))
        chat.append(_table(rows, ["question", "original model", "edited model"], cls="grid chat"))
    else:
        chat.append(_p("No example answers were generated for this report."))
    out.append(_section("chats", "Example answers, side by side", *chat))

    # About
    about = [_p(f"Source: {r.source}. Created {r.created}.")]
    if r.settings:
        about.append(_table([(esc(k), esc(v)) for k, v in r.settings.items()]))
    if r.notes or (a is not None and a.notes):
        about.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in [*r.notes, *(a.notes if a else [])]) + "</ul>")
    about.append(_p("Cloze accuracy scores each answer option by how likely the model finds it after the question "
                    "(normalised by length, as lm-evaluation-harness's acc_norm); the floor scores the same options "
                    "with the subject of the question removed.", "muted"))
    out.append(_section("about", "How this report was made", *about))
    return html_document(title, "\n".join(out), REPORT_CSS)


# ------------------------------------------------------------------------------------------
# Gathering the data
# ------------------------------------------------------------------------------------------

@dataclass
class ReportSettings:
    """How the parts a run folder or session does not hold are computed (fast by default)."""

    max_texts: int = 60  # texts per split for the activation views
    max_items: int = 32  # MCQ items per split for the probes
    relearn_steps: int = 20  # 0 = skip the relearning attack
    chat_prompts: int = 2  # forget and retain questions each
    chat_tokens: int = 32

    def __post_init__(self) -> None:
        for name in ("max_texts", "max_items", "chat_tokens"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"{name.replace('_', '-')} must be at least 1")
        for name in ("relearn_steps", "chat_prompts"):
            if int(getattr(self, name)) < 0:
                raise UserError(f"{name.replace('_', '-')} must be 0 or more")


def chat_pairs(lm: LoadedModel, data: UnlearningData, plan: RoutingPlan | None, k: int,
               max_new_tokens: int = 32) -> list[dict]:
    """Greedy side-by-side answers to the first ``k`` forget and ``k`` retain questions."""
    from unlearnviz.generation import GenSettings, question_prompt, side_by_side

    settings = GenSettings(max_new_tokens=max_new_tokens, temperature=0.0, cross_probs=False)
    out = []
    for split, items in (("forget", data.forget_mcq[:k]), ("retain", data.retain_mcq[:k])):
        for it in items:
            prompt = question_prompt(it, lm.is_chat)
            try:
                state = side_by_side(lm, prompt, plan, settings)
            except UserError:
                continue  # a question too long for this model's context: skip it, not the report
            original, edited = state.texts(lm.tokenizer)
            out.append({"split": f"{split} question (right answer: {it.gold})", "prompt": prompt,
                        "original": original, "edited": edited})
    return out


def edit_summary(edit, plan: RoutingPlan | None = None) -> dict:
    meta = edit.meta if isinstance(edit.meta, dict) else {}
    fit_s = meta.get("fit_s") or sum(float(meta.get(k, 0) or 0) for k in ("train_s", "precompute_s", "init_s"))
    return {"method": edit.method, "hparams": dict(edit.hparams), "steps": meta.get("steps"),
            "layers": edit.plan().edited_layers(), "fit_s": float(fit_s) if fit_s else None}


def gather(lm: LoadedModel, data: UnlearningData, edits: list, plan: RoutingPlan, before: dict | None,
           after: dict | None, relearn: dict | None, settings: ReportSettings, source: str,
           log: Callable[[str], None] = lambda _m: None, chats: list[dict] | None = None) -> ReportData:
    """Compute what is missing (metrics, analysis, relearning, chats) and assemble the ReportData."""
    from unlearnviz.analysis import run_analysis
    from unlearnviz.evaluation.mcq import evaluate

    fp = lm.fingerprint(refresh=False)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    if not before or not after:
        log("scoring the original and the edited model")
        before = before or evaluate(lm, data, letter=False)
        after = after or evaluate(lm, data, plan=plan, letter=False)
        timings["metrics"] = time.perf_counter() - t
    t = time.perf_counter()
    log("analysis views (importance, geometry, residual knowledge)")
    analysis = run_analysis(lm, data, plan, max_texts=settings.max_texts, max_items=settings.max_items,
                            use_umap=False, train_probe=False, log=log)
    timings["analysis"] = time.perf_counter() - t
    note = ""
    if relearn is None and settings.relearn_steps > 0:
        from unlearnviz.evaluation.relearn import RelearnSettings, relearn_record

        t = time.perf_counter()
        log(f"relearning attack ({settings.relearn_steps} steps, edited and original)")
        rs = RelearnSettings(steps=settings.relearn_steps, eval_every=max(1, settings.relearn_steps // 4))
        try:
            relearn = relearn_record(lm, data, plan, rs)
        except UserError as exc:
            note = str(exc)
        timings["relearn"] = time.perf_counter() - t
    elif relearn is None:
        note = "skipped (relearning steps set to 0); rerun with --relearn-steps N to add it."
    if chats is None:
        t = time.perf_counter()
        log("example answers")
        chats = chat_pairs(lm, data, plan, settings.chat_prompts, settings.chat_tokens) if settings.chat_prompts else []
        timings["chats"] = time.perf_counter() - t
    if lm.fingerprint() != fp:
        raise AssertionError("base weights changed while building the report")
    info = lm.info()
    return ReportData(model=info, data=data, edits=edits, before=before, after=after, analysis=analysis,
                      relearn=relearn, relearn_note=note, chats=chats, source=source,
                      settings={"texts per split (activation views)": settings.max_texts,
                                "questions per split (probes)": settings.max_items,
                                "residual-knowledge readout": "the untrained lens readout only (the trained ridge "
                                                              "probes are off, for speed)",
                                "chat": f"greedy, up to {settings.chat_tokens} new tokens",
                                **{f"time: {k}": f"{v:.0f} s" for k, v in timings.items()}})


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


# ------------------------------------------------------------------------------------------
# Entry points
# ------------------------------------------------------------------------------------------

def _read_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        raise UserError(f"{path}: not valid JSON (damaged file)") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a JSON object")
    return obj


def read_run_folder(run_dir: Path) -> tuple[dict, dict | None]:
    """The manifest and metrics of a ``run`` folder, with one-line errors for anything else."""
    from unlearnviz.methods.edit import EDIT_FILE, MANIFEST_FILE

    if not run_dir.exists():
        raise UserError(f"--run {run_dir}: no such folder")
    if not run_dir.is_dir():
        raise UserError(f"--run {run_dir} is a file, not a run folder")
    if not (run_dir / MANIFEST_FILE).exists() or not (run_dir / EDIT_FILE).exists():
        raise UserError(f"{run_dir} is not a run folder (it needs {MANIFEST_FILE} and {EDIT_FILE}, as written by "
                        f"`python -m unlearnviz run`)")
    return _read_json(run_dir / MANIFEST_FILE), _read_json(run_dir / "metrics.json")


def _run_config(run_dir: Path) -> dict:
    """The run's config.yaml as a plain mapping (newer run folders carry one), else {}."""
    import yaml

    path = run_dir / "config.yaml"
    if not path.exists():
        return {}
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raise UserError(f"{path}: not valid YAML (damaged file)") from None
    return raw if isinstance(raw, dict) else {}


def _spec(section, key: str) -> str | None:
    """``model: default`` (flat) or ``model: {source: default}`` (sections)."""
    if isinstance(section, str):
        return section
    return section.get(key) if isinstance(section, dict) and isinstance(section.get(key), str) else None


def model_source_for(manifest: dict, config: dict | None = None) -> str:
    """The source to load a run's model from: its config's, the default model, or a cached model
    folder of that name (the synthetic lab model); otherwise the user must say."""
    from unlearnviz.model.loading import DEFAULT_ALIASES, cache_dir

    source = _spec((config or {}).get("model"), "source") or (manifest.get("model") or {}).get("source")
    if source:
        return str(source)
    name = str((manifest.get("model") or {}).get("name") or "")
    if name in DEFAULT_ALIASES:
        return "default"
    cached = cache_dir() / "models" / name
    if name and "/" not in name and (cached / "config.json").exists():
        return str(cached)
    raise UserError(f"the run was made with model {name!r}; pass --model with its folder or hub id")


def _relearn_of(obj: dict, index: int | None, path: Path) -> dict:
    """A relearning result: `relearn --json`'s object, or a run's {stack index: result}."""
    if "edited" not in obj and obj:
        keyed = {int(k): v for k, v in obj.items() if str(k).isdigit() and isinstance(v, dict)}
        obj = keyed.get(index) if index in keyed else {}
    if not isinstance(obj.get("edited"), list) or not obj["edited"]:
        raise UserError(f"{path}: not a relearning result for this edit (from `python -m unlearnviz relearn --json`)")
    return obj


def write_run_report(run_dir: Path, out: Path, model: str | None = None, data: str | None = None,
                     settings: ReportSettings | None = None, relearn_json: Path | None = None,
                     load_options=None, log: Callable[[str], None] = lambda _m: None) -> Path:
    """The report of a ``run`` folder: metrics from metrics.json (or the manifest), a relearning
    curve and chats from the folder's relearn.json / chats.json (or ``relearn_json``) when it has
    them; the rest is computed from the model and data the run names (the edit must fit that
    model; the data must be the data it was fitted on)."""
    from unlearnviz.cli_edit import _load_stack
    from unlearnviz.data import load_data
    from unlearnviz.data.synthetic import resolve_model_source
    from unlearnviz.model import LoadOptions, load_model

    settings = settings or ReportSettings()
    run_dir, out = Path(run_dir), Path(out)
    manifest, metrics = read_run_folder(run_dir)
    metrics = metrics or {}
    check_out_path(out)
    config = _run_config(run_dir)
    meta = manifest.get("meta") if isinstance(manifest.get("meta"), dict) else {}
    saved_data = _spec(config.get("data"), "spec") or metrics.get("data") or meta.get("data")
    data_spec = data or saved_data
    if not data_spec:
        raise UserError(f"{run_dir} does not name its data; pass --data")
    try:
        dataset = load_data(str(data_spec))
    except UserError as exc:
        raise UserError(f"{exc} (the data {run_dir} names; pass --data to give it)" if not data else str(exc)) from None
    if meta.get("data_hash") and dataset.content_hash() != meta["data_hash"]:
        raise UserError(f"the edit in {run_dir} was fitted on other data than {data_spec} (content hash "
                        f"{meta['data_hash']} vs {dataset.content_hash()}); pass the run's --data")
    index = manifest.get("stack_index")
    rel_path = Path(relearn_json) if relearn_json else run_dir / "relearn.json"
    if relearn_json and not rel_path.exists():
        raise UserError(f"--relearn {rel_path}: no such file")
    relearn = _relearn_of(_read_json(rel_path), index, rel_path) if rel_path.exists() else None
    chats = None
    if (run_dir / "chats.json").exists():
        try:
            saved = json.loads((run_dir / "chats.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            raise UserError(f"{run_dir / 'chats.json'}: not valid JSON (damaged file)") from None
        chats = [{"split": f"from the run (temperature {c.get('temperature', 0)})", "prompt": str(c["prompt"]),
                  "original": str(c["original"]), "edited": str(c["edited"])}
                 for c in saved if isinstance(c, dict) and c.get("edit_index", index) == index
                 and all(k in c for k in ("prompt", "original", "edited"))] or None
    source = model or model_source_for(manifest, config)
    log(f"loading {source}")
    lm = load_model(resolve_model_source(source), load_options or LoadOptions())
    stack = _load_stack(lm, run_dir)  # refuses an edit made for another model
    plan = stack.plan()
    saved_metrics = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
    before = metrics.get("original") or metrics.get("before") or saved_metrics.get("before")
    after = metrics.get("after") or saved_metrics.get("after")
    if data and not meta.get("data_hash") and data != saved_data:
        before = after = None  # cannot tell whether the saved numbers are for this data: measure again
    edits = [edit_summary(e) for e in stack.edits]
    report = gather(lm, dataset, edits, plan, before, after, relearn, settings,
                    source=f"run folder {run_dir}", log=log, chats=chats)
    if relearn is not None:
        report.notes.append(f"relearning curve read from {rel_path}")
    if chats:
        report.notes.append(f"example answers read from {run_dir / 'chats.json'}")
    if metrics and before is not None:
        report.notes.append(f"before/after metrics read from {run_dir / 'metrics.json'}")
    return write_report(out, report)


def write_session_report(session: Session, path: Path) -> Path:
    """The report of a dashboard session's selected edit: its metrics and relearning results
    when the session has them; analysis views and example answers computed now (fast settings).
    Stops between batches when the session's cancel flag is set (if it has one)."""
    from unlearnviz.analysis.activations import stoppable

    lm, data = session.require_model(), session.require_data()
    edit = session.current_edit()
    if edit is None:
        raise UserError("there is no edit yet (Unlearn tab): a report compares the edited model with the original")
    path = Path(path)
    check_out_path(path, "report file")
    should_stop = getattr(session, "should_stop", None)
    with stoppable(should_stop):
        result = session.evaluate(should_stop=should_stop)
        idx = session.current_index
        relearn = session.relearn.get(idx)
        edits = [edit_summary(e) for e in session.stack.edits[: idx + 1]]
        report = gather(lm, data, edits, session.plan(), result["before"], result.get("after"), relearn,
                        ReportSettings(relearn_steps=0), source="a dashboard session")
    if relearn is None:
        report.relearn_note = "not run in this session (Evaluate tab → Run relearning attack, then export again)."
    own = [c for c in session.chats if c.get("edit") == edit.label()][-5:]
    report.chats += [{"split": "asked in this session", "prompt": c["prompt"], "original": c["original"],
                      "edited": c["edited"]} for c in own]
    return write_report(path, report)
