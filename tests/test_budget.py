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
