"""Unlearned models made by other tools, imported as edits of their base.

Most unlearned models were not fitted here: released checkpoints (RMU's Zephyr-7B, the TOFU and
MUSE baselines of open-unlearning: gradient ascent, GradDiff, NPO, SimNPO, ...) and LoRA adapters
from any trainer. To compare one with its base in every view, the import diffs the two weight
sets and keeps only what differs: each changed tensor becomes an additive delta
(``Edit.weights``) and a LoRA adapter stays two low-rank factors per module (``Edit.lora``),
both routed per batch row like the tool's own edits. So the original and the unlearned model
still run as the two halves of one batched forward, and memory is the base plus the changed
tensors: an RMU checkpoint (Li et al. 2024, "The WMDP Benchmark") changes three matrices, a
full fine-tune changes every one.

Nothing is loaded before it is checked: the family, the shapes (read from safetensors headers,
no tensor data), the config fields that change the computation and the tokenizer's vocabulary
must all match the base, and each mismatch is one line naming it. A safetensors checkpoint is
then streamed a block of rows at a time, so it never sits in memory whole. A GGUF file is read
through transformers' GGUF loader, which dequantises it into a second model while the diff runs
(documented in ``describe_unlearned``). A PEFT adapter is read as its tensors and its config
(peft's own ``PeftConfig``); it is never attached to the loaded model, whose weights stay as
they are (LoRA: Hu et al. 2021; rsLoRA's α/√r scale: Kalajdzievski 2023).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from unlearnviz.errors import UserError
from unlearnviz.methods.base import ProgressFn, Ticker
from unlearnviz.methods.edit import Edit
from unlearnviz.model.adapter import is_conv1d
from unlearnviz.model.exports import sha256_file
from unlearnviz.model.loading import LoadedModel

IMPORTED = "imported"  # Edit.method of an imported edit (no fitting method of the registry)
KINDS = ("checkpoint", "lora", "gguf")
CHUNK_ELEMENTS = 1 << 22  # rows compared at a time: 16 MB of float32, whatever the tensor's size
SAFE_INDEX, PICKLE_INDEX = "model.safetensors.index.json", "pytorch_model.bin.index.json"
ADAPTER_CONFIG, ADAPTER_SAFE, ADAPTER_PICKLE = "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]

# Config keys that record how a model was saved or trained, not what it computes: never compared.
# tie_word_embeddings is handled where the tensors are paired (a tied lm_head is the embedding).
BOOKKEEPING = frozenset({
    "_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype", "use_cache",
    "quantization_config", "tie_word_embeddings", "output_hidden_states", "output_attentions", "return_dict",
    "chunk_size_feed_forward", "id2label", "label2id", "problem_type", "num_labels", "initializer_range",
    "initializer_factor", "pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "decoder_start_token_id",
    "tokenizer_class", "prefix", "task_specific_params", "finetuning_task", "torchscript", "use_return_dict",
    "gradient_checkpointing", "pretraining_tp", "summary_type", "summary_use_proj", "summary_activation",
    "summary_proj_to_labels", "summary_first_dropout", "auto_map", "custom_pipelines",
})
# PEFT options that change what an adapter computes beyond x·Aᵀ·Bᵀ·scale (refused, one line each).
NOT_PLAIN_LORA = {
    "use_dora": "DoRA (a learned magnitude per output: not a low-rank sum)",
    "lora_bias": "a bias on lora_B",
    "use_qalora": "QALoRA (pooled inputs)",
    "alora_invocation_tokens": "aLoRA (active only after its invocation tokens)",
    "target_parameters": "LoRA on bare parameters (target_parameters)",
    "trainable_token_indices": "trainable token rows",
    "layer_replication": "layer replication (a model with other blocks)",
    "use_bdlora": "block-diagonal LoRA",
    "arrow_config": "Arrow routing between adapters",
    "kasa_config": "KaSA (a learned diagonal and a truncated base)",
    "monteclora_config": "Monte Carlo LoRA",
}
LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
                      r"(?:\.(?!weight$)[^.]+)?(?:\.weight)?$")
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


@dataclass
class Source:
    """Where an import reads from: what it is, its weight files, how it is recorded."""

    source: str  # as recorded in the edit: an absolute path or a hub id
    kind: str  # checkpoint | lora | gguf
    root: Path  # the folder (a GGUF file's own folder)
    files: list[Path]  # weight files: safetensors shards, pickle shards, one adapter file or one .gguf
    fmt: str  # safetensors | pickle | gguf
    name: str  # shown in messages and the edit's label

    @property
    def disk_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


@dataclass
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str  # safetensors' name: F32, BF16, I8, ...
    file: Path

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class _Diff:
    """What the diff keeps, and how much of the source it read."""

    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    compared: int = 0
    hasher: object = field(default_factory=hashlib.sha256)

    def kept_bytes(self) -> int:
        seen: dict[int, int] = {}
        for t in [*self.weights.values(), *(x for ab in self.lora.values() for x in ab)]:
            seen.setdefault(id(t), t.numel() * t.element_size())
        return sum(seen.values())


# ---- finding the source --------------------------------------------------------------------------
def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def _hub_folder(repo: str, allow_pickle: bool) -> Path:
    """A hub id's files in the local Hugging Face cache (downloaded where the network is)."""
    from huggingface_hub import snapshot_download

    patterns = HUB_PATTERNS + (["*.bin"] if allow_pickle else [])
    try:
        return Path(snapshot_download(repo, allow_patterns=patterns, local_files_only=True))
    except Exception:  # not cached (huggingface_hub raises several types): download, if there is a network
        if _offline():
            raise UserError(f"cannot import hub model {repo!r}: it needs a network (HF_HUB_OFFLINE=1 is set) or a "
                            f"local folder: download it where the network is and give the folder") from None
    try:
        return Path(snapshot_download(repo, allow_patterns=patterns))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot download hub model {repo!r} (unknown id or hub unreachable): {first[:160]}") from None


def _index_files(folder: Path, index: str) -> list[Path]:
    try:
        weight_map = json.loads((folder / index).read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{folder / index}: not a readable shard index (needs a weight_map)") from None
    files = []
    for name in dict.fromkeys(weight_map.values()):
        path = (folder / str(name)).resolve()
        if path.parent != folder.resolve():
            raise UserError(f"{folder / index}: shard {name!r} is outside the folder")
        if not path.is_file():
            raise UserError(f"{folder / index} names shard {name}, which is missing")
        files.append(path)
    return files


def locate(source: str, allow_pickle: bool = False) -> Source:
    """What ``source`` is: a checkpoint folder (model.safetensors, a sharded index or, with
    ``allow_pickle``, pytorch_model.bin), a PEFT adapter folder, a .gguf file, or a hub id."""
    text = str(source).strip()
    if not text:
        raise UserError("no unlearned model given: name a checkpoint folder, a PEFT adapter folder, a .gguf file "
                        "or a hub id")
    path = Path(text).expanduser()
    if not path.exists():
        if text.startswith((".", "/", "~")) or text.count("/") > 1 or " " in text or text.endswith(".gguf"):
            raise UserError(f"unlearned model not found: {text} (give a checkpoint folder, a PEFT adapter folder, "
                            "a .gguf file or a hub id owner/name)")
        folder = _hub_folder(text, allow_pickle)
        found = locate(str(folder), allow_pickle)
        found.source, found.name = text, text
        return found
    path = path.resolve()
    if path.is_file():
        if path.suffix == ".gguf":
            return Source(str(path), "gguf", path.parent, [path], "gguf", path.stem)
        raise UserError(f"{text} is a file: give the checkpoint's folder (with config.json), a PEFT adapter folder "
                        "or a .gguf file")
    files = {p.name for p in path.iterdir()}
    if ADAPTER_CONFIG in files:
        if ADAPTER_SAFE in files:
            return Source(str(path), "lora", path, [path / ADAPTER_SAFE], "safetensors", path.name)
        if ADAPTER_PICKLE in files:
            if not allow_pickle:
                raise UserError(f"{text} holds its adapter only as pickle ({ADAPTER_PICKLE}), which can run code "
                                "when loaded; convert it to safetensors or pass --allow-pickle (operator opt-in)")
            return Source(str(path), "lora", path, [path / ADAPTER_PICKLE], "pickle", path.name)
        raise UserError(f"{text} has {ADAPTER_CONFIG} but no {ADAPTER_SAFE}")
    if "config.json" not in files:
        ggufs = sorted(p for p in path.iterdir() if p.suffix == ".gguf")
        if len(ggufs) == 1:
            return locate(str(ggufs[0]), allow_pickle)
        raise UserError(f"{text} is neither a Hugging Face checkpoint (no config.json) nor a PEFT adapter "
                        f"(no {ADAPTER_CONFIG})" + (": name one of its .gguf files" if ggufs else ""))
    if SAFE_INDEX in files:
        return Source(str(path), "checkpoint", path, _index_files(path, SAFE_INDEX), "safetensors", path.name)
    safe = sorted(path / f for f in files if f.endswith(".safetensors"))
    if safe:
        return Source(str(path), "checkpoint", path, safe, "safetensors", path.name)
    pickles = _index_files(path, PICKLE_INDEX) if PICKLE_INDEX in files else (
        [path / "pytorch_model.bin"] if "pytorch_model.bin" in files else [])
    if pickles:
        if not allow_pickle:
            raise UserError(f"{text} holds only pickle weights (.bin), which can run code when loaded; convert "
                            "to safetensors or pass --allow-pickle (operator opt-in)")
        return Source(str(path), "checkpoint", path, pickles, "pickle", path.name)
    raise UserError(f"{text} has no weights (model.safetensors, {SAFE_INDEX} or pytorch_model.bin)")


# ---- reading headers and tensors -----------------------------------------------------------------
_PICKLE_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
                  torch.int8: "I8", torch.uint8: "U8", torch.int32: "I32", torch.int64: "I64", torch.bool: "BOOL"}


def _pickle_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A pickle weight file, memory-mapped (tensor data read when touched); operator opt-in only."""
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot read {path.name}: {(str(exc).splitlines() or [type(exc).__name__])[0][:160]}") from None


def headers(src: Source) -> dict[str, TensorInfo]:
    """Every tensor's shape and dtype, from safetensors headers (no tensor data is read)."""
    from safetensors import safe_open

    out: dict[str, TensorInfo] = {}
    for f in src.files:
        if src.fmt == "safetensors":
            try:
                with safe_open(str(f), framework="pt") as st:
                    for key in st.keys():
                        sl = st.get_slice(key)
                        out[key] = TensorInfo(tuple(sl.get_shape()), str(sl.get_dtype()), f)
            except Exception as exc:  # safetensors raises its own error types for damaged headers
                raise UserError(f"cannot read {f.name}: not a valid safetensors file "
                                f"({(str(exc).splitlines() or [type(exc).__name__])[0][:120]})") from None
        elif src.fmt == "pickle":
            for key, t in _pickle_tensors(f).items():
                out[key] = TensorInfo(tuple(t.shape), _PICKLE_DTYPES.get(t.dtype, str(t.dtype)), f)
    return out


@contextlib.contextmanager
def _readers(src: Source, keys: dict[str, TensorInfo]):
    """key → read(rows) for each tensor: a slice of rows, read from the file only then."""
    from safetensors import safe_open

    with contextlib.ExitStack() as stack:
        if src.fmt == "safetensors":
            handles = {f: stack.enter_context(safe_open(str(f), framework="pt")) for f in src.files}
            yield {k: (lambda rows, h=handles[info.file], k=k: h.get_slice(k)[rows]) for k, info in keys.items()}
        else:
            tensors: dict[str, torch.Tensor] = {}
            for f in src.files:
                tensors.update(_pickle_tensors(f))
            yield {k: (lambda rows, t=tensors[k]: t[rows]) for k in keys}


def _read_config(folder: Path, name: str, gguf_file: str | None = None):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder, trust_remote_code=False, local_files_only=True,
                                          **({"gguf_file": gguf_file} if gguf_file else {}))
    except Exception as exc:  # transformers raises many types for unknown or custom model types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if "trust_remote_code" in str(exc) or "custom code" in str(exc):
            raise UserError(f"{name} needs custom code (trust_remote_code): only built-in transformers families "
                            "can be imported") from None
        raise UserError(f"cannot read the config of {name}: {first[:160]}") from None


def _text(cfg):
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def _shape_facts(cfg) -> dict:
    t = _text(cfg)
    return {"model_type": getattr(cfg, "model_type", None), "layers": getattr(t, "num_hidden_layers", None),
            "hidden_size": getattr(t, "hidden_size", None), "vocab_size": getattr(t, "vocab_size", None)}


def _quant_method(cfg) -> str | None:
    for c in (cfg, _text(cfg)):
        q = getattr(c, "quantization_config", None)
        if q is not None:
            method = q.get("quant_method") if isinstance(q, dict) else getattr(q, "quant_method", None)
            method = str(getattr(method, "value", method))
            if method != "gguf":  # a stale entry of a GGUF conversion: the weights are plain
                return method
    return None


def gguf_facts(path: Path) -> dict:
    """A GGUF file's architecture, blocks, width, vocabulary and tensors, from its header (GGUFReader
    maps the file; tensor data is not dequantised)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # gguf raises ValueError and others for damaged files
        raise UserError(f"cannot read {path.name}: not a valid GGUF file ({str(exc)[:120]})") from None

    def value(key: str):
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    arch = value("general.architecture")
    embed = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)  # ggml order: [d, vocab]
    return {"model_type": arch, "layers": value(f"{arch}.block_count"), "hidden_size": value(f"{arch}.embedding_length"),
            "vocab_size": None if embed is None else int(embed.shape[-1]), "tensors": len(reader.tensors),
            "parameters": sum(int(t.n_elements) for t in reader.tensors)}


# ---- describe ------------------------------------------------------------------------------------
def _mb(n: int) -> float:
    return round(n / 2**20, 1)


def describe_unlearned(source: str, allow_pickle: bool = False, base_dtype: torch.dtype | None = None) -> dict:
    """What importing ``source`` would read and keep, before anything is loaded: kind, family,
    tensors, bytes on disk (safetensors headers only: no tensor data is read) and the most memory
    the import may keep beside the base (only tensors that differ are kept; ``base_dtype``: count
    them in the base's dtype, else in the stored one). A GGUF import also needs a second,
    dequantised model while it diffs (``peak_extra_bytes``). A hub id is downloaded into the
    Hugging Face cache first (where the network is), so the import then reads it from there."""
    src = locate(source, allow_pickle)
    out: dict = {"source": src.source, "kind": src.kind, "name": src.name, "files": [f.name for f in src.files],
                 "disk_bytes": src.disk_bytes}

    def size(info: TensorInfo) -> int:
        if base_dtype is not None and info.dtype in FLOAT_DTYPES:
            return info.numel * torch.empty((), dtype=base_dtype).element_size()
        return info.numel * _ELEMENT_BYTES.get(info.dtype, 4)

    if src.kind == "gguf":
        facts = gguf_facts(src.files[0])
        n = facts.pop("parameters")
        width = torch.empty((), dtype=base_dtype).element_size() if base_dtype is not None else 4
        out.update({**facts, "parameters": n, "max_kept_bytes": n * width, "peak_extra_bytes": n * width})
        out["memory"] = (f"at most {_mb(n * width)} MB kept beside the base: only tensors that differ are kept; "
                         f"while importing, the GGUF is dequantised into a second model ({_mb(n * width)} MB)")
        return out
    heads = headers(src)
    if src.kind == "lora":
        cfg = _lora_config(src)
        lora_keys = {k: v for k, v in heads.items() if LORA_KEY.match(k)}
        full = {k: v for k, v in heads.items() if k not in lora_keys}
        ranks = sorted({v.shape[0] for k, v in lora_keys.items() if ".lora_A" in k or "lora_embedding_A" in k})
        kept = sum(size(v) for v in heads.values())
        out.update({"peft_type": str(getattr(cfg.peft_type, "value", cfg.peft_type)),
                    "base_model": cfg.base_model_name_or_path,
                    "architecture": (cfg.auto_mapping or {}).get("base_model_class"),
                    "rank": cfg.r, "ranks": ranks, "alpha": cfg.lora_alpha, "rslora": bool(cfg.use_rslora),
                    "targets": sorted(cfg.target_modules) if isinstance(cfg.target_modules, (set, list))
                    else cfg.target_modules,
                    "lora_modules": len({LORA_KEY.match(k)["module"] for k in lora_keys}),
                    "modules_to_save": sorted(cfg.modules_to_save or []), "full_tensors": len(full),
                    "tensors": len(heads), "parameters": sum(v.numel for v in heads.values()),
                    "not_plain_lora": _not_plain(cfg), "max_kept_bytes": kept})
        out["memory"] = (f"at most {_mb(kept)} MB kept beside the base: the low-rank factors as they are, and of the "
                         f"{len(full)} full tensors (modules_to_save) only those that differ")
        return out
    cfg = _read_config(src.root, src.name)
    facts = _shape_facts(cfg)
    kept = sum(size(v) for v in heads.values() if v.dtype in FLOAT_DTYPES)
    out.update({**facts, "architecture": (getattr(cfg, "architectures", None) or [None])[0],
                "tie_word_embeddings": bool(getattr(_text(cfg), "tie_word_embeddings", False)),
                "quantization": _quant_method(cfg), "tensors": len(heads),
                "parameters": sum(v.numel for v in heads.values()),
                "dtypes": sorted({v.dtype for v in heads.values()}), "max_kept_bytes": kept})
    out["memory"] = f"at most {_mb(kept)} MB kept beside the base: only tensors that differ are kept"
    return out


_ELEMENT_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
                  "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


# ---- checks --------------------------------------------------------------------------------------
def check_base(lm: LoadedModel) -> None:
    """The base must hold plain float weights in memory: a diff reads every one of them."""
    if lm.quantization:
        raise UserError(f"the base is loaded {lm.quantization}-quantized: an import compares float weights; "
                        "load the base in bfloat16 or float32")
    for name, p in lm.model.named_parameters():
        if p.is_meta:
            raise UserError(f"the base's {name} is offloaded (not in memory): load the base without CPU/disk "
                            "offload to import")


def _family_line(lm: LoadedModel, name: str, cfg) -> str | None:
    mine, theirs = _shape_facts(lm.model.config), _shape_facts(cfg)
    if mine == theirs:
        return None
    differ = [k for k in ("hidden_size", "vocab_size") if mine[k] != theirs[k]]
    extra = "".join(f", {k.replace('_', ' ')} {theirs[k]} vs {mine[k]}" for k in differ)
    return (f"{name} is a {theirs['model_type']} model with {theirs['layers']} layers, the base {lm.name} is "
            f"{mine['model_type']} with {mine['layers']} layers{extra}: import a checkpoint of the base's own family "
            "and size")


def check_config(lm: LoadedModel, cfg, name: str) -> None:
    """Refuse, in one line, a checkpoint of another family or size, or whose config computes
    differently (rope_theta, rms_norm_eps, activation, ...); bookkeeping keys are not compared."""
    line = _family_line(lm, name, cfg)
    if line:
        raise UserError(line)
    quant = _quant_method(cfg)
    if quant:
        raise UserError(f"{name} is a {quant}-quantized checkpoint: an import diffs float weights; give the "
                        "unquantized checkpoint")
    arch = list(getattr(cfg, "architectures", None) or [])
    if arch and type(lm.model).__name__ not in arch:
        raise UserError(f"{name} was saved as {arch[0]}, the base is {type(lm.model).__name__}: import a causal LM "
                        "checkpoint of the same class")
    mine, theirs = lm.model.config.to_dict(), cfg.to_dict()
    differ = []
    for key in sorted(set(mine) | set(theirs)):
        if key in BOOKKEEPING or key.startswith("_") or "dropout" in key or key.endswith("pdrop"):
            continue
        if _plain(mine.get(key)) != _plain(theirs.get(key)):
            differ.append(f"{key} {_short(theirs.get(key))} vs {_short(mine.get(key))}")
    if differ:
        more = f" (and {len(differ) - 3} more)" if len(differ) > 3 else ""
        raise UserError(f"{name}'s config computes differently from the base {lm.name}'s: {'; '.join(differ[:3])}"
                        f"{more}")


def _plain(value):
    """A config value with its bookkeeping entries dropped (nested configs), for comparison."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k not in BOOKKEEPING and not k.startswith("_")}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _short(value) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_tokenizer(lm: LoadedModel, folder: Path, name: str, gguf_file: str | None = None) -> bool:
    """Refuse a checkpoint whose own tokenizer has another vocabulary; False when it has none."""
    if gguf_file is None and not any((folder / f).exists() for f in TOKENIZER_FILES):
        return False
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=False, local_files_only=True,
                                            **({"gguf_file": gguf_file} if gguf_file else {}))
    except Exception as exc:  # tokenizers raise many types for unreadable files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot read the tokenizer of {name}: {first[:160]}") from None
    theirs, mine = tok.get_vocab(), lm.tokenizer.get_vocab()
    if theirs != mine:
        changed = sorted(set(theirs.items()) ^ set(mine.items()), key=lambda kv: kv[1])
        example = f"; first difference at id {changed[0][1]}: {changed[0][0]!r}" if changed else ""
        raise UserError(f"{name}'s tokenizer differs from the base {lm.name}'s ({len(theirs)} tokens vs "
                        f"{len(mine)}{example}): the same weights would read other tokens")
    return True


def _check_gguf_sizes(lm: LoadedModel, src: Source) -> None:
    """A GGUF of another size is refused from its header, before it is dequantised."""
    facts = gguf_facts(src.files[0])
    mine = _shape_facts(lm.model.config)
    differ = [f"{k.replace('_', ' ')} {facts[k]} vs {mine[k]}" for k in ("layers", "hidden_size", "vocab_size")
              if facts[k] is not None and facts[k] != mine[k]]
    if differ:
        raise UserError(f"{src.name} is a {facts['model_type']} GGUF that differs from the base {lm.name} "
                        f"({mine['model_type']}): {', '.join(differ)}")


# ---- pairing checkpoint keys with the base's parameters ------------------------------------------
def _renamer(model: torch.nn.Module) -> Callable[[str, dict], tuple[str, bool]]:
    """transformers' own checkpoint-key renaming for this model (prefixes, legacy names); the
    flag says a key needs one of its many-to-one conversions (fused experts, split qkv)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    except ImportError:  # an older transformers: keys are taken as they are
        return lambda key, known: (key, False)
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]

    def rename(key: str, known: dict) -> tuple[str, bool]:
        new, pattern = rename_source_key(key, renamings, converters, getattr(model, "base_model_prefix", None), known)
        return new, pattern is not None
    return rename


class _NeedsConversion(Exception):
    """The family's checkpoint layout differs from its modules (transformers converts on load)."""


def pair_keys(lm: LoadedModel, heads: dict[str, TensorInfo], cfg,
              name: str) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]], dict[str, str]]:
    """Pair every parameter of the base (``named_parameters()``'s names: a tied matrix once) with
    the checkpoint key it reads, after checking every shape. A tied lm_head that save_pretrained
    dropped reads the checkpoint's embedding. Also returned: (parameter, key, other key) where
    the base ties two names that the checkpoint stores apart (they must hold equal tensors: an
    edit of a shared matrix changes both of its uses), and the keys of persistent buffers."""
    model = lm.model
    every = list(model.named_parameters(remove_duplicate=False))
    params = dict(every)
    canonical = {id(p): n for n, p in model.named_parameters()}
    buffers = {k for k in model.state_dict() if k not in params}
    known = {**{k: True for k in params}, **{k: True for k in buffers}}
    rename = _renamer(model)
    ignore = [re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_load_unexpected", None) or [])]
    ignore_missing = [re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_load_missing", None) or [])]
    mapped: dict[str, str] = {}
    buffer_keys: dict[str, str] = {}
    unknown = []
    for key in heads:
        new, converted = rename(key, known)
        if converted:
            raise _NeedsConversion(key)
        if new in params:
            mapped[new] = key
        elif new in buffers:
            buffer_keys[new] = key
        elif not any(p.search(key) for p in ignore):
            unknown.append(key)
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise UserError(f"{name} has tensor {unknown[0]}{more}, which the base {lm.name} ({lm.adapter.family}) has "
                        "no parameter for: is it a checkpoint of another architecture?")
    ties = bool(getattr(_text(cfg), "tie_word_embeddings", False))
    tied = {k: v for k, v in (getattr(type(model), "_tied_weights_keys", None) or {}).items() if isinstance(v, str)}
    keys_of: dict[str, list[str]] = {}  # canonical name → the checkpoint keys of all its names
    missing = []
    for pname, p in every:
        key = mapped.get(pname)
        if key is None and ties and tied.get(pname) in mapped:
            key = mapped[tied[pname]]  # the checkpoint's lm_head is its embedding
        if key is not None:
            keys_of.setdefault(canonical[id(p)], []).append(key)
    for pname in canonical.values():
        if pname not in keys_of and not any(p.search(pname) for p in ignore_missing):
            missing.append(pname)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{name} lacks the base's {missing[0]}{more}: a checkpoint must hold every weight of the model")
    pairs = [(p, keys[0]) for p, keys in keys_of.items()]
    aliases = [(p, keys[0], k) for p, keys in keys_of.items() for k in dict.fromkeys(keys[1:]) if k != keys[0]]
    bad = [(p, k) for p, keys in keys_of.items() for k in keys if tuple(heads[k].shape) != tuple(params[p].shape)]
    if bad:
        p, k = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise UserError(f"tensor {k} is {list(heads[k].shape)} in {name}, {list(params[p].shape)} in the base "
                        f"{lm.name}{more}: not a checkpoint of this model")
    ints = [k for _, k in pairs if heads[k].dtype not in FLOAT_DTYPES]
    if ints:
        raise UserError(f"{name} stores {ints[0]} as {heads[ints[0]].dtype} (quantized weights): an import diffs "
                        "float weights; give the unquantized checkpoint")
    return pairs, aliases, buffer_keys


# ---- the diff ------------------------------------------------------------------------------------
def _hash(h, key: str, info_dtype: str, shape: tuple, chunk: torch.Tensor | None) -> None:
    if chunk is None:
        h.update(f"{key}|{info_dtype}|{list(shape)}\n".encode())
    else:
        h.update(chunk.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


@torch.no_grad()
def diff_tensor(base: torch.Tensor, read: Callable[[slice], torch.Tensor], hasher=None) -> torch.Tensor | None:
    """``checkpoint − base`` in the base's dtype on its device, or None when every entry is equal.

    Read a block of rows at a time (CHUNK_ELEMENTS), cast to the base's dtype exactly as a
    loader casts it, compared on the base's device; the delta is allocated only once a block
    differs."""
    base = base.detach()
    if base.dim() == 0:
        c = read(slice(None))
        if hasher is not None:
            _hash(hasher, "", "", (), c)
        c = c.to(device=base.device, dtype=base.dtype)
        return None if torch.equal(c, base) else (c.float() - base.float()).to(base.dtype)
    rows = base.shape[0]
    step = max(1, CHUNK_ELEMENTS // max(1, math.prod(base.shape[1:])))
    delta = None
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        c = read(slice(start, stop))
        if hasher is not None:
            _hash(hasher, "", "", (), c)
        c = c.to(device=base.device, dtype=base.dtype)
        b = base[start:stop]
        if torch.equal(c, b):
            continue
        if delta is None:
            delta = torch.zeros(base.shape, dtype=base.dtype, device=base.device)
        delta[start:stop] = (c.float() - b.float()).to(base.dtype)
    return delta


def _same(read_a: Callable[[slice], torch.Tensor], read_b: Callable[[slice], torch.Tensor], shape: tuple) -> bool:
    """Whether two checkpoint tensors of one shape are equal, read a block of rows at a time."""
    if not shape:
        return torch.equal(read_a(slice(None)), read_b(slice(None)))
    step = max(1, CHUNK_ELEMENTS // max(1, math.prod(shape[1:])))
    return all(torch.equal(read_a(slice(s, s + step)), read_b(slice(s, s + step))) for s in range(0, shape[0], step))


def diff_source(lm: LoadedModel, heads: dict[str, TensorInfo], read: dict, cfg, name: str,
                ticker_for: Callable[[int], Ticker], out: _Diff) -> None:
    """Pair the source's tensors with the base's parameters (:func:`pair_keys`) and keep each
    parameter's delta in ``out.weights``, hashing the source's content on the way."""
    pairs, aliases, buffer_keys = pair_keys(lm, heads, cfg, name)
    for pname, key, other in aliases:
        if not _same(read[key], read[other], heads[key].shape):
            raise UserError(f"{name} stores {other} apart from {key} with other values, but the base {lm.name} ties "
                            f"them (one matrix, {pname}): an edit of that matrix changes both of its uses, so this "
                            "checkpoint is no edit of this base")
    state = lm.model.state_dict()
    for bname, key in buffer_keys.items():
        if diff_tensor(state[bname], read[key]) is not None:
            raise UserError(f"{name}'s buffer {key} differs from the base's: only parameters can be imported as an "
                            "edit")
    params = dict(lm.model.named_parameters())
    ticker = ticker_for(len(pairs))
    hashed: set[str] = set()
    for i, (pname, key) in enumerate(pairs):
        p = params[pname]
        h = None
        if key not in hashed:  # a key two parameters read (an untied base, a tied checkpoint) is hashed once
            hashed.add(key)
            h = out.hasher
            _hash(h, key, heads[key].dtype, heads[key].shape, None)
        delta = diff_tensor(p, read[key], h)
        out.compared += 1
        if delta is not None:
            out.weights[pname] = delta
        ticker.tick(i + 1)


def _state_source(model: torch.nn.Module) -> tuple[dict[str, TensorInfo], dict]:
    """A model held in memory as a source: its state dict's headers and readers."""
    state = model.state_dict()
    heads = {k: TensorInfo(tuple(t.shape), _PICKLE_DTYPES.get(t.dtype, str(t.dtype)), Path()) for k, t in state.items()}
    return heads, {k: (lambda rows, t=t: t.detach()[rows]) for k, t in state.items()}


def _load_second(lm: LoadedModel, src: Source, allow_pickle: bool) -> torch.nn.Module:
    """The unlearned model as a second model on the CPU, in the base's dtype (GGUF: dequantised)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    kwargs: dict = {"dtype": lm.dtype, "trust_remote_code": False, "local_files_only": True}
    if src.kind == "gguf":
        kwargs["gguf_file"] = src.files[0].name
    elif not allow_pickle:
        kwargs["use_safetensors"] = True
    before, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        return AutoModelForCausalLM.from_pretrained(src.root, **kwargs).eval()
    except Exception as exc:  # gguf/transformers raise many types for unreadable files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot load {src.name}: {first[:200]}") from None
    finally:
        logging.set_verbosity(before)
        if bars:
            logging.enable_progress_bar()


# ---- LoRA ----------------------------------------------------------------------------------------
def _lora_config(src: Source):
    from peft import LoraConfig, PeftConfig

    try:
        cfg = PeftConfig.from_pretrained(str(src.root))
    except Exception as exc:  # peft raises ValueError/TypeError/KeyError for unknown or damaged configs
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot read {src.root / ADAPTER_CONFIG}: {first[:160]}") from None
    if not isinstance(cfg, LoraConfig):
        kind = str(getattr(cfg.peft_type, "value", cfg.peft_type))
        raise UserError(f"{src.name} is a {kind} adapter: only LoRA adapters can be imported (or merge it into a "
                        "checkpoint and import that)")
    return cfg


def _not_plain(cfg) -> list[str]:
    return [what for key, what in NOT_PLAIN_LORA.items() if getattr(cfg, key, None) not in (None, False, [], {})]


def _pattern_key(patterns: dict, module: str) -> str:
    """The key of PEFT's rank_pattern/alpha_pattern that applies to ``module`` (peft's own rule)."""
    try:
        from peft.utils.other import get_pattern_key
    except ImportError:  # an older peft: the same rule
        return next((k for k in patterns if re.match(rf"(.*\.)?({k})$", module)), module)
    return get_pattern_key(list(patterns), module)


def _lora_rank_scale(cfg, module: str) -> tuple[int, float]:
    """PEFT's rank and scale of one module: α/r, or α/√r with rsLoRA; r and α from the patterns where set."""
    r = int((cfg.rank_pattern or {}).get(_pattern_key(cfg.rank_pattern or {}, module), cfg.r))
    alpha = float((cfg.alpha_pattern or {}).get(_pattern_key(cfg.alpha_pattern or {}, module), cfg.lora_alpha))
    return r, alpha / (math.sqrt(r) if cfg.use_rslora else r)


def _import_lora(lm: LoadedModel, src: Source, ticker_for: Callable[[int], Ticker], out: _Diff) -> dict:
    """An adapter's factors into ``out.lora`` ((A, B·scale) per module, in the base's dtype on the
    module's device); embedding LoRA and full tensors (modules_to_save, biases) into ``out.weights``."""
    cfg = _lora_config(src)
    refused = _not_plain(cfg)
    if refused:
        raise UserError(f"{src.name} is not a plain LoRA adapter ({refused[0]}): merge it into the model with peft "
                        "(merge_and_unload, save_pretrained) and import the merged checkpoint")
    wanted = (cfg.auto_mapping or {}).get("base_model_class")
    if wanted and wanted != type(lm.model).__name__:
        raise UserError(f"{src.name} is an adapter for a {wanted}, the base {lm.name} is {type(lm.model).__name__}")
    check_tokenizer(lm, src.root, src.name)
    heads = headers(src)
    modules = dict(lm.model.named_modules())
    params = dict(lm.model.named_parameters(remove_duplicate=False))
    factors: dict[str, dict[str, str]] = {}
    full: list[tuple[str, str]] = []
    for key in heads:
        m = LORA_KEY.match(key)
        if m:
            factors.setdefault(m["module"], {})[m["part"].replace("embedding_", "")] = key
            continue
        pname = key.removeprefix("base_model.model.")
        pname = re.sub(r"\.(base_layer|modules_to_save\.[^.]+|original_module)\.", ".", pname)
        if pname not in params:
            raise UserError(f"{src.name} holds {key}, which names no parameter of the base {lm.name}: an adapter for "
                            "another model?")
        full.append((pname, key))
    if not factors and not full:
        raise UserError(f"{src.name} holds no LoRA weights")
    for module, parts in factors.items():
        if set(parts) != {"lora_A", "lora_B"}:
            raise UserError(f"{src.name}: module {module} has only {', '.join(parts)} (a damaged adapter)")
        if module not in modules:
            raise UserError(f"{src.name} targets {module}, which the base {lm.name} has not: an adapter for another "
                            "model?")
    bad = [(p, k) for p, k in full if tuple(heads[k].shape) != tuple(params[p].shape)]
    if bad:
        p, k = bad[0]
        raise UserError(f"{src.name}: {k} is {list(heads[k].shape)}, the base's {p} is {list(params[p].shape)}")
    ticker = ticker_for(len(factors) + len(full))
    step = 0
    with _readers(src, heads) as read:
        for module, parts in sorted(factors.items()):
            _add_factors(lm, src.name, cfg, module, modules[module], read[parts["lora_A"]](slice(None)),
                         read[parts["lora_B"]](slice(None)), out)
            step += 1
            ticker.tick(step)
        canonical = {id(t): n for n, t in lm.model.named_parameters()}
        for pname, key in full:
            delta = diff_tensor(params[pname], read[key])
            if delta is not None:
                if canonical[id(params[pname])] != pname:
                    raise UserError(f"{src.name} changes {pname}, which the base {lm.name} ties to "
                                    f"{canonical[id(params[pname])]} (one matrix): an edit of it would change both")
                _add_weight(out, pname, delta)
            out.compared += 1
            step += 1
            ticker.tick(step)
    return {"rank": cfg.r, "alpha": cfg.lora_alpha, "rslora": bool(cfg.use_rslora),
            "lora_modules": sorted(out.lora), "base_model": cfg.base_model_name_or_path,
            "adapter_sha256": sha256_file(src.files[0])}


def _add_weight(out: _Diff, pname: str, delta: torch.Tensor) -> None:
    out.weights[pname] = out.weights[pname] + delta if pname in out.weights else delta


def _add_factors(lm: LoadedModel, name: str, cfg, module: str, mod: torch.nn.Module, a: torch.Tensor,
                 b: torch.Tensor, out: _Diff) -> None:
    """One module's LoRA factors: kept low-rank on an nn.Linear (A, B·scale, in the base's dtype on
    the module's device); on an embedding (A [r, vocab], B [d, r]) or GPT-2's Conv1D ([in, out])
    folded into a dense delta of its weight, the only form the router applies there."""
    weight = getattr(mod, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise UserError(f"{name} targets {module}, a {type(mod).__name__}: only linear layers, embeddings and "
                        "Conv1D layers can carry imported LoRA factors")
    pname = next(n for n, p in lm.model.named_parameters() if p is weight)
    if isinstance(mod, torch.nn.Embedding):
        in_f, out_f = weight.shape
    elif is_conv1d(mod):
        in_f, out_f = weight.shape
    elif isinstance(mod, torch.nn.Linear):
        out_f, in_f = weight.shape
    else:
        raise UserError(f"{name} targets {module}, a {type(mod).__name__}: only linear layers, embeddings and "
                        "Conv1D layers can carry imported LoRA factors")
    r = int(a.shape[0])
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != in_f or b.shape[0] != out_f or b.shape[1] != r:
        raise UserError(f"{name}: the LoRA factors of {module} are {list(a.shape)} and {list(b.shape)}, the base's "
                        f"layer maps {in_f} to {out_f} features")
    want_r, scale = _lora_rank_scale(cfg, module)
    if r != want_r:
        raise UserError(f"{name}: {module} has rank {r} in its tensors, {want_r} in its config (a damaged adapter)")
    dev, dtype = weight.device, weight.dtype
    if isinstance(mod, torch.nn.Linear):
        out.lora[module] = (a.to(device=dev, dtype=dtype).contiguous(),
                            (b.float() * scale).to(device=dev, dtype=dtype).contiguous())
        return
    dense = (b.float() @ a.float()).T * scale  # [in, out]: the embedding's table, Conv1D's weight
    _add_weight(out, pname, dense.to(device=dev, dtype=dtype).contiguous())


# ---- the import ----------------------------------------------------------------------------------
def import_unlearned(lm: LoadedModel, source: str, allow_pickle: bool = False, label: str | None = None,
                     progress: ProgressFn | None = None) -> Edit:
    """An Edit that turns ``lm`` into the unlearned model ``source`` on the rows it is applied to.

    Checked first (family, sizes, config, tokenizer, every shape: one line naming what differs),
    then diffed: tensors equal to the base's are skipped, the others kept as deltas in the base's
    dtype on the parameter's device; a LoRA adapter keeps its factors. The base's weights are
    read, never written. ``progress`` gets one event per tensor (phase "import")."""
    t0 = time.perf_counter()
    check_base(lm)
    src = locate(source, allow_pickle)
    fp = lm.fingerprint(refresh=False)
    out = _Diff()

    def ticker_for(total: int) -> Ticker:
        return Ticker(total, progress, None, "import")

    extra: dict = {"files": {f.name: f.stat().st_size for f in src.files}}
    if src.kind == "lora":
        extra.update(_import_lora(lm, src, ticker_for, out))
    else:
        gguf = src.files[0].name if src.kind == "gguf" else None
        cfg = None
        if gguf:  # its header's sizes now; its whole config once loaded (transformers reads the file for it)
            _check_gguf_sizes(lm, src)
        else:
            cfg = _read_config(src.root, src.name)
            check_config(lm, cfg, src.name)
        extra["tokenizer_checked"] = check_tokenizer(lm, src.root, src.name, gguf_file=gguf)
        try:
            if gguf:
                raise _NeedsConversion(gguf)
            heads = headers(src)
            with _readers(src, heads) as read:
                diff_source(lm, heads, read, cfg, src.name, ticker_for, out)
        except _NeedsConversion:  # a GGUF, or a family whose layout transformers converts on load
            out = _Diff()
            other = _load_second(lm, src, allow_pickle)
            check_config(lm, other.config, src.name)
            heads, read = _state_source(other)
            diff_source(lm, heads, read, other.config, src.name, ticker_for, out)
            del other, heads, read
            extra["second_model"] = True
            if gguf:
                extra["file_sha256"] = sha256_file(src.files[0])
        extra["content_sha256"] = out.hasher.hexdigest()
    if lm.fingerprint(refresh=False) != fp:
        raise AssertionError("base weights changed")  # never expected: the base is only read
    if not out.weights and not out.lora:
        raise UserError(f"nothing differs from the base: every one of the {out.compared} tensors of {src.name} equals "
                        f"the base {lm.name}'s (is it the base itself, or saved before training?)")
    info = {"kind": src.kind, "source": src.source, "changed_tensors": len(out.weights),
            "lora_modules": len(out.lora), "compared_tensors": out.compared, "kept_bytes": out.kept_bytes(),
            "disk_bytes": src.disk_bytes, "changed": sorted(out.weights)[:64], **extra}
    meta = {"label": label or f"imported: {src.name}", "import": info, "fit_s": time.perf_counter() - t0}
    return Edit(method=IMPORTED, hparams={"source": src.source, "kind": src.kind}, weights=out.weights,
                lora=out.lora, meta=meta)
