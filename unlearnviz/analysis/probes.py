"""Residual knowledge: is the forgotten answer gone, or only hidden from the output?

**Logit lens.** For one prompt, the residual stream after each block goes through the model's
final norm and unembedding (with Gemma's soft-capping): the top tokens per layer and the
probability of the gold answer's first token, original vs edited (one batched pass). At the
last layer this is exactly the model's own next-token distribution.

**Linear probes.** Can a linear read-out of the residual stream at layer ℓ still tell which of an
item's choices is right? We use a *tuned-lens probe* on the stem:

- the feature is the residual stream at the stem's last token (``"The capital of France is"``),
  where the model must already hold the answer it is about to say;
- a ridge regression (standardised features, penalty chosen by efficient leave-one-out) maps
  it to the output embedding (unembedding row) of the gold answer's first token; an item is
  answered with the choice whose first-token embedding is closest (cosine) to the prediction
  (choices that share a first token share the credit). At the last layer this can do what the
  logit lens does; at earlier layers it may rotate the space, as a tuned lens does;
- it is trained on half of the items (forget and retain items alike, split per set) and tested
  on the other half, then the halves swap (2-fold cross-validation over *items*: no fact is seen
  in training and testing). Accuracy is item-level, chance 1/len(choices), the same scale as the
  output's cloze accuracy. The *floor* is the same probe on the subject-blind stems ("The
  capital of this country is"): what answer popularity alone lets a probe read.

Why not a statement probe ("is 'stem + choice' true", read at the choice's last token): we tried
it. On the synthetic world it scored *below* chance at every layer of a model that answers
100% of items: the last-token state is dominated by the candidate's identity, every answer is
gold for one item and a distractor for the others, so the probe learns "this name is a gold
answer" on training items and is wrong on held-out ones. Reading the stem, the state the output
is computed from, avoids that, and needs d parameters per output dimension rather than a
truth direction shared by unrelated facts.

**Lens readout.** Next to the trained probe, each layer gets the zero-parameter readout: the
logit lens restricted to the item's choices (the choice whose first token the final norm +
unembedding of the stem state scores highest). It needs no training data, cannot memorise
answers, and on SmolLM2-135M it is the stronger reader at the last layers (100% of forget items
at layer 29 where the ridge probe, trained on 64 items, reaches ~35%); on the tiny synthetic
model both read ~90% from layer 0 on. A layer counts as "readable" when the better of the two
readouts is well above the better of their floors.

A fresh probe is trained on the edited activations too: an attacker with white-box access could
do the same. The output accuracy (original and edited) comes from the same pass: the full
statements ``stem + " " + choice`` run once (both models, adjacent rows) and the last block's
output goes through the final norm and unembedding for the cloze log-likelihood normalised by
the choice's characters (lm-eval's ``acc_norm``), as :mod:`unlearnviz.evaluation.mcq` scores it.
The stem features are read from the same statements (in a causal model the stem's last position
does not see the choice).

**Verdict.** The output has forgotten when the edited cloze accuracy fell at least halfway to
its floor. A layer is *still readable* when the better readout keeps at least half of its
original margin over the better floor (and ≥ 10 points); *weakened* when it keeps less but is
still ≥ 10 points above; *erased* otherwise. Overall, from the edit's deepest layer on: "hidden,
not erased" if some layer is still readable; "erased" if every readout and the output are
within 10 points of their floors; "partly erased, not hidden" in between (the inside shows no
more than the output does).
"""

from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from unlearnviz.analysis.activations import (
    as_plan,
    capture,
    capture_pair,
    check_stop,
    plan_hash,
    resolve_layers,
    run_pass,
)
from unlearnviz.data.batching import encode_pair
from unlearnviz.data.schema import MCQItem, UnlearningData
from unlearnviz.errors import UserError
from unlearnviz.evaluation.mcq import blind_default, cloze_pick
from unlearnviz.evaluation.scoring import continuation_logprobs
from unlearnviz.model.loading import LoadedModel
from unlearnviz.model.readout import final_norm, readout_plan, unembed, unembed_rows
from unlearnviz.model.routing import RoutingPlan

MARGIN = 0.10  # "well above" the floor: ten accuracy points


# ------------------------------------------------------------------------------------------
# Logit lens
# ------------------------------------------------------------------------------------------


def lens_logits(lm: LoadedModel, hidden: torch.Tensor, plan: RoutingPlan | None = None) -> torch.Tensor:
    """Logits of residual-stream vectors read through the final norm and the unembedding (the
    edited ones where ``plan``, the edited side's, changes them: an imported fine-tune)."""
    readout = readout_plan(plan)
    h = hidden.to(device=lm.device, dtype=lm.dtype)
    with torch.no_grad():
        return unembed(lm, final_norm(lm, h, readout), readout).float().cpu()


def _continuation(answer: str) -> str:
    return answer if answer[:1].isspace() else " " + answer


@dataclass
class LogitLens:
    prompt: str
    answer: str | None
    gold_token: str | None
    layers: list[int]
    top_original: list[list[tuple[str, float]]]
    top_edited: list[list[tuple[str, float]]] | None
    gold_prob_original: list[float] | None
    gold_prob_edited: list[float] | None
    gold_rank_original: list[int] | None
    gold_rank_edited: list[int] | None

    def summary(self) -> dict:
        """Compact form for JSON: per layer top-1 token and the gold probability."""
        out = {"prompt": self.prompt, "answer": self.answer, "gold_token": self.gold_token, "layers": self.layers,
               "top1_original": [t[0][0] for t in self.top_original]}
        if self.top_edited is not None:
            out["top1_edited"] = [t[0][0] for t in self.top_edited]
        for key in ("gold_prob_original", "gold_prob_edited", "gold_rank_original", "gold_rank_edited"):
            val = getattr(self, key)
            if val is not None:
                out[key] = [round(v, 5) if isinstance(v, float) else v for v in val]
        return out


def logit_lens(lm: LoadedModel, prompt: str, answer: str | None = None, plan=None, layers=None,
               top_k: int = 5) -> LogitLens:
    """Per layer: the top-k next tokens after ``prompt`` and p(first token of ``answer``)."""
    layers = resolve_layers(lm, layers)
    plan = as_plan(plan)
    has_edit = plan is not None and plan_hash(plan) != "none"
    gold_id = gold_tok = None
    if answer:
        _, cont = encode_pair(lm.tokenizer, prompt, _continuation(answer))
        gold_id = cont[0]
        gold_tok = lm.tokenizer.decode([gold_id])
    if has_edit:
        pair = capture_pair(lm, [prompt], plan, layers, "last")
        sides = {"original": pair.original, "edited": pair.edited}
    else:
        sides = {"original": capture(lm, [prompt], layers, "last")}
    tops: dict[str, list] = {}
    probs: dict[str, list[float]] = {}
    ranks: dict[str, list[int]] = {}
    for side, acts in sides.items():
        stacked = torch.stack([acts[layer][0] for layer in layers])
        p = F.softmax(lens_logits(lm, stacked, plan if side == "edited" else None), dim=-1)
        vals, idx = p.topk(min(top_k, p.shape[-1]), dim=-1)
        tops[side] = [[(lm.tokenizer.decode([int(i)]), round(float(v), 5)) for v, i in zip(vr, ir)]
                      for vr, ir in zip(vals, idx)]
        if gold_id is not None:
            g = p[:, gold_id]
            probs[side] = [float(x) for x in g]
            ranks[side] = [int((row > row[gold_id]).sum()) + 1 for row in p]
    return LogitLens(prompt=prompt, answer=answer, gold_token=gold_tok, layers=layers,
                     top_original=tops["original"], top_edited=tops.get("edited"),
                     gold_prob_original=probs.get("original"), gold_prob_edited=probs.get("edited"),
                     gold_rank_original=ranks.get("original"), gold_rank_edited=ranks.get("edited"))


# ------------------------------------------------------------------------------------------
# Statement pass: stem-end probe features (one paired forward of the stems) and output cloze
# scores (the shared-context scorer of the evaluation)
# ------------------------------------------------------------------------------------------


class StemReducer:
    """Stem-end features per layer (one per item), for the original and edited rows."""

    def __init__(self, n_items: int, probe_layers: list[int]):
        self.n_items, self.probe_layers = n_items, set(probe_layers)
        self.features: dict[str, dict[int, list]] = {"original": {}, "edited": {}}

    def __call__(self, layer, h, h_edit, batch, idx):
        if layer not in self.probe_layers:
            return
        for side, hidden in (("original", h), ("edited", h_edit)):
            if hidden is None:
                continue
            slots = self.features[side].setdefault(layer, [None] * self.n_items)
            last = hidden[batch.loss_mask.to(hidden.device)].cpu()  # the mask marks each stem's last token
            for r, i in enumerate(idx):
                slots[i] = last[r]


@dataclass
class Statements:
    features: dict[str, dict[int, list[torch.Tensor]]]  # side -> layer -> one stem-end state per item
    logprob: dict[str, list[float]]  # side -> summed log p of each (item, choice) continuation


def _statement_pass(lm: LoadedModel, items: list[MCQItem], blind: bool, layers: list[int], plan,
                    batch_size: int) -> tuple[Statements, list[list[int]]]:
    """Probe features from one (paired) forward of the stems, and each (stem, choice)
    statement's continuation log-likelihood for the original and the edited model from the
    shared-context scorer (the stem once per item, not once per choice); returns them and,
    per item, the first continuation token of each choice."""
    stems, pairs, first_tokens = [], [], []
    for it in items:
        stem = (it.blind_question or blind_default(it)) if blind else it.question
        firsts = []
        for c in it.choices:
            ctx, cont = encode_pair(lm.tokenizer, stem, " " + c)
            if len(ctx) + len(cont) > lm.max_length:
                raise UserError(f"an MCQ statement is longer than the model's context ({lm.max_length} tokens)")
            firsts.append(cont[0])
            pairs.append((stem, " " + c))
        stems.append((ctx, [False] * (len(ctx) - 1) + [True]))
        first_tokens.append(firsts)
    red = StemReducer(len(items), layers)
    run_pass(lm, stems, layers, [red], plan=plan, pair=plan is not None, batch_size=batch_size)
    stop = lambda: check_stop() or False  # noqa: E731  (raises Cancelled when the analysis is stopped)
    logprob = {side: [v for v, _ in continuation_logprobs(lm, pairs, plan=p, batch_size=batch_size, should_stop=stop)]
               for side, p in (("original", None), ("edited", plan)) if side == "original" or plan is not None}
    return Statements(features=red.features, logprob=logprob), first_tokens


# ------------------------------------------------------------------------------------------
# Probes
# ------------------------------------------------------------------------------------------


def _item_folds(splits: list[str], folds: int, seed: int) -> list[int]:
    """A fold index per item, balanced within each split (forget/retain)."""
    rng = random.Random(seed)
    out = [0] * len(splits)
    for name in sorted(set(splits)):
        members = [i for i, s in enumerate(splits) if s == name]
        rng.shuffle(members)
        for j, i in enumerate(members):
            out[i] = j % folds
    return out


def probe_item_accuracy(x: torch.Tensor, items: list[MCQItem], first_tokens: list[list[int]],
                        embeddings: torch.Tensor, fold_of: list[int], folds: int) -> np.ndarray:
    """Per item, the credit (1, 0, or 1/m for an m-way tie) of the tuned-lens probe trained on
    the other folds' items: ridge from the stem state ``x[i]`` to the gold answer's first-token
    output embedding, answer = the choice whose embedding is closest by cosine. ``first_tokens``
    index rows of ``embeddings``: the unembedding, or the table of :func:`answer_embeddings`."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xs = x.double().numpy()
    emb = embeddings.double()
    targets = emb[[ft[it.answer] for ft, it in zip(first_tokens, items)]].numpy()
    fold = np.asarray(fold_of)
    credit = np.zeros(len(items))
    for f in range(folds):
        train, test = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        if len(test) == 0 or len(train) < 2:
            continue
        reg = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-1, 5, 13)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reg.fit(xs[train], targets[train])
            pred = torch.from_numpy(np.asarray(reg.predict(xs[test])))
        for row, i in zip(pred, test):
            cands = emb[first_tokens[i]]
            credit[i] = _credit(F.cosine_similarity(cands, row[None, :], dim=-1), items[i].answer)
    return credit


def answer_embeddings(lm: LoadedModel, first_tokens: list[list[int]],
                      plan: RoutingPlan | None = None) -> tuple[torch.Tensor, list[list[int]]]:
    """The output-embedding rows of the tokens in ``first_tokens`` (float64, on the CPU) and the
    tokens renumbered as rows of that table: the probes need one row per distinct answer token,
    not the vocabulary (a float64 copy of it is 1 GiB at 7B, and there is a probe per layer,
    side and floor). Fitted edits never change the unembedding; an imported one may (``plan``:
    the edited side's), and its side then reads the edited rows."""
    ids = sorted({t for tokens in first_tokens for t in tokens})
    w, _ = unembed_rows(lm, torch.tensor(ids, dtype=torch.long), readout_plan(plan))
    table = w.double().cpu()
    row_of = {t: r for r, t in enumerate(ids)}
    return table, [[row_of[t] for t in tokens] for tokens in first_tokens]


def _credit(scores: torch.Tensor, answer: int) -> float:
    best = float(scores.max())
    tied = [j for j in range(len(scores)) if float(scores[j]) >= best - 1e-9 * max(1.0, abs(best))]
    return 1.0 / len(tied) if answer in tied else 0.0


def lens_item_accuracy(lm: LoadedModel, x: torch.Tensor, items: list[MCQItem],
                       first_tokens: list[list[int]], plan: RoutingPlan | None = None) -> np.ndarray:
    """Per item, the credit of the logit lens restricted to the item's choices (no training).

    Only the choices' unembedding rows are used (4 dot products per item instead of the whole
    vocabulary); Gemma's soft-capping is monotonic, so it cannot change the ranking. ``plan``:
    the edited side's (an imported edit may change the final norm and the unembedding)."""
    readout = readout_plan(plan)
    ids = sorted({t for tokens in first_tokens for t in tokens})
    row_of = {t: r for r, t in enumerate(ids)}
    with torch.no_grad():
        h = final_norm(lm, x.to(device=lm.device, dtype=lm.dtype), readout).float()
        # every item's choice rows read once (the edited ones where the plan changes the unembedding)
        w_all, b_all = unembed_rows(lm, torch.tensor(ids, dtype=torch.long), readout)
        w_all = w_all.float().to(h.device)
        b_all = None if b_all is None else b_all.float().to(h.device)
        out = []
        for i, it in enumerate(items):
            idx = torch.tensor([row_of[t] for t in first_tokens[i]], device=h.device)
            scores = h[i] @ w_all[idx].T
            if b_all is not None:
                scores = scores + b_all[idx]
            out.append(_credit(scores.cpu(), it.answer))
    return np.asarray(out)


def _cloze_correct(logprob: list[float], items: list[MCQItem]) -> np.ndarray:
    out, k = [], 0
    for it in items:
        out.append(float(cloze_pick(logprob[k:k + len(it.choices)], it.choices) == it.answer))
        k += len(it.choices)
    return np.asarray(out)


@dataclass
class ProbeResult:
    """Per-layer probe accuracy (forget and retain items), original vs edited, with verdicts."""

    layers: list[int]
    chance: float
    n_items: dict[str, int]
    folds: int
    probe: dict[str, dict[str, list[float]]]  # probe[side][split][layer index]
    probe_floor: list[float] | None  # forget items, subject-blind statements, original model
    output: dict[str, dict[str, float]]  # cloze accuracy: output[side][split]
    output_floor: float | None  # forget items, subject-blind stems
    edit_layers: list[int] = field(default_factory=list)
    lens: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # untrained lens readout, same shape
    lens_floor: list[float] | None = None
    layer_verdicts: list[str] = field(default_factory=list)
    verdict: str = ""
    readable_layers: list[int] = field(default_factory=list)

    def readout(self, side: str, split: str = "forget") -> list[float]:
        """Per layer, the better of the trained probe and the lens readout."""
        probe = self.probe[side][split]
        lens = self.lens.get(side, {}).get(split)
        return list(probe) if lens is None else [max(a, b) for a, b in zip(probe, lens)]

    def floor(self) -> list[float] | None:
        """Per layer, the better of the two readouts' subject-blind floors (None if not measured)."""
        floors = [f for f in (self.probe_floor, self.lens_floor) if f is not None]
        return [max(v) for v in zip(*floors)] if floors else None

    def per_layer(self) -> list[dict]:
        rows = []
        for i, layer in enumerate(self.layers):
            row = {"layer": layer, "probe_forget_original": self.probe["original"]["forget"][i],
                   "probe_retain_original": self.probe["original"]["retain"][i],
                   "verdict": self.layer_verdicts[i] if self.layer_verdicts else ""}
            if "edited" in self.probe:
                row["probe_forget_edited"] = self.probe["edited"]["forget"][i]
                row["probe_retain_edited"] = self.probe["edited"]["retain"][i]
            if self.probe_floor is not None:
                row["probe_forget_floor"] = self.probe_floor[i]
            for side, by_split in self.lens.items():
                for split, vals in by_split.items():
                    row[f"lens_{split}_{side}"] = vals[i]
            if self.lens_floor is not None:
                row["lens_forget_floor"] = self.lens_floor[i]
            rows.append(row)
        return rows

    def to_json(self) -> dict:
        return {"chance": self.chance, "n_items": self.n_items, "folds": self.folds, "output": self.output,
                "output_floor": self.output_floor, "edit_layers": self.edit_layers, "verdict": self.verdict,
                "readable_layers": self.readable_layers, "per_layer": self.per_layer(),
                "method": "probe: ridge regression from the stem's last-token residual to the gold answer's "
                          "first-token output embedding, answer = closest choice (cosine), "
                          f"{self.folds}-fold cross-validation over items; lens: the logit lens of the same state "
                          "restricted to the item's choices (no training); a layer is readable when the better "
                          "of the two is well above the better of their subject-blind floors"}


def _sample_items(items: list[MCQItem], max_items: int | None, seed: int) -> list[MCQItem]:
    if max_items is None or len(items) <= max_items:
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), max_items))
    return [items[i] for i in keep]


def residual_knowledge(lm: LoadedModel, data: UnlearningData, plan=None, layers=None, max_items: int | None = 64,
                       folds: int = 2, floor: bool = True, seed: int = 0, batch_size: int = 32,
                       train_probe: bool = True) -> ProbeResult:
    """Per-layer readouts (trained tuned-lens probe and untrained lens) on forget and retain MCQ
    items, original vs edited, with the output cloze accuracy of both and a verdict.

    ``train_probe=False`` skips the ridge probes (the slow part on large models: ~1 s per layer
    and side on SmolLM2) and keeps the lens readout; ``probe`` then holds chance everywhere."""
    layers = resolve_layers(lm, layers)
    plan = as_plan(plan)
    if plan is not None and plan_hash(plan) == "none":
        plan = None
    forget = _sample_items(data.forget_mcq, max_items, seed)
    retain = _sample_items(data.retain_mcq, max_items, seed)
    if len(forget) < 2 * folds or len(retain) < 2 * folds:
        raise UserError(f"the probes need at least {2 * folds} forget and {2 * folds} retain MCQ items "
                        f"(have {len(forget)} and {len(retain)})")
    if folds < 2:
        raise UserError("the probes need at least 2 folds")
    items = forget + retain
    splits = ["forget"] * len(forget) + ["retain"] * len(retain)
    is_f = np.asarray([s == "forget" for s in splits])
    fold_of = _item_folds(splits, folds, seed)
    chance = float(np.mean([1 / len(it.choices) for it in items]))

    chance_acc = np.asarray([1 / len(it.choices) for it in items])
    red, firsts = _statement_pass(lm, items, False, layers, plan, batch_size)
    emb, answer_rows = answer_embeddings(lm, firsts)  # the probes' targets, copied once per call
    # the edited side's targets: the same rows unless the edit changes the unembedding (an import)
    emb_e = emb if readout_plan(plan) is None else answer_embeddings(lm, firsts, plan)[0]
    sides = ["original"] + (["edited"] if plan is not None else [])
    probe: dict[str, dict[str, list[float]]] = {s: {"forget": [], "retain": []} for s in sides}
    lens: dict[str, dict[str, list[float]]] = {s: {"forget": [], "retain": []} for s in sides}
    output = {}
    for side in sides:
        ok = _cloze_correct(red.logprob[side], items)
        output[side] = {"forget": float(ok[is_f].mean()), "retain": float(ok[~is_f].mean())}
    for layer in layers:
        xo = torch.stack(red.features["original"][layer])
        acc_o = probe_item_accuracy(xo, items, answer_rows, emb, fold_of, folds) if train_probe else chance_acc
        results = {"original": acc_o}
        if plan is not None:
            xe = torch.stack(red.features["edited"][layer])
            same = float((xo - xe).abs().max()) <= 1e-6 * max(float(xo.abs().max()), 1e-12)
            results["edited"] = acc_o if (same and emb_e is emb) or not train_probe else \
                probe_item_accuracy(xe, items, answer_rows, emb_e, fold_of, folds)
        for side, acc in results.items():
            probe[side]["forget"].append(float(acc[is_f].mean()))
            probe[side]["retain"].append(float(acc[~is_f].mean()))
            x = xo if side == "original" else xe
            acc_l = lens_item_accuracy(lm, x, items, firsts, plan if side == "edited" else None)
            lens[side]["forget"].append(float(acc_l[is_f].mean()))
            lens[side]["retain"].append(float(acc_l[~is_f].mean()))

    probe_floor = output_floor = lens_floor = None
    if floor:
        blind, bfirsts = _statement_pass(lm, items, True, layers, None, batch_size)
        bemb, brows = answer_embeddings(lm, bfirsts)
        probe_floor, lens_floor = [], []
        for layer in layers:
            xb = torch.stack(blind.features["original"][layer])
            acc_b = probe_item_accuracy(xb, items, brows, bemb, fold_of, folds) if train_probe else \
                chance_acc
            probe_floor.append(float(acc_b[is_f].mean()))
            lens_floor.append(float(lens_item_accuracy(lm, xb, items, bfirsts)[is_f].mean()))
        output_floor = float(_cloze_correct(blind.logprob["original"], items)[is_f].mean())

    edit_layers = plan.edited_layers() if plan is not None else []
    res = ProbeResult(layers=layers, chance=chance, n_items={"forget": len(forget), "retain": len(retain)},
                      folds=folds, probe=probe, probe_floor=probe_floor, output=output, output_floor=output_floor,
                      edit_layers=edit_layers, lens=lens, lens_floor=lens_floor)
    judge(res)
    return res


def judge(res: ProbeResult) -> None:
    """Fill the per-layer and overall verdicts of ``res`` (plain sentences).

    The overall verdict looks at the layers from the edit's deepest layer on (RMU/SRMU's loss
    layer L, MRP's last site): the layers before it feed the edit and, for any edit acting at
    L, still carry what they carried; the per-layer verdicts show them too.
    """
    verdicts, readable = [], []
    first = min(res.edit_layers) if res.edit_layers else None
    target = max(res.edit_layers) if res.edit_layers else None
    floor = res.floor()
    read_o = res.readout("original")
    read_e = res.readout("edited") if "edited" in res.probe else None
    for i, layer in enumerate(res.layers):
        base = max(res.chance, floor[i]) if floor is not None else res.chance
        gap_o = read_o[i] - base
        if read_e is None:
            verdicts.append("readable" if gap_o >= MARGIN else "not readable")
            continue
        gap_e = read_e[i] - base
        if first is not None and layer < first:
            verdicts.append("before the edit (unchanged)")
            continue
        if gap_o < MARGIN:
            v = "not readable even before the edit"
        elif gap_e >= MARGIN and gap_e >= 0.5 * gap_o:
            v = "still readable"
            if target is None or layer >= target:
                readable.append(layer)
        elif gap_e >= MARGIN:
            v = "weakened"
        else:
            v = "erased"
        verdicts.append(v if target is None or layer >= target else f"inside the edit window: {v}")
    res.layer_verdicts, res.readable_layers = verdicts, readable
    pct = lambda v: f"{v:.0%}"  # noqa: E731
    out_o = res.output["original"]["forget"]
    out_base = max(res.chance, res.output_floor or 0.0)
    if "edited" not in res.probe:
        best = max(read_o)
        res.verdict = (f"no edit: the model answers {pct(out_o)} of forget items at the output (chance "
                       f"{pct(res.chance)}); a linear readout reads them at up to {pct(best)}")
        return
    out_e = res.output["edited"]["forget"]
    eligible = [i for i, layer in enumerate(res.layers) if target is None or layer >= target]
    best_i = max(eligible, key=lambda i: read_e[i]) if eligible else None
    forgot = out_o - out_base >= MARGIN and (out_o - out_e) >= 0.5 * (out_o - out_base)
    if not forgot:
        res.verdict = (f"not forgotten at the output: the edited model still answers {pct(out_e)} of forget "
                       f"items (original {pct(out_o)}, floor {pct(out_base)})")
        return
    where = f"from the edit's layer {target} on" if target is not None else "at any layer"
    if readable:
        i = max((res.layers.index(x) for x in readable), key=lambda j: read_e[j])
        res.verdict = (f"hidden, not erased: the output falls from {pct(out_o)} to {pct(out_e)} (floor "
                       f"{pct(out_base)}), but a linear readout still finds the forget answers at layers "
                       f"{_ranges(readable)} (best {pct(read_e[i])} at layer {res.layers[i]}, "
                       f"{pct(read_o[i])} before the edit; chance {pct(res.chance)})")
        return
    early = [layer for layer, v in zip(res.layers, verdicts) if v.endswith("still readable")
             and (target is None or layer < target)]
    note = f"; layers {_ranges(early)}, before it, still carry them, as they do for any edit made there" \
        if early else ""
    if best_i is None:
        res.verdict = f"erased at the output: {pct(out_o)} → {pct(out_e)} (floor {pct(out_base)}){note}"
        return
    base_b = max(res.chance, floor[best_i]) if floor is not None else res.chance
    # one floor per verdict (the output's): the readout's own floor is said as its distance from it
    over = round(100 * (read_e[best_i] - base_b))
    best = (f"best {pct(read_e[best_i])} at layer {res.layers[best_i]}, {pct(read_o[best_i])} before the edit, "
            f"{abs(over)} point{'s' if abs(over) != 1 else ''} {'above' if over >= 0 else 'below'} what it reads "
            "with the subject removed")
    if read_e[best_i] - base_b < MARGIN and out_e - out_base < MARGIN:
        res.verdict = (f"erased: the output falls from {pct(out_o)} to {pct(out_e)} (floor {pct(out_base)}) and "
                       f"no layer {where} lets a linear readout find the forget answers above what it reads without the subject "
                       f"({best}){note}")
    else:
        res.verdict = (f"partly erased, not hidden: the output falls from {pct(out_o)} to {pct(out_e)} (floor "
                       f"{pct(out_base)}); no layer {where} keeps even half of a linear readout's original margin "
                       f"over what it reads without the subject ({best}), so nothing is readable inside that the output does not show"
                       f"{note}")


def _ranges(layers: list[int]) -> str:
    """[3, 4, 5, 9] → '3–5, 9'."""
    out, start, prev = [], None, None
    for x in layers + [math.inf]:
        if start is None:
            start = prev = x
        elif x == prev + 1:
            prev = x
        else:
            out.append(f"{start}" if start == prev else f"{start}–{prev}")
            start = prev = x
    return ", ".join(out)


__all__ = ["LogitLens", "ProbeResult", "answer_embeddings", "judge", "lens_logits", "logit_lens",
           "probe_item_accuracy", "residual_knowledge"]
