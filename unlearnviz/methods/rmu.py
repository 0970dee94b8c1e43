"""RMU (Li et al., WMDP 2024): push forget activations at layer L toward a scaled random vector.

The target is c·u with u a fixed random unit vector (U[0,1) then normalised, as the reference
code does). On our scale c is given relative to the mean residual norm at L on forget tokens
(the WMDP release's c = 6.5 on Zephyr-7B, Li et al., arXiv 2403.03218, is specific to Zephyr's
activation norms and to the reference code's per-element MSE). The adaptive variant
(Dang et al., AAAI-25) scales the target per token by the frozen activation's norm.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from unlearnviz.methods.base import Preset, calibrated_source, hp, register, resolve_window
from unlearnviz.methods.engine import Subset, mean_token_norm
from unlearnviz.methods.misdirection import ZEPHYR_7B, MisdirectionParams, prepare, train_misdirection, used
from unlearnviz.model.routing import placed


@dataclass
class RMUParams(MisdirectionParams):
    steering_coeff: float = hp(1.0, "Target norm c; with coeff_relative, a multiple of the mean residual norm at L.",
                               "6.5 absolute (Zephyr)", min=0.0, max=1e4)
    coeff_relative: bool = hp(True, "Read steering_coeff as a multiple of the mean forget-token norm at L.", "no")
    adaptive: bool = hp(False, "Adaptive RMU: per-token target norm = steering_coeff × ||h_frozen(x)||.", "Dang et al. 2025")


WMDP_ZEPHYR = Preset(
    name="wmdp-zephyr-7b",
    hparams={"layer": 7, "window": 3, "steering_coeff": 6.5, "coeff_relative": False, "adaptive": False,
             "alpha": 1200.0, "lr": 5e-5, "steps": 150, "batch_size": 4, "max_tokens": 512,
             "forget_tokens": "all", "anchor_first": True},
    source="Li et al. 2024 (WMDP, arXiv 2403.03218) §4 and the released run of rmu/unlearn.py "
           "(run_rmu_zephyr.ipynb): layer_id 7, layer_ids 5,6,7 (param_ids 6: mlp.down_proj), "
           "steering_coeffs 6.5, alpha 1200, lr 5e-5, max_num_batches 150, batch_size 4, 512 tokens",
    model=ZEPHYR_7B,
    note="The release's loss is the per-element MSE over every token, pads included; here pads are left out "
         "and position 0 is in the retain term only (forget_tokens=all, anchor_first on). It trains the weights "
         "with AdamW (weight decay 0.01, negligible over 150 steps at 5e-5), alternating bio and cyber batches "
         "with one u per topic (one edit per topic here); cyber's 768-token forget batches are cut to 512.")

# Calibrated presets: `python -m unlearnviz calibrate` measured each (calibrated_source). On the
# default model the defaults themselves meet the bars on the held-out items where 12 calibration
# trials found nothing better (docs/benchmarks.md, B10dr), so it has no preset of its own.
LAB_CALIBRATED = Preset(name="lab-calibrated", hparams={"layer": 2, "alpha": 112.058, "lr": 0.00587367, "steps": 58, "steering_coeff": 10.201},
                        source=calibrated_source("the lab model (synthetic world, entanglement 0.1, seed 0)", "synthetic:0.1", "2026-12-02", "scripts/calibrate_presets.py --trials 16; per level in docs/lab_presets.md"),
                        note="By name only (`--preset lab-calibrated`): the closest of 16 calibration trials; it misses the project's bars at every entanglement level of the lab world (docs/lab_presets.md), so it is not applied automatically.")
PRESETS = (WMDP_ZEPHYR, LAB_CALIBRATED)


@register("rmu", RMUParams, "Representation Misdirection for Unlearning (baseline)", plain_name="RMU",
          description="RMU (Representation Misdirection for Unlearning) trains a small change to a few layers so "
                      "that, on forget text, the model's internal state at one layer is pushed towards a fixed "
                      "random direction (which scrambles what later layers read), while on retain text the "
                      "internal state is kept as it was.", presets=PRESETS)
def fit_rmu(lm, data, hparams: RMUParams, progress=None, should_stop=None, prior=None, naive=False):
    t0 = time.perf_counter()
    window = resolve_window(lm, data, hparams)
    engine, fb, rb = prepare(lm, data, hparams, prior, naive)
    uf, _ = used(fb, rb, hparams)  # the forget batches the steps read (all, once they cover an epoch)
    norm = mean_token_norm(Subset(engine.frozen, uf), Subset(fb, uf))
    gen = torch.Generator().manual_seed(hparams.seed)
    u = torch.rand(lm.hidden_size, generator=gen)
    u = u / u.norm()
    c = hparams.steering_coeff * (norm if hparams.coeff_relative else 1.0)

    def target(i, frozen):
        # on the device of block L's output (a model spread over devices: not the embedding's),
        # copied there once
        here = placed(u, frozen.device)
        if hparams.adaptive:
            return hparams.steering_coeff * frozen.float().norm(dim=-1, keepdim=True) * here, None
        return (c * here).expand_as(frozen), None

    edit = train_misdirection(lm, engine, fb, rb, hparams, target, "rmu", progress, should_stop,
                              {"target_norm": c, "mean_norm": norm, "precompute_s": time.perf_counter() - t0, **window})
    return edit
