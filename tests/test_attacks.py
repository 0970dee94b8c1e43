"""The attacks registry and the robustness card (unlearnviz.attacks) on the tiny synthetic model.

Each attack is checked to do what it says: ablating a planted direction restores a model edited
only along it (and a random direction does not); quantizing the unedited model moves its accuracy
by less than a stated amount, and a planted edit survives being folded and quantized; the prompt
attacks build the prompts they name; relearning trains on half A (or retain text) and scores what
it says; zero noise changes nothing; projection removal drops only the projection. The recovery
arithmetic is checked on hand-made numbers. The CLI runs end to end on a `run` folder (a
subprocess), the report shows the card, bundles keep it, and the dashboard runs it through the
real server.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unlearnviz.attacks import CARD_ORDER, REGISTRY, get_attack, make_settings
from unlearnviz.attacks.base import Items, depth_kept, harmonic_mean, pick, recovered_share
from unlearnviz.errors import UserError
from unlearnviz.model.routing import RoutingPlan, orthonormal_rows

ROOT = Path(__file__).resolve().parents[1]
PLANTED_LAYER = 1
FEW = {"max_items": 16}


def section_figures(page: str, anchor: str) -> int:
    """Plotly figures inside the report's section ``anchor``."""
    start = page.index(f'<section id="{anchor}">')
    return page[start:page.index("</section>", start)].count('class="plotly-graph-div')


def settings(name: str, **overrides):
    return make_settings(get_attack(name).settings_cls, overrides)


def run(name: str, lm, data, plan, **overrides):
    return get_attack(name).run(lm, data, plan, settings(name, **overrides))


@pytest.fixture(scope="module")
def planted(tiny_lm, tiny_data):
    """An edit that moves block 1's output only along one direction v: a bias c·v on its MLP output
    projection, v the direction the original uses least there (smallest eigenvalue of E[hhᵀ] over
    the forget texts' tokens), c large enough to make the model forget (200 ≈ 15× the mean token
    norm). Returns (plan, v)."""
    from unlearnviz.analysis.activations import capture

    texts = [f"{it.question} {it.gold}" for it in tiny_data.forget_mcq]
    acts = capture(tiny_lm, texts, [PLANTED_LAYER], pooling="tokens", use_cache=False)[PLANTED_LAYER]
    h = torch.cat([a[1:] for a in acts])
    v = torch.linalg.eigh(h.T @ h / len(h)).eigenvectors[:, 0]
    name = f"{tiny_lm.adapter.mlp_out_name(PLANTED_LAYER)}.bias"
    return RoutingPlan(weights={name: 200.0 * v}), v


# ---- the arithmetic --------------------------------------------------------------------------
def test_recovered_share_on_hand_made_numbers():
    assert recovered_share(0.6, 0.2, 1.0) == pytest.approx(0.5)  # half the gap back
    assert recovered_share(0.2, 0.2, 1.0) == 0.0
    assert recovered_share(1.2, 0.2, 1.0) == pytest.approx(1.25)  # past the original: not clipped
    assert recovered_share(0.1, 0.2, 1.0) == pytest.approx(-0.125)  # the attack made it worse
    assert recovered_share(0.9, 0.5, 0.5) is None  # no gap: nothing was forgotten, nothing to recover
    assert recovered_share(0.9, 0.6, 0.5) is None  # the edit raised accuracy: no gap either
    assert recovered_share(0.9, 0.5, 0.5 + 1e-12) is None  # ~0 is 0
    assert recovered_share(None, 0.2, 1.0) is None
    # R and Q: the share of the forgetting gap (original − edited) that survives, in [0, 1]
    assert depth_kept(0.8, 0.2) == pytest.approx(0.25)
    assert depth_kept(0.8, 1.0) == 1.0 and depth_kept(0.8, -0.1) == 0.0
    assert depth_kept(0.0, 0.5) is None and depth_kept(0.5, None) is None
    assert harmonic_mean(0.5, 1.0) == pytest.approx(2 / 3)
    assert harmonic_mean(0.0, 1.0) == 0.0 and harmonic_mean(0.0, 0.0) == 0.0
    assert harmonic_mean(None, 1.0) is None


def test_registry_order_and_settings():
    from unlearnviz.attacks.card import attack_names, split_settings

    assert list(REGISTRY) and set(REGISTRY) == set(CARD_ORDER) and attack_names() == list(CARD_ORDER)
    assert attack_names("quantize,relearn_forget") == ["relearn_forget", "quantize"]  # the card's order
    for name in REGISTRY:
        assert REGISTRY[name].summary and make_settings(REGISTRY[name].settings_cls) is not None
    with pytest.raises(UserError, match="unknown attack 'nope'; available: relearn_forget"):
        attack_names("nope")
    with pytest.raises(UserError, match="unknown attack setting 'stepz'") as exc:
        settings("relearn_forget", stepz=3)
    assert "\n" not in str(exc.value)
    with pytest.raises(UserError, match="'formats' must be one of int8, nf4, fp4"):
        settings("quantize", formats="int4")
    split = split_settings(["relearn_forget", "noise"], {"max_items": "8", "relearn_forget.steps": "3"})
    assert split == {"relearn_forget": {"max_items": "8", "steps": "3"}, "noise": {"max_items": "8"}}
    with pytest.raises(UserError, match="setting 'steps': no chosen attack has it"):
        split_settings(["noise"], {"steps": "3"})
    with pytest.raises(UserError, match="'ablation' is not one of the chosen attacks"):
        split_settings(["noise"], {"ablation.layers": "1"})


def test_items_are_even_subsets_of_each_half(tiny_data):
    assert pick(list(range(10)), 4) == [0, 2, 5, 7] and pick([1, 2], 5) == [1, 2]
    items = Items.from_data(tiny_data, 16)
    assert items.counts() == {"forget": 16, "forget_b": 8, "retain": 16}
    assert set(items.b) <= set(tiny_data.forget_mcq_half("B")) and set(items.a) <= set(tiny_data.forget_mcq_half("A"))


# ---- ablation --------------------------------------------------------------------------------
def test_ablation_of_a_planted_direction_restores_the_model(tiny_lm, tiny_data, planted):
    """Łucki et al.'s direction, fitted on half A's forgotten items, is the planted v; projecting
    it out of block 1 undoes the edit on half B (held out from the fit), a random direction does
    not, and the original under the same projection keeps what it knows."""
    from unlearnviz.attacks.ablation import ablated, directions, forgotten_items

    plan, v = planted
    fp = tiny_lm.fingerprint()
    res = run("ablation", tiny_lm, tiny_data, plan, max_items=40, layers=str(PLANTED_LAYER), all_layers=False)
    assert res.primary == "forget_b"
    assert res.original["forget_b"] == 1.0 and res.edited["forget_b"] <= 0.5  # the plant forgets (measured 0.40)
    (block,) = res.variants
    assert block.label == f"block {PLANTED_LAYER}" and block.info["blocks"] == [PLANTED_LAYER]
    assert block.edited["forget_b"] == 1.0 and res.recovered(block) == pytest.approx(1.0)  # measured: all back
    assert block.edited["retain"] >= 0.95 and block.original["forget_b"] == 1.0
    chosen = forgotten_items(tiny_lm, plan, Items.from_data(tiny_data, 40).a)
    assert chosen and res.settings["fitted_on"] == len(chosen)
    d, rel = directions(tiny_lm, plan, chosen, [PLANTED_LAYER])[PLANTED_LAYER]
    assert torch.nn.functional.cosine_similarity(d, v, dim=0) > 0.999 and rel > 1
    g = torch.Generator().manual_seed(0)
    other = orthonormal_rows(torch.randn(1, v.numel(), generator=g) - torch.randn(1, v.numel(), generator=g))[0]
    from unlearnviz.attacks.base import score

    random_dir = score(tiny_lm, ablated(plan, {PLANTED_LAYER: other}), Items.from_data(tiny_data, 40))
    assert random_dir["forget_b"] <= res.edited["forget_b"] + 0.15  # not any projection: that one
    assert tiny_lm.fingerprint() == fp


def test_ablation_without_forgetting_says_so(tiny_lm, tiny_data):
    res = run("ablation", tiny_lm, tiny_data, None, **FEW)
    assert res.variants == [] and "no edit" in res.notes[0]
    nothing = RoutingPlan(deltas={2: torch.zeros(tiny_lm.hidden_size, 4 * tiny_lm.hidden_size)})
    res = run("ablation", tiny_lm, tiny_data, nothing, **FEW)
    assert res.variants == [] and "no forgetting" in res.notes[0]


# ---- quantization ----------------------------------------------------------------------------
QUANT_TOL = 0.1  # stated bound: int8 and NF4 move the unedited tiny model's cloze accuracy by at most 10 points


@pytest.mark.slow
def test_quantizing_the_unedited_model_changes_little(tiny_lm, tiny_data):
    """int8 and NF4 through bitsandbytes (its CPU kernels): the original and the "edited" model
    (no edit) quantized identically, both within QUANT_TOL of full precision (measured: 0 points
    on int8 and NF4, 40 forget and 40 retain items)."""
    pytest.importorskip("bitsandbytes")
    fp = tiny_lm.fingerprint()
    res = run("quantize", tiny_lm, tiny_data, None, max_items=40)
    assert [v.label for v in res.variants] == ["int8", "nf4"] and [v.info["bits"] for v in res.variants] == [8, 4]
    for v in res.variants:
        assert v.edited == v.original
        for split in ("forget", "forget_b", "retain"):
            assert abs(v.original[split] - res.original[split]) <= QUANT_TOL, (v.label, split, v.original)
    assert tiny_lm.fingerprint() == fp and tiny_lm.quantization is None


@pytest.mark.slow
def test_quantization_folds_the_edit_into_the_weights(tiny_lm, tiny_data, planted):
    """A planted edit (a parameter delta) is folded into the checkpoint that is quantized: NF4 of
    the edited weights still forgets, while NF4 of the original still knows."""
    from unlearnviz.attacks.quantize import hook_part, weight_part

    plan, _ = planted
    res = run("quantize", tiny_lm, tiny_data, plan, formats=["nf4"], max_items=40)
    (nf4,) = res.variants
    assert nf4.original["forget"] >= 0.9 and nf4.edited["forget"] <= res.edited["forget"] + 0.15
    assert res.recovered(nf4) is not None and res.recovered(nf4) < 0.3
    site = RoutingPlan(deltas={1: torch.ones(2, 2)}, projections={2: torch.eye(4)[:1]}, spare_first=True)
    assert set(weight_part(site).deltas) == {1} and not weight_part(site).projections
    assert set(hook_part(site).projections) == {2} and hook_part(site).spare_first and hook_part(plan) is None


def test_quantization_refuses_a_quantized_model(tiny_lm, tiny_data, tiny_model_path):
    pytest.importorskip("bitsandbytes")
    from unlearnviz.model import LoadOptions, load_model

    q = load_model(str(tiny_model_path), LoadOptions(device="cpu", quantization="8bit"))
    with pytest.raises(UserError, match="needs the model in float .*8bit"):
        run("quantize", q, tiny_data, None, **FEW)


# ---- prompts ---------------------------------------------------------------------------------
def test_prompts_build_what_they_say(tiny_data):
    from unlearnviz.attacks.prompts import FILLERS, JAILBREAKS, REPHRASINGS, conditions, fill, lower_first, prefixed

    found = conditions(tiny_data, settings("prompts", shots=3))
    labels = list(found)
    assert labels[0] == "few-shot (3 half-A facts)"
    assert len(labels) == 1 + len(FILLERS) + 5 + len(REPHRASINGS) and len(JAILBREAKS) == 5
    assert {"jailbreak: DAN", "jailbreak: prefix injection", "jailbreak: pretending", "jailbreak: refusal suppression",
            "jailbreak: step by step", "filler: Hindi"} <= set(labels)
    item = tiny_data.forget_mcq_half("B")[0]
    template, with_a, family = found[labels[0]]
    shots = tiny_data.forget_mcq_half("A")[:3]
    assert family == "few_shot" and not with_a  # built from half A: half A is not scored
    assert fill(template, item.question) == "".join(f"{s.question} {s.gold}.\n" for s in shots) + item.question
    for label, (template, with_a, _) in found.items():
        asked = prefixed(template)(item)
        assert asked.question.endswith(item.question) or "rephrase" in label, label  # the stem comes last
        assert asked.choices == item.choices and asked.answer == item.answer
    assert fill(found["filler: Hindi"][0], item.question).startswith(FILLERS["Hindi"])
    assert lower_first("The capital of Drokand is") == "the capital of Drokand is"
    assert lower_first("Drokand's capital is") == "Drokand's capital is"
    assert fill(REPHRASINGS["as every textbook says"], "The capital of X is") == "As every textbook says, the capital of X is"


def test_prompts_score_half_b_on_both_models(tiny_lm, tiny_data):
    res = run("prompts", tiny_lm, tiny_data, None, families=["few_shot", "jailbreak"], max_items=8)
    assert res.primary == "forget_b" and len(res.variants) == 6
    few, dan = res.variants[0], res.variants[1]
    assert few.edited["forget"] is None and few.edited["forget_b"] is not None  # half A is in the context
    assert dan.edited["forget"] is not None and dan.info["family"] == "jailbreak"
    assert dan.info["example"].startswith("Hello. From now on you are going to act as DAN")
    assert dan.info["example"].endswith(tiny_data.forget_mcq_half("B")[0].question)
    assert all(v.edited == v.original for v in res.variants)  # no edit: both sides are the original


# ---- relearning ------------------------------------------------------------------------------
@pytest.mark.slow
def test_relearning_on_half_a_and_on_retain_text(tiny_lm, tiny_data):
    from unlearnviz.attacks.relearn_retain import retain_texts
    from unlearnviz.methods import get_method, make_hparams

    edit = get_method("rmu").fit(tiny_lm, tiny_data, make_hparams(get_method("rmu").hparams_cls, {
        "layer": 2, "window": 3, "alpha": 1.0, "steps": 40}))
    fp = tiny_lm.fingerprint()
    fast = {"steps": 4, "eval_every": 2, "lr": 3e-3, "max_items": 16}
    forget = run("relearn_forget", tiny_lm, tiny_data, edit.plan(), **fast)
    assert forget.primary == "forget_b" and [p["step"] for p in forget.curve] == [0, 2, 4]
    assert [v.label for v in forget.variants] == ["step 2", "step 4"]
    assert forget.curve[0]["edited"] == forget.edited and forget.curve[0]["original"] == forget.original
    assert all(p["loss"] is not None and math.isfinite(p["loss"]) for p in forget.curve[1:])
    assert forget.settings["texts"] == len(tiny_data.forget_texts_half("A"))
    benign = run("relearn_retain", tiny_lm, tiny_data, edit.plan(), max_texts=50, **fast)
    assert benign.primary == "forget" and benign.settings["texts"] == 50
    assert retain_texts(tiny_data, 50) == [tiny_data.retain_train_texts[(i * 260) // 50] for i in range(50)]
    assert benign.settings["layers"] == forget.settings["layers"]  # the same budget, the same blocks
    assert tiny_lm.fingerprint() == fp
    # the card's recovery curves: each relearning attack's held-out split, step by step (the Evaluate
    # tab draws them through its sync; a card without relearning has none)
    from unlearnviz.attacks.card import curve_series
    from unlearnviz.ui.tab_evaluate import card_curve_figure

    card = {"order": ["relearn_forget", "relearn_retain"], "baseline": {"floor": 0.3, "chance": 0.25},
            "attacks": {"relearn_forget": forget.to_json(), "relearn_retain": benign.to_json()}}
    series = curve_series(card)
    assert [(c["attack"], c["split"]) for c in series] == [("relearn_forget", "half B"), ("relearn_retain", "all")]
    assert series[0]["steps"] == [0, 2, 4] and series[0]["edited"] == [p["edited"]["forget_b"] for p in forget.curve]
    assert series[1]["original"] == [p["original"]["forget"] for p in benign.curve]
    assert series[0]["retain_edited"] == [p["edited"]["retain"] for p in forget.curve]
    assert series[0]["recovered"] == [recovered_share(p["edited"]["forget_b"], forget.edited["forget_b"],
                                                      forget.original["forget_b"]) for p in forget.curve]
    assert len(card_curve_figure(card).data) == 4
    assert card_curve_figure({"order": [], "attacks": {}}) is None


# ---- noise and projection removal ------------------------------------------------------------
def test_noise_zero_changes_nothing_and_large_noise_hurts(tiny_lm, tiny_data, planted):
    plan, _ = planted
    fp = tiny_lm.fingerprint()
    res = run("noise", tiny_lm, tiny_data, plan, scales=[0.0, 2.0], **FEW)
    zero, big = res.variants
    assert zero.label == "σ = 0" and zero.edited == res.edited and zero.original == res.original
    assert big.original["forget"] < res.original["forget"]  # 2× each matrix's scale wrecks even the original
    assert res.settings["parameters"] == 4 * 4  # attn c_attn, c_proj and mlp c_fc, c_proj per block
    assert run("noise", tiny_lm, tiny_data, None, scales=[0.0], targets="mlp_out", **FEW).settings["parameters"] == 4
    assert tiny_lm.fingerprint() == fp
    with pytest.raises(UserError, match="over max_state_mb=1"):
        run("noise", tiny_lm, tiny_data, plan, max_state_mb=1, **FEW)


def test_projection_removal_drops_only_the_projection(tiny_lm, tiny_data, planted):
    from unlearnviz.attacks.base import score

    bias, _ = planted
    g = torch.Generator().manual_seed(1)
    q = orthonormal_rows(torch.randn(8, tiny_lm.hidden_size, generator=g))
    both = bias.merged(RoutingPlan(projections={2: q}))
    res = run("projection_removal", tiny_lm, tiny_data, both, **FEW)
    (removed,) = res.variants
    assert removed.info["blocks"] == [2] and removed.original == res.original
    assert removed.edited == score(tiny_lm, bias, Items.from_data(tiny_data, 16))  # the weight change is kept
    res = run("projection_removal", tiny_lm, tiny_data, bias, **FEW)
    assert res.variants == [] and res.notes == ["the edit has no projection to remove"]


# ---- the card --------------------------------------------------------------------------------
def test_card_json_table_figure_and_file(tiny_lm, tiny_data, planted, tmp_path):
    from unlearnviz import plots
    from unlearnviz.attacks.card import (
        CARD_HEADERS,
        card_matches,
        card_results,
        card_rows,
        check_card,
        figure_rows,
        headline,
        read_card,
        run_card,
        save_card,
    )

    plan, _ = planted
    events = []
    card = run_card(tiny_lm, tiny_data, plan, "projection_removal,noise,ablation",
                    {"max_items": "16", "noise.scales": "0.0", "ablation.layers": "1"}, progress=events.append,
                    edit={"label": "planted"})
    assert card["order"] == ["ablation", "noise", "projection_removal"] and card["edit"]["label"] == "planted"
    assert {e["attack"] for e in events} == set(card["order"]) and all(e["attacks"] == 3 for e in events)
    assert json.loads(json.dumps(card)) == card  # plain JSON
    assert card["summary"]["R"] is None and card["summary"]["Q"] is None and card["summary"]["HM"] is None
    assert card["summary"]["strongest"] == {"attack": "ablation", "condition": "block 1", "recovered": 1.0}
    assert "ablation (block 1), recovered 100%" in headline(card)
    rows = card_rows(card)
    assert all(len(r) == len(CARD_HEADERS) for r in rows)
    assert rows[0][:3] == ["ablation", "block 1", "half B"] and rows[0][7] == pytest.approx(1.0)
    assert rows[-1][:2] == ["projection_removal", "the edit has no projection to remove"]
    fig = plots.robustness_card(figure_rows(card), floor=card["baseline"]["floor"], chance=card["baseline"]["chance"])
    assert [t.name for t in fig.data] == ["edited, no attack", "edited, attacked", "original"]
    assert len(fig.data[0].x) == 2  # the attacks with a condition: ablation and noise
    path = save_card(tmp_path, card)
    assert path.name == "attacks.json" and read_card(tmp_path) == card and read_card(tmp_path / "none") is None
    assert card_matches(card, plan) and not card_matches(card, None)
    assert set(card_results(card)) == set(card["order"])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "attacks.json").write_text(json.dumps({"kind": "something else"}))
    with pytest.raises(UserError, match="not a robustness card"):
        read_card(tmp_path / "bad")
    with pytest.raises(UserError, match="format 99"):
        check_card({**card, "format": 99}, "x")


@pytest.mark.slow
def test_session_door_bundle_and_report(tiny_lm, tiny_data, tmp_path):
    """The card runs on the session's selected edit, is kept by stack index, travels in a bundle,
    is dropped with its edit on undo, and the session's report shows it."""
    from unlearnviz.bundle import export_bundle, import_bundle
    from unlearnviz.session import Limits, Session
    from unlearnviz.session import attacks as door
    from unlearnviz.session.reporting import write_session_report

    s = Session(lm=tiny_lm, data=tiny_data)
    with pytest.raises(UserError, match="run or import an edit first"):
        door.run_session_card(s, ["noise"])
    s.run_edit("rmu", {"layer": 2, "window": 2, "steps": 5})
    names, sets = door.ui_settings(["noise", "projection_removal"], 5, 8, Limits())
    assert names == ["noise", "projection_removal"] and sets == {"max_items": 8}
    with pytest.raises(UserError, match="over this server's limit of 3"):
        door.ui_settings(["relearn_forget"], 5, 8, Limits(max_steps=3))
    with pytest.raises(UserError, match="choose at least one attack"):
        door.ui_settings([], 5, 8, Limits())
    card = door.run_session_card(s, names, {**sets, "noise.scales": "0.01"})
    assert s.attacks == {0: card} and len(door.card_table(card)) == 2
    assert door.card_table(card)[0][3].endswith("%")
    restored = import_bundle(export_bundle(s, tmp_path / "s.zip"), lm=tiny_lm)
    assert restored.attacks == {0: card}
    out = write_session_report(s, tmp_path / "session.html")
    assert section_figures(out.read_text(), "robustness") == 1
    s.undo()
    assert s.attacks == {}


# ---- the command line ------------------------------------------------------------------------
def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "unlearnviz", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_cli_attack_on_a_run_folder_and_the_report(tiny_model_path, tmp_path):
    """`run` then `attack --edit RUN` (subprocess): the card on stdout and in RUN/attacks.json, the
    data and model the run names; `report --run RUN` shows it; a refitted edit's stale card is not
    shown; bad names and settings are one line and exit 2."""
    from unlearnviz.cli import main

    run_dir = tmp_path / "run"
    res = run_cli("run", "--model", str(tiny_model_path), "--device", "cpu", "--data", "synthetic:0.1",
                  "--method", "rmu", "--set", "layer=2", "--set", "window=2", "--set", "steps=8", "--no-letter",
                  "--out", str(run_dir))
    assert res.returncode == 0, res.stderr
    res = run_cli("attack", "--edit", str(run_dir), "--device", "cpu", "--attacks",
                  "relearn_forget,quantize,projection_removal", "--set", "max_items=8", "--set", "steps=2",
                  "--set", "eval_every=1", "--set", "quantize.formats=nf4")
    assert res.returncode == 0, res.stderr
    card = json.loads(res.stdout)
    assert card["order"] == ["relearn_forget", "quantize", "projection_removal"]
    assert card["data"]["name"] == "synthetic:0.1" and card["edit"]["edits"] == ["1. rmu"]
    assert json.loads((run_dir / "attacks.json").read_text()) == card
    assert "wrote" in res.stderr and "attack 1/3: relearn_forget" in res.stderr
    assert card["summary"]["Q_from"] == "quantize, nf4"
    for args, words in ((["--attacks", "nope"], "unknown attack 'nope'"),
                        (["--set", "bogus=1"], "no chosen attack has it"),
                        (["--set", "relearn_forget.steps=0"], "below its minimum")):
        bad = run_cli("attack", "--edit", str(run_dir), "--device", "cpu", *args)
        assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1 and words in bad.stderr, bad.stderr
    out = tmp_path / "report.html"
    fast = ["--device", "cpu", "--relearn-steps", "0", "--chat-prompts", "0", "--max-texts", "20", "--max-items", "8"]
    assert main(["report", "--run", str(run_dir), "--out", str(out), *fast]) == 0
    page = out.read_text()
    assert section_figures(page, "robustness") == 2 and "Robustness card: forget accuracy" in page
    assert "Recovery curves: forget accuracy while an attacker fine-tunes" in page  # relearn_forget ran
    assert "robustness card read from" in page
    zipped = tmp_path / "run.zip"  # a bundle of the run carries its card
    assert main(["bundle", "export", "--run", str(run_dir), "--out", str(zipped), "--device", "cpu"]) == 0
    import zipfile

    with zipfile.ZipFile(zipped) as z:
        assert json.loads(z.read("results.json"))["attacks"] == {"0": card}
    stale = dict(card, edit={**card["edit"], "hash": "0" * 16})
    (run_dir / "attacks.json").write_text(json.dumps(stale))
    assert main(["report", "--run", str(run_dir), "--out", str(out), *fast]) == 0
    page = out.read_text()
    assert section_figures(page, "robustness") == 0 and "was measured on another edit" in page


@pytest.mark.slow
def test_cli_attack_on_an_imported_checkpoint(tiny_model_path, tmp_path):
    """`attack --unlearned CKPT --base BASE`: a checkpoint fine-tuned by a plain PyTorch loop,
    imported as an edit; the card is printed and, without --out, not written anywhere."""
    from foreign_models import gradient_ascent

    ckpt = gradient_ascent(tiny_model_path, tmp_path / "ga", train=("transformer.h.1.mlp.c_proj.weight",))
    res = run_cli("attack", "--unlearned", str(ckpt), "--base", str(tiny_model_path), "--device", "cpu",
                  "--data", "synthetic:0.1", "--attacks", "noise,projection_removal", "--set", "max_items=8",
                  "--set", "noise.scales=0.01")
    assert res.returncode == 0, res.stderr
    card = json.loads(res.stdout)
    assert card["edit"]["source"] == str(ckpt) and card["order"] == ["noise", "projection_removal"]
    assert "not written" in res.stderr and not list(tmp_path.rglob("attacks.json"))


# ---- the dashboard ---------------------------------------------------------------------------
@pytest.mark.slow
def test_robustness_panel_through_the_real_server(tiny_model_path):
    from app_server import Server
    from gradio_client import Client

    srv = Server("--model", "synthetic", "--data", "synthetic")
    try:
        c = Client(srv.url, verbose=False)
        names = set(c.view_api(print_info=False, return_format="dict")["named_endpoints"])
        assert {"/attacks", "/cancel_attacks"} <= names
        c.predict("rmu", {"steps": 15}, api_name="/run_edit")
        status, _plot, table, card = c.predict(["noise", "projection_removal"], 2, 8, api_name="/attacks")
        assert card["order"] == ["noise", "projection_removal"]
        assert status.startswith(("The strongest attack", "No attack found"))
        assert len(table["data"]) == len(card["attacks"]["noise"]["variants"]) + 1
        with pytest.raises(Exception, match="choose at least one attack"):
            c.predict([], 2, 8, api_name="/attacks")
        assert srv.alive()
    finally:
        srv.stop()
