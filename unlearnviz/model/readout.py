"""The model's output side: final hidden states, and logits from them where they are needed.

Scoring, the probes and MRP's training loss all run the unembedding only at the positions they
read (a vocabulary of 49k × every position would dominate otherwise), so they take the decoder
stack's output and unembed the picked rows themselves. The soft-capping of Gemma-2/3 lives here
once, so that every reader sees the logits the full model would produce.
"""

from __future__ import annotations

import torch

from unlearnviz.model.loading import LoadedModel


def base_model(lm: LoadedModel) -> torch.nn.Module:
    """The decoder stack without the LM head (its outputs are after the final norm)."""
    return lm.model.base_model if lm.model.base_model is not lm.model else lm.model


def hidden_final(lm: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Last hidden state after the final norm (the input of the unembedding)."""
    out = base_model(lm)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def unembed(lm: LoadedModel, hidden: torch.Tensor) -> torch.Tensor:
    """Logits from final hidden states, with Gemma-2/3's final soft-capping where configured."""
    logits = lm.adapter.unembed(hidden).float()
    cap = getattr(lm.model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits
