"""The benchmarks. Each returns {"results": [Result, ...], "markdown": [extra lines]}."""

from __future__ import annotations

import functools
import statistics
import sys
import time

import torch

from bench.common import Result, device_name, paired


@functools.lru_cache(maxsize=1)
def default_lm():
    from unlearnviz.model import load_model

    return load_model("default")


@functools.lru_cache(maxsize=1)
def bench_data():
    from unlearnviz.data import load_data

    return load_data("builtin:geo_europe_vs_world")


def b1_misdirection_step(quick: bool = False) -> dict:
    """RMU/SRMU step: layer-window engine vs a full forward of the edited and the frozen model."""
    from unlearnviz.methods import get_method, make_hparams

    lm, data = default_lm(), bench_data()
    steps = 6 if quick else 20
    out = []
    for method in ("rmu", "srmu"):
        spec = get_method(method)
        hp = make_hparams(spec.hparams_cls, {"steps": steps})
        runs = {"fast": [], "naive": []}
        for _ in range(1 if quick else 2):
            for kind in ("fast", "naive"):
                e = spec.fit(lm, data, hp, naive=(kind == "naive"))
                runs[kind].append(e)
        per_step = {k: statistics.median(e.meta["train_s"] / steps for e in v) for k, v in runs.items()}
        ratios = [n.meta["train_s"] / f.meta["train_s"] for f, n in zip(runs["fast"], runs["naive"])]
        la = [r["loss"] for r in runs["fast"][0].meta["losses"]]
        lb = [r["loss"] for r in runs["naive"][0].meta["losses"]]
        max_rel = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(la, lb))
        ratio = statistics.median(ratios)
        out.append(Result("B1" if method == "rmu" else "B1s", f"{method.upper()} training step (layer window vs naive loop)",
                          per_step["fast"] * 1000, per_step["naive"] * 1000, ratio, "≥ 10× at equal loss (1e-4 rel.)",
                          ratio >= 10 and max_rel <= 1e-4, "ms/step", device_name(),
                          f"max rel. loss diff {max_rel:.1e}; precompute {runs['fast'][0].meta['precompute_s']:.1f} s once"))
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
        edit = spec.fit(lm, data, make_hparams(spec.hparams_cls, {}))
        t_fit = time.perf_counter() - t0 - t_before
        evaluate(lm, data, plan=edit.plan())
        total = time.perf_counter() - t0
        out.append(Result(f"B1e-{method}", f"default {method.upper()} edit + before/after evaluation (the `run` command)",
                          total, None, None, "≤ 60 s", total <= 60, "s", device_name(),
                          f"before {t_before:.1f} s, fit {t_fit:.1f} s, after {total - t_before - t_fit:.1f} s"))
    return {"results": out}


def b2_mrp_fit(quick: bool = False) -> dict:
    from unlearnviz.methods import get_method, make_hparams

    lm, data = default_lm(), bench_data()
    spec = get_method("mrp")
    hp = make_hparams(spec.hparams_cls, {"steps": 4 if quick else 8})
    fast = lambda: spec.fit(lm, data, hp)  # noqa: E731
    naive = lambda: spec.fit(lm, data, hp, naive=True)  # noqa: E731
    a, b, r = paired(fast, naive, repeats=1 if quick else 2, warmup=0)
    return {"results": [Result("B2", "MRP fit (init + training)", a, b, r, "≥ 5×", r >= 5, "s", device_name())]}


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
    a, b, r = paired(ours(False), plain, repeats=2 if quick else 4)
    per_step = (a / steps) / (b / n)
    results.append(Result("B3", f"side-by-side chat (2 rows) vs one plain generate, per generated token ({steps} of {n})",
                          a / steps * 1000, b / n * 1000, per_step, "≤ 1.15× its time", per_step <= 1.15, "ms/token",
                          device_name(), "ratio = ours / plain per token (lower is better)"))
    a, b, r = paired(ours(True), plain, repeats=2 if quick else 3)
    results.append(Result("B3x", "side-by-side with cross-probabilities (4 rows) vs one plain generate, per token",
                          a / steps * 1000, b / n * 1000, (a / steps) / (b / n), "—", True, "ms/token", device_name(),
                          "ratio = ours / plain per token"))
    a, b, r = paired(sequential, plain, repeats=2 if quick else 3)
    results.append(Result("B3seq", "naive: two sequential generations vs one plain generate", a, b, 1 / r, "—", True,
                          "s", device_name(), "ratio = sequential / plain"))
    # memory: the edit's tensors vs a deep copy of the model
    edit_mb = sum(t.numel() * t.element_size() for t in edit.tensors().values()) / 2**20
    model_mb = sum(p.numel() * p.element_size() for p in lm.model.parameters()) / 2**20
    results.append(Result("B3m", "memory for original + edited: base + edit deltas vs base + model copy",
                          model_mb + edit_mb, 2 * model_mb, (model_mb + edit_mb) / model_mb, "≤ 1.05× the model's",
                          (model_mb + edit_mb) / model_mb <= 1.05, "MB", device_name(), "ratio = ours / one model"))
    return {"results": results}


def b5_mcq(quick: bool = False) -> dict:
    """Batched cloze scoring with the head only at answer positions vs one forward per request."""
    from unlearnviz.evaluation.mcq import score_items, summarise
    from unlearnviz.evaluation.scoring import encode_pair

    lm, data = default_lm(), bench_data()
    items = (data.forget_mcq + data.retain_mcq)[: 60 if quick else 200]

    def ours():
        return summarise(score_items(lm, items, letter=False, floor=False))

    def naive():
        hits = 0
        for it in items:
            scores = []
            for c in it.choices:
                ctx, cont = encode_pair(lm.tokenizer, it.question, " " + c)
                ids = torch.tensor([ctx + cont])
                with torch.no_grad():
                    logp = torch.log_softmax(lm.model(ids).logits[0].float(), -1)
                s = sum(float(logp[len(ctx) + j - 1, t]) for j, t in enumerate(cont))
                scores.append(s / len((" " + c).encode()))
            hits += int(max(range(len(scores)), key=scores.__getitem__) == it.answer)
        return {"cloze_acc": hits / len(items)}

    acc_ours, acc_naive = ours()["cloze_acc"], naive()["cloze_acc"]
    a, b, r = paired(ours, naive, repeats=1 if quick else 2, warmup=0)
    return {"results": [Result("B5", f"MCQ cloze evaluation, {len(items)} items", a, b, r,
                               "≥ 4× with identical accuracies", r >= 4 and abs(acc_ours - acc_naive) < 1e-9, "s",
                               device_name(), f"accuracy ours {acc_ours:.4f} vs naive {acc_naive:.4f}")]}


def b7_cold_start(quick: bool = False) -> dict:
    """app.py start to a ready page (setup done)."""
    import os
    import urllib.request

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from app_server import Server

    t0 = time.perf_counter()
    srv = Server()
    ready = time.perf_counter() - t0
    with urllib.request.urlopen(srv.url) as r:
        ok = r.status == 200
    srv.stop()
    return {"results": [Result("B7", "app cold start to ready page", ready, None, None, "≤ 15 s", ok and ready <= 15,
                               "s", device_name())]}


BENCHMARKS = [("B1", b1_misdirection_step), ("B1e", b1e_edit_and_eval), ("B2", b2_mrp_fit), ("B3", b3_side_by_side), ("B5", b5_mcq),
              ("B7", b7_cold_start)]

