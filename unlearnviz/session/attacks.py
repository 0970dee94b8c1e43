"""The robustness card inside one session (the Evaluate tab's Robustness panel): the chosen
attacks on the selected edit (with every edit stacked before it) and the original, checked
against the server's limits first, the card kept in ``Session.attacks`` by stack index (so
bundles and the session's report carry it); the base weights and the edit timeline stay as
they were."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from unlearnviz.attacks import REGISTRY, attack_names
from unlearnviz.attacks.card import (
    CARD_HEADERS,
    card_rows,
    curve_series,
    figure_rows,
    headline,
    progress_fraction,
    progress_text,
    run_card,
)
from unlearnviz.errors import UserError

if TYPE_CHECKING:
    from unlearnviz.session import Limits, Session

__all__ = ["CARD_HEADERS", "attack_choices", "card_curves", "card_figure", "card_headline", "card_table", "progress_fraction",
           "progress_text", "run_session_card", "ui_settings"]


def attack_choices() -> list[tuple[str, str]]:
    """(label, name) of every attack, in the card's order, for a list of checkboxes."""
    return [(f"{n}: {REGISTRY[n].summary}", n) for n in attack_names()]


def ui_settings(names: Sequence[str] | None, steps, max_items, limits: Limits) -> tuple[list[str], dict]:
    """The attacks and settings a visitor asked for, refused in one line when malformed or over
    ``limits`` (relearning steps at most ``max_steps``)."""
    if not names:
        raise UserError("choose at least one attack")
    chosen = attack_names(list(names))
    values = {}
    for key, value, top in (("steps", steps, limits.max_steps), ("max_items", max_items, 10**5)):
        if value is None or isinstance(value, bool) or float(value) != int(float(value)) or int(float(value)) < 1:
            raise UserError(f"{key.replace('_', ' ')} must be a whole number of at least 1, got {value!r}")
        if int(float(value)) > top:
            raise UserError(f"{key.replace('_', ' ')}={int(float(value))} is over this server's limit of {top}")
        values[key] = int(float(value))
    settings: dict = {}
    if any(n.startswith("relearn") for n in chosen):
        settings["steps"] = values["steps"]
        settings["eval_every"] = max(1, values["steps"] // 4)
    settings["max_items"] = max(2, values["max_items"])
    return chosen, settings


def run_session_card(session: Session, names: Sequence[str] | str | None = None, settings: dict | None = None,
                     progress: Callable[[dict], None] | None = None,
                     should_stop: Callable[[], bool] | None = None, tracker=None) -> dict:
    """The card of the session's selected edit, kept in ``session.attacks[index]``; an edit
    timeline or base weights that changed meanwhile are a bug (AssertionError). ``tracker``: a
    ``session.progress.Tracker`` with one stage per attack (``card_tracker``), moved by each
    attack's steps; ``progress`` still gets every event."""
    lm, data = session.require_model(), session.require_data()
    idx = session.current_index
    if idx is None:
        raise UserError("run or import an edit first (Unlearn tab): the attacks compare edited with original")
    steps = (settings or {}).get("steps")
    if steps is not None and int(steps) > session.limits.max_steps:
        raise UserError(f"steps={steps} is over this server's limit of {session.limits.max_steps}")
    fp, n_edits = lm.fingerprint(refresh=False), len(session.stack)
    edit = session.current_edit()
    tracker = tracker if tracker is not None else card_tracker(names)

    def tick(event: dict) -> None:
        if tracker.has(event.get("attack", "")):
            tracker.move(event["attack"], int(event.get("step", 0)), event.get("total"))
        if progress is not None:
            progress(event)

    card = run_card(lm, data, session.plan(), names, settings, progress=tick, should_stop=should_stop,
                    edit={"label": edit.label(), "index": idx, "method": edit.method})
    if lm.fingerprint() != fp or len(session.stack) != n_edits:
        raise AssertionError("the attacks changed the model's weights or the edit timeline")
    session.attacks[idx] = card
    return card


def card_tracker(names: Sequence[str] | str | None = None):
    """The card's plan: one stage per attack, in the card's order."""
    from unlearnviz.session.progress import parts_tracker

    return parts_tracker("Robustness card", attack_names(names))


def card_table(card: dict) -> list[list]:
    """The card's rows (CARD_HEADERS) with accuracies as percentages and shares as signed ones."""
    def pct(v, signed: bool = False):
        if v is None:
            return "n/a"
        return f"{v:+.0%}" if signed else f"{v:.0%}"

    return [[*row[:3], *(pct(v) for v in row[3:7]), pct(row[7], signed=True), *(pct(v) for v in row[8:])]
            for row in card_rows(card)]


def card_figure(card: dict) -> tuple[list[dict], float | None, float | None]:
    """What ``plots.robustness_card`` draws: the rows, the floor and the chance level."""
    base = card.get("baseline") or {}
    return figure_rows(card), base.get("floor"), base.get("chance")


def card_curves(card: dict) -> tuple[list[dict], float | None, float | None]:
    """What ``plots.recovery_curves`` draws: the relearning attacks' curves (none when neither
    relearning attack ran), the floor and the chance level."""
    base = card.get("baseline") or {}
    return curve_series(card), base.get("floor"), base.get("chance")


def card_headline(card: dict) -> str:
    return headline(card)
