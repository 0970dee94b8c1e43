"""Quantization: does rounding the edited weights to 8 or 4 bits round the edit away?

Zhang et al. (arXiv 2410.16454) found unlearned models keep 21% of the forgotten knowledge at
full precision and 83% after 4-bit quantization: an edit made of small weight changes falls
between two quantization levels and vanishes. So the edited model's weights, with the edit folded
in exactly as ``export`` writes them (``methods.edit.export_checkpoint``: deltas, imported
parameter deltas and LoRA factors added, an MRP stream projection folded), are written to a
temporary folder and loaded through bitsandbytes as LLM.int8 (8 bits) and NF4 (4 bits; FP4 on
request), and the original model is quantized the same way as the reference. A projection of a
block's output (MRP placement "site") is no weight, so it stays a hook on the quantized model.

bitsandbytes 0.50 runs its 8- and 4-bit kernels on the CPU too, so this is the same quantizer on
every device. It costs two full checkpoints of temporary disk (the original and the folded edit,
in the loaded dtype) and one quantized model in memory at a time. Q, unlearning-depth-score's
robustness to quantization, is read from the NF4 condition (``attacks.card``).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from unlearnviz.attacks.base import AttackResult, Items, Variant, check_stop, hp, register, score
from unlearnviz.data.schema import UnlearningData
from unlearnviz.errors import UserError
from unlearnviz.io import quiet_logger
from unlearnviz.methods.base import ProgressFn, StopFn
from unlearnviz.methods.edit import Edit, EditStack, export_checkpoint
from unlearnviz.model.loading import LoadedModel, wrap_model
from unlearnviz.model.routing import RoutingPlan

FORMATS = ("int8", "nf4", "fp4")
BITS = {"int8": 8, "nf4": 4, "fp4": 4}


@dataclass
class QuantizeSettings:
    formats: list[str] = hp(["int8", "nf4"], "bitsandbytes formats: int8 (LLM.int8), nf4 (4-bit NormalFloat), "
                            "fp4", "NF4 (Zhang et al.; unlearning-depth-score)", choices=FORMATS)
    max_items: int = hp(64, "forget and retain questions scored (each side)", min=2, max=100000)
    batch_size: int = hp(32, "scoring batch", min=1, max=4096)


def weight_part(plan: RoutingPlan | None) -> Edit:
    """What of ``plan`` is weights (deltas, parameter deltas, LoRA factors, a stream projection),
    as one Edit that ``export_checkpoint`` folds."""
    if plan is None:
        return Edit(method="original", hparams={})
    return Edit(method="attack: quantize", hparams={}, deltas=dict(plan.deltas), stream=plan.stream,
                weights=dict(plan.weights), lora=dict(plan.lora))


def hook_part(plan: RoutingPlan | None) -> RoutingPlan | None:
    """What of ``plan`` is no weight: block-output projections (MRP placement "site")."""
    if plan is None or not plan.projections:
        return None
    return RoutingPlan(projections=dict(plan.projections), offsets=dict(plan.offsets), spare_first=plan.spare_first)


def load_quantized(folder: Path, fmt: str, device: torch.device, dtype: torch.dtype, name: str) -> LoadedModel:
    """A checkpoint folder loaded through bitsandbytes in ``fmt``, wrapped like every model (frozen,
    hooked, fingerprinted); safetensors only, no remote code."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    if fmt == "int8":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=fmt, bnb_4bit_compute_dtype=dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), quantization_config=config, dtype=dtype,
                                                     device_map=str(device), use_safetensors=True,
                                                     local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # bitsandbytes and transformers raise many types
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"bitsandbytes could not load this model as {fmt} on {device}: {first}") from None
    return wrap_model(model, tokenizer, name=name)


@contextlib.contextmanager
def quiet_int8() -> Iterator[None]:
    """Silence bitsandbytes' per-call note that LLM.int8 casts float32 inputs to float16 (it is
    logged at every matmul, thousands of lines for one scoring pass)."""
    with quiet_logger("bitsandbytes.autograd._functions"):
        yield


def release(qlm: LoadedModel | None) -> None:
    """Drop a quantized model's memory now (the next one is loaded right after)."""
    if qlm is not None:
        qlm.router.remove()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@register("quantize", QuantizeSettings,
          "quantization: the edited weights (edit folded in) and the original in int8 and NF4 through "
          "bitsandbytes (Zhang et al. 2410.16454)")
def run(lm: LoadedModel, data: UnlearningData, plan: RoutingPlan | None, settings: QuantizeSettings,
        progress: ProgressFn | None = None, should_stop: StopFn | None = None) -> AttackResult:
    """Fold, quantize, score; each format is one condition, the original quantized the same way."""
    s = settings
    if lm.quantization is not None:
        raise UserError(f"the quantization attack needs the model in float (it is loaded {lm.quantization}): load it "
                        "without --quantization")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("the quantization attack needs bitsandbytes: pip install bitsandbytes")
    formats = list(dict.fromkeys(s.formats))
    items = Items.from_data(data, s.max_items)
    result = AttackResult(attack="quantize", primary="forget", edited=score(lm, plan, items, s.batch_size),
                          original=score(lm, None, items, s.batch_size), n_items=items.counts())
    weights, hooks = weight_part(plan), hook_part(plan)
    same = weights.plan().is_empty()  # no weight changes: the edited weights are the original's
    if hooks is not None:
        result.notes.append("the edit's block-output projections are no weights: they stay hooks on the quantized "
                            "model")
    with tempfile.TemporaryDirectory(prefix="unlearnviz-quantize-") as tmp:
        folders = {"original": Path(tmp) / "original"}
        export_checkpoint(lm, EditStack([weight_part(None)]), folders["original"])
        folders["edited"] = folders["original"] if same else Path(tmp) / "edited"
        if not same:
            export_checkpoint(lm, EditStack([weights]), folders["edited"])
        for i, fmt in enumerate(formats):
            got: dict[str, dict] = {}
            for side in ("original", "edited"):
                check_stop(should_stop, "quantize")
                if side == "edited" and same and hooks is None:
                    got["edited"] = got["original"]
                    continue
                qlm = None
                try:
                    qlm = load_quantized(folders[side], fmt, lm.device, lm.dtype, f"{lm.name} ({fmt}, {side})")
                    with quiet_int8():
                        got[side] = score(qlm, hooks if side == "edited" else None, items, s.batch_size, should_stop)
                finally:
                    release(qlm)
                    del qlm
            result.variants.append(Variant(label=fmt, edited=got["edited"], original=got["original"],
                                           info={"format": fmt, "bits": BITS[fmt]}))
            if progress:
                progress({"phase": "quantize", "step": i + 1, "total": len(formats)})
    return result
