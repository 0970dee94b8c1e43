"""Tiny random-weight causal LMs of every supported family, built offline in milliseconds.

Shared by test_adapter, test_routing, test_loading and test_cli (plain helpers, not fixtures,
so that conftest.py stays free of them).
"""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 3 + 256  # <pad> <s> </s> + one token per byte: any text tokenizes
HIDDEN = 32
LAYERS = 3

# family (config.model_type) → the class AutoModelForCausalLM builds for it
FAMILIES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "gpt_neox": "GPTNeoXForCausalLM",
}

# where the adapter must find each handle (relative to the top-level model / to one block)
EXPECTED = {
    "gpt2": ("transformer.h", "mlp.c_proj", "attn.c_proj"),
    "gpt_neox": ("gpt_neox.layers", "mlp.dense_4h_to_h", "attention.dense"),
}
DEFAULT_EXPECTED = ("model.layers", "mlp.down_proj", "self_attn.o_proj")


def tiny_config(family: str, layers: int = LAYERS, vocab: int = VOCAB):
    from transformers import AutoConfig

    special = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    if family == "gpt2":
        return AutoConfig.for_model("gpt2", vocab_size=vocab, n_embd=HIDDEN, n_layer=layers, n_head=4,
                                    n_positions=64, **special)
    if family == "gpt_neox":
        return AutoConfig.for_model("gpt_neox", vocab_size=vocab, hidden_size=HIDDEN, num_hidden_layers=layers,
                                    num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                                    **special)
    extra: dict = {}
    if family in ("gemma2", "gemma3_text"):
        # a short sliding window so that sliding and full layers really get different masks
        extra["sliding_window"] = 4
        extra["layer_types"] = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
    return AutoConfig.for_model(family, vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=64,
                                num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                head_dim=8, max_position_embeddings=64, **special, **extra)


def tiny_model(family: str, seed: int = 0, layers: int = LAYERS):
    """A random-weight ``*ForCausalLM`` in eval mode (float32, CPU)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, layers=layers), dtype=torch.float32)
    return model.eval()


def byte_tokenizer():
    """A byte-level tokenizer (no merges): 259 tokens, every string encodes, fully offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for ch in pre_tokenizers.ByteLevel.alphabet():
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def save_tiny(folder: Path, family: str = "llama", seed: int = 0, layers: int = 2) -> Path:
    """A Hugging Face folder (config, safetensors weights, tokenizer) of a tiny model."""
    folder = Path(folder)
    tiny_model(family, seed=seed, layers=layers).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


def prompt_batch(tokenizer, texts: list[str], left_pad: bool = True):
    tokenizer.padding_side = "left" if left_pad else "right"
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def one_thread():
    """Generator for an autouse fixture: tiny models run fastest on one thread, and two
    OpenMP threads spinning on a busy 2-core machine make each forward ~300x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_session(data: str = "synthetic"):
    """A fresh Session on the tiny synthetic model (CPU) with ``data`` loaded (needs tiny_model_path)."""
    from unlearnviz.session import Session

    s = Session()
    s.load_model("synthetic", "float32", "cpu")
    s.load_data(data)
    return s
