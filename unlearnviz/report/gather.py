"""What a report shows, and the computing of whatever a run folder or session does not hold.

A run folder keeps its metrics (and sometimes a relearning curve and chats); the analysis views,
a relearning attack and example answers are computed here with fast settings, on the model the
edit was fitted to, and the base weights are checked unchanged afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from unlearnviz.errors import UserError

if TYPE_CHECKING:
    from unlearnviz.analysis import Analysis
    from unlearnviz.data.schema import UnlearningData
    from unlearnviz.model.loading import LoadedModel
    from unlearnviz.model.routing import RoutingPlan


@dataclass
class ReportData:
    """Everything a report shows. Assembled by :func:`gather`; rendered by ``build_report``."""

    model: dict  # LoadedModel.info()
    data: UnlearningData
    edits: list[dict]  # the stack up to the reported edit, oldest first: {method, hparams, layers, steps, fit_s}
    before: dict
    after: dict
    analysis: Analysis | None = None
    relearn: dict | None = None  # {"edited": curve, "original": curve, "whitebox": {...}, "settings": {...}}
    relearn_note: str = ""  # why there is no relearning curve
    attacks: dict | None = None  # the robustness card (unlearnviz.attacks.card), when one was run on this edit
    attacks_note: str = ""  # why there is no card
    chats: list[dict] = field(default_factory=list)  # {"split", "prompt", "original", "edited"}
    source: str = ""  # "run folder …" or "dashboard session"
    settings: dict = field(default_factory=dict)  # how the missing parts were computed
    notes: list[str] = field(default_factory=list)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))


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


def edit_summary(edit) -> dict:
    """One edit as the report lists it: method, settings, layers, steps and fit time."""
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
