"""Quantised (bitsandbytes 8-bit and 4-bit) layers: how to recognise them, their real shapes,
and what cannot be done to them.

A bitsandbytes layer keeps its weight as integers: an 8-bit ``Int8Params`` [out, in] with row
scales (LLM.int8(), Dettmers et al. 2022), or a 4-bit ``Params4bit`` packed two values a byte
into [out·in/2, 1] with block scales (QLoRA, Dettmers et al. 2023). Edits never touch those
weights: a delta in the compute dtype is added to the layer's output (x·Δᵀ, the router's
additive hook), which is exact, so fitting, evaluation and chat work on a quantised model.
What cannot work is folding a float delta into the integer weight (exporting a merged
checkpoint): that is refused, with the way out.

Recognised by class name, so that this module (and a model without bitsandbytes) never
imports bitsandbytes.
"""

from __future__ import annotations

import torch
from torch import nn

from unlearnviz.errors import UserError

_LINEAR_8BIT = ("Linear8bitLt",)
_LINEAR_4BIT = ("Linear4bit", "LinearNF4", "LinearFP4")
_PARAM_8BIT = ("Int8Params",)
_PARAM_4BIT = ("Params4bit",)


def module_quantization(module: nn.Module) -> str | None:
    """'8bit' or '4bit' for a bitsandbytes layer (by its class or its weight's), else None."""
    names = {type(module).__name__, type(getattr(module, "weight", None)).__name__}
    if names & set(_LINEAR_4BIT + _PARAM_4BIT):
        return "4bit"
    if names & set(_LINEAR_8BIT + _PARAM_8BIT):
        return "8bit"
    return None


def quantization_of(model: nn.Module) -> str | None:
    """'4bit' or '8bit' where any layer of ``model`` is a bitsandbytes layer (4-bit wins when
    both are present), else None. Cheap: one walk over the modules, no weight read."""
    found = {module_quantization(m) for m in model.modules()} - {None}
    return "4bit" if "4bit" in found else next(iter(found), None)


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(out, in) of a linear-like layer in nn.Linear convention, from its declared features
    where it has them (a 4-bit weight's own shape is the packed [out·in/2, 1]); GPT-2's Conv1D
    stores [in, out]."""
    out, inp = getattr(module, "out_features", None), getattr(module, "in_features", None)
    if isinstance(out, int) and isinstance(inp, int):
        return out, inp
    w = module.weight
    if type(module).__name__ == "Conv1D":
        return int(w.shape[1]), int(w.shape[0])
    if module_quantization(module) is not None or w.dim() != 2:
        raise UserError(f"cannot tell the shape of {type(module).__name__}: it declares no in/out features")
    return int(w.shape[0]), int(w.shape[1])


def n_weights(module: nn.Module, name: str, numel: int) -> int:
    """How many values a parameter stands for: a packed 4-bit weight holds two per byte."""
    if name == "weight" and module_quantization(module) == "4bit":
        shape = getattr(getattr(module.weight, "quant_state", None), "shape", None)
        if shape is not None:
            return int(torch.Size(shape).numel())
        out, inp = linear_shape(module)
        return out * inp
    return numel


def refuse_quantized(model: nn.Module, action: str, way_out: str) -> None:
    """A UserError naming the quantisation where ``model`` is quantised (one line), else nothing.

    ``action``: what was asked ("exporting a merged checkpoint"); ``way_out``: what to do instead.
    """
    q = quantization_of(model)
    if q is not None:
        raise UserError(f"{action} is not possible on a {q} (bitsandbytes) model: its weights are packed "
                        f"integers, and a float delta cannot be added to them; {way_out}")


def freeze_quantized(model: nn.Module) -> int:
    """Keep bitsandbytes from rewriting weights in place; returns how many layers it touched.

    On a CPU with AVX-512 BF16, bitsandbytes' 4-bit layer repacks its weight's storage on the
    first inference call (``packing_format_for_cpu``), which would change the frozen base
    under the fingerprint's feet (and back again whenever a state dict is taken); the
    unpacked path gives the same outputs.
    """
    n = 0
    for m in model.modules():
        if module_quantization(m) == "4bit" and getattr(m, "support_avx512bf16_for_cpu", False):
            m.support_avx512bf16_for_cpu = False
            n += 1
    return n
