"""Edits: only what changed (parameter deltas, projection bases), never a model copy.

An Edit acts on a forward pass through the model's router (never by mutating weights), can be
restricted to chosen batch rows, stacks with other edits (continual unlearning), saves as
safetensors plus a JSON manifest (with checksums, and the fingerprint of the model it belongs
to), and exports as a standalone Hugging Face checkpoint that plain loaders read as the edited
model (or the export is refused).
"""

from __future__ import annotations

import copy
import hashlib
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from unlearnviz.errors import UserError
from unlearnviz.io import atomic_write_bytes, atomic_write_text
from unlearnviz.model.adapter import get_path, is_conv1d
from unlearnviz.model.exports import EXPORT_FORMAT, EXPORT_MANIFEST, drop_gguf_quantization, file_hashes, read_export
from unlearnviz.model.loading import DEFAULT_ALIASES, LoadedModel
from unlearnviz.model.routing import (
    RoutingPlan,
    StreamProjection,
    join_lora,
    orthonormal_rows,
    plan_content_hash,
    sum_weights,
)

EDIT_FILE = "edit.safetensors"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1


@dataclass
class Edit:
    """One unlearning request's result.

    ``deltas[layer]`` is added to block ``layer``'s MLP output projection ([out, in], nn.Linear
    convention). ``projections[layer]`` holds orthonormal rows Q [k, d] removed from block
    ``layer``'s output (h ← h − h QᵀQ). ``stream`` is MRP's "stream" placement (the subspace
    removed from every write into the residual stream up to a block; folds exactly on export).
    ``weights[name]`` is a delta of any parameter (its ``named_parameters()`` name) and
    ``lora[module]`` a LoRA adapter's factors (A [r, in], B [out, r], the scale folded into B):
    what a checkpoint or adapter made by another tool differs from its base by.
    """

    method: str
    hparams: dict
    deltas: dict[int, torch.Tensor] = field(default_factory=dict)
    projections: dict[int, torch.Tensor] = field(default_factory=dict)
    offsets: dict[int, torch.Tensor] = field(default_factory=dict)  # centred projections' μ
    stream: StreamProjection | None = None
    weights: dict[str, torch.Tensor] = field(default_factory=dict)  # parameter name → delta (imports)
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # module → (A, B·scale)
    meta: dict = field(default_factory=dict)

    @property
    def spare_first(self) -> bool:
        return bool(self.meta.get("spare_first", False))

    def plan(self, rows: torch.Tensor | None = None) -> RoutingPlan:
        return RoutingPlan(deltas=dict(self.deltas), projections=dict(self.projections),
                           offsets=dict(self.offsets), spare_first=self.spare_first, stream=self.stream,
                           weights=dict(self.weights), lora=dict(self.lora), rows=rows)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {f"delta.{k}": v.detach().float().cpu().contiguous() for k, v in self.deltas.items()}
        out.update({f"projection.{k}": v.detach().float().cpu().contiguous() for k, v in self.projections.items()})
        out.update({f"offset.{k}": v.detach().float().cpu().contiguous() for k, v in self.offsets.items()})
        if self.stream is not None:  # keyed by its deepest block, like the site tensors
            out[f"stream.{self.stream.last}"] = self.stream.q.detach().float().cpu().contiguous()
            if self.stream.offset is not None:
                out[f"stream_offset.{self.stream.last}"] = self.stream.offset.detach().float().cpu().contiguous()
        # imported parameter deltas keep their dtype (a bfloat16 fine-tune's deltas stay bfloat16 on disk)
        out.update({f"weight.{k}": v.detach().cpu().contiguous() for k, v in self.weights.items()})
        for k, (a, b) in self.lora.items():
            out[f"lora_a.{k}"], out[f"lora_b.{k}"] = a.detach().cpu().contiguous(), b.detach().cpu().contiguous()
        return out

    def n_params(self) -> int:
        stream = [] if self.stream is None else [self.stream.q, self.stream.offset]
        return sum(v.numel() for v in [*self.deltas.values(), *self.projections.values(), *self.offsets.values(),
                                       *self.weights.values(), *(t for ab in self.lora.values() for t in ab),
                                       *stream] if v is not None)

    def label(self) -> str:
        return self.meta.get("label") or f"{self.method}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def versions() -> dict:
    import transformers

    import unlearnviz

    return {"unlearnviz": unlearnviz.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}



def source_record(source: str) -> str:
    """What a manifest records as the model's source: a local folder or file as an absolute path (a
    command run from another folder still finds it), anything else (``default``, a hub id) as given."""
    path = Path(source).expanduser()
    return str(path.resolve()) if source not in DEFAULT_ALIASES and path.exists() else source


def save_edit(edit: Edit, folder: Path, lm: LoadedModel, stack_index: int = 0) -> Path:
    """Write edit.safetensors and manifest.json atomically; the manifest carries checksums."""
    from safetensors.torch import save

    folder.mkdir(parents=True, exist_ok=True)
    tensors = edit.tensors()  # once: an imported fine-tune's deltas are a whole model's worth of copies
    blob = save(tensors) if tensors else save({"empty": torch.zeros(0)})
    manifest = {
        "format": FORMAT_VERSION,
        "method": edit.method,
        "hparams": edit.hparams,
        "model": {"name": lm.name, "source": source_record(lm.source), "fingerprint": lm.fingerprint(refresh=False),
                  "family": lm.adapter.family,
                  "layers": lm.n_layers, "hidden_size": lm.hidden_size},
        "meta": edit.meta,
        "stack_index": stack_index,
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": {EDIT_FILE: _sha256(blob)},
    }
    atomic_write_bytes(folder / EDIT_FILE, blob)
    atomic_write_text(folder / MANIFEST_FILE, json.dumps(manifest, indent=2, default=float) + "\n")
    return folder


def load_edit(folder: Path, lm: LoadedModel) -> Edit:
    """Read and verify an edit; refuse one made for another model or damaged on disk."""
    mpath, epath = folder / MANIFEST_FILE, folder / EDIT_FILE
    if not mpath.exists() or not epath.exists():
        raise UserError(f"{folder} is not an edit folder (needs {MANIFEST_FILE} and {EDIT_FILE})")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{mpath}: manifest is not valid JSON (damaged file)") from None
    blob = epath.read_bytes()
    expected = manifest.get("files", {}).get(EDIT_FILE)
    if expected != _sha256(blob):
        raise UserError(f"{epath}: checksum mismatch (truncated or tampered edit file)")
    fp = manifest.get("model", {}).get("fingerprint")
    if fp != lm.fingerprint(refresh=False):
        raise UserError(f"edit in {folder} was made for model {manifest.get('model', {}).get('name')!r} "
                        f"(fingerprint {fp}), not the loaded {lm.name!r} ({lm.fingerprint(refresh=False)})")
    tensors = load_file(str(epath))
    parts: dict[str, dict[int, torch.Tensor]] = {"delta": {}, "projection": {}, "offset": {}, "stream": {},
                                                 "stream_offset": {}}
    named: dict[str, dict[str, torch.Tensor]] = {"weight": {}, "lora_a": {}, "lora_b": {}}
    for key, t in tensors.items():
        kind, _, layer = key.partition(".")
        if kind in parts:
            parts[kind][int(layer)] = t.to(lm.device)
        elif kind in named:
            named[kind][layer] = t
    weights, lora = _named_tensors(lm, named, epath)
    stream = None
    if len(parts["stream"]) > 1:
        raise UserError(f"{epath}: more than one stream projection in one edit (damaged file)")
    for last, q in parts["stream"].items():
        lm.adapter.check_layer(last, "stream projection block")
        stream = StreamProjection(q=q, offset=parts["stream_offset"].get(last), last=last)
    return Edit(method=manifest["method"], hparams=manifest.get("hparams", {}), deltas=parts["delta"],
                projections=parts["projection"], offsets=parts["offset"], stream=stream, weights=weights, lora=lora,
                meta=manifest.get("meta", {}))


def _named_tensors(lm: LoadedModel, named: dict[str, dict[str, torch.Tensor]],
                   epath: Path) -> tuple[dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Parameter deltas and LoRA factors of a saved edit, each checked against the model and put
    on its parameter's device (an offloaded parameter's delta stays on the CPU)."""
    params = dict(lm.model.named_parameters())

    def device_of(p: torch.Tensor) -> torch.device:
        return torch.device("cpu") if p.is_meta else p.device

    weights = {}
    for name, t in named["weight"].items():
        p = params.get(name)
        if p is None or tuple(p.shape) != tuple(t.shape):
            raise UserError(f"{epath}: a delta for {name!r} {tuple(t.shape)} does not match the model "
                            f"({'no such parameter' if p is None else tuple(p.shape)})")
        weights[name] = t.to(device_of(p))
    modules = dict(lm.model.named_modules())
    lora = {}
    if set(named["lora_a"]) != set(named["lora_b"]):
        raise UserError(f"{epath}: LoRA factors come in pairs (A and B); some have only one (damaged file)")
    for name, a in named["lora_a"].items():
        b, module = named["lora_b"][name], modules.get(name)
        if (not isinstance(module, torch.nn.Linear) or a.shape[1] != module.in_features
                or b.shape[0] != module.out_features or a.shape[0] != b.shape[1]):
            raise UserError(f"{epath}: LoRA factors for {name!r} do not fit this model's layers")
        lora[name] = (a.to(device_of(module.weight)), b.to(device_of(module.weight)))
    return weights, lora


class EditStack:
    """A timeline of edits (continual unlearning): push, undo the last, combine into one plan."""

    def __init__(self, edits: list[Edit] | None = None):
        self.edits: list[Edit] = list(edits or [])

    def __len__(self) -> int:
        return len(self.edits)

    def push(self, edit: Edit) -> None:
        self.edits.append(edit)

    def undo(self) -> Edit:
        if not self.edits:
            raise UserError("there is no edit to undo")
        return self.edits.pop()

    def plan(self, upto: int | None = None, rows: torch.Tensor | None = None) -> RoutingPlan | None:
        """All edits up to index ``upto`` (inclusive; None = all) combined; None if empty."""
        chosen = self.edits if upto is None else self.edits[: upto + 1]
        if not chosen:
            return None
        deltas: dict[int, torch.Tensor] = {}
        directions: dict[int, list[torch.Tensor]] = {}
        offsets: dict[int, torch.Tensor] = {}
        stream: StreamProjection | None = None
        for e in chosen:
            if e.stream is not None:  # one stream: union basis, deepest block, first μ
                stream = e.stream if stream is None else stream.merged(e.stream)
            for k, v in e.offsets.items():
                offsets.setdefault(k, v)  # later requests see the same retain mean at that site
            for k, v in e.deltas.items():
                deltas[k] = deltas[k] + v if k in deltas else v
            for k, v in e.projections.items():
                directions.setdefault(k, []).append(v)
        projections = {k: orthonormal_rows(torch.cat(v)) for k, v in directions.items()}
        return RoutingPlan(deltas=deltas, projections=projections, offsets=offsets,
                           spare_first=any(e.spare_first for e in chosen), stream=stream,
                           weights=sum_weights(*(e.weights for e in chosen)), lora=join_lora(*(e.lora for e in chosen)),
                           rows=rows)


# Learned position embeddings added to the token embedding before block 0 (GPT-2, OPT).
POSITION_EMBED_PATHS = ("transformer.wpe", "model.decoder.embed_positions")
EXPORT_SHARD = "5GB"  # the hub's usual shard size; also bounds the host copy of a GPU model's shard


def _remove_rows(w: torch.Tensor, q: torch.Tensor, add: torch.Tensor | None = None,
                 chunk: int = 8192) -> torch.Tensor:
    """w − (w Qᵀ) Q (+ ``add``) over the last dimension, in w's dtype and on w's device.

    Computed in float64 on the CPU a block of rows at a time and rounded once, so a
    128k-row embedding never exists whole in float64 and bf16 weights are rounded only once.
    """
    q = q.detach().double().cpu()
    rows = w.detach().reshape(-1, w.shape[-1])
    out = torch.empty(rows.shape, dtype=w.dtype)
    for start in range(0, rows.shape[0], chunk):
        x = rows[start:start + chunk].cpu().double()
        x = x - (x @ q.T) @ q
        out[start:start + chunk] = (x if add is None else x + add).to(w.dtype)
    return out.reshape(w.shape).to(w.device)


def _fold_stream(lm: LoadedModel, state: dict[str, torch.Tensor], stream: StreamProjection) -> dict:
    """Fold a stream projection exactly into ``state`` (the model's state dict: entries are
    replaced, never written in place, so the loaded weights stay as they are).

    A write w = xW + b projected to wP (P = I − QᵀQ) is x(WP) + bP, so for blocks 0..last the
    attention and MLP output projections become W ← WP, b ← bP (nn.Linear stores [out, in]:
    W ← PW; GPT-2's Conv1D [in, out]: W ← WP). The stream entering block 0 is e − (e − μ)QᵀQ
    = eP + μQᵀQ, so token embedding rows become EP + μQᵀQ/s (s: a scale the embedding applies
    to its rows, as Gemma's √d) and position embedding rows (GPT-2's wpe) become EP. The
    unembedding keeps the original matrix, so a tied lm_head is untied. Deltas must already be
    merged (the hooks project W + Δ). Returns what was folded.
    """
    names = {id(m): n for n, m in lm.model.named_modules()}
    q = stream.q.detach().double().cpu()
    folded = []

    def key_of(module: torch.nn.Module, what: str) -> str:
        key = f"{names[id(module)]}.{what}"
        if key not in state:
            raise UserError(f"cannot find {key} in the model's state dict")
        return key

    def put(key: str, value: torch.Tensor) -> None:
        state[key] = value.contiguous()
        folded.append(key)

    for layer in range(stream.last + 1):
        for module in (lm.adapter.attn_out(layer), lm.adapter.mlp_out(layer)):
            wkey = key_of(module, "weight")
            w = state[wkey]
            put(wkey, _remove_rows(w, q) if is_conv1d(module) else _remove_rows(w.T, q).T)
            if getattr(module, "bias", None) is not None:
                bkey = key_of(module, "bias")
                put(bkey, _remove_rows(state[bkey], q))
    embed, unembed = lm.adapter.embed, lm.adapter.unembed
    ekey, ukey = key_of(embed, "weight"), names[id(unembed)] + ".weight"
    original = state[ekey]
    scale = getattr(embed, "embed_scale", None)
    scale = 1.0 if scale is None else float(torch.as_tensor(scale).to(embed.weight.dtype))
    add = None
    if stream.offset is not None:
        mu = stream.offset.detach().double().cpu()
        add = (mu @ q.T) @ q / scale
    put(ekey, _remove_rows(original, q, add=add))
    positions = []
    for path in POSITION_EMBED_PATHS:
        module = get_path(lm.model, path)
        if module is not None and getattr(module, "weight", None) is not None:
            pkey = key_of(module, "weight")
            put(pkey, _remove_rows(state[pkey], q))
            positions.append(pkey)
    tied = unembed.weight.data_ptr() == embed.weight.data_ptr()
    # the unembedding reads the final stream through the original matrix
    state[ukey] = original if tied else state.get(ukey, unembed.weight.detach())
    return {"blocks": [0, stream.last], "rank": int(stream.q.shape[0]), "centered": stream.offset is not None,
            "embedding": ekey, "embedding_scale": scale, "position_embeddings": positions,
            "untied_lm_head": tied, "folded": folded}


def _model_on(lm: LoadedModel, config, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A model of ``config`` whose tensors are those of ``state``, built on the meta device.

    Nothing is copied: tensors the export leaves alone are the loaded model's own (read, never
    written), in its dtype and on its devices, so a bf16 7B export costs the changed matrices,
    not a second float32 model. Buffers outside the state dict (rotary frequencies) are shared
    with the loaded model too.
    """
    with torch.device("meta"):
        fresh = type(lm.model)(config)
    fresh.load_state_dict(state, strict=True, assign=True)
    modules = dict(lm.model.named_modules())
    for name, module in fresh.named_modules():
        source = modules.get(name)
        for key, buf in list(module.named_buffers(recurse=False)):
            if buf.is_meta and source is not None and isinstance(getattr(source, key, None), torch.Tensor):
                module.register_buffer(key, getattr(source, key), persistent=False)
        for key, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor) and value.is_meta and source is not None:
                setattr(module, key, getattr(source, key))
    left = [n for n, t in [*fresh.named_parameters(), *fresh.named_buffers()] if t.is_meta]
    if left:
        raise UserError(f"cannot build the export of this {lm.adapter.family!r} model: {left[0]} has no value")
    if getattr(lm.model, "generation_config", None) is not None:
        fresh.generation_config = copy.deepcopy(lm.model.generation_config)
    device_map = getattr(lm.model, "hf_device_map", None)
    if device_map and len({str(t.device) for t in state.values()}) > 1:
        from accelerate import dispatch_model  # blocks on several GPUs: hooks move activations between them

        dispatch_model(fresh, device_map=device_map)
    return fresh.eval()


@torch.no_grad()
def _fold_check(lm: LoadedModel, fresh: torch.nn.Module, plan: RoutingPlan) -> dict:
    """Max |logit| difference between the folded model and the hooked one on a padded probe.

    Each model gets its inputs on the device of its own embedding (the loaded one may sit on a
    GPU while the check runs)."""
    vocab = int(lm.adapter.unembed.weight.shape[0])
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(vocab, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # a left-padded row
    at = lm.device
    with lm.router.apply(plan):
        ref = lm.model(input_ids=ids.to(at), attention_mask=mask.to(at), use_cache=False).logits.float().cpu()
    at = fresh.get_input_embeddings().weight.device
    got = fresh(input_ids=ids.to(at), attention_mask=mask.to(at), use_cache=False).logits.float().cpu()
    keep = mask.bool()
    diff = float((ref[keep] - got[keep]).abs().max())
    exact = lm.dtype in (torch.float32, torch.float64)
    tol = (1e-3 if exact else 5e-2) * max(1.0, float(ref[keep].abs().max()))
    return {"max_abs_logit_diff": diff, "tolerance": tol}


def _export_config(lm: LoadedModel, untie: bool):
    """The loaded model's config for the export: its dtype, no GGUF entry, untied if asked."""
    config = copy.deepcopy(lm.model.config)
    for cfg in {id(c): c for c in (config, config.get_text_config())}.values():
        quant = getattr(cfg, "quantization_config", None)
        if quant is not None:
            method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
            if str(getattr(method, "value", method)) != "gguf":
                raise UserError(f"cannot export a quantized model ({getattr(method, 'value', method)}): load it "
                                "without --quantization (bfloat16 or float32) to export")
            delattr(cfg, "quantization_config")  # the weights written are plain safetensors
        cfg.dtype = lm.dtype
        if untie:
            cfg.tie_word_embeddings = False
    return config


def _add_to_state(state: dict[str, torch.Tensor], keys: list[str], delta: torch.Tensor) -> None:
    """state[key] ← state[key] + delta for each key (names of one shared tensor: they get one new
    tensor), in float32, rounded once to the weight's dtype; the loaded tensor is never written."""
    for key in keys:
        if key not in state:
            raise UserError(f"cannot find {key} in the model's state dict")
    w = state[keys[0]]
    new = (w.float() + delta.detach().to(device=w.device, dtype=torch.float32)).to(w.dtype).contiguous()
    for key in keys:
        state[key] = new


def _fold_imported(lm: LoadedModel, state: dict[str, torch.Tensor], plan: RoutingPlan) -> list[str]:
    """Parameter deltas and LoRA factors (B·A) added into ``state``; returns the keys changed."""
    owners = lm.router.owners() if plan.weights else {}
    merged = []
    for name, delta in plan.weights.items():
        keys = [f"{m}.{a}" for m, a in owners.get(name, [])] or [name]
        _add_to_state(state, keys, delta)
        merged += keys
    for name, (a, b) in plan.lora.items():
        _add_to_state(state, [f"{name}.weight"], b.float() @ a.float())
        merged.append(f"{name}.weight")
    return merged


def export_checkpoint(lm: LoadedModel, stack: EditStack, out: Path) -> dict:
    """A standalone HF folder that ``AutoModelForCausalLM.from_pretrained`` loads as the edited
    model, in the loaded model's dtype; anything that cannot be written so is refused.

    RMU/SRMU deltas are added to the MLP output projections (in float32, rounded once). An MRP
    "stream" projection is folded exactly (``_fold_stream``: embedding, and every attention and
    MLP output projection up to its deepest block; lm_head untied) and checked against the
    hooked model on a probe batch. Projections of block outputs (MRP placement "site") are
    refused: the next block reads the stream through RMSNorm/LayerNorm, whose scale depends on
    the removed component, and position 0 may be spared, so no standard weights reproduce them.
    Only the changed tensors are new; the rest are written from the loaded weights as they are.
    ``unlearnviz_export.json`` (``unlearnviz.model.exports``) names the edits, their content
    hash, the base's fingerprint and every file's SHA-256.
    """
    import shutil

    plan = stack.plan()
    if plan is None:
        raise UserError("nothing to export: the edit stack is empty")
    if plan.projections:
        raise UserError("an MRP edit with placement=site cannot be exported as a standalone checkpoint (its "
                        "block-output projections are read through the next block's norm, so no standard "
                        "weights reproduce them): refit with --set placement=stream, which folds exactly")
    state = dict(lm.model.state_dict())  # the loaded tensors themselves: entries are replaced, never written to
    for key, value in state.items():
        if value.is_meta:
            raise UserError(f"cannot export a model whose weights are offloaded ({key} is not in memory): "
                            "load it without CPU/disk offload to export")
        if key.endswith("weight") and not value.is_floating_point():
            raise UserError(f"cannot export a quantized model ({key} is {str(value.dtype).replace('torch.', '')}): "
                            "load it without --quantization (bfloat16 or float32) to export")
    merged = []
    for layer, delta in plan.deltas.items():
        module = lm.adapter.mlp_out(layer)
        key = f"{lm.adapter.mlp_out_name(layer)}.weight"
        _add_to_state(state, [key], delta.T if is_conv1d(module) else delta)
        merged.append(key)
    merged += _fold_imported(lm, state, plan)
    stream_info = None
    if plan.stream is not None:
        why = lm.adapter.stream_unsupported()
        if why:
            raise UserError(f"cannot fold the MRP stream projection into {lm.adapter.family!r}: {why}")
        stream_info = _fold_stream(lm, state, plan.stream)
    fresh = _model_on(lm, _export_config(lm, untie=stream_info is not None), state)
    if stream_info is not None:
        check = _fold_check(lm, fresh, RoutingPlan(deltas=plan.deltas, stream=plan.stream, weights=plan.weights,
                                                   lora=plan.lora))
        if not check["max_abs_logit_diff"] <= check["tolerance"]:
            raise UserError(f"the folded checkpoint's logits differ from the edited model's by "
                            f"{check['max_abs_logit_diff']:.3g} (tolerance {check['tolerance']:.3g}): this "
                            f"{lm.adapter.family!r} model feeds its blocks in a way the fold does not cover; "
                            "nothing was written")
        stream_info["check"] = check
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    fresh.save_pretrained(tmp, max_shard_size=EXPORT_SHARD)
    del fresh, state
    drop_gguf_quantization(tmp)  # whatever transformers wrote: these weights are plain safetensors
    lm.tokenizer.save_pretrained(tmp)
    info = {"format": EXPORT_FORMAT, "kind": "unlearnviz export", "dtype": str(lm.dtype).replace("torch.", ""),
            "merged_weights": merged,
            "edits": [{"method": e.method, "hparams": e.hparams, "label": e.label()} for e in stack.edits],
            "edit_hash": plan_content_hash(plan), "base_model": lm.name,
            "base_fingerprint": lm.fingerprint(refresh=False), "versions": versions()}
    if stream_info is not None:
        info["stream_folded"] = stream_info
    info["files"] = file_hashes(tmp)
    atomic_write_text(tmp / EXPORT_MANIFEST, json.dumps(info, indent=2, default=float) + "\n")
    # Swap in: the old export is moved aside, not deleted, until the new one is in place, so an
    # interruption leaves either the old folder or the new one (and loaders verify checksums).
    old = out.with_name(out.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        if old.exists() and not out.exists():
            old.rename(out)  # put the previous export back
        raise
    if old.exists():
        shutil.rmtree(old)
    return info


def verify_export(folder: Path) -> dict:
    """The export's manifest, after checking every file it lists against its SHA-256."""
    return read_export(folder)


def load_exported(folder: Path) -> LoadedModel:
    """Load an exported checkpoint after verifying its manifest (its info() names the edit)."""
    from unlearnviz.model.loading import load_model

    read_export(folder)
    return load_model(str(folder))
