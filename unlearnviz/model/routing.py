"""Per-call edit routing: one set of permanent hooks, a per-thread plan of what they do.

The loaded model's weights are never changed. Instead, hooks installed once on every decoder
block and every MLP output projection consult the *current plan* (a ContextVar, so every thread
and every concurrent user has its own) and add parameter deltas or apply projections only to the
batch rows the plan names. With no plan active the hooks return at once, so the plain model runs
unchanged. This gives "original and edited in one batched forward" and isolates concurrent users.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from unlearnviz.model.adapter import (
    ArchitectureAdapter,
    block_output_tensor,
    replace_block_output,
)


class StopForward(Exception):
    """Raised by a capture hook once the deepest requested layer has run (early stop)."""


@dataclass
class RoutingPlan:
    """What the hooks do during one call.

    - ``deltas[layer]``: an [out, in] tensor added to that block's MLP output projection.
    - ``projections[layer]``: Q with orthonormal rows [r, d]; the block output h becomes
      h − h QᵀQ.
    - ``rows``: a bool/float mask over the batch rows the edit applies to (None = all rows).
    - ``capture``: layer → callback(hidden) receiving each block's (edited) output.
    - ``stop_after``: raise StopForward after this block's output has been captured.
    - ``block_input_hook``: layer → callback(args, kwargs) seeing a block's inputs (the engine
      uses it to cache the inputs of the first trained block).
    """

    deltas: dict[int, torch.Tensor] = field(default_factory=dict)
    projections: dict[int, torch.Tensor] = field(default_factory=dict)
    rows: torch.Tensor | None = None
    capture: dict[int, Callable[[torch.Tensor], None]] = field(default_factory=dict)
    stop_after: int | None = None
    block_input_hook: dict[int, Callable[[tuple, dict], None]] = field(default_factory=dict)

    def merged(self, other: RoutingPlan) -> RoutingPlan:
        """This plan's edits plus another's (deltas summed, projections stacked)."""
        deltas = dict(self.deltas)
        for k, v in other.deltas.items():
            deltas[k] = deltas[k] + v if k in deltas else v
        projections = dict(self.projections)
        for k, v in other.projections.items():
            projections[k] = orthonormal_rows(torch.cat([projections[k], v])) if k in projections else v
        return RoutingPlan(deltas=deltas, projections=projections, rows=self.rows,
                           capture={**self.capture, **other.capture},
                           stop_after=other.stop_after if other.stop_after is not None else self.stop_after,
                           block_input_hook={**self.block_input_hook, **other.block_input_hook})


def orthonormal_rows(directions: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of the row space of ``directions`` [k, d] via QR in float32.

    Zero or dependent rows are dropped (the released MRP code's zero-row init projected out
    coordinate 0 by accident; we never add a direction that was not asked for).
    """
    d32 = directions.float()
    q, r = torch.linalg.qr(d32.T)  # q: [d, k]
    keep = r.diagonal().abs() > 1e-6 * max(1.0, float(r.diagonal().abs().max()) if r.numel() else 1.0)
    return q[:, keep].T.contiguous()


_PLAN: ContextVar[RoutingPlan | None] = ContextVar("unlearnviz_plan", default=None)


def _row_mask(rows: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    if rows is None:
        return None
    return rows.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.dim() - 1)))


class Router:
    """Installs the permanent hooks on one model (once per process) and applies plans."""

    def __init__(self, adapter: ArchitectureAdapter):
        self.adapter = adapter
        self._handles = []
        for layer, block in enumerate(adapter.blocks):
            self._handles.append(block.register_forward_hook(self._block_hook(layer)))
            self._handles.append(
                block.register_forward_pre_hook(self._block_pre_hook(layer), with_kwargs=True))
            self._handles.append(adapter.mlp_out(layer).register_forward_hook(self._mlp_hook(layer)))

    @staticmethod
    def _mlp_hook(layer: int):
        def hook(module, inputs, output):
            plan = _PLAN.get()
            if plan is None or layer not in plan.deltas:
                return None
            delta = plan.deltas[layer]
            x = inputs[0]
            add = F.linear(x.to(delta.dtype), delta).to(output.dtype)
            mask = _row_mask(plan.rows, add)
            return output + (add if mask is None else add * mask)
        return hook

    @staticmethod
    def _block_pre_hook(layer: int):
        def hook(module, args, kwargs):
            plan = _PLAN.get()
            if plan is not None and layer in plan.block_input_hook:
                plan.block_input_hook[layer](args, kwargs)
            return None
        return hook

    @staticmethod
    def _block_hook(layer: int):
        def hook(module, inputs, output):
            plan = _PLAN.get()
            if plan is None:
                return None
            changed = None
            if layer in plan.projections:
                h = block_output_tensor(output)
                q = plan.projections[layer].to(h.device)
                removed = (h.float() @ q.T) @ q
                mask = _row_mask(plan.rows, removed)
                h_new = (h.float() - (removed if mask is None else removed * mask)).to(h.dtype)
                changed = replace_block_output(output, h_new)
            if layer in plan.capture:
                plan.capture[layer](block_output_tensor(changed if changed is not None else output))
            if plan.stop_after is not None and layer >= plan.stop_after:
                raise StopForward
            return changed
        return hook

    @contextlib.contextmanager
    def apply(self, plan: RoutingPlan | None) -> Iterator[None]:
        """Run the body with ``plan`` active in this thread/context only."""
        token = _PLAN.set(plan)
        try:
            yield
        finally:
            _PLAN.reset(token)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def run_block_window(adapter: ArchitectureAdapter, start: int, stop: int, hidden: torch.Tensor,
                     kwargs: dict[int, dict]) -> torch.Tensor:
    """Run blocks start..stop (inclusive) directly on a cached block input.

    ``kwargs[layer]`` is exactly what the model passed to that block (captured once), so rotary
    embeddings, masks (Gemma's sliding-window layers differ per block) and positions are right
    for any family without re-deriving them.
    """
    h = hidden
    for layer in range(start, stop + 1):
        h = block_output_tensor(adapter.blocks[layer](h, **kwargs[layer]))
    return h
