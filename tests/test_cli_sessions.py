"""``python -m unlearnviz sessions list|export|delete --state-dir DIR`` (unlearnviz/cli/sessions.py)
on a state folder the registry wrote: the listing, an export that is a verified session bundle,
a delete; every bad input one line on stderr and exit 2, nothing written."""

from __future__ import annotations

import json

import pytest
from tiny_models import tiny_session

from unlearnviz.bundle import import_bundle, read_bundle
from unlearnviz.cli import main
from unlearnviz.registry import RegistrySettings, SessionRegistry
from unlearnviz.state_folder import saved_file, saved_info


@pytest.fixture(scope="module")
def state(tiny_model_path, tmp_path_factory):
    """A state folder holding two saved sessions (one with an edit and a chat, one with a chat)."""
    folder = tmp_path_factory.mktemp("state")
    reg = SessionRegistry(RegistrySettings(state_dir=folder))
    a, b = tiny_session(), tiny_session()
    a.run_edit("rmu", {"steps": 2}, evaluate=False)
    for s in (a, b):
        s.chat("The capital of Velmora is", 3)
        reg.add(s)
        assert reg.autosave(s)
    return folder, a, b


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_shows_every_saved_session(state, capsys):
    folder, a, b = state
    code, out, _ = run(capsys, "sessions", "list", "--state-dir", str(folder))
    rows = json.loads(out)["sessions"]
    assert code == 0 and [r["id"] for r in rows] == [b.sid, a.sid]  # most recently saved first
    assert rows[1]["edits"] == ["1. rmu"] and rows[1]["chats"] == 1 and rows[0]["edits"] == []
    assert all(r["model"] == a.lm.name and r["bytes"] > 0 and r["saved"] for r in rows)


def test_export_writes_a_verified_bundle(state, capsys, tmp_path):
    folder, a, _ = state
    out_zip = tmp_path / "a.zip"
    code, out, _ = run(capsys, "sessions", "export", a.sid, str(out_zip), "--state-dir", str(folder))
    assert code == 0 and json.loads(out)["exported"] == str(out_zip)
    assert read_bundle(out_zip).n_edits == 1  # an ordinary bundle, every checksum checked
    restored = import_bundle(out_zip, lm=a.lm)
    assert [e.label() for e in restored.stack.edits] == ["1. rmu"] and restored.chats == a.chats
    code, _, err = run(capsys, "sessions", "export", a.sid, str(out_zip), "--state-dir", str(folder))
    assert code == 2 and "exists" in err and err.count("\n") == 1


def test_delete_removes_one_session(tiny_model_path, tmp_path, capsys):
    reg = SessionRegistry(RegistrySettings(state_dir=tmp_path))
    s = tiny_session()
    s.chat("The capital of Velmora is", 3)
    reg.add(s)
    reg.autosave(s)
    code, out, _ = run(capsys, "sessions", "delete", s.sid, "--state-dir", str(tmp_path))
    assert code == 0 and json.loads(out)["deleted"] == s.sid and saved_file(tmp_path, s.sid) is None
    code, out, _ = run(capsys, "sessions", "list", "--state-dir", str(tmp_path))
    assert json.loads(out)["sessions"] == []
    code, _, err = run(capsys, "sessions", "delete", s.sid, "--state-dir", str(tmp_path))
    assert code == 2 and "no saved session" in err


@pytest.mark.parametrize("argv, message", [
    (["export", "../../etc/passwd", "x.zip"], "not a session id"),
    (["export", "a" * 20 + "\n", "x.zip"], "not a session id"),
    (["delete", "A" * 32], "no saved session"),
    (["export", "{sid}", "out.txt"], "a session bundle is a .zip file"),
    (["export", "{sid}", "no/such/folder/x.zip"], "is not a folder"),
])
def test_bad_input_is_one_line(state, capsys, tmp_path, monkeypatch, argv, message):
    folder, a, _ = state
    monkeypatch.chdir(tmp_path)
    argv = [x.replace("{sid}", a.sid) for x in argv]
    code, out, err = run(capsys, "sessions", *argv, "--state-dir", str(folder))
    assert code == 2 and message in err and err.startswith("error: ") and err.count("\n") == 1 and out == ""
    assert list(tmp_path.iterdir()) == []  # nothing written
    assert saved_info(folder, a.sid)["edits"] == ["1. rmu"]  # and nothing of the state folder touched


def test_a_folder_that_holds_no_sessions_is_refused(tmp_path, capsys):
    code, _, err = run(capsys, "sessions", "list", "--state-dir", str(tmp_path / "nowhere"))
    assert code == 2 and "no saved sessions there" in err
