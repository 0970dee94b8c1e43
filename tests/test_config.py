"""Configs: the schema's checks (each error names its dotted key), the old flat form, round trips,
and `run --config` reproducing a run: the same metrics as the equivalent flags, the same metrics
twice, a stack of edits fitted in order into a relocatable run folder, and a session replayed
from its own config (same metrics, same greedy chat answers). Tiny synthetic model throughout."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml
from tiny_models import tiny_session

from unlearnviz.cli import main
from unlearnviz.config import Config, load_config, parse_config
from unlearnviz.errors import UserError
from unlearnviz.methods import get_method, make_hparams
from unlearnviz.session.replay import replay

FAST = {"steps": 6}
PROMPT = "The capital of Velmora is"


def metrics_of(m: dict) -> dict:
    """Everything but timings (wall clock differs run to run; the numbers must not)."""
    return {k: v for k, v in m.items() if not k.endswith("_s")}


# ---- schema -------------------------------------------------------------------------------------
BAD = {
    "unknown_top_key": ({"modle": "default"}, r"^modle: unknown key"),
    "unknown_nested_key": ({"model": {"source": "default", "dtyp": "float32"}}, r"^model\.dtyp: unknown key"),
    "unknown_hparam": ({"edits": [{"method": "rmu", "hparams": {"stpes": 3}}]},
                       r"^edits\[0\]\.hparams\.stpes: unknown hyperparameter 'stpes'"),
    "hparam_wrong_type": ({"edits": [{"method": "rmu", "hparams": {"steps": "abc"}}]},
                          r"^edits\[0\]\.hparams\.steps: .*cannot read 'abc' as int"),
    "hparam_out_of_range": ({"edits": [{"method": "srmu"}, {"method": "rmu", "hparams": {"lr": -1}}]},
                            r"^edits\[1\]\.hparams\.lr: .*below its minimum"),
    "hparam_bad_choice": ({"edits": [{"method": "mrp", "hparams": {"objective": "x"}}]},
                          r"^edits\[0\]\.hparams\.objective: .*must be one of npo, ga"),
    "unknown_method": ({"edits": [{"method": "nope"}]}, r"^edits\[0\]\.method: unknown method 'nope'"),
    "missing_method": ({"edits": [{"hparams": {"steps": 3}}]}, r"^edits\[0\]\.method: missing"),
    "edits_not_list": ({"edits": {"method": "rmu"}}, r"^edits: expected a list, got dict"),
    "edit_not_mapping": ({"edits": ["rmu"]}, r"^edits\[0\]: expected a mapping, got str"),
    "hparams_not_mapping": ({"edits": [{"method": "rmu", "hparams": [1]}]}, r"^edits\[0\]\.hparams: expected a mapping"),
    "seed_wrong_type": ({"seed": "zero"}, r"^seed: expected an integer, got 'zero'"),
    "seed_bool": ({"seed": True}, r"^seed: expected an integer, got True"),
    "seed_negative": ({"seed": -1}, r"^seed: -1 is below the minimum 0"),
    "dtype_choice": ({"model": {"dtype": "int3"}}, r"^model\.dtype: must be one of float32, bfloat16"),
    "source_wrong_type": ({"model": {"source": 7}}, r"^model\.source: expected a string, got int"),
    "letter_wrong_type": ({"evaluation": {"letter": "yes"}}, r"^evaluation\.letter: expected true or false"),
    "relearn_out_of_range": ({"evaluation": {"relearn": {"steps": 0}}}, r"^evaluation\.relearn\.steps: 0 is below"),
    "relearn_lr_nan": ({"evaluation": {"relearn": {"lr": float("nan")}}}, r"^evaluation\.relearn\.lr: expected a finite"),
    "chat_temperature": ({"chat": [{"prompt": "hi", "temperature": 9}]}, r"^chat\[0\]\.temperature: 9\.0 is above"),
    "chat_empty_prompt": ({"chat": [{"prompt": "  "}]}, r"^chat\[0\]\.prompt: must not be empty"),
    "chat_edit_index": ({"edits": [{"method": "rmu"}], "chat": [{"prompt": "hi", "edit": 1}]},
                        r"^chat\[0\]\.edit: 1 is not an index of the 1 edits"),
    "analysis_layers": ({"analysis": {"layers": [0, "x"]}}, r"^analysis\.layers: expected a list of integers"),
    "analysis_variant": ({"analysis": {"variant": "sum"}}, r"^analysis\.variant: must be one of ratio"),
    "version_newer": ({"version": 2}, r"^version: 2 is above the maximum 1"),
    "section_not_mapping": ({"evaluation": [1]}, r"^evaluation: expected a mapping, got list"),
    "null_not_allowed": ({"evaluation": {"letter": None}}, r"^evaluation\.letter: must not be null"),
    "mixed_forms": ({"method": "rmu", "edits": []}, r"^edits: mixes the new schema with the old flat form"),
    "flat_unknown_key": ({"method": "rmu", "hparms": {}}, r"^hparms: unknown key"),
    "not_a_mapping": ([1, 2], r"^expected a mapping"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_each_error_names_its_key(case):
    raw, pattern = BAD[case]
    with pytest.raises(UserError) as info:
        parse_config(raw)
    msg = str(info.value)
    assert "\n" not in msg
    assert re.search(pattern, msg), msg


def test_the_first_problem_is_the_one_reported():
    """Pydantic finds every problem; the message is the first a reader would meet: a section's
    unknown keys before its values, fields in declaration order, an unknown or unreadable
    hyperparameter before one out of range."""
    assert _error({"seed": -1, "modle": "x"}).startswith("modle: unknown key")
    assert _error({"analysis": {"top_k": 0, "max_texts": 0}}).startswith("analysis.max_texts: 0 is below")
    assert _error({"chat": [{"prompt": "hi", "temperature": 9}, {"prompt": 5}]}).startswith("chat[0].temperature")
    with pytest.raises(UserError, match="unknown hyperparameter 'bogus'"):
        make_hparams(get_method("rmu").hparams_cls, {"steps": 0, "bogus": 1})
    with pytest.raises(UserError, match="'lr'=-1.0 is below"):  # lr is declared before steps
        make_hparams(get_method("rmu").hparams_cls, {"steps": 0, "lr": -1})


def _error(raw) -> str:
    with pytest.raises(UserError) as info:
        parse_config(raw)
    return str(info.value)


# Hyperparameters: one reader for configs, --set, sweep grids and the UI's JSON (text or typed).
READ = [("rmu", "steps", "3", 3), ("rmu", "steps", " 3 ", 3), ("rmu", "steps", 2.0, 2), ("rmu", "lr", "1e-3", 0.001),
        ("rmu", "alpha", 5, 5.0), ("rmu", "adaptive", "On", True), ("rmu", "adaptive", "no", False),
        ("rmu", "adaptive", 1, True), ("mrp", "layers", "[1, 2]", [1, 2]), ("mrp", "layers", "3", [3]),
        ("mrp", "layers", ["2", 3], [2, 3]), ("mrp", "layers", "", [])]


@pytest.mark.parametrize("method,key,given,want", READ)
def test_hparams_read_text_and_typed_values_alike(method, key, given, want):
    got = getattr(make_hparams(get_method(method).hparams_cls, {key: given}), key)
    assert got == want and type(got) is type(want)


# Refusals. New with the pydantic reader: a bool is true/false, 0/1 or one of its words (any value
# went through bool() before), a list item is an integer (1.5 was cut to 1), a list is not a dict.
REFUSED = [("rmu", "adaptive", 2, "cannot read 2 as bool"), ("rmu", "adaptive", None, "cannot read None as bool"),
           ("rmu", "adaptive", "t", "cannot read 't' as bool"), ("rmu", "steps", "3.0", "cannot read '3.0' as int"),
           ("mrp", "layers", [1.5], r"cannot read \[1\.5\] as list"), ("mrp", "layers", {"1": 2}, "as list"),
           ("mrp", "layers", "1,x", r"cannot read \['1', 'x'\] as list"), ("mrp", "layers", [-2], "'layers'=-2 is below"),
           ("rmu", "steps", 1e30, r"'steps'=1\d{30} is above its maximum 5000")]


@pytest.mark.parametrize("method,key,given,match", REFUSED)
def test_hparams_refusals_name_the_edit_and_key(method, key, given, match):
    msg = _error({"edits": [{"method": method, "hparams": {key: given}}]})
    assert msg.startswith(f"edits[0].hparams.{key}: hyperparameter '{key}'") and re.search(match, msg), msg


def test_file_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("edits:\n  - method: rmu\n    hparams: {steps: abc}\n")
    with pytest.raises(UserError, match=r"^config bad\.yaml: edits\[0\]\.hparams\.steps: "):
        load_config(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("edits: [\n")
    with pytest.raises(UserError, match=r"^cannot read config .*broken\.yaml"):
        load_config(broken)
    with pytest.raises(UserError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_old_flat_form_maps_onto_the_schema():
    cfg = load_config({"method": "srmu", "model": "synthetic", "data": "synthetic", "hparams": {"steps": "7"}})
    assert cfg.model.source == "synthetic" and cfg.data.spec == "synthetic"
    assert [(e.method, e.hparams) for e in cfg.edits] == [("srmu", {"steps": 7})]  # typed by make_hparams
    # the Export tab's old form: the stack wins over method/hparams (the selected edit), history ignored
    old = {"model": "default", "data": "builtin:demo", "method": "mrp", "hparams": {"k": 2},
           "stack": [{"method": "rmu", "hparams": {"steps": 3}}, {"method": "mrp", "hparams": {"k": 2}}],
           "history": [{"action": "load_model"}]}
    assert [e.method for e in load_config(old).edits] == ["rmu", "mrp"]
    # hparams without a method: `run --method X --config F` names it
    assert load_config({"hparams": {"steps": 2}}, method="rmu").edits[0].hparams == {"steps": 2}


def test_to_dict_round_trips_through_yaml_and_json(tmp_path):
    cfg = load_config({
        "seed": 3, "model": {"source": "synthetic", "dtype": "bfloat16", "device": "cpu"}, "data": "synthetic",
        "edits": [{"method": "rmu", "hparams": {"steps": 4, "lr": 1e-3}},
                  {"method": "mrp", "hparams": {"layers": [1, 2], "k": 2}, "data": "synthetic:0.2"}],
        "evaluation": {"letter": False, "relearn": {"steps": 5}},
        "chat": [{"prompt": PROMPT, "edit": 0}], "analysis": {"enabled": True, "layers": [0, 1]}})
    assert isinstance(cfg, Config) and load_config(cfg.to_dict()) == cfg
    (tmp_path / "c.yaml").write_text(cfg.to_yaml())
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    assert load_config(tmp_path / "c.yaml") == cfg == load_config(tmp_path / "c.json")


# ---- run --config -------------------------------------------------------------------------------
def _run(tmp_path, name: str, *argv: str) -> dict:
    out = tmp_path / name
    assert main(["run", "--device", "cpu", "--out", str(out), *argv]) == 0
    return json.loads((out / "metrics.json").read_text())


def test_run_config_equals_flags_and_repeats_exactly(tiny_model_path, tmp_path):
    flags = _run(tmp_path, "flags", "--model", "synthetic", "--data", "synthetic", "--method", "rmu",
                 "--set", "steps=6", "--set", "alpha=50", "--no-letter")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"source": "synthetic", "device": "cpu"}, "data": "synthetic",
                                   "edits": [{"method": "rmu", "hparams": {"steps": 6, "alpha": 50}}],
                                   "evaluation": {"letter": False}}))
    first = _run(tmp_path, "cfg1", "--config", str(cfg))
    second = _run(tmp_path, "cfg2", "--config", str(cfg))
    # the config each run writes replays it too (every hyperparameter explicit)
    written = _run(tmp_path, "cfg3", "--config", str(tmp_path / "flags" / "config.yaml"))
    for m in (first, second, written):
        assert metrics_of(m["before"]) == metrics_of(flags["before"])
        assert metrics_of(m["after"]) == metrics_of(flags["after"])
        assert m["hparams"] == flags["hparams"]
    assert flags["after"]["forget_gold_logprob"] != flags["before"]["forget_gold_logprob"]  # the edit did act
    # the old flat form still runs, with --set on top of its hparams
    flat = tmp_path / "flat.yaml"
    flat.write_text(yaml.safe_dump({"method": "rmu", "model": "synthetic", "data": "synthetic",
                                    "hparams": {"steps": 3, "alpha": 50}}))
    old = _run(tmp_path, "flat", "--config", str(flat), "--set", "steps=6", "--no-letter")
    assert metrics_of(old["after"]) == metrics_of(flags["after"])


def test_run_config_stack_fits_in_order_into_a_relocatable_folder(tiny_model_path, tmp_path):
    from unlearnviz.model import LoadOptions
    from unlearnviz.runs import load_stack
    from unlearnviz.session import STORE, Session

    raw = {"model": {"source": "synthetic", "device": "cpu"}, "data": "synthetic", "seed": 1,
           "edits": [{"method": "rmu", "hparams": FAST}, {"method": "srmu", "hparams": {"steps": 4}}],
           "evaluation": {"letter": False}, "chat": [{"prompt": PROMPT, "max_new_tokens": 6},
                                                     {"prompt": PROMPT, "max_new_tokens": 6, "edit": 0}]}
    (tmp_path / "stack.yaml").write_text(yaml.safe_dump(raw))
    m = _run(tmp_path, "stack", "--config", str(tmp_path / "stack.yaml"))
    out = tmp_path / "stack"
    assert [e["method"] for e in m["edits"]] == ["rmu", "srmu"] and m["method"] == "srmu"
    assert (out / "stack" / "00" / "manifest.json").exists() and (out / "stacked_on.txt").read_text() == "stack/00\n"
    assert [e["hparams"]["seed"] for e in m["edits"]] == [1, 1]  # the config's seed where the edit sets none
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(str(out), moved)
    lm = STORE.get(str(tiny_model_path), LoadOptions(device="cpu"))
    stack = load_stack(lm, moved)
    assert [e.method for e in stack.edits] == ["rmu", "srmu"]
    # the same config replayed in a session gives the run's numbers and chats, edit by edit
    session = replay(load_config(raw), Session())
    for i, rec in enumerate(m["edits"]):
        assert metrics_of(session.after[i]) == metrics_of(rec["after"])
    chats = json.loads((moved / "chats.json").read_text())
    assert [(c["original"], c["edited"]) for c in session.chats] == [(c["original"], c["edited"]) for c in chats]
    assert chats[0]["edit_index"] == 1 and chats[1]["edit_index"] == 0
    # a stack on top of the run (--stack-on) keeps growing the chain
    one = tmp_path / "one.yaml"
    one.write_text(yaml.safe_dump({"model": "synthetic", "data": "synthetic", "edits": [{"method": "rmu",
                                   "hparams": {"steps": 2}}], "evaluation": {"letter": False}}))
    top = _run(tmp_path, "top", "--config", str(one), "--stack-on", str(moved))
    assert metrics_of(top["before"]) == metrics_of(m["after"])  # "before" = the stack this run sat on
    assert [e.method for e in load_stack(lm, tmp_path / "top").edits] == ["rmu", "srmu", "rmu"]


def test_session_config_replays_to_the_same_metrics_and_chats(tiny_model_path):
    from unlearnviz.session import Session

    s = tiny_session()
    s.run_edit("rmu", FAST)
    answer = s.chat(PROMPT, 8)
    s.run_edit("mrp", {"steps": 2, "k": 2}, data_spec="synthetic:0.2")  # continual: another forget set
    s.evaluate()
    cfg = s.to_config()
    assert [e.method for e in cfg.edits] == ["rmu", "mrp"] and cfg.edits[1].data == "synthetic:0.2"
    assert cfg.chat[0].edit == 0 and cfg.evaluation.letter is False
    assert load_config(yaml.safe_load(cfg.to_yaml())) == cfg
    fresh = replay(cfg, Session())
    assert metrics_of(fresh.before) == metrics_of(s.before)
    for i in s.after:
        assert metrics_of(fresh.after[i]) == metrics_of(s.after[i])
    assert fresh.chats[0]["original"] == answer["original"] and fresh.chats[0]["edited"] == answer["edited"]
    assert fresh.to_config() == cfg


def test_run_config_errors_are_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: synthetic\ndata: synthetic\nedits:\n  - method: rmu\n    hparams: {steps: -2}\n")
    assert main(["run", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: config bad.yaml: edits[0].hparams.steps: ")
    assert not (tmp_path / "o").exists()
    nodata = tmp_path / "nodata.yaml"
    nodata.write_text("edits: [{method: rmu}]\n")
    assert main(["run", "--config", str(nodata), "--out", str(tmp_path / "o")]) == 2
    assert "needs --method and --data" in capsys.readouterr().err


def test_sweep_reads_the_same_schema(tmp_path):
    from unlearnviz.runs import read_run_config

    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"model": "synthetic", "data": "synthetic",
                                                     "edits": [{"method": "srmu", "hparams": {"steps": 3}}]}))
    got = read_run_config(str(tmp_path / "s.yaml"))
    assert got["method"] == "srmu" and got["hparams"] == {"steps": 3} and got["model"] == "synthetic"
    (tmp_path / "two.yaml").write_text(yaml.safe_dump({"edits": [{"method": "rmu"}, {"method": "srmu"}]}))
    with pytest.raises(UserError, match="a sweep varies one edit"):
        read_run_config(str(tmp_path / "two.yaml"))
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"edits": [{"method": "rmu", "hparams": {"nope": 1}}]}))
    with pytest.raises(UserError, match=r"edits\[0\]\.hparams\.nope"):
        read_run_config(str(tmp_path / "bad.yaml"))
