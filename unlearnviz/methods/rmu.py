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

from unlearnviz.methods.base import hp, register, resolve_window
from unlearnviz.methods.engine import Subset, mean_token_norm
from unlearnviz.methods.misdirection import MisdirectionParams, prepare, train_misdirection, used
from unlearnviz.model.routing import placed


@dataclass
class RMUParams(MisdirectionParams):
    steering_coeff: float = hp(1.0, "Target norm c; with coeff_relative, a multiple of the mean residual norm at L.",
                               "6.5 absolute (Zephyr)", min=0.0, max=1e4)
    coeff_relative: bool = hp(True, "Read steering_coeff as a multiple of the mean forget-token norm at L.", "no")
    adaptive: bool = hp(False, "Adaptive RMU: per-token target norm = steering_coeff × ||h_frozen(x)||.", "Dang et al. 2025")


@register("rmu", RMUParams, "Representation Misdirection for Unlearning (baseline)", plain_name="RMU",
          description="RMU (Representation Misdirection for Unlearning) trains a small change to a few layers so "
                      "that, on forget text, the model's internal state at one layer is pushed towards a fixed "
                      "random direction (which scrambles what later layers read), while on retain text the "
                      "internal state is kept as it was.")
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
