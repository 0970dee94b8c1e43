"""Memory plans for a session's model and data (unlearnviz.planner): the figures the Model and
Unlearn tabs show before an action, and the refusal of a fit that will not fit, with both figures,
before it starts (not an out-of-memory error minutes in)."""

from __future__ import annotations

import dataclasses

import torch

from unlearnviz.data.batching import AUTO, SHORT_WINDOW, resolve_max_tokens
from unlearnviz.errors import UserError
from unlearnviz.methods.base import get_method, make_hparams
from unlearnviz.methods.engine import value_bytes
from unlearnviz.planner import (
    Plan,
    available_bytes,
    check_fits,
    plan_capture,
    plan_chat,
    plan_evaluate,
    plan_fit,
    shapes_of,
)


def edits_bytes(stack) -> int:
    """Bytes the stacked edits hold (deltas, projections, offsets, stream bases)."""
    if stack is None:
        return 0
    return value_bytes([[e.deltas, e.projections, e.offsets, e.stream.q if e.stream is not None else None,
                         e.weights, list(e.lora.values())] for e in getattr(stack, "edits", [])])


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for x in obj:
            yield from _tensors(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _tensors(x)


def _landing(lm, layer: int) -> str | None:
    """The device block ``layer``'s MLP output projection computes on (where the router places its delta)."""
    from unlearnviz.model.adapter import execution_device

    try:
        return str(execution_device(lm.adapter.mlp_out(layer)))
    except (AttributeError, IndexError, KeyError, TypeError):
        return None


def edits_bytes_by_device(lm, stack) -> dict[str, int]:
    """``edits_bytes`` per device: each tensor where it lives, and each delta also on the device
    of the block it is added to when that is another (``routing.placed`` keeps a copy there while
    the delta lives, so a model spread over devices pays for it on both)."""
    groups: dict[str, list] = {}
    copies: dict[str, int] = {}
    for e in getattr(stack, "edits", []) if stack is not None else []:
        for t in _tensors([e.deltas, e.projections, e.offsets, e.stream.q if e.stream is not None else None,
                           e.weights, list(e.lora.values())]):
            groups.setdefault(str(t.device), []).append(t)
        for layer, delta in e.deltas.items():
            there = _landing(lm, layer)
            if there is not None and there != str(delta.device):
                copies[there] = copies.get(there, 0) + delta.numel() * delta.element_size()
    out = {device: value_bytes(tensors) for device, tensors in groups.items()}
    for device, n in copies.items():
        out[device] = out.get(device, 0) + n
    return out


def fit_bytes_by_device(lm, plan: Plan) -> dict[str, int]:
    """Where a planned fit's memory beside the weights and the stacked edits lands: RMU's and
    SRMU's trainable deltas (with their gradients and Adam's two moments) on each trained block's
    MLP output projection's device (``engine.zero_delta`` makes them there); the rest (the
    activations and captures, MRP's projections, made on the model's device) on the model's
    device. On one device: the plan's whole figure there."""
    main = str(lm.device)
    out = {main: plan.peak_bytes - plan.parts.get("weights", 0) - plan.parts.get("stacked edits", 0)}
    st = plan.settings
    if st.get("method") in ("rmu", "srmu") and plan.parts.get("trainable state"):
        layers = range(int(st["layer"]) - int(st["window"]) + 1, int(st["layer"]) + 1)
        share = plan.parts["trainable state"] // len(layers)
        for layer in layers:
            there = _landing(lm, layer) or main
            if there != main:
                out[main] -= share
                out[there] = out.get(there, 0) + share
    return out


def budget(lm, stack=None, budget_bytes: int | None = None) -> tuple[int, int]:
    """(bytes an action may use, weights and edits included; bytes free now beside them).
    ``budget_bytes``: an explicit total (tests; a --max-memory-gb); else what the model's device
    has free now (CUDA's free memory, or MemAvailable) plus what the model already holds."""
    held = shapes_of(lm.model).weight_bytes + edits_bytes(stack)
    if budget_bytes is not None:
        return int(budget_bytes), max(0, int(budget_bytes) - held)
    free = available_bytes(lm.device)
    return free + held, free


def fit_plan(lm, data, method: str, hparams=None, stack=None, budget_bytes: int | None = None) -> Plan:
    """The plan of fitting ``method`` (hyperparameters: a dataclass or overrides) on ``data``
    (None: before the data is loaded, auto max_tokens at its shortest window and the smallest
    corpus: a lower bound, so that only what fits no data at all is refused that early)."""
    spec = get_method(str(method or "").strip())
    hp = hparams if dataclasses.is_dataclass(hparams) else make_hparams(spec.hparams_cls, dict(hparams or {}))
    hp = dataclasses.replace(hp)  # the fit resolves its own copy
    batches = (1, 1)
    if data is not None:
        if hp.max_tokens == AUTO:
            hp.max_tokens = resolve_max_tokens(lm, data.forget_texts, AUTO)[0]
        bs = int(hp.batch_size)
        batches = (-(-len(data.forget_texts) // bs), -(-len(data.retain_train_texts) // bs))
    elif hp.max_tokens == AUTO:
        hp.max_tokens = SHORT_WINDOW
    _, free = budget(lm, stack, budget_bytes)
    return plan_fit(shapes_of(lm.model), spec.name, hp, device=str(lm.device), free=free, batches=batches,
                    edits_bytes=edits_bytes(stack))


def check_fit(lm, data, method: str, hparams=None, stack=None, budget_bytes: int | None = None) -> Plan:
    """Refuse a fit whose planned peak is over what the device has (one line, both figures);
    returns the plan otherwise."""
    plan = fit_plan(lm, data, method, hparams, stack, budget_bytes)
    total, _ = budget(lm, stack, budget_bytes)
    check_fits(plan, total, f"{plan.settings['method']} fit")
    return plan


def _gb(n: int) -> str:
    return f"{n / 2**30:.2f} GB"


def model_line(session) -> str:
    """Markdown: the planned peaks of evaluation, chat, capture and a default RMU fit on the
    session's model (and data, where loaded), beside what its device has."""
    lm = session.lm
    if lm is None:
        return ""
    s = shapes_of(lm.model)
    extra = edits_bytes(session.stack)
    total, _ = budget(lm, session.stack)
    plans = [plan_evaluate(s, edits_bytes=extra), plan_chat(s, edits_bytes=extra),
             plan_capture(s, edits_bytes=extra)]
    try:
        plans.append(fit_plan(lm, session.data, "rmu", None, session.stack))
    except UserError:
        pass
    figures = "; ".join(f"{p.action} ~{_gb(p.peak_bytes)}" for p in plans)
    over = [p.action for p in plans if p.peak_bytes > total]
    return (f"**Planned peak memory** (weights {_gb(s.weight_bytes)} included): {figures}. The device has "
            f"{_gb(total)} available" + (f": **{', '.join(over)} will not fit**." if over else "."))


def fit_line(session, method: str, overrides: dict | None = None) -> str:
    """Markdown: the planned peak of the fit these hyperparameters ask for, or why there is none."""
    if session.lm is None:
        return "_Load a model to see the planned peak memory of this fit._"
    try:
        plan = fit_plan(session.lm, session.data, method, overrides, session.stack)
    except UserError as exc:
        return f"_No memory plan: {exc}_"
    total, _ = budget(session.lm, session.stack)
    st = plan.settings
    verdict = "fits" if plan.peak_bytes <= total else "**will not fit: lower batch_size or max_tokens**"
    shown = ", ".join(f"{k} {_gb(v)}" for k, v in {**plan.parts, "caches": plan.cache}.items() if v >= 2**20)
    return (f"**Planned peak memory** of this {st['method'].upper()} fit (batch {st['batch_size']} × "
            f"{st['max_tokens']} tokens): ~{_gb(plan.peak_bytes)} ({shown}); the device has {_gb(total)} "
            f"available: {verdict}." + ("" if session.data is not None else
                                         " (No data loaded yet: auto max_tokens is planned at its shortest.)"))


def plan_report(lm, methods=None, overrides: dict | None = None, config: str | None = None,
                dtype: str = "float32", device: str = "auto") -> dict:
    """Every action's plan (``info --plan``) for a loaded model, or for a named config's shapes
    on the meta device (``config``; no weights), beside what this machine's device has."""
    import torch

    from unlearnviz.model.loading import resolve_dtype
    from unlearnviz.planner import GB, NAMED_CONFIGS, meta_model, named_config, plan_actions

    if lm is None:
        dev = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        model = meta_model(named_config(config))
        shapes = shapes_of(model, dtype=resolve_dtype(dtype, dev))
        here = dev == "cpu" or (dev.startswith("cuda") and torch.cuda.is_available())
        free = available_bytes(dev) if here else None
        total = free
        name = NAMED_CONFIGS[config.strip().lower()][0]
    else:
        dev, shapes, name = str(lm.device), shapes_of(lm.model), lm.name
        total, free = budget(lm)
    plans = plan_actions(shapes, methods or ("rmu", "srmu", "mrp"), overrides, device=dev, free=free)
    return {"model": name, "parameters": shapes.params, "dtype_bytes": shapes.dtype_bytes, "device": dev,
            "available_gb": None if total is None else round(total / GB, 3),
            "plans": [{**p.to_dict(), "summary": p.line(),
                       "fits": None if total is None else p.peak_bytes <= total} for p in plans]}
