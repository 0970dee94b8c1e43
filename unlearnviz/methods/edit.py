"""Edits: only what changed (parameter deltas, projection bases), never a model copy.

An Edit acts on a forward pass through the model's router (never by mutating weights), can be
restricted to chosen batch rows, stacks with other edits (continual unlearning), saves as
safetensors plus a JSON manifest (with checksums, and the fingerprint of the model it belongs
to), and exports as a standalone Hugging Face checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from unlearnviz.errors import UserError
from unlearnviz.io import atomic_write_bytes, atomic_write_text
from unlearnviz.model.adapter import is_conv1d
from unlearnviz.model.loading import LoadedModel
from unlearnviz.model.routing import RoutingPlan, orthonormal_rows

EDIT_FILE = "edit.safetensors"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1


@dataclass
class Edit:
    """One unlearning request's result.

    ``deltas[layer]`` is added to block ``layer``'s MLP output projection ([out, in], nn.Linear
    convention). ``projections[layer]`` holds orthonormal rows Q [k, d] removed from block
    ``layer``'s output (h ← h − h QᵀQ).
    """

    method: str
    hparams: dict
    deltas: dict[int, torch.Tensor] = field(default_factory=dict)
    projections: dict[int, torch.Tensor] = field(default_factory=dict)
    offsets: dict[int, torch.Tensor] = field(default_factory=dict)  # centred projections' μ
    meta: dict = field(default_factory=dict)

    @property
    def spare_first(self) -> bool:
        return bool(self.meta.get("spare_first", False))

    def plan(self, rows: torch.Tensor | None = None) -> RoutingPlan:
        return RoutingPlan(deltas=dict(self.deltas), projections=dict(self.projections),
                           offsets=dict(self.offsets), spare_first=self.spare_first, rows=rows)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {f"delta.{k}": v.detach().float().cpu().contiguous() for k, v in self.deltas.items()}
        out.update({f"projection.{k}": v.detach().float().cpu().contiguous() for k, v in self.projections.items()})
        out.update({f"offset.{k}": v.detach().float().cpu().contiguous() for k, v in self.offsets.items()})
        return out

    def n_params(self) -> int:
        return sum(v.numel() for v in self.tensors().values())

    def label(self) -> str:
        return self.meta.get("label") or f"{self.method}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def versions() -> dict:
    import transformers

    import unlearnviz

    return {"unlearnviz": unlearnviz.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def save_edit(edit: Edit, folder: Path, lm: LoadedModel, stack_index: int = 0) -> Path:
    """Write edit.safetensors and manifest.json atomically; the manifest carries checksums."""
    from safetensors.torch import save

    folder.mkdir(parents=True, exist_ok=True)
    blob = save(edit.tensors()) if edit.tensors() else save({"empty": torch.zeros(0)})
    manifest = {
        "format": FORMAT_VERSION,
        "method": edit.method,
        "hparams": edit.hparams,
        "model": {"name": lm.name, "fingerprint": lm.fingerprint(refresh=False), "family": lm.adapter.family,
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
    parts: dict[str, dict[int, torch.Tensor]] = {"delta": {}, "projection": {}, "offset": {}}
    for key, t in tensors.items():
        kind, _, layer = key.partition(".")
        if kind in parts:
            parts[kind][int(layer)] = t.to(lm.device)
    return Edit(method=manifest["method"], hparams=manifest.get("hparams", {}), deltas=parts["delta"],
                projections=parts["projection"], offsets=parts["offset"], meta=manifest.get("meta", {}))


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
        for e in chosen:
            for k, v in e.offsets.items():
                offsets.setdefault(k, v)  # later requests see the same retain mean at that site
            for k, v in e.deltas.items():
                deltas[k] = deltas[k] + v if k in deltas else v
            for k, v in e.projections.items():
                directions.setdefault(k, []).append(v)
        projections = {k: orthonormal_rows(torch.cat(v)) for k, v in directions.items()}
        return RoutingPlan(deltas=deltas, projections=projections, offsets=offsets,
                           spare_first=any(e.spare_first for e in chosen), rows=rows)


def export_checkpoint(lm: LoadedModel, stack: EditStack, out: Path) -> dict:
    """A standalone HF folder: MLP deltas merged into the weights.

    Projections at block outputs cannot be folded exactly into a standard architecture (the
    next block reads the stream through RMSNorm/LayerNorm, whose scale depends on the removed
    component: METHODS.md §3.4). They are written beside the weights as
    ``unlearnviz_projections.safetensors`` and applied by ``load_exported``; the manifest says
    so, and a plain ``from_pretrained`` of such a folder is the model *without* them.
    """
    plan = stack.plan()
    if plan is None:
        raise UserError("nothing to export: the edit stack is empty")
    state = {k: v.detach().clone() for k, v in lm.model.state_dict().items()}
    merged = []
    for layer, delta in plan.deltas.items():
        module = lm.adapter.mlp_out(layer)
        key = f"{lm.adapter.mlp_out_name(layer)}.weight"
        if key not in state:
            raise UserError(f"cannot find {key} in the model's state dict")
        d = delta.detach().to(state[key].dtype).to(state[key].device)
        state[key] = state[key] + (d.T if is_conv1d(module) else d)
        merged.append(key)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    # A fresh model of the same config receives the merged weights: the loaded one is untouched.
    fresh = type(lm.model)(lm.model.config)
    fresh.load_state_dict(state)
    fresh.save_pretrained(tmp, safe_serialization=True)
    lm.tokenizer.save_pretrained(tmp)
    info = {"merged_weights": merged, "projection_layers": sorted(plan.projections),
            "edits": [{"method": e.method, "hparams": e.hparams, "label": e.label()} for e in stack.edits],
            "base_model": lm.name, "base_fingerprint": lm.fingerprint(refresh=False)}
    if plan.projections:
        info["spare_first"] = plan.spare_first
        tensors = {f"projection.{k}": v.float().cpu().contiguous() for k, v in plan.projections.items()}
        tensors.update({f"offset.{k}": v.float().cpu().contiguous() for k, v in plan.offsets.items()})
        save_file(tensors, str(tmp / "unlearnviz_projections.safetensors"))
        info["note"] = ("MRP projections are applied by unlearnviz.methods.edit.load_exported; a plain "
                        "from_pretrained of this folder is the model without them (they cannot be "
                        "folded exactly into the weights).")
    (tmp / "unlearnviz_export.json").write_text(json.dumps(info, indent=2, default=float))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    return info


def load_exported(folder: Path) -> LoadedModel:
    """Load an exported checkpoint with its projections (if any) active by default."""
    from unlearnviz.model.loading import load_model

    lm = load_model(str(folder))
    proj_file = folder / "unlearnviz_projections.safetensors"
    if proj_file.exists():
        tensors = load_file(str(proj_file))
        plan = RoutingPlan(projections={int(k.split(".")[1]): v for k, v in tensors.items() if k.startswith("projection")},
                           offsets={int(k.split(".")[1]): v for k, v in tensors.items() if k.startswith("offset")},
                           spare_first=json.loads((folder / "unlearnviz_export.json").read_text()).get("spare_first", False))
        lm.default_plan = plan  # type: ignore[attr-defined]
    return lm
