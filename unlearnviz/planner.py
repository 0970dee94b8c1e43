"""The memory planner: the peak memory an action will need, from the model's shapes, before it runs.

An action that will not fit should be refused with a figure, not run into an out-of-memory error
half-way (on a 7B model, minutes in). The estimate is derived from shapes only (hidden size, MLP
width, layers, heads, vocabulary, dtype bytes, the method's layer window), so it works for a
loaded model and for a bare config instantiated on the meta device (no weights at all), and it
says what each part is:

- **weights**: every parameter once (tied embeddings once), in the model's dtype;
- **activations**: what autograd keeps for the backward pass of the blocks a step runs, counted
  tensor by tensor as the decoder blocks of transformers save them (RMSNorm's float32 input,
  attention's query/key/value and output, the MLP's gate, up and activation; GQA's keys and values
  expanded to every head; the T×T attention weights only where attention is eager), and for
  inference the largest single layer's transient tensors; the KV cache where one is kept;
- **trainable state**: the trained deltas (or MRP's rows) in float32, with their gradient and
  Adam's two moments;
- **caches**: the window engine's captures (``methods/engine.py``), kept while they fit in their
  byte bound (CACHE_SHARE of what is free, HOST_CACHE_MAX in CPU memory), its joined kwargs
  (JOIN_CACHE_BYTES) and MRP's KL references (KL_REFERENCE_BYTES); MRP's streaming statistics
  are two d×d float64 Gram matrices, plus the eigen-solve's d×d work matrices;
- **logits**: full-vocabulary rows in float32 where a loss or a score reads them.

The per-tensor accounting follows Korthikanti et al., "Reducing Activation Recomputation in Large
Transformer Models" (arXiv 2205.05198), adapted to frozen weights (a frozen linear layer keeps no
input for its weight gradient) and to gated MLPs. The figures are estimates: the benchmark B11
(``bench/planner.py``) checks three of them against measured peaks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from unlearnviz.data.batching import AUTO, LONG_WINDOW, SHORT_WINDOW
from unlearnviz.errors import UserError
from unlearnviz.evaluation.scoring import LOGIT_BUDGET, TOKENS_PER_ROW, pack_contexts
from unlearnviz.methods.base import get_method, make_hparams
from unlearnviz.methods.engine import CACHE_SHARE, HOST_CACHE_MAX, JOIN_CACHE_BYTES, available_ram
from unlearnviz.methods.misdirection import auto_layer
from unlearnviz.methods.mrp import KL_REFERENCE_BYTES
from unlearnviz.model.adapter import ArchitectureAdapter

GB = 1024**3
FP32 = 4
# The scorer's defaults (evaluation/scoring.py, mcq.py): contexts packed to batch_size (32) × 128
# padded tokens, perplexity over 16 texts of at most 256 tokens; full-vocabulary float32 logits
# LOGIT_BUDGET at a time, with as many again for their log-softmax.
SCORE_TOKENS = 32 * TOKENS_PER_ROW
PPL_BATCH, PPL_TOKENS = 16, 256
# Analysis passes (analysis/activations.py) run 32 rows a batch; chat runs 4 rows (original,
# edited and the two cross-scoring rows, generation.py).
CAPTURE_BATCH = 32
CHAT_ROWS = 4
# Where no data says otherwise: MCQ items of four choices of 8 tokens after a stem of the
# planned max_tokens (at most 128), and 256 texts for an analysis pass.
CHOICES, CHOICE_TOKENS, STEM_TOKENS = 4, 8, 128
CAPTURE_TEXTS = 256


@dataclass(frozen=True)
class Shapes:
    """What the estimate reads from a model: sizes, dtype and the block's layout."""

    family: str
    hidden: int
    mlp: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    params: int
    weight_bytes: int
    dtype_bytes: int
    gated: bool  # gate and up projections (SwiGLU/GeGLU) rather than one fc layer
    mlp_saved: int  # MLP-wide tensors autograd keeps (gate, up, activation; fc output and activation's own)
    norms: int  # norms per block (4 with Gemma-2's post-norms)
    eager: bool  # eager attention: the T×T weights are materialised (and kept for backward)
    softcap: bool  # attention logit soft-capping (Gemma-2): more T×T tensors
    linear_first: bool  # the MLP output is added straight to the residual (the engine's linear first block)
    max_positions: int

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim


def shapes_of(model: torch.nn.Module, dtype: torch.dtype | None = None) -> Shapes:
    """The shapes of a model (loaded, or built on the meta device); ``dtype``: plan for these
    weights' bytes instead of the model's own."""
    cfg = model.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    adapter = ArchitectureAdapter.for_model(model)
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    if dtype is None:
        dtype_bytes = adapter.embed.weight.element_size()
        weight_bytes = sum(p.numel() * p.element_size() for p in params)
    else:
        dtype_bytes = torch.empty((), dtype=dtype).element_size()
        weight_bytes = n * dtype_bytes
    hidden = int(adapter.embed.weight.shape[1])
    heads = int(getattr(cfg, "num_attention_heads", None) or cfg.n_head)
    kv = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or hidden // heads)
    block = adapter.blocks[0]
    mlp_names = {name.rsplit(".", 1)[-1] for name, _ in block.named_modules()}
    gated = any("gate" in name or name == "w1" for name in mlp_names)
    # GPT-2's gelu_new is written out in Python: autograd keeps three more MLP-wide tensors of it
    act = getattr(cfg, "hidden_act", None) or getattr(cfg, "activation_function", None)
    # widths from the config: a quantised layer's weight is packed
    mlp = int(getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * hidden)
    return Shapes(
        family=adapter.family, hidden=hidden, mlp=mlp, layers=adapter.n_layers, heads=heads, kv_heads=kv,
        head_dim=head_dim, vocab=int(getattr(cfg, "vocab_size", None) or adapter.embed.weight.shape[0]),
        params=n, weight_bytes=weight_bytes,
        dtype_bytes=dtype_bytes, gated=gated, mlp_saved=3 if gated else 1 + (3 if act == "gelu_new" else 0),
        norms=sum("norm" in type(m).__name__.lower() for m in block.children()),
        eager=getattr(cfg, "_attn_implementation", "eager") == "eager",
        softcap=bool(getattr(cfg, "attn_logit_softcapping", None)), linear_first=adapter.mlp_adds_to_residual,
        max_positions=int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 2048)))


def meta_model(config) -> torch.nn.Module:
    """``config``'s causal LM built on the meta device: shapes and parameter counts, no memory."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    finally:
        logging.set_verbosity(verbosity)


# Public shapes of the 7B-class models the papers use (each model card's config.json).
NAMED_CONFIGS: dict[str, tuple[str, str, dict]] = {
    "zephyr-7b": ("Zephyr-7B (Mistral-7B)", "MistralConfig", dict(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=32768, sliding_window=4096, rope_theta=10000.0,
        tie_word_embeddings=False)),
    "llama-3-8b": ("Llama-3-8B", "LlamaConfig", dict(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0, tie_word_embeddings=False)),
    "qwen2.5-7b": ("Qwen2.5-7B", "Qwen2Config", dict(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, max_position_embeddings=131072, rope_theta=1000000.0, tie_word_embeddings=False)),
    "gemma-2-9b": ("Gemma-2-9B", "Gemma2Config", dict(
        vocab_size=256000, hidden_size=3584, intermediate_size=14336, num_hidden_layers=42, num_attention_heads=16,
        num_key_value_heads=8, head_dim=256, max_position_embeddings=8192, sliding_window=4096,
        query_pre_attn_scalar=256, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
        tie_word_embeddings=True)),
}


def named_config(name: str):
    """The transformers config of a named model (``NAMED_CONFIGS``)."""
    import transformers

    key = name.strip().lower()
    if key not in NAMED_CONFIGS:
        raise UserError(f"no named config {name!r}: use one of {', '.join(NAMED_CONFIGS)}")
    _, cls, kwargs = NAMED_CONFIGS[key]
    return getattr(transformers, cls)(**kwargs)


# ------------------------------------------------------------------------------------------
# Per-token accounting
# ------------------------------------------------------------------------------------------


def saved_per_token(s: Shapes, width: int, padded: bool = True, delta: bool = False) -> int:
    """Bytes autograd keeps per token for the backward pass of one block with frozen weights
    (a frozen linear keeps nothing for its input's gradient): each norm's float32 input; the
    rotated query and the keys and values expanded to every head, with fused attention's output
    and additive mask row (``width`` wide, padded batches) or eager attention's weights; the MLP's
    gate, up and activation output (gated) or its fc output and activation input; a trained
    delta's float32 input."""
    b = s.dtype_bytes
    n = s.norms * s.hidden * FP32 + s.norms * FP32  # the fp32 upcast input and its rsqrt
    if s.eager:  # q, k, v (expanded); the softmax's float32 output, its cast back, soft-capping's tanh
        n += 3 * s.q_width * b + s.heads * width * (FP32 + (b if b != FP32 else 0) + (b if s.softcap else 0))
    else:  # fused attention: q, k, v (expanded), its output and log-sum-exp, the additive mask row
        n += 4 * s.q_width * b + s.heads * FP32 + (width * b if padded else 0)
    n += s.mlp_saved * s.mlp * b
    if delta:
        n += s.mlp * FP32
    return n


def inference_per_token(s: Shapes, width: int, padded: bool = True, delta: bool = False) -> int:
    """Bytes per token alive at once while one block runs without autograd (the largest of the
    attention and MLP stages), beside the residual stream and the norm's float32 copy."""
    b = s.dtype_bytes
    stream = 2 * s.hidden * b + s.hidden * (FP32 + b)  # residual in and out, the norm's fp32 and cast copies
    attn = (s.q_width + 2 * s.kv_width + 2 * s.q_width + s.q_width) * b  # q, k, v, expanded k, v, output
    if padded:
        attn += width * b
    if s.eager:
        attn += s.heads * width * (2 * b + FP32)
    mlp = (3 if s.gated else 2) * s.mlp * b + (s.mlp * FP32 + s.hidden * FP32 if delta else 0)
    return stream + max(attn, mlp)


def kv_per_token(s: Shapes) -> int:
    """KV-cache bytes per token over every layer."""
    return s.layers * 2 * s.kv_width * s.dtype_bytes


# ------------------------------------------------------------------------------------------
# Plans
# ------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """One action's estimate: its parts in bytes (``cache``: the bounded caches, which take at
    most their bound of what is free), the settings it assumed, notes."""

    action: str
    parts: dict[str, int]
    settings: dict = field(default_factory=dict)
    cache_wanted: int = 0  # the bounded caches' bytes if everything were kept
    cache: int = 0  # what they hold at the plan's availability
    notes: list[str] = field(default_factory=list)

    @property
    def peak_bytes(self) -> int:
        return sum(self.parts.values()) + self.cache

    @property
    def working_bytes(self) -> int:
        """The peak minus the weights (what the action adds to a loaded model)."""
        return self.peak_bytes - self.parts.get("weights", 0)

    def to_dict(self) -> dict:
        return {"action": self.action, "peak_gb": round(self.peak_bytes / GB, 3),
                "parts_gb": {k: round(v / GB, 3) for k, v in {**self.parts, "caches": self.cache}.items()},
                "caches_wanted_gb": round(self.cache_wanted / GB, 3), "settings": self.settings,
                "notes": self.notes}

    def line(self) -> str:
        parts = ", ".join(f"{k} {_gb(v)}" for k, v in {**self.parts, "caches": self.cache}.items() if v >= 2**20)
        return f"{self.action}: ~{_gb(self.peak_bytes)} GB ({parts})"


def _gb(n: float) -> str:
    return f"{n / GB:.2f}" if n < 10 * GB else f"{n / GB:.1f}"


def _cache_room(device: str, free: int | None) -> int:
    """The engine's capture bound on ``device`` with ``free`` bytes free after the weights
    (unknown: HOST_CACHE_MAX in CPU memory; on a GPU nothing is counted, and the plan says what
    the captures would want)."""
    if free is None:
        return 0 if device.startswith("cuda") else HOST_CACHE_MAX
    if device.startswith("cuda"):
        return int(CACHE_SHARE * free)  # the device tier (the CPU tier is host memory, not this device's)
    return min(HOST_CACHE_MAX, int(CACHE_SHARE * free))


def resolve_tokens(max_tokens: int, s: Shapes) -> int:
    """A plan's window: max_tokens as given, or for auto (no data to measure) the longest the
    rule can pick (LONG_WINDOW within the model's context)."""
    if max_tokens == AUTO:
        return max(SHORT_WINDOW, min(LONG_WINDOW, s.max_positions))
    return int(max_tokens)


def _used(steps: int, n_batches: int | None) -> int:
    """Distinct batches of one corpus a fit's steps read (every one once they cover an epoch)."""
    return steps if n_batches is None else min(steps, n_batches)


def plan_fit(s: Shapes, method: str, hparams=None, *, device: str = "cpu", free: int | None = None,
             batches: tuple[int, int] | None = None, edits_bytes: int = 0, padded: bool = True) -> Plan:
    """The peak of fitting ``method`` with ``hparams`` (a dataclass or a dict of overrides;
    max_tokens already resolved, or auto = the longest window). ``batches``: the forget and retain
    corpora's batch counts (None: larger than the steps read); ``free``: bytes free on the device
    after the weights (bounds the captures); ``edits_bytes``: the edits already stacked."""
    spec = get_method(method)
    hp = hparams if dataclasses.is_dataclass(hparams) else make_hparams(spec.hparams_cls, dict(hparams or {}))
    T, B = resolve_tokens(hp.max_tokens, s), int(hp.batch_size)
    steps = int(hp.steps)
    nf, nr = batches if batches is not None else (None, None)
    b, d, m = s.dtype_bytes, s.hidden, s.mlp
    rows = 2 * B  # one forget and one retain batch a step, as one call where they join
    tokens = rows * T
    mask = T if padded else 0  # a padded batch's boolean [B, 1, T, T] mask, per token
    rotary = 2 * s.head_dim * b // max(1, B)  # cos/sin [1, T, head_dim], shared by the rows
    parts = {"weights": s.weight_bytes}
    if edits_bytes:
        parts["stacked edits"] = edits_bytes
    if spec.name in ("rmu", "srmu"):
        layer = hp.layer if hp.layer != -1 else auto_layer(s.layers, hp.window)
        w = int(hp.window)
        lin = s.linear_first
        runs = w - 1 if lin else w
        # linear first: input, first block's output and MLP input, frozen output; else input, frozen output
        per_capture = B * T * (((3 * d + m) if lin else 2 * d) * b + rotary + mask)
        captures = (_used(steps, nf) + _used(steps, nr)) * per_capture
        trainable = 4 * w * d * m * FP32  # deltas, gradients, Adam's two moments
        saved = runs * tokens * saved_per_token(s, T, padded, delta=True)
        # the first block's outputs (frozen output + the delta's product, one batch's float32
        # product at a time) until the window has run; then the loss's float32 differences and
        # the backward's gradients of one block's MLP (and of its float32 delta path below fp32)
        entry = tokens * d * b + B * T * d * FP32 + (tokens * m * FP32 if lin and b != FP32 else 0) if lin else 0
        backward = 2 * tokens * d * FP32 + tokens * ((3 * m + 2 * d) * b + ((m + d) * FP32 if b != FP32 else 0))
        capture_pass = B * T * inference_per_token(s, T, padded)
        parts.update({"trainable state": trainable,
                      "activations": max(saved + max(entry, backward), capture_pass)})
        join = min(JOIN_CACHE_BYTES, _used(steps, None if nf is None or nr is None else nf * nr) * rows * T * mask)
        wanted = captures + join
        settings = {"method": spec.name, "batch_size": B, "max_tokens": T, "steps": steps, "layer": layer,
                    "window": w, "blocks_run_per_step": runs}
    elif spec.name == "mrp":
        sites = sorted({int(x) if int(x) != -1 else max(1, min(s.layers - 2, round(2 * s.layers / 3)))
                        for x in hp.layers})
        start = 0 if hp.placement == "stream" else sites[0]
        runs = s.layers - start
        k = int(hp.k)
        per_capture = B * T * (d * b + rotary + mask)
        captures = (_used(steps, nf) + _used(steps, nr)) * per_capture if steps else 0
        trainable = 4 * len(sites) * k * d * FP32
        saved = runs * tokens * saved_per_token(s, T, padded) + len(sites) * tokens * 2 * d * FP32
        n_f = n_r = B * T  # loss tokens: at most every token of a batch
        # forget log-probs and the KL's edited and original log-softmax rows, the KL's temporaries,
        # and the backward's gradient rows (float32, full vocabulary)
        extra = 0 if b == FP32 else b
        logits = s.vocab * (n_f * (2 * FP32 + extra) + n_r * (3 * FP32 + extra) + 2 * max(n_f, n_r) * FP32) \
            if hp.retain_loss == "kl" else s.vocab * (n_f + n_r) * (3 * FP32 + extra)
        stats = 2 * d * d * 8 + 8 * d * d * 8  # two Gram matrices, the eigen-solve's work (float64)
        step = saved + tokens * d * (FP32 + b) + (logits if steps else 0)
        init_pass = B * T * inference_per_token(s, T, padded) + stats
        kl_refs = min(KL_REFERENCE_BYTES, _used(steps, nr) * n_r * d * b) if hp.retain_loss == "kl" and steps else 0
        parts.update({"trainable state": trainable, "activations": max(step, init_pass)})
        wanted = captures + kl_refs
        settings = {"method": "mrp", "batch_size": B, "max_tokens": T, "steps": steps, "sites": sites, "k": k,
                    "blocks_run_per_step": runs, "retain_loss": hp.retain_loss}
    else:
        raise UserError(f"the memory planner has no estimate for method {method!r}")
    room = _cache_room(device, free)
    plan = Plan(f"fit {spec.name}", parts, settings, wanted, min(wanted, room))
    if wanted > room:
        plan.notes.append(f"the captures would take {_gb(wanted)} GB; the engine keeps "
                          + (f"{_gb(room)} GB of them" if free is not None or not device.startswith("cuda") else
                             f"at most {CACHE_SHARE:.0%} of the free memory")
                          + " and recomputes the rest when read")
    return plan


def mcq_groups(tokenizer, data, letter: bool = False) -> list[tuple[int, list[int]]]:
    """The scorer's contexts for ``data``'s MCQ sets (forget and retain scored in one pass):
    (context tokens, continuation tokens of every pair that shares it), from the stems, the
    subject-blind stems and, with ``letter``, the lettered prompts as evaluation/mcq.py builds
    them (one forward per distinct context)."""
    from unlearnviz.data.batching import encode_pair
    from unlearnviz.evaluation.mcq import LETTERS, blind_default, letter_prompt

    groups: dict[tuple[int, ...], list[int]] = {}
    for it in [*data.forget_mcq, *data.retain_mcq]:
        pairs = [(it.question, " " + c) for c in it.choices]
        pairs += [(it.blind_question or blind_default(it), " " + c) for c in it.choices]
        if letter:
            pairs += [(letter_prompt(it), " " + LETTERS[i]) for i in range(len(it.choices))]
        for ctx, cont in pairs:
            c, x = encode_pair(tokenizer, ctx, cont)
            groups.setdefault(tuple(c), []).append(len(x))
    return [(len(c), conts) for c, conts in groups.items()]


def _score_batches(groups: Sequence[tuple[int, list[int]]], budget: int) -> list[list[tuple[int, list[int]]]]:
    """The scorer's own batches (``scoring.pack_contexts``) of contexts given by their lengths:
    each group is (context tokens, continuation tokens), a tail row per continuation of more than
    one token. No sliding window: a plan is for the widest batch."""
    ordered = sorted(groups, key=lambda g: -g[0])
    keys = [(range(g[0]), i) for i, g in enumerate(ordered)]
    tails = {k: (max(g[1]) - 1, sum(c > 1 for c in g[1])) for k, g in zip(keys, ordered)}
    return [[ordered[k[1]] for k in batch] for batch in pack_contexts(keys, tails, budget, None)]


def plan_evaluate(s: Shapes, groups: Sequence[tuple[int, list[int]]] | None = None,
                  ppl_lengths: Sequence[int] | None = None, max_tokens: int = AUTO,
                  edits_bytes: int = 0) -> Plan:
    """The peak of the MCQ evaluation (cloze and floor scoring, then perplexity). Per scoring
    batch: the contexts' forward (its KV cache, one layer's transients, its last hidden states
    kept), then the tails' forward on the cache reordered to one row per continuation; per
    perplexity batch a forward of 16 texts; and one chunk of float32 logits with its
    log-softmax (LOGIT_BUDGET). ``splits``: ``mcq_groups``; None: 64 items whose stems have
    max_tokens (at most STEM_TOKENS) tokens, four 8-token choices."""
    T = resolve_tokens(max_tokens, s)
    if groups is None:  # each item's stem and its subject-blind stem
        groups = [(min(T, STEM_TOKENS), [CHOICE_TOKENS] * CHOICES)] * 128
    b, kv, edited = s.dtype_bytes, kv_per_token(s), bool(edits_bytes)
    worst = 0
    for batch in _score_batches(groups, SCORE_TOKENS):
        width = max(g[0] for g in batch)
        tails = [c - 1 for g in batch for c in g[1] if c > 1]
        tail_w = max(tails, default=0)
        ctx = len(batch) * width
        kept = ctx * s.hidden * b  # the contexts' last hidden states
        ctx_phase = ctx * (kv + inference_per_token(s, width, True, edited))
        tail_phase = len(tails) * ((width + tail_w) * kv + tail_w * (
            inference_per_token(s, width + tail_w, True, edited) + s.hidden * b)) if tails else 0
        worst = max(worst, kept + max(ctx_phase, tail_phase))
    n_ppl = min(PPL_TOKENS, max(ppl_lengths) if ppl_lengths else T)
    ppl = PPL_BATCH * n_ppl * (inference_per_token(s, n_ppl, True, edited) + 2 * s.hidden * b)
    logits = 2 * min(LOGIT_BUDGET, SCORE_TOKENS * s.vocab) * FP32
    parts = {"weights": s.weight_bytes, **({"stacked edits": edits_bytes} if edits_bytes else {}),
             "activations": max(worst, ppl), "logits": logits}
    return Plan("evaluate (MCQ + perplexity)", parts, {"contexts": len(groups), "ppl_tokens": n_ppl})


def plan_capture(s: Shapes, n_texts: int = CAPTURE_TEXTS, max_tokens: int = AUTO, layers: int | None = None,
                 batch_size: int = CAPTURE_BATCH, edits_bytes: int = 0) -> Plan:
    """The peak of an activation capture (pooled means of every layer's residual stream, the
    original and the edited rows in one pass where an edit is given): one layer's transients
    for a batch, the hook's float32 copy and pooling product, and the pooled results."""
    T = resolve_tokens(max_tokens, s)
    n_layers = s.layers if layers is None else int(layers)
    tokens = batch_size * T
    pair = 2 if edits_bytes else 1
    b = s.dtype_bytes
    hook = tokens * s.hidden * (FP32 + (FP32 if b != FP32 else 0))  # h.float() (a copy below fp32), h × mask
    results = pair * n_texts * n_layers * s.hidden * FP32
    parts = {"weights": s.weight_bytes, **({"stacked edits": edits_bytes} if edits_bytes else {}),
             "activations": tokens * inference_per_token(s, T, True, bool(edits_bytes)) + hook, "results": results}
    return Plan("activation capture", parts, {"texts": n_texts, "max_tokens": T, "layers": n_layers,
                                               "batch_size": batch_size})


def plan_chat(s: Shapes, prompt_tokens: int = 64, new_tokens: int = 48, edits_bytes: int = 0) -> Plan:
    """The peak of side-by-side generation: four rows' KV cache over prompt and answer, and
    the prompt's forward (one layer's transients)."""
    total = prompt_tokens + new_tokens
    parts = {"weights": s.weight_bytes, **({"stacked edits": edits_bytes} if edits_bytes else {}),
             "kv cache": CHAT_ROWS * total * kv_per_token(s),
             "activations": CHAT_ROWS * prompt_tokens * inference_per_token(s, prompt_tokens, False,
                                                                            bool(edits_bytes))
             + CHAT_ROWS * s.vocab * 2 * FP32}
    return Plan("chat (side by side)", parts, {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens})


def plan_actions(s: Shapes, methods: Sequence[str] = ("rmu", "srmu", "mrp"), overrides: dict | None = None,
                 device: str = "cpu", free: int | None = None) -> list[Plan]:
    """Every action's plan at the same settings (``overrides``: batch_size, max_tokens, steps...,
    applied to each method where it has the field)."""
    overrides = dict(overrides or {})
    plans = []
    for method in methods:
        names = {f.name for f in dataclasses.fields(get_method(method).hparams_cls)}
        plans.append(plan_fit(s, method, {k: v for k, v in overrides.items() if k in names}, device=device,
                              free=free))
    T = overrides.get("max_tokens", AUTO)
    plans += [plan_evaluate(s, max_tokens=T), plan_capture(s, max_tokens=T), plan_chat(s)]
    return plans


# ------------------------------------------------------------------------------------------
# What the device has, and refusing what will not fit
# ------------------------------------------------------------------------------------------


def available_bytes(device: torch.device | str) -> int:
    """Bytes free now on ``device``: CUDA's free memory, else the RAM available."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(device)[0])
    return available_ram()


def check_fits(plan: Plan, budget: int, what: str | None = None) -> None:
    """Refuse ``plan`` in one line naming both figures when its peak is over ``budget`` (the
    bytes the action may use, the model's own weights included)."""
    if plan.peak_bytes > budget:
        raise UserError(f"this {what or plan.action} needs ~{_gb(plan.peak_bytes)} GB, the device has "
                        f"{_gb(budget)} GB available: lower batch_size or max_tokens, or use a larger device "
                        f"({plan.line()})")
