"""How B1, B3 and B5 grow with batch size, sequence length and item count (small runs)."""

from __future__ import annotations

import time

import torch

from bench.common import median_time
from bench.suite import bench_data, default_lm


def _joined(texts: list[str], k: int) -> list[str]:
    """Texts k times as long: k consecutive texts joined."""
    return [" ".join(texts[i:i + k]) for i in range(0, len(texts) - k + 1, k)]


def b1_rows(quick: bool) -> list[str]:
    """RMU step (layer window vs naive loop) over batch size and text length, on the built-in
    texts (joined k at a time for longer sequences). Both loops run on the same cached batches
    and frozen references; only the training steps are timed."""
    from dataclasses import replace

    from unlearnviz.methods import get_method, make_hparams
    from unlearnviz.methods.engine import WindowEngine
    from unlearnviz.methods.misdirection import prepare, train_misdirection

    lm, data = default_lm(), bench_data()
    configs = [(4, 1), (8, 1), (16, 1), (8, 2), (8, 4)] if not quick else [(4, 1), (8, 2)]
    steps_fast, steps_naive = (4, 2) if quick else (8, 3)
    rows = ["| batch size | tokens per text (mean) | ours ms/step | naive ms/step | ratio |", "|---|---|---|---|---|"]
    spec = get_method("rmu")
    for bs, k in configs:
        n = 4 * bs  # four forget and four retain batches: enough for the steps, cheap to cache
        sub = replace(data, forget_texts=_joined(data.forget_texts, k)[:n],
                      retain_texts=_joined(data.retain_texts, k)[: n * 5 // 4 + 1])
        hp = make_hparams(spec.hparams_cls, {"batch_size": bs, "max_tokens": 128})
        engine, fb, rb = prepare(lm, sub, hp, None)
        naive = WindowEngine(lm, engine.start, engine.stop, fb + rb, naive=True, linear_first=True)
        naive.frozen = engine.frozen
        def target(i, frozen, u=torch.ones(lm.hidden_size, device=lm.device) / lm.hidden_size ** 0.5):
            return (5.0 * u).expand_as(frozen), None

        per = {}
        for kind, eng, steps in (("fast", engine, steps_fast), ("naive", naive, steps_naive)):
            run_hp = make_hparams(spec.hparams_cls, {"batch_size": bs, "max_tokens": 128, "steps": steps})
            train_misdirection(lm, eng, fb, rb, replace(run_hp, steps=1), target, "rmu", None, None)  # warm-up
            per[kind] = train_misdirection(lm, eng, fb, rb, run_hp, target, "rmu", None, None).meta["train_s"] / steps
        tokens = sum(int(b.attention_mask.sum()) for b in fb + rb) / sum(b.input_ids.shape[0] for b in fb + rb)
        rows.append(f"| {bs} | {tokens:.0f} | {per['fast'] * 1000:.0f} | {per['naive'] * 1000:.0f} | "
                    f"{per['naive'] / per['fast']:.1f}× |")
    return rows


def b3_rows(quick: bool) -> list[str]:
    """Side-by-side chat (original + edited rows, one batched pass) vs one plain generate, per
    generated token, over the prompt length."""
    from unlearnviz.generation import GenSettings, side_by_side
    from unlearnviz.methods import get_method, make_hparams

    lm, data = default_lm(), bench_data()
    edit = get_method("rmu").fit(lm, data, make_hparams(get_method("rmu").hparams_cls, {"steps": 3}))
    n = 16 if quick else 24
    rows = ["| prompt tokens | ours ms/token | plain ms/token | ratio (ours / plain) |", "|---|---|---|---|"]
    for k in ((1, 16) if quick else (1, 8, 32)):
        prompt = " ".join(data.retain_texts[:k]) + " What is the capital of France?"
        ids = lm.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)
        state = side_by_side(lm, prompt, edit.plan(), GenSettings(max_new_tokens=n, cross_probs=False))
        steps = max(len(state.original_ids), len(state.edited_ids))

        def ours(prompt=prompt):
            side_by_side(lm, prompt, edit.plan(), GenSettings(max_new_tokens=n, cross_probs=False))

        def plain(ids=ids):
            lm.model.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)

        a = median_time(ours, repeats=1 if quick else 2, warmup=0) / steps
        b = median_time(plain, repeats=1 if quick else 2, warmup=0) / n
        rows.append(f"| {ids['input_ids'].shape[1]} | {a * 1000:.0f} | {b * 1000:.0f} | {a / b:.2f}× |")
    return rows


def b5_rows(quick: bool) -> list[str]:
    """Batched cloze scoring over the number of items; the naive loop (one forward per item and
    choice) is timed on the first 25 items and is linear in the count by construction."""
    from bench.suite import b5_naive_loop
    from unlearnviz.evaluation.mcq import score_items

    lm, data = default_lm(), bench_data()
    items = data.forget_mcq + data.retain_mcq
    t0 = time.perf_counter()
    b5_naive_loop(lm, items[:25])
    naive_per_item = (time.perf_counter() - t0) / 25
    rows = ["| items | ours s | ours ms/item | naive ms/item (from 25 items) | ratio |", "|---|---|---|---|---|"]
    score_items(lm, items[:10], letter=False, floor=False)  # warm-up
    for n in ((25, 100) if quick else (25, 50, 100, 200)):
        a = median_time(lambda n=n: score_items(lm, items[:n], letter=False, floor=False), repeats=1, warmup=0)
        rows.append(f"| {n} | {a:.2f} | {a / n * 1000:.1f} | {naive_per_item * 1000:.0f} | "
                    f"{naive_per_item * n / a:.1f}× |")
    return rows


def scaling(quick: bool = False) -> dict:
    t0 = time.perf_counter()
    md = ["## Scaling", "",
          "Small runs (medians of 1–2 after a warm-up, this machine), to show how the speed-ups grow; the rows "
          "above are the measured targets.", "",
          "**B1: RMU training step vs batch size and sequence length** (RMU defaults otherwise; longer texts are "
          "built-in texts joined 2 or 4 at a time):", "", *b1_rows(quick), "",
          "**B3: side-by-side chat vs prompt length** (time per generated token, 2 rows vs one plain generate):", "",
          *b3_rows(quick), "",
          "**B5: MCQ cloze evaluation vs number of items:**", "", *b5_rows(quick), ""]
    md.append(f"_Scaling runs took {time.perf_counter() - t0:.0f} s._")
    return {"results": [], "markdown": md}
