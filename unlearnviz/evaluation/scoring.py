"""Log-likelihood of continuations, batched, with the LM head only where it is needed.

Evaluation is compute-bound on a CPU (docs/findings.md: ~550 tokens/s on 2 cores), so requests are
sorted by length, padded per batch, and the unembedding runs only at continuation positions
(vocabulary 49k × every position would dominate otherwise).
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from unlearnviz.data.batching import encode_pair
from unlearnviz.model.loading import LoadedModel
from unlearnviz.model.readout import base_model, hidden_final, unembed
from unlearnviz.model.routing import RoutingPlan, plan_content_hash

Progress = Callable[[int, int, str], None]


def _token_logprobs(lm: LoadedModel, hidden: torch.Tensor, rows: list[int], cols: list[int],
                    targets: list[int]) -> list[float]:
    """log p(targets[k]) from the final hidden state at (rows[k], cols[k]): the unembedding runs
    only at those positions."""
    picked = hidden[torch.tensor(rows, device=hidden.device), torch.tensor(cols, device=hidden.device)]
    logp = F.log_softmax(unembed(lm, picked), dim=-1)
    return logp.gather(1, torch.tensor(targets, device=logp.device)[:, None])[:, 0].tolist()


class ScoreCache:
    """Bounded memo of continuation scores per (model, edit content, context, continuation).

    Off by default (``max_entries`` 0), so the CLI and the benchmarks measure real work; the
    dashboard turns it on: its evaluation, residual-knowledge probes and sweeps score the same
    (stem, choice) pairs under the same plans again and again. The weights never change
    (frozen, fingerprinted) and plans are keyed by content, so a hit is the same number."""

    def __init__(self, max_entries: int = 0):
        self.max_entries = max_entries
        self._store: OrderedDict[tuple, tuple[float, int]] = OrderedDict()
        self._lock = threading.Lock()

    def scores(self, lm: LoadedModel, pairs: Sequence[tuple[str, str]], plan: RoutingPlan | None,
               compute: Callable[[list[tuple[str, str]]], list[tuple[float, int]]]) -> list[tuple[float, int]]:
        prefix = (id(lm.model), lm.fingerprint(refresh=False), plan_content_hash(plan))
        keys = [(*prefix, ctx, cont) for ctx, cont in pairs]
        with self._lock:
            found = {k: self._store[k] for k in keys if k in self._store}
        todo = list(dict.fromkeys(k for k in keys if k not in found))
        if todo:
            fresh = compute([(k[-2], k[-1]) for k in todo])
            with self._lock:
                for k, v in zip(todo, fresh):
                    found[k] = self._store[k] = v
                while len(self._store) > self.max_entries:
                    self._store.popitem(last=False)
        return [found[k] for k in keys]

    def clear(self) -> None:
        with self._lock:
            self._store.clear()


SCORE_CACHE = ScoreCache()


@torch.no_grad()
def continuation_logprobs(
    lm: LoadedModel,
    pairs: Sequence[tuple[str, str]],
    plan: RoutingPlan | None = None,
    batch_size: int = 32,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[tuple[float, int]]:
    """(sum log p(continuation | context), number of continuation tokens) for each pair.

    Pairs that share a context (the four choices of an item, the four letters of a lettered
    prompt) share one forward of it: contexts of equal length run as one unpadded batch with
    the KV cache kept; the first token of every continuation is read from the context's last
    position, and only the remaining continuation tokens run again, on the cache. This does
    a third to a quarter of the token work of scoring each pair whole (B5 in bench/).
    """
    if plan is not None and plan.rows is not None:  # row-routed plans need one row per pair
        return continuation_logprobs_flat(lm, pairs, plan, batch_size, progress, should_stop)
    if SCORE_CACHE.max_entries:
        return SCORE_CACHE.scores(lm, pairs, plan, lambda todo: _shared_context_logprobs(
            lm, todo, plan, batch_size, progress, should_stop))
    return _shared_context_logprobs(lm, pairs, plan, batch_size, progress, should_stop)


@torch.no_grad()
def _shared_context_logprobs(lm: LoadedModel, pairs: Sequence[tuple[str, str]], plan: RoutingPlan | None,
                             batch_size: int, progress: Progress | None,
                             should_stop: Callable[[], bool] | None) -> list[tuple[float, int]]:
    encoded = [encode_pair(lm.tokenizer, c, x) for c, x in pairs]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, _) in enumerate(encoded):
        groups.setdefault(tuple(ctx), []).append(i)
    by_length: dict[int, list[tuple[int, ...]]] = {}
    for ctx in groups:
        by_length.setdefault(len(ctx), []).append(ctx)
    chunks = [ctxs[s:s + batch_size] for _, ctxs in sorted(by_length.items(), reverse=True)
              for s in range(0, len(ctxs), batch_size)]
    results: list[tuple[float, int]] = [(0.0, 0)] * len(encoded)
    pad = lm.tokenizer.pad_token_id or 0
    device = lm.device
    base = base_model(lm)
    tail_plan = None if plan is None else dataclasses.replace(plan, spare_first=False)
    done = 0
    for chunk in chunks:
        if should_stop and should_stop():
            raise InterruptedError("evaluation cancelled")
        members = [(row, i) for row, ctx in enumerate(chunk) for i in groups[ctx]]
        if len(chunk[0]) == 1 and plan is not None and plan.spare_first:
            # the router spares position 0 only in a multi-token forward: score these whole
            flat = continuation_logprobs_flat(lm, [pairs[i] for _, i in members], plan, batch_size)
            for (_, i), res in zip(members, flat):
                results[i] = res
            done += len(members)
            continue
        ids = torch.tensor(chunk, dtype=torch.long, device=device)
        with lm.router.apply(plan):
            out = base(input_ids=ids, use_cache=True)
        first_logp = F.log_softmax(unembed(lm, out.last_hidden_state[:, -1]), dim=-1)
        token_lps: dict[int, list[float]] = {}
        for row, i in members:
            token_lps[i] = [float(first_logp[row, encoded[i][1][0]])]
        rest = [(row, i) for row, i in members if len(encoded[i][1]) > 1]
        if rest:
            cache = out.past_key_values
            cache.reorder_cache(torch.tensor([row for row, _ in rest], device=device))
            width = max(len(encoded[i][1]) - 1 for _, i in rest)
            tail = torch.full((len(rest), width), pad, dtype=torch.long)
            for r, (_, i) in enumerate(rest):
                cont = encoded[i][1][:-1]
                tail[r, : len(cont)] = torch.tensor(cont)
            n_ctx = ids.shape[1]
            positions = torch.arange(n_ctx, n_ctx + width, device=device).expand(len(rest), -1)
            with lm.router.apply(tail_plan):  # right padding: causal attention never sees it
                hidden = base(input_ids=tail.to(device), past_key_values=cache, position_ids=positions,
                              use_cache=True).last_hidden_state
            rows, cols, targets, owner = [], [], [], []
            for r, (_, i) in enumerate(rest):
                cont = encoded[i][1]
                for j in range(1, len(cont)):
                    rows.append(r)
                    cols.append(j - 1)
                    targets.append(cont[j])
                    owner.append(i)
            for o, v in zip(owner, _token_logprobs(lm, hidden, rows, cols, targets)):
                token_lps[o].append(v)
        for i, vals in token_lps.items():
            results[i] = (float(sum(vals)), len(vals))
        done += len(members)
        if progress:
            progress(done, len(encoded), "scoring")
    return results


@torch.no_grad()
def continuation_logprobs_flat(
    lm: LoadedModel,
    pairs: Sequence[tuple[str, str]],
    plan: RoutingPlan | None = None,
    batch_size: int = 32,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[tuple[float, int]]:
    """The reference scorer: each pair as one right-padded row (no sharing). Used for plans
    that route rows, and in the test and benchmark that check the shared scorer against it."""
    encoded = [encode_pair(lm.tokenizer, c, x) for c, x in pairs]
    order = sorted(range(len(encoded)), key=lambda i: -(len(encoded[i][0]) + len(encoded[i][1])))
    results: list[tuple[float, int]] = [(0.0, 0)] * len(encoded)
    pad = lm.tokenizer.pad_token_id or 0
    device = lm.device
    for start in range(0, len(order), batch_size):
        if should_stop and should_stop():
            raise InterruptedError("evaluation cancelled")
        idx = order[start:start + batch_size]
        seqs = [encoded[i][0] + encoded[i][1] for i in idx]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        rows, cols, targets, owner = [], [], [], []
        for r, (i, s) in enumerate(zip(idx, seqs)):
            ids[r, : len(s)] = torch.tensor(s)
            mask[r, : len(s)] = 1
            n_ctx, n_cont = len(encoded[i][0]), len(encoded[i][1])
            for j in range(n_cont):
                rows.append(r)
                cols.append(n_ctx + j - 1)  # the position that predicts token n_ctx + j
                targets.append(s[n_ctx + j])
                owner.append(i)
        with lm.router.apply(plan):
            hidden = hidden_final(lm, ids.to(device), mask.to(device))
        sums: dict[int, list[float]] = {}
        for o, v in zip(owner, _token_logprobs(lm, hidden, rows, cols, targets)):
            sums.setdefault(o, []).append(v)
        for i in idx:
            vals = sums.get(i, [])
            results[i] = (float(sum(vals)), len(vals))
        if progress:
            progress(min(start + batch_size, len(order)), len(order), "scoring")
    return results


@torch.no_grad()
def perplexity(lm: LoadedModel, texts: Sequence[str], plan: RoutingPlan | None = None,
               batch_size: int = 16, max_tokens: int = 256) -> float:
    """Token-level perplexity of ``texts`` (every token after the first is predicted)."""
    total_nll, total_tokens = 0.0, 0
    pad = lm.tokenizer.pad_token_id or 0
    enc = [lm.tokenizer(t).input_ids[:max_tokens] for t in texts]
    enc = [e for e in enc if len(e) >= 2]
    enc.sort(key=len, reverse=True)
    for start in range(0, len(enc), batch_size):
        chunk = enc[start:start + batch_size]
        width = max(len(e) for e in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, e in enumerate(chunk):
            ids[r, : len(e)] = torch.tensor(e)
            mask[r, : len(e)] = 1
        with lm.router.apply(plan):
            hidden = hidden_final(lm, ids.to(lm.device), mask.to(lm.device))
        sel = mask[:, 1:].bool()
        h = hidden[:, :-1][sel.to(hidden.device)]
        logp = F.log_softmax(unembed(lm, h), dim=-1)
        tgt = ids[:, 1:][sel].to(logp.device)
        total_nll -= float(logp.gather(1, tgt[:, None]).sum())
        total_tokens += int(sel.sum())
    if total_tokens == 0:
        return float("nan")
    return float(torch.exp(torch.tensor(total_nll / total_tokens)))
