"""MRP (Wu et al., arXiv 2508.15449): remove a forget-specific subspace from the residual stream.

At each site (block output) the stream becomes h ← h − h QᵀQ, with Q the orthonormalised rows of
every direction added so far (earlier requests' rows are frozen: continual unlearning adds
directions). Initialisation: the top-k generalised eigenvectors of Σ_f v = λ(Σ_r + δI)v over
non-pad tokens at the *same* site the projection acts on (the official code,
github.com/ChengcanWu/MRP, reads the block input and keeps retain directions; not copied).
Training (optional) moves the new rows W with a bounded forget objective (NPO, default) or capped
gradient ascent, plus a retain term (NON-PAPER default: KL to the original's next-token
distribution; or the paper's retain NLL), with the loss computed only from the first site on
(cached inputs) and the unembedding only at the supervised positions.

Placement "site" (default, the paper's) projects the chosen blocks' outputs. Placement "stream"
(NON-PAPER) instead removes the subspace from every write into the residual stream from the
embedding up to the deepest site (routing.StreamProjection), which folds exactly into a standard
checkpoint. With several sites it uses one basis, the orthonormalised union of every site's rows,
over blocks 0..max(site), and μ from the deepest site.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from unlearnviz.data.batching import Batch, subject_spans, tokenize_texts
from unlearnviz.errors import UserError
from unlearnviz.methods.base import MAX_TOKENS_DOC, Preset, Ticker, calibrated_source, hp, register, resolve_window
from unlearnviz.methods.edit import Edit
from unlearnviz.methods.engine import ByteCache, LazyBatches, WindowEngine, adam, optimizer_step, step_order
from unlearnviz.model.loading import LoadedModel
from unlearnviz.model.readout import final_norm, readout_plan, unembed
from unlearnviz.model.routing import RoutingPlan, StopForward, StreamProjection, orthonormal_rows

# The KL retain term's references (the original's last-block states at the retain loss positions)
# are kept up to this many bytes; past it they are recomputed (one window forward) when read.
KL_REFERENCE_BYTES = 512 * 1024**2


@dataclass
class MRPParams:
    layers: list = hp([-1], "Sites: blocks whose residual output is projected; -1 = auto, two thirds of the depth (20 of 30 on the default model: at a quarter of the depth the forget-specific directions removed almost nothing).", "2 random layers of 32", min=-1)
    k: int = hp(8, "New directions per site for this request (16–32 forgot more on the default model and cost "
                "40 points of retain accuracy).", "2", min=1, max=4096)
    ridge: float = hp(0.05, "δ = ridge × mean eigenvalue of Σ_r, regularising Σ_r + δI.", "n/a", min=0.0, max=100.0)
    steps: int = hp(50, "Training steps after the init (0 = init only). On the low-entanglement set 50, 70 and 100 "
                    "steps forgot to 23.1%, 26.2% and 26.2% with 98.7% retain each.", "2 epochs of 5000 rows", min=0, max=5000)
    objective: str = hp("npo", "Forget term: 'npo' (bounded) or 'ga' (gradient ascent, capped).", "ga", choices=("npo", "ga"))
    beta: float = hp(0.1, "NPO β.", "n/a (NPO: 0.1)", min=1e-4, max=10.0)
    ga_cap: float = hp(15.0, "GA: forget CE above this (nats/token) gives no more gradient.", "uncapped", min=0.0, max=100.0)
    retain_loss: str = hp("kl", "Retain term: 'nll' (the paper: cross-entropy of the retain texts) or 'kl' "
                          "(NON-PAPER, the default: KL(original ‖ edited) of the next-token distribution on retain "
                          "tokens, which holds the model's behaviour instead of fitting the retain texts; on the "
                          "low-entanglement set nll pulled held-out perplexity to 0.3–0.5× and kept 91–93% of "
                          "retain, kl kept 97–99% at +2–8%).", "nll", choices=("nll", "kl"))
    retain_weight: float = hp(50.0, "Weight of the retain term (nll at 1.2 and 5 let the trained directions raise "
                              "held-out perplexity 3–13× on the default model; kl at 20 kept 96.7% of low-entanglement "
                              "retain, at 50 98.7%, at 100 99.3% with a little less forgetting).", "1.2",
                              min=0.0, max=1e4)
    lr: float = hp(1e-2, "Adam learning rate on the direction rows W.", "2e-4 (SGD)", min=1e-7, max=1.0)
    batch_size: int = hp(8, "Texts per forget and per retain batch.", "5", min=1, max=256)
    max_tokens: int = hp(-1, MAX_TOKENS_DOC, "160", min=-1, max=4096)
    init_batches: int = hp(512, "The init's statistics read at most this many forget and this many retain batches, "
                           "the first ones (as the RMU reference code's max_num_batches), so its time is bounded "
                           "whatever the corpus size (its memory is O(d²) anyway). Every built-in set has at most "
                           "296 texts a side, so it reads them all, at any batch size.", "all rows", min=1,
                           max=1_000_000)
    centered: bool = hp(True, "NON-PAPER: affine projection h − (h − μ)QᵀQ with μ the retain mean at the site: removes "
                        "the variation along Q but keeps its mean (the linear form also deletes large constant offsets, "
                        "which wrecked the model at deep sites).", "no (linear h − hQᵀQ)")
    spare_first: bool = hp(True, "NON-PAPER: leave sequence position 0 unprojected (an attention sink with a residual "
                           "norm hundreds of times the others; projecting it wrecks the model).", "no")
    placement: str = hp("site", "Where the subspace is removed. 'site': from the chosen blocks' outputs (the paper's). "
                         "'stream' (NON-PAPER): from the embedding and from every attention and MLP output "
                         "projection of blocks 0..deepest site, so the stream up to the site is the centred "
                         "projection of itself; one basis (union of the sites' rows), μ from the deepest site. "
                         "Folds exactly into an exported checkpoint; needs spare_first=false.",
                         "site (block output)", choices=("site", "stream"))
    forget_tokens: str = hp("spans", "Forget-loss tokens: 'from_subject', 'spans' (subject and answer tokens "
                            "only), 'answers' (the entity tokens after a text's first entity: the ones the fact "
                            "makes predictable; the init's statistics still use every entity token) or 'all' "
                            "(every token but position 0).", "answer letter only",
                            choices=("from_subject", "spans", "answers", "all"))
    seed: int = hp(0, "Seed for the batch order.", "")


class Moments:
    """Count, sum and Gram matrix of a set of token vectors, accumulated batch by batch: the
    sufficient statistics of its mean and covariance, O(d²) memory whatever the token count.

    Kept in float64 on the vectors' device (on the CPU for a device without float64, MPS), and
    around a shift (the first batch's mean) so that centring a Gram matrix stays exact where the
    mean is large against the spread (residual streams carry large constant offsets): the
    covariance equals the one of the concatenated float32 activations it replaces to float32
    rounding, and the rounding no longer grows with the corpus. The Gram products cost 2d² FLOPs a
    token, against about twice the parameter count for the forward pass that yields the vectors."""

    def __init__(self) -> None:
        self.n = 0
        self.shift: torch.Tensor | None = None
        self.sum: torch.Tensor | None = None
        self.gram: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        """Add token vectors x [n, d]."""
        if not len(x):
            return
        dev = x.device if x.device.type != "mps" else torch.device("cpu")
        x = x.detach().to(device=dev, dtype=torch.float64)
        if self.shift is None:
            self.shift = x.mean(0)
            self.sum = torch.zeros_like(self.shift)
            self.gram = torch.zeros((x.shape[1], x.shape[1]), dtype=torch.float64, device=dev)
        y = x - self.shift
        self.n += len(y)
        self.sum += y.sum(0)
        self.gram += y.T @ y

    def mean(self) -> torch.Tensor:
        return self.shift + self.sum / self.n

    def covariance(self, about: torch.Tensor) -> torch.Tensor:
        """Σ (x − about)(x − about)ᵀ / (n − 1): the sample covariance when ``about`` is the mean."""
        c = about.to(self.shift) - self.shift
        sc = torch.outer(self.sum, c)
        return (self.gram - sc - sc.T + self.n * torch.outer(c, c)) / max(1, self.n - 1)


def generalized_top(forget: Moments, retain: Moments, k: int, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k v of Σ_f v = λ(Σ_r + δI)v, both covariances centred at the retain mean: orthonormalised
    rows [k, d] (float32) and the k eigenvalues, solved in float64.

    The solves (Cholesky, triangular inverse, eigh) run on the CPU whatever the statistics'
    device: MPS has no float64, and the d × d matrices (128 MB at d = 4096) cost far less to
    move than the pass that made them; the results go back to the statistics' device."""
    dev = forget.shift.device
    mu = retain.mean()
    sf, sr = forget.covariance(mu).cpu(), retain.covariance(mu).cpu()
    q, vals = _generalized_top_cpu(sf, sr, k, ridge)
    return q.to(dev), vals.to(dev)


def _generalized_top_cpu(sf: torch.Tensor, sr: torch.Tensor, k: int, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The float64 solve of :func:`generalized_top` on CPU covariances."""
    d = sf.shape[0]
    eye = torch.eye(d, dtype=sf.dtype, device=sf.device)
    delta = ridge * float(torch.diagonal(sr).mean()) + 1e-6
    chol = torch.linalg.cholesky(sr + delta * eye)
    inv = torch.linalg.solve_triangular(chol, eye, upper=False)
    m = inv @ sf @ inv.T
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    order = torch.argsort(vals, descending=True)[:k]
    v = inv.T @ vecs[:, order]  # back to the original space
    return orthonormal_rows(v.T), vals[order]


def _masked_final(lm, hidden: torch.Tensor, b: Batch, readout: RoutingPlan | None = None) -> torch.Tensor:
    """The last block's states at the positions that predict the masked tokens, final norm applied
    (``readout``: a prior edit's changes to it, :func:`unlearnviz.model.readout.readout_plan`)."""
    mask = b.loss_mask.to(hidden.device)[:, 1:]
    return final_norm(lm, hidden[:, :-1][mask], readout)


def _seq_logprob(lm, hidden: torch.Tensor, b: Batch,
                 readout: RoutingPlan | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence summed log-prob of the masked tokens, and the token count, from the last
    block's output (final norm and unembedding applied only at the needed positions)."""
    mask = b.loss_mask.to(hidden.device)[:, 1:]
    logp = F.log_softmax(unembed(lm, _masked_final(lm, hidden, b, readout), readout), dim=-1)
    tgt = b.input_ids.to(hidden.device)[:, 1:][mask]
    tok = logp.gather(1, tgt[:, None])[:, 0]
    seq_id = torch.arange(mask.shape[0], device=hidden.device)[:, None].expand_as(mask)[mask]
    sums = torch.zeros(mask.shape[0], device=hidden.device).index_add(0, seq_id, tok)
    return sums, mask.sum(1)


def _union_basis(q_parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    """Orthonormal basis of every frozen direction that acts at a site (None if there is none),
    projected out of the new statistics so a request only adds directions."""
    parts = [t for t in q_parts if t is not None and len(t)]
    return orthonormal_rows(torch.cat(parts)) if parts else None


# The paper's result tables and settings were not available; its code release's are, and those that
# map onto this implementation make a preset by name only (never automatic: the rest do not map).
CODE_RELEASE = Preset(
    name="code-release",
    hparams={"k": 2, "objective": "ga", "ga_cap": 100.0, "retain_loss": "nll", "retain_weight": 1.2,
             "batch_size": 5, "max_tokens": 160, "centered": False, "spare_first": False},
    source="Wu et al. 2025 (MRP, arXiv 2508.15449), code release github.com/ChengcanWu/MRP (MRP_code/train.py, "
           "commit 207b46d): dimension 2, loss −CE(forget) + 1.2·CE(retain) (retain_rate), batch 5, "
           "max_token 160, linear projection of every position; on Llama-2-7b-chat",
    note="Left at this project's defaults: the sites (the release samples 2 random layers of 32), lr and steps "
         "(it runs plain SGD at 2e-4 for 2 epochs of 5000 ScienceQA rows; this trains with Adam), the init (its "
         "bugs are not copied: this module's docstring) and the tokens (it supervises the answer letter of "
         "chat-formatted MCQs). GA is uncapped there (ga_cap 100 here). On the default model nll at 1.2 raised "
         "held-out perplexity 3-13x (retain_weight's doc).")

# Calibrated presets, as in rmu.py (the lab model: scripts/calibrate_presets.py; the default model: B10).
LAB_CALIBRATED = Preset(name="lab-calibrated", hparams={"layers": [1], "k": 11, "retain_weight": 37.5098, "steps": 46},
                        source=calibrated_source("the lab model (synthetic world, entanglement 0.1, seed 0)", "synthetic:0.1", "2026-12-02", "scripts/calibrate_presets.py --trials 16; per level in docs/lab_presets.md"),
                        note="By name only (`--preset lab-calibrated`): the closest of 16 calibration trials; it misses the project's bars at every entanglement level of the lab world (docs/lab_presets.md), so it is not applied automatically.")
PRESETS = (CODE_RELEASE, LAB_CALIBRATED)


@register("mrp", MRPParams, "Metamorphosis Representation Projection", plain_name="MRP",
          description="MRP (Metamorphosis Representation Projection) learns a small set of directions in the "
                      "model's internal state that carry the forget knowledge and projects them out, at a few "
                      "layers.", presets=PRESETS)
def fit_mrp(lm, data, hparams: MRPParams, progress=None, should_stop=None, prior=None, naive=False):
    req = _request(lm, data, hparams, prior, naive)
    fit = _fit_stream if hparams.placement == "stream" else _fit_site
    return fit(req, progress, should_stop)


@dataclass
class _Request:
    """One MRP request: its checked sites, batches, the prior's frozen parts, and its start time.

    ``offsets`` starts as the prior's and gains this request's retain means site by site (a later
    site's statistics are taken with the earlier sites' centred projections applied)."""

    lm: LoadedModel
    hparams: MRPParams
    sites: list[int]
    fb: list[Batch]  # forget batches: the forget term's mask
    fb_stats: list[Batch]  # the same texts, masked for the init's statistics
    rb: list[Batch]
    prior: RoutingPlan | None
    naive: bool
    t0: float
    prior_proj: dict[int, torch.Tensor]
    offsets: dict[int, torch.Tensor]
    prior_stream: StreamProjection | None
    prior_deltas: dict[int, torch.Tensor]
    spare: bool
    window: dict  # max_tokens as resolved, and the truncation's share and warnings (resolve_window)

    @property
    def nf(self) -> int:
        return len(self.fb)

    def prior_changes(self) -> dict:
        """The prior's parameter deltas and LoRA factors (an imported checkpoint's), which every
        plan of this fit carries as they are."""
        p = self.prior
        return {} if p is None else {"weights": dict(p.weights), "lora": dict(p.lora)}

    @property
    def last(self) -> int:
        return self.lm.n_layers - 1


def _request(lm, data, hparams: MRPParams, prior: RoutingPlan | None, naive: bool) -> _Request:
    """Check the sites and the placement, and tokenise the training texts."""
    t0 = time.perf_counter()
    sites = sorted({int(x) if int(x) != -1 else max(1, min(lm.n_layers - 2, round(2 * lm.n_layers / 3))) for x in hparams.layers})
    hparams.layers = sites
    if not sites:
        raise UserError("MRP needs at least one site layer")
    for s in sites:
        lm.adapter.check_layer(s, "MRP site layer")
    if hparams.k >= lm.hidden_size:
        raise UserError(f"k={hparams.k} must be smaller than the hidden size {lm.hidden_size}")
    stream_mode = hparams.placement == "stream"
    if stream_mode:
        if hparams.spare_first:
            raise UserError("MRP placement=stream cannot spare position 0 (spare_first=true): a "
                            "position-dependent projection cannot be folded into the weights; set spare_first=false")
        why = lm.adapter.stream_unsupported()
        if why:
            raise UserError(f"MRP placement=stream is not available for this model: {why}; use placement=site")
    window = resolve_window(lm, data, hparams)
    pad = lm.tokenizer.pad_token_id or 0
    spans = subject_spans(data) if hparams.forget_tokens != "all" else None
    # batches are tokenised when first read (a fit reads the ones its statistics and steps use)
    fb = LazyBatches(data.forget_texts, lambda texts: tokenize_texts(
        lm, texts, hparams.max_tokens, spans, spans_only=hparams.forget_tokens == "spans",
        later_spans_only=hparams.forget_tokens == "answers"), hparams.batch_size, pad)
    # the init's statistics: every entity token (same texts and batches, so the cached inputs align)
    fb_stats = fb if hparams.forget_tokens != "answers" else LazyBatches(data.forget_texts, lambda texts: (
        tokenize_texts(lm, texts, hparams.max_tokens, spans, spans_only=True)), hparams.batch_size, pad)
    rb = LazyBatches(data.retain_train_texts, lambda texts: tokenize_texts(lm, texts, hparams.max_tokens),
                     hparams.batch_size, pad)
    return _Request(
        lm=lm, hparams=hparams, sites=sites, fb=fb, fb_stats=fb_stats, rb=rb, prior=prior, naive=naive, t0=t0,
        prior_proj=dict(prior.projections) if prior is not None else {},
        offsets=dict(prior.offsets) if prior is not None else {},
        prior_stream=prior.stream if prior is not None else None,
        prior_deltas=dict(prior.deltas) if prior is not None else {},
        spare=(hparams.spare_first and not stream_mode) or bool(prior is not None and prior.spare_first),
        window=window)


def _fit_site(req: _Request, progress, should_stop) -> Edit:
    """Placement "site": each site's block output is projected by its own rows (the paper's)."""
    hparams, sites = req.hparams, req.sites
    # init, site by site, with the earlier sites' new rows applied
    rows: dict[int, torch.Tensor] = {}
    eigvals = {}
    for s in sites:
        base = dataclasses.replace(_site_plan(req, rows), deltas=req.prior_deltas)
        prior_q = _union_basis([req.prior_proj.get(s)])
        rows[s], eigvals[s], retain_mean = _init_site(req, s, base, prior_q)
        if hparams.centered and s not in req.offsets:
            req.offsets[s] = retain_mean
    init_s = time.perf_counter() - req.t0
    history = []
    if hparams.steps > 0:
        history, rows = _train(req, rows, lambda w: _site_plan(req, w), sites[0], None, progress, should_stop)
    projections = {}
    for s, q in rows.items():
        if s in req.prior_proj:  # keep only this request's part, orthogonal to the frozen rows
            q = orthonormal_rows(q - (q @ req.prior_proj[s].T) @ req.prior_proj[s])
        projections[s] = q.detach()
    meta = _meta(req, history, init_s, eigvals, {s: int(q.shape[0]) for s, q in projections.items()}, req.spare)
    own_offsets = {s: req.offsets[s] for s in projections if s in req.offsets}
    return Edit(method="mrp", hparams=asdict(hparams), projections=projections, offsets=own_offsets, meta=meta)


def _fit_stream(req: _Request, progress, should_stop) -> Edit:
    """Placement "stream" (NON-PAPER): one basis, the union of every site's rows, removed from every
    write into the residual stream up to the deepest site; μ from the deepest site."""
    hparams, sites, prior_stream = req.hparams, req.sites, req.prior_stream
    # μ: an earlier stream's (the stacked plan keeps the first one), else the retain mean at the
    # deepest site, else none (linear)
    mu = prior_stream.offset if prior_stream is not None else None
    # init: every site under the prior alone (their union is the basis)
    base = dataclasses.replace(_stream_plan(req, {}, mu), deltas=req.prior_deltas)
    rows: dict[int, torch.Tensor] = {}
    eigvals = {}
    for s in sites:
        prior_q = _union_basis([req.prior_proj.get(s), prior_stream.q if prior_stream else None])
        rows[s], eigvals[s], retain_mean = _init_site(req, s, base, prior_q)
        if hparams.centered and s == sites[-1] and mu is None:
            mu = retain_mean
    init_s = time.perf_counter() - req.t0
    history = []
    if hparams.steps > 0:
        # every block from 0 reads the projected stream, so the window starts at block 0 (its
        # cached input is the raw embedding; the block-0 hook projects it each step)
        history, rows = _train(req, rows, lambda w: _stream_plan(req, w, mu), 0, None, progress, should_stop)
    q = orthonormal_rows(torch.cat(list(rows.values())))
    if prior_stream is not None:  # keep only this request's part, orthogonal to the frozen rows
        pq = prior_stream.q.to(q.device)
        q = orthonormal_rows(q - (q @ pq.T) @ pq)
    stream = StreamProjection(q=q.detach(), offset=mu, last=sites[-1])
    meta = _meta(req, history, init_s, eigvals, {sites[-1]: int(q.shape[0])}, False)
    return Edit(method="mrp", hparams=asdict(hparams), stream=stream, meta=meta)


def _site_plan(req: _Request, rows: dict[int, torch.Tensor]) -> RoutingPlan:
    """The prior's projections plus ``rows`` at their sites (prior and new rows orthonormalised
    together per site), with the request's offsets."""
    q = dict(req.prior_proj)
    for s, w in rows.items():
        q[s] = orthonormal_rows(torch.cat([req.prior_proj[s], w])) if s in req.prior_proj else orthonormal_rows(w)
    return RoutingPlan(projections=q, offsets=dict(req.offsets), spare_first=req.spare, stream=req.prior_stream,
                       **req.prior_changes())


def _stream_plan(req: _Request, rows: dict[int, torch.Tensor], mu: torch.Tensor | None) -> RoutingPlan:
    """The prior's projections, and one stream projection: the prior stream's rows plus ``rows``
    (all sites together), down to the deepest of their sites."""
    prior_stream = req.prior_stream
    stream = prior_stream
    if rows:
        frozen = [prior_stream.q] if prior_stream is not None else []
        stream = StreamProjection(q=orthonormal_rows(torch.cat([*frozen, *rows.values()])), offset=mu,
                                  last=max([*rows, *([prior_stream.last] if prior_stream else [])]))
    return RoutingPlan(projections=dict(req.prior_proj), offsets=dict(req.offsets), spare_first=req.spare,
                       stream=stream, **req.prior_changes())


@torch.no_grad()
def _site_output(lm: LoadedModel, s: int, b: Batch, plan: RoutingPlan) -> torch.Tensor:
    """Block ``s``'s (edited) output for one batch under ``plan``, from a forward that stops there."""
    store: dict[str, torch.Tensor] = {}
    full = plan.merged(RoutingPlan(capture={s: lambda h: store.__setitem__("h", h)}, stop_after=s))
    dev = lm.device
    with lm.router.apply(full):
        try:
            lm.model(input_ids=b.input_ids.to(dev), attention_mask=b.attention_mask.to(dev), use_cache=False)
        except StopForward:
            pass
    return store["h"]


def _init_site(req: _Request, s: int, base: RoutingPlan, prior_q: torch.Tensor | None):
    """The site's new rows (top-k generalised eigenvectors, orthogonal to ``prior_q``), their
    eigenvalues, and the retain mean at the site (which centres the projection).

    One streaming pass over the first ``init_batches`` forget and retain batches: each batch's
    site output under ``base`` is computed, its masked tokens
    (earlier directions projected out) are added to the forget or retain :class:`Moments`, and
    it is dropped, so memory is O(d²), not O(tokens·d)."""
    if s >= req.last:
        raise UserError("an MRP site must be below the last block")
    forget, retain = Moments(), Moments()
    cap = req.hparams.init_batches
    for batches, acc in ((req.fb_stats, forget), (req.rb, retain)):
        for i in range(min(len(batches), cap)):  # the first ``init_batches``: only those are tokenised
            b = batches[i]
            h = _site_output(req.lm, s, b, base)
            x = h.float()[b.loss_mask.to(h.device)]
            if prior_q is not None:
                x = x - (x @ prior_q.T) @ prior_q
            acc.add(x)
    if forget.n < 2 or retain.n < 2:
        raise UserError("MRP needs at least two forget and two retain tokens")
    q, vals = generalized_top(forget, retain, req.hparams.k, req.hparams.ridge)
    q = q.to(req.lm.device)
    if prior_q is not None:
        q = orthonormal_rows(q - (q @ prior_q.T) @ prior_q)
    return q, vals.tolist(), retain.mean().float().to(req.lm.device)


def _train(req: _Request, rows: dict[int, torch.Tensor], plan_of: Callable[[dict], RoutingPlan], start: int, engine: WindowEngine | None,
           progress, should_stop) -> tuple[list[dict], dict[int, torch.Tensor]]:
    """Train the new rows from block ``start`` on (``plan_of(rows)``: the plan they make); returns
    the loss history and the trained rows, orthonormalised."""
    lm, hparams, fb, rb, nf = req.lm, req.hparams, req.fb, req.rb, req.nf
    if engine is None:
        # cached inputs to the first trained block come from the frozen stack below it
        engine = WindowEngine(lm, start, req.last, fb + rb, prior=req.prior, naive=req.naive, keep_frozen=False)
    # projections are rebuilt each step from prior + trainable rows
    engine.prior = RoutingPlan(deltas=req.prior_deltas) if req.prior_deltas else None
    weights = {s: torch.nn.Parameter(rows[s].clone()) for s in req.sites}
    opt = adam(list(weights.values()), hparams.lr)
    init_plan = plan_of({})
    readout = readout_plan(req.prior)  # an imported prior may change the final norm and unembedding
    # the references under the init, for the batches the steps read, when first read: the
    # sequence log-probs of forget text, and (kl) the original model's last-block states on
    # retain text (576-d a token), whose next-token distribution is recomputed each step
    ref: dict[int, torch.Tensor] = {}
    # (bounded in bytes, recomputed past the bound: once the steps cover an epoch they are every
    # retain token's, 16 kB a token on a 7B model's shapes)
    ref_r = ByteCache(KL_REFERENCE_BYTES)
    history: list[dict] = []
    ticker = Ticker(hparams.steps, progress, should_stop, "mrp", req.window["warnings"])
    for step, (fi, ri) in enumerate(step_order(nf, len(rb), hparams.steps, hparams.seed), 1):
        with torch.no_grad():
            if fi not in ref:
                ref[fi] = _seq_logprob(lm, engine.output(fi, init_plan), fb[fi], readout)[0]
            original_states = ref_r.get(ri) if hparams.retain_loss == "kl" else None
            if hparams.retain_loss == "kl" and original_states is None:
                original_states = _masked_final(lm, engine.output(nf + ri, init_plan), rb[ri], readout)
                ref_r.put(ri, original_states)
        # positions after a forget batch's last loss token never reach its loss (causal attention)
        need = int(fb[fi].loss_mask.any(0).nonzero().max()) + 1 if fb[fi].loss_mask.any() else 2
        plan = plan_of(weights)
        # one call through the window for both, the forget rows possibly cut after their last
        # loss token; a KL retain term compares with cached outputs, so its rows are never
        # padded (see WindowEngine.output_pair)
        h_f, h_r = engine.output_pair(fi, nf + ri, plan, pad_j=hparams.retain_loss != "kl", need_i=need)
        w = h_f.shape[1]
        lp_f, n_f = _seq_logprob(lm, h_f, Batch(*(t[:, :w] for t in (fb[fi].input_ids, fb[fi].attention_mask,
                                                                     fb[fi].loss_mask))), readout)
        if hparams.objective == "npo":
            ratio = lp_f - ref[fi]
            forget_loss = (2 / hparams.beta) * F.softplus(hparams.beta * ratio).mean()
        else:
            ce = -(lp_f / n_f.clamp(min=1))
            forget_loss = -torch.clamp(ce, max=hparams.ga_cap).mean()
        if hparams.retain_loss == "kl":
            edited = F.log_softmax(unembed(lm, _masked_final(lm, h_r, rb[ri], readout), readout), -1)
            with torch.no_grad():
                original = F.log_softmax(unembed(lm, original_states, readout), -1)
            retain_loss = F.kl_div(edited, original, log_target=True, reduction="batchmean")
        else:
            lp_r, n_r = _seq_logprob(lm, h_r, rb[ri], readout)
            retain_loss = -(lp_r.sum() / n_r.sum().clamp(min=1))
        loss = forget_loss + hparams.retain_weight * retain_loss
        optimizer_step(opt, loss, forget_loss, retain_loss, history, ticker, step)
    return history, {s: orthonormal_rows(w.detach()) for s, w in weights.items()}


def _meta(req: _Request, history: list[dict], init_s: float, eigvals: dict, rank: dict, spare_first: bool) -> dict:
    """The Edit's record: losses, timings, the init's eigenvalues, the rank per site."""
    cap = req.hparams.init_batches
    return {"steps": req.hparams.steps, "losses": history, "init_s": init_s, "eigenvalues": eigvals,
            "init_batches_read": {"forget": min(cap, len(req.fb_stats)), "retain": min(cap, len(req.rb))},
            "placement": req.hparams.placement, "train_s": time.perf_counter() - req.t0 - init_s, "rank": rank,
            "spare_first": spare_first, **req.window}
