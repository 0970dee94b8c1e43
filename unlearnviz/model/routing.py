"""Per-call edit routing: one set of permanent hooks, a per-thread plan of what they do.

The loaded model's weights are never changed. Instead, hooks installed once on every decoder
block and every MLP output projection consult the *current plan* (a ContextVar, so every thread
and every concurrent user has its own) and add parameter deltas or apply projections only to the
batch rows the plan names. With no plan active the hooks return at once, so the plain model runs
unchanged. This gives "original and edited in one batched forward" and isolates concurrent users.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import re
import threading
import types
import weakref
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from unlearnviz.errors import UserError
from unlearnviz.model.adapter import (
    BLOCK_PATHS,
    ArchitectureAdapter,
    block_output_tensor,
    replace_block_output,
)

_BLOCK_OF_NAME = re.compile("^(?:" + "|".join(re.escape(p) for p in BLOCK_PATHS) + r")\.(\d+)\.")


def block_of(name: str) -> int | None:
    """The decoder block a parameter or module name belongs to ("model.layers.3.mlp…" → 3), or
    None for what sits outside the blocks (embeddings, the final norm, the unembedding)."""
    m = _BLOCK_OF_NAME.match(name)
    return None if m is None else int(m.group(1))


class StopForward(Exception):
    """Raised by a capture hook once the deepest requested layer has run (early stop)."""


@dataclass(frozen=True)
class StreamProjection:
    """MRP's "stream" placement: the subspace Q is removed from every write into the residual
    stream from the embedding up to block ``last``.

    The stream entering block 0 becomes e − (e − μ)QᵀQ (μ = ``offset``, or 0 when None) and the
    outputs of the attention and MLP output projections of blocks 0..``last`` become w − wQᵀQ.
    The stream at every block ≤ ``last`` then has no variation along Q (its component there is
    μQᵀ), and, unlike a projection of a block's output, which the next block reads through a
    norm, every step is a linear map of a weight or an embedding row, so it folds exactly into a
    standard checkpoint (``methods.edit.export_checkpoint``). Position-independent by design: no
    ``spare_first``.
    """

    q: torch.Tensor  # [r, d], orthonormal rows
    offset: torch.Tensor | None  # μ [d] (centred) or None (linear)
    last: int  # deepest block whose writes are projected

    def merged(self, other: StreamProjection) -> StreamProjection:
        """One stream over the union of both bases, down to the deeper ``last``. μ: this one's
        where set (as site offsets: the first request's mean at a site is kept), else the other's."""
        return StreamProjection(q=orthonormal_rows(torch.cat([self.q, other.q.to(self.q.device)])),
                                offset=self.offset if self.offset is not None else other.offset,
                                last=max(self.last, other.last))


@dataclass
class RoutingPlan:
    """What the hooks do during one call.

    - ``deltas[layer]``: an [out, in] tensor added to that block's MLP output projection.
    - ``projections[layer]``: Q with orthonormal rows [r, d]; the block output h becomes
      h − h QᵀQ, or with ``offsets[layer]`` = μ the affine (centred) projection
      h − (h − μ)QᵀQ, which removes the variation along Q but keeps the mean there. With
      ``spare_first``, position 0 of a multi-token forward is left alone: in many models it is an
      attention sink whose residual norm is hundreds of times the others (docs/findings.md), and
      projecting it wrecks the model while carrying no content of its own.
    - ``stream``: a :class:`StreamProjection` (MRP placement "stream"): the subspace is removed
      from the embedding and from every attention/MLP output projection of blocks 0..last.
    - ``weights``: parameter name (as ``model.named_parameters()`` gives it) → a delta of that
      parameter's shape: the edited rows run the module with parameter + delta. What an imported
      checkpoint differs by; any module (linear layers, embeddings, norms), see :class:`Router`.
    - ``lora``: module name → (A [r, in], B [out, r]), the scale folded into B: the module's
      output gains x AᵀBᵀ on the edited rows (a LoRA adapter, kept low-rank).
    - ``rows``: a bool/float mask over the batch rows the edit applies to (None = all rows).
    - ``capture``: layer → callback(hidden) receiving each block's (edited) output.
    - ``stop_after``: raise StopForward after this block's output has been captured.
    - ``block_input_hook``: layer → callback(args, kwargs) seeing a block's inputs (the engine
      uses it to cache the inputs of the first trained block). ``args`` holds only the hidden
      states; every other positional argument (GPT-2 passes its attention mask positionally) is
      passed by name in ``kwargs``, so ``kwargs`` alone reproduces the call.
    - ``mlp_input_capture``: layer → callback(x) receiving the input of that block's MLP output
      projection (the engine caches it for the first trained block, whose delta is then linear).
    """

    deltas: dict[int, torch.Tensor] = field(default_factory=dict)
    projections: dict[int, torch.Tensor] = field(default_factory=dict)
    offsets: dict[int, torch.Tensor] = field(default_factory=dict)
    spare_first: bool = False  # leave sequence position 0 (the attention sink) unprojected
    stream: StreamProjection | None = None
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    rows: torch.Tensor | None = None
    capture: dict[int, Callable[[torch.Tensor], None]] = field(default_factory=dict)
    stop_after: int | None = None
    block_input_hook: dict[int, Callable[[tuple, dict], None]] = field(default_factory=dict)
    mlp_input_capture: dict[int, Callable[[torch.Tensor], None]] = field(default_factory=dict)

    def edited_layers(self) -> list[int]:
        """Blocks the edit touches: deltas, site projections, a stream's last block, and the blocks
        of changed parameters and LoRA modules (an embedding or final norm is in no block)."""
        layers = set(self.deltas) | set(self.projections)
        if self.stream is not None:
            layers.add(self.stream.last)
        layers |= {b for b in map(block_of, [*self.weights, *self.lora]) if b is not None}
        return sorted(layers)

    def is_empty(self) -> bool:
        """Whether the plan changes nothing (captures and hooks alone change no output)."""
        return not (self.deltas or self.projections or self.stream is not None or self.weights or self.lora)

    def merged(self, other: RoutingPlan) -> RoutingPlan:
        """This plan's edits plus another's (deltas summed, projections and streams stacked)."""
        deltas = dict(self.deltas)
        for k, v in other.deltas.items():
            deltas[k] = deltas[k] + v if k in deltas else v
        projections = dict(self.projections)
        for k, v in other.projections.items():
            projections[k] = orthonormal_rows(torch.cat([projections[k], v])) if k in projections else v
        stream = self.stream if other.stream is None else (
            other.stream if self.stream is None else self.stream.merged(other.stream))
        return RoutingPlan(deltas=deltas, projections=projections, offsets={**other.offsets, **self.offsets},
                           spare_first=self.spare_first or other.spare_first, stream=stream,
                           weights=sum_weights(self.weights, other.weights), lora=join_lora(self.lora, other.lora),
                           rows=self.rows,
                           capture={**self.capture, **other.capture},
                           stop_after=other.stop_after if other.stop_after is not None else self.stop_after,
                           block_input_hook={**self.block_input_hook, **other.block_input_hook},
                           mlp_input_capture={**self.mlp_input_capture, **other.mlp_input_capture})


def sum_weights(*parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameter deltas of several edits as one: summed where two change the same parameter."""
    out: dict[str, torch.Tensor] = {}
    for part in parts:
        for k, v in part.items():
            out[k] = out[k] + v.to(out[k].device) if k in out else v
    return out


def join_lora(*parts: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """LoRA factors of several edits as one per module: B₁A₁ + B₂A₂ = [B₁ B₂][A₁; A₂], still low-rank."""
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for part in parts:
        for k, (a, b) in part.items():
            if k in out:
                a0, b0 = out[k]
                out[k] = (torch.cat([a0, a.to(a0.device)]), torch.cat([b0, b.to(b0.device)], dim=1))
            else:
                out[k] = (a, b)
    return out


def _independent_rows(directions: torch.Tensor, rel_tol: float = 1e-5) -> list[int]:
    """Indices of the rows that add a new direction to the rows before them (Gram-Schmidt).

    Decided in float64 on the CPU whatever the rows' device: Apple's MPS has no float64, and
    the loop over a few rows (one norm read back per row) runs faster there than as tiny
    device kernels with a synchronisation each."""
    d = directions.detach().to(device="cpu", dtype=torch.float64)
    if d.numel() == 0:
        return []
    tol = max(rel_tol * float(d.norm(dim=1).max()), 1e-12)
    basis: list[torch.Tensor] = []
    keep = []
    for i, row in enumerate(d):
        r = row
        for _ in range(2):  # re-orthogonalise once: classical Gram-Schmidt is unstable alone
            if basis:
                b = torch.stack(basis)
                r = r - (b @ r) @ b
        n = float(r.norm())
        if n > tol:
            basis.append(r / n)
            keep.append(i)
    return keep


def orthonormal_rows(directions: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis [r, d] (float32) of the row space of ``directions`` [k, d].

    Zero or dependent rows are dropped (the released MRP code's zero-row init projected out
    coordinate 0 by accident; we never add a direction that was not asked for). The rank is
    decided in float64 Gram-Schmidt over the rows in order, then the kept rows go through QR,
    so the result stays differentiable in ``directions`` and row i spans what rows 0..i add.
    (QR alone on a rank-deficient input mis-measures every row after a dependent one and can
    silently drop real directions.)
    """
    d32 = directions.float()
    keep = _independent_rows(d32)
    if not keep:
        return d32.new_zeros((0, d32.shape[-1]))
    q, _ = torch.linalg.qr(d32[keep].T)  # q: [d, r]
    return q.T.contiguous()


# model key (id of its blocks ModuleList) → the plan active for that model in this context.
_PLANS: ContextVar[dict[int, RoutingPlan] | None] = ContextVar("unlearnviz_plans", default=None)
# model key → the hook handles installed on it, so that a second Router on the same model
# replaces the first one's hooks instead of applying every edit twice.
_INSTALLED: dict[int, list] = {}
_CACHE_KWARGS = ("past_key_values", "past_key_value", "layer_past")


def _current_plan(key: int) -> RoutingPlan | None:
    plans = _PLANS.get()
    return None if plans is None else plans.get(key)


def _positional_names(block) -> list[str] | None:
    """Names of the block's positional parameters after the hidden states, or None."""
    try:
        params = list(inspect.signature(block.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params[1:] if p.kind in kinds]


def _row_mask(rows: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    if rows is None:
        return None
    return rows.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.dim() - 1)))


# (id of a tensor, device, dtype) → (weak reference to it, its version when copied, the copy)
_PLACED: dict[tuple[int, str, torch.dtype], tuple[weakref.ref, int, torch.Tensor]] = {}


def _version(t: torch.Tensor) -> int | None:
    try:
        return t._version
    except RuntimeError:  # an inference-mode tensor keeps no version counter: never cached
        return None


def placed(t: torch.Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``t`` on ``device`` (and in ``dtype``), copied once and reused while ``t`` is unchanged.

    An edit's tensors (a delta, a basis, a target vector) live where they were made, often the
    embedding's device; with a model spread over devices each block must read them on its own.
    Copying in every forward would move every delta once per token in generation, so the copy
    is kept (keyed by the tensor's identity and checked against its version counter, so an
    in-place change is seen) as long as ``t`` lives. A tensor that needs gradients is moved
    afresh each time (autograd must see the copy), and so is one moved under inference mode (a
    copy made there could not be used by a later training step)."""
    device = torch.device(device)
    dtype = t.dtype if dtype is None else dtype
    if t.device == device and t.dtype == dtype:
        return t
    version = _version(t)
    if t.requires_grad or version is None or torch.is_inference_mode_enabled():
        return t.to(device=device, dtype=dtype)
    key = (id(t), str(device), dtype)
    hit = _PLACED.get(key)
    if hit is not None and hit[0]() is t and hit[1] == version:
        return hit[2]
    copy = t.detach().to(device=device, dtype=dtype)
    _PLACED[key] = (weakref.ref(t, lambda _ref, k=key: _PLACED.pop(k, None)), version, copy)
    return copy


def delta_output(x: torch.Tensor, delta: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """xΔᵀ as the router adds it to an MLP output projection's output: on ``device`` (the
    module's output device; default x's) in x's dtype, the compute dtype of the module.

    In bfloat16 the delta is rounded to bfloat16 (its own relative precision, ~0.4%), never
    added to W first: W + Δ rounded to bfloat16 loses every entry of Δ below half a unit in
    the last place of W (2⁻⁹ to 2⁻⁸ of |W|), which is where small edits live, though their
    product with x, summed over the MLP's width, is not small. The product runs in the
    module's dtype, not float32: float32 GEMMs run several times slower on a GPU."""
    dev = x.device if device is None else device
    return F.linear(x.to(dev), placed(delta, dev, x.dtype))


def _project_out(x: torch.Tensor, q: torch.Tensor, offset: torch.Tensor | None,
                 rows: torch.Tensor | None) -> torch.Tensor:
    """x − (x − μ)QᵀQ in float32 (μ = 0 when ``offset`` is None), on the masked rows only."""
    qf = placed(q, x.device, torch.float32)
    xf = x.float()
    centred = xf if offset is None else xf - placed(offset, x.device, torch.float32)
    removed = (centred @ qf.T) @ qf
    mask = _row_mask(rows, removed)
    return (xf - (removed if mask is None else removed * mask)).to(x.dtype)


def _fusable(module: torch.nn.Module) -> bool:
    """Whether the MLP output projection computes x(W + Δ)ᵀ itself (see :func:`_fuse_delta`):
    our forward is installed, the weights are float32 (where that equals xWᵀ + xΔᵀ to float32
    rounding) and no accelerate hook manages the module (decided at call time, so a model cast
    to bfloat16 or dispatched after wrapping falls back to the additive hook)."""
    w = getattr(module, "weight", None)
    return (module.__dict__.get("_unlearnviz_fusable", False) and isinstance(w, torch.Tensor)
            and w.dtype == torch.float32 and w.device.type != "meta" and "_hf_hook" not in module.__dict__)


def _fused(module: torch.nn.Module, plan: RoutingPlan) -> bool:
    """Whether ``module``'s own forward already used W + Δ (every row edited, float32 weights)."""
    return plan.rows is None and _fusable(module)


class _Restore:
    """A handle that puts a module's own forward back (removed with the hooks). Only our own
    forward is removed: accelerate's wrapper (or anyone else's) stays."""

    def __init__(self, module: torch.nn.Module, forward: Callable | None):
        self.module, self.forward = module, forward

    def remove(self) -> None:
        own = self.module.__dict__.get("forward")
        if own is not None and self.forward is not None and getattr(own, "__func__", None) is self.forward:
            del self.module.forward
        self.module.__dict__.pop("_unlearnviz_fusable", None)


def _fuse_delta(module: torch.nn.Module, key: int, layer: int) -> _Restore:
    """Replace the MLP output projection's forward, once: where the plan has a delta for this
    layer on every row, compute x(W + Δ)ᵀ in one matmul instead of xWᵀ + xΔᵀ (the training
    hot path: one GEMM fewer forward and backward per trained block; on the default model's
    576×1536 projection, 384 tokens, forward and backward took ~39 ms against ~58 ms on one CPU
    thread, and the two agree to 4e-7 of the output in float32).

    Only float32 weights fuse: in bfloat16, W + Δ rounded to bfloat16 drops small deltas, so
    the additive hook (:func:`delta_output`) runs there, on every row and on the chat's chosen
    rows alike. Modules that accelerate dispatched (``_hf_hook``: offloaded to the CPU or disk,
    or spread over devices) keep their forward, which loads the weights before each call;
    per-row plans (the side-by-side chat) and quantised or unusual modules keep the additive
    hook too."""
    plain = isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.is_floating_point() and (
        type(module) is torch.nn.Linear or type(module).__name__ == "Conv1D") and "_hf_hook" not in module.__dict__
    owner = weakref.ref(module)

    def forward(self, x, *args, **kwargs):
        plan = _current_plan(key)
        # a deep copy carries this bound method, rebound to the copy: it stays plain
        if (plan is None or layer not in plan.deltas or plan.rows is not None or self is not owner()
                or not _fusable(self)):
            return type(self).forward(self, x, *args, **kwargs)
        w = self.weight.T if type(self).__name__ == "Conv1D" else self.weight
        delta = placed(plan.deltas[layer], w.device, w.dtype)
        return F.linear(x, (w + delta).to(x.dtype), self.bias)

    if not plain:
        return _Restore(module, None)
    module.forward = types.MethodType(forward, module)
    module._unlearnviz_fusable = True
    return _Restore(module, forward)


def _plan_parts(plan: RoutingPlan) -> list[tuple[str, dict]]:
    stream = plan.stream
    return [("d", plan.deltas), ("p", plan.projections), ("o", plan.offsets),
            ("s", {} if stream is None else {stream.last: stream.q}),
            ("m", {} if stream is None or stream.offset is None else {stream.last: stream.offset}),
            ("w", plan.weights), ("la", {k: ab[0] for k, ab in plan.lora.items()}),
            ("lb", {k: ab[1] for k, ab in plan.lora.items()})]


def plan_identity(plan: RoutingPlan) -> tuple[tuple, list[torch.Tensor]] | None:
    """What a plan's content hash depends on, read without touching tensor data: the
    position-0 rule, where each tensor sits and its version counter, and the tensors themselves
    (compared by identity). None where a tensor keeps no version counter."""
    ident: list = [plan.spare_first]
    tensors_seen = []
    for kind, tensors in _plan_parts(plan):
        for layer in sorted(tensors):
            t = tensors[layer]
            v = _version(t)
            if v is None:
                return None
            ident.append((kind, layer, v))
            tensors_seen.append(t)
    return tuple(ident), tensors_seen


def content_hash_uncached(plan: RoutingPlan | None) -> str:
    """:func:`plan_content_hash` computed afresh (reads every tensor; the memo's test oracle)."""
    if plan is None or plan.is_empty():
        return "none"
    h = hashlib.blake2b(digest_size=12)
    h.update(b"spare" if plan.spare_first else b"all")
    for kind, tensors in _plan_parts(plan):
        for layer in sorted(tensors):
            t = tensors[layer].detach().float().cpu().contiguous()
            h.update(f"{kind}{layer}:{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()


def plan_content_hash(plan: RoutingPlan | None) -> str:
    """Content hash of everything a plan changes: deltas, site projections with their offsets
    and position-0 rule, and a stream projection ("none" for no plan or an empty one). Caches of
    activations and scores key on it.

    Memoised on the plan: the score cache asks once per batch of an evaluation, and reading
    every delta back (at 7B, 3 × 58 M floats through the CPU) each time cost more than the
    lookup saved. The memo is keyed by each tensor's identity and version counter, so a plan
    whose dicts are changed, or whose tensors are written in place, is hashed again."""
    if plan is None or plan.is_empty():
        return "none"
    ident = plan_identity(plan)
    memo = plan.__dict__.get("_content_hash")
    if (ident is not None and memo is not None and memo[0] == ident[0] and len(memo[1]) == len(ident[1])
            and all(r() is t for r, t in zip(memo[1], ident[1]))):
        return memo[2]
    digest = content_hash_uncached(plan)
    if ident is not None:
        plan.__dict__["_content_hash"] = (ident[0], [weakref.ref(t) for t in ident[1]], digest)
    return digest


class Router:
    """Installs the permanent hooks on one model (once per process) and applies plans.

    Blocks and MLP output projections are hooked at once (every fitted edit acts there). A plan's
    parameter deltas and LoRA factors (an imported checkpoint, any module) are served by hooks
    installed on first use on just the modules they name, so a model nobody imports into runs
    no extra hooks."""

    def __init__(self, adapter: ArchitectureAdapter, model: torch.nn.Module | None = None):
        self.adapter = adapter
        self._key = id(adapter.blocks)
        for old in _INSTALLED.pop(self._key, []):  # a model is hooked once, whoever wraps it
            old.remove()
        self._model = None if model is None else weakref.ref(model)
        self._owners: dict[str, list[tuple[str, str]]] | None = None
        self._modules: dict[str, torch.nn.Module] = {}
        self._param_hooked: set[str] = set()
        self._install_lock = threading.Lock()
        self._handles = []
        for layer, block in enumerate(adapter.blocks):
            # Hooks compare the module they fire on with the one they were installed on, so a
            # deep copy of a hooked model (which carries the same hook functions) stays plain.
            mlp = adapter.mlp_out(layer)
            self._handles.append(block.register_forward_hook(
                self._block_hook(self._key, layer, weakref.ref(block))))
            self._handles.append(block.register_forward_pre_hook(
                self._block_pre_hook(self._key, layer, _positional_names(block), weakref.ref(block)),
                with_kwargs=True))
            self._handles.append(mlp.register_forward_hook(self._mlp_hook(self._key, layer, weakref.ref(mlp))))
            self._handles.append(_fuse_delta(mlp, self._key, layer))
            attn = adapter.attn_out(layer)
            if attn is not None:
                self._handles.append(attn.register_forward_hook(
                    self._attn_hook(self._key, layer, weakref.ref(attn))))
        _INSTALLED[self._key] = self._handles

    @staticmethod
    def _mlp_hook(key: int, layer: int, owner: weakref.ref):
        def hook(module, inputs, output):
            plan = _current_plan(key)
            if plan is None or module is not owner():
                return None
            x = inputs[0]
            if layer in plan.mlp_input_capture:
                plan.mlp_input_capture[layer](x)
            stream = plan.stream if plan.stream is not None and layer <= plan.stream.last else None
            if layer not in plan.deltas and stream is None:
                return None
            if layer in plan.deltas and not _fused(module, plan):
                # on the output's device: accelerate moves a module's inputs inside its forward,
                # so x may still be on the previous block's device
                add = delta_output(x, plan.deltas[layer], output.device).to(output.dtype)
                mask = _row_mask(plan.rows, add)
                output = output + (add if mask is None else add * mask)
            if stream is not None:  # the delta's write is projected too (export folds W+Δ, then P)
                output = _project_out(output, stream.q, None, plan.rows)
            return output
        return hook

    @staticmethod
    def _attn_hook(key: int, layer: int, owner: weakref.ref):
        """Stream placement: project what the attention output projection writes."""
        def hook(module, inputs, output):
            plan = _current_plan(key)
            if plan is None or plan.stream is None or layer > plan.stream.last or module is not owner():
                return None
            if isinstance(output, torch.Tensor):
                return _project_out(output, plan.stream.q, None, plan.rows)
            return (_project_out(output[0], plan.stream.q, None, plan.rows), *output[1:])
        return hook

    @staticmethod
    def _block_pre_hook(key: int, layer: int, names: list[str] | None, owner: weakref.ref):
        def hook(module, args, kwargs):
            plan = _current_plan(key)
            if plan is None or module is not owner():
                return None
            if layer in plan.block_input_hook:
                # the callback sees the block's input *before* the stream projection below, so a
                # window replayed from block 0 applies the (trainable) projection itself
                seen_args, seen_kwargs = args, kwargs
                if len(args) > 1 and names is not None and len(args) - 1 <= len(names):
                    named = dict(zip(names, args[1:], strict=False))
                    seen_args, seen_kwargs = args[:1], {**named, **kwargs}
                plan.block_input_hook[layer](seen_args, seen_kwargs)
            if layer == 0 and plan.stream is not None:  # the embedding's write: e − (e − μ)QᵀQ
                s = plan.stream
                if args:
                    return (_project_out(args[0], s.q, s.offset, plan.rows), *args[1:]), kwargs
                if "hidden_states" in kwargs:
                    return args, {**kwargs, "hidden_states": _project_out(kwargs["hidden_states"], s.q,
                                                                          s.offset, plan.rows)}
            return None
        return hook

    @staticmethod
    def _block_hook(key: int, layer: int, owner: weakref.ref):
        def hook(module, inputs, output):
            plan = _current_plan(key)
            if plan is None or module is not owner():
                return None
            changed = None
            if layer in plan.projections:
                h = block_output_tensor(output)
                q = placed(plan.projections[layer], h.device, torch.float32)
                centred = h.float()
                if layer in plan.offsets:
                    centred = centred - placed(plan.offsets[layer], h.device, torch.float32)
                removed = (centred @ q.T) @ q
                if plan.spare_first and removed.dim() == 3 and removed.shape[1] > 1:
                    removed = torch.cat([torch.zeros_like(removed[:, :1]), removed[:, 1:]], dim=1)
                mask = _row_mask(plan.rows, removed)
                h_new = (h.float() - (removed if mask is None else removed * mask)).to(h.dtype)
                changed = replace_block_output(output, h_new)
            if layer in plan.capture:
                plan.capture[layer](block_output_tensor(changed if changed is not None else output))
            if plan.stop_after is not None and layer >= plan.stop_after:
                raise StopForward
            return changed
        return hook

    def owners(self) -> dict[str, list[tuple[str, str]]]:
        """Parameter name (``named_parameters()``'s, shared weights named once) → every (module
        name, attribute) holding it: a tied unembedding reads the embedding's matrix, so a delta
        of that matrix reaches both modules."""
        if self._owners is None:
            model = None if self._model is None else self._model()
            if model is None:
                raise UserError("this model was wrapped without its root module: parameter deltas cannot be routed")
            canonical = {id(p): n for n, p in model.named_parameters()}
            owners: dict[str, list[tuple[str, str]]] = {}
            for mname, module in model.named_modules():
                for local, p in module.named_parameters(recurse=False):
                    if id(p) in canonical:
                        owners.setdefault(canonical[id(p)], []).append((mname, local))
                        self._modules[mname] = module
            self._owners = owners
        return self._owners

    def _ensure_param_hooks(self, plan: RoutingPlan) -> None:
        """Hook (once) every module whose parameters the plan changes or that carries LoRA factors."""
        owners = self.owners()
        wanted = set()
        for name in plan.weights:
            if name not in owners:
                raise UserError(f"the edit changes {name!r}, which is not a parameter of this model")
            wanted |= {m for m, _ in owners[name]}
        for name in plan.lora:
            module = self._modules.get(name)
            if module is None or not isinstance(module, torch.nn.Linear):
                raise UserError(f"the edit carries LoRA factors for {name!r}, which is not a linear layer of this model")
            wanted.add(name)
        missing = wanted - self._param_hooked
        if not missing:
            return
        with self._install_lock:
            for name in sorted(missing - self._param_hooked):
                module = self._modules[name]
                # prepended: the delta's write is part of the module's output before any other hook
                # (a stream projection, a capture) sees it
                self._handles.append(module.register_forward_hook(
                    _param_hook(self._key, name, weakref.ref(module), owners), with_kwargs=True, prepend=True))
                self._param_hooked.add(name)

    @contextlib.contextmanager
    def apply(self, plan: RoutingPlan | None) -> Iterator[None]:
        """Run the body with ``plan`` active for this model, in this thread/context only.

        Plans are per model: a plan applied to one model never reaches another model's hooks.
        """
        if plan is not None and (plan.weights or plan.lora):
            self._ensure_param_hooks(plan)
        plans = dict(_PLANS.get() or {})
        if plan is None:
            plans.pop(self._key, None)
        else:
            plans[self._key] = plan
        token = _PLANS.set(plans)
        try:
            yield
        finally:
            _PLANS.reset(token)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        if _INSTALLED.get(self._key) is self._handles:
            del _INSTALLED[self._key]
        self._handles = []


def _module_weights(plan: RoutingPlan, owners: dict[str, list[tuple[str, str]]]) -> dict[str, dict[str, torch.Tensor]]:
    """The plan's parameter deltas by module: module name → {attribute: delta} (memoised on the plan)."""
    memo = plan.__dict__.get("_by_module")
    if memo is not None and memo[0] is plan.weights and memo[1] == len(plan.weights):
        return memo[2]
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    for name, delta in plan.weights.items():
        for mname, local in owners.get(name, []):
            by_module.setdefault(mname, {})[local] = delta
    plan.__dict__["_by_module"] = (plan.weights, len(plan.weights), by_module)
    return by_module


def _with_parameters(module: torch.nn.Module, params: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A shallow copy of ``module`` whose own parameters are ``params`` (plain tensors allowed);
    its submodules, buffers and hooks are the module's own, and the module is left untouched, so
    other threads running it meanwhile see its real weights."""
    import copy

    clone = copy.copy(module)
    clone._parameters = {**module._parameters, **params}  # noqa: SLF001 - what functional_call swaps, on a copy
    # accelerate's device hook (any device_map) wraps ``forward`` in an instance attribute bound to
    # the module itself, which would read the base weights: the copy runs its class's own forward
    clone.__dict__.pop("forward", None)
    clone.__dict__.pop("_old_forward", None)
    return clone


def _param_hook(key: int, name: str, owner: weakref.ref, owners: dict[str, list[tuple[str, str]]]):
    """The edited rows of module ``name`` as if its parameters were parameter + delta.

    Linear layers (and GPT-2's Conv1D) add xΔᵀ + Δb and plain embeddings add Δ[ids], in the
    compute dtype (as :func:`delta_output`, and for the same reason: a delta added to a bfloat16
    weight first loses its small entries); LoRA factors add x AᵀBᵀ. Any other module (a norm, a
    scaled embedding) is run again with parameter + delta and its edited rows taken from that run,
    which is exact for any forward, at the cost of a second call of that module. That second call
    runs on a shallow copy holding the edited parameters (:func:`_with_parameters`), never on the
    module itself: the base model is shared by every session's thread, and swapping its parameters
    for the call (``torch.func.functional_call``) let a concurrent chat, evaluation or fit of
    another session compute with this edit's weights (found by a run of the tests/test_soak.py
    scenario: a fingerprint read mid-swap differed)."""

    def hook(module, args, kwargs, output):
        plan = _current_plan(key)
        if plan is None or module is not owner() or (not plan.weights and not plan.lora):
            return None
        entries = _module_weights(plan, owners).get(name, {}) if plan.weights else {}
        lora = plan.lora.get(name)
        if not entries and lora is None:
            return None
        if not isinstance(output, torch.Tensor):
            raise UserError(f"cannot route a parameter delta through {name!r}: its output is not one tensor")
        x = args[0] if args else next(iter(kwargs.values()))
        dev = output.device
        conv = type(module).__name__ == "Conv1D"
        additive = set(entries) <= {"weight", "bias"} and (isinstance(module, torch.nn.Linear) or conv)
        if type(module) is torch.nn.Embedding and set(entries) == {"weight"} and lora is None:
            add = F.embedding(x.to(dev), placed(entries["weight"], dev, output.dtype))
        elif additive:
            xd = x.to(dev)
            add = torch.zeros((), device=dev, dtype=output.dtype)
            if "weight" in entries:
                w = placed(entries["weight"], dev, xd.dtype)
                add = add + (xd @ w if conv else F.linear(xd, w))
            if "bias" in entries:
                add = add + placed(entries["bias"], dev, output.dtype)
            if lora is not None:
                a, b = lora
                add = add + F.linear(F.linear(xd, placed(a, dev, xd.dtype)), placed(b, dev, xd.dtype))
        else:
            if lora is not None:
                raise UserError(f"LoRA factors on {name!r} together with changes of its other parameters are not supported")
            params = dict(module.named_parameters(recurse=False))
            if any(p.is_meta for p in params.values()):
                raise UserError(f"the edit changes {name!r}, whose weights are offloaded (on the meta device): load "
                                "the model without CPU/disk offload")
            edited = {k: (p + placed(entries[k], p.device, p.dtype)) if k in entries else p for k, p in params.items()}
            plans = dict(_PLANS.get() or {})
            plans.pop(key, None)  # the second call runs plain, not through this hook again
            token = _PLANS.set(plans)
            try:
                again = _with_parameters(module, edited)(*args, **kwargs)
            finally:
                _PLANS.reset(token)
            mask = _row_mask(plan.rows, again)
            return again if mask is None else torch.where(mask > 0, again, output)
        add = add.to(output.dtype)
        mask = _row_mask(plan.rows, add if add.dim() == output.dim() else output)
        return output + (add if mask is None else add * mask)

    return hook


def run_block_window(adapter: ArchitectureAdapter, start: int, stop: int, hidden: torch.Tensor,
                     kwargs: dict[int, dict]) -> torch.Tensor:
    """Run blocks start..stop (inclusive) directly on a cached block input.

    ``kwargs[layer]`` is what the model passed to that block (captured once through
    ``block_input_hook``), so rotary embeddings, masks (Gemma's sliding-window layers differ per
    block) and positions are right for any family without re-deriving them. The KV cache the
    model passed along is dropped: replaying a block must not append to it.
    """
    h = hidden
    for layer in range(start, stop + 1):
        kw = {k: v for k, v in kwargs[layer].items() if k not in _CACHE_KWARGS and k != "hidden_states"}
        if "use_cache" in kw:
            kw["use_cache"] = False
        h = block_output_tensor(adapter.blocks[layer](h, **kw))
    return h
