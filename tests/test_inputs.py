"""The dashboard's input gate (unlearnviz.ui.inputs) and the strict checks beneath it (config.check_fields,
config.check_hparams): each finding of the fuzz round refused in one line naming the argument.

Fast: no server (tests/test_fuzz.py sends the same over HTTP), no model but the tiny one where a handler needs it.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import gradio as gr
import pytest

from unlearnviz.errors import UserError
from unlearnviz.ui import inputs


def refused(cls, **values) -> str:
    with pytest.raises(UserError) as info:
        inputs.check(cls, **values)
    return str(info.value)


# ---- silent coercion, refused ---------------------------------------------------------------------
@pytest.mark.parametrize("method, hparams, needle", [
    ("rmu", {"steps": True}, "steps: expected an integer, got True"),  # was: 1 step
    ("rmu", {"lr": True}, "lr: expected a number, got True"),  # was: the maximum 1.0
    ("rmu", {"anchor_first": [0]}, "anchor_first: expected true or false, got [0]"),  # was: True
    ("mrp", {"layers": [1.9]}, "layers: expected a list of integers, got [1.9]"),  # was: [1]
    ("rmu", {"steps": "1"}, "steps: expected an integer, got '1'"),  # was: parsed from text
    ("rmu", {"steps": 2.0}, "steps: expected an integer, got 2.0"),
    ("rmu", {"lr": math.nan}, "lr: expected a finite number, got nan"),
    ("rmu", {"seed": 2**70}, "seed: 1180591620717411303424 is above the maximum 2147483647"),  # was: overflow
    ("rmu", {"seed": -1}, "seed: -1 is below the minimum 0"),
    ("mrp", {"objective": 5}, "objective: expected a string, got int 5"),
    ("rmu", [1, 2], "must be a JSON object of name: value, got list"),
])
def test_api_hyperparameters_are_typed_as_json_types(method, hparams, needle):
    from unlearnviz.config import check_method_hparams

    with pytest.raises(UserError, match="hparams") as info:
        check_method_hparams(method, hparams)
    assert needle in str(info.value)


def test_well_typed_hyperparameters_pass_and_ranges_stay_with_make_hparams():
    from unlearnviz.config import check_method_hparams, parse_config

    check_method_hparams("rmu", {"steps": 5, "lr": 1, "anchor_first": False, "seed": 3})  # an int is a float
    check_method_hparams("mrp", {"layers": [1, 2], "objective": "bogus"})  # choices: make_hparams's message
    check_method_hparams("nope", {"steps": True})  # the fit names the unknown method
    # configs and the CLI's --set keep reading text, but seeds are bounded there too
    assert parse_config({"edits": [{"method": "rmu", "hparams": {"steps": "5"}}]}).edits[0].hparams == {"steps": 5}
    with pytest.raises(UserError, match=r"edits\[0\]\.hparams\.seed: .* out of range 0..2147483647"):
        parse_config({"edits": [{"method": "rmu", "hparams": {"seed": 2**70}}]})


@pytest.mark.parametrize("cls, values, needle", [
    (inputs.Chat, {"text": "hi", "n": 5.5, "temp": 0.0}, "n (max new tokens): expected an integer, got 5.5"),
    (inputs.Chat, {"text": "hi", "n": math.nan, "temp": 0.0}, "n (max new tokens): expected an integer, got nan"),
    (inputs.Chat, {"text": "hi", "n": True, "temp": 0.0}, "expected an integer, got True"),
    (inputs.Chat, {"text": "hi", "n": 8, "temp": math.inf}, "temp (temperature): expected a finite number"),
    (inputs.Chat, {"text": None, "n": 8, "temp": 0.0}, "text (prompt): must not be null"),
    (inputs.Chat, {"text": 5, "n": 8, "temp": 0.0}, "text (prompt): expected a string, got int 5"),
    (inputs.EditNumber, {"value": 1.5}, "value (edit number, from 1 (empty for none)): expected an integer, got 1.5"),
    (inputs.EditNumber, {"value": "2"}, "expected an integer, got '2'"),
    (inputs.Evaluate, {"with_letter": "false"}, "with_letter (also lettered A-D scoring): expected true or false"),
    (inputs.Evaluate, {"with_letter": 1}, "expected true or false, got 1"),
    (inputs.Relearn, {"n_steps": 10.5, "rate": 1e-3}, "n_steps (fine-tuning steps): expected an integer"),
    (inputs.LoadModel, {"source": "x" * (1 << 20), "dtype": "auto", "device": "cpu"},
     "source (model): 1,048,576 characters is over the limit of 1,024"),
    (inputs.LoadModel, {"source": "a\x00b", "dtype": "auto", "device": "cpu"}, "control character"),
    (inputs.LoadModel, {"source": "default", "dtype": "float8", "device": "cpu"}, "dtype: must be one of"),
    (inputs.LoadData, {"name": "y" * 300, "hf_id": "", "file": None}, "300 bytes long; the limit is 255"),
    (inputs.LoadData, {"name": 7, "hf_id": "", "file": None}, "name (built-in set): expected a string, got int 7"),
    (inputs.LoadData, {"name": ["a"], "hf_id": "", "file": None}, "expected a string, got list"),
    (inputs.LoadData, {"name": {"a": 1}, "hf_id": "", "file": None}, "expected a string, got dict"),
    (inputs.ExportName, {"label": "f" * 128}, "label (export name): 128 characters is over the limit of 100"),
    (inputs.ExportName, {"label": "fzx\n"}, "holds a control character ('\\n')"),
    (inputs.Sweep, {"methods": "rmu", "grid_text": "steps=1"}, "methods: expected a list of strings"),
    (inputs.Attacks, {"names": ["prompts"], "n_steps": 2**70, "n_items": 4}, "above the maximum"),
])
def test_api_arguments_refused_naming_the_argument(cls, values, needle):
    message = refused(cls, **values)
    assert needle in message
    assert len(message) < 300 and "\n" not in message.replace("'\\n'", "")


def test_api_arguments_that_are_fine_pass_unchanged():
    assert inputs.check(inputs.Chat, text="hi", n=8, temp=0) == {"text": "hi", "n": 8, "temp": 0}
    assert inputs.check(inputs.EditNumber, value=None) == {"value": None}
    assert inputs.check(inputs.LoadData, name="builtin:demo?max_rows=10", hf_id="", file=None)["name"]


# ---- internal errors that reached the client ------------------------------------------------------
def test_internal_errors_carry_no_class_name_or_message():
    from unlearnviz.ui.common import readable

    def crash():
        raise RuntimeError("secret detail at 0x7f00deadbeef in /root/server")

    with pytest.raises(gr.Error) as info:
        readable(crash)()
    text = str(info.value.message)
    assert text.startswith("Internal error") and "still running" in text
    assert "RuntimeError" not in text and "0x7f" not in text and "/root" not in text


def test_names_the_file_system_cannot_look_up_are_refused_not_raised(tmp_path):
    from unlearnviz.ui.common import AppConfig, confine_data_spec, confine_model_source

    config = AppConfig(model_dirs=(tmp_path,), data_dirs=(tmp_path,))
    for bad in ("y" * 300, "z" * 5000, "a/" + "b" * 300):  # OSError: file name too long, before the fix
        assert confine_model_source(bad, config) == bad  # not a local path: a hub id, refused when loaded
        with pytest.raises(UserError, match="outside the folders"):
            confine_data_spec(bad, config)


def test_messages_and_answers_leave_out_the_servers_folders(tmp_path, monkeypatch):
    from gradio.utils import get_upload_folder

    monkeypatch.setenv("UNLEARNVIZ_EXPORTS", str(tmp_path / "exports"))
    upload = Path(get_upload_folder()).resolve()
    home, cwd = str(Path.home()), str(Path.cwd())
    text = (f"{upload}/3f2a9c/facts.jsonl: line 2: invalid JSON; cached at {home}/.cache/unlearnviz/models/x; "
            f"read {cwd}/data/a.csv; saved {tmp_path}/exports/my.zip")
    out = inputs.public(text)
    assert "facts.jsonl: line 2" in out and "models/x" in out and "data/a.csv" in out and "saved my.zip" in out
    assert str(upload) not in out and home not in out and cwd not in out
    assert inputs.public({"source": f"{home}/m", "n": [1, f"{cwd}/x"]}) == {"source": "~/m", "n": [1, "x"]}


def test_answers_name_a_model_folders_files_relative_to_it(tmp_path):
    """The import's answer named the checkpoint by the folder the server resolved it in (found by
    tests/test_soak.py): the operator's --model-dir and --data-dir are taken out like the others."""
    models = tmp_path / "srv" / "models"
    answer = {"source": f"{models}/ga", "note": f"read {tmp_path}/srv/data/facts.jsonl"}
    try:
        inputs.hide_folders([models, tmp_path / "srv" / "data"])
        assert inputs.public(answer) == {"source": "ga", "note": "read facts.jsonl"}
    finally:
        inputs.hide_folders([])
    assert inputs.public(answer)["source"] != "ga"  # not hidden unless the app names them


def test_deeply_nested_and_many_choice_rows_are_refused_by_line(tmp_path):
    from unlearnviz.data import load_data

    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 100_000 + "]" * 100_000 + "\n")  # RecursionError, before the fix
    with pytest.raises(UserError, match=r"deep\.jsonl: line 1: invalid JSON \(nested too deeply\)"):
        load_data(str(deep))
    cell = tmp_path / "cell.csv"
    cell.write_text('split,question,choices,answer\nforget,Q,"' + "[" * 50_000 + '",0\n')
    with pytest.raises(UserError, match=r"line 2: 'choices' is nested too deeply"):
        load_data(str(cell))
    many = tmp_path / "many.jsonl"
    many.write_text(json.dumps({"split": "forget", "question": "Q is", "choices": [f"c{i}" for i in range(5000)],
                                "answer": 0}) + "\n")
    with pytest.raises(UserError, match=r"'choices' has 5,000 options; the limit is 26"):
        load_data(str(many))


def test_a_temperature_too_small_to_sample_is_refused(tiny_lm):
    from unlearnviz.session import Session

    s = Session(lm=tiny_lm)
    with pytest.raises(UserError, match="too small to sample with: use 0 .greedy. or at least 0.01"):
        s.chat("The capital of", 4, 1e-300)  # the logits divided by it overflowed, before the fix
    assert s.chat("The capital of", 4, 0.0)["original"] is not None


# ---- the lab model --------------------------------------------------------------------------------
def test_visitors_load_only_the_documented_lab_models():
    from unlearnviz.data.synthetic import model_dir
    from unlearnviz.ui.common import AppConfig, confine_model_source

    config = AppConfig()
    for fine in ("synthetic", "synthetic:0.1", "synthetic:0.3", "synthetic:0.0:0"):
        assert confine_model_source(fine, config) == fine
    for new in ("synthetic:0.1:4242", "synthetic:0.15", "synthetic:0.2:99999999999999999999"):
        with pytest.raises(UserError, match="not offered here.*for the operator"):
            confine_model_source(new, config)
    assert not model_dir(0.1, 4242).exists()  # refused before anything trained
    assert confine_model_source("synthetic:0.1:4242", AppConfig(default_model="synthetic:0.1:4242"))  # the operator's


# ---- export names ---------------------------------------------------------------------------------
def test_every_derived_export_name_is_checked_before_the_first_byte(tmp_path):
    from unlearnviz.ui.tab_export import DERIVED, export_targets

    with pytest.raises(UserError, match="invalid file name 'f{128}.zip'"):
        export_targets(tmp_path, "f" * 128, "edit")  # the folder's name is fine, its zip's is not
    with pytest.raises(UserError, match="invalid file name"):
        export_targets(tmp_path, "fzx\n", "edit")  # `$` matched before a trailing newline
    assert [p.name for p in export_targets(tmp_path, "ok", "edit")] == ["ok", "ok.zip"]
    assert all(export_targets(tmp_path, "f" * inputs.EXPORT_NAME_CHARS, kind) for kind in DERIVED)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_edit_export_leaves_nothing_behind(tiny_lm, tiny_data, tmp_path):
    from unlearnviz.ui.common import UISession
    from unlearnviz.ui.tab_export import export_edit_files

    s = UISession(lm=tiny_lm, data=tiny_data)
    s.run_edit("rmu", {"steps": 2}, evaluate=False)
    (tmp_path / "blocked.zip").mkdir()  # the zip cannot replace a folder: the last step fails
    with pytest.raises(OSError):
        export_edit_files(s, tmp_path / "blocked", tmp_path / "blocked.zip")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocked.zip"]  # no folder, no temporary
    export_edit_files(s, tmp_path / "fine", tmp_path / "fine.zip")
    assert (tmp_path / "fine" / "manifest.json").is_file() and (tmp_path / "fine.zip").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocked.zip", "fine", "fine.zip"]


# ---- what Gradio does before a handler ------------------------------------------------------------
@pytest.fixture(scope="module")
def app():
    from unlearnviz.ui.app import build_app

    return build_app()


def _fn(app, api_name: str):
    return next(f for f in app.fns.values() if f.api_name == api_name)


@pytest.mark.parametrize("api, data, needle", [
    ("chat", [None, "hi"], "this call needs 4 argument(s)"),  # was: the handler's and components' names
    ("chat", [None, 5, 8, 0.0], "Prompt: expected a string, got int 5"),
    ("load_model", [None, "default", "float8", "cpu"], "dtype: 'float8' is not one of auto"),
    ("load_model", [None, "default", "x" * 10_000, "cpu"], "(10,002 characters)"),
    ("sweep", [None, 5, "steps=1"], "methods: expected a list of choices, got int 5"),
    ("load_data", [None, "synthetic", "", {"path": "/etc/passwd"}], "expected an uploaded file"),
    ("load_data", [None, "synthetic", "", 5], "expected an uploaded file"),
])
def test_gradio_refuses_arguments_in_one_line(app, api, data, needle):
    with pytest.raises(gr.Error) as info:
        asyncio.run(app.preprocess_data(_fn(app, api), data, None))
    message = str(info.value.message)
    assert needle in message and "\n" not in message and "on_" not in message and "0x" not in message


def test_numbers_reach_the_handler_as_sent(app):
    """Gradio's Number(precision=0) rounded 1.5 to 2 (/select_edit(1.5) selected edit 2), and a
    slider's bounds check let NaN through; now the handler's check sees what was sent."""
    got = asyncio.run(app.preprocess_data(_fn(app, "select_edit"), [None, 1.5], None))
    assert got[-1] == 1.5
    got = asyncio.run(app.preprocess_data(_fn(app, "chat"), [None, "hi", math.nan, True], None))
    assert math.isnan(got[2]) and got[3] is True


def test_a_dropdown_checks_the_choices_the_session_was_sent():
    """A dropdown whose choices an event updated (the saved-sessions picker): the session's copy
    of its choices decides, as in Gradio's own check; a value off that list is still refused."""
    from gradio.state_holder import SessionState

    from unlearnviz.ui.inputs import harden

    with gr.Blocks() as demo:
        picker = gr.Dropdown([], label="Your sessions", interactive=True)
        out = gr.Textbox()
        picker.change(lambda v: v, picker, out, api_name="pick")
    harden(demo)
    fn = _fn(demo, "pick")
    state = SessionState(demo)
    state[picker._id] = gr.Dropdown(["abc"], label="Your sessions", interactive=True)  # as an update leaves it
    assert asyncio.run(demo.preprocess_data(fn, ["abc"], state)) == ["abc"]
    with pytest.raises(gr.Error, match="'abc' is not one of"):
        asyncio.run(demo.preprocess_data(fn, ["abc"], None))  # a session never sent that choice
    with pytest.raises(gr.Error, match="'xyz' is not one of abc"):
        asyncio.run(demo.preprocess_data(fn, ["xyz"], state))
