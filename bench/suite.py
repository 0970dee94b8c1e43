"""The benchmarks. Each returns {"results": [Result, ...], "markdown": [extra lines]}."""

from __future__ import annotations

import functools
import os
import re
import statistics
import sys
import time

import torch

from bench.common import Result, device_name, median_time, paired, peak_rss_mb, step_flops, step_profile


@functools.lru_cache(maxsize=1)
def default_lm():
    from unlearnviz.model import load_model

    return load_model("default")


@functools.lru_cache(maxsize=1)
def bench_data():
    from unlearnviz.data import load_data

    return load_data("builtin:geo_europe_vs_world")


def bench_texts(n: int) -> list[str]:
    """``n`` texts of the built-in set (forget then retain texts, repeated if fewer)."""
    data = bench_data()
    pool = data.forget_texts + data.retain_texts
    return [pool[i % len(pool)] for i in range(n)]


def b1_misdirection_step(quick: bool = False) -> dict:
    """RMU/SRMU step: layer-window engine vs a full forward of the edited and the frozen model."""
    import unlearnviz.methods.misdirection as misdirection
    from unlearnviz.methods import get_method, make_hparams

    lm, data = default_lm(), bench_data()
    steps = 6 if quick else 30
    out = []
    # FLOPs per step of each loop (counted on a 3-step fit, which also warms both up): the ratio
    # the layer window could reach if it ran at the naive loop's FLOP rate
    spec = get_method("rmu")
    hp3 = make_hparams(spec.hparams_cls, {"steps": 3})
    _, f_fast = step_flops(lambda: spec.fit(lm, data, hp3), misdirection)
    _, f_naive = step_flops(lambda: spec.fit(lm, data, hp3, naive=True), misdirection)
    hp8 = make_hparams(spec.hparams_cls, {"steps": 8})
    prof = step_profile(lambda: spec.fit(lm, data, hp8), misdirection)
    for method in ("rmu", "srmu"):
        spec = get_method(method)
        hp = make_hparams(spec.hparams_cls, {"steps": steps})
        runs = {"fast": [], "naive": []}
        for _ in range(1):  # one pair: the ratio is already a mean over the steps
            for kind in ("fast", "naive"):
                e = spec.fit(lm, data, hp, naive=(kind == "naive"))
                runs[kind].append(e)
        per_step = {k: statistics.median(e.meta["train_s"] / steps for e in v) for k, v in runs.items()}
        ratios = [n.meta["train_s"] / f.meta["train_s"] for f, n in zip(runs["fast"], runs["naive"])]
        la = [r["loss"] for r in runs["fast"][0].meta["losses"]]
        lb = [r["loss"] for r in runs["naive"][0].meta["losses"]]
        max_rel = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(la, lb))
        ratio = statistics.median(ratios)
        ceiling = f_naive / f_fast
        rate = ratio / ceiling  # our FLOP rate relative to the naive loop's
        joined = runs["fast"][0].meta.get("joined_steps", 0.0)
        limit = (f"FLOPs per step (torch FlopCounterMode, forward + backward): ours {f_fast / 1e9:.1f} G, naive "
                 f"{f_naive / 1e9:.1f} G, so {ceiling:.1f}× at an equal FLOP rate; ours runs at {rate:.2f}× the "
                 f"naive loop's rate ({f_fast / per_step['fast'] / 1e9:.0f} vs "
                 f"{f_naive / per_step['naive'] / 1e9:.0f} GFLOP/s: both compute-bound). The naive step "
                 f"is 3 forwards of 30 blocks + the LM head; ours is 2 blocks forward and backward (the first "
                 f"window block is linear in its delta; forget rows cut after their last loss token), forget "
                 f"and retain rows in one call where the retain rows need no padding ({joined:.0%} of steps; "
                 f"padding them changes the attention's rounding, which the retain term, zero at the start, "
                 f"turns into its whole gradient): what remains is the "
                 f"backward through those 2 blocks and the delta gradients, which the naive loop needs too. "
                 f"torch.profiler over 6 of our steps: matrix products {prof['mm_share']:.0%} of operator time, "
                 f"{prof['ops_per_step']:.0f} operator calls per step, next "
                 + ", ".join(f"{k} {v:.0%}" for k, v in prof["top"]) + ".")
        met = ratio >= 10 and max_rel <= 1e-4
        out.append(Result("B1" if method == "rmu" else "B1s", f"{method.upper()} training step (layer window vs naive loop)",
                          per_step["fast"] * 1000, per_step["naive"] * 1000, ratio, "≥ 10× at equal loss (1e-4 rel.)",
                          met, "ms/step", device_name(),
                          f"max rel. loss diff {max_rel:.1e}; precompute {runs['fast'][0].meta['precompute_s']:.1f} s "
                          f"once; FLOP ratio {ceiling:.1f}×; forget+retain in one call in {joined:.0%} of steps",
                          "" if met else limit))
    return {"results": out}


def b1e_edit_and_eval(quick: bool = False) -> dict:
    """What ``run`` does on the default model and set: before-evaluation, the default edit, the
    after-evaluation (letter, cloze, floor, perplexity), model already loaded."""
    from unlearnviz.evaluation.mcq import evaluate
    from unlearnviz.methods import get_method, make_hparams

    lm, data = default_lm(), bench_data()
    out = []
    for method in (("rmu",) if quick else ("rmu", "srmu", "mrp")):
        spec = get_method(method)
        t0 = time.perf_counter()
        evaluate(lm, data)
        t_before = time.perf_counter() - t0
        edit = spec.fit(lm, data, make_hparams(spec.hparams_cls, {"steps": 20} if quick else {}))
        t_fit = time.perf_counter() - t0 - t_before
        evaluate(lm, data, plan=edit.plan())
        total = time.perf_counter() - t0
        t_after = total - t_before - t_fit
        steps = edit.meta.get("steps", 0)
        per_step = edit.meta.get("train_s", 0.0) / max(steps, 1) * 1000
        limit = (f"the fit is {t_fit:.0f} s ({steps} steps at {per_step:.0f} ms, the rest one-time caching/init) "
                 f"and the two evaluations {t_before + t_after:.0f} s (letter, cloze, floor and held-out perplexity "
                 f"over {len(data.forget_mcq) + len(data.retain_mcq)} items, before and after)")
        out.append(Result(f"B1e-{method}", f"default {method.upper()} edit + before/after evaluation (the `run` command)",
                          total, None, None, "≤ 60 s", total <= 60, "s", device_name(),
                          f"{'quick: 20 steps; ' if quick else ''}before {t_before:.1f} s, fit {t_fit:.1f} s, "
                          f"after {t_after:.1f} s", "" if total <= 60 else limit))
    return {"results": out}


def b2_mrp_fit(quick: bool = False) -> dict:
    """MRP init + training, engine (cached inputs below the site, one capture pass for both) vs
    the same algorithm with a full forward per step."""
    import unlearnviz.methods.mrp as mrp
    from unlearnviz.methods import get_method, make_hparams

    lm, data = default_lm(), bench_data()
    spec = get_method("mrp")
    default_steps = spec.hparams_cls().steps
    steps = 4 if quick else default_steps
    hp = make_hparams(spec.hparams_cls, {"steps": steps})
    # FLOPs: one-time (init, cached inputs, references) and per step, from a 2-step fit of each
    hp2 = make_hparams(spec.hparams_cls, {"steps": 2})
    init_f, step_f = step_flops(lambda: spec.fit(lm, data, hp2), mrp)
    init_n, step_n = step_flops(lambda: spec.fit(lm, data, hp2, naive=True), mrp)
    runs: dict[str, list] = {"fast": [], "naive": []}

    def fit(kind):
        def run():
            runs[kind].append(spec.fit(lm, data, hp, naive=kind == "naive"))
        return run

    a, b, r = paired(fit("fast"), fit("naive"), repeats=1, warmup=0)
    ef, en = runs["fast"][-1].meta, runs["naive"][-1].meta
    at_default = (init_n + default_steps * step_n) / (init_f + default_steps * step_f)
    per_step = step_n / step_f
    note = (f"{steps} steps{' (quick; default ' + str(default_steps) + ')' if quick else ' (the default)'}; "
            f"init {ef['init_s']:.1f} s vs {en['init_s']:.1f} s, training "
            f"{ef['train_s'] / steps * 1000:.0f} vs {en['train_s'] / steps * 1000:.0f} ms/step")
    limit = (f"FLOPs (torch FlopCounterMode): one-time ours {init_f / 1e9:.0f} G vs naive {init_n / 1e9:.0f} G (both "
             f"run the stack below the site once per batch for the init statistics; ours also caches the window "
             f"inputs there), per step {step_f / 1e9:.1f} G vs {step_n / 1e9:.1f} G ({per_step:.1f}×). The site is "
             f"block {hp.layers[0]} of {lm.n_layers} and the loss is at the LM head, so every step runs blocks "
             f"{hp.layers[0]}..{lm.n_layers - 1} forward and backward either way; the naive step adds only the "
             f"blocks below the site and the full-vocabulary head. At an equal FLOP rate the fit could be "
             f"{at_default:.1f}× at the default {default_steps} steps and at most {per_step:.1f}× for long runs: "
             f"≥ 5× is out of reach for this algorithm at this site.")
    return {"results": [Result("B2", f"MRP fit (init + training, {steps} steps)", a, b, r, "≥ 5×", r >= 5, "s",
                               device_name(), note, "" if r >= 5 else limit)]}


def b3_side_by_side(quick: bool = False) -> dict:
    """Original + edited answers (one batched pass) vs one plain generate of one answer."""
    from unlearnviz.generation import GenSettings, side_by_side
    from unlearnviz.methods import get_method, make_hparams

    lm, data = default_lm(), bench_data()
    edit = get_method("rmu").fit(lm, data, make_hparams(get_method("rmu").hparams_cls, {"steps": 5}))
    prompt = "What is the capital of France?"
    ids = lm.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    n = 64

    def plain():
        lm.model.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    def ours(cross: bool):
        def run():
            s = GenSettings(max_new_tokens=n, cross_probs=cross)
            side_by_side(lm, prompt, edit.plan(), s)
        return run

    def sequential():
        plain()
        with lm.router.apply(edit.plan()):
            plain()

    results = []
    # Our loop stops once both answers end (EOS); the plain generate is forced to n tokens. Compare
    # time per generated step, so an early stop is not counted as speed.
    state = side_by_side(lm, prompt, edit.plan(), GenSettings(max_new_tokens=n, cross_probs=False))
    steps = max(len(state.original_ids), len(state.edited_ids))
    a, b, r = paired(ours(False), plain, repeats=2 if quick else 3)
    per_step = (a / steps) / (b / n)
    results.append(Result("B3", f"side-by-side chat (2 rows) vs one plain generate, per generated token ({steps} of {n})",
                          a / steps * 1000, b / n * 1000, per_step, "≤ 1.15× its time", per_step <= 1.15, "ms/token",
                          device_name(), "ratio = ours / plain per token (lower is better)"))
    a, b, r = paired(ours(True), plain, repeats=2)
    results.append(Result("B3x", "side-by-side with cross-probabilities (4 rows) vs one plain generate, per token",
                          a / steps * 1000, b / n * 1000, (a / steps) / (b / n), "—", True, "ms/token", device_name(),
                          "ratio = ours / plain per token"))
    a, b, r = paired(sequential, plain, repeats=2)
    results.append(Result("B3seq", "naive: two sequential generations vs one plain generate", a, b, 1 / r, "—", True,
                          "s", device_name(), "ratio = sequential / plain"))
    # memory: the edit's tensors vs a deep copy of the model
    edit_mb = sum(t.numel() * t.element_size() for t in edit.tensors().values()) / 2**20
    model_mb = sum(p.numel() * p.element_size() for p in lm.model.parameters()) / 2**20
    results.append(Result("B3m", "memory for original + edited: base + edit deltas vs base + model copy",
                          model_mb + edit_mb, 2 * model_mb, (model_mb + edit_mb) / model_mb, "≤ 1.05× the model's",
                          (model_mb + edit_mb) / model_mb <= 1.05, "MB", device_name(), "ratio = ours / one model"))
    return {"results": results}


def capture_all(lm, texts: list[str]) -> dict:
    """Ours: mean-pooled residual stream after every block (hooks pool inside the pass)."""
    from unlearnviz.analysis.activations import capture

    return capture(lm, texts, None, "mean", use_cache=False)


def plain_hidden_pooled(lm, texts: list[str], batch_size: int = 32) -> dict:
    """The baseline: the decoder stack (no LM head) with ``output_hidden_states=True`` in
    batches of the texts as given, then the same pooling as ours (mean over non-pad tokens but
    position 0). Layer L is ``hidden_states[L + 1]``; the last one comes out of the final norm
    (the plain API has no un-normed last block output)."""
    from unlearnviz.analysis.activations import _pool_mask, encode
    from unlearnviz.data.batching import make_batches

    enc = encode(lm, texts)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    body = lm.model.base_model
    out: dict[int, list] = {layer: [] for layer in range(lm.n_layers)}
    for s in range(0, len(enc), batch_size):
        b = make_batches(enc[s:s + batch_size], batch_size, pad)[0]
        with torch.no_grad():
            hs = body(input_ids=b.input_ids.to(lm.device), attention_mask=b.attention_mask.to(lm.device),
                      output_hidden_states=True, use_cache=False).hidden_states
        m = _pool_mask(b).to(lm.device).float()
        for layer in range(lm.n_layers):
            h = hs[layer + 1].float()
            out[layer].append(((h * m[..., None]).sum(1) / m.sum(1, keepdim=True)).cpu())
    return {layer: torch.cat(v) for layer, v in out.items()}


def b4_capture(quick: bool = False) -> dict:
    """All-layer pooled capture of 500 texts: our hooks (pooled in the hook, batches sorted by
    length, no head) vs the decoder's output_hidden_states with the same pooling afterwards."""
    lm = default_lm()
    n = 100 if quick else 500
    texts = bench_texts(n)
    got: dict = {}
    a, b, r = paired(lambda: got.__setitem__("ours", capture_all(lm, texts)),
                     lambda: got.__setitem__("plain", plain_hidden_pooled(lm, texts)), repeats=1 if quick else 2,
                     warmup=0)
    ours, plain = got["ours"], got["plain"]
    # the same vectors (the last block aside: the plain API returns it after the final norm)
    err = max(float(((ours[k] - plain[k]).norm(dim=-1) / plain[k].norm(dim=-1)).max()) for k in range(lm.n_layers - 1))
    mem_o, mem_p = peak_rss_mb("b4", "ours", str(n)), peak_rss_mb("b4", "plain", str(n))
    mem_ratio = mem_o["peak_mb"] / max(mem_p["peak_mb"], 1e-9)
    met = r >= 1.0 and mem_ratio < 1.0 and err < 1e-4
    note = (f"{n} texts × {lm.n_layers} layers; {n / a:.0f} vs {n / b:.0f} texts/s; peak memory above the loaded "
            f"model (fresh process per side, kernel RSS {mem_o['method']}): ours {mem_o['peak_mb']:.0f} MB vs "
            f"{mem_p['peak_mb']:.0f} MB ({mem_ratio:.2f}×); max rel. difference of the pooled vectors {err:.1e} "
            "(last block excluded: plain applies the final norm)")
    limit = "" if met else (f"throughput {r:.2f}× (needs ≥ 1), memory {mem_ratio:.2f}× (needs < 1), "
                            f"vectors differ by {err:.1e}")
    return {"results": [Result("B4", "activation capture, all layers, mean-pooled (throughput)", a, b, r,
                               "≥ 1.0× its throughput, less memory", met, "s", device_name(), note, limit),
                        Result("B4m", "activation capture: peak memory above the loaded model", mem_o["peak_mb"],
                               mem_p["peak_mb"], mem_ratio, "< 1× the plain forward's", mem_ratio < 1.0, "MB",
                               device_name(), "ratio = ours / plain (lower is better)")]}


def b5_naive_loop(lm, items) -> dict:
    """The naive cloze evaluation: one full forward per (item, choice), the whole vocabulary's
    log-probabilities at every position."""
    from unlearnviz.data.batching import encode_pair

    hits = 0
    for it in items:
        scores = []
        for c in it.choices:
            ctx, cont = encode_pair(lm.tokenizer, it.question, " " + c)
            ids = torch.tensor([ctx + cont])
            with torch.no_grad():
                logp = torch.log_softmax(lm.model(ids).logits[0].float(), -1)
            s = sum(float(logp[len(ctx) + j - 1, t]) for j, t in enumerate(cont))
            scores.append(s / len(c))  # lm-eval's acc_norm: characters, without the delimiter
        hits += int(max(range(len(scores)), key=scores.__getitem__) == it.answer)
    return {"cloze_acc": hits / len(items)}


def b5_mcq(quick: bool = False) -> dict:
    """Batched cloze scoring with the head only at answer positions vs one forward per request."""
    from unlearnviz.evaluation.mcq import score_items, summarise

    lm, data = default_lm(), bench_data()
    items = (data.forget_mcq + data.retain_mcq)[: 60 if quick else 200]

    def ours():
        return summarise(score_items(lm, items, letter=False, floor=False))

    def naive():
        return b5_naive_loop(lm, items)

    acc: dict[str, float] = {}
    timed_ours = lambda: acc.__setitem__("ours", ours()["cloze_acc"])  # noqa: E731
    timed_naive = lambda: acc.__setitem__("naive", naive()["cloze_acc"])  # noqa: E731
    ours()  # warm-up of ours only: the naive loop has nothing to warm that ours has not
    a, b, r = paired(timed_ours, timed_naive, repeats=1, warmup=0)  # the naive loop: ~50 s a run
    acc_ours, acc_naive = acc["ours"], acc["naive"]
    return {"results": [Result("B5", f"MCQ cloze evaluation, {len(items)} items", a, b, r,
                               "≥ 4× with identical accuracies", r >= 4 and abs(acc_ours - acc_naive) < 1e-9, "s",
                               device_name(), f"accuracy ours {acc_ours:.4f} vs naive {acc_naive:.4f}")]}


def _geometry_points(n: int) -> tuple[dict, dict, list[str], list[str]]:
    """``n`` pooled points per layer: the built-in texts' real activations (tiled, with a little
    noise so no two points coincide) and an "edited" copy moved along a random direction."""
    from unlearnviz.analysis.activations import capture

    lm = default_lm()
    base_texts = bench_texts(min(n, 500))
    acts = capture(lm, base_texts, None, "mean")
    gen = torch.Generator().manual_seed(0)
    reps = -(-n // len(base_texts))
    original, edited = {}, {}
    for layer, x in acts.items():
        x = x.repeat(reps, 1)[:n]
        scale = float(x.std())
        x = x + 0.01 * scale * torch.randn(x.shape, generator=gen)
        original[layer] = x
        edited[layer] = x + 0.2 * scale * torch.randn(1, x.shape[1], generator=gen)
    groups = [("forget", "retain", "probe")[i % 3] for i in range(n)]
    texts = [base_texts[i % len(base_texts)] for i in range(n)]
    return original, edited, groups, texts


def b6_geometry(quick: bool = False) -> dict:
    """PCA views of every layer (one batched randomized SVD) and a warm UMAP view, 2,000 points."""
    import warnings

    import numpy as np

    from unlearnviz.analysis.geometry import _umap_class, pca_views, umap_view, warm_umap

    n = 2000
    original, edited, groups, texts = _geometry_points(n)
    layers = sorted(original)

    def pca_ours():
        return pca_views(original, edited, groups, texts)

    def pca_sklearn():
        from sklearn.decomposition import PCA

        out = {}
        for layer in layers:
            p = PCA(n_components=2, random_state=0).fit(original[layer].numpy())
            out[layer] = (p.transform(original[layer].numpy()), p.transform(edited[layer].numpy()))
        return out

    a, b, r = paired(pca_ours, pca_sklearn, repeats=3, warmup=1)
    results = [Result("B6", f"PCA views, all {len(layers)} layers, {n} points (original + edited)", a, b, r, "≤ 2 s",
                      a <= 2, "s", device_name(), "baseline: scikit-learn PCA fitted per layer; ratio = sklearn / ours")]

    t0 = time.perf_counter()
    warm_umap(background=False)  # numba compilation (or loading it from the on-disk cache)
    warm_s = time.perf_counter() - t0
    mid = layers[len(layers) // 2]
    ours = lambda: umap_view(original[mid], edited[mid], groups, texts, mid)  # noqa: E731
    a = median_time(ours, repeats=1 if quick else 2, warmup=1)
    base, ratio, note = None, None, f"warm-up (numba compile or its disk cache) {warm_s:.1f} s, excluded"
    if not quick:
        cls = _umap_class()

        def umap_plain():  # umap-learn's own euclidean path: its nearest neighbours and transform
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m = cls(n_components=2, n_neighbors=15, min_dist=0.1, n_epochs=200, random_state=0, low_memory=True)
                m.fit_transform(original[mid].numpy())
                return np.asarray(m.transform(edited[mid].numpy()))

        with warnings.catch_warnings():  # its numba code compiled outside the timing, like ours
            warnings.simplefilter("ignore")
            cls(n_components=2, n_neighbors=15, n_epochs=10, random_state=0).fit(original[mid][:300].numpy()).transform(
                edited[mid][:50].numpy())
        t1 = time.perf_counter()
        umap_plain()
        base = time.perf_counter() - t1
        ratio = base / a
        note += "; baseline: umap-learn fit + transform with its own euclidean distances, warm, 1 run"
    results.append(Result("B6u", f"UMAP view, layer {mid}, {n} points (fit original + transform edited), warm", a,
                          base, ratio, "≤ 5 s", a <= 5, "s", device_name(), note))
    return {"results": results}


def _server_class():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from app_server import Server

    return Server


def b7_cold_start(quick: bool = False) -> dict:
    """app.py start to a ready page (setup done)."""
    import urllib.request

    Server = _server_class()

    t0 = time.perf_counter()
    srv = Server()
    ready = time.perf_counter() - t0
    with urllib.request.urlopen(srv.url) as r:
        ok = r.status == 200
    srv.stop()
    return {"results": [Result("B7", "app cold start to ready page", ready, None, None, "≤ 15 s", ok and ready <= 15,
                               "s", device_name())]}


def b8_demo(quick: bool = False) -> dict:
    """The one-click demo through the served app: a fresh ``python app.py`` (default model and
    data, nothing preloaded), then /demo called with gradio_client, timed until it returns with
    every output filled: model and data load, SRMU at its defaults with the before/after
    evaluation, the three analysis tabs, and the side-by-side chat. ``--quick`` runs it on the
    tiny synthetic model instead (a smoke test of the path, not the target)."""
    from gradio_client import Client

    Server = _server_class()
    flags = ("--model", "synthetic", "--data", "synthetic") if quick else ()
    srv = Server(*flags)
    try:
        client = Client(srv.url, verbose=False)
        t0 = time.perf_counter()
        out = client.predict(api_name="/demo")
        total = time.perf_counter() - t0
    finally:
        srv.stop()
    empty = [i for i, o in enumerate(out) if o is None or (isinstance(o, (str, list, dict)) and not o)]
    done = isinstance(out[0], str) and "Demo complete" in out[0]
    fit = next((float(m.group(1)) for o in out if isinstance(o, str)
                for m in [re.search(r"trained in ([0-9.]+) s", o)] if m), None)
    model = "tiny synthetic model (--quick)" if quick else "default model, builtin:demo"
    note = (f"{model}; {len(out)} outputs, {'all filled' if not empty else f'empty: {empty}'}; "
            + (f"of which the SRMU fit {fit:.1f} s" if fit is not None else "fit time not shown"))
    met = total <= 60 and done and not empty
    limit = "" if met else (f"{total:.0f} s end to end, the fit {fit if fit is not None else float('nan'):.0f} s "
                            f"of it; every output filled: {not empty}")
    return {"results": [Result("B8", "one-click demo end to end (served app, /demo via gradio_client)", total, None,
                               None, "≤ 60 s", met, "s", device_name(), note, limit)]}


def scaling_table(quick: bool = False) -> dict:
    from bench.scaling import scaling

    return scaling(quick)


def b9_wmdp_shaped(quick: bool = False) -> dict:
    from bench.b9 import b9_corpus_memory

    return b9_corpus_memory(quick)


def b10_calibration(quick: bool = False) -> dict:
    """B10: calibration's cost and result on the default model and Gemma-3-270M (bench/b10.py)."""
    from bench.b10 import b10_calibration as run

    return run(quick)


def b11_planner(quick: bool = False) -> dict:
    """B11: the memory planner vs measured peaks (bench/planner.py)."""
    from bench.planner import b11_planner as run

    return run(quick)


def b12_soak(quick: bool = False) -> dict:
    """B12: the soak and fault scenario of tests/test_soak.py (bench/soak.py)."""
    from bench.soak import b12_soak as run

    return run(quick)


BENCHMARKS = [("B1", b1_misdirection_step), ("B1e", b1e_edit_and_eval), ("B2", b2_mrp_fit), ("B3", b3_side_by_side),
              ("B4", b4_capture), ("B5", b5_mcq), ("B6", b6_geometry), ("B7", b7_cold_start), ("B8", b8_demo),
              ("B9", b9_wmdp_shaped), ("B10", b10_calibration), ("B11", b11_planner), ("B12", b12_soak),
              ("S", scaling_table)]

