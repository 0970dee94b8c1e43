"""The model's output side: final hidden states, and logits from them where they are needed.

Scoring, the probes and MRP's training loss all run the unembedding only at the positions they
read (a vocabulary of 49k × every position would dominate otherwise), so they take the decoder
stack's output and unembed the picked rows themselves. The soft-capping of Gemma-2/3 lives here
once, so that every reader sees the logits the full model would produce.

An edit imported from another tool may change the final norm and the unembedding themselves
(a fine-tune changes every tensor; a tied embedding changes the unembedding with it). Readers
that call them outside the model's forward pass the plan through :func:`readout_plan`, with the
edited flag of each vector they read, so the edited rows are read by the edited readout.
"""

from __future__ import annotations

import contextlib

import torch

from unlearnviz.model.loading import LoadedModel
from unlearnviz.model.routing import RoutingPlan


def base_model(lm: LoadedModel) -> torch.nn.Module:
    """The decoder stack without the LM head (its outputs are after the final norm)."""
    return lm.model.base_model if lm.model.base_model is not lm.model else lm.model


def hidden_final(lm: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Last hidden state after the final norm (the input of the unembedding)."""
    out = base_model(lm)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def readout_plan(plan: RoutingPlan | None, index: torch.Tensor | list[int] | None = None) -> RoutingPlan | None:
    """What of ``plan`` the final norm and the unembedding see when called on vectors picked out of
    a forward pass: its parameter deltas and LoRA factors, for the vectors whose batch row the plan
    edits (``index``: each vector's row in that batch; None: one vector per row). None when the
    plan changes neither (fitted edits never do), so the plain readout runs."""
    if plan is None or not (plan.weights or plan.lora):
        return None
    rows = plan.rows
    if rows is not None and index is not None:
        rows = rows[torch.as_tensor(index, dtype=torch.long, device=rows.device)]
    return RoutingPlan(weights=plan.weights, lora=plan.lora, rows=rows)


def _active(lm: LoadedModel, plan: RoutingPlan | None):
    return contextlib.nullcontext() if plan is None else lm.router.apply(plan)


def final_norm(lm: LoadedModel, hidden: torch.Tensor, plan: RoutingPlan | None = None) -> torch.Tensor:
    """The final norm of residual-stream vectors (none in families without one), under a readout plan."""
    norm = lm.adapter.final_norm
    if norm is None:
        return hidden
    with _active(lm, plan):
        return norm(hidden)


def unembed_rows(lm: LoadedModel, ids: torch.Tensor, plan: RoutingPlan | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rows ``ids`` of the unembedding matrix (and of its bias), as the readout plan edits them:
    the probes score a handful of answer tokens, never the whole vocabulary."""
    module = lm.adapter.unembed
    w = module.weight.detach()[ids.to(module.weight.device)]
    bias = getattr(module, "bias", None)
    b = None if bias is None else bias.detach()[ids.to(bias.device)]
    if plan is None:
        return w, b
    name = next((n for n, m in lm.model.named_modules() if m is module), None)
    for cname, holders in lm.router.owners().items():
        delta = plan.weights.get(cname)
        if delta is None:
            continue
        if (name, "weight") in holders:
            w = w + delta.to(w.device, w.dtype)[ids.to(w.device)]
        if b is not None and (name, "bias") in holders:
            b = b + delta.to(b.device, b.dtype)[ids.to(b.device)]
    if name in plan.lora:
        a, bb = plan.lora[name]
        w = w + (bb.to(w.device, torch.float32)[ids.to(w.device)] @ a.to(w.device, torch.float32)).to(w.dtype)
    return w, b


def unembed(lm: LoadedModel, hidden: torch.Tensor, plan: RoutingPlan | None = None) -> torch.Tensor:
    """Logits from final hidden states, with Gemma-2/3's final soft-capping where configured;
    ``plan``: a :func:`readout_plan` for these vectors."""
    with _active(lm, plan):
        logits = lm.adapter.unembed(hidden).float()
    cap = getattr(lm.model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits
