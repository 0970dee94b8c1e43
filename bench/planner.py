"""B11: the memory planner (unlearnviz/planner.py) against measured peaks, and its table for named
7B-class configs (docs/planner.md).

Each measured action runs alone in a fresh process (``python -m bench.planner probe ACTION``): the
peak resident memory of the call above the resident memory just before it (the model loaded; the
kernel's high-water mark reset through /proc/self/clear_refs, as bench/memprobe.py does), beside
the planner's estimate of what the action adds to the loaded model (its peak minus the weights).
The three actions, on the default model (``--quick``: the tiny synthetic model, shorter texts):

- an RMU fit at batch 4 × 512 tokens, 3 steps, on documents longer than the window (every fourth
  shorter, so every batch is padded and carries its attention mask);
- the MCQ evaluation of ``builtin:geo_europe_vs_world`` (cloze, floor, perplexity);
- an activation capture: every layer's pooled residual stream of 64 such documents.

``python -m bench.planner table`` writes docs/planner.md from the named configs (meta device).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from bench.common import ROOT, Result, device_name

TARGET = (0.8, 1.2)
FULL = {"model": "default", "tokens": 512, "texts": 16, "capture_texts": 64, "steps": 3}
QUICK = {"model": "synthetic", "tokens": 64, "texts": 16, "capture_texts": 32, "steps": 3}
ACTIONS = ("fit", "evaluate", "capture")
DATA = "builtin:geo_europe_vs_world"


def settings(quick: bool) -> dict:
    return QUICK if quick else FULL


def documents(lm, n: int, tokens: int, seed: int) -> list[str]:
    """``n`` texts of the built-in set's sentences joined to more than ``tokens`` tokens (every
    fourth to about 0.8 × tokens, so a batch of four is padded to the window)."""
    import random

    from unlearnviz.data import load_data

    data = load_data(DATA)
    pool = list(data.forget_texts) + list(data.retain_texts)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        want = int(0.8 * tokens) if i % 4 == 3 else tokens + 16
        parts, length = [], 0
        while length < want:
            s = rng.choice(pool)
            parts.append(s)
            length += len(lm.tokenizer(" " + s, add_special_tokens=False).input_ids)
        ids = lm.tokenizer(" ".join(parts), add_special_tokens=False).input_ids[:want]
        out.append(lm.tokenizer.decode(ids))
    return out


def probe(action: str, quick: bool) -> dict:
    """One action in this process: its measured peak above the loaded model and the plan."""
    import torch

    from bench.memprobe import measure
    from unlearnviz import planner
    from unlearnviz.analysis.activations import capture
    from unlearnviz.data import load_data
    from unlearnviz.data.schema import UnlearningData
    from unlearnviz.data.synthetic import resolve_model_source
    from unlearnviz.evaluation.mcq import evaluate
    from unlearnviz.methods import get_method, make_hparams
    from unlearnviz.model import LoadOptions, load_model

    torch.set_num_threads(1)  # memory does not depend on it; two busy cores run one thread faster
    s = settings(quick)
    lm = load_model(resolve_model_source(s["model"]), LoadOptions(device="cpu"))
    shapes = planner.shapes_of(lm.model)
    T = s["tokens"]
    if action == "fit":
        data = UnlearningData("b11", documents(lm, s["texts"], T, 1), documents(lm, s["texts"], T, 2), [], [])
        spec = get_method("rmu")
        hp = make_hparams(spec.hparams_cls, {"batch_size": 4, "max_tokens": T, "steps": s["steps"],
                                             "forget_tokens": "all"})
        nb = (-(-len(data.forget_texts) // 4), -(-len(data.retain_train_texts) // 4))
        plan = planner.plan_fit(shapes, "rmu", hp, free=planner.available_ram(), batches=nb)
        fn = lambda: spec.fit(lm, data, hp)  # noqa: E731
    elif action == "evaluate":
        data = load_data(DATA, tokenizer=lm.tokenizer)
        groups = planner.mcq_groups(lm.tokenizer, data)
        lengths = [len(lm.tokenizer(t).input_ids) for t in data.ppl_texts]
        plan = planner.plan_evaluate(shapes, groups, lengths)
        fn = lambda: evaluate(lm, data, letter=False)  # noqa: E731
    elif action == "capture":
        texts = documents(lm, s["capture_texts"], T, 3)
        plan = planner.plan_capture(shapes, len(texts), T)
        fn = lambda: capture(lm, texts, None, "mean", use_cache=False)  # noqa: E731
    else:
        raise SystemExit(f"unknown action {action}")
    mem = measure(fn)
    return {**mem, "action": action, "planned_mb": plan.working_bytes / 2**20, "plan": plan.to_dict(),
            "weights_mb": shapes.weight_bytes / 2**20, "model": lm.name}


# glibc raises its mmap threshold each time a mapped block is freed (up to 32 MiB), after which
# freed tensors' pages stay in the heap and in the resident size: the high-water mark then holds
# memory no tensor uses (on the default model 1.4-2x the live peak for evaluation and capture).
# Pinned, every block of 128 KiB and more is mapped and unmapped, and the peak is the live one.
PINNED = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


def run_probe(action: str, quick: bool, timeout: float = 1800, pinned: bool = True) -> dict:
    """``probe`` in a fresh process (its peak is its own); ``pinned``: glibc's mmap threshold
    fixed (PINNED), so that the resident peak is the live tensors' peak."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", **(PINNED if pinned else {})}
    if not pinned:
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
    args = [sys.executable, "-m", "bench.planner", "probe", action, "quick" if quick else "full"]
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"B11 probe {action} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


WHAT = {"fit": "memory planner vs measured peak: RMU fit, batch 4 × {T} tokens, {steps} steps",
        "evaluate": "memory planner vs measured peak: MCQ evaluation (cloze, floor, perplexity) of " + DATA,
        "capture": "memory planner vs measured peak: activation capture, every layer, {n} documents of {T} tokens"}
IDS = {"fit": "B11", "evaluate": "B11e", "capture": "B11c"}


def b11_planner(quick: bool = False) -> dict:
    """B11 rows: planned / measured peak above the loaded model, one fresh process per action."""
    s = settings(quick)
    results, lines = [], ["### B11: memory planner vs measured peaks", "",
                          "| action | planned MB | measured MB (pinned mmap threshold) | ratio | measured MB (glibc "
                          "default) | planned parts (MB) |", "|---|---|---|---|---|---|"]
    for action in ACTIONS:
        r = run_probe(action, quick)
        plain = run_probe(action, quick, pinned=False)["peak_mb"]
        ratio = r["planned_mb"] / max(r["peak_mb"], 1e-9)
        met = TARGET[0] <= ratio <= TARGET[1]
        parts = {k: round(v * 1024, 1) for k, v in r["plan"]["parts_gb"].items() if k != "weights" and v}
        what = WHAT[action].format(T=s["tokens"], steps=s["steps"], n=s["capture_texts"])
        note = (f"{'quick: tiny synthetic model; ' if quick else ''}{r['model']}, weights {r['weights_mb']:.0f} MB "
                f"(not counted on either side); peak RSS above the loaded model in a fresh process "
                f"({r['method']}), glibc's mmap threshold pinned at 128 KiB; with glibc's default "
                f"(dynamic) threshold {plain:.0f} MB (ratio {r['planned_mb'] / max(plain, 1e-9):.2f}): freed "
                f"tensors stay resident; planned parts {parts}")
        results.append(Result(IDS[action], what, r["planned_mb"], r["peak_mb"], ratio,
                              f"{TARGET[0]}–{TARGET[1]}", met, "MB", device_name(), note,
                              "" if met else f"planned {r['planned_mb']:.0f} MB against {r['peak_mb']:.0f} MB measured"))
        lines.append(f"| {action} | {r['planned_mb']:.0f} | {r['peak_mb']:.0f} | {ratio:.2f} | {plain:.0f} | {parts} |")
    return {"results": results, "markdown": lines + [""]}


def table(dtype: str = "bfloat16", batch_size: int = 4, max_tokens: int = 512, device_gb: float = 80.0) -> str:
    """docs/planner.md: the plan of every action for each named config (meta device, no weights)."""
    import torch

    from unlearnviz import planner

    dt = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
    lines = ["# Memory plans for 7B-class models", "",
             f"Written by `python -m bench.planner table` ({time.strftime('%Y-%m-%d')}) from `unlearnviz/planner.py`: "
             "each model's public config built on the meta device (no weights), "
             f"{dtype}, batch {batch_size} × {max_tokens} tokens, every method's other hyperparameters at their "
             f"defaults, a CUDA device of {device_gb:.0f} GB (the engine's captures take at most a quarter of what "
             "is free after the weights: *caches* is what they hold there, *wanted* what keeping every capture "
             "the steps read would take). Evaluation plans stems of 128 tokens with four 8-token choices, capture "
             "256 documents of 512 tokens at every layer, chat a 64-token prompt and 48 new tokens. All figures in GiB; "
             "MRP's *activations* include its full-vocabulary float32 loss rows (KL retain term), which grow with the "
             "vocabulary (Llama-3 128k, Gemma-2 256k). "
             "`python -m unlearnviz info --plan --config-only NAME` prints one model's plans; B11 in "
             "docs/benchmarks.md checks three plans against measured peaks.", "",
             "| model | parameters | action | peak GB | weights | activations | logits | trainable state | "
             "caches (wanted) | KV cache | results |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, (label, _, _) in planner.NAMED_CONFIGS.items():
        s = planner.shapes_of(planner.meta_model(planner.named_config(key)), dtype=dt)
        free = int(device_gb * 2**30) - s.weight_bytes
        for p in planner.plan_actions(s, overrides={"batch_size": batch_size, "max_tokens": max_tokens},
                                      device="cuda", free=free):
            def g(k: str, p=p) -> str:
                return f"{p.parts[k] / 2**30:.2f}" if k in p.parts else "—"

            lines.append(f"| {label} | {s.params / 1e9:.2f} B | {p.action} | **{p.peak_bytes / 2**30:.1f}** | "
                         f"{g('weights')} | {g('activations')} | {g('logits')} | {g('trainable state')} | "
                         f"{p.cache / 2**30:.2f} ({p.cache_wanted / 2**30:.1f}) | {g('kv cache')} | {g('results')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    if sys.argv[1] == "probe":
        print(json.dumps(probe(sys.argv[2], len(sys.argv) > 3 and sys.argv[3] == "quick")))
    elif sys.argv[1] == "table":
        from unlearnviz.io import atomic_write_text

        atomic_write_text(ROOT / "docs" / "planner.md", table())
        print(f"wrote {ROOT / 'docs' / 'planner.md'}")
    else:
        raise SystemExit("usage: python -m bench.planner probe fit|evaluate|capture [quick] | table")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    main()
