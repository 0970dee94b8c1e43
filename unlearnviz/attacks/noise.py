"""Weight noise: does a small random perturbation of the weights undo the edit?

An edit that sits in a narrow basin (a small weight change that a nudge in any direction
undoes) is shallow; Gaussian noise on the weights is the cheapest probe of that, a relative of
the quantization attack (which is rounding noise of a particular shape). Each matrix W of the
blocks (or only the MLP output projections) gets σ·rms(W)·N(0, 1), the same draw on the edited
and the original model, as parameter deltas of a RoutingPlan (``weights``) merged onto the
edit's plan: the loaded weights are never written.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unlearnviz.attacks.base import AttackResult, Items, Variant, check_stop, hp, register, score
from unlearnviz.data.schema import UnlearningData
from unlearnviz.errors import UserError
from unlearnviz.methods.base import ProgressFn, StopFn
from unlearnviz.model.loading import LoadedModel
from unlearnviz.model.routing import RoutingPlan, block_of


@dataclass
class NoiseSettings:
    scales: list[float] = hp([0.01, 0.03], "noise standard deviations, relative to each matrix's root-mean-square "
                             "value", min=0.0, max=10.0)
    targets: str = hp("blocks", "which matrices: blocks (every 2-D weight in the decoder blocks) or mlp_out (the "
                      "MLP output projections, where RMU and SRMU write)", choices=("blocks", "mlp_out"))
    seed: int = hp(0, "the noise draw", min=0, max=2**31 - 1)
    max_state_mb: int = hp(4096, "memory the noise tensors may take", min=1, max=1 << 30)
    max_items: int = hp(64, "forget and retain questions scored (each side)", min=2, max=100000)
    batch_size: int = hp(32, "scoring batch", min=1, max=4096)


def target_parameters(lm: LoadedModel, targets: str) -> dict[str, torch.Tensor]:
    """Parameter name → parameter for the noise's ``targets`` (float, in memory)."""
    params = dict(lm.model.named_parameters())
    if targets == "mlp_out":
        names = [f"{lm.adapter.mlp_out_name(k)}.weight" for k in range(lm.n_layers)]
    else:
        names = [n for n, p in params.items() if block_of(n) is not None and p.dim() == 2]
    chosen = {n: params[n] for n in names if n in params}
    for n, p in chosen.items():
        if p.is_meta:
            raise UserError(f"weight noise needs the weights in memory ({n} is offloaded): load without offload")
        if not p.is_floating_point():
            raise UserError(f"weight noise needs float weights ({n} is {str(p.dtype).replace('torch.', '')}): load "
                            "the model without --quantization")
    if not chosen:
        raise UserError(f"no {targets} weights found in this {lm.adapter.family!r} model")
    return chosen


def noise_deltas(params: dict[str, torch.Tensor], scale: float, seed: int) -> dict[str, torch.Tensor]:
    """σ·rms(W)·N(0, 1) per parameter, drawn on the CPU in float32 (the same numbers on any
    device), stored in the parameter's dtype on its device."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in params.items():
        rms = float(p.detach().float().pow(2).mean().sqrt())
        noise = torch.randn(tuple(p.shape), generator=g) * (scale * rms)
        out[name] = noise.to(device=p.device, dtype=p.dtype)
    return out


@register("noise", NoiseSettings, "weight noise: Gaussian noise relative to each matrix's scale, edited and original")
def run(lm: LoadedModel, data: UnlearningData, plan: RoutingPlan | None, settings: NoiseSettings,
        progress: ProgressFn | None = None, should_stop: StopFn | None = None) -> AttackResult:
    """One condition per noise scale."""
    s = settings
    params = target_parameters(lm, s.targets)
    size = sum(p.numel() * p.element_size() for p in params.values())
    if size > s.max_state_mb * 2**20:
        raise UserError(f"weight noise on {s.targets} needs {size / 2**20:.0f} MB of noise tensors, over max_state_mb="
                        f"{s.max_state_mb}: raise it or use targets=mlp_out")
    items = Items.from_data(data, s.max_items)
    result = AttackResult(attack="noise", primary="forget", edited=score(lm, plan, items, s.batch_size),
                          original=score(lm, None, items, s.batch_size), n_items=items.counts(),
                          settings={"parameters": len(params)})
    for i, scale in enumerate(s.scales):
        check_stop(should_stop, "noise")
        noisy = RoutingPlan(weights=noise_deltas(params, scale, s.seed))
        edited = noisy if plan is None else plan.merged(noisy)
        result.variants.append(Variant(label=f"σ = {scale:g}", edited=score(lm, edited, items, s.batch_size, should_stop),
                                       original=score(lm, noisy, items, s.batch_size, should_stop),
                                       info={"scale": scale}))
        del noisy, edited
        if progress:
            progress({"phase": "noise", "step": i + 1, "total": len(s.scales)})
    return result
