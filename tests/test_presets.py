"""Method presets: the papers' settings by name, or automatically on a model that matches their rule.

A preset is chosen by name (``run --preset``, a config's ``preset:``) with the user's settings over
it, or automatically where the loaded model matches its rule and the user gave no settings; an
unknown name is one line; the preset applied is recorded in the edit (meta and every value in its
hparams), in the run's config and printed. The Zephyr-7B match is checked on the planner's
Zephyr-shaped config built on the meta device (no weights); the fits run on the tiny models with a
preset added for them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tiny_models import one_thread, save_tiny, tiny_session

from unlearnviz.errors import UserError
from unlearnviz.methods import get_method, load_edit, make_hparams, save_edit
from unlearnviz.methods.base import NO_PRESET, ModelMatch, Preset, choose_preset, describe_presets, preset_named

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)

TINY_PRESET = Preset(name="tiny-test", hparams={"layer": 1, "window": 2, "steps": 2, "lr": 1e-2, "batch_size": 4},
                     source="a test's own values", model=ModelMatch(model_type="gpt2", n_layers=4, hidden_size=128))


@pytest.fixture(scope="module")
def zephyr_config():
    """Zephyr-7B's config, its model built on the meta device (shapes, no memory)."""
    from unlearnviz.planner import meta_model, named_config

    model = meta_model(named_config("zephyr-7b"))
    assert next(model.parameters()).is_meta
    return model.config


def test_every_preset_is_valid_and_says_where_it_comes_from():
    for name in ("rmu", "srmu", "mrp"):
        spec = get_method(name)
        for p in spec.presets.values():
            make_hparams(spec.hparams_cls, dict(p.hparams))  # raises on a bad key or value
            assert p.source.strip() and p.name != NO_PRESET
        assert [r["name"] for r in describe_presets(spec)] == list(spec.presets)


def test_the_rmu_preset_is_the_wmdp_release_run():
    """layer_id 7, layer_ids 5,6,7, c = 6.5 (absolute), α = 1200, lr 5e-5, 150 batches of 4, 512 tokens."""
    spec = get_method("rmu")
    hp = make_hparams(spec.hparams_cls, dict(spec.presets["wmdp-zephyr-7b"].hparams))
    assert (hp.layer, hp.window) == (7, 3)  # blocks 5, 6, 7
    assert (hp.steering_coeff, hp.coeff_relative, hp.adaptive) == (6.5, False, False)
    assert (hp.alpha, hp.lr, hp.steps, hp.batch_size, hp.max_tokens) == (1200.0, 5e-5, 150, 4, 512)
    srmu = get_method("srmu").presets["paper-zephyr-7b"]
    assert "c_map" not in srmu.hparams and "not give" in srmu.note  # the paper does not say which c_map it chose
    assert get_method("mrp").presets["code-release"].model is None  # by name only


def test_a_zephyr_shaped_model_gets_the_paper_presets_automatically(zephyr_config):
    for method, name in (("rmu", "wmdp-zephyr-7b"), ("srmu", "paper-zephyr-7b")):
        spec = get_method(method)
        choice = choose_preset(spec, zephyr_config, {"seed": 3})  # a seed is not a setting
        assert choice.record["name"] == name and choice.record["how"].startswith("automatically")
        assert choice.overrides == {**spec.presets[name].hparams, "seed": 3}
        assert name in choice.message and spec.presets[name].source in choice.message
    assert choose_preset(get_method("mrp"), zephyr_config, {}).record is None


def test_settings_given_keep_the_defaults_and_say_which_preset_would_match(zephyr_config):
    spec = get_method("rmu")
    choice = choose_preset(spec, zephyr_config, {"lr": 1e-3})
    assert choice.record is None and choice.overrides == {"lr": 1e-3}
    assert "--preset wmdp-zephyr-7b" in choice.message and "\n" not in choice.message
    assert choose_preset(spec, zephyr_config, {}, NO_PRESET).record is None


def test_other_models_get_no_preset(tiny_lm):
    for method in ("rmu", "srmu", "mrp"):
        choice = choose_preset(get_method(method), tiny_lm.model.config, {})
        assert choice.record is None and choice.overrides == {} and not choice.message


def test_by_name_the_users_settings_win_over_the_preset(tiny_lm):
    spec = get_method("rmu")
    choice = choose_preset(spec, tiny_lm.model.config, {"steps": 3, "alpha": 1200.0}, "wmdp-zephyr-7b")
    assert choice.overrides["steps"] == 3 and choice.overrides["lr"] == 5e-5
    assert choice.record["how"] == "by name" and choice.record["overridden"] == ["steps"]  # alpha: the same value
    assert "your settings win for steps" in choice.message


def test_a_fingerprint_rule_matches_those_weights_only(tiny_lm):
    rule = ModelMatch(fingerprint=tiny_lm.fingerprint(refresh=False))
    assert rule.matches(tiny_lm.model.config, lambda: tiny_lm.fingerprint(refresh=False))
    assert not rule.matches(tiny_lm.model.config, lambda: "0" * 32)
    assert not rule.matches(tiny_lm.model.config)
    assert not ModelMatch().matches(tiny_lm.model.config)  # an empty rule matches nothing


def test_an_unknown_preset_is_one_line(tiny_lm):
    from unlearnviz.config import parse_config

    with pytest.raises(UserError, match="unknown preset 'nope' for rmu; available: wmdp-zephyr-7b, lab-calibrated, none") as err:
        choose_preset(get_method("rmu"), tiny_lm.model.config, {}, "nope")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"^edits\[0\]\.preset: unknown preset 'nope'"):
        parse_config({"data": "builtin:demo", "edits": [{"method": "srmu", "preset": "nope"}]})
    with pytest.raises(UserError, match="not fitted"):
        parse_config({"data": "builtin:demo", "edits": [{"method": "imported", "source": "x", "preset": "none"}]})
    assert preset_named(get_method("mrp"), NO_PRESET) is None
    cfg = parse_config({"data": "builtin:demo", "edits": [{"method": "rmu", "preset": " wmdp-zephyr-7b "}]})
    assert cfg.edits[0].preset == "wmdp-zephyr-7b" and cfg.to_dict()["edits"][0]["preset"] == "wmdp-zephyr-7b"


def test_an_automatic_preset_is_recorded_in_the_saved_edit(tiny_model_path, monkeypatch, tmp_path):
    spec = get_method("rmu")
    monkeypatch.setitem(spec.presets, TINY_PRESET.name, TINY_PRESET)
    s = tiny_session()
    out = s.run_edit("rmu", {}, evaluate=False)
    assert out["preset"] == "tiny-test" and "applied automatically" in out["preset_note"]
    edit = s.stack.edits[-1]
    assert edit.meta["preset"]["name"] == "tiny-test" and edit.meta["preset"]["source"] == TINY_PRESET.source
    assert {k: edit.hparams[k] for k in TINY_PRESET.hparams} == dict(TINY_PRESET.hparams)
    assert edit.meta["steps"] == 2
    back = load_edit(save_edit(edit, tmp_path / "e", s.lm), s.lm)
    assert back.meta["preset"] == edit.meta["preset"]
    entry = s.to_config().to_dict()["edits"][-1]
    assert entry["preset"] == "tiny-test" and entry["hparams"]["steps"] == 2  # every value explicit as well
    s.run_edit("rmu", {"steps": 1}, evaluate=False)  # settings given: the defaults, no preset
    assert "preset" not in s.stack.edits[-1].meta and s.stack.edits[-1].hparams["lr"] != 1e-2


@pytest.mark.slow
def test_run_applies_prints_and_records_the_preset(tmp_path, monkeypatch, capsys):
    """`run` on a model that matches a preset: applied and printed without --set; --preset with --set
    over it; a config's `preset:` key; --set alone keeps the defaults and says so; an unknown --preset
    is one line before the model loads."""
    from tiny_models import HIDDEN

    from unlearnviz.cli import main

    spec = get_method("rmu")
    rule = ModelMatch(model_type="llama", n_layers=2, hidden_size=HIDDEN)
    preset = Preset(name="tiny-llama", hparams={"layer": 1, "window": 2, "steps": 2, "batch_size": 2}, source="test",
                    model=rule)
    monkeypatch.setitem(spec.presets, preset.name, preset)
    model = save_tiny(tmp_path / "tiny-llama", "llama", layers=2)
    data = tmp_path / "facts.jsonl"
    rows = [{"split": "forget", "question": "The capital of France is", "choices": ["Paris", "Lyon"], "answer": 0},
            {"split": "retain", "question": "The sun is a", "choices": ["star", "moon"], "answer": 0},
            {"split": "forget", "text": "Paris is the capital of France."},
            {"split": "retain", "text": "The sun is a star."}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["--model", str(model), "--device", "cpu", "--data", str(data), "--method", "rmu", "--no-letter"]

    def run(name: str, *extra: str) -> tuple[dict, dict, str]:
        capsys.readouterr()
        assert main(["run", *common, *extra, "--out", str(tmp_path / name)]) == 0
        err = capsys.readouterr().err
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())
        return manifest, yaml.safe_load((tmp_path / name / "config.yaml").read_text())["edits"][0], err

    manifest, entry, err = run("auto")
    assert manifest["meta"]["preset"]["name"] == "tiny-llama" and manifest["hparams"]["steps"] == 2
    assert "preset 'tiny-llama' applied automatically" in err and entry["preset"] == "tiny-llama"
    manifest, _, err = run("named", "--preset", "tiny-llama", "--set", "steps=1")
    assert manifest["meta"]["preset"]["overridden"] == ["steps"] and manifest["hparams"]["steps"] == 1
    assert manifest["hparams"]["batch_size"] == 2 and "your settings win for steps" in err
    manifest, _, err = run("settings", "--set", "steps=1", "--set", "window=2", "--set", "layer=1")
    assert "preset" not in manifest["meta"] and "--preset tiny-llama" in err
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"edits": [{"method": "rmu", "preset": "tiny-llama", "hparams": {"lr": 1e-2}}]}))
    capsys.readouterr()
    assert main(["run", *common, "--config", str(cfg), "--out", str(tmp_path / "cfg")]) == 0
    assert json.loads((tmp_path / "cfg" / "manifest.json").read_text())["meta"]["preset"]["how"] == "by name"
    capsys.readouterr()
    assert main(["run", *common, "--preset", "nope", "--out", str(tmp_path / "bad")]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown preset 'nope' for rmu" in err
    assert not Path(tmp_path / "bad").exists()
