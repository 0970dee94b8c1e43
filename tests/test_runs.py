"""The run folder (unlearnviz.runs): a session with a stack of two edits, chats and a relearning
attack written by save_run and read back by every reader (metrics, config, the stack in order,
a stacked_on chain across folders, relearn.json and chats.json, the Session it restores); an
earlier run's files replaced; damaged folders one clear UserError. Tiny synthetic model throughout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tiny_models import tiny_session

from unlearnviz.config import load_config
from unlearnviz.errors import UserError
from unlearnviz.runs import (
    CHATS_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    RELEARN_FILE,
    STACK_DIR,
    STACKED_ON_FILE,
    load_stack,
    model_source_for,
    read_config_mapping,
    read_json,
    read_run,
    read_run_folder,
    relearn_result,
    save_run,
)

PROMPT = "The capital of Velmora is"


def metrics_of(m: dict | None) -> dict:
    """Everything but timings."""
    return {k: v for k, v in (m or {}).items() if not k.endswith("_s")}


def as_json(obj):
    """What a value reads back as from the folder's JSON files."""
    return json.loads(json.dumps(obj, default=float))


@pytest.fixture(scope="module")
def session(tiny_model_path):
    """Two edits (rmu, then srmu on top), evaluated; a chat on each; a relearning attack on the top one."""
    s = tiny_session()
    s.run_edit("rmu", {"steps": 6})
    s.run_edit("srmu", {"steps": 4})
    s.chat(PROMPT, 6)
    s.select(0)
    s.evaluate()
    s.chat(PROMPT, 6)
    s.select(None)
    s.run_relearn(steps=2, lr=1e-3, eval_every=1)
    return s


@pytest.fixture(scope="module")
def run(session, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("runs") / "run"
    return out, save_run(session, out, session.to_config(), wall_s=1.5)


def test_metrics_and_manifest_read_back(session, run):
    out, metrics = run
    manifest, saved = read_run_folder(out)
    assert saved == as_json(metrics)
    assert manifest["method"] == "srmu" and manifest["stack_index"] == 1  # the top of the stack
    assert [e["method"] for e in saved["edits"]] == ["rmu", "srmu"] and saved["method"] == "srmu"
    assert metrics_of(saved["original"]) == metrics_of(as_json(session.before))
    assert metrics_of(saved["before"]) == metrics_of(saved["original"])  # the run started from no edit
    assert metrics_of(saved["after"]) == metrics_of(as_json(session.after[1]))
    assert metrics_of(saved["edits"][0]["after"]) == metrics_of(as_json(session.after[0]))
    assert saved["wall_s"] == 1.5 and saved["data"] == session.data.name


def test_config_reads_back(session, run):
    out, _ = run
    cfg = load_config(out / CONFIG_FILE)
    assert cfg == session.to_config()
    assert [e.method for e in cfg.edits] == ["rmu", "srmu"]
    assert read_config_mapping(out) == cfg.to_dict()
    assert model_source_for(read_run_folder(out)[0], read_config_mapping(out)) == "synthetic"


def test_stack_in_order_and_relocatable(session, run, tmp_path):
    out, _ = run
    assert (out / STACKED_ON_FILE).read_text() == f"{STACK_DIR}/00\n"
    assert not (out / STACK_DIR / "00" / STACKED_ON_FILE).exists()  # the run sat on no earlier edit
    moved = tmp_path / "elsewhere"
    shutil.copytree(out, moved)
    stack = load_stack(session.lm, moved)
    assert [e.method for e in stack.edits] == ["rmu", "srmu"]
    assert stack.edits[1].hparams == session.stack.edits[1].hparams


def test_stacked_on_chain_across_folders(session, run, tmp_path):
    """A run of the top edit only, on top of another folder's edit (``run --stack-on``)."""
    out, _ = run
    top = tmp_path / "top"
    metrics = save_run(session, top, session.to_config(), first=1, stacked_on=out / STACK_DIR / "00")
    assert (top / STACKED_ON_FILE).read_text().strip() == str((out / STACK_DIR / "00").resolve())
    assert not (top / STACK_DIR).exists()
    assert [e.method for e in load_stack(session.lm, top).edits] == ["rmu", "srmu"]
    assert metrics_of(metrics["before"]) == metrics_of(session.after[0])  # before = the stack it sat on
    assert [e["method"] for e in metrics["edits"]] == ["srmu"]


def test_relearn_and_chats_read_back(session, run):
    out, _ = run
    records = read_run(out)
    assert records.chats == as_json(session.chats) and [c["edit_index"] for c in records.chats] == [1, 0]
    assert set(records.relearn) == {1} and records.relearn[1] == as_json(session.relearn[1])
    assert records.config == session.to_config() and records.metrics == read_json(out / METRICS_FILE)
    rel = read_json(out / RELEARN_FILE)
    assert relearn_result(rel, 1, out / RELEARN_FILE)["edited"] == as_json(session.relearn[1])["edited"]
    with pytest.raises(UserError, match="not a relearning result for this edit"):
        relearn_result(rel, 0, out / RELEARN_FILE)  # the attack was on the top edit only


def test_the_session_a_run_folder_restores(session, run):
    from unlearnviz.session.replay import session_from_run

    out, _ = run
    restored = session_from_run(read_run(out), session.lm, session.data, history=session.history[:2])
    assert [e.method for e in restored.stack.edits] == ["rmu", "srmu"]
    assert metrics_of(restored.before) == metrics_of(as_json(session.before))
    assert {i: metrics_of(m) for i, m in restored.after.items()} == \
        {i: metrics_of(as_json(m)) for i, m in session.after.items()}
    assert restored.chats == as_json(session.chats) and set(restored.relearn) == {1}


def test_a_new_run_replaces_the_old_runs_files(session, run, tmp_path):
    out, _ = run
    again = tmp_path / "again"
    shutil.copytree(out, again)
    save_run(session, again, session.to_config(), first=1)  # one edit, on nothing: no stack/, no chain
    assert not (again / STACK_DIR).exists() and not (again / STACKED_ON_FILE).exists()
    assert [e.method for e in load_stack(session.lm, again).edits] == ["srmu"]
    assert (again / CHATS_FILE).exists() and (again / RELEARN_FILE).exists()  # the session still has them
    with pytest.raises(UserError, match="nothing to save"):
        save_run(session, tmp_path / "none", session.to_config(), first=2)


def _damage(folder: Path, case: str) -> None:
    if case == "metrics_not_json":
        (folder / METRICS_FILE).write_text("{not json")
    elif case == "chats_not_a_list":
        (folder / CHATS_FILE).write_text('{"prompt": "x"}')
    elif case == "config_bad_key":
        (folder / CONFIG_FILE).write_text("modle: synthetic\n")
    elif case == "chain_loops":
        (folder / STACK_DIR / "00" / STACKED_ON_FILE).write_text("../..\n")  # back to the top edit
    elif case == "chain_broken":
        shutil.rmtree(folder / STACK_DIR / "00")
    elif case == "no_manifest":
        (folder / "manifest.json").unlink()


@pytest.mark.parametrize("case, reader, message", [
    ("metrics_not_json", "read_run", r"metrics\.json: not valid JSON \(damaged file\)"),
    ("chats_not_a_list", "read_run", r"chats\.json: expected a JSON list"),
    ("config_bad_key", "read_run", r"config config\.yaml: modle: unknown key"),
    ("chain_loops", "load_stack", r"stacked_on\.txt chain loops back"),
    ("chain_broken", "load_stack", r"is not an edit folder"),
    ("no_manifest", "read_run_folder", r"is not a run folder"),
])
def test_a_damaged_folder_is_one_clear_error(session, run, tmp_path, case, reader, message):
    folder = tmp_path / "run"
    shutil.copytree(run[0], folder)
    _damage(folder, case)
    read = {"read_run": read_run, "read_run_folder": read_run_folder,
            "load_stack": lambda f: load_stack(session.lm, f)}[reader]
    with pytest.raises(UserError, match=message) as exc:
        read(folder)
    assert "\n" not in str(exc.value)
