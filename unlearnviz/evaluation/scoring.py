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
from unlearnviz.model.adapter import linear_weight
from unlearnviz.model.loading import LoadedModel
from unlearnviz.model.readout import base_model, hidden_final, readout_plan, unembed
from unlearnviz.model.routing import RoutingPlan, plan_content_hash

Progress = Callable[[int, int, str], None]


# padded tokens per row of ``batch_size`` in a scoring batch's default token budget
TOKENS_PER_ROW = 128
# float32 logits held at once where a score or a loss reads the whole vocabulary (16 MiB: 128
# positions at a 32k vocabulary, 32 at Llama-3's 128k); the log-softmax holds as many again
LOGIT_BUDGET = 1 << 22


def logit_chunk(lm: LoadedModel) -> int:
    """Positions per unembedding call under ``LOGIT_BUDGET``."""
    return max(1, LOGIT_BUDGET // int(linear_weight(lm.adapter.unembed).shape[0]))


def _token_logprobs(lm: LoadedModel, hidden: torch.Tensor, rows: list[int], cols: list[int],
                    targets: list[int], plan: RoutingPlan | None = None) -> list[float]:
    """log p(targets[k]) from the final hidden state at (rows[k], cols[k]): the unembedding runs
    only at those positions, ``logit_chunk`` of them at a time (``plan``: the forward's, whose
    rows say which vectors the edited unembedding reads)."""
    picked = hidden[torch.tensor(rows, device=hidden.device), torch.tensor(cols, device=hidden.device)]
    want = torch.tensor(targets, device=hidden.device)
    step, out = logit_chunk(lm), []
    for s in range(0, len(targets), step):
        logp = F.log_softmax(unembed(lm, picked[s:s + step], readout_plan(plan, rows[s:s + step])), dim=-1)
        out += logp.gather(1, want[s:s + step, None].to(logp.device))[:, 0].tolist()
    return out


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
        # the visitor new entries are charged to and the bytes they may still hold here (the
        # dashboard's per-visitor cap, ``session.budget.charged_to``), or None: nobody charged
        self.owner: Callable[[], tuple[object, int] | None] | None = None
        self._by_owner: dict[object, OrderedDict[tuple, None]] = {}  # each visitor's keys, oldest first
        self._owner_of: dict[tuple, object] = {}
        self._sizes: dict[tuple, int] = {}  # each entry's bytes (``entry_bytes``)
        self._total = 0
        self._owner_total: dict[object, int] = {}

    @classmethod
    def entry_bytes(cls, key: tuple) -> int:
        """An entry's bytes: ``ENTRY_BYTES`` for a short stem and choice, plus the characters past
        ``SHORT_CHARS`` (a WMDP question of 2,000 characters is kept in its key, not 320 bytes)."""
        return cls.ENTRY_BYTES + max(0, len(key[-2]) + len(key[-1]) - cls.SHORT_CHARS)

    def scores(self, lm: LoadedModel, pairs: Sequence[tuple[str, str]], plan: RoutingPlan | None,
               compute: Callable[[list[tuple[str, str]]], list[tuple[float, int]]]) -> list[tuple[float, int]]:
        prefix = (id(lm.model), lm.fingerprint(refresh=False), plan_content_hash(plan))
        keys = [(*prefix, ctx, cont) for ctx, cont in pairs]
        with self._lock:
            found = {k: self._store[k] for k in keys if k in self._store}
        todo = list(dict.fromkeys(k for k in keys if k not in found))
        if todo:
            fresh = compute([(k[-2], k[-1]) for k in todo])
            who = self.owner() if self.owner is not None else None
            with self._lock:
                for k, v in zip(todo, fresh):
                    found[k] = self._store[k] = v
                    if k not in self._sizes:
                        self._sizes[k] = size = self.entry_bytes(k)
                        self._total += size
                    if who is not None:
                        self._charge(k, who[0])
                if who is not None:  # the visitor's own oldest scores make room, never another's
                    mine = self._by_owner.get(who[0], {})
                    while mine and self._owner_total.get(who[0], 0) > who[1]:
                        self._drop(next(iter(mine)))
                while len(self._store) > self.max_entries:
                    self._drop(next(iter(self._store)))
        return [found[k] for k in keys]

    def _charge(self, key: tuple, owner) -> None:
        previous = self._owner_of.get(key)
        if previous is not None and previous != owner:
            self._by_owner[previous].pop(key, None)
            if not self._by_owner[previous]:
                del self._by_owner[previous]
            self._owner_total[previous] -= self._sizes[key]
        if previous != owner:
            self._owner_total[owner] = self._owner_total.get(owner, 0) + self._sizes[key]
        self._owner_of[key] = owner
        self._by_owner.setdefault(owner, OrderedDict())[key] = None

    def _drop(self, key: tuple) -> None:
        self._store.pop(key, None)
        size = self._sizes.pop(key, 0)
        self._total -= size
        owner = self._owner_of.pop(key, None)
        if owner is not None:
            self._owner_total[owner] = self._owner_total.get(owner, 0) - size
            if self._owner_total[owner] <= 0:
                del self._owner_total[owner]
            mine = self._by_owner.get(owner)
            if mine is not None:
                mine.pop(key, None)
                if not mine:
                    del self._by_owner[owner]

    def owner_bytes(self, owner) -> int:
        """Approximate bytes of the scores charged to ``owner``."""
        with self._lock:
            return self._owner_total.get(owner, 0)

    ENTRY_BYTES = 320  # a key (two short strings, ids, hashes) and its score: measured ~300 bytes
    SHORT_CHARS = 64  # the stem and choice lengths ENTRY_BYTES covers

    @property
    def bytes(self) -> int:
        """Approximate bytes held (the shared memory budget's figure)."""
        return self._total

    def shrink_to(self, max_bytes: int) -> None:
        with self._lock:
            while self._store and self._total > max_bytes:
                self._drop(next(iter(self._store)))

    def clear(self) -> None:
        with self._lock:
            self._store.clear()
            self._by_owner.clear()
            self._owner_of.clear()
            self._sizes.clear()
            self._owner_total.clear()
            self._total = 0


SCORE_CACHE = ScoreCache()


@torch.no_grad()
def continuation_logprobs(
    lm: LoadedModel,
    pairs: Sequence[tuple[str, str]],
    plan: RoutingPlan | None = None,
    batch_size: int = 32,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    token_budget: int | None = None,
) -> list[tuple[float, int]]:
    """(sum log p(continuation | context), number of continuation tokens) for each pair.

    Pairs that share a context (the four choices of an item, the four letters of a lettered
    prompt) share one forward of it: contexts run right-padded with an attention mask, longest
    first, as many to a batch as ``token_budget`` padded tokens allow (default ``batch_size`` ×
    128), with the KV cache kept; the first token of every continuation is read from its
    context's last real position, and only the remaining continuation tokens run again, on the
    cache, at their own positions. This does a third to a quarter of the token work of scoring
    each pair whole (B5 in bench/), and real MCQ sets, whose stems all differ in length, still
    run in full batches.

    A plan with ``rows`` gives one flag per *pair* (edited or not), so the original and the edited
    model can be scored in one call: each batch row gets its pair's flag.
    """
    flags = _pair_flags(plan, len(pairs))
    if SCORE_CACHE.max_entries and flags is None:
        return SCORE_CACHE.scores(lm, pairs, plan, lambda todo: _shared_context_logprobs(
            lm, todo, plan, None, batch_size, token_budget, progress, should_stop))
    return _shared_context_logprobs(lm, pairs, plan, flags, batch_size, token_budget, progress, should_stop)


def _pair_flags(plan: RoutingPlan | None, n: int) -> list[float] | None:
    """A row-routed plan's mask as one flag per pair (None for a plan that edits every row)."""
    if plan is None or plan.rows is None:
        return None
    rows = plan.rows.detach().float().cpu().reshape(-1)
    if rows.numel() != n:
        raise ValueError(f"a row-routed plan for scoring needs one flag per pair: {rows.numel()} flags "
                         f"for {n} pairs")
    return rows.tolist()


def _with_rows(plan: RoutingPlan | None, flags: list[float] | None, picked: Sequence[int],
               **changes) -> RoutingPlan | None:
    """``plan`` for one batch: its rows are the flags of the pairs in ``picked`` (in row order)."""
    if plan is None:
        return None
    if flags is not None:
        changes["rows"] = torch.tensor([flags[i] for i in picked])
    return dataclasses.replace(plan, **changes) if changes else plan


def attention_window(lm: LoadedModel) -> int | None:
    """The shortest attention span any layer has (a sliding window, chunked attention), or None.

    Right-padded contexts leave a gap of pad columns before their continuation tokens; masks
    hide the pads, but sliding windows are counted in columns, so a batch of mixed lengths is
    only exact while the whole padded row fits in the window."""
    cfg = lm.model.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    spans = [getattr(cfg, name, None) for name in ("sliding_window", "attention_chunk_size")]
    spans = [s for s in spans if isinstance(s, int) and s > 0]
    return min(spans) if spans else None


def pack_contexts(contexts: list[tuple], tails: dict[tuple, tuple[int, int]], budget: int,
          window: int | None) -> list[list[tuple]]:
    """Batches of ``contexts`` (sorted longest first) of at most ``budget`` padded tokens: the
    context forward (rows × the longest context) plus the tail forward (continuation rows × the
    longest tail; ``tails[key]`` = (tail width, tail rows)). A batch mixes context lengths only
    while its padded rows fit ``window``; a context over the budget runs alone."""
    batches: list[list[tuple]] = []
    cur: list[tuple] = []
    width = tail_w = tail_rows = 0
    mixed = False
    for key in contexts:
        w, n = tails[key]
        if cur:
            new_w, new_mixed = max(tail_w, w), mixed or len(key[0]) != width
            cost = (len(cur) + 1) * width + (tail_rows + n) * new_w
            gap_ok = not new_mixed or window is None or width + new_w <= window
            if cost <= budget and gap_ok:
                cur.append(key)
                tail_w, tail_rows, mixed = new_w, tail_rows + n, new_mixed
                continue
            batches.append(cur)
        cur, width, tail_w, tail_rows, mixed = [key], len(key[0]), w, n, False
    if cur:
        batches.append(cur)
    return batches


@torch.no_grad()
def _shared_context_logprobs(lm: LoadedModel, pairs: Sequence[tuple[str, str]], plan: RoutingPlan | None,
                             flags: list[float] | None, batch_size: int, token_budget: int | None,
                             progress: Progress | None,
                             should_stop: Callable[[], bool] | None) -> list[tuple[float, int]]:
    encoded = [encode_pair(lm.tokenizer, c, x) for c, x in pairs]
    # one forward per distinct (context, edited or not); a pair's flag is part of its context
    groups: dict[tuple, list[int]] = {}
    for i, (ctx, _) in enumerate(encoded):
        groups.setdefault((tuple(ctx), None if flags is None else flags[i]), []).append(i)
    tails = {key: (max(len(encoded[i][1]) - 1 for i in members),
                   sum(len(encoded[i][1]) > 1 for i in members)) for key, members in groups.items()}
    contexts = sorted(groups, key=lambda key: -len(key[0]))
    budget = token_budget if token_budget is not None else batch_size * TOKENS_PER_ROW
    batches = pack_contexts(contexts, tails, budget, attention_window(lm))
    results: list[tuple[float, int]] = [(0.0, 0)] * len(encoded)
    pad = lm.tokenizer.pad_token_id or 0
    device = lm.device
    base = base_model(lm)
    done = 0
    for chunk in batches:
        if should_stop and should_stop():
            raise InterruptedError("evaluation cancelled")
        members = [(row, i) for row, key in enumerate(chunk) for i in groups[key]]
        width = len(chunk[0][0])
        if width == 1 and plan is not None and plan.spare_first:
            # the router spares position 0 only in a multi-token forward: score these whole
            picked = [i for _, i in members]
            flat = continuation_logprobs_flat(lm, [pairs[i] for i in picked], _with_rows(plan, flags, picked),
                                              batch_size)
            for i, res in zip(picked, flat):
                results[i] = res
            done += len(members)
            continue
        lengths = torch.tensor([len(key[0]) for key in chunk], device=device)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, key in enumerate(chunk):
            ids[row, : len(key[0])] = torch.tensor(key[0])
            mask[row, : len(key[0])] = 1
        ids, mask = ids.to(device), mask.to(device)
        first_of = [groups[key][0] for key in chunk]  # any member stands for its row's flag
        row_plan = _with_rows(plan, flags, first_of)
        with lm.router.apply(row_plan):
            out = base(input_ids=ids, attention_mask=mask, position_ids=torch.arange(width, device=device)
                       .expand(len(chunk), -1), use_cache=True)
        last = out.last_hidden_state[torch.arange(len(chunk), device=device), lengths - 1]
        token_lps: dict[int, list[float]] = {}
        step = logit_chunk(lm)
        for s in range(0, len(chunk), step):  # each context's last position, unembedded once
            first_logp = F.log_softmax(unembed(lm, last[s:s + step],
                                               readout_plan(row_plan, list(range(s, min(s + step, len(chunk)))))),
                                       dim=-1)
            here = [(row - s, i) for row, i in members if s <= row < s + step]
            picked = first_logp[torch.tensor([r for r, _ in here], device=first_logp.device),
                                torch.tensor([encoded[i][1][0] for _, i in here], device=first_logp.device)]
            for (_, i), v in zip(here, picked.tolist()):
                token_lps[i] = [v]
        rest = [(row, i) for row, i in members if len(encoded[i][1]) > 1]
        if rest:
            cache = out.past_key_values
            ctx_rows = torch.tensor([row for row, _ in rest], device=device)
            cache.reorder_cache(ctx_rows)
            tail_w = max(len(encoded[i][1]) - 1 for _, i in rest)
            tail = torch.full((len(rest), tail_w), pad, dtype=torch.long)
            for r, (_, i) in enumerate(rest):
                cont = encoded[i][1][:-1]
                tail[r, : len(cont)] = torch.tensor(cont)
            # each tail continues its own context: positions from that context's length; the pad
            # columns between stay masked, the tail's own right padding is never seen (causal)
            positions = lengths[ctx_rows][:, None] + torch.arange(tail_w, device=device)
            tail_mask = torch.cat([mask[ctx_rows], torch.ones((len(rest), tail_w), dtype=mask.dtype,
                                                              device=device)], dim=1)
            tail_plan = _with_rows(plan, flags, [i for _, i in rest], spare_first=False)
            with lm.router.apply(tail_plan):
                hidden = base(input_ids=tail.to(device), attention_mask=tail_mask, past_key_values=cache,
                              position_ids=positions, use_cache=True).last_hidden_state
            rows, cols, targets, owner = [], [], [], []
            for r, (_, i) in enumerate(rest):
                cont = encoded[i][1]
                for j in range(1, len(cont)):
                    rows.append(r)
                    cols.append(j - 1)
                    targets.append(cont[j])
                    owner.append(i)
            for o, v in zip(owner, _token_logprobs(lm, hidden, rows, cols, targets, tail_plan)):
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
    """The reference scorer: each pair as one right-padded row (no sharing), ``batch_size`` rows
    at a time. The test and the benchmark check the shared scorer against it. A plan with
    ``rows`` gives one flag per pair, as for :func:`continuation_logprobs`."""
    flags = _pair_flags(plan, len(pairs))
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
        batch_plan = _with_rows(plan, flags, idx)
        with lm.router.apply(batch_plan):
            hidden = hidden_final(lm, ids.to(device), mask.to(device))
        sums: dict[int, list[float]] = {}
        for o, v in zip(owner, _token_logprobs(lm, hidden, rows, cols, targets, batch_plan)):
            sums.setdefault(o, []).append(v)
        for i in idx:
            vals = sums.get(i, [])
            results[i] = (float(sum(vals)), len(vals))
        if progress:
            progress(min(start + batch_size, len(order)), len(order), "scoring")
    return results


@torch.no_grad()
def perplexity(lm: LoadedModel, texts: Sequence[str], plan: RoutingPlan | None = None,
               batch_size: int = 16, max_tokens: int = 256, chunk_positions: int | None = None,
               should_stop: Callable[[], bool] | None = None) -> float:
    """Token-level perplexity of ``texts`` (every token after the first is predicted).

    The loss runs over the predicted positions ``chunk_positions`` at a time (default: as many
    as ``LOGIT_BUDGET`` float32 logits allow), so the peak is one chunk's logits, not
    batch × tokens × vocabulary (twice, with the log-softmax): 1 GiB per batch of 16 × 256 at
    a 32k vocabulary, 4 GiB at Llama-3's 128k."""
    total_nll, total_tokens = 0.0, 0
    pad = lm.tokenizer.pad_token_id or 0
    enc = [lm.tokenizer(t).input_ids[:max_tokens] for t in texts]
    enc = [e for e in enc if len(e) >= 2]
    enc.sort(key=len, reverse=True)
    step = chunk_positions or logit_chunk(lm)
    for start in range(0, len(enc), batch_size):
        if should_stop and should_stop():
            raise InterruptedError("evaluation cancelled")
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
        tgt = ids[:, 1:][sel].to(h.device)
        row_of = torch.arange(len(chunk))[:, None].expand_as(sel)[sel]  # each position's batch row
        for s in range(0, h.shape[0], step):
            logits = unembed(lm, h[s:s + step], readout_plan(plan, row_of[s:s + step]))
            total_nll += float(F.cross_entropy(logits, tgt[s:s + step].to(logits.device), reduction="sum"))
        total_tokens += int(sel.sum())
    if total_tokens == 0:
        return float("nan")
    return float(torch.exp(torch.tensor(total_nll / total_tokens)))
