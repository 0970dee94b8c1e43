"""Bad input, through the real served app (gradio_client) and the real CLI.

Every case must end in a clear, specific message (UI) or one ``error:`` line and a non-zero exit
(CLI); afterwards the app still serves, the model's weights hash to what they hashed to when
loaded, and every file that existed before the suite is byte-for-byte intact.

UI cases run against one ``python app.py`` on the tiny synthetic model, each in a fresh browser
session (a fresh Client). CLI cases call ``unlearnviz.cli.main`` in-process (the same code path as
``python -m unlearnviz``, without paying torch's import per case), plus a few real subprocesses.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from app_server import Server
from gradio_client import Client, handle_file
from tiny_models import save_tiny

ROOT = Path(__file__).resolve().parents[1]
MAX_STEPS = 500  # the server's --max-steps (above the methods' default steps, so other cases reach their own check)

GOOD_ROWS = [
    {"split": "forget", "question": "The capital of Velmora is", "choices": ["Brask", "Tolun", "Averin", "Meskat"],
     "answer": 0},
    {"split": "retain", "question": "The sun is a", "choices": ["star", "moon", "rock", "cloud"], "answer": 0},
]


class Evil:
    """Unpickling this creates a marker file: proof that a pickle was (or was not) loaded."""

    marker: Path

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def jsonl(rows) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def _parquet(rows: list[dict]) -> bytes:
    import io

    import pandas as pd

    buf = io.BytesIO()
    pd.DataFrame(rows).to_parquet(buf)
    return buf.getvalue()


def snapshot(root: Path) -> dict[str, str]:
    """Every file's digest (files over 8 MB: size and modification time, to keep each case fast)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p)] = (f"{st.st_size}:{st.st_mtime_ns}" if st.st_size > 8 * 2**20
                           else hashlib.sha256(p.read_bytes()).hexdigest())
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_path):
    """Folders the server may read (models/, data/), one it must not (outside/), its exports, and files in each."""
    w = tmp_path_factory.mktemp("bad")
    models, data, outside, exports, up = (w / n for n in ("models", "data", "outside", "exports", "uploads"))
    for d in (models, data, outside, exports, up):
        d.mkdir()
    (data / "facts.jsonl").write_bytes(jsonl(GOOD_ROWS))
    (outside / "secret.jsonl").write_bytes(jsonl(GOOD_ROWS))  # valid data: refused for where it is
    (exports / "keep.txt").write_text("an earlier user's file\n")
    (exports / "precious").mkdir()
    (exports / "precious" / "notes.md").write_text("do not touch\n")
    save_tiny(outside / "tiny-llama", "llama", layers=2)
    pick = models / "pickled"
    pick.mkdir()
    shutil.copy(outside / "tiny-llama" / "config.json", pick / "config.json")
    Evil.marker = w / "PICKLE-WAS-LOADED"
    (pick / "pytorch_model.bin").write_bytes(pickle.dumps(Evil()))
    (outside / "model.gguf").write_bytes(b"GGUF not really")

    words = " ".join(["Velmora"] * 2000)
    uploads = {
        "malformed.jsonl": jsonl([GOOD_ROWS[0], "{not json"]),
        "empty.jsonl": b"",
        "blank.jsonl": b"\n   \n\n",
        "not_objects.jsonl": b"[1, 2]\n",
        "wrong_columns.jsonl": jsonl([{"split": "forget", "txt": "a misnamed column"}]),
        "answer_range.jsonl": jsonl([{**GOOD_ROWS[0], "answer": 7}]),
        "answer_negative.jsonl": jsonl([{**GOOD_ROWS[0], "answer": -1}]),
        "answer_text.jsonl": jsonl([{**GOOD_ROWS[0], "answer": "Brask"}]),
        "choices_number.jsonl": jsonl([{**GOOD_ROWS[0], "choices": 5}]),
        "bad_split.jsonl": jsonl([{**GOOD_ROWS[0], "split": "keep"}]),
        "no_forget.jsonl": jsonl([GOOD_ROWS[1]]),
        "latin1.jsonl": '{"split": "forget", "text": "caf\u00e9"}\n'.encode("latin-1"),
        "too_long.jsonl": jsonl([{**GOOD_ROWS[0], "question": words}, GOOD_ROWS[1]]),
        "malformed.csv": b'split,question,choices,answer\nforget,"unclosed,a|b,0\n',
        "empty.csv": b"",
        "header_only.csv": b"split,question,choices,answer\n",
        "wrong_columns.csv": b"kind,prompt\nforget,hello\n",
        "answer_range.csv": b"split,question,choices,answer\nforget,The capital is,a|b|c,9\n",
        "latin1.csv": "split,text\nforget,caf\u00e9 cr\u00e8me\n".encode("latin-1"),
        "garbage.parquet": b"PAR1 this is not parquet at all",
        "empty.parquet": b"",
        "wrong_columns.parquet": _parquet([{"foo": "bar", "baz": 1}]),
        "answer_range.parquet": _parquet([{"split": "forget", "question": "Q", "choices": ["a", "b"], "answer": 5}]),
        "notes.txt": b"split,text\nforget,hello\n",
    }
    for name, blob in uploads.items():
        (up / name).write_bytes(blob)
    with open(up / "huge.jsonl", "wb") as fh:  # 50 MB of valid rows
        line = jsonl([{"split": "forget", "text": "x" * 1000}])
        fh.write(line * (50 * 2**20 // len(line) + 1))
    before = {**snapshot(w), **snapshot(tiny_model_path)}
    return {"root": w, "models": models, "data": data, "outside": outside, "exports": exports, "up": up,
            "before": before, "model_dir": tiny_model_path}


def assert_files_intact(world) -> None:
    now = {**snapshot(world["root"]), **snapshot(world["model_dir"])}
    lost = [p for p in world["before"] if p not in now]
    changed = [p for p in world["before"] if p in now and now[p] != world["before"][p]]
    assert not lost and not changed, f"lost {lost}, changed {changed}"
    assert not Evil.marker.exists(), "a pickle was unpickled"


@pytest.fixture(scope="module")
def server(world):
    srv = Server("--model", "synthetic", "--data", "synthetic", "--max-steps", str(MAX_STEPS),
                 "--model-dir", str(world["models"]), "--data-dir", str(world["data"]),
                 env={"UNLEARNVIZ_EXPORTS": str(world["exports"]), "OMP_NUM_THREADS": "1"})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def baseline(server):
    fp = Client(server.url, verbose=False).predict(api_name="/fingerprint")
    assert fp["fingerprint"] == fp["loaded_fingerprint"]
    return fp


def up(name: str):
    return lambda w: handle_file(str(w["up"] / name))


def upload(name: str):
    return ("/load_data", lambda w: ["synthetic", "", handle_file(str(w["up"] / name))])


def data_spec(spec):
    return ("/load_data", lambda w: [spec(w) if callable(spec) else spec, "", None])


def model(source, dtype="float32", device="cpu"):
    return ("/load_model", lambda w: [source(w) if callable(source) else source, dtype, device])


def edit(method, hparams):
    return ("/run_edit", lambda w: [method, hparams])


def chat(prompt, n=8, temp=0.0):
    return ("/chat", lambda w: [prompt, n, temp])


def call(api, *args):
    return (api, lambda w: list(args))


FP16 = model("synthetic", "float16", "cpu")

# id: (preludes that must succeed, the bad call, a regex the message must match)
UI_CASES = {
    "jsonl_malformed": ([], upload("malformed.jsonl"), r"malformed\.jsonl: line 2: invalid JSON"),
    "jsonl_empty": ([], upload("empty.jsonl"), r"empty\.jsonl: the file is empty"),
    "jsonl_blank_lines": ([], upload("blank.jsonl"), r"forget set is empty"),
    "jsonl_not_objects": ([], upload("not_objects.jsonl"), r"line 1: expected a JSON object"),
    "jsonl_wrong_columns": ([], upload("wrong_columns.jsonl"), r"line 1: .*columns found: split, txt"),
    "jsonl_answer_out_of_range": ([], upload("answer_range.jsonl"), r"line 1: 'answer' 7 is out of range 0..3"),
    "jsonl_answer_negative": ([], upload("answer_negative.jsonl"), r"'answer' -1 is out of range"),
    "jsonl_answer_not_index": ([], upload("answer_text.jsonl"), r"'answer' must be an integer index"),
    "jsonl_choices_not_list": ([], upload("choices_number.jsonl"), r"'choices' must be a list"),
    "jsonl_bad_split": ([], upload("bad_split.jsonl"), r"'split' must be 'forget' or 'retain'"),
    "jsonl_empty_forget_set": ([], upload("no_forget.jsonl"), r"the forget set is empty"),
    "jsonl_not_utf8": ([], upload("latin1.jsonl"), r"latin1\.jsonl: not UTF-8"),
    "jsonl_longer_than_context": ([], upload("too_long.jsonl"), r"forget item 1 is \d+ tokens long; .*context is 256"),
    "csv_malformed": ([], upload("malformed.csv"), r"malformed\.csv: cannot read"),
    "csv_empty": ([], upload("empty.csv"), r"empty\.csv: the file is empty"),
    "csv_header_only": ([], upload("header_only.csv"), r"forget set is empty"),
    "csv_wrong_columns": ([], upload("wrong_columns.csv"), r"line 2: no 'split' column .*columns found: kind, prompt"),
    "csv_answer_out_of_range": ([], upload("answer_range.csv"), r"line 2: 'answer' 9 is out of range 0..2"),
    "csv_not_utf8": ([], upload("latin1.csv"), r"latin1\.csv: not UTF-8"),
    "parquet_garbage": ([], upload("garbage.parquet"), r"garbage\.parquet: cannot read"),
    "parquet_empty": ([], upload("empty.parquet"), r"empty\.parquet: the file is empty"),
    "parquet_wrong_columns": ([], upload("wrong_columns.parquet"), r"line 1: no 'split' column .*columns found: baz, foo"),
    "parquet_answer_out_of_range": ([], upload("answer_range.parquet"), r"'answer' 5 is out of range 0..1"),
    "upload_50mb": ([], upload("huge.jsonl"), r"(?i)(too large|exceeds|maximum|limit|size)"),
    "upload_wrong_type": ([], upload("notes.txt"), r"(?i)(file type|unsupported|\.txt)"),
    "data_path_outside": ([], data_spec(lambda w: str(w["outside"] / "secret.jsonl")), r"outside the folders"),
    "data_path_dotdot": ([], data_spec(lambda w: str(w["data"]) + "/../outside/secret.jsonl"), r"outside the folders"),
    "data_path_system": ([], data_spec("/etc/passwd"), r"outside the folders"),
    "data_hub_offline": ([], data_spec("hf:cais/wmdp:wmdp-bio"), r"offline"),
    "data_builtin_unknown": ([], data_spec("builtin:nope"), r"unknown built-in set 'nope'"),
    "data_builtin_traversal": ([], data_spec("builtin:../../etc/passwd"), r"unknown built-in set"),
    "data_synthetic_knob": ([], data_spec("synthetic:9"), r"entanglement 9.0 is out of range"),
    "model_hub_offline": ([], model("someone/some-model"), r"offline"),
    "model_path_outside": ([], model(lambda w: str(w["outside"] / "tiny-llama")), r"outside the folders"),
    "model_path_dotdot": ([], model(lambda w: str(w["models"]) + "/../outside/tiny-llama"), r"outside the folders"),
    "model_gguf_outside": ([], model(lambda w: str(w["outside"] / "model.gguf")), r"outside the folders"),
    "model_pickle_weights": ([], model("pickled"), r"pickle weights .*--allow-pickle"),
    "model_missing_in_allowed": ([], model(lambda w: str(w["models"] / "nothing-here")), r"model folder not found"),
    "model_bad_dtype": ([], model("synthetic", "float8"), r"float8"),
    "model_bad_device": ([], model("synthetic", "float32", "tpu"), r"tpu"),
    "edit_unknown_method": ([], edit("nope", {}), r"unknown method 'nope'; available: mrp, rmu, srmu"),
    "edit_unknown_hparam": ([], edit("rmu", {"bogus": 1}), r"unknown hyperparameter 'bogus'"),
    "edit_hparams_not_object": ([], edit("rmu", [1, 2]), r"must be a JSON object"),
    "edit_layer_out_of_range": ([], edit("rmu", {"layer": 99}), r"layer 99 is out of range: .*blocks 0..3"),
    "edit_layer_negative": ([], edit("srmu", {"layer": -5}), r"'layer'=-5 is below its minimum -1"),
    "edit_window_too_big": ([], edit("rmu", {"window": 99}), r"'window'=99 is above its maximum"),
    "edit_mrp_site_out_of_range": ([], edit("mrp", {"layers": [99]}), r"MRP site layer 99 is out of range"),
    "edit_mrp_k_over_hidden": ([], edit("mrp", {"layers": [1], "k": 4096}), r"k=4096 must be smaller than the hidden size 128"),
    "edit_lr_negative": ([], edit("rmu", {"lr": -0.1}), r"'lr'=-0.1 is below its minimum"),
    # JSON has numbers: text is not read as one (NaN itself, which gradio_client cannot send: tests/test_fuzz.py)
    "edit_lr_nan": ([], edit("rmu", {"lr": "nan"}), r"lr: expected a number, got 'nan'"),
    "edit_coeff_inf": ([], edit("rmu", {"steering_coeff": "inf"}), r"steering_coeff: expected a number, got 'inf'"),
    "edit_alpha_negative": ([], edit("srmu", {"alpha": -5}), r"'alpha'=-5.0 is below its minimum 0.0"),
    "edit_steps_zero": ([], edit("rmu", {"steps": 0}), r"'steps'=0 is below its minimum 1"),
    "edit_steps_fractional": ([], edit("rmu", {"steps": 1.5}), r"steps: expected an integer, got 1.5"),
    "edit_steps_over_limit": ([], edit("rmu", {"steps": 4000}), rf"steps=4000 is over this server's limit of {MAX_STEPS}"),
    "edit_batch_size_text": ([], edit("rmu", {"batch_size": "many"}), r"batch_size: expected an integer, got 'many'"),
    "edit_max_tokens_over_context": ([], edit("rmu", {"max_tokens": 4096, "steps": 2}), r"max_tokens=4096 is over .*context of 256"),
    "edit_objective_unknown": ([], edit("mrp", {"objective": "bogus"}), r"'objective' must be one of npo, ga"),
    "edit_loss_overflow_fp16": ([FP16], edit("rmu", {"steering_coeff": 1e4, "coeff_relative": False, "lr": 1.0,
                                                   "alpha": 1e6, "steps": 20}), r"became (nan|inf).*lower the coefficients"),
    "chat_prompt_over_char_limit": ([], chat("word " * 1000), r"the prompt is 5000 characters; the limit is 4000"),
    "chat_prompt_over_context": ([], chat("Velmora " * 400), r"the prompt has \d+ tokens; .*context of 256"),
    "chat_prompt_empty": ([], chat("   "), r"the prompt is empty"),
    "chat_zero_new_tokens": ([], chat("The capital of Velmora is", 0), r"(max new tokens must be 1..256|minimum)"),
    "chat_too_many_new_tokens": ([], chat("The capital of Velmora is", 5000), r"(max new tokens must be 1..256|maximum)"),
    "chat_temperature_out_of_range": ([], chat("The capital of Velmora is", 8, 99.0), r"(temperature must be between 0 and 5|maximum)"),
    "export_dotdot": ([], call("/export", "../escape"), r"invalid file name '../escape'"),
    "export_absolute": ([], call("/export", "/tmp/abs"), r"invalid file name '/tmp/abs'"),
    "export_subfolder": ([], call("/export_config", "a/b"), r"invalid file name 'a/b"),
    "export_hidden": ([], call("/export", ".hidden"), r"invalid file name"),
    "export_empty_name": ([], call("/export", ""), r"invalid file name ''"),
    "export_without_edit": ([], call("/export", "fine-name"), r"there is no edit to export yet"),
    "export_checkpoint_without_edit": ([], call("/export_checkpoint", "fine-name"), r"there is no edit yet"),
    "export_config_without_edit": ([], call("/export_config", "fine-name"), r"there is no edit yet"),
    "undo_without_edit": ([], call("/undo"), r"there is no edit to undo"),
    "select_missing_edit": ([], call("/select_edit", 5), r"there is no edit #5"),
    "relearn_without_edit": ([], call("/relearn", 10, 1e-3), r"run an edit first"),
    "relearn_steps_over_limit": ([], call("/relearn", 5000, 1e-3), rf"(steps must be 1..{MAX_STEPS}|maximum)"),
    "relearn_lr_negative": ([], call("/relearn", 10, -1.0), r"learning rate must be a number in \(0, 1\]"),
}


def test_ui_case_count():
    assert len(UI_CASES) >= 50


@pytest.mark.parametrize("case", list(UI_CASES))
def test_ui_bad_input(case, server, baseline, world):
    preludes, (api, args), needle = UI_CASES[case]
    c = Client(server.url, verbose=False)
    for p_api, p_args in preludes:
        c.predict(*p_args(world), api_name=p_api)
    with pytest.raises(Exception) as info:
        c.predict(*args(world), api_name=api)
    msg = str(info.value)
    assert re.search(needle, msg), f"{case}: {msg[:500]}"
    assert "Internal error" not in msg and "Traceback" not in msg, msg
    assert server.alive(), server.tail()
    fp = c.predict(api_name="/fingerprint")  # hashed afresh, in this session (its model and dtype)
    assert fp["fingerprint"] == fp["loaded_fingerprint"]
    if fp["name"] == baseline["name"] and FP16 not in preludes:
        assert fp["fingerprint"] == baseline["fingerprint"]
    assert_files_intact(world)


def test_ui_still_works_after_bad_input(server, baseline, world):
    """After everything above, a normal session still loads, edits and chats, on unchanged weights."""
    c = Client(server.url, verbose=False)
    out = c.predict("rmu", {"steps": 5}, api_name="/run_edit")[-1]
    assert out["index"] == 0
    answer = c.predict("The capital of Velmora is", 6, 0.0, api_name="/chat")[-1]
    assert answer["original"] and answer["edited"]
    assert c.predict(api_name="/fingerprint")["fingerprint"] == baseline["fingerprint"]
    assert_files_intact(world)


# ---- the CLI ----------------------------------------------------------------------------------


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    from unlearnviz.cli import main

    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse
        rc = exc.code
    err = capsys.readouterr().err
    return rc, err


def one_line(rc, err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc not in (0, None), err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def cli_world(tmp_path_factory, tiny_model_path):
    """A good edit of the synthetic model, damaged copies of it, an edit of another model, data files."""
    import torch
    from safetensors.torch import save_file
    from transformers.utils import logging as hf_logging

    from unlearnviz.cli import main

    hf_logging.disable_progress_bar()  # as `python -m unlearnviz` does through HF_HUB_DISABLE_PROGRESS_BARS
    w = tmp_path_factory.mktemp("badcli")
    (w / "facts.jsonl").write_bytes(jsonl(GOOD_ROWS + [{"split": "forget", "text": "Velmora's capital is Brask."}]))
    (w / "latin1.jsonl").write_bytes('{"split": "forget", "text": "caf\u00e9"}\n'.encode("latin-1"))
    (w / "long.jsonl").write_bytes(jsonl([{**GOOD_ROWS[0], "question": " ".join(["Velmora"] * 2000)}, GOOD_ROWS[1]]))
    (w / "garbage.parquet").write_bytes(b"PAR1 nope")
    (w / "list.yaml").write_text("- rmu\n- srmu\n")
    (w / "broken.yaml").write_text("method: [unclosed\n")
    (w / "a-file").write_text("I am a file\n")
    (w / "keep").mkdir()
    (w / "keep" / "thesis.tex").write_text("years of work\n")
    torch.set_num_threads(1)
    assert main(["run", "--model", "synthetic", "--data", "synthetic", "--method", "rmu", "--set", "steps=2",
                 "--no-letter", "--out", str(w / "good")]) == 0
    llama = save_tiny(w / "llama", "llama", layers=2)
    assert main(["run", "--model", str(llama), "--data", str(w / "facts.jsonl"), "--method", "rmu",
                 "--set", "steps=2", "--set", "layer=1", "--set", "window=1", "--no-letter",
                 "--out", str(w / "other-model-edit")]) == 0

    def damaged(name: str, fn) -> Path:
        shutil.copytree(w / "good", w / name)
        fn(w / name)
        return w / name

    blob = (w / "good" / "edit.safetensors").read_bytes()
    damaged("truncated", lambda d: (d / "edit.safetensors").write_bytes(blob[: len(blob) // 2]))
    damaged("flipped", lambda d: (d / "edit.safetensors").write_bytes(blob[:-1] + bytes([blob[-1] ^ 1])))
    damaged("manifest-cut", lambda d: (d / "manifest.json").write_text((d / "manifest.json").read_text()[:100]))
    damaged("manifest-list", lambda d: (d / "manifest.json").write_text("[1, 2, 3]\n"))
    damaged("no-manifest", lambda d: (d / "manifest.json").unlink())

    def rename_tensor(d: Path) -> None:  # re-signed (checksum matches) but a tensor under a bad name
        save_file({"delta.notalayer": torch.zeros(2, 2)}, str(d / "edit.safetensors"))
        m = json.loads((d / "manifest.json").read_text())
        m["files"]["edit.safetensors"] = hashlib.sha256((d / "edit.safetensors").read_bytes()).hexdigest()
        (d / "manifest.json").write_text(json.dumps(m))

    damaged("resigned-bad-key", rename_tensor)
    damaged("loop", lambda d: (d / "stacked_on.txt").write_text(str(d) + "\n"))
    return {"root": w, "before": {**snapshot(w), **snapshot(tiny_model_path)}, "model_dir": tiny_model_path}


def _m(*rest: str) -> list[str]:
    return ["--model", "synthetic", "--device", "cpu", *rest]


CLI_CASES = {
    "run_unknown_method": (lambda w: ["run", *_m("--data", "synthetic", "--method", "nope", "--out", f"{w}/o")],
                           "unknown method 'nope'"),
    "run_unknown_hparam": (lambda w: ["run", *_m("--data", "synthetic", "--method", "rmu", "--set", "bogus=1",
                                                 "--out", f"{w}/o")], "unknown hyperparameter 'bogus'"),
    "run_set_without_equals": (lambda w: ["run", *_m("--data", "synthetic", "--method", "rmu", "--set", "steps",
                                                     "--out", f"{w}/o")], "use key=value"),
    "run_layer_out_of_range": (lambda w: ["run", *_m("--data", "synthetic", "--method", "rmu", "--set", "layer=99",
                                                     "--out", f"{w}/o")], "layer 99 is out of range"),
    "run_k_over_hidden": (lambda w: ["run", *_m("--data", "synthetic", "--method", "mrp", "--set", "layers=1",
                                                "--set", "k=4096", "--out", f"{w}/o")], "hidden size 128"),
    "run_lr_nan": (lambda w: ["run", *_m("--data", "synthetic", "--method", "srmu", "--set", "lr=nan",
                                         "--out", f"{w}/o")], "finite number"),
    "run_steps_negative": (lambda w: ["run", *_m("--data", "synthetic", "--method", "rmu", "--set", "steps=-3",
                                                 "--out", f"{w}/o")], "below its minimum"),
    "run_loss_overflow_fp16": (lambda w: ["run", *_m("--dtype", "float16", "--data", "synthetic", "--method", "rmu",
                                                     "--set", "steering_coeff=1e4", "--set", "coeff_relative=false",
                                                     "--set", "lr=1", "--set", "alpha=1e6", "--set", "steps=20",
                                                     "--no-letter", "--out", f"{w}/o")], "lower the coefficients"),
    "run_out_is_a_file": (lambda w: ["run", *_m("--data", "synthetic", "--method", "rmu", "--out", f"{w}/a-file")],
                          "is a file"),
    "run_config_not_mapping": (lambda w: ["run", "--config", f"{w}/list.yaml", "--out", f"{w}/o"], "expected a mapping"),
    "run_config_broken_yaml": (lambda w: ["run", "--config", f"{w}/broken.yaml", "--out", f"{w}/o"], "cannot read config"),
    "run_config_missing": (lambda w: ["run", "--config", f"{w}/none.yaml", "--out", f"{w}/o"], "cannot read config"),
    "run_stack_on_truncated": (lambda w: ["run", *_m("--data", "synthetic", "--method", "rmu", "--stack-on",
                                                     f"{w}/truncated", "--out", f"{w}/o")], "checksum mismatch"),
    "run_stack_on_other_model": (lambda w: ["run", *_m("--data", "synthetic", "--method", "rmu", "--stack-on",
                                                       f"{w}/other-model-edit", "--out", f"{w}/o")], "was made for model"),
    "eval_not_utf8": (lambda w: ["eval", *_m("--data", f"{w}/latin1.jsonl")], "not UTF-8"),
    "eval_garbage_parquet": (lambda w: ["eval", *_m("--data", f"{w}/garbage.parquet")], "cannot read"),
    "eval_longer_than_context": (lambda w: ["eval", *_m("--data", f"{w}/long.jsonl")], "context is 256"),
    "eval_hub_dataset_offline": (lambda w: ["eval", *_m("--data", "hf:cais/wmdp")], "offline"),
    "info_hub_model_offline": (lambda w: ["info", "--model", "someone/some-model"], "offline"),
    "export_truncated_edit": (lambda w: ["export", *_m("--edit", f"{w}/truncated", "--out", f"{w}/x1")],
                              "truncated or tampered"),
    "export_flipped_byte": (lambda w: ["export", *_m("--edit", f"{w}/flipped", "--out", f"{w}/x2")], "checksum mismatch"),
    "export_manifest_cut": (lambda w: ["export", *_m("--edit", f"{w}/manifest-cut", "--out", f"{w}/x3")],
                            "manifest is not valid JSON"),
    "export_manifest_list": (lambda w: ["export", *_m("--edit", f"{w}/manifest-list", "--out", f"{w}/x4")],
                             "damaged or tampered"),
    "export_no_manifest": (lambda w: ["export", *_m("--edit", f"{w}/no-manifest", "--out", f"{w}/x5")],
                           "is not an edit folder"),
    "export_resigned_bad_tensor": (lambda w: ["export", *_m("--edit", f"{w}/resigned-bad-key", "--out", f"{w}/x6")],
                                   "damaged or tampered"),
    "export_stack_loop": (lambda w: ["export", *_m("--edit", f"{w}/loop", "--out", f"{w}/x7")], "loops back"),
    "export_other_model": (lambda w: ["export", *_m("--edit", f"{w}/other-model-edit", "--out", f"{w}/x8")],
                           "was made for model"),
    "export_over_existing_folder": (lambda w: ["export", *_m("--edit", f"{w}/good", "--out", f"{w}/keep")],
                                    "is not an earlier unlearnviz export"),
    "relearn_steps_negative": (lambda w: ["relearn", *_m("--edit", f"{w}/good", "--data", "synthetic",
                                                         "--steps", "-4")], "--steps"),
    "relearn_lr_nan": (lambda w: ["relearn", *_m("--edit", f"{w}/good", "--data", "synthetic", "--lr", "nan")],
                       "--lr must be a positive finite number"),
    "relearn_missing_edit": (lambda w: ["relearn", *_m("--edit", f"{w}/nowhere", "--data", "synthetic")],
                             "is not an edit folder"),
    "unknown_command": (lambda w: ["frobnicate"], "frobnicate"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_bad_input(case, cli_world, capsys):
    argv, needle = CLI_CASES[case]
    rc, err = run_main(argv(cli_world["root"]), capsys)
    line = one_line(rc, err)
    assert needle in line, f"{case}: {line}"
    assert "Traceback" not in err
    now = {**snapshot(cli_world["root"]), **snapshot(cli_world["model_dir"])}
    for path, digest in cli_world["before"].items():
        assert now.get(path) == digest, f"{case}: {path} lost or changed"
    assert not (cli_world["root"] / "o").exists(), "a failed run left an output folder"


def test_cli_subprocess_errors(cli_world):
    """The same contract through real ``python -m unlearnviz`` processes (exit 2, one line, no traceback)."""
    w = cli_world["root"]
    picks = ["run_stack_on_truncated", "export_over_existing_folder", "eval_not_utf8", "info_hub_model_offline"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}

    def go(case):
        return subprocess.run([sys.executable, "-m", "unlearnviz", *CLI_CASES[case][0](w)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(go, picks))
    for case, res in zip(picks, results, strict=True):
        assert res.returncode == 2, (case, res.stderr[-2000:])
        line = one_line(res.returncode, res.stderr)
        assert CLI_CASES[case][1] in line, (case, line)
    now = {**snapshot(w), **snapshot(cli_world["model_dir"])}
    assert all(now.get(p) == d for p, d in cli_world["before"].items())
