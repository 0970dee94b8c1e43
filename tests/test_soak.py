"""The soak and fault test (issue 20): eight real ``gradio_client`` clients on one served dashboard
(the tiny lab model) send interleaved fits of all three methods, an imported checkpoint, chats,
analyses, attacks, exports and malformed requests, while the server is killed with SIGKILL and
restarted on the same state folder and port twice. After each restart every client re-attaches by
its session id and reads back exactly what it last saw acknowledged (session summary, metrics,
conversation, timeline); the base weights' fingerprint never changes; no answer carries a
traceback, an exception class name, a memory address or a server folder; the server's resident
memory after warm-up grows less than ``bench.soak.RSS_BOUND_MB`` (why that figure: its comment).

The scenario is ``bench/soak.py``, shared with the bench row B12. ``UNLEARNVIZ_SOAK_OUT=FILE``
writes the run's figures (requests, malformed inputs, restarts, memory, p50/p95 latencies) as JSON,
for SECURITY.md's reliability section.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.soak import RSS_BOUND_MB, SoakSettings, run_soak  # noqa: E402

pytestmark = pytest.mark.slow


def test_sessions_survive_two_kills_under_load(tiny_model_path, tmp_path):
    settings = SoakSettings()
    fig = run_soak(tmp_path, settings, log=lambda line: print(line, flush=True))
    out = os.environ.get("UNLEARNVIZ_SOAK_OUT")
    if out:
        Path(out).write_text(json.dumps(fig.to_dict(), indent=1) + "\n")
    print(f"\nsoak: {json.dumps({k: v for k, v in fig.to_dict().items() if k != 'problems'})}")
    assert not fig.problems, "\n".join(fig.problems[:30])
    assert fig.restarts == len(settings.kill_after) == 2
    assert fig.sessions_checked == settings.clients * fig.restarts
    assert fig.malformed == settings.clients * settings.rounds <= fig.refused
    assert fig.fingerprint
    assert fig.rss_growth_mb < RSS_BOUND_MB, fig.rss_samples_mb
