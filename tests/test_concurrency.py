"""Eight users at once on one served app: nobody sees anyone else's edit.

Eight ``gradio_client`` clients start together (a barrier), each in its own browser session: load
the model, load its own data set, run its own edit (three methods, different settings), then ask
ten prompts, interleaved with the others' training and chats: 8 × 14 = 112 requests. Afterwards
each client's workload is replayed alone, one at a time; every answer and every after-edit metric
must equal the concurrent run's, the original model's answers must be the same for everyone, and
the base weights' fingerprint must be what it was at load.

Queue settings under test: the app's defaults (``--concurrency 4`` per event type, a queue of 64):
at most four edits or four chats run at once and the rest wait, so the eight users interleave.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from app_server import Server
from gradio_client import Client

PROMPTS = ["The capital of Velmora is", "The capital of Tolun is", "Tell me about the weather",
           "The symbol of the element", "Once upon a time", "The official language of", "Water is",
           "My favourite country is", "The largest city in", "Averin is known for"]
NEW_TOKENS = 8

USERS = [  # (data, method, hyperparameters): every user a different edit
    ("synthetic:0.1", "rmu", {"steps": 12, "steering_coeff": 4.0}),
    ("synthetic:0.1", "rmu", {"steps": 12, "steering_coeff": 2.0, "seed": 3}),
    ("synthetic:0.2", "rmu", {"steps": 12, "adaptive": True, "steering_coeff": 3.0}),
    ("synthetic:0.1", "srmu", {"steps": 12, "c_map": 2.0}),
    ("synthetic:0.0", "srmu", {"steps": 12, "c_map": 4.0, "layer": 2}),
    ("synthetic:0.3", "srmu", {"steps": 12, "variant": "difference"}),
    ("synthetic:0.1", "mrp", {"layers": [2], "k": 8, "steps": 6}),
    ("synthetic:0.2", "mrp", {"layers": [1], "k": 4, "steps": 6, "objective": "ga"}),
]


@pytest.fixture(scope="module")
def server(tiny_model_path):
    srv = Server("--model", "synthetic", "--data", "synthetic", env={"OMP_NUM_THREADS": "1"})
    yield srv
    srv.stop()


def workload(url: str, user: tuple, start: threading.Barrier | None = None) -> dict:
    data, method, hparams = user
    c = Client(url, verbose=False)
    if start is not None:
        start.wait(timeout=120)
    calls = 0
    info = c.predict("synthetic", "float32", "cpu", api_name="/load_model")[-1]
    c.predict(data, "", None, api_name="/load_data")
    out = c.predict(method, hparams, api_name="/run_edit")[-1]
    calls += 3
    answers = []
    for p in PROMPTS:
        answers.append(c.predict(p, NEW_TOKENS, 0.0, api_name="/chat")[-1])
        calls += 1
    fp = c.predict(api_name="/fingerprint")
    calls += 1
    after = out["metrics"]["after"]
    return {"edited": [a["edited"] for a in answers], "original": [a["original"] for a in answers],
            "after": {k: after[k] for k in ("forget_cloze_acc", "retain_cloze_acc", "forget_gold_logprob",
                                            "retain_gold_logprob", "retain_ppl")},
            "method": out["method"], "index": out["index"], "calls": calls, "fp": fp,
            "loaded_fp": info["fingerprint"]}


@pytest.mark.slow
def test_eight_clients_are_isolated(server):
    start = threading.Barrier(len(USERS))
    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(USERS)) as pool:
        together = list(pool.map(lambda u: workload(server.url, u, start), USERS))
    concurrent_s = time.perf_counter() - t0
    assert sum(r["calls"] for r in together) >= 100
    assert server.alive()
    alone = [workload(server.url, u) for u in USERS]  # the reference: each user by themselves
    base = together[0]["loaded_fp"]
    for user, t, a in zip(USERS, together, alone, strict=True):
        assert t["method"] == user[1] and t["index"] == 0  # one edit in each session: its own
        assert t["edited"] == a["edited"], (user, t["edited"], a["edited"])
        assert t["after"] == pytest.approx(a["after"], rel=1e-5, abs=1e-6), user
        assert t["original"] == together[0]["original"]  # everyone's original model is the same
        for r in (t, a):
            assert r["fp"]["fingerprint"] == r["fp"]["loaded_fingerprint"] == base
    # the edits really differ from each other and from the original (else isolation proves nothing)
    edited_sets = {tuple(t["edited"]) for t in together}
    assert len(edited_sets) >= 6, edited_sets
    assert sum(t["edited"] != t["original"] for t in together) >= 6
    print(f"8 clients, {sum(r['calls'] for r in together)} concurrent requests in {concurrent_s:.1f} s")
