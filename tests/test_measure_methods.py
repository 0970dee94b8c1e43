"""scripts/measure_methods.py --robustness: the robustness card of each method's default edit, kept
compact in the results JSON and tabled in the markdown (run here on the tiny lab model with two
cheap attacks; the full measurement on the built-in sets is a separate, long run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_robustness_cards_of_the_default_edits(tiny_model_path, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "methods_results.md").write_text("old\n<!-- hand-written below: scripts/measure_methods.py keeps "
                                             "everything from this line on -->\nkept\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "measure_methods.py"), "--only", "robustness",
                          "--model", str(tiny_model_path), "--sets", "synthetic:0.1", "--methods", "rmu",
                          "--attacks", "noise,projection_removal", "--attack-set", "max_items=8",
                          "--attack-set", "noise.scales=0.0", "--docs", str(docs)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    results = json.loads((docs / "methods_results.json").read_text())
    card = results["cards"]["synthetic:0.1/rmu"]
    assert card["attacks"] == ["noise", "projection_removal"] and card["settings"]["max_items"] == "8"
    assert [r["attack"] for r in card["strongest"]] == ["noise"]  # no projection in an RMU edit: no condition
    assert card["strongest"][0]["condition"] == "σ = 0" and card["strongest"][0]["attacked"] == card["strongest"][0][
        "edited"]  # zero noise changes nothing
    assert card["notes"]["projection_removal"] == ["the edit has no projection to remove"]
    assert card["summary"]["R"] is None and results["fingerprint_unchanged"] is True
    md = (docs / "methods_results.md").read_text()
    assert "## Robustness cards" in md and "| synthetic:0.1 | rmu | n/a | n/a | n/a |" in md
    assert md.endswith("kept\n") and "old" not in md.splitlines()[0]
