"""Multiple-choice accuracy: lm-eval's lettered format and cloze scoring, with floors.

Conventions (stated in the README so numbers compare with lm-evaluation-harness):

- **letter** (``*_mcq_acc``): the prompt is ``Question: {stem}\\nA. {c0}\\nB. {c1}\\nC. {c2}\\n
  D. {c3}\\nAnswer:`` and the prediction is the highest log-likelihood of `` A``..`` D``, as
  lm-eval scores WMDP (``acc``). Meaningful for models of several billion parameters; a 135M
  model answers it at chance with a strong position bias.
- **cloze** (``*_cloze_acc``): the summed log-likelihood of `` {choice}`` (the choice after a
  one-space target delimiter) given the stem, divided by the number of characters of the choice
  *without* the delimiter, highest wins, first on a tie: lm-eval's ``acc_norm`` for a
  ``multiple_choice`` task with ``target_delimiter: " "`` (``process_results``: ``lls /
  [len(choice) for choice in choices]``, ``np.argmax``), the primary metric for small models.
  ``*_cloze_sum_acc`` uses the unnormalised sum (lm-eval's ``acc``). ``evaluation/lmeval.py``
  runs the harness itself on the same items, and a test checks that both pick the same choices.
- **floor** (``*_floor_acc``): cloze scoring (the same normalisation) of the same options after
  the subject-blind stem; what option popularity alone gives. Forgetting is only as good as its
  distance to the floor.
- ``*_gold_logprob``: mean summed log-probability of the gold continuation (continuous, less
  noisy than accuracy).
- ``retain_ppl``: perplexity of the held-out retain texts (every fifth, which no method trains on).
- ``forget_probe_*`` / ``retain_probe_*`` (where the data has a probe split): cloze and floor on
  held-out phrasings of the same facts with freshly drawn distractors ("forgot the fact, or the
  phrasing?").
"""

from __future__ import annotations

import string
import time
from collections.abc import Callable, Sequence

import numpy as np

from unlearnviz.data.schema import MCQItem, UnlearningData
from unlearnviz.evaluation.scoring import Progress, continuation_logprobs, perplexity
from unlearnviz.model.loading import LoadedModel
from unlearnviz.model.routing import RoutingPlan

LETTERS = string.ascii_uppercase


def letter_prompt(item: MCQItem) -> str:
    lines = [f"Question: {item.question.strip()}"]
    lines += [f"{LETTERS[i]}. {c}" for i, c in enumerate(item.choices)]
    return "\n".join(lines) + "\nAnswer:"


def _argmax(xs: Sequence[float]) -> int:
    return max(range(len(xs)), key=lambda i: xs[i])


def cloze_scores(logprobs: Sequence[float], choices: Sequence[str]) -> np.ndarray:
    """lm-eval's ``acc_norm`` score of each choice: its summed log-likelihood over its length in
    characters (without the target delimiter), in float64 as the harness computes it (an empty
    choice divides by zero the same way)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(logprobs, dtype=np.float64) / np.array([float(len(c)) for c in choices])


def cloze_pick(logprobs: Sequence[float], choices: Sequence[str]) -> int:
    """The choice lm-eval's ``acc_norm`` picks: the highest ``cloze_scores``, the first index on a tie."""
    return int(np.argmax(cloze_scores(logprobs, choices)))


def score_items(
    lm: LoadedModel,
    items: Sequence[MCQItem],
    plan: RoutingPlan | None = None,
    letter: bool = True,
    floor: bool = True,
    batch_size: int = 32,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[dict[str, float]]:
    """Per-item results (correct or not under each scoring, gold log-prob), one batched pass
    (``batch_size`` × 128 padded tokens a forward, contexts of any length packed together)."""
    pairs: list[tuple[str, str]] = []
    for it in items:
        pairs += [(it.question, " " + c) for c in it.choices]
        if floor:
            pairs += [(it.blind_question or blind_default(it), " " + c) for c in it.choices]
        if letter:
            pairs += [(letter_prompt(it), " " + LETTERS[i]) for i in range(len(it.choices))]
    scores = iter(continuation_logprobs(lm, pairs, plan=plan, batch_size=batch_size,
                                        progress=progress, should_stop=should_stop))
    per_item = []
    for it in items:
        sums = [next(scores)[0] for _ in it.choices]
        row = {"cloze": float(cloze_pick(sums, it.choices) == it.answer),
               "cloze_sum": float(_argmax(sums) == it.answer),
               "gold_logprob": sums[it.answer], "chance": 1 / len(it.choices)}
        if floor:
            blind = [next(scores)[0] for _ in it.choices]
            row["floor"] = float(cloze_pick(blind, it.choices) == it.answer)
        if letter:
            lets = [next(scores)[0] for _ in it.choices]
            row["mcq"] = float(_argmax(lets) == it.answer)
        per_item.append(row)
    return per_item


def summarise(per_item: Sequence[dict[str, float]]) -> dict[str, float]:
    """Accuracies (``*_acc``) and means over items."""
    if not per_item:
        return {"n": 0}
    n = len(per_item)
    out: dict[str, float] = {"n": n}
    for key in per_item[0]:
        mean = sum(r[key] for r in per_item) / n
        out[key if key in ("gold_logprob", "chance") else f"{key}_acc"] = mean
    return out


def blind_default(item: MCQItem) -> str:
    """The floor's stem when an item has no blind question: its subject replaced by "this one",
    so what the model still answers is what it gets from the choices and the frame alone."""
    if item.subject and item.subject in item.question:
        return item.question.replace(item.subject, "this one")
    return item.question


PROGRESS_CHUNKS = 10  # scoring passes of an evaluation that reports progress


def evaluate(
    lm: LoadedModel,
    data: UnlearningData,
    plan: RoutingPlan | None = None,
    letter: bool = True,
    ppl: bool = True,
    batch_size: int = 32,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    probes: bool = True,
) -> dict[str, float]:
    """The flat metrics dict used everywhere (CLI ``eval``, metrics.json, the UI). ``progress(done,
    total, what)`` counts questions scored (then ``what`` = "perplexity" while that runs).

    Where the data has a probe split (``probes``: score it), ``forget_probe_*`` and
    ``retain_probe_*`` are the same cloze and floor figures on the held-out phrasings (no letter
    scoring): beside ``forget_cloze_acc`` they say whether an edit forgot the fact or the phrasing."""
    t0 = time.perf_counter()
    out: dict[str, float] = {}
    # one pass over both sets: fuller batches, and stems the two share run once; with a progress
    # callback, in PROGRESS_CHUNKS passes instead, so a person watching sees the count move
    items = [*data.forget_mcq, *data.retain_mcq]
    probe_items = [*data.forget_probe, *data.retain_probe] if probes else []
    total = len(items) + len(probe_items)
    size = total if progress is None else max(8, -(-total // PROGRESS_CHUNKS))
    done = 0

    def score(chunk_items: list[MCQItem], with_letter: bool) -> list[dict[str, float]]:
        nonlocal done
        rows = []
        for start in range(0, len(chunk_items), max(1, size)):
            rows += score_items(lm, chunk_items[start:start + size], plan=plan, letter=with_letter,
                                batch_size=batch_size, should_stop=should_stop)
            done += len(chunk_items[start:start + size])
            if progress is not None:
                progress(done, total, "questions")
        return rows

    rows = score(items, letter)
    forget_rows, retain_rows = rows[:len(data.forget_mcq)], rows[len(data.forget_mcq):]
    half_b = [r for r, h in zip(forget_rows, data.forget_half) if h == "B"]
    groups = [("forget", forget_rows), ("retain", retain_rows), ("forget_b", half_b)]
    if probe_items:
        probe_rows = score(probe_items, False)
        groups += [("forget_probe", probe_rows[:len(data.forget_probe)]),
                   ("retain_probe", probe_rows[len(data.forget_probe):])]
    for prefix, rows in groups:
        if not rows and prefix.endswith("_probe"):
            continue  # a probe split of one side only: no figures for the other
        for k, v in summarise(rows).items():
            out[f"{prefix}_{k}"] = v
    if ppl:
        if progress is not None:
            progress(total, total, "perplexity")
        out["retain_ppl"] = perplexity(lm, data.ppl_texts, plan=plan, should_stop=should_stop)
    out["chance"] = out.get("forget_chance", 0.25)
    out["wall_s"] = time.perf_counter() - t0
    return out
