"""The robustness card: every attack on one edit, as one table and one figure.

A dashboard that shows forget accuracy falling without these attacks invites the wrong
conclusion (much representation-level unlearning is obfuscation: Łucki et al., arXiv
2409.18025). The card runs the chosen attacks (``attacks.base.REGISTRY``) on an edit stack or an
imported checkpoint, with the original as the reference, and keeps per attack its conditions
(forget and retain accuracy, edited and original, before and after) and the share of the
forgotten knowledge each recovered; its summary carries unlearning-depth-score's R
(relearning), Q (NF4 quantization) and HM(R, Q) (``attacks.base.depth_kept``). The card is JSON
(``attacks.json`` beside a run, a session's results, a bundle's results.json); it names the
content hash of the edit it was measured on, so a card left beside a refitted edit is not shown
for it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from unlearnviz.attacks.base import (
    AttackResult,
    Items,
    depth_kept,
    get_attack,
    harmonic_mean,
    make_settings,
    ordered,
    recovered_share,
)
from unlearnviz.data.schema import UnlearningData
from unlearnviz.errors import UserError
from unlearnviz.methods.base import ProgressFn, StopFn
from unlearnviz.model.loading import LoadedModel
from unlearnviz.model.routing import RoutingPlan, plan_content_hash
from unlearnviz.runs import ATTACKS_FILE

CARD_FORMAT = 1
CARD_KIND = "unlearnviz robustness card"
CARD_HEADERS = ["attack", "condition", "forget split", "edited", "attacked", "original", "original attacked",
                "recovered", "retain edited", "retain attacked"]
SPLIT_NAMES = {"forget": "all", "forget_b": "half B"}


def attack_names(names: str | Sequence[str] | None = None) -> list[str]:
    """The attacks a comma list (or a sequence) names, checked, in the card's order; None, "" or
    "all": every attack."""
    if names is None or (isinstance(names, str) and names.strip() in ("", "all")):
        return ordered()
    asked = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if str(n).strip()]
    for n in asked:
        get_attack(n)
    if not asked:
        raise UserError("name at least one attack")
    return [n for n in ordered() if n in asked]


def split_settings(names: Sequence[str], pairs: Mapping[str, Any]) -> dict[str, dict]:
    """``ATTACK.KEY=value`` goes to that attack, ``KEY=value`` to every chosen attack that has a
    setting KEY (a key no chosen attack has is one line); each attack's settings are validated."""
    import dataclasses

    fields = {n: {f.name for f in dataclasses.fields(get_attack(n).settings_cls)} for n in names}
    out: dict[str, dict] = {n: {} for n in names}
    for key, value in pairs.items():
        attack, dot, name = str(key).partition(".")
        if dot:
            if attack not in out:
                raise UserError(f"setting {key!r}: {attack!r} is not one of the chosen attacks ({', '.join(names)})")
            out[attack][name] = value
            continue
        takers = [n for n in names if key in fields[n]]
        if not takers:
            raise UserError(f"setting {key!r}: no chosen attack has it ({', '.join(names)})")
        for n in takers:
            out[n][key] = value
    for n in names:
        make_settings(get_attack(n).settings_cls, out[n])
    return out


def baseline(lm: LoadedModel, data: UnlearningData, max_items: int = 64) -> dict:
    """The original's subject-blind floor and the chance level on the forget questions."""
    from unlearnviz.evaluation.mcq import score_items, summarise

    items = Items.from_data(data, max_items)
    rows = summarise(score_items(lm, items.a + items.b, letter=False, floor=True))
    return {"floor": rows.get("floor_acc"), "chance": rows.get("chance")}


def run_card(lm: LoadedModel, data: UnlearningData, plan: RoutingPlan | None,
             attacks: str | Sequence[str] | None = None, settings: Mapping[str, Any] | None = None,
             progress: ProgressFn | None = None, should_stop: StopFn | None = None,
             edit: Mapping[str, Any] | None = None) -> dict:
    """Run the attacks (``attack_names``) with ``settings`` (``split_settings``' pairs) on ``plan``
    and the original; the card as JSON. Every name and setting is checked before anything runs;
    ``edit``: what to record about the edit besides its content hash (labels, a source)."""
    names = attack_names(attacks)
    per_attack = split_settings(names, settings or {})
    chosen = {n: make_settings(get_attack(n).settings_cls, per_attack[n]) for n in names}
    fp = lm.fingerprint(refresh=False)
    results: dict[str, AttackResult] = {}
    for i, name in enumerate(names):
        def tick(ev: dict, name=name, i=i) -> None:
            if progress:
                progress({**ev, "attack": name, "index": i, "attacks": len(names)})

        tick({"phase": name, "step": 0, "total": 1})
        results[name] = get_attack(name).run(lm, data, plan, chosen[name], progress=tick, should_stop=should_stop)
    if lm.fingerprint() != fp:
        raise AssertionError("base weights changed during the attacks")
    return {"format": CARD_FORMAT, "kind": CARD_KIND, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": {"name": lm.name, "fingerprint": fp},
            "data": {"name": data.name, "content_hash": data.content_hash()},
            "edit": {**dict(edit or {}), "hash": plan_content_hash(plan)},
            "baseline": baseline(lm, data), "order": names,
            "attacks": {n: r.to_json() for n, r in results.items()}, "summary": summary(results)}


def summary(results: Mapping[str, AttackResult]) -> dict:
    """R (relearning on half A, its last point), Q (NF4, else another 4-bit format), HM(R, Q),
    and the strongest attack: the condition that recovered the largest share."""
    out: dict[str, Any] = {"R": None, "Q": None, "HM": None, "R_from": None, "Q_from": None}
    rel = results.get("relearn_forget")
    if rel is not None and rel.variants:
        last, p = rel.variants[-1], rel.primary
        out["R"] = depth_kept(gap(rel.original, rel.edited, p), gap(last.original, last.edited, p))
        out["R_from"] = f"relearn_forget, {last.label}"
    quant = results.get("quantize")
    if quant is not None:
        four = [v for v in quant.variants if v.info.get("bits") == 4]
        v = next((v for v in four if v.label == "nf4"), four[0] if four else None)
        if v is not None:
            p = quant.primary
            out["Q"] = depth_kept(gap(quant.original, quant.edited, p), gap(v.original, v.edited, p))
            out["Q_from"] = f"quantize, {v.label}"
    out["HM"] = harmonic_mean(out["R"], out["Q"])
    best = None
    for name, r in results.items():
        for v in r.variants:
            share = r.recovered(v)
            if share is not None and (best is None or share > best[0]):
                best = (share, name, v.label)
    out["strongest"] = None if best is None else {"attack": best[1], "condition": best[2], "recovered": best[0]}
    return out


def gap(original: Mapping[str, float | None], edited: Mapping[str, float | None], split: str) -> float | None:
    o, e = original.get(split), edited.get(split)
    return None if o is None or e is None else o - e


def card_results(card: Mapping[str, Any]) -> dict[str, AttackResult]:
    """The card's attacks as AttackResults, in the card's order."""
    attacks = card.get("attacks") or {}
    return {n: AttackResult.from_json(attacks[n]) for n in card.get("order") or attacks if n in attacks}


def card_rows(card: Mapping[str, Any], strongest_only: bool = False) -> list[list]:
    """The card's table (CARD_HEADERS): one row per condition (or per attack: its strongest), and
    one row for an attack that found nothing to attack (its note)."""
    rows = []
    for name, r in card_results(card).items():
        p = r.primary
        chosen = r.variants if not strongest_only else [v for v in [r.strongest()] if v is not None]
        if not chosen:
            rows.append([name, (r.notes or ["nothing to attack"])[0], SPLIT_NAMES.get(p, p), r.edited.get(p), None,
                         r.original.get(p), None, None, r.edited.get("retain"), None])
        for v in chosen:
            rows.append([name, v.label, SPLIT_NAMES.get(p, p), r.edited.get(p), v.edited.get(p), r.original.get(p),
                         v.original.get(p), recovered_share(v.edited.get(p), r.edited.get(p), r.original.get(p)),
                         r.edited.get("retain"), v.edited.get("retain")])
    return rows


def figure_rows(card: Mapping[str, Any]) -> list[dict]:
    """Per attack, its strongest condition: what ``plots.robustness_card`` draws."""
    out = []
    for name, r in card_results(card).items():
        v = r.strongest()
        if v is None:
            continue
        p = r.primary
        out.append({"attack": name, "condition": v.label, "split": SPLIT_NAMES.get(p, p), "edited": r.edited.get(p),
                    "attacked": v.edited.get(p), "original": r.original.get(p),
                    "recovered": r.recovered(v)})
    return out


def curve_series(card: Mapping[str, Any]) -> list[dict]:
    """Per relearning attack of the card (one with a curve), what ``plots.recovery_curves`` draws:
    {attack, split, steps, edited, original, retain_edited, recovered}: forget accuracy on its
    primary split at each scored step for both models, the edited model's retain accuracy, and
    the share of the forgotten knowledge back at each step (None without a gap)."""
    out = []
    for name, r in card_results(card).items():
        if not r.curve:
            continue
        p = r.primary
        e0, o0 = r.curve[0]["edited"].get(p), r.curve[0]["original"].get(p)
        out.append({"attack": name, "split": SPLIT_NAMES.get(p, p), "steps": [pt["step"] for pt in r.curve],
                    "edited": [pt["edited"].get(p) for pt in r.curve],
                    "original": [pt["original"].get(p) for pt in r.curve],
                    "retain_edited": [pt["edited"].get("retain") for pt in r.curve],
                    "recovered": [recovered_share(pt["edited"].get(p), e0, o0) for pt in r.curve]})
    return out


def headline(card: Mapping[str, Any]) -> str:
    """One sentence: the strongest attack and the share it recovered, with R, Q and HM."""
    s = card.get("summary") or {}
    best = s.get("strongest")
    parts = []
    if best:
        parts.append(f"The strongest attack, {best['attack']} ({best['condition']}), recovered "
                     f"{best['recovered']:.0%} of the forgotten knowledge.")
    else:
        parts.append("No attack found forgotten knowledge to recover (or the edit forgot nothing).")
    named = [f"{k} = {s[k]:.2f}" for k in ("R", "Q", "HM") if s.get(k) is not None]
    if named:
        parts.append(", ".join(named) + " (1 = the forgetting survives, 0 = it is undone).")
    return " ".join(parts)


def save_card(folder: Path, card: Mapping[str, Any]) -> Path:
    """Write ``attacks.json`` into ``folder`` atomically."""
    from unlearnviz.io import atomic_write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ATTACKS_FILE
    atomic_write_text(path, json.dumps(card, indent=1, default=float) + "\n")
    return path


def check_card(card: Any, where: str) -> dict:
    """A card read from ``where`` (a file, a bundle member), refused in one line when it is not one."""
    if not isinstance(card, dict) or card.get("kind") != CARD_KIND or not isinstance(card.get("attacks"), dict):
        raise UserError(f"{where}: not a robustness card (from `python -m unlearnviz attack`)")
    if card.get("format") != CARD_FORMAT:
        raise UserError(f"{where}: robustness card format {card.get('format')!r}; this version reads {CARD_FORMAT}")
    try:
        card_results(card)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"{where}: damaged robustness card ({type(exc).__name__})") from None
    return card


def read_card(folder: Path) -> dict | None:
    """The card in ``folder``/attacks.json, checked; None when there is none."""
    from unlearnviz.runs import read_json

    path = Path(folder) / ATTACKS_FILE
    card = read_json(path)
    return None if card is None else check_card(card, str(path))


def card_matches(card: Mapping[str, Any], plan: RoutingPlan | None) -> bool:
    """Whether ``card`` was measured on this edit (its content hash)."""
    return (card.get("edit") or {}).get("hash") == plan_content_hash(plan)


ProgressText = Callable[[dict], str]


def progress_text(event: Mapping[str, Any]) -> str:
    """One line for a card's progress event: which attack of how many, and its step."""
    step, total = event.get("step", 0), event.get("total") or 1
    return (f"attack {event.get('index', 0) + 1}/{event.get('attacks', 1)}: {event.get('phase', '')} "
            f"{step}/{total}")


def progress_fraction(event: Mapping[str, Any]) -> float:
    """The card's progress as a fraction (each attack an equal share)."""
    n = max(1, int(event.get("attacks", 1)))
    within = float(event.get("step", 0)) / max(1, float(event.get("total") or 1))
    return min(1.0, (int(event.get("index", 0)) + min(within, 1.0)) / n)
