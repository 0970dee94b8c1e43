"""Where things live inside a causal LM, for every supported family.

Unlearning edits need four handles: the decoder blocks (residual stream = each block's output),
each block's MLP output projection (what RMU/SRMU train), each block's attention output
projection, the final norm and the unembedding. Families name them differently; the adapter
finds them by trying known attribute paths, and names exactly what it could not find.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from unlearnviz.errors import UserError
from unlearnviz.model.quantized import module_quantization

# Attribute paths, tried in order. Covers Llama, Mistral, Qwen2/3, Gemma 1/2/3, Phi-3, GPT-2,
# GPT-NeoX (Pythia) and OPT-like layouts.
BLOCK_PATHS = ("model.layers", "model.language_model.layers", "transformer.h",
               "gpt_neox.layers", "model.decoder.layers")
MLP_OUT_PATHS = ("mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h", "mlp.fc2", "fc2")
ATTN_OUT_PATHS = ("self_attn.o_proj", "attn.c_proj", "attention.dense", "self_attn.dense",
                  "self_attn.out_proj")
FINAL_NORM_PATHS = ("model.norm", "model.language_model.norm", "transformer.ln_f",
                    "gpt_neox.final_layer_norm", "model.decoder.final_layer_norm",
                    "model.final_layernorm")


def get_path(root: nn.Module, path: str) -> nn.Module | None:
    obj: object = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, nn.Module) else None


def _call_getter(model: nn.Module, name: str) -> nn.Module | None:
    """``model.get_input_embeddings()`` and the like; None where it is missing or not implemented."""
    getter = getattr(model, name, None)
    if not callable(getter):
        return None
    try:
        found = getter()
    except (NotImplementedError, AttributeError):
        return None
    return found if isinstance(found, nn.Module) else None


def _has_matrix(module: nn.Module) -> bool:
    w = getattr(module, "weight", None)
    return isinstance(w, torch.Tensor) and w.dim() == 2


def _first(root: nn.Module, paths: tuple[str, ...]) -> tuple[str, nn.Module] | None:
    for p in paths:
        m = get_path(root, p)
        if m is not None:
            return p, m
    return None


@dataclass
class ArchitectureAdapter:
    """Handles into one model. Paths are relative to the top-level ``*ForCausalLM`` module."""

    family: str
    blocks_path: str
    blocks: nn.ModuleList
    mlp_out_rel: str
    attn_out_rel: str | None
    final_norm: nn.Module | None
    embed: nn.Module
    unembed: nn.Module

    @classmethod
    def for_model(cls, model: nn.Module) -> ArchitectureAdapter:
        family = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        missing = []
        found_blocks = _first(model, BLOCK_PATHS)
        if found_blocks is None or not isinstance(found_blocks[1], nn.ModuleList):
            missing.append(f"decoder blocks (tried {', '.join(BLOCK_PATHS)})")
            blocks_path, blocks = "", nn.ModuleList()
        else:
            blocks_path, blocks = found_blocks
            if not len(blocks):
                missing.append(f"decoder blocks ({blocks_path} is empty)")
        mlp_rel = attn_rel = None
        if len(blocks):
            mlp = _first(blocks[0], MLP_OUT_PATHS)
            if mlp is None or not all(_has_matrix(get_path(b, mlp[0]) or nn.Module()) for b in blocks):
                missing.append(f"MLP output projection with a 2-D weight in every block "
                               f"(tried {', '.join(MLP_OUT_PATHS)})")
            else:
                mlp_rel = mlp[0]
            attn = _first(blocks[0], ATTN_OUT_PATHS)
            attn_rel = attn[0] if attn else None
        norm = _first(model, FINAL_NORM_PATHS)
        embed = _call_getter(model, "get_input_embeddings")
        unembed = _call_getter(model, "get_output_embeddings")
        if embed is None or not _has_matrix(embed):
            missing.append("input embedding (get_input_embeddings)")
        if unembed is None or not _has_matrix(unembed):
            missing.append("unembedding (lm_head, get_output_embeddings)")
        if missing:
            raise UserError(
                f"unsupported architecture {family!r} ({type(model).__name__}): could not find "
                + "; ".join(missing)
            )
        return cls(family=family, blocks_path=blocks_path, blocks=blocks, mlp_out_rel=mlp_rel,
                   attn_out_rel=attn_rel, final_norm=norm[1] if norm else None,
                   embed=embed, unembed=unembed)

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    def mlp_out(self, layer: int) -> nn.Module:
        return get_path(self.blocks[layer], self.mlp_out_rel)

    def attn_out(self, layer: int) -> nn.Module | None:
        return get_path(self.blocks[layer], self.attn_out_rel) if self.attn_out_rel else None

    def mlp_out_name(self, layer: int) -> str:
        """Full parameter-path prefix of a block's MLP output projection."""
        return f"{self.blocks_path}.{layer}.{self.mlp_out_rel}"

    def stream_unsupported(self) -> str | None:
        """Why MRP's "stream" placement cannot act here, or None where it can.

        It needs every write into the residual stream to be the raw output of a block's
        attention or MLP output projection: a norm after either (Gemma-2/3's post-attention and
        post-feedforward norms) would rescale the projected write, and then the stream is no
        longer free of the subspace (nor can the projection be folded into a linear weight).
        """
        if self.attn_out_rel is None:
            return f"no attention output projection found in {self.family!r} blocks"
        if not self.mlp_adds_to_residual:
            return (f"{self.family!r} normalises the attention/MLP outputs before adding them to the "
                    "residual stream (post-norms)")
        return None

    @property
    def mlp_adds_to_residual(self) -> bool:
        """True where a block's output is (its input + attention part) + the MLP output
        projection's output, with nothing after it (no post-MLP norm, as Gemma-2/3 have): then a
        delta on that projection changes the block output by exactly delta(x)."""
        return not any(hasattr(self.blocks[0], name) for name in ("post_feedforward_layernorm", "post_mlp_layernorm"))

    def check_layer(self, layer: int, what: str = "layer") -> int:
        if not 0 <= layer < self.n_layers:
            raise UserError(f"{what} {layer} is out of range: this model has blocks 0..{self.n_layers - 1}")
        return layer


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's Conv1D stores weight as [in, out]; nn.Linear as [out, in]."""
    return type(module).__name__ == "Conv1D"


def execution_device(module: nn.Module) -> torch.device:
    """Where ``module`` computes: its weight's device, or, for a layer that accelerate offloads
    (its weight a meta placeholder), the device its hook brings the weight to for each call."""
    for m in (module, *module.modules()):
        hook = getattr(m, "_hf_hook", None)
        for h in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
            dev = getattr(h, "execution_device", None)
            if dev is not None:
                return torch.device(dev if not isinstance(dev, int) else f"cuda:{dev}")
    w = next(iter(module.parameters()), None)
    return w.device if w is not None else torch.device("cpu")


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The module's weight in nn.Linear convention [out, in] (a view, never a copy).

    A bitsandbytes layer has no such matrix (its weight is packed integers): refused; its shape
    is ``linear_shape(module)``."""
    q = module_quantization(module)
    if q is not None:
        raise UserError(f"{type(module).__name__} is a {q} (bitsandbytes) layer: its weight is packed "
                        "integers, not an [out, in] matrix")
    return module.weight.T if is_conv1d(module) else module.weight


def block_output_tensor(output: torch.Tensor | tuple) -> torch.Tensor:
    """Decoder blocks return a Tensor (transformers 5) or a tuple whose first item is it."""
    return output if isinstance(output, torch.Tensor) else output[0]


def replace_block_output(output: torch.Tensor | tuple, hidden: torch.Tensor):
    if isinstance(output, torch.Tensor):
        return hidden
    return (hidden, *output[1:])
