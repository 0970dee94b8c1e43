"""Two batches' per-block kwargs as one call's: forget and retain rows through the window together.

Each training step needs the window's output for a forget batch and for a retain batch under the
same plan; one call over both batches' rows runs the matrix products on twice the rows at a higher
rate than two calls (~25% more FLOPs per second on the default model). The kwargs each block
receives (attention masks, rotary tables) were captured per batch, so joining means merging them:
per-row tensors are padded to the common width and concatenated, shared per-position ones are kept
where they agree, and a mask the model left out (no padding: SDPA's causal flag) is rebuilt in the
other batch's format. Padding changes the attention kernel's rounding, so every merge here is
exact or refused (:class:`NoJoin`, and the engine runs the two batches apart); the engine also
checks each new kind of join against the separate calls once.

Cutting is the other half: a causal model's positions before ``cut`` never see the later ones, so
a batch whose loss ends early can run on its first ``cut`` positions only (often the other batch's
width, so that the pair joins without padding).
"""

from __future__ import annotations

import torch

# Kwargs holding per-row attention masks (padded with "blocked", rebuilt when left out).
MASK_KEYS = ("attention_mask",)


class NoJoin(Exception):
    """Two batches' block kwargs cannot be merged (or one batch's cut) exactly: run them apart."""


def _pad_dims(t: torch.Tensor, size: int, dims: list[int], fill) -> torch.Tensor:
    """``t`` padded with ``fill`` at the end of each of ``dims`` to length ``size``."""
    for d in dims:
        if t.shape[d] < size:
            shape = list(t.shape)
            shape[d] = size - t.shape[d]
            t = torch.cat([t, t.new_full(shape, fill)], dim=d)
    return t


def _mask_fill(m: torch.Tensor):
    """(blocked, allowed) values of a 4-D attention mask: bool (True = attend) or additive float."""
    if m.dtype == torch.bool:
        return False, True
    if m.is_floating_point():
        return torch.finfo(m.dtype).min, 0.0
    raise NoJoin


def _causal_like(other: torch.Tensor, rows: int, width: int) -> torch.Tensor:
    """The mask the model leaves out (None: no padding, plain causal: SDPA's ``is_causal``), built
    in the format of the other batch's mask."""
    if other.dim() != 4:
        raise NoJoin
    blocked, allowed = _mask_fill(other)
    keep = torch.ones(width, width, dtype=torch.bool, device=other.device).tril()
    full = torch.full((width, width), blocked, dtype=other.dtype, device=other.device)
    m = torch.where(keep, torch.as_tensor(allowed, dtype=other.dtype, device=other.device), full)
    return m.expand(rows, other.shape[1], width, width)


def _join_tensor(a: torch.Tensor, b: torch.Tensor, rows: tuple[int, int], widths: tuple[int, int],
                 is_mask: bool) -> torch.Tensor:
    """One tensor for both batches: shared per-position tensors (batch dim 1, e.g. rotary
    embeddings) are kept when they agree on the common positions; per-row ones (masks) are padded
    to the common width and concatenated."""
    if a.dim() != b.dim() or a.dim() == 0 or a.dtype != b.dtype or a.device != b.device:
        raise NoJoin
    width = max(widths)
    seq = [d for d in range(1, a.dim()) if a.shape[d] != b.shape[d]]  # the sequence-length dims
    if any((a.shape[d], b.shape[d]) != widths for d in seq):
        raise NoJoin
    if a.shape[0] == 1 and b.shape[0] == 1:
        long, short = (a, b) if widths[0] >= widths[1] else (b, a)
        if torch.equal(long[tuple(slice(0, n) for n in short.shape)], short):
            return long
    parts = []
    for t, r, w in zip((a, b), rows, widths):
        if t.shape[0] == 1 and r != 1:
            t = t.expand(r, *t.shape[1:])
        if t.shape[0] != r:
            raise NoJoin
        if w < width:
            if is_mask:
                blocked, allowed = _mask_fill(t)
                t = _pad_dims(t, width, seq, blocked)
                if t.dim() >= 2 and seq[-2:] == [t.dim() - 2, t.dim() - 1]:
                    t[..., w:, 0] = allowed  # padded queries see position 0: finite, never read
            else:
                t = _pad_dims(t, width, seq, 0)
        parts.append(t)
    return torch.cat(parts)


def _walk_pair(a, b, leaf, is_mask: bool = False):
    """Walk two per-block kwargs of the same structure together (tuples, lists, dicts with equal
    keys), calling ``leaf(a, b, is_mask)`` where either side is a tensor or None; equal scalars
    and shared objects pass through; anything else cannot be merged exactly (NoJoin)."""
    if a is None or b is None or isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return leaf(a, b, is_mask)
    if isinstance(a, (tuple, list)) and type(a) is type(b) and len(a) == len(b):
        return type(a)(_walk_pair(x, y, leaf, is_mask) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return {k: _walk_pair(a[k], b[k], leaf, is_mask or k in MASK_KEYS) for k in a}
    if a is b or (isinstance(a, (bool, int, float, str)) and type(a) is type(b) and a == b):
        return a
    raise NoJoin


def _join_value(a, b, rows: tuple[int, int], widths: tuple[int, int], is_mask: bool = False):
    def leaf(a, b, is_mask):
        if a is None and b is None:
            return None
        if not (isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor)):
            raise NoJoin
        if is_mask and a is None:
            a = _causal_like(b, rows[0], widths[0])
        if is_mask and b is None:
            b = _causal_like(a, rows[1], widths[1])
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            raise NoJoin
        return _join_tensor(a, b, rows, widths, is_mask)

    return _walk_pair(a, b, leaf, is_mask)


def join_kwargs(kw_a: dict[int, dict], kw_b: dict[int, dict], rows: tuple[int, int],
                widths: tuple[int, int]) -> dict[int, dict]:
    """Per-block kwargs of one call over batch a's rows then batch b's, both right-padded to
    the longer width (raises NoJoin where a value cannot be merged exactly)."""
    if kw_a.keys() != kw_b.keys():
        raise NoJoin
    return {layer: _join_value(kw_a[layer], kw_b[layer], rows, widths) for layer in kw_a}


def _cut_value(a, b, widths: tuple[int, int], cut: int, is_mask: bool = False):
    """``a`` (a kwarg of batch 1, width widths[0]) for its first ``cut`` positions only. The
    sequence-length dims are found against ``b``, batch 2's same kwarg at another width."""
    def leaf(a, b, is_mask):
        if a is None:
            return None
        if not isinstance(a, torch.Tensor):
            raise NoJoin
        if is_mask and b is None:  # batch 2 had no padding: its mask is the plain causal one
            b = _causal_like(a, 1, widths[1])
        if not isinstance(b, torch.Tensor) or a.dim() != b.dim():
            raise NoJoin
        seq = [d for d in range(1, a.dim()) if a.shape[d] != b.shape[d]]
        if any((a.shape[d], b.shape[d]) != widths for d in seq):
            raise NoJoin
        return a[tuple(slice(0, cut) if d in seq else slice(None) for d in range(a.dim()))]

    return _walk_pair(a, b, leaf, is_mask)


def cut_kwargs(kw_a: dict[int, dict], kw_b: dict[int, dict], widths: tuple[int, int], cut: int) -> dict[int, dict]:
    """Batch a's per-block kwargs for its first ``cut`` positions (a causal model's positions
    before ``cut`` never see the later ones). Needs batch b at another width to tell which dims
    are the sequence length; raises NoJoin where a value cannot be cut."""
    if widths[0] == widths[1] or kw_a.keys() != kw_b.keys():
        raise NoJoin
    return {layer: _cut_value(kw_a[layer], kw_b[layer], widths, cut) for layer in kw_a}


def pad_rows(h: torch.Tensor, width: int) -> torch.Tensor:
    """Hidden states [B, T, ...] right-padded with zeros to ``width`` positions (a joined call's
    input; the padded keys are masked by the joined kwargs, so their values are never read)."""
    if h.shape[1] == width:
        return h
    return torch.cat([h, h.new_zeros(h.shape[0], width - h.shape[1], *h.shape[2:])], dim=1)
