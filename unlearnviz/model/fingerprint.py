"""The base weights' fingerprint: which model this is, and proof that it never changed.

Hashing every byte (as this module once did) reads the whole model: ~14 GB at 7B in bfloat16,
copied to the CPU, once at load and again after every run, sweep and report. Instead each
tensor contributes its name, dtype, shape and a strided sample of its values that holds at
least one element of every row (the stride is coprime with the row length, so the sampled
column moves from row to row) and at least ``SAMPLES`` elements: ~4 MB at 7B, the same on
every load of the same weights, so edits and bundles recognise their model across processes.

A write can miss the sample, so the check (``WeightsPrint.check``) also compares each resident
tensor's storage pointer and autograd version counter with those seen at load: any in-place
write through torch (``w += d``, ``copy_``, ``load_state_dict``) bumps the counter, and a
replaced storage changes the pointer. A tensor written to is marked as such in the
fingerprint, even if its old values were later put back: the base is frozen, and a write to
it is the bug this check exists to catch.

Offloaded weights (accelerate ``device_map`` with "cpu" or "disk": the parameter is a meta
placeholder) are read from the offload hook's weights map, once, at load, so an offloaded
model has the fingerprint of the same model fully resident; the model cannot write into them
through its parameters, so the check reuses their load-time digests. A meta tensor with no
offload source contributes its name, dtype and shape only.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

SAMPLES = 4096  # elements hashed at least per tensor (all of a smaller tensor)


def sample_view(t: torch.Tensor, budget: int = SAMPLES) -> torch.Tensor:
    """A strided 1-D view of ``t``: all of it up to ``budget`` elements, else at least
    ``budget`` elements and one in every row (the stride is at most the row length and
    coprime with it). A view: nothing is copied until the caller reads it."""
    flat = t.detach().reshape(-1)
    n = flat.numel()
    if n <= budget:
        return flat
    row = int(t.shape[-1]) if t.dim() > 1 else n
    stride = max(1, n // max(budget, n // row))
    while stride > 1 and math.gcd(stride, row) != 1:
        stride -= 1
    return flat[::stride]


def tensor_digest(name: str, t: torch.Tensor, budget: int = SAMPLES) -> tuple[bytes, int]:
    """(digest of ``t``'s name, dtype, shape and sampled bytes, bytes hashed). A tensor on
    the meta device has no values: its digest is of name, dtype and shape only."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{name}:{str(t.dtype).replace('torch.', '')}:{tuple(t.shape)}".encode())
    if t.device.type == "meta":
        h.update(b"meta")
        return h.digest(), 0
    s = sample_view(t, budget).contiguous().cpu()
    h.update(s.view(torch.uint8).numpy().tobytes())
    return h.digest(), int(s.numel() * s.element_size())


def _persistent_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """A module's own parameters and persistent buffers (what its state dict would hold)."""
    yield from module.named_parameters(recurse=False)
    skip = getattr(module, "_non_persistent_buffers_set", set())
    for name, b in module.named_buffers(recurse=False):
        if name not in skip:
            yield name, b


def _offload_maps(model: nn.Module) -> dict[str, Mapping]:
    """Module name → the weights map of its accelerate offload hook (keys relative to it)."""
    maps: dict[str, Mapping] = {}
    for mname, module in model.named_modules():
        hook = getattr(module, "_hf_hook", None)
        for h in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
            wm = getattr(h, "weights_map", None)
            if wm is not None and getattr(h, "offload", False):
                maps[mname] = wm
    return maps


def _offloaded_value(maps: dict[str, Mapping], name: str) -> torch.Tensor | None:
    """The stored value of an offloaded tensor, from the nearest enclosing hook's map."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, -1, -1):
        wm = maps.get(".".join(parts[:cut]))
        if wm is not None:
            try:
                value = wm[".".join(parts[cut:])]
            except KeyError:
                continue
            return value if isinstance(value, torch.Tensor) else None
    return None


def _extra_state(module: nn.Module, local: str, t: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    """Quantisation scales that live beside a bitsandbytes weight rather than in a parameter:
    a 4-bit weight's block absmax and an 8-bit weight's row scales (SCB), where they are."""
    qs = getattr(t, "quant_state", None)
    if isinstance(getattr(qs, "absmax", None), torch.Tensor):
        yield f"{local}.absmax", qs.absmax
    scb = getattr(t, "SCB", None)
    if scb is None:
        scb = getattr(getattr(module, "state", None), "SCB", None) if local == "weight" else None
    if isinstance(scb, torch.Tensor):
        yield f"{local}.SCB", scb


def named_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every parameter and persistent buffer once (tied weights under their first name), with
    the quantisation scales of bitsandbytes weights."""
    seen: set[int] = set()
    for mname, module in model.named_modules():
        for local, t in _persistent_tensors(module):
            if t is None or id(t) in seen:
                continue
            seen.add(id(t))
            name = f"{mname}.{local}" if mname else local
            yield name, t
            for extra, e in _extra_state(module, local, t):
                yield f"{mname}.{extra}" if mname else extra, e


def sampled_bytes(model: nn.Module) -> int:
    """Bytes a check hashes, from the shapes alone (works on a model on the meta device)."""
    return sum(sample_view(t).numel() * t.element_size() for _, t in named_weights(model))


@dataclass
class WeightsPrint:
    """The per-tensor digests of one model, taken at load, and the check against them."""

    digests: dict[str, bytes] = field(default_factory=dict)
    stamps: dict[str, tuple[int, int]] = field(default_factory=dict)  # resident: (data_ptr, version)
    offloaded: set[str] = field(default_factory=set)
    bytes_read: int = 0  # by the last take or check: sampled bytes plus offloaded tensors read whole

    @classmethod
    def take(cls, model: nn.Module) -> WeightsPrint:
        wp = cls()
        maps = _offload_maps(model)
        for name, t in named_weights(model):
            if t.device.type == "meta":
                value = _offloaded_value(maps, name)
                if value is not None:
                    wp.offloaded.add(name)
                    wp.bytes_read += int(value.numel() * value.element_size())
                    t = value.to(t.dtype) if value.dtype != t.dtype else value
            else:
                wp.stamps[name] = _stamp(t)
            wp.digests[name], n = tensor_digest(name, t)
            if name not in wp.offloaded:
                wp.bytes_read += n
        return wp

    def value(self, digests: dict[str, bytes] | None = None) -> str:
        """The fingerprint: 32 hex digits over the sorted (name, digest) pairs."""
        h = hashlib.blake2b(digest_size=16)
        for name, d in sorted((digests or self.digests).items()):
            h.update(name.encode() + b"\0" + d)
        return h.hexdigest()

    def check(self, model: nn.Module) -> str:
        """The fingerprint now: resident tensors sampled again and their pointers and version
        counters compared with those at load (a written tensor is marked); offloaded ones as
        they were at load (nothing writes into an offload store through the model)."""
        digests: dict[str, bytes] = {}
        self.bytes_read = 0
        for name, t in named_weights(model):
            if t.device.type == "meta" and name in self.offloaded:
                digests[name] = self.digests[name]
                continue
            d, n = tensor_digest(name, t)
            self.bytes_read += n
            was = self.stamps.get(name)
            if t.device.type != "meta" and was is not None and _stamp(t) != was:
                d = hashlib.blake2b(b"written\0" + d, digest_size=16).digest()
            digests[name] = d
        return self.value(digests)


def _stamp(t: torch.Tensor) -> tuple[int, int]:
    """Where a tensor's values live and how often torch has written to them in place."""
    return int(t.data_ptr()), int(getattr(t, "_version", 0))
