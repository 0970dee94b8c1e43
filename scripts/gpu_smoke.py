"""``make gpu-smoke``: the 7B paths on one GPU in minutes, with nothing downloaded.

A randomly initialised Mistral-7B-shaped model in bfloat16 (Jiang et al., arXiv 2310.06825: hidden
4096, MLP 14336, 32 layers, 32 query and 8 key/value heads; random weights cost the same time and
memory as trained ones) is built straight on the GPU and wrapped as the project's LoadedModel, with
a byte-level tokenizer built in code. On a small WMDP-shaped set (long forget and retain documents
packed from a built-in set, its questions: the shape of Li et al., arXiv 2403.03218) it runs RMU,
SRMU and MRP fits of a few steps against the naive loop (the same losses, every block recomputed),
side-by-side chat against one plain ``generate``, activation capture against
``output_hidden_states``, export and reload, ``device_map`` over every visible GPU, and 8-bit and
4-bit loading through bitsandbytes. A step that cannot run here (one GPU, no bitsandbytes) gets a
row that says why, with no figures.

Rows G1.. go to docs/benchmarks.json and docs/benchmarks.md (bench/__main__.py's ``write``; the
"GPU" section) and to ``--out``/rows.json. ``--dry`` (automatic without CUDA) runs every step on
tiny shapes on the CPU and writes only to ``--out`` (a temp folder by default), never to docs/:
tests/test_gpu_smoke.py runs it. ``--placeholders`` writes "not measured" rows for every G id that
no GPU has measured yet (what docs/ carries until then).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tests"):  # the package and bench from the checkout; the tiny models' tokenizer
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import torch  # noqa: E402

from bench.common import Result, device_name, paired  # noqa: E402

# Every row the script writes: id, what, unit, target. The dry mode, the GPU run and the
# placeholders all read this one list.
ROWS = [
    ("G1", "RMU training step, layer window vs naive loop", "ms/step", "≥ 5× at equal loss"),
    ("G1s", "SRMU training step, layer window vs naive loop", "ms/step", "≥ 5× at equal loss"),
    ("G2", "MRP training step, engine vs naive loop", "ms/step", "≥ 1× at equal loss"),
    ("G3", "peak memory of the fits (largest of RMU, SRMU, MRP) vs the model's size", "MB", "≤ 1.5× the model's"),
    ("G4", "side-by-side chat (2 rows) vs one plain generate", "tokens/s", "≥ 0.87× its tokens/s (B3: ≤ 1.15× the time)"),
    ("G5", "activation capture, all layers, mean-pooled, vs output_hidden_states", "s", "≥ 1× its throughput"),
    ("G6", "export (RMU + SRMU stacked, merged) and reload", "s", "reloaded logits = the hooked edit's"),
    ("G7", "device_map over every visible GPU: load, fit, chat, capture", "ms/step", "logits = one GPU's"),
    ("G8", "8-bit loading (bitsandbytes): load, forward, capture, chat", "MB", "< 0.6× the bf16 model's memory"),
    ("G9", "4-bit loading (bitsandbytes): load, forward, capture, chat", "MB", "< 0.35× the bf16 model's memory"),
]
ROW = {rid: (what, unit, target) for rid, what, unit, target in ROWS}
NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class Shape:
    """Model and workload sizes of one mode."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int  # ≥ the tokenizer's 259 ids; the ids above them are never decoded
    batch: int
    tokens: int
    steps: int
    new_tokens: int
    forget_docs: int
    retain_docs: int
    capture_texts: int
    rmu_layer: int  # -1: the method's auto layer
    window: int
    mrp_layer: int


GPU = Shape(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=32000, batch=4, tokens=512,
            steps=5, new_tokens=32, forget_docs=16, retain_docs=20, capture_texts=16, rmu_layer=-1, window=3,
            mrp_layer=-1)
DRY = Shape(hidden=64, intermediate=128, layers=4, heads=4, kv_heads=2, vocab=259, batch=2, tokens=128, steps=5,
            new_tokens=8, forget_docs=6, retain_docs=10, capture_texts=6, rmu_layer=2, window=2, mrp_layer=2)
PROMPT = "What is the capital of France?"


def loss_tolerance(dtype: torch.dtype) -> float:
    """Relative loss difference allowed between engine and naive loop: the two sum in different
    orders, which float32 keeps to ~1e-6 and bfloat16 (8 mantissa bits) to ~1e-3."""
    return 1e-4 if dtype == torch.float32 else 1e-2


def logit_tolerance(dtype: torch.dtype, scale: float) -> float:
    """Max |logit| difference allowed between an exported and a hooked model (as export's own check)."""
    return (1e-4 if dtype == torch.float32 else 5e-2) * max(1.0, scale)


# ---------------------------------------------------------------- the model and the data


def build_model(shape: Shape, device: str, dtype: torch.dtype):
    """The random-weight Mistral of ``shape``, built on ``device`` in ``dtype``, as a LoadedModel."""
    from tiny_models import byte_tokenizer
    from transformers import AutoModelForCausalLM, MistralConfig

    from unlearnviz.model import wrap_model

    cfg = MistralConfig(hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                        num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                        num_key_value_heads=shape.kv_heads, vocab_size=shape.vocab, max_position_embeddings=4096,
                        pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return wrap_model(model, byte_tokenizer(), name=f"random-mistral-{shape.hidden}x{shape.layers}")


def pack(tokenizer, texts: list[str], n: int, tokens: int) -> list[str]:
    """``n`` documents of at most ``tokens`` tokens, each a run of consecutive ``texts`` (cycled,
    every document starting one text later than the last ran out, so the documents differ)."""
    texts = [t for t in texts if len(tokenizer(t + " ").input_ids) <= tokens]
    if not texts:
        raise ValueError(f"every text is longer than {tokens} tokens")
    lengths = [len(tokenizer(t + " ").input_ids) for t in texts]
    docs, i = [], 0
    while len(docs) < n:
        parts, used = [], 0
        while used + lengths[i % len(texts)] <= tokens:
            parts.append(texts[i % len(texts)])
            used += lengths[i % len(texts)]
            i += 1
        docs.append(" ".join(parts))
    return docs


def wmdp_shaped(tokenizer, shape: Shape):
    """A small WMDP-shaped set from the built-in geography set: documents of ``shape.tokens``
    tokens (forget: European capitals; retain: the rest of the world) and the set's questions,
    whose subjects the documents name."""
    from unlearnviz.data import UnlearningData, load_data

    base = load_data("builtin:geo_europe_vs_world")
    return UnlearningData(name="wmdp-shaped-smoke",
                          forget_texts=pack(tokenizer, list(base.forget_texts), shape.forget_docs, shape.tokens - 2),
                          retain_texts=pack(tokenizer, list(base.retain_texts), shape.retain_docs, shape.tokens - 2),
                          forget_mcq=list(base.forget_mcq), retain_mcq=list(base.retain_mcq),
                          provenance="builtin:geo_europe_vs_world packed into documents (scripts/gpu_smoke.py)")


# ---------------------------------------------------------------- measuring


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def model_mb(model) -> float:
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20


def peak_above(fn: Callable[[], object], device: torch.device) -> tuple[object, float]:
    """fn's result and the peak memory it took above what was allocated before it (MB):
    torch.cuda.max_memory_allocated on a CUDA device, else the resident high-water mark."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        return out, (torch.cuda.max_memory_allocated(device) - before) / 2**20
    from bench.memprobe import measure

    box: dict = {}
    report = measure(lambda: box.setdefault("out", fn()))
    return box["out"], report["peak_mb"]


def timed_fit(spec, lm, data, hp, naive: bool):
    """A fit and the median time of its steps after the first (the first warms kernels up)."""
    marks: list[float] = []
    t0 = time.perf_counter()
    edit = spec.fit(lm, data, hp, progress=lambda e: marks.append(time.perf_counter()), naive=naive)
    steps = [b - a for a, b in zip(marks, marks[1:])] or [time.perf_counter() - t0]
    return edit, statistics.median(steps)


def probe_ids(lm, vocab: int):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # a left-padded row
    return ids, mask


@torch.no_grad()
def logits(lm, ids, mask, plan=None) -> torch.Tensor:
    dev = lm.device
    with lm.router.apply(plan):
        out = lm.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False).logits
    return out.float().cpu()[mask.bool()]


# ---------------------------------------------------------------- the steps


class Smoke:
    """The steps in order; each fills ``checks[step]`` ("ran", "skipped: why" or "failed: why") and
    its rows. Rows are written to ``out`` after every step, so a run cut short keeps its figures."""

    def __init__(self, dry: bool, out: Path, skip: set[str], budget_s: float = 0.0):
        self.dry, self.out, self.skip, self.budget_s = dry, out, skip, budget_s
        self.t0 = time.perf_counter()
        self.shape = DRY if dry else GPU
        self.device = "cpu" if dry else "cuda"
        self.dtype = torch.float32 if dry else torch.bfloat16
        self.dtype_name = "float32" if dry else "bfloat16"
        self.dev_name = device_name() if not dry else f"dry: {device_name()}"
        self.results: dict[str, Result] = {}
        self.checks: dict = {"mode": "dry" if dry else "gpu", "date": time.strftime("%Y-%m-%d"), "steps": {},
                             "fits": {}, "shape": vars(self.shape)}
        self.edits: dict = {}
        self.step_ms: dict[str, float] = {}
        self.peaks: dict[str, float] = {}
        self.export_dir: Path | None = None  # the exported checkpoint (7B: ~14 GB), removed at the end

    # -- bookkeeping

    def row(self, rid: str, ours, baseline, ratio, met: bool, note: str, limit: str = "") -> None:
        what, unit, target = ROW[rid]
        self.results[rid] = Result(rid, what, ours, baseline, ratio, target, bool(met), unit, self.dev_name, note,
                                   limit)

    def not_run(self, rid: str, why: str) -> None:
        self.row(rid, None, None, None, False, why)

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        rows = [self.results[rid].to_dict() for rid, *_ in ROWS if rid in self.results]
        (self.out / "rows.json").write_text(json.dumps(rows, indent=2, ensure_ascii=False, default=float) + "\n")
        (self.out / "checks.json").write_text(json.dumps(self.checks, indent=2, default=float) + "\n")

    def step(self, name: str, rows: list[str], fn: Callable[[], None]) -> None:
        t0 = time.perf_counter()
        print(f"{name} …", flush=True)
        over = self.budget_s and t0 - self.t0 > self.budget_s
        if name in self.skip or over:
            why = "--skip" if name in self.skip else f"the {self.budget_s:.0f} s budget was spent before this step"
            self.checks["steps"][name] = f"skipped: {why}"
            for rid in rows:
                self.not_run(rid, f"not run: {why}")
        else:
            try:
                why = fn()
                self.checks["steps"][name] = "ran" if why is None else f"skipped: {why}"
                for rid in rows:
                    if why is not None:
                        self.not_run(rid, f"not run: {why}")
            except Exception as exc:  # one step's failure must not hide the others' figures
                traceback.print_exc()
                msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                self.checks["steps"][name] = f"failed: {type(exc).__name__}: {msg}"
                for rid in rows:
                    if rid not in self.results:  # rows written before the failure keep their figures
                        self.not_run(rid, f"failed: {type(exc).__name__}: {msg}")
        self.checks.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 2)
        print(f"  {self.checks['steps'][name]} ({self.checks['seconds'][name]:.1f} s)", flush=True)
        for rid in rows:
            r = self.results.get(rid)
            if r is not None:
                print(f"  {rid}: ours {r.ours} baseline {r.baseline} ratio {r.ratio} met {r.met} {r.note}", flush=True)
        self.save()

    # -- steps

    def build(self) -> None:
        t0 = time.perf_counter()
        self.lm = build_model(self.shape, self.device, self.dtype)
        sync()
        self.model_mb = model_mb(self.lm.model)
        self.data = wmdp_shaped(self.lm.tokenizer, self.shape)
        self.checks["model"] = {"parameters": self.lm.n_params(), "mb": self.model_mb, "dtype": self.dtype_name,
                                "build_s": time.perf_counter() - t0, "device": str(self.lm.device),
                                "fingerprint": self.lm.fingerprint(refresh=False)}

    def hparams(self, method: str):
        from unlearnviz.methods import get_method, make_hparams

        s = self.shape
        common = {"steps": s.steps, "batch_size": s.batch, "max_tokens": s.tokens}
        over = ({"layers": [s.mrp_layer], "k": 8} if method == "mrp" else {"layer": s.rmu_layer, "window": s.window})
        return make_hparams(get_method(method).hparams_cls, {**common, **over})

    def fit(self, method: str, rid: str, target_ratio: float) -> None:
        from unlearnviz.methods import get_method

        spec = get_method(method)
        dev = self.lm.device
        (edit, ms_fast), peak_fast = peak_above(lambda: timed_fit(spec, self.lm, self.data, self.hparams(method), False), dev)
        (naive, ms_naive), peak_naive = peak_above(lambda: timed_fit(spec, self.lm, self.data, self.hparams(method), True),
                                                   dev)
        la = [r["loss"] for r in edit.meta["losses"]]
        lb = [r["loss"] for r in naive.meta["losses"]]
        rel = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(la, lb))
        tol = loss_tolerance(self.dtype)
        self.edits[method] = edit
        self.step_ms[method] = ms_fast * 1000
        self.peaks[method] = peak_fast
        self.checks["fits"][method] = {"steps": len(la), "steps_naive": len(lb), "losses": la, "losses_naive": lb,
                                       "max_rel_loss_diff": rel, "tolerance": tol,
                                       "ms_per_step": ms_fast * 1000, "ms_per_step_naive": ms_naive * 1000,
                                       "peak_mb_above_model": peak_fast, "peak_mb_above_model_naive": peak_naive,
                                       "hparams": {k: edit.hparams[k] for k in ("steps", "batch_size", "max_tokens")}}
        ratio = ms_naive / ms_fast
        met = ratio >= target_ratio and rel <= tol and len(la) == len(lb) == self.shape.steps
        layer = edit.meta.get("window", edit.hparams.get("layers"))
        self.row(rid, ms_fast * 1000, ms_naive * 1000, ratio, met,
                 f"{self.shape.steps} steps of {self.shape.batch} × {self.shape.tokens} tokens, median of steps 2..; "
                 f"max rel. loss diff {rel:.1e} (allowed {tol:.0e}, {self.dtype_name}); blocks {layer}")

    def memory(self) -> str | None:
        if not self.peaks:
            return "no fit ran"
        unchanged = self.lm.fingerprint() == self.checks["model"]["fingerprint"]
        self.checks["base_unchanged_after_fits"] = unchanged
        worst = max(self.peaks, key=self.peaks.get)
        total = self.model_mb + self.peaks[worst]
        where = ("torch.cuda.max_memory_allocated above the loaded model" if self.lm.device.type == "cuda"
                 else "resident-memory high-water mark above the loaded model (no CUDA)")
        each = ", ".join(f"{m} +{p:.0f}" for m, p in self.peaks.items())
        self.row("G3", total, self.model_mb, total / self.model_mb, total / self.model_mb <= 1.5 and unchanged,
                 f"model {self.model_mb:.0f} MB + the largest fit's peak ({worst}); {where}: {each} MB; "
                 f"base weights unchanged after the fits (fingerprint): {unchanged}; ratio = peak / model")
        return None

    def chat(self) -> None:
        from unlearnviz.generation import GenSettings, side_by_side

        lm, n = self.lm, self.shape.new_tokens
        plan = self.edits["rmu"].plan()
        ids = lm.tokenizer(PROMPT, return_tensors="pt")
        ids = {k: v.to(lm.device) for k, v in ids.items()}
        state: dict = {}

        def ours():
            state["s"] = side_by_side(lm, PROMPT, plan, GenSettings(max_new_tokens=n, cross_probs=False))

        def plain():
            lm.model.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                              pad_token_id=lm.tokenizer.pad_token_id)

        a, b, _ = paired(ours, plain, repeats=3, warmup=1)
        s = state["s"]
        steps = max(len(s.original_ids), len(s.edited_ids))
        ours_tps, plain_tps = steps / a, n / b
        ratio = ours_tps / plain_tps
        self.checks["chat"] = {"steps": steps, "original": len(s.original_ids), "edited": len(s.edited_ids),
                               "diverged_at": s.first_divergence()}
        self.row("G4", ours_tps, plain_tps, ratio, ratio >= 0.87 and steps > 0,
                 f"{steps} of {n} generated steps (ours stops once both answers reach EOS; the plain generate is "
                 f"held to {n}); each of our steps gives one token of each answer; "
                 + (f"the answers part at token {at}" if (at := s.first_divergence()) is not None
                    else "the answers are identical") + "; ratio = ours / plain")

    def capture(self) -> None:
        from bench.suite import capture_all, plain_hidden_pooled
        from unlearnviz.analysis.activations import capture_pair

        lm = self.lm
        texts = [*self.data.forget_texts, *self.data.retain_texts][: self.shape.capture_texts]
        got: dict = {}
        a, b, r = paired(lambda: got.__setitem__("ours", capture_all(lm, texts)),
                         lambda: got.__setitem__("plain", plain_hidden_pooled(lm, texts)), repeats=2, warmup=1)
        ours, plain = got["ours"], got["plain"]
        err = max(float(((ours[k] - plain[k]).norm(dim=-1) / plain[k].norm(dim=-1)).max())
                  for k in range(lm.n_layers - 1))
        pair = capture_pair(lm, texts, self.edits["rmu"], use_cache=False)
        start, stop = self.edits["rmu"].meta["window"]
        moved = {k: float((pair.edited[k] - pair.original[k]).norm(dim=-1).max()) for k in pair.layers}
        below = max([moved[k] for k in pair.layers if k < start], default=0.0)
        self.checks["capture"] = {"texts": len(texts), "layers": len(ours), "max_rel_vs_plain": err,
                                  "edit_moves_window": moved[stop] > 0, "moved_below_window": below}
        tol = 1e-4 if self.dtype == torch.float32 else 2e-2
        met = r >= 1.0 and err <= tol and moved[stop] > 0 and below == 0.0
        self.row("G5", a, b, r, met, f"{len(texts)} texts × {lm.n_layers} layers, {len(texts) / a:.1f} vs "
                 f"{len(texts) / b:.1f} texts/s; vectors differ by {err:.1e} rel. (allowed {tol:.0e}; last block "
                 f"excluded: plain applies the final norm); capture_pair with the RMU edit moves block {stop} by "
                 f"{moved[stop]:.3g}, blocks below {start} by {below:.3g}; ratio = plain / ours")

    def export(self) -> None:
        from unlearnviz.methods import EditStack
        from unlearnviz.methods.edit import export_checkpoint, verify_export
        from unlearnviz.model import LoadOptions, load_model

        lm = self.lm
        stack = EditStack([self.edits[m] for m in ("rmu", "srmu") if m in self.edits])
        self.export_dir = Path(tempfile.mkdtemp(prefix="gpu-smoke-export-"))
        folder = self.export_dir / "export"
        t0 = time.perf_counter()
        export_checkpoint(lm, stack, folder)
        export_s = time.perf_counter() - t0
        verify_export(folder)
        disk_mb = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
        t0 = time.perf_counter()
        back = load_model(str(folder), LoadOptions(dtype=self.dtype_name, device=self.device))
        reload_s = time.perf_counter() - t0
        ids, mask = probe_ids(lm, len(lm.tokenizer))
        ref = logits(lm, ids, mask, stack.plan())
        got = logits(back, ids, mask)
        base = logits(lm, ids, mask)
        diff = float((ref - got).abs().max())
        scale = float(ref.abs().max())
        tol = logit_tolerance(self.dtype, scale)
        edit_effect = float((ref - base).abs().max())
        self.exported = {"folder": folder, "logits": got, "ids": ids, "mask": mask, "mb": model_mb(back.model)}
        self.checks["export"] = {"export_s": export_s, "reload_s": reload_s, "max_abs_logit_diff": diff,
                                 "tolerance": tol, "edit_effect": edit_effect, "disk_mb": disk_mb,
                                 "reloaded_dtype": str(back.dtype), "reloaded_device": str(back.device)}
        del back
        self.free()
        self.row("G6", export_s + reload_s, None, None, diff <= tol and back_ok(self.checks["export"], self.dtype_name),
                 f"export {export_s:.1f} s ({disk_mb:.0f} MB on disk), reload {reload_s:.1f} s; max |logit| diff "
                 f"reloaded vs hooked {diff:.2e} (allowed {tol:.1e}; the edit itself moves logits by "
                 f"{edit_effect:.2e}); reloaded as {self.checks['export']['reloaded_dtype'].replace('torch.', '')}")

    def device_map(self) -> str | None:
        from unlearnviz.methods import get_method, make_hparams
        from unlearnviz.model import LoadOptions, load_model

        n = torch.cuda.device_count() if torch.cuda.is_available() and not self.dry else 0
        if n < 2:
            return ("dry mode, no GPU" if self.dry else f"{n} GPU visible: device_map across GPUs needs at least 2")
        ex = self.exported
        t0 = time.perf_counter()
        lm = load_model(str(ex["folder"]), LoadOptions(dtype=self.dtype_name, device_map="auto"))
        load_s = time.perf_counter() - t0
        devices = sorted({str(d) for d in getattr(lm.model, "hf_device_map", {}).values()})
        diff = float((logits(lm, ex["ids"], ex["mask"]) - ex["logits"]).abs().max())
        tol = logit_tolerance(self.dtype, float(ex["logits"].abs().max()))
        spec = get_method("rmu")
        hp = make_hparams(spec.hparams_cls, {**vars(self.hparams("rmu")), "steps": 3})
        _, ms = timed_fit(spec, lm, self.data, hp, False)
        from unlearnviz.generation import GenSettings, side_by_side

        s = side_by_side(lm, PROMPT, self.edits["rmu"].plan(), GenSettings(max_new_tokens=8, cross_probs=False))
        from unlearnviz.analysis.activations import capture

        acts = capture(lm, list(self.data.forget_texts[:4]), None, "mean", use_cache=False)
        del lm
        self.free()
        met = len(devices) == n and diff <= tol and len(s.edited_ids) > 0 and len(acts) == self.shape.layers
        self.row("G7", ms * 1000, self.step_ms["rmu"], ms * 1000 / self.step_ms["rmu"], met,
                 f"{n} GPUs, blocks on {', '.join(devices)}; load {load_s:.1f} s; logits vs one GPU max diff "
                 f"{diff:.2e} (allowed {tol:.1e}); RMU 3 steps across devices, side-by-side {len(s.edited_ids)} "
                 "tokens and a capture of every layer ran; ratio = across GPUs / one GPU per step")
        return None

    def quantized(self, bits: str, rid: str, bound: float) -> str | None:
        from unlearnviz.errors import UserError
        from unlearnviz.methods import get_method, make_hparams
        from unlearnviz.model import LoadOptions, load_model

        if importlib.util.find_spec("bitsandbytes") is None:
            return "bitsandbytes is not importable"
        ex = self.exported
        t0 = time.perf_counter()
        opts = LoadOptions(dtype=self.dtype_name, quantization=bits, device=self.device)
        lm = load_model(str(ex["folder"]), opts)
        load_s = time.perf_counter() - t0
        mb = lm.model.get_memory_footprint() / 2**20
        got = logits(lm, ex["ids"], ex["mask"])
        rel = float((got - ex["logits"]).norm() / ex["logits"].norm())
        from unlearnviz.analysis.activations import capture
        from unlearnviz.generation import GenSettings, side_by_side

        acts = capture(lm, list(self.data.forget_texts[:4]), None, "mean", use_cache=False)
        s = side_by_side(lm, PROMPT, None, GenSettings(max_new_tokens=8, cross_probs=False))
        # quantized fits: either supported (deltas of the unpacked [out, in] shape) or refused in one line
        spec = get_method("rmu")
        want = [(self.shape.hidden, self.shape.intermediate)]  # down_proj [out, in]
        try:
            edit = spec.fit(lm, self.data, make_hparams(spec.hparams_cls, {**vars(self.hparams("rmu")), "steps": 2}))
            shapes = sorted({tuple(d.shape) for d in edit.deltas.values()})
            fit_ok = shapes == want
            fit = (f"an RMU fit of 2 steps ran (losses {[round(r['loss'], 4) for r in edit.meta['losses']]}; delta "
                   f"shapes {shapes}{'' if fit_ok else f', expected {want}'})")
        except UserError as exc:
            fit_ok, fit = True, f"an RMU fit is refused: {exc}"
        del lm
        self.free()
        ratio = mb / ex["mb"]
        self.checks[f"quantized_{bits}"] = {"mb": mb, "rel_logit_diff": rel, "fit": fit, "fit_ok": fit_ok,
                                            "load_s": load_s}
        met = (ratio < bound and math.isfinite(rel) and len(acts) == self.shape.layers and len(s.original_ids) > 0
               and fit_ok)
        self.row(rid, mb, ex["mb"], ratio, met,
                 f"load {load_s:.1f} s; logits vs {self.dtype_name} {rel:.2e} rel. (quantization error); capture of "
                 f"every layer and side-by-side ({len(s.original_ids)} tokens) ran; {fit}; ratio = quantized / "
                 f"{self.dtype_name}")
        return None

    def free(self) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def run(self) -> int:
        t0 = self.t0 = time.perf_counter()
        self.step("build", [], self.build)
        if self.checks["steps"]["build"] != "ran":
            for rid, *_ in ROWS:
                self.not_run(rid, "failed: the model could not be built")
            self.save()
            return 1
        self.step("rmu", ["G1"], lambda: self.fit("rmu", "G1", 5.0))
        self.step("srmu", ["G1s"], lambda: self.fit("srmu", "G1s", 5.0))
        self.step("mrp", ["G2"], lambda: self.fit("mrp", "G2", 1.0))
        self.step("memory", ["G3"], self.memory)

        def after(needs: tuple[str, ...], fn: Callable[[], str | None]) -> Callable[[], str | None]:
            missing = [n for n in needs if self.checks["steps"].get(n) != "ran"]
            return fn if not missing else (lambda: f"needs the {' and '.join(missing)} step, which did not run")

        self.step("chat", ["G4"], after(("rmu",), self.chat))
        self.step("capture", ["G5"], after(("rmu",), self.capture))
        self.step("export", ["G6"], after(("rmu",), self.export))
        self.step("device_map", ["G7"], after(("export",), self.device_map))
        self.step("8bit", ["G8"], after(("export",), lambda: self.quantized("8bit", "G8", 0.6)))
        self.step("4bit", ["G9"], after(("export",), lambda: self.quantized("4bit", "G9", 0.35)))
        if self.export_dir is not None:
            shutil.rmtree(self.export_dir, ignore_errors=True)
        self.checks["total_s"] = time.perf_counter() - t0
        self.save()
        print(f"gpu-smoke took {self.checks['total_s'] / 60:.1f} min; rows in {self.out / 'rows.json'}", flush=True)
        return 1 if any(v.startswith("failed") for v in self.checks["steps"].values()) else 0


def back_ok(export: dict, dtype_name: str) -> bool:
    """The reloaded model came back in the dtype it was exported from."""
    return export["reloaded_dtype"] == f"torch.{dtype_name}"


# ---------------------------------------------------------------- writing docs/


def write_docs(results: list[Result], mode: str, date: str | None = None) -> None:
    """The G rows into docs/benchmarks.json and .md through bench's ``write`` (other rows kept)."""
    import bench.__main__ as bench_main

    date = date or time.strftime("%Y-%m-%d")
    run: dict = {"_ran": [r.id for r in results]}
    for r in results:
        run[r.id] = {"date": date, "mode": mode, "other_load": 0.0}
    bench_main.write(results, {}, run)


def placeholders() -> list[Result]:
    """A "not measured" row for every G id that docs/ holds no GPU figure for."""
    import bench.__main__ as bench_main

    path = bench_main.DOCS / "benchmarks.json"
    rows = {r["id"]: r for r in json.loads(path.read_text())} if path.exists() else {}
    out = []
    for rid, what, unit, target in ROWS:
        if rid in rows and rows[rid]["device"] != NOT_MEASURED:
            continue
        out.append(Result(rid, what, None, None, None, target, False, unit, NOT_MEASURED,
                          "`make gpu-smoke` has not run on a GPU yet"))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry", action="store_true", help="tiny shapes on the CPU (automatic without CUDA); writes --out only")
    p.add_argument("--out", type=Path, default=None, help="folder for rows.json and checks.json (default: a temp folder)")
    p.add_argument("--skip", default="", help="comma-separated steps to leave out: rmu, srmu, mrp, memory, chat, "
                                              "capture, export, device_map, 8bit, 4bit")
    p.add_argument("--no-docs", action="store_true", help="a GPU run that leaves docs/ alone")
    p.add_argument("--budget-s", type=float, default=540.0,
                   help="steps that would start after this many seconds are skipped, and say so (0: no budget)")
    p.add_argument("--from", dest="from_dir", type=Path, default=None,
                   help="write the rows.json of a GPU run made elsewhere (its --out folder) into docs/; nothing runs")
    p.add_argument("--placeholders", action="store_true",
                   help="write 'not measured' rows into docs/ for every G id no GPU has measured; nothing runs")
    args = p.parse_args(argv)
    if args.from_dir is not None:
        rows = json.loads((args.from_dir / "rows.json").read_text())
        if any(r["device"].startswith("dry:") for r in rows) or any(r["id"] not in ROW for r in rows):
            p.error(f"{args.from_dir / 'rows.json'} is not a GPU run's rows (dry rows never go to docs/)")
        checks = args.from_dir / "checks.json"
        date = json.loads(checks.read_text()).get("date") if checks.exists() else None
        write_docs([Result(**r) for r in rows], "gpu-smoke", date)
        print(f"{len(rows)} GPU rows written into docs/", flush=True)
        return 0
    if args.placeholders:
        rows = placeholders()
        if rows:
            write_docs(rows, "not measured")
        print(f"{len(rows)} placeholder rows written", flush=True)
        return 0
    dry = args.dry or not torch.cuda.is_available()
    if dry and not args.dry:
        print("no CUDA device: running the dry mode (tiny shapes on the CPU; docs/ untouched)", flush=True)
    if dry:
        torch.set_num_threads(1)  # tiny shapes are overhead-bound: more threads only spin
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu-smoke-"))
    smoke = Smoke(dry, out, {s.strip() for s in args.skip.split(",") if s.strip()}, args.budget_s)
    rc = smoke.run()
    if not dry and not args.no_docs:
        write_docs([smoke.results[rid] for rid, *_ in ROWS if rid in smoke.results], "gpu-smoke")
        print("docs/benchmarks.json and docs/benchmarks.md updated (the GPU section)", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
