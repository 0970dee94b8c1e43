"""What the before/after numbers mean: metric labels and formatting, and the plain-words verdicts.

One home for the project's bar (forgotten = within 10 points of the floor, retain kept = at most
3 points lost, fluency kept = perplexity up by at most 10%), so the report, the CLI and the
dashboard judge an edit the same way (docs/methods_results.md measures the methods against it).
Forgetting is measured against the floor (what the answer options alone score), not against
zero: a model that knows nothing of the forget facts still scores the floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# (key, label, plain meaning, which direction an edit wants)
METRICS = [
    ("forget_cloze_acc", "forget cloze acc", "share of forget questions answered right (should fall)", "down"),
    ("forget_floor_acc", "forget floor acc", "the same options with the subject removed: what guessing from the "
                                             "answers alone scores", None),
    ("forget_b_cloze_acc", "forget half-B cloze acc", "forget questions held out for the relearning attack", "down"),
    ("retain_cloze_acc", "retain cloze acc", "share of retain questions answered right (should stay)", "up"),
    ("retain_floor_acc", "retain floor acc", "guessing from the retain answers alone", None),
    ("forget_probe_cloze_acc", "forget probe (other phrasings) acc", "the same forget facts asked in held-out "
     "phrasings with other distractors (should fall too: if only the main questions fall, the edit forgot a "
     "phrasing, not the fact)", "down"),
    ("forget_probe_floor_acc", "forget probe floor acc", "the probes' options with the subject removed", None),
    ("retain_probe_cloze_acc", "retain probe (other phrasings) acc", "the retain facts in held-out phrasings "
     "(should stay)", "up"),
    ("forget_gold_logprob", "forget gold log-prob", "how likely the model finds the right forget answers "
                                                    "(log scale; should fall)", "down"),
    ("retain_gold_logprob", "retain gold log-prob", "how likely it finds the right retain answers (should stay)",
     "up"),
    ("retain_ppl", "retain perplexity", "surprise on held-out retain text (lower is more fluent; should stay)",
     "same"),
    ("forget_mcq_acc", "lettered (lm-eval) forget acc", "A–D lettered format (near chance for small models)", "down"),
    ("retain_mcq_acc", "lettered (lm-eval) retain acc", "A–D lettered format", "up"),
]
FORGET_MARGIN = 0.10  # forgotten = within 10 points of the floor
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
    """Accuracies as percentages, the rest with two decimals; a dash where nothing was measured."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    v = float(v)
    if key.endswith("_acc") or key == "chance":
        return f"{v:.1%}"
    return f"{v:.2f}" if abs(v) < 1000 else f"{v:.0f}"


def pct(v: float) -> str:
    """A share as a percentage: whole points where it is one (25%), else one decimal (37.5%)."""
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
        return Verdict(None, f"The original model barely knew the forget facts ({pct(b)} right, while guessing "
                             f"from the answer options alone scores {pct(level)}), so there was little to forget "
                             f"and this report cannot show forgetting.")
    if a <= level + FORGET_MARGIN:
        return Verdict(True, f"The edit forgot: forget accuracy fell from {pct(b)} to {pct(a)}, within "
                             f"{FORGET_MARGIN * 100:.0f} points of the {pct(level)} that guessing from the answer options "
                             f"alone scores.")
    return Verdict(False, f"The edit did not forget: forget accuracy is {pct(a)} after the edit ({pct(b)} before). "
                          f"Forgetting means falling to about {pct(level)} (what guessing from the answer options "
                          f"alone scores); it is still {(a - level) * 100:.0f} points above that.")


def retain_verdict(before: dict, after: dict) -> Verdict:
    """Retain knowledge kept (accuracy within the bar) and fluency kept (perplexity within the bar)."""
    b, a = before.get("retain_cloze_acc"), after.get("retain_cloze_acc")
    if b is None or a is None:
        return Verdict(None, "No retain accuracy was measured.")
    text = ""
    ok = b - a <= RETAIN_DROP + 1e-9
    if ok:
        text = f"Retain knowledge was kept: retain accuracy {pct(b)} before, {pct(a)} after."
    else:
        text = (f"The edit damaged knowledge it should have kept: retain accuracy fell from {pct(b)} to {pct(a)} "
                f"({(b - a) * 100:.0f} points; the bar is {RETAIN_DROP * 100:.0f}).")
    pb, pa = before.get("retain_ppl"), after.get("retain_ppl")
    if pb and pa:
        rise = pa / pb - 1
        text += f" Perplexity on held-out retain text went from {pb:.1f} to {pa:.1f} ({rise:+.1%})"
        if rise > PPL_RISE + 1e-9:  # 110/100 - 1 is a hair above 0.1 in floating point
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
    """Did fine-tuning on half the forget facts bring the other half back? Knowledge that returns
    after a few steps was suppressed, not removed (Deeb & Roger 2024, "Do Unlearning Methods Remove
    Information from Language Model Weights?")."""
    from unlearnviz.evaluation.relearn import steps_to_recovery  # torch: only when there is a curve

    if not relearn or not relearn.get("edited"):
        return None
    edited, original = relearn["edited"], relearn.get("original") or []
    start, end = edited[0]["acc"], edited[-1]["acc"]
    ref = original[0]["acc"] if original else None
    n = edited[-1]["step"]
    if ref is None or ref - start <= FORGET_MARGIN or forgot is False:
        return Verdict(None, f"Relearning attack: half-B forget accuracy went from {pct(start)} to {pct(end)} in "
                             f"{n} fine-tuning steps; the edit had not removed enough on half B for the attack to "
                             f"say more.")
    step = steps_to_recovery(edited, ref, start)
    if step is None:
        return Verdict(True, f"The forgotten facts did not come back within {n} fine-tuning steps on the other half "
                             f"of the forget set: half-B accuracy {pct(start)} → {pct(end)} (original model "
                             f"{pct(ref)}). This is a short attack: more steps or a larger learning rate may still "
                             f"bring them back.")
    return Verdict(False, f"The knowledge came back: after {step} fine-tuning steps on the other half of the forget "
                          f"set the edited model regained half of what it had lost (half-B accuracy {pct(start)} → "
                          f"{pct(end)} after {n} steps; original {pct(ref)}). It was suppressed, not removed.")
