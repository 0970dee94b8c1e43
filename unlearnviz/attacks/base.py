"""The attack registry, the items an attack scores, and the arithmetic of what came back.

Representation-level unlearning is often obfuscation: the knowledge returns after a few
fine-tuning steps, even on unrelated text (Hu et al., arXiv 2406.13356; Łucki et al., arXiv
2409.18025), after ablating one direction (Łucki et al.), after 4-bit quantization (Zhang et al.,
arXiv 2410.16454), or under a prompt prefix (arXiv 2506.10236). An attack is one module with a
settings dataclass whose fields use :func:`unlearnviz.methods.base.hp` (meaning, paper value,
range) and a ``run(lm, data, plan, settings, progress=None, should_stop=None) -> AttackResult``
decorated with :func:`register`; settings are validated by the same pydantic path as the
methods' hyperparameters (:func:`make_settings`).

Every attack runs on the edited model and, attacked the same way, on the original (the
reference: an attack that helps the original as much is no evidence of hidden knowledge), and
scores cloze accuracy on forget and retain items before and after. Where an attack uses forget
half A (relearning on it, a direction fitted on it, few-shot examples drawn from it) its forget
figure is half B (``primary = "forget_b"``), the held-out facts.

The share recovered, (acc_attacked − acc_edited) / (acc_original − acc_edited), is undefined
when the edit lowered forget accuracy by less than ``GAP_TOL`` (nothing was forgotten, so
nothing can come back): it is then None ("n/a"), never a division by ~0. It is not clipped:
above 1 the attack made the edited model better than the original, below 0 worse than edited.
R and Q follow unlearning-depth-score's definitions (Q = min(m_after / m_before, 1) after NF4,
R = the same ratio after relearning, HM(R, Q) their harmonic mean) with m the forgetting gap,
original − edited, each side attacked the same way; see :func:`depth_kept`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from unlearnviz.data.schema import MCQItem, UnlearningData
from unlearnviz.errors import UserError
from unlearnviz.methods.base import Cancelled, ProgressFn, StopFn, describe_hparams, hp, make_hparams
from unlearnviz.model.loading import LoadedModel
from unlearnviz.model.routing import RoutingPlan

__all__ = ["CARD_ORDER", "GAP_TOL", "REGISTRY", "AttackResult", "AttackSpec", "Items", "Variant", "check_stop",
           "depth_kept", "describe_settings", "get_attack", "harmonic_mean", "hp", "make_settings", "ordered",
           "recovered_share", "register", "score", "score_many"]

# A forgetting gap (original − edited accuracy) below this is "nothing was forgotten". Accuracies
# are multiples of 1/n, so any real gap is at least 1/n, far above it.
GAP_TOL = 1e-9
SPLITS = ("forget", "forget_b", "retain")


# ---- the arithmetic ---------------------------------------------------------------------------
def recovered_share(attacked: float | None, edited: float | None, original: float | None,
                    tol: float = GAP_TOL) -> float | None:
    """(attacked − edited) / (original − edited): the share of the forgotten knowledge an attack
    brought back. None where a figure is missing or the edit opened no gap (original − edited
    below ``tol``: nothing was forgotten). Not clipped (above 1: past the original)."""
    if attacked is None or edited is None or original is None:
        return None
    gap = original - edited
    if gap < tol:
        return None
    return (attacked - edited) / gap


def depth_kept(gap_before: float | None, gap_after: float | None, tol: float = GAP_TOL) -> float | None:
    """min(m_after / m_before, 1), clipped at 0, with m the forgetting gap (original − edited)
    before and after an attack applied to both: 1 = the gap survives, 0 = it closed.

    unlearning-depth-score defines Q = min(m_after / m_before, 1) after NF4 quantization and R =
    min(Δ_retain / Δ_unlearn, 1) after relearning against a model retrained without the forget
    set. There is no such model here, so both use the original, attacked the same way, as the
    reference: R is this ratio after relearning on half A (half B scored), Q after NF4. None when
    the edit opened no gap."""
    if gap_before is None or gap_after is None or gap_before < tol:
        return None
    return min(max(gap_after / gap_before, 0.0), 1.0)


def harmonic_mean(r: float | None, q: float | None) -> float | None:
    """HM(R, Q) = 2RQ / (R + Q); 0 when both are 0; None when either is missing."""
    if r is None or q is None:
        return None
    return 0.0 if r + q <= 0 else 2 * r * q / (r + q)


# ---- the items --------------------------------------------------------------------------------
def pick(seq: Sequence, n: int) -> list:
    """At most ``n`` elements of ``seq``, evenly spaced, in order (all of them when n ≥ len)."""
    m = len(seq)
    if m <= n:
        return list(seq)
    return [seq[(i * m) // n] for i in range(n)]


@dataclass
class Items:
    """The items an attack scores: forget half A and half B and retain, each a subset of at most
    ``max_items`` per side (forget: both halves together, half B taking up to half)."""

    a: list[MCQItem]
    b: list[MCQItem]
    retain: list[MCQItem]

    @classmethod
    def from_data(cls, data: UnlearningData, max_items: int) -> Items:
        b = pick(data.forget_mcq_half("B"), max_items // 2)
        a = pick(data.forget_mcq_half("A"), max(0, max_items - len(b)))
        items = cls(a=a, b=b, retain=pick(data.retain_mcq, max_items))
        if not items.a and not items.b:
            raise UserError(f"data {data.name!r} has no forget questions to attack")
        return items

    def counts(self) -> dict[str, int]:
        return {"forget": len(self.a) + len(self.b), "forget_b": len(self.b), "retain": len(self.retain)}


Transform = Callable[[MCQItem], MCQItem]


def score_many(lm: LoadedModel, plan: RoutingPlan | None, items: Items,
               variants: Mapping[str, tuple[Transform | None, bool]], batch_size: int = 32,
               should_stop: StopFn | None = None) -> dict[str, dict[str, float | None]]:
    """Cloze accuracy of forget (all), forget half B and retain for each variant, in one batched
    pass: ``variants[label] = (transform, with_a)``, the transform applied to every item (None:
    as they are), and whether half A counts (a few-shot prompt built from half A does not: its
    forget figure is then None and half B alone is scored)."""
    from unlearnviz.evaluation.mcq import score_items

    batch, spans = [], {}
    for label, (fn, with_a) in variants.items():
        parts = {"a": items.a if with_a else [], "b": items.b, "retain": items.retain}
        for part, its in parts.items():
            start = len(batch)
            batch += [fn(it) if fn is not None else it for it in its]
            spans[(label, part)] = (start, len(batch))
    rows = score_items(lm, batch, plan=plan, letter=False, floor=False, batch_size=batch_size,
                       should_stop=should_stop) if batch else []

    def hits(label: str, part: str) -> list[float]:
        s, e = spans[(label, part)]
        return [r["cloze"] for r in rows[s:e]]

    def mean(xs: list[float]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    out = {}
    for label, (_, with_a) in variants.items():
        a, b, r = hits(label, "a"), hits(label, "b"), hits(label, "retain")
        out[label] = {"forget": mean(a + b) if with_a else None, "forget_b": mean(b), "retain": mean(r)}
    return out


def score(lm: LoadedModel, plan: RoutingPlan | None, items: Items, batch_size: int = 32,
          should_stop: StopFn | None = None) -> dict[str, float | None]:
    """Cloze accuracy of forget, forget half B and retain under ``plan`` (None: the original)."""
    return score_many(lm, plan, items, {"": (None, True)}, batch_size, should_stop)[""]


def check_stop(should_stop: StopFn | None, name: str) -> None:
    if should_stop is not None and should_stop():
        raise Cancelled(f"attack {name} cancelled; nothing was kept")


# ---- results ----------------------------------------------------------------------------------
@dataclass
class Variant:
    """One attacked condition (a layer, a bit width, a prompt template, a relearning step): the
    accuracies of the edited model and of the original under it, per split; ``info``: what else
    it measured (a direction's norm, the items it was fitted on)."""

    label: str
    edited: dict[str, float | None]
    original: dict[str, float | None]
    info: dict = field(default_factory=dict)


@dataclass
class AttackResult:
    """What one attack found. ``edited``/``original``: accuracies before the attack; ``primary``:
    the forget split its headline is read on ("forget_b" where it used half A); ``curve``: for
    relearning, [{step, loss, edited: {...}, original: {...}}]; ``notes``: why a part did not run."""

    attack: str
    primary: str
    edited: dict[str, float | None]
    original: dict[str, float | None]
    variants: list[Variant] = field(default_factory=list)
    curve: list[dict] | None = None
    settings: dict = field(default_factory=dict)
    n_items: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def recovered(self, v: Variant, split: str | None = None) -> float | None:
        split = split or self.primary
        return recovered_share(v.edited.get(split), self.edited.get(split), self.original.get(split))

    def strongest(self) -> Variant | None:
        """The variant under which the edited model answers most forget items (its primary split)."""
        scored = [v for v in self.variants if v.edited.get(self.primary) is not None]
        return max(scored, key=lambda v: v.edited[self.primary], default=None)

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        for v, row in zip(self.variants, out["variants"]):
            row["recovered"] = self.recovered(v)
        best = self.strongest()
        out["strongest"] = None if best is None else best.label
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> AttackResult:
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in obj.items() if k in known}
        kw["variants"] = [Variant(label=str(v["label"]), edited=dict(v["edited"]), original=dict(v["original"]),
                                  info=dict(v.get("info") or {})) for v in obj.get("variants") or []]
        return cls(**kw)


# ---- the registry -----------------------------------------------------------------------------
class RunFn(Protocol):
    def __call__(self, lm: LoadedModel, data: UnlearningData, plan: RoutingPlan | None, settings: Any,
                 progress: ProgressFn | None = None, should_stop: StopFn | None = None) -> AttackResult: ...


@dataclass(frozen=True)
class AttackSpec:
    """A registered attack: ``summary`` is the one line the CLI, the app and the report list."""

    name: str
    settings_cls: type
    run: RunFn
    summary: str


REGISTRY: dict[str, AttackSpec] = {}
# The card's order: fine-tuning first (the literature's central finding), then the white-box and
# cheap attacks; an attack registered elsewhere comes after these.
CARD_ORDER = ("relearn_forget", "relearn_retain", "ablation", "quantize", "prompts", "noise", "projection_removal")


def ordered() -> list[str]:
    """Every registered attack, in CARD_ORDER (others after, by name)."""
    rank = {n: i for i, n in enumerate(CARD_ORDER)}
    return sorted(REGISTRY, key=lambda n: (rank.get(n, len(rank)), n))


def register(name: str, settings_cls: type, summary: str):
    """Decorate an attack's ``run``; its module is then the only place that names it. The run is
    wrapped so that the result records its settings, item counts and wall time."""
    make_settings(settings_cls)  # the defaults must validate: a bad field fails at import

    def deco(fn: RunFn) -> RunFn:
        def timed(lm, data, plan, settings=None, progress=None, should_stop=None) -> AttackResult:
            settings = settings if settings is not None else settings_cls()
            t0 = time.perf_counter()
            result = fn(lm, data, plan, settings, progress=progress, should_stop=should_stop)
            result.settings = {**dataclasses.asdict(settings), **result.settings}
            result.wall_s = time.perf_counter() - t0
            return result

        timed.__doc__, timed.__name__ = fn.__doc__, fn.__name__
        REGISTRY[name] = AttackSpec(name=name, settings_cls=settings_cls, run=timed, summary=summary)
        return fn
    return deco


def get_attack(name: str) -> AttackSpec:
    """The registered attack (the built-in ones are imported by ``unlearnviz.attacks``)."""
    if name not in REGISTRY:
        raise UserError(f"unknown attack {name!r}; available: {', '.join(ordered())}")
    return REGISTRY[name]


def make_settings(cls: type, overrides: Mapping[str, Any] | None = None):
    """Build and validate an attack's settings (the methods' pydantic path: unknown key,
    unreadable value, out of range are one line each)."""
    try:
        return make_hparams(cls, dict(overrides or {}))
    except UserError as exc:
        raise UserError(str(exc).replace("hyperparameter", "attack setting")) from None


def describe_settings(cls: type) -> list[dict]:
    """Field name, default, doc, paper value and range of an attack's settings."""
    return describe_hparams(cls)
