"""The session registry (unlearnviz/registry.py): ids that cannot name a file outside the state
folder; an autosave that writes when the content changed and only then; a fresh registry on the
same folder (a restart) restores edits, metrics, the redo list, chats and the selection; memory
holds at most ``max_live`` sessions, the rest on disk, one object per id; owners; a session whose
model folder is gone restores as one readable line; the folder is bounded, listed and deleted.
The folder keeps each edit once (content-addressed): a chat turn writes only the session's small
manifest, sessions holding the same edit share it, a delete collects what no session names, a
damaged edit is refused in one line, and a session saved by an older unlearnviz (a whole bundle)
still restores. Real tiny model and real bundles throughout."""

from __future__ import annotations

import copy
import gc
import json
import shutil

import pytest
import torch
from tiny_models import tiny_session

from unlearnviz.bundle import export_bundle, import_bundle, read_bundle
from unlearnviz.errors import UserError
from unlearnviz.registry import RegistrySettings, SessionRegistry
from unlearnviz.session import ModelStore
from unlearnviz.state_folder import (
    DATA_FOLDER,
    EDITS_FOLDER,
    bundle_path,
    check_id,
    delete_saved,
    export_saved,
    list_saved,
    load_saved,
    new_id,
    saved_info,
    sessions_dir,
    state_path,
)
from unlearnviz.ui.common import UISession

PROMPT = "The capital of Velmora is"


@pytest.fixture(scope="module")
def made(tiny_model_path):
    """Two RMU edits, each measured, the second undone (so on the redo list), one chat."""
    s = tiny_session()
    s.run_edit("rmu", {"steps": 2}, evaluate=False)
    s.run_edit("rmu", {"steps": 2, "steering_coeff": 3.0}, evaluate=True)
    s.chat(PROMPT, 4)
    s.undo()
    s.evaluate()
    return s


def fresh(s) -> UISession:
    """A copy to change (the model shared, read-only)."""
    u = UISession()
    u.adopt(s)
    return copy.deepcopy(u)


def chatted() -> UISession:
    """A cheap session worth saving: model, data, one chat turn."""
    u = UISession()
    u.adopt(tiny_session())
    u.chat(PROMPT, 3)
    return u


def registry(tmp_path, **kw) -> SessionRegistry:
    return SessionRegistry(RegistrySettings(state_dir=tmp_path, **kw), restore=lambda p: load_saved(p))


def stored(tmp_path, kind: str = EDITS_FOLDER) -> list:
    """The edit folders (or data files) the state folder holds, temporary ones aside."""
    folder = tmp_path / kind
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def same_tensors(a, b) -> bool:
    ta, tb = a.tensors(), b.tensors()
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_ids_are_random_and_cannot_escape(tmp_path):
    ids = {new_id() for _ in range(200)}
    assert len(ids) == 200 and all(len(i) == 32 and i.isalnum() for i in ids)
    for bad in ("../../etc/passwd", "a" * 15, "a" * 65, "abc/defghijklmnopq", "-" + "a" * 20, "a" * 20 + "\n",
                "a" * 20 + ".zip", "", None, 12345678901234567890, ["a" * 20]):
        with pytest.raises(UserError, match="not a session id"):
            check_id(bad)
        with pytest.raises(UserError):
            bundle_path(tmp_path, bad)
        with pytest.raises(UserError):
            state_path(tmp_path, bad)
    sid = new_id()
    assert bundle_path(tmp_path, sid).parent == sessions_dir(tmp_path) == state_path(tmp_path, sid).parent
    with pytest.raises(UserError):
        registry(tmp_path).get("../" + "a" * 20)


def test_autosave_writes_when_the_content_changed_and_only_then(made, tmp_path):
    reg = registry(tmp_path)
    s = fresh(made)
    sid = reg.add(s)
    assert s.sid == sid and reg.autosave(s) is True
    path = state_path(tmp_path, sid)
    stamp = path.stat().st_mtime_ns
    # what only reads the session writes nothing
    s.plan(), s.current_edit(), s.to_config(), s.conversation_turns(), s.prompt_match(PROMPT), s.data_summary()
    s.evaluate()  # measured already: the same metrics objects
    assert reg.autosave(s) is False and path.stat().st_mtime_ns == stamp
    for change in (lambda: s.select(0), lambda: s.chat("Tell me about the weather", 3), s.new_conversation,
                   s.redo, s.undo):
        change()
        assert reg.autosave(s) is True, change
        assert reg.autosave(s) is False
    assert [n for n in sessions_dir(tmp_path).iterdir() if n.name.startswith(".")] == []  # no temp file left behind
    info = saved_info(tmp_path, sid)
    assert info["chats"] == 2 and info["edits"] == ["1. rmu"] and info["undone"] == 1 and info["model"] == s.lm.name


def test_a_restart_restores_edits_metrics_redo_list_chats(made, tmp_path):
    s = fresh(made)
    s.select(0)
    reg = registry(tmp_path)
    sid = reg.add(s)
    assert reg.autosave(s)
    restarted = registry(tmp_path)  # a new process: nothing in memory
    r = restarted.get(sid)
    assert r is not s and r.sid == sid and r.lm.fingerprint(refresh=False) == s.lm.fingerprint(refresh=False)
    assert [e.label() for e in r.stack.edits] == [e.label() for e in s.stack.edits]
    assert all(same_tensors(a, b) for a, b in zip([*r.stack.edits, *(u["edit"] for u in r.undone)],
                                                   [*s.stack.edits, *(u["edit"] for u in s.undone)]))
    assert r.before == s.before and r.after == s.after and r.selected == 0
    assert r.chats == s.chats and r.conversation == s.conversation
    assert len(r.undone) == 1 and r.undone[0]["after"] == s.undone[0]["after"]
    assert restarted.get(sid) is r  # one object per id
    assert restarted.autosave(r) is False  # restored as it was saved: nothing new to write
    r.redo()
    assert r.after[1] == s.undone[0]["after"] and [e.label() for e in r.stack.edits] == ["1. rmu", "2. rmu"]
    edits = (tmp_path / EDITS_FOLDER).stat().st_mtime_ns
    assert restarted.autosave(r) is True
    assert (tmp_path / EDITS_FOLDER).stat().st_mtime_ns == edits  # restored edits are known by their keys


def test_memory_holds_max_live_the_rest_on_disk(made, tmp_path):
    reg = registry(tmp_path, max_live=2)
    a, b, c = fresh(made), chatted(), chatted()
    ids = [reg.add(x) for x in (a, b, c)]
    assert len(reg) == 0  # an id alone takes no memory slot
    assert reg.autosave(a)
    a.select(0)  # changed after its last save: saved as it leaves memory
    assert reg.autosave(b) and reg.autosave(c)
    assert len(reg) == 2 and ids[0] not in reg and ids[2] in reg
    manifest = json.loads(state_path(tmp_path, ids[0]).read_text())
    assert json.loads(manifest["members"]["results.json"])["selected"] == 0
    assert reg.get(ids[0]) is a  # a page still holds it: the same object, never a second copy
    assert len(reg) == 2 and ids[0] in reg and ids[1] not in reg  # back in, the least recently used out
    reg.autosave(b), reg.autosave(c)  # used again: a leaves memory
    assert ids[0] not in reg
    del a
    gc.collect()
    back = reg.get(ids[0])  # nobody holds it: restored from its bundle
    assert back.selected == 0 and [e.label() for e in back.stack.edits] == ["1. rmu"]


def test_without_a_state_folder_sessions_live_in_memory_only(tmp_path):
    reg = SessionRegistry(RegistrySettings(max_live=1))
    a, b = chatted(), chatted()
    ida, idb = reg.add(a), reg.add(b)
    assert reg.autosave(a) is False and reg.autosave(b) is False  # nothing written ...
    assert reg.get(ida) is a and reg.get(idb) is b  # ... but a reload finds them
    assert {r["id"] for r in reg.listing([ida, idb])} == {ida, idb}
    del a
    gc.collect()
    assert reg.get(ida) is None and len(reg) == 1  # left memory (max_live=1) and nobody holds it: gone


def test_a_session_is_its_owners(tmp_path):
    reg = registry(tmp_path)
    s = chatted()
    sid = reg.add(s, owner="alice")
    reg.autosave(s)
    assert reg.get(sid, "bob") is None and reg.get(sid) is None and reg.get(sid, "alice") is s
    restarted = registry(tmp_path)
    assert restarted.get(sid, "bob") is None
    assert restarted.get(sid, "alice").chats == s.chats
    assert [r["id"] for r in restarted.listing([], owner="alice")] == [sid]  # any browser of alice's login
    assert restarted.listing([sid], owner="bob") == [] and registry(tmp_path).listing([sid]) == []


def test_a_session_whose_model_is_gone_restores_as_one_line(tiny_model_path, tmp_path):
    folder = tmp_path / "models" / "mine"
    shutil.copytree(tiny_model_path, folder)
    s = UISession()
    s.load_model(str(folder), "float32", "cpu")
    s.load_data("synthetic")
    s.chat(PROMPT, 3)
    reg = SessionRegistry(RegistrySettings(state_dir=tmp_path / "state"),
                          restore=lambda p: load_saved(p, store=ModelStore()))  # a fresh process's store
    sid = reg.add(s)
    assert reg.autosave(s)
    shutil.rmtree(folder)
    restarted = SessionRegistry(RegistrySettings(state_dir=tmp_path / "state"),
                                restore=lambda p: load_saved(p, store=ModelStore()))
    with pytest.raises(UserError) as err:
        restarted.get(sid)
    text = str(err.value)
    assert "cannot be restored" in text and sid[:8] in text and "1 chat turn" in text
    assert "\n" not in text and "Traceback" not in text
    assert state_path(tmp_path / "state", sid).is_file()  # kept: the operator may put the model back
    shutil.copytree(tiny_model_path, folder)
    assert restarted.get(sid).chats == s.chats


def test_the_folder_is_bounded_listed_and_deleted(tmp_path):
    reg = registry(tmp_path, max_saved=2)
    sessions = [chatted() for _ in range(3)]
    ids = [reg.add(x) for x in sessions]
    for x in sessions:
        assert reg.autosave(x)
    listed = list_saved(tmp_path)
    assert [r["id"] for r in listed] == ids[:0:-1]  # the oldest went; newest first
    assert all(r["chats"] == 1 and r["bytes"] > 0 and r["model"] for r in listed)
    (sessions_dir(tmp_path) / f"{ids[2]}.json").unlink()  # killed between the two renames
    assert saved_info(tmp_path, ids[2])["model"] == sessions[2].lm.name  # read from the session's manifest
    state_path(tmp_path, ids[1]).write_bytes(b"not json")
    (sessions_dir(tmp_path) / f"{ids[1]}.json").unlink()
    assert saved_info(tmp_path, ids[1])["damaged"] is True  # listed, not a crash
    with pytest.raises(UserError, match="not valid JSON"):
        load_saved(state_path(tmp_path, ids[1]))
    assert delete_saved(tmp_path, ids[2]) is True and delete_saved(tmp_path, ids[2]) is False
    assert [r["id"] for r in list_saved(tmp_path)] == [ids[1]]
    assert registry(tmp_path).get(ids[2]) is None


def _files(tmp_path) -> dict:
    """Every file of the state folder: (inode, mtime, size) by path."""
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in tmp_path.rglob("*") if p.is_file()}


def test_a_chat_turn_writes_the_manifest_not_the_edits(made, tmp_path):
    reg = registry(tmp_path)
    s = fresh(made)  # one edit on the stack, one undone
    sid = reg.add(s)
    assert reg.autosave(s)
    edits = stored(tmp_path)
    assert len(edits) == 2 and len(stored(tmp_path, DATA_FOLDER)) == 1
    blobs = {p: v for p, v in _files(tmp_path).items() if EDITS_FOLDER in p.parts or DATA_FOLDER in p.parts}
    folders = {p: p.stat().st_mtime_ns for p in (tmp_path / EDITS_FOLDER, tmp_path / DATA_FOLDER)}
    whole = export_bundle(s, tmp_path.parent / f"{tmp_path.name}-whole.zip", include_undone=True).stat().st_size
    for turn in range(3):
        before = _files(tmp_path)
        s.chat(f"Tell me about day {turn}", 3)
        assert reg.autosave(s)
        after = _files(tmp_path)
        written = {p: v[2] for p, v in after.items() if before.get(p) != v}
        assert set(written) == {state_path(tmp_path, sid), sessions_dir(tmp_path) / f"{sid}.json"}, written
        assert sum(written.values()) < 16 * 2**10 < min(v[2] for p, v in blobs.items() if p.suffix == ".safetensors")
        assert sum(written.values()) * 20 < whole  # what the whole-bundle autosave wrote each turn
    assert {p: v for p, v in _files(tmp_path).items() if p in blobs} == blobs  # written once: same inode, mtime
    assert {p: p.stat().st_mtime_ns for p in folders} == folders  # not even a temporary copy made and dropped
    assert saved_info(tmp_path, sid)["chats"] == 4


def test_sessions_holding_the_same_edit_share_it_and_a_delete_collects_it(made, tmp_path):
    bundle = export_bundle(fresh(made), tmp_path.parent / f"{tmp_path.name}-shared.zip")
    a, b = UISession(), UISession()
    a.adopt(import_bundle(bundle))  # imported twice: two edit objects, one content
    b.adopt(import_bundle(bundle))
    assert a.stack.edits[0] is not b.stack.edits[0]
    reg = registry(tmp_path)
    ida, idb = reg.add(a), reg.add(b)
    assert reg.autosave(a) and reg.autosave(b)
    assert len(stored(tmp_path)) == 1 and len(stored(tmp_path, DATA_FOLDER)) == 1  # stored once
    c = chatted()  # a session of its own data and no edit
    reg.add(c)
    assert reg.autosave(c)
    assert delete_saved(tmp_path, ida) is True
    assert len(stored(tmp_path)) == 1  # b still names it
    del b
    gc.collect()
    r = registry(tmp_path).get(idb)  # a restart: b restored from the shared edit
    assert same_tensors(r.stack.edits[0], a.stack.edits[0]) and r.after == a.after
    assert delete_saved(tmp_path, idb) is True
    assert stored(tmp_path) == []  # no session names it now
    assert len(stored(tmp_path, DATA_FOLDER)) == 1 and registry(tmp_path).get(c.sid).chats == c.chats  # c's kept


def test_a_save_that_stops_naming_an_edit_collects_it(made, tmp_path):
    reg = registry(tmp_path)
    s = fresh(made)
    reg.add(s)
    assert reg.autosave(s)
    undone = s.undone[0]["edit"]
    s.redo()  # the undone edit moves to the stack: still named, same folder
    assert reg.autosave(s) and len(stored(tmp_path)) == 2
    s.undo()
    s.run_edit("rmu", {"steps": 1}, evaluate=False)  # a new edit clears the redo list
    assert s.undone == [] and all(e is not undone for e in s.stack.edits)
    assert reg.autosave(s)
    assert len(stored(tmp_path)) == 2  # the first edit and the new one; the dropped one collected
    assert registry(tmp_path).get(s.sid) is not None


def test_a_damaged_or_tampered_edit_is_refused_in_one_line(made, tmp_path):
    reg = registry(tmp_path)
    s = fresh(made)
    sid = reg.add(s)
    assert reg.autosave(s)
    key = json.loads(state_path(tmp_path, sid).read_text())["edits"][0]
    blob = tmp_path / EDITS_FOLDER / key / "edit.safetensors"
    good = blob.read_bytes()
    blob.write_bytes(good[:-8] + bytes(8 * [0x5A]))  # damaged on disk
    for attempt in (lambda: registry(tmp_path).get(sid),
                    lambda: export_saved(tmp_path, sid, tmp_path.parent / f"{tmp_path.name}-out.zip")):
        with pytest.raises(UserError) as err:
            attempt()
        text = str(err.value)
        assert "checksum" in text and "\n" not in text and str(tmp_path) not in text, text
    assert not (tmp_path.parent / f"{tmp_path.name}-out.zip").exists()
    blob.write_bytes(good)
    manifest = tmp_path / EDITS_FOLDER / key / "manifest.json"
    m = json.loads(manifest.read_text())
    m["meta"]["label"] = "someone else's"
    manifest.write_text(json.dumps(m))  # its own checksum still matches: only the key tells
    with pytest.raises(UserError, match="not the edit its key names") as err:
        registry(tmp_path).get(sid)
    assert "\n" not in str(err.value)
    assert state_path(tmp_path, sid).is_file()  # refused, kept on disk


def test_a_session_saved_as_a_whole_bundle_still_restores(made, tmp_path):
    sid = new_id()
    s = fresh(made)
    sessions_dir(tmp_path).mkdir(parents=True)
    export_bundle(s, bundle_path(tmp_path, sid), include_undone=True)  # what an older unlearnviz wrote
    assert [r["id"] for r in list_saved(tmp_path)] == [sid] and saved_info(tmp_path, sid)["edits"] == ["1. rmu"]
    out = tmp_path.parent / f"{tmp_path.name}-old.zip"
    export_saved(tmp_path, sid, out)
    assert read_bundle(out).count("undone") == 1
    reg = registry(tmp_path)
    r = reg.get(sid)
    assert [e.label() for e in r.stack.edits] == ["1. rmu"] and r.chats == s.chats and len(r.undone) == 1
    r.chat("Tell me about the weather", 3)
    assert reg.autosave(r)
    assert not bundle_path(tmp_path, sid).exists() and state_path(tmp_path, sid).is_file()  # the new layout
    again = registry(tmp_path).get(sid)
    assert again.chats == r.chats and same_tensors(again.stack.edits[0], s.stack.edits[0])


def test_an_exported_saved_session_is_an_ordinary_bundle(made, tmp_path):
    reg = registry(tmp_path)
    s = fresh(made)
    sid = reg.add(s)
    assert reg.autosave(s)
    out = tmp_path.parent / f"{tmp_path.name}-export.zip"
    export_saved(tmp_path, sid, out)
    contents = read_bundle(out)  # every checksum
    assert contents.n_edits == 1 and contents.count("undone") == 1 and contents.manifest["format_version"] == 2
    r = import_bundle(out, lm=s.lm)
    assert same_tensors(r.stack.edits[0], s.stack.edits[0]) and r.chats == s.chats and r.after == s.after
    assert same_tensors(r.undone[0]["edit"], s.undone[0]["edit"])
