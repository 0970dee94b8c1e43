"""The shared dashboard's memory budget: accounting, LRU eviction of what nobody holds, refusal
with the figures (unlearnviz/session/budget.py)."""

from __future__ import annotations

import pytest

from unlearnviz.errors import UserError
from unlearnviz.session.budget import CACHE, EDITS, GB, MODEL, Budgets, MemoryBudget, Shrinkable, parse_limits


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        self.t += 1.0
        return self.t


def test_parse_limits_one_number_or_per_device():
    assert parse_limits("24") == {"*": 24 * GB}
    assert parse_limits(1.5) == {"*": int(1.5 * GB)}
    assert parse_limits("cuda:0=70, cpu=100") == {"cuda:0": 70 * GB, "cpu": 100 * GB}
    assert parse_limits(None) == {} and parse_limits(" ") == {}
    for bad in ("x", "cpu=-1", "nan", "inf", "cpu=1,cpu=2", True):
        with pytest.raises(UserError, match="max-memory-gb"):
            parse_limits(bad)


def test_unlimited_budget_accounts_but_never_refuses():
    b = MemoryBudget("cpu")
    b.hold(("m", 1), MODEL, 10 * GB, "model a")
    b.require(10**15, "a huge fit")
    assert b.held_bytes() == 10 * GB and b.free_bytes() is None and b.room_for() is None


def test_lru_eviction_skips_models_in_use_and_refuses_with_figures():
    b = MemoryBudget("cpu", limit=3 * GB, clock=Clock())
    evicted = []
    pinned = {"a": False, "b": True, "c": False}
    for name in "abc":
        b.hold(("m", name), MODEL, GB, f"model {name}", evict=lambda n=name: evicted.append(n),
               in_use=lambda n=name: pinned[n])
    b.touch(("m", "a"))  # a used most recently: c is now the oldest idle model
    b.hold(("m", "d"), MODEL, GB, "model d", evict=lambda: evicted.append("d"))
    assert evicted == ["c"]  # b is older but in use
    assert ("m", "c") not in b and ("m", "d") in b and b.held_bytes(MODEL) == 3 * GB
    pinned.update(a=True, d=True)
    b.hold(("m", "d"), MODEL, GB, "model d", in_use=lambda: True)
    with pytest.raises(UserError) as err:
        b.hold(("m", "e"), MODEL, 2 * GB, "loading model e")
    msg = str(err.value)
    assert "loading model e needs ~2.00 GB" in msg and "3.00 GB" in msg and "0.00 MB free" in msg
    assert ("m", "e") not in b and b.held_bytes() == 3 * GB  # nothing changed by the refusal
    assert evicted == ["c"]


def test_a_refused_rehold_keeps_the_previous_figure():
    b = MemoryBudget("cpu", limit=2 * GB)
    b.hold(("e", 1), EDITS, GB, "edits")
    with pytest.raises(UserError):
        b.hold(("e", 1), EDITS, 3 * GB, "a bigger stack")
    assert b.held_bytes(EDITS) == GB


def test_caches_shrink_before_any_model_is_evicted():
    b = MemoryBudget("cpu", limit=4 * GB, clock=Clock())
    entries = [GB // 2] * 4  # 2 GB of cache in four entries, oldest first

    def shrink_to(n):
        while entries and sum(entries) > n:
            entries.pop(0)

    b.add_cache(Shrinkable("analysis", lambda: sum(entries), shrink_to))
    evicted = []
    b.hold(("m", "a"), MODEL, 2 * GB, "model a", evict=lambda: evicted.append("a"))
    b.require(GB, "a fit")  # 1 GB must come from the cache: two entries go, the model stays
    assert len(entries) == 2 and evicted == []
    b.require(3 * GB, "a larger fit")  # the rest of the cache, then the idle model
    assert entries == [] and evicted == ["a"]
    assert b.held_bytes(CACHE) == 0


def test_room_for_counts_evictable_as_free_and_excludes_the_actions_own():
    b = MemoryBudget("cpu", limit=10 * GB)
    b.hold(("m", "idle"), MODEL, 3 * GB, "idle", evict=lambda: None)
    b.hold(("m", "busy"), MODEL, 2 * GB, "busy", evict=lambda: None, in_use=lambda: True)
    b.hold(("e", 1), EDITS, GB, "edits")
    assert b.room_for() == 7 * GB
    assert b.room_for(protect=(("m", "busy"), ("e", 1))) == 10 * GB


def test_budgets_per_device_with_a_default():
    budgets = Budgets(parse_limits("cuda:1=5,cpu=2"))
    assert budgets.of("cpu").limit == 2 * GB and budgets.of("cuda:1").limit == 5 * GB
    assert budgets.of("cuda:0").limit is None and budgets.of("cuda") is budgets.of("cuda:0")
    budgets.configure(parse_limits("7"))
    assert budgets.of("cpu").limit == 7 * GB and budgets.of("cuda:0").limit == 7 * GB


def test_the_analysis_cache_grows_only_into_the_budget_and_shrinks_for_a_model():
    import torch

    from unlearnviz.analysis.activations import LRUCache

    budgets = Budgets(parse_limits(str(4 * 2**20 / GB)))  # 4 MB
    cpu = budgets.of("cpu")
    cache = LRUCache(max_entries=100, max_bytes=2**30)
    cpu.add_cache(Shrinkable("analysis cache", lambda: cache.bytes, cache.shrink_to))
    cache.allowance = lambda: cpu.cache_allowance("analysis cache")
    for i in range(8):  # 1 MB each: only the 4 newest fit
        cache.get_or_compute(("k", i), lambda: torch.zeros(2**18))
    assert len(cache) == 4 and cache.bytes == 4 * 2**20
    cpu.hold(("m", "a"), MODEL, 3 * 2**20, "a 3 MB model", evict=lambda: None, in_use=lambda: True)
    assert cache.bytes == 2**20 and len(cache) == 1  # three oldest entries gave their room
    cache.get_or_compute(("k", 99), lambda: torch.zeros(2**18))
    assert len(cache) == 1 and ("k", 99) in cache._data  # still one entry's room: the newest kept


# ---- the budget in the model store and the session (real tiny models) -----------------------------


def _store_with_budget(limit_bytes: int):
    from unlearnviz.session import ModelStore

    budgets = Budgets({"*": limit_bytes})
    return ModelStore(budgets=budgets), budgets


def test_a_fourth_model_is_refused_while_three_sessions_hold_theirs(tmp_path):
    from tiny_models import save_tiny

    from unlearnviz.model.loading import LoadOptions
    from unlearnviz.session import Session
    from unlearnviz.session.budget import resident_bytes

    folders = [save_tiny(tmp_path / f"m{i}", seed=i) for i in range(4)]
    probe_store, _ = _store_with_budget(10 * GB)
    one = resident_bytes(probe_store.get(str(folders[0]), LoadOptions(device="cpu")).model)["cpu"]
    store, budgets = _store_with_budget(int(3.5 * one))
    sessions = [Session() for _ in range(4)]
    for holder, f in zip(sessions[:3], folders[:3]):
        holder.load_model(str(f), device="cpu", store=store)
    del holder
    assert len(store.loaded()) == 3 and budgets.of("cpu").held_bytes(MODEL) == 3 * one
    with pytest.raises(UserError, match=r"needs ~.*B; this dashboard's memory budget on cpu is .* free"):
        sessions[3].load_model(str(folders[3]), device="cpu", store=store)
    assert sessions[3].lm is None and len(store.loaded()) == 3  # refused: nothing loaded, nothing evicted
    sessions[0].load_model(str(folders[1]), device="cpu", store=store)  # session 0 lets its model go
    sessions[3].load_model(str(folders[3]), device="cpu", store=store)  # so m0, now idle, is evicted for m3
    loaded = {k[0] for k in store.loaded()}
    assert str(folders[0].resolve()) not in loaded and str(folders[3].resolve()) in loaded
    assert budgets.of("cpu").held_bytes(MODEL) == 3 * one
    import gc

    del sessions[2]  # the only holder of m2 gone (closed, or moved out of memory): m2 is pinned by nobody
    gc.collect()
    newcomer = Session()
    newcomer.load_model(str(folders[0]), device="cpu", store=store)
    loaded = {k[0] for k in store.loaded()}
    assert str(folders[2].resolve()) not in loaded and str(folders[0].resolve()) in loaded and len(loaded) == 3


def test_an_oversized_fit_is_refused_with_the_figures_and_edits_are_accounted(tmp_path, tiny_model_path):
    import unlearnviz.session as session_module
    from unlearnviz.planner import shapes_of
    from unlearnviz.session import Session

    store, budgets = _store_with_budget(10 * GB)
    s = Session()
    old_store, old_budgets = session_module.STORE, session_module.BUDGETS
    session_module.STORE, session_module.BUDGETS = store, budgets  # the session's own accounting reads these
    try:
        s.load_model(str(tiny_model_path), device="cpu", store=store)
        s.load_data("synthetic")
        weights = shapes_of(s.lm.model).weight_bytes
        budgets.configure({"*": weights + 2**20})  # 1 MB beside the weights: no fit of 64-token batches of 32
        with pytest.raises(UserError, match="fit needs ~.*B"):
            s.run_edit("rmu", {"steps": 2, "batch_size": 32}, evaluate=False)
        assert len(s.stack) == 0
        budgets.configure({"*": 10 * GB})
        s.run_edit("rmu", {"steps": 2}, evaluate=False)
        held = budgets.of("cpu").held_bytes(EDITS)
        from unlearnviz.session.planning import edits_bytes

        assert held == edits_bytes(s.stack) > 0
        s.undo()  # kept for redo: still held
        assert budgets.of("cpu").held_bytes(EDITS) == held
        s.limits.max_edits = 1
        with pytest.raises(UserError, match="holds 1 edits .* limit is 1"):
            s.run_edit("rmu", {"steps": 2}, evaluate=False)
    finally:
        session_module.STORE, session_module.BUDGETS = old_store, old_budgets


def test_resident_bytes_counts_each_storage_once_per_device_and_offloaded_weights_nowhere():
    import torch

    from unlearnviz.session.budget import resident_bytes

    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # tied: one storage
    with torch.device("meta"):
        offloaded = torch.nn.Linear(4, 4)  # accelerate's disk offload leaves meta tensors in the module
    model = torch.nn.ModuleList([emb, head, offloaded])
    model.register_buffer("inv_freq", torch.zeros(2))
    assert resident_bytes(model) == {"cpu": 10 * 4 * 4 + 2 * 4}


# ---- the budget through the real server (app.py --max-memory-gb, gradio_client over HTTP) ---------


@pytest.mark.slow
def test_served_fourth_model_is_refused_with_the_figures_and_the_app_keeps_serving(tmp_path):
    """Three visitors each hold a model; a fourth visitor's load of a fourth model does not fit
    under --max-memory-gb (set to 3.5 models' measured resident size) and is refused, in one line
    naming what it needs and what is free; the app keeps serving, nobody's model changes; once a
    visitor moves to another model its old one is idle, and the next load evicts it."""
    from app_server import Server
    from gradio_client import Client
    from tiny_models import save_tiny

    from unlearnviz.model.loading import LoadOptions
    from unlearnviz.session import ModelStore, _weights_on_disk
    from unlearnviz.session.budget import gb, resident_bytes

    models = tmp_path / "models"
    folders = [save_tiny(models / f"m{i}", seed=i) for i in range(4)]
    one = resident_bytes(ModelStore(budgets=Budgets()).get(str(folders[0]), LoadOptions(device="cpu")).model)["cpu"]
    limit = int(3.5 * one)
    srv = Server("--model", str(folders[0]), "--model-dir", str(models), "--max-memory-gb", repr(limit / GB),
                 env={"OMP_NUM_THREADS": "1", "UNLEARNVIZ_TEST_THREADS": "1"})
    try:
        clients = [Client(srv.url, verbose=False) for _ in range(4)]
        for c, f in zip(clients[:3], folders[:3]):
            c.predict(str(f), "float32", "cpu", api_name="/load_model")
        prints = [c.predict(api_name="/fingerprint")["fingerprint"] for c in clients[:3]]
        assert len(set(prints)) == 3  # three different models, one per visitor
        with pytest.raises(Exception) as err:
            clients[3].predict(str(folders[3]), "float32", "cpu", api_name="/load_model")
        msg = str(err.value)
        held = 3 * one
        assert f"loading m3 needs ~{gb(_weights_on_disk(str(folders[3])))}" in msg, msg
        assert f"memory budget on cpu is {gb(parse_limits(repr(limit / GB))['*'])} with {gb(limit - held)} free" in msg
        assert f"models {gb(held)} held" in msg and "--max-memory-gb" in msg
        assert srv.alive()
        chat = clients[1].predict("Hello", 4, 0.0, api_name="/chat")[-1]  # a streamed event still runs
        assert set(chat) >= {"original", "edited"} and chat["original"] == chat["edited"]  # no edit: one model
        assert [c.predict(api_name="/fingerprint")["fingerprint"] for c in clients[:3]] == prints  # nothing evicted
        info = clients[3].predict(str(folders[1]), "float32", "cpu", api_name="/load_model")[-1]  # a loaded one: shared
        assert info["fingerprint"] == prints[1]
        clients[0].predict(str(folders[2]), "float32", "cpu", api_name="/load_model")  # m0 now held by nobody
        info = clients[3].predict(str(folders[3]), "float32", "cpu", api_name="/load_model")[-1]  # m0 evicted for it
        assert info["fingerprint"] not in prints
        assert [c.predict(api_name="/fingerprint")["fingerprint"] for c in clients[1:3]] == prints[1:]
        with pytest.raises(Exception, match="loading m0 needs"):  # m1, m2, m3 held: m0 does not fit back
            clients[0].predict(str(folders[0]), "float32", "cpu", api_name="/load_model")
        assert clients[0].predict(api_name="/fingerprint")["fingerprint"] == prints[2]
    finally:
        srv.stop()


# ---- one visitor's share of the caches (--max-cache-mb-per-session) --------------------------------


def test_one_visitor_cannot_push_anothers_cache_entries_out(tiny_model_path):
    import torch

    from unlearnviz.analysis.activations import LRUCache
    from unlearnviz.evaluation.scoring import ScoreCache
    from unlearnviz.model.loading import LoadOptions
    from unlearnviz.session import ModelStore
    from unlearnviz.session.budget import charge_visitors, charged_to

    lm = ModelStore(budgets=Budgets()).get(str(tiny_model_path), LoadOptions(device="cpu"))  # what scores are keyed by
    mb = 2**20
    analysis, scores = LRUCache(max_entries=100, max_bytes=GB), ScoreCache(max_entries=10**6)
    charge_visitors({"analysis cache": analysis, "score cache": scores})
    with charged_to("b", 4 * mb):
        for i in range(2):
            analysis.get_or_compute(("b", i), lambda: torch.zeros(2**18))  # 1 MB each
    with charged_to("a", 4 * mb):
        for i in range(8):  # a makes 8 MB: only a's 4 newest stay, b's 2 MB are untouched
            analysis.get_or_compute(("a", i), lambda: torch.zeros(2**18))
        assert analysis.get_or_compute(("a", "big"), lambda: torch.zeros(2**21)).numel() == 2**21  # 8 MB > cap: not kept
    assert sorted(k for k in analysis._data) == [("a", 4), ("a", 5), ("a", 6), ("a", 7), ("b", 0), ("b", 1)]
    assert analysis.owner_bytes("a") == 4 * mb and analysis.owner_bytes("b") == 2 * mb
    with charged_to("b", 4 * mb):  # b's scores count against b's share of the analysis cache too
        pairs = [(f"stem {i}", " x") for i in range(mb // ScoreCache.ENTRY_BYTES + 1)]  # just over 1 MB of scores
        out = scores.scores(lm, pairs, None, lambda todo: [(0.0, 1)] * len(todo))
        assert len(out) == len(pairs)
        analysis.get_or_compute(("b", 2), lambda: torch.zeros(2**18))
    assert scores.owner_bytes("b") > mb and ("b", 0) not in analysis._data  # 2 MB analysis + 1 MB scores + 1 MB
    assert analysis.owner_bytes("b") == 2 * mb and analysis.owner_bytes("a") == 4 * mb
    with charged_to("c", 10 * ScoreCache.ENTRY_BYTES):  # scores beyond the cap: the visitor's oldest go
        scores.scores(lm, [(f"c {i}", " y") for i in range(25)], None, lambda todo: [(1.0, 1)] * len(todo))
    assert scores.owner_bytes("c") == 10 * ScoreCache.ENTRY_BYTES and scores.owner_bytes("b") > mb
    for i in range(3):  # nobody charged (the CLI, a benchmark): only the caches' own bounds apply
        analysis.get_or_compute(("cli", i), lambda: torch.zeros(2**18))
    assert len(analysis) == 9


def test_dashboard_events_are_charged_to_their_session_under_its_cap():
    """``ui.common.readable`` (every event's wrapper) charges what the event caches to its session
    under that session's Limits.max_cache_mb; a streamed event's every step too."""
    import torch

    from unlearnviz.analysis.activations import CACHE
    from unlearnviz.session import Limits
    from unlearnviz.session.budget import attach_caches
    from unlearnviz.ui.common import UISession, readable

    saved = CACHE.owner, CACHE.allowance, CACHE.max_entries, CACHE.max_bytes
    CACHE.max_entries, CACHE.max_bytes = 100, GB
    attach_caches(Budgets())
    try:
        a, b = UISession(), UISession()
        a.limits = b.limits = Limits(max_cache_mb=2)

        @readable
        def analyse(session: UISession, tag: str, n: int):
            for i in range(n):
                CACHE.get_or_compute(("test-charge", tag, i), lambda: torch.zeros(2**18))  # 1 MB each
            return len(CACHE)

        @readable
        def analyse_streamed(session: UISession, tag: str, n: int):
            for i in range(n):
                CACHE.get_or_compute(("test-charge", tag, i), lambda: torch.zeros(2**18))
                yield i

        analyse(b, "b", 2)
        analyse(a, "a", 5)
        list(analyse_streamed(a, "s", 3))
        mine = [k for k in CACHE._data if k[0] == "test-charge"]
        assert CACHE.owner_bytes(id(a)) == 2 * 2**20 and CACHE.owner_bytes(id(b)) == 2 * 2**20
        assert [k[1:] for k in mine] == [("b", 0), ("b", 1), ("s", 1), ("s", 2)]
    finally:
        for k in [k for k in list(CACHE._data) if k[0] == "test-charge"]:
            CACHE._drop(k)
        CACHE.owner, CACHE.allowance, CACHE.max_entries, CACHE.max_bytes = saved



def test_work_a_tracked_event_runs_in_its_worker_thread_is_charged_too():
    """The dashboard runs long work (fits, analyses, the report) in a worker thread beside the
    event's thread (ui.progress_view.run_tracked): the visitor the event is charged to goes with it."""
    from unlearnviz.session.budget import _CHARGED, charged_to
    from unlearnviz.session.progress import Tracker
    from unlearnviz.ui.progress_view import run_tracked

    out: dict = {}
    with charged_to("visitor-a", 2**20):
        for _ in run_tracked(lambda: _CHARGED.get(), Tracker(["work"]), out):
            pass
    assert out["value"] is not None and out["value"][0] == "visitor-a"
    assert _CHARGED.get() is None

# ---- a fit checked on every device its deltas land on ---------------------------------------------
# A CPU-only machine cannot place two blocks of one model on two devices (every CPU tensor is on
# "cpu", and accelerate's disk offload computes there too); nor can one GPU (accelerate runs the
# blocks it maps to "cpu" on the GPU, their weights brought over for each call, so their deltas
# are made on the GPU). The spread case therefore needs two CUDA devices (marked gpu); on the CPU
# the per-device figures must reduce to the one-device ones.


def test_on_one_device_the_per_device_figures_are_the_single_figures(tiny_model_path):
    from unlearnviz.methods.base import get_method, make_hparams
    from unlearnviz.model.loading import LoadOptions
    from unlearnviz.session import ModelStore, Session
    from unlearnviz.session.planning import edits_bytes, edits_bytes_by_device, fit_bytes_by_device, fit_plan

    s = Session()
    s.lm = ModelStore(budgets=Budgets()).get(str(tiny_model_path), LoadOptions(device="cpu"), holder=s)
    s.load_data("synthetic")
    plan = fit_plan(s.lm, s.data, "rmu", make_hparams(get_method("rmu").hparams_cls, {"steps": 2}), s.stack)
    assert fit_bytes_by_device(s.lm, plan) == {"cpu": plan.peak_bytes - plan.parts["weights"]}
    s.run_edit("rmu", {"steps": 2}, evaluate=False)
    assert edits_bytes_by_device(s.lm, s.stack) == {"cpu": edits_bytes(s.stack)} and edits_bytes(s.stack) > 0


@pytest.mark.gpu
@pytest.mark.skipif(__import__("torch").cuda.device_count() < 2, reason="needs two CUDA devices")
def test_a_spread_models_fit_is_checked_on_the_device_of_each_trained_block(tiny_model_path):
    """Embedding and blocks 0-1 on cuda:0, blocks 2-3 and the head on cuda:1: an RMU fit of
    blocks 1-2 trains block 2's delta on cuda:1, so a cuda:1 budget without room for it refuses
    the fit (naming cuda:1) although cuda:0 has plenty; with room, each device holds its delta."""
    import unlearnviz.session as session_module
    from unlearnviz.model.loading import LoadOptions
    from unlearnviz.session import ModelStore, Session
    from unlearnviz.session.budget import resident_bytes
    from unlearnviz.session.planning import edits_bytes, edits_bytes_by_device

    dm = {"transformer.wte": 0, "transformer.wpe": 0, "transformer.drop": 0, "transformer.h.0": 0,
          "transformer.h.1": 0, "transformer.h.2": 1, "transformer.h.3": 1, "transformer.ln_f": 1, "lm_head": 1}
    budgets = Budgets({"*": 10 * GB})
    store = ModelStore(budgets=budgets)
    old_store, old_budgets = session_module.STORE, session_module.BUDGETS
    session_module.STORE, session_module.BUDGETS = store, budgets
    try:
        s = Session()
        s.lm = store.get(str(tiny_model_path), LoadOptions(dtype="float32", device_map=dm), holder=s)
        assert str(s.lm.device) == "cuda:0"
        second = resident_bytes(s.lm.model)["cuda:1"]
        s.load_data("synthetic")
        one_delta = s.lm.adapter.mlp_out(2).weight.numel() * 4  # float32
        share = 4 * one_delta  # the delta, its gradient, Adam's two moments
        budgets.configure({"cuda:0": 10 * GB, "cuda:1": second + share // 2})
        over = {"layer": 2, "window": 2, "steps": 2, "batch_size": 8}
        with pytest.raises(UserError, match=r"this rmu fit needs ~.*memory budget on cuda:1 is"):
            s.run_edit("rmu", over, evaluate=False)
        assert len(s.stack) == 0
        budgets.configure({"cuda:0": 10 * GB, "cuda:1": second + 4 * share})
        s.run_edit("rmu", over, evaluate=False)
        assert {str(d.device) for d in s.stack.edits[0].deltas.values()} == {"cuda:0", "cuda:1"}
        by_device = edits_bytes_by_device(s.lm, s.stack)
        assert by_device == {"cuda:0": one_delta, "cuda:1": one_delta} and sum(by_device.values()) == edits_bytes(s.stack)
        assert budgets.of("cuda:1").held_bytes(EDITS) == one_delta == budgets.of("cuda:0").held_bytes(EDITS)
    finally:
        session_module.STORE, session_module.BUDGETS = old_store, old_budgets


def test_score_cache_bytes_count_long_questions():
    """A WMDP-length stem is held in its key: the cache's figure (the budget's and the per-visitor
    cap's) grows with it, not a flat 320 bytes an entry."""
    from unlearnviz.evaluation.scoring import ScoreCache

    class Fake:  # only what the key reads: the model object's id and its fingerprint
        model = object()

        def fingerprint(self, refresh=False):
            return "f"

    cache = ScoreCache(max_entries=10)
    long_stem = "q" * 2000
    cache.owner = lambda: ("v", 10**9)  # as charge_visitors sets it while visitor "v" is charged
    cache.scores(Fake(), [("short", " a"), (long_stem, " b")], None, lambda ps: [(0.0, 1)] * len(ps))
    assert cache.bytes == 2 * ScoreCache.ENTRY_BYTES + 2002 - ScoreCache.SHORT_CHARS
    assert cache.owner_bytes("v") == cache.bytes
    cache.shrink_to(ScoreCache.ENTRY_BYTES)  # the oldest (short) goes first, then the long one
    assert cache.bytes == 0 and cache.owner_bytes("v") == 0
