"""SRMU (Chen et al., arXiv 2512.16297): an importance map shapes the misdirection target.

    I = φ(v_f, v_r), I_norm = I / max I,  T = c_map · V ⊙ I_norm,  V ∈ {−1,+1}^d Rademacher

v_f, v_r are per-feature mean |h| (our reading of "averaged activations": signed means make the
ratio undefined) at layer L over forget/retain tokens, computed once before training with the
frozen model. By default (``stat_tokens="spans"``) they are taken over the entity tokens (subject
and answer) of forget and of retain facts, since templated forget and retain text share everything
but the entity and whole-sentence statistics are near-identical (docs/findings.md: I_norm
0.70–1.00). Two non-paper variants are offered
and labelled: a loss masked by I, and a residual target h_frozen + c·V⊙I.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from unlearnviz.data.batching import Batch, subject_spans, tokenize_texts
from unlearnviz.methods.base import Preset, calibrated_source, hp, register, resolve_window
from unlearnviz.methods.engine import LazyBatches, Subset, mean_abs_features, mean_token_norm
from unlearnviz.methods.misdirection import ZEPHYR_7B, MisdirectionParams, prepare, train_misdirection, used
from unlearnviz.model.routing import placed


def importance_map(v_f: torch.Tensor, v_r: torch.Tensor, variant: str = "ratio", lam: float = 1.0,
                   eps: float = 1e-6) -> torch.Tensor:
    """The SRMU importance map normalised to [0, 1] (paper §3, three variants)."""
    v_f, v_r = v_f.float(), v_r.float()
    if variant == "ratio":
        imp = torch.log1p(v_f / (v_r + eps))
    elif variant == "difference":
        imp = torch.relu(v_f - lam * v_r)
    elif variant == "product":
        imp = (v_f * v_r) / (v_f.mean() * v_r.mean() + eps)
    else:
        raise ValueError(f"unknown importance variant {variant!r}")
    return imp / (imp.max() + 1e-8)


def selectivity(i_norm: torch.Tensor, top: float = 0.1) -> float:
    """Share of total importance held by the top ``top`` fraction of features (0.1 if uniform)."""
    k = max(1, int(round(top * i_norm.numel())))
    total = float(i_norm.sum())
    return float(i_norm.topk(k).values.sum()) / total if total > 0 else 0.0


@dataclass
class SRMUParams(MisdirectionParams):
    variant: str = hp("ratio", "Importance map φ: ratio log(1+v_f/v_r), difference ReLU(v_f−λv_r), product.",
                      "ratio (Pareto-best)", choices=("ratio", "difference", "product"))
    lam: float = hp(1.0, "λ of the difference variant.", "not given", min=0.0, max=100.0)
    stat_tokens: str = hp("spans", "Tokens the statistics v_f, v_r average over: 'spans' (the entity tokens of forget "
                          "facts vs those of retain facts: the tokens that carry the facts, not the template both "
                          "share), 'masked' (the forget loss mask vs every retain token) or 'all' (every non-pad "
                          "token but position 0, both sides).", "all tokens", choices=("spans", "masked", "all"))
    c_map: float = hp(1.0, "Target scale; with coeff_relative, ||T|| = c_map × mean residual norm at L.",
                      "grid 1..170, chosen value not given", min=0.0, max=1e4)
    coeff_relative: bool = hp(True, "Read c_map relative to the mean forget-token norm (else T = c_map·V⊙I_norm).", "no")
    loss_mask_by_importance: bool = hp(False, "NON-PAPER: weight the forget loss per feature by I_norm.", "no")
    residual_target: bool = hp(False, "NON-PAPER: target h_frozen + c·V⊙I_norm instead of the absolute T.", "no")


PAPER_ZEPHYR = Preset(
    name="paper-zephyr-7b",
    hparams={"layer": 7, "window": 3, "alpha": 1200.0, "lr": 5e-5, "steps": 150, "batch_size": 4,
             "max_tokens": 512, "variant": "ratio", "stat_tokens": "all", "forget_tokens": "all",
             "anchor_first": True},
    source="Chen et al. 2025 (SRMU, arXiv 2512.16297) §4: Zephyr-7B, AdamW lr 5e-5, batch 4, T = 150 steps, "
           "α = 1200, 512 tokens (bio), the ratio map (the Pareto-best variant, Table 4 ablation); the loss "
           "layer and trained blocks are RMU's (layer 7, blocks 5–7), which the paper says it follows",
    model=ZEPHYR_7B,
    note="The paper grid-searches c_map over [1, 170] and does not give the value chosen, so c_map (and "
         "coeff_relative) stay at this project's defaults: calibrate or sweep it. λ and ε are not given either. "
         "Token handling follows the RMU release (every token; statistics over every non-pad token).")

# Calibrated presets, as in rmu.py (the lab model: scripts/calibrate_presets.py; the default model: B10).
LAB_CALIBRATED = Preset(name="lab-calibrated", hparams={"layer": 2, "alpha": 112.058, "lr": 0.00587367, "steps": 58, "c_map": 10.201},
                        source=calibrated_source("the lab model (synthetic world, entanglement 0.1, seed 0)", "synthetic:0.1", "2026-12-02", "scripts/calibrate_presets.py --trials 16; per level in docs/lab_presets.md"),
                        note="By name only (`--preset lab-calibrated`): the closest of 16 calibration trials; it misses the project's bars at every entanglement level of the lab world (docs/lab_presets.md), so it is not applied automatically.")
PRESETS = (PAPER_ZEPHYR, LAB_CALIBRATED)


@register("srmu", SRMUParams, "Feature-Selective Representation Misdirection", plain_name="SRMU",
          description="SRMU (Feature-Selective Representation Misdirection) works like RMU but first measures which "
                      "internal features respond much more to forget text than to retain text, and aims its push "
                      "at those features, to spare what the retain data needs.", presets=PRESETS)
def fit_srmu(lm, data, hparams: SRMUParams, progress=None, should_stop=None, prior=None, naive=False):
    t0 = time.perf_counter()
    window = resolve_window(lm, data, hparams)
    engine, fb, rb = prepare(lm, data, hparams, prior, naive)
    nf = len(fb)
    # the statistics are taken on the batches the steps read (all, once the steps cover an epoch)
    uf, ur = used(fb, rb, hparams)
    frozen_f, frozen_r = Subset(engine.frozen, uf), Subset(engine.frozen, [nf + i for i in ur])
    if hparams.stat_tokens == "spans":
        spans_f = _span_batches(lm, data.forget_texts, subject_spans(data, "forget"), hparams)
        spans_r = _span_batches(lm, data.retain_train_texts, subject_spans(data, "retain"), hparams)
        stat_f, stat_r = (spans_f[i] for i in uf), (spans_r[i] for i in ur)
    else:
        stat_f = (fb[i] if hparams.stat_tokens == "masked" else _all_tokens(fb[i]) for i in uf)
        stat_r = (_all_tokens(rb[i], rb[i].loss_mask) for i in ur)  # never the sink (anchor_first holds it)
    v_f = mean_abs_features(frozen_f, stat_f)
    v_r = mean_abs_features(frozen_r, stat_r)
    i_norm = importance_map(v_f, v_r, hparams.variant, hparams.lam)  # on block L's device (the captures')
    gen = torch.Generator().manual_seed(hparams.seed)
    signs = (torch.randint(0, 2, (lm.hidden_size,), generator=gen).float() * 2 - 1).to(i_norm.device)
    direction = signs * i_norm
    norm = mean_token_norm(frozen_f, Subset(fb, uf))
    scale = hparams.c_map * norm / float(direction.norm()) if hparams.coeff_relative else hparams.c_map
    target_vec = scale * direction
    weight = i_norm if hparams.loss_mask_by_importance else None

    def target(i, frozen):
        # on the device of block L's output, copied there once (see rmu.fit_rmu)
        t, w = placed(target_vec, frozen.device), None if weight is None else placed(weight, frozen.device)
        if hparams.residual_target:
            return frozen.float() + t, w
        return t.expand_as(frozen), w

    meta = {"importance": i_norm.cpu().tolist(), "selectivity_top10": selectivity(i_norm),
            "importance_range": [float(i_norm.min()), float(i_norm.max())], "target_norm": float(target_vec.norm()),
            "mean_norm": norm, "precompute_s": time.perf_counter() - t0, **window}
    return train_misdirection(lm, engine, fb, rb, hparams, target, "srmu", progress, should_stop, meta)


def _span_batches(lm, texts: list[str], spans: list[str], hparams) -> LazyBatches:
    """The training batches again (same texts, order and size, so they line up with the engine's
    cached outputs), masked over the span tokens only; a text without a span keeps every token
    but position 0, so none is silently dropped from the statistics. Tokenised when read."""
    pad = lm.tokenizer.pad_token_id or 0
    return LazyBatches(texts, lambda chunk: tokenize_texts(lm, chunk, hparams.max_tokens, spans, spans_only=True),
                       hparams.batch_size, pad)


def _all_tokens(b, mask=None):
    """The batch with every non-pad token but position 0 in its mask (or ``mask`` minus position 0)."""
    mask = (b.attention_mask.bool() if mask is None else mask).clone()
    mask[:, 0] = False
    return Batch(b.input_ids, b.attention_mask, mask)
