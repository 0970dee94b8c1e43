"""Shared fixtures: the tiny synthetic model and its data (fast), and the default model (slow).

Set at import, before anything loads transformers: offline hub and datasets, no Gradio
analytics, two torch threads. ``UNLEARNVIZ_CACHE`` is set only where the user has not set it,
and then to the default cache (``~/.cache/unlearnviz``), so subprocesses share the converted
default model and the trained synthetic model with the test process; tests that write into a
cache use their own ``tmp_path``.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("UNLEARNVIZ_CACHE", str(Path.home() / ".cache" / "unlearnviz"))

import pytest  # noqa: E402
import torch  # noqa: E402

# One thread by default: tiny models are overhead-bound, and the app subprocesses of the
# client and browser tests share the 2 cores. UNLEARNVIZ_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("UNLEARNVIZ_TEST_THREADS", "1")))

TINY_ENTANGLEMENT = 0.1


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """The cached synthetic model folder (entanglement 0.1, seed 0), trained on first use.

    Training runs on one thread: on a busy 2-core machine two OpenMP threads spin against the
    other load and train several times slower; on an idle one, one thread costs little.
    """
    from unlearnviz.data.synthetic import synthetic_model_path

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return synthetic_model_path(TINY_ENTANGLEMENT, seed=0)
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_path):
    """A LoadedModel of the tiny synthetic GPT-2 (4 layers, d=128), on the CPU."""
    from unlearnviz.model import LoadOptions, load_model

    return load_model(str(tiny_model_path), LoadOptions(device="cpu"))


@pytest.fixture(scope="session")
def tiny_data():
    """The synthetic world the tiny model was trained on (entanglement 0.1, seed 0)."""
    from unlearnviz.data.synthetic import make_world

    return make_world(TINY_ENTANGLEMENT, seed=0)


@pytest.fixture(scope="session")
def default_lm():
    """The built-in default model (SmolLM2-135M-Instruct) on the CPU; for slow tests."""
    from unlearnviz.model import LoadOptions, load_model

    return load_model("default", LoadOptions(device="cpu"))
