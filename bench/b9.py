"""B9: an RMU fit on WMDP-shaped corpora of 1k, 4k and 16k documents: peak resident memory and
time per step, beside the engine that captured every batch up front (issue 14).

Each fit runs alone in a fresh process (``python -m bench.memprobe b9 ...``), so its peak
resident memory is its own. "ours" is whatever engine the working tree has; "old" is the package
at ``B9_BASELINE`` (the last commit whose engine captured every batch of both corpora before step
1), unpacked with ``git archive`` into a temporary folder and run from there, with this tree's
``bench`` beside it. A corpus of N documents is N forget and N retain documents of the offline
WMDP-shaped fixture (``unlearnviz.data.fixtures``); past the fixture's distinct documents they
repeat, in a seeded shuffle.
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, Result, device_name

B9_BASELINE = os.environ.get("B9_BASELINE", "b341956")  # issue 13's house: every batch captured up front
# B9_STEPS: fewer steps for a quick side-by-side re-measure of B9t (time per step does not depend on it)
FULL = {"sizes": (1000, 4000, 16000), "distinct": 4000, "steps": int(os.environ.get("B9_STEPS", "150")), "max_tokens": 512, "tokens": 512,
        "equality": (16, 20, 8)}
QUICK = {"sizes": (48, 96, 192), "distinct": 96, "steps": 12, "max_tokens": 64, "tokens": 128,
         "equality": (8, 10, 6)}
BATCH = 4
MEMORY_TARGET, TIME_TARGET, LOSS_TARGET = 1.2, 1.1, 1e-4
SEVEN_B = {"name": "Zephyr-7B (Mistral-7B shapes)", "hidden": 4096, "mlp": 14336, "head_dim": 128, "layers": 32,
           "bytes": 2}


def settings(quick: bool) -> dict:
    return QUICK if quick else FULL


def fixture_paths(quick: bool) -> tuple[Path, Path, dict]:
    """The fixture's forget and retain corpus files (built on first use) and its meta."""
    from unlearnviz.data.fixtures import wmdp_shaped

    s = settings(quick)
    files = wmdp_shaped(n_forget=s["distinct"], n_retain=s["distinct"], tokens=s["tokens"], log=print)
    return files.forget_corpus, files.retain_corpus, files.meta


def read_texts(path: Path, n: int, seed: int) -> list[str]:
    """``n`` texts of a corpus file: its first n, or, past its length, its texts repeated and
    shuffled with ``seed`` (no text twice in a row of the file's length)."""
    texts = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if n <= len(texts):
        return texts[:n]
    out = [texts[i % len(texts)] for i in range(n)]
    random.Random(seed).shuffle(out)
    return out


def hparams(spec, s: dict, steps: int | None = None):
    """RMU at the WMDP setup's shapes: batch 4, 512-token windows, every token in the forget loss."""
    from unlearnviz.methods import make_hparams

    return make_hparams(spec.hparams_cls, {"batch_size": BATCH, "max_tokens": s["max_tokens"],
                                           "steps": steps or s["steps"], "forget_tokens": "all"})


def _tokens_per_step(lm, data, hp) -> tuple[float, int]:
    """Mean real tokens (forget + retain batch) of the fit's steps, and how many distinct
    batches they read, from the texts alone: the step order is the engine's (``step_order``),
    batches are consecutive texts."""
    from unlearnviz.methods.engine import step_order

    tok = lm.tokenizer
    forget, retain = data.forget_texts, data.retain_train_texts
    nf, nr = -(-len(forget) // BATCH), -(-len(retain) // BATCH)
    memo: dict = {}

    def batch_tokens(texts, b, key):
        if (key, b) not in memo:
            chunk = list(texts[b * BATCH:(b + 1) * BATCH])
            memo[(key, b)] = sum(min(len(ids), hp.max_tokens) for ids in tok(chunk)["input_ids"])
        return memo[(key, b)]

    order = step_order(nf, nr, hp.steps, hp.seed)
    mean = statistics.mean(batch_tokens(forget, f, "f") + batch_tokens(retain, r, "r") for f, r in order)
    return mean, len({f for f, _ in order}) + len({r for _, r in order})


def probe(side: str, n: int, quick: bool, model: str, forget_path: str, retain_path: str) -> dict:
    """One fit in this process (``python -m bench.memprobe b9 ...``): the peak resident memory of
    ``fit`` above the resident size before it, its wall time, the loop's time and losses. Uses
    only what both trees have (load_model, UnlearningData, the method registry)."""
    from bench.memprobe import measure
    from unlearnviz.data.schema import UnlearningData
    from unlearnviz.methods import get_method
    from unlearnviz.model import LoadOptions, load_model

    s = settings(quick)
    if quick:  # the smoke run: one thread, which two-core machines under load run several times faster
        import torch

        torch.set_num_threads(1)
    lm = load_model(model, LoadOptions(device="cpu"))
    data = UnlearningData(f"b9-{n}", read_texts(Path(forget_path), n, 1), read_texts(Path(retain_path), n, 2), [], [])
    spec = get_method("rmu")
    hp = hparams(spec, s)
    got: dict = {}

    def fit() -> None:
        t0 = time.perf_counter()
        got["edit"] = spec.fit(lm, data, hp)
        got["fit_s"] = time.perf_counter() - t0

    mem = measure(fit)
    meta = got["edit"].meta
    cfg = lm.model.config
    tokens_per_step, used = _tokens_per_step(lm, data, hp)
    return {**mem, "side": side, "docs": n, "fit_s": got["fit_s"], "train_s": meta["train_s"],
            "precompute_s": meta.get("precompute_s", 0.0), "steps": meta["steps"],
            "losses": [r["loss"] for r in meta["losses"]], "tokens_per_step": tokens_per_step, "used_batches": used,
            "n_batches": -(-n // BATCH) + -(-len(data.retain_train_texts) // BATCH),
            "stats": {k: meta[k] for k in ("captured", "recomputed", "cache_peak_bytes", "join_cache_peak_bytes")
                      if k in meta},
            "shapes": {"hidden": lm.hidden_size, "layers": lm.n_layers,
                       "mlp": int(getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None)
                                  or 4 * lm.hidden_size),
                       "head_dim": lm.hidden_size // int(cfg.num_attention_heads),
                       "bytes": lm.dtype.itemsize, "window": meta.get("window")}}


def baseline_tree() -> tuple[Path | None, str]:
    """A temporary folder with the package at B9_BASELINE and this tree's bench beside it, or
    (None, why not) where git or that commit is not there (a shallow clone)."""
    tmp = Path(tempfile.mkdtemp(prefix="b9base-"))
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", B9_BASELINE, "unlearnviz"], capture_output=True,
                                 timeout=120)
        if archive.returncode != 0:
            raise RuntimeError(archive.stderr.decode(errors="replace").strip().splitlines()[-1][:200])
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True, timeout=120)
        shutil.copytree(ROOT / "bench", tmp / "bench", ignore=shutil.ignore_patterns("__pycache__"))
        return tmp, ""
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        return None, f"no baseline package at {B9_BASELINE} ({exc})"


def run_probe(side: str, n: int, quick: bool, model: str, forget: Path, retain: Path, tree: Path | None = None,
              timeout: float = 3600) -> dict:
    """``probe`` in a fresh process: this tree's package, or the one in ``tree`` (run from
    there, so that its ``unlearnviz`` is the one imported)."""
    cwd = tree or ROOT
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    args = [sys.executable, "-m", "bench.memprobe", "b9", side, str(n), "quick" if quick else "full", model,
            str(forget), str(retain)]
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"B9 probe {side} {n} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def capture_bytes_per_token(hidden: int, mlp: int, head_dim: int, nbytes: int, width: int) -> float:
    """What the window engine keeps per token of a captured batch (RMU's linear first block): the
    window's input, the first block's output and its MLP input (the first block is not run), the
    frozen output at the loss layer, the rotary tables (cos, sin) and the attention mask's row
    (a boolean [B, 1, T, T] mask: ``width`` bytes per token)."""
    return (3 * hidden + mlp) * nbytes + 2 * head_dim * nbytes + width


def _available_mb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("inf")


def equality(quick: bool, forget: Path, retain: Path) -> float:
    """Largest relative difference of the per-step losses of ours and the naive loop (full
    forwards of the edited and the frozen model every step) on a subset, at the same shapes."""
    from unlearnviz.data.schema import UnlearningData
    from unlearnviz.methods import get_method

    s = settings(quick)
    nf, nr, steps = s["equality"]
    lm = _tiny_lm() if quick else _default_lm()
    data = UnlearningData("b9-equality", read_texts(forget, nf, 1), read_texts(retain, nr, 2), [], [])
    spec = get_method("rmu")
    hp = hparams(spec, s, steps)
    la = [r["loss"] for r in spec.fit(lm, data, hp).meta["losses"]]
    lb = [r["loss"] for r in spec.fit(lm, data, hp, naive=True).meta["losses"]]
    return max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(la, lb))


def _tiny_model_path() -> str:
    from unlearnviz.data.synthetic import synthetic_model_path

    return str(synthetic_model_path(0.1, seed=0))


def _default_lm():
    from bench.suite import default_lm

    return default_lm()


@functools.lru_cache(maxsize=1)
def _tiny_lm():
    from unlearnviz.model import LoadOptions, load_model

    return load_model(_tiny_model_path(), LoadOptions(device="cpu"))


def _rel(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b))


def b9_corpus_memory(quick: bool = False) -> dict:
    s = settings(quick)
    forget, retain, fmeta = fixture_paths(quick)
    model = _tiny_model_path() if quick else "default"
    ours = {n: run_probe("ours", n, quick, model, forget, retain) for n in s["sizes"]}
    small = s["sizes"][0]
    sh = ours[small]["shapes"]
    mean_doc = fmeta["doc_tokens"]["total"] / (fmeta["forget_docs"] + fmeta["retain_docs"])
    width = min(s["max_tokens"], fmeta["doc_tokens"]["max"])
    per_tok = capture_bytes_per_token(sh["hidden"], sh["mlp"], sh["head_dim"], sh["bytes"], width)
    # the up-front engine caches every forget and retain-train token: run it at the smallest size
    # where that fits in 0.6 of the memory available now, else on fewer documents (its time per
    # token does not depend on the corpus size; its memory is the estimate)
    per_doc_mb = (1 + 4 / 5) * min(mean_doc, s["max_tokens"]) * per_tok / 2**20
    room = 0.6 * _available_mb()
    n_old = small if small * per_doc_mb <= room else max(2 * BATCH, int(room / per_doc_mb) // 50 * 50)
    old_note = "" if n_old == small else (f"the up-front engine would cache ~{small * per_doc_mb / 1024:.1f} GB at "
                                          f"{small} documents per corpus, over 0.6 of the {room / 0.6 / 1024:.1f} GB "
                                          f"available: it ran on {n_old}")
    tree, why_not = baseline_tree()
    old = None
    if tree is not None:
        try:
            old = run_probe("old", n_old, quick, model, forget, retain, tree=tree)
        finally:
            shutil.rmtree(tree, ignore_errors=True)
    eq = equality(quick, forget, retain)

    def per_step(r: dict) -> float:
        return r["fit_s"] / r["steps"]

    def old_per_step(r: dict) -> float:
        """The old engine's fit per step without the captures of the batches its steps never
        read (it captured all ``n_batches`` up front: that is its memory problem, not step time)."""
        return (r["fit_s"] - r["precompute_s"] * (1 - r["used_batches"] / r["n_batches"])) / r["steps"]

    big = s["sizes"][-1]
    mem_ratio = ours[big]["peak_mb"] / max(ours[small]["peak_mb"], 1e-9)
    distinct = fmeta["forget_docs"]
    reps = [n for n in s["sizes"] if n > distinct]
    label = f"{'quick: tiny synthetic model, ' if quick else ''}batch {BATCH}, max_tokens {s['max_tokens']}, " \
            f"{s['steps']} steps, forget_tokens=all"
    mem_note = (f"{label}; peak RSS above the loaded model, fresh process each: "
                + ", ".join(f"{n} docs {ours[n]['peak_mb']:.0f} MB" for n in s["sizes"])
                + (f"; up-front engine at {old['docs']}: {old['peak_mb']:.0f} MB" if old else f"; {why_not}")
                + (f" ({old_note})" if old_note else "")
                + (f"; {', '.join(map(str, reps))} = the fixture's {distinct} distinct documents per corpus repeated"
                   if reps else ""))
    results = [Result("B9", f"RMU fit on WMDP-shaped corpora: peak memory, {big} vs {small} documents per corpus",
                      ours[big]["peak_mb"], ours[small]["peak_mb"], mem_ratio, f"≤ {MEMORY_TARGET}× (flat in corpus "
                      "size)", mem_ratio <= MEMORY_TARGET, "MB", device_name(), mem_note,
                      "" if mem_ratio <= MEMORY_TARGET else
                      f"peak grows {mem_ratio:.2f}× from {small} to {big} documents per corpus; cache stats "
                      + "; ".join(f"{n}: {ours[n]['stats']}" for n in s["sizes"]))]
    tps = ours[small]["tokens_per_step"]
    ours_ms = per_step(ours[small]) * 1000
    what_t = "RMU fit on WMDP-shaped corpora: time per step (per token) vs the up-front engine"
    if old:
        old_ms, old_tps = old_per_step(old) * 1000, old["tokens_per_step"]
        t_ratio = (ours_ms / tps) / (old_ms / old_tps)
        same = (f"; losses ours vs up-front max rel. diff {_rel(ours[small]['losses'], old['losses']):.1e}"
                if old["docs"] == small else "")
        t_note = (f"{label}; ours at {small} docs per corpus, up-front at {old['docs']}"
                  f"{' (' + old_note + ')' if old_note else ''}; ms/step = fit wall time / steps (ours: its lazy "
                  f"captures included; up-front: less the share of its {old['precompute_s']:.0f} s up-front capture of "
                  f"all {old['n_batches']} batches that went to the {old['n_batches'] - old['used_batches']} its "
                  "steps never read); per token "
                  f"{ours_ms / tps * 1000:.0f} vs {old_ms / old_tps * 1000:.0f} µs ({tps:.0f} vs {old_tps:.0f} "
                  f"tokens/step); loop alone {ours[small]['train_s'] / ours[small]['steps'] * 1000:.0f} vs "
                  f"{old['train_s'] / old['steps'] * 1000:.0f} ms/step{same}")
        results.append(Result("B9t", what_t, ours_ms, old_ms, t_ratio, f"≤ {TIME_TARGET}× its time per token",
                              t_ratio <= TIME_TARGET, "ms/step", device_name(), t_note,
                              "" if t_ratio <= TIME_TARGET else
                              f"ours {ours_ms:.0f} vs {old_ms:.0f} ms/step ({t_ratio:.2f}× per token); ours "
                              f"{ours[small]['stats']}"))
    else:
        results.append(Result("B9t", what_t, ours_ms, None, None, f"≤ {TIME_TARGET}× its time per token", False,
                              "ms/step", device_name(), f"{label}; {why_not}", why_not))
    results.append(Result("B9l", "RMU on WMDP-shaped documents: losses vs the naive loop", eq, None, None,
                          f"≤ {LOSS_TARGET:g} rel.", eq <= LOSS_TARGET, "max rel. diff", device_name(),
                          f"{'quick: tiny model; ' if quick else ''}{s['equality'][0]} forget + {s['equality'][1]} "
                          f"retain documents, {s['equality'][2]} steps, batch {BATCH}, max_tokens {s['max_tokens']}"))
    measured = capture_bytes_measured(_default_lm(), *_full_width_texts(), FULL)
    md = markdown(quick, ours, old, why_not or old_note, fmeta, measured)
    return {"results": results, "markdown": md}


def _full_width_texts() -> tuple[Path, Path]:
    """A few fixture documents of up to 512 tokens (the WMDP setup's width), also in a quick run."""
    from unlearnviz.data.fixtures import wmdp_shaped

    files = wmdp_shaped(n_forget=BATCH, n_retain=BATCH + 1, tokens=FULL["tokens"], n_mcq=0)
    return files.forget_corpus, files.retain_corpus


def capture_bytes_measured(lm, forget: Path, retain: Path, s: dict) -> float | None:
    """Bytes per (padded) token of one batch's capture on the default model as this tree's engine
    keeps it, where the engine can say (``value_bytes``, the byte-bounded engine's own count);
    else None."""
    try:
        from unlearnviz.methods.engine import value_bytes
        from unlearnviz.methods.misdirection import prepare
    except ImportError:
        return None
    from unlearnviz.data.schema import UnlearningData
    from unlearnviz.methods import get_method

    data = UnlearningData("b9-bytes", read_texts(forget, BATCH, 1), read_texts(retain, BATCH + 1, 2), [], [])
    engine, fb, _ = prepare(lm, data, hparams(get_method("rmu"), s), None)
    return value_bytes(engine.capture(0)) / fb[0].input_ids.numel()


def markdown(quick: bool, ours: dict, old: dict | None, why_not: str, fmeta: dict, measured: float | None) -> list[str]:
    s = settings(quick)
    sh = next(iter(ours.values()))["shapes"]
    rows = ["## B9: WMDP-shaped corpora", "",
            f"RMU fits ({'quick: tiny synthetic model' if quick else 'the default model'}, batch {BATCH}, max_tokens "
            f"{s['max_tokens']}, {s['steps']} steps, every token in the forget loss) on N forget and N retain documents "
            f"of the offline WMDP-shaped fixture (GCIDE's life-science entries vs its general entries, "
            f"{fmeta['forget_docs']} distinct documents per corpus of at most {fmeta['tokens']} tokens, median "
            f"{fmeta['doc_tokens']['median']}; larger N repeat them in a seeded shuffle). Each fit alone in a fresh "
            "process; peak resident memory above the loaded model; ms/step is the fit's wall time over its steps.", "",
            "| engine | N | batches | peak MB | fit s | ms/step | tokens/step | captured | recomputed | cache peak MB |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in list(ours.values()) + ([old] if old else []):
        st = r["stats"]
        cache = f"{st['cache_peak_bytes'] / 2**20:.0f}" if "cache_peak_bytes" in st else "—"
        side = "this tree" if r["side"] == "ours" else f"up-front ({B9_BASELINE})"
        rows.append(f"| {side} | {r['docs']} | {r['n_batches']} | {r['peak_mb']:.0f} | {r['fit_s']:.1f} | "
                    f"{r['fit_s'] / r['steps'] * 1000:.0f} | {r['tokens_per_step']:.0f} | {st.get('captured', 'all')} | "
                    f"{st.get('recomputed', '—')} | {cache} |")
    if why_not:
        rows += ["", f"The up-front engine: {why_not}."]
    rows += [""] + extrapolation(sh, measured, old, quick)
    return rows


def default_shapes() -> dict:
    """The default model's shapes from its config (float32, as the benchmarks load it)."""
    from unlearnviz.model.loading import prepare_default

    cfg = json.loads((prepare_default() / "config.json").read_text())
    return {"hidden": cfg["hidden_size"], "mlp": cfg["intermediate_size"], "layers": cfg["num_hidden_layers"],
            "head_dim": cfg["hidden_size"] // cfg["num_attention_heads"], "bytes": 4}


def extrapolation(sh: dict, measured: float | None, old: dict | None, quick: bool) -> list[str]:
    """Per-token capture bytes × tokens cached, at the WMDP setup's shapes (512-token documents,
    batch 4, 150 steps) for the default model and for a 7B model, whatever size this run had
    (a quick run's fits are of the tiny model: their peaks are not shown here)."""
    full = FULL["max_tokens"]
    if quick:
        sh, old = default_shapes(), None
    here = capture_bytes_per_token(sh["hidden"], sh["mlp"], sh["head_dim"], sh["bytes"], full)
    seven = capture_bytes_per_token(SEVEN_B["hidden"], SEVEN_B["mlp"], SEVEN_B["head_dim"], SEVEN_B["bytes"], full)
    check = []
    if measured is not None:
        check.append(f"this tree's engine counts {measured / 1024:.1f} KB per padded token of a captured batch")
    if old is not None:
        tokens = old["docs"] * (1 + 4 / 5) * old["tokens_per_step"] / (2 * BATCH)
        check.append(f"the up-front engine's peak was {old['peak_mb'] * 2**20 / tokens / 1024:.1f} KB per corpus token")
    lines = [f"**Extrapolation to a 7B model's shapes.** A captured token costs (3·hidden + MLP width)·bytes (the "
             "window's input, its first block's output and MLP input, the frozen output at the loss layer) + "
             "2·head_dim·bytes (rotary cos and sin) + T bytes (its row of the boolean [B, 1, T, T] attention mask), "
             f"at T = {full}: {here / 1024:.1f} KB on the default model (hidden {sh['hidden']}, MLP {sh['mlp']}, "
             f"{sh['bytes'] * 8}-bit)" + (f" ({'; '.join(check)})" if check else "")
             + f"; {seven / 1024:.1f} KB at {SEVEN_B['name']}: hidden {SEVEN_B['hidden']}, MLP {SEVEN_B['mlp']}, "
             f"bf16 (its {SEVEN_B['layers']} layers set how far below the window each capture runs, not what it "
             f"keeps). Tokens cached × bytes per token, for N forget + N retain documents of {full} tokens (4/5 of "
             "the retain ones train; every fifth measures perplexity):", "",
             "| N | tokens the up-front engine caches | up-front, default model | up-front, 7B shapes | "
             f"tokens {FULL['steps']} steps read | lazy engine at most, 7B shapes |", "|---|---|---|---|---|---|"]
    for n in (*FULL["sizes"], 24000):
        tokens = (n + n * 4 // 5) * full
        used = min(2 * FULL["steps"] * BATCH, n + n * 4 // 5) * full
        lines.append(f"| {n:,}{' (WMDP-Bio papers)' if n == 24000 else ''} | {tokens / 1e6:.1f} M | "
                     f"{tokens * here / 2**30:,.0f} GB | {tokens * seven / 2**30:,.0f} GB | {used / 1e6:.2f} M | "
                     f"{used * seven / 2**30:.0f} GB |")
    step = 2 * BATCH * full
    try:
        from unlearnviz.methods import engine

        budget = (f" (this tree's: {engine.HOST_CACHE_MAX / 2**30:g} GiB of CPU memory at most, and "
                  f"{engine.CACHE_SHARE:.0%} of what is free)")
    except (ImportError, AttributeError):
        budget = ""
    lines += ["", f"The lazy engine keeps at most the captures of the batches its steps read, and of those only what "
              f"its byte budget holds{budget} (it recomputes the rest), plus one step's two batches "
              f"({step:,} tokens: {step * seven / 2**20:.0f} MB at 7B shapes): bounded by the steps and the budget, "
              "not by the corpus. The up-front engine holds every token of both corpora."]
    return lines
