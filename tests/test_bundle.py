"""Session bundles: session -> bundle -> import gives the same metrics (recomputed from the loaded
edits) and the same greedy chat answers in a fresh Session on a fresh model instance; damaged,
foreign, other-model and zip-slip bundles are one clear error that changes nothing; the CLI's
export/verify/import; and the app: `app.py --config`, /export_bundle, /import_bundle,
/export_config, /export_report over a real server. Tiny synthetic model throughout."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import zipfile
from pathlib import Path

import pytest
import yaml
from app_server import Server
from gradio_client import Client, handle_file
from tiny_models import tiny_session

from unlearnviz.bundle import BUNDLE_FORMAT, export_bundle, import_bundle, read_bundle
from unlearnviz.cli import main
from unlearnviz.errors import UserError

PROMPTS = ("The capital of Velmora is", "Tell me about the weather")


def metrics_of(m: dict | None) -> dict:
    """Everything but timings."""
    return {k: v for k, v in (m or {}).items() if not k.endswith("_s")}


@pytest.fixture(scope="module")
def session(tiny_model_path):
    """A session with a stack of two edits (the first selected), chats and a relearning attack."""
    s = tiny_session()
    s.run_edit("rmu", {"steps": 8})
    s.chat(PROMPTS[0], 10)
    s.run_edit("mrp", {"steps": 2, "k": 2})
    for p in PROMPTS:
        s.chat(p, 10)
    s.run_relearn(steps=2, lr=1e-3, eval_every=1)
    s.select(0)
    s.evaluate()
    return s


@pytest.fixture(scope="module")
def bundle(session, tmp_path_factory) -> Path:
    return export_bundle(session, tmp_path_factory.mktemp("bundle") / "session.zip")


def _fresh_lm(tiny_model_path):
    """Another instance of the same weights (not the cached one the session used)."""
    from unlearnviz.model import LoadOptions, load_model

    return load_model(str(tiny_model_path), LoadOptions(device="cpu"))


def test_round_trip_same_metrics_and_chat_answers(session, bundle, tiny_model_path):
    lm = _fresh_lm(tiny_model_path)
    assert lm is not session.lm
    restored = import_bundle(bundle, lm=lm)
    # restored as saved
    assert restored.before == session.before and restored.after == session.after
    assert restored.relearn == session.relearn and restored.chats == session.chats
    assert restored.selected == 0 and [e.label() for e in restored.stack.edits] == ["1. rmu", "2. mrp"]
    assert restored.to_config() == session.to_config()
    assert restored.data.content_hash() == session.data.content_hash()
    # recomputed from the loaded edits (no refitting): identical numbers
    restored.before, restored.after = None, {}
    for i in range(len(session.stack)):
        restored.select(i)
        assert metrics_of(restored.evaluate()["after"]) == metrics_of(session.after[i])
    assert metrics_of(restored.before) == metrics_of(session.before)
    # the same greedy answers from the loaded edits, for each chat's edit
    for chat in session.chats:
        restored.select(chat["edit_index"])
        again = restored.chat(chat["prompt"], chat["max_new_tokens"], chat["temperature"])
        assert (again["original"], again["edited"]) == (chat["original"], chat["edited"])


def test_manifest_records_versions_fingerprint_data_and_checksums(session, bundle):
    contents = read_bundle(bundle)
    m = contents.manifest
    assert m["format"] == BUNDLE_FORMAT and m["format_version"] == 1
    assert m["model"]["fingerprint"] == session.lm.fingerprint(refresh=False)
    assert m["data"]["content_hash"] == session.data.content_hash() and m["data"]["spec"] == "synthetic"
    assert {"torch", "transformers", "unlearnviz"} <= set(m["versions"])
    with zipfile.ZipFile(bundle) as zf:
        for name, digest in m["files"].items():
            assert hashlib.sha256(zf.read(name)).hexdigest() == digest
        assert set(zf.namelist()) == {"manifest.json", *m["files"]}
        assert "edits/001/edit.safetensors" in m["files"]
        assert not any(n.endswith((".pkl", ".pt", ".bin")) for n in zf.namelist())  # no pickle


def test_uploaded_data_comes_from_the_bundle(session, tiny_model_path, tmp_path):
    """A session on a data file that is gone by import time (an upload): the bundle's copy is used."""
    from unlearnviz.bundle import data_rows
    path = tmp_path / "facts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in data_rows(session.data)))
    s = tiny_session(str(path))
    s.run_edit("rmu", {"steps": 3})
    b = export_bundle(s, tmp_path / "upload.zip")
    path.unlink()
    restored = import_bundle(b)
    assert restored.data.content_hash() == s.data.content_hash() and restored.data.name == "facts.jsonl"
    assert restored.after == s.after


# ---- damaged, foreign, other-model, zip-slip ----------------------------------------------------------
def _rezip(src: Path, dst: Path, change=None, drop=(), add=None, manifest=None) -> Path:
    """Copy a bundle member by member: change(name, bytes) -> bytes, drop names, add {name: bytes};
    the manifest is copied as is (so changed members no longer match it) unless given."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            if name in drop:
                continue
            blob = zin.read(name)
            if name == "manifest.json" and manifest is not None:
                blob = json.dumps(manifest(json.loads(blob))).encode()
            elif change:
                blob = change(name, blob)
            zout.writestr(name, blob)
        for name, blob in (add or {}).items():
            zout.writestr(name, blob)
    return dst


def _flip_byte(src: Path, dst: Path) -> Path:
    blob = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as zf:
        info = zf.getinfo("edits/000/edit.safetensors")
    blob[info.header_offset + 200] ^= 0x01  # inside the stored tensor bytes
    dst.write_bytes(bytes(blob))
    return dst


def _resign(m: dict, name: str, blob: bytes) -> dict:
    m["files"][name] = hashlib.sha256(blob).hexdigest()
    return m


EVIL = b"written outside"


def _cases(b: Path, w: Path) -> dict:
    foreign = w / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as zf:
        zf.writestr("readme.txt", "not a bundle")
    return {
        "flipped_byte": (_flip_byte(b, w / "flip.zip"), r"edits/000/edit\.safetensors (cannot be read|.*checksum)"),
        "changed_member": (_rezip(b, w / "changed.zip", change=lambda n, x: x.replace(b"steps: 8", b"steps: 9")
                                  if n == "config.yaml" else x), r"checksum mismatch in config\.yaml"),
        "truncated": (_truncate(b, w / "trunc.zip"), r"not a zip archive"),
        "missing_member": (_rezip(b, w / "missing.zip", drop={"chats.json"}), r"chats\.json is missing"),
        "extra_member": (_rezip(b, w / "extra.zip", add={"results.json.bak": b"{}"}),
                         r"unexpected member name 'results\.json\.bak'"),
        "zip_slip": (_rezip(b, w / "slip.zip", add={"../../evil.txt": EVIL},
                            manifest=lambda m: _resign(m, "../../evil.txt", EVIL)), r"unexpected member name '\.\./\.\./evil"),
        "absolute_name": (_rezip(b, w / "abs.zip", add={"/tmp/evil.txt": EVIL},
                                 manifest=lambda m: _resign(m, "/tmp/evil.txt", EVIL)), r"unexpected member name '/tmp"),
        "foreign_zip": (foreign, r"not an unlearnviz session bundle \(no manifest\.json\)"),
        "foreign_manifest": (_rezip(b, w / "fm.zip", manifest=lambda m: {**m, "format": "something-else"}),
                             r"not an unlearnviz session bundle"),
        "newer_format": (_rezip(b, w / "new.zip", manifest=lambda m: {**m, "format_version": 99}),
                         r"bundle format 99 is newer"),
        "not_a_zip": (_write(w / "plain.zip", b"hello, not a zip"), r"not a zip archive"),
        "edit_renumbered": (_rezip(b, w / "renum.zip", drop={"edits/001/manifest.json"},
                                   manifest=lambda m: {**m, "files": {k: v for k, v in m["files"].items()
                                                                      if k != "edits/001/manifest.json"}}),
                            r"edits are not numbered"),
    }


def _truncate(src: Path, dst: Path) -> Path:
    blob = src.read_bytes()
    return _write(dst, blob[: len(blob) // 2])


def _write(path: Path, blob: bytes) -> Path:
    path.write_bytes(blob)
    return path


def _temp_leftovers() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("uv-import-")}


def test_bad_bundles_are_one_clear_error_and_change_nothing(session, bundle, tmp_path):
    from unlearnviz.session import Session

    target = Session()
    target.load_model("synthetic", "float32", "cpu")
    target.load_data("synthetic")
    snapshot = (target.lm, target.data, len(target.stack), dict(target.after), list(target.history))
    leftovers = _temp_leftovers()
    for case, (path, pattern) in _cases(bundle, tmp_path).items():
        before_bytes = path.read_bytes()
        with pytest.raises(UserError) as info:
            target.adopt(import_bundle(path))
        msg = str(info.value)
        assert "\n" not in msg and re.search(pattern, msg), f"{case}: {msg}"
        assert (target.lm, target.data, len(target.stack), dict(target.after), list(target.history)) == snapshot
        assert path.read_bytes() == before_bytes
    assert _temp_leftovers() == leftovers
    assert not (tmp_path.parent / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()


def test_bundle_for_another_model_is_refused(bundle, tmp_path):
    from tiny_models import save_tiny

    from unlearnviz.model import LoadOptions, load_model

    other = load_model(str(save_tiny(tmp_path / "llama", "llama", layers=2)), LoadOptions(device="cpu"))
    with pytest.raises(UserError, match=r"this bundle was made for model 'synthetic-.*fingerprint .*not '"):
        import_bundle(bundle, lm=other)
    # the config naming a model whose weights are not the bundle's (same name, other weights)
    with pytest.raises(UserError, match="this bundle was made for model"):
        import_bundle(bundle, allow_model=lambda _source: str(tmp_path / "llama"))


def test_allow_model_can_refuse(bundle):
    def refuse(source: str) -> str:
        raise UserError(f"model path {source!r} is outside the folders this server allows")

    with pytest.raises(UserError, match="outside the folders"):
        import_bundle(bundle, allow_model=refuse)


def test_a_bundle_naming_an_undocumented_lab_model_is_refused_before_training(bundle, tmp_path):
    """A bundle whose config names synthetic:E:SEED at a seed the docs do not offer would have
    trained (and kept) a new lab model before its fingerprint was ever checked."""
    from unlearnviz.data.synthetic import model_dir
    from unlearnviz.ui.common import AppConfig, confine_model_source

    def lab(name: str, blob: bytes) -> bytes:
        if name != "config.yaml":
            return blob
        raw = yaml.safe_load(blob)
        raw["model"]["source"] = "synthetic:0.1:4243"
        return yaml.safe_dump(raw).encode()

    with zipfile.ZipFile(bundle) as z:
        changed = lab("config.yaml", z.read("config.yaml"))
    forged = _rezip(bundle, tmp_path / "lab.zip", change=lab, manifest=lambda m: _resign(m, "config.yaml", changed))
    with pytest.raises(UserError, match="not offered here"):
        import_bundle(forged, allow_model=lambda src: confine_model_source(src, AppConfig()))
    assert not model_dir(0.1, 4243).exists()


# ---- CLI ---------------------------------------------------------------------------------------------
def test_cli_export_verify_import(tiny_model_path, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"source": "synthetic", "device": "cpu"}, "data": "synthetic",
                                   "edits": [{"method": "rmu", "hparams": {"steps": 5}},
                                             {"method": "srmu", "hparams": {"steps": 3}}],
                                   "evaluation": {"letter": False}, "chat": [{"prompt": PROMPTS[0],
                                                                              "max_new_tokens": 6}]}))
    run = tmp_path / "run"
    assert main(["run", "--config", str(cfg), "--out", str(run)]) == 0
    z = tmp_path / "run.zip"
    assert main(["bundle", "export", "--run", str(run), "--out", str(z)]) == 0
    assert main(["bundle", "verify", str(z)]) == 0
    capsys.readouterr()
    assert main(["bundle", "verify", str(z), "--archive-only"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    back = tmp_path / "back"
    assert main(["bundle", "import", str(z), "--out", str(back)]) == 0
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (run, back))
    assert metrics_of(a["before"]) == metrics_of(b["before"]) and metrics_of(a["after"]) == metrics_of(b["after"])
    assert [metrics_of(e["after"]) for e in a["edits"]] == [metrics_of(e["after"]) for e in b["edits"]]
    assert json.loads((run / "chats.json").read_text()) == json.loads((back / "chats.json").read_text())
    assert load(run / "config.yaml") == load(back / "config.yaml")
    # the imported folder is a run folder: relearn/export/--stack-on read its whole stack
    from unlearnviz.model import LoadOptions, load_model
    from unlearnviz.runs import load_stack

    assert len(load_stack(load_model(str(tiny_model_path), LoadOptions(device="cpu")), back).edits) == 2
    # errors: one line, exit 2, nothing written
    capsys.readouterr()
    bad = _flip_byte(z, tmp_path / "bad.zip")
    for argv in (["bundle", "import", str(bad), "--out", str(tmp_path / "never")],
                 ["bundle", "verify", str(bad)],
                 ["bundle", "import", str(z), "--out", str(back)],
                 ["bundle", "export", "--run", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.zip")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err
    assert not (tmp_path / "never").exists() and not (tmp_path / "x.zip").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]


def load(path: Path):
    from unlearnviz.config import load_config

    return load_config(path)


# ---- the app ---------------------------------------------------------------------------------------
APP_CONFIG = {"model": {"source": "synthetic", "device": "cpu"}, "data": "synthetic", "seed": 0,
              "edits": [{"method": "rmu", "hparams": {"steps": 6}}], "evaluation": {"letter": False},
              "chat": [{"prompt": PROMPTS[0], "max_new_tokens": 8}]}


@pytest.fixture(scope="module")
def app_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("appcfg") / "app.yaml"
    path.write_text(yaml.safe_dump(APP_CONFIG))
    return path


@pytest.fixture(scope="module")
def server(tiny_model_path, app_config, tmp_path_factory):
    exports = tmp_path_factory.mktemp("exports")
    srv = Server("--config", str(app_config), env={"OMP_NUM_THREADS": "1", "UNLEARNVIZ_EXPORTS": str(exports)})
    yield srv
    srv.stop()


def test_app_config_starts_every_session_from_the_config(server, app_config, tmp_path):
    """`app.py --config F`: a new session already holds F's edit, with the metrics `run --config F` gives:
    counts and accuracies exactly; log-probs and perplexity to 1e-6 relative (the dashboard scores in
    passes for its progress bar, so its batches are padded differently: ~1e-8 apart, seen in CI)."""
    assert main(["run", "--config", str(app_config), "--out", str(tmp_path / "cli")]) == 0
    cli = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    c = Client(server.url, verbose=False)
    ev = c.predict(False, api_name="/evaluate")[-1]
    for side in ("before", "after"):
        served, ran = metrics_of(ev[side]), metrics_of(cli[side])
        assert served.keys() == ran.keys()
        for key in served:
            exact = key.endswith(("_n", "_acc", "chance"))
            assert served[key] == (ran[key] if exact else pytest.approx(ran[key], rel=1e-6)), (side, key)
    chat = c.predict(PROMPTS[0], 8, 0.0, api_name="/chat")[-1]
    cli_chat = json.loads((tmp_path / "cli" / "chats.json").read_text())[0]
    assert (chat["original"], chat["edited"]) == (cli_chat["original"], cli_chat["edited"])
    # the Export tab's config of this session is the config, every hyperparameter explicit
    out = c.predict("appcfg", api_name="/export_config")
    assert out[-1]["saved"] == "appcfg.yaml"
    written = load(Path(out[0]))  # the downloaded copy
    assert written.edits[0].hparams["steps"] == 6 and written.model.source == "synthetic"
    assert written.chat[0].prompt == PROMPTS[0]


def test_app_bundle_round_trip_between_sessions(server):
    a = Client(server.url, verbose=False)
    a.predict("rmu", {"steps": 5, "steering_coeff": 3.0}, api_name="/run_edit")  # a second edit on the config's
    answer = a.predict(PROMPTS[1], 8, 0.0, api_name="/chat")[-1]
    ev_a = a.predict(False, api_name="/evaluate")[-1]
    path = a.predict("roundtrip", api_name="/export_bundle")[0]
    assert Path(path).name == "roundtrip-session.zip" and zipfile.is_zipfile(path)
    b = Client(server.url, verbose=False)  # another browser session, starting from the config
    summary = b.predict(handle_file(path), api_name="/import_bundle")[-1]
    assert summary["edits"] == ["1. rmu", "2. rmu"] and summary["chats"] == 2
    ev_b = b.predict(False, api_name="/evaluate")[-1]
    assert metrics_of(ev_b["after"]) == metrics_of(ev_a["after"])
    again = b.predict(PROMPTS[1], 8, 0.0, api_name="/chat")[-1]
    assert (again["original"], again["edited"]) == (answer["original"], answer["edited"])


def test_app_bad_bundle_is_readable_and_changes_nothing(server, tmp_path):
    c = Client(server.url, verbose=False)
    c.predict("rmu", {"steps": 4, "steering_coeff": 2.0}, api_name="/run_edit")
    ev = c.predict(False, api_name="/evaluate")[-1]
    good = Path(c.predict("bad-base", api_name="/export_bundle")[0])
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as zf:
        zf.writestr("hello.txt", "hi")
    for path, needle in ((_flip_byte(good, tmp_path / "flip.zip"), "damaged"),
                         (foreign, "not an unlearnviz session bundle"),
                         (_write(tmp_path / "junk.zip", b"junk"), "not a zip archive")):
        with pytest.raises(Exception) as info:
            c.predict(handle_file(str(path)), api_name="/import_bundle")
        assert needle in str(info.value) and "Internal error" not in str(info.value)
        assert metrics_of(c.predict(False, api_name="/evaluate")[-1]["after"]) == metrics_of(ev["after"])
    with pytest.raises(Exception, match="choose a session bundle"):
        c.predict(None, api_name="/import_bundle")
    with pytest.raises(Exception, match="invalid file name"):
        c.predict("../escape", api_name="/export_bundle")
    assert server.alive()


def test_app_export_report(server):
    c = Client(server.url, verbose=False)
    path = c.predict("report", api_name="/export_report")[0]
    text = Path(path).read_text(encoding="utf-8")
    assert text.lstrip().lower().startswith("<!doctype html") and "<script src=" not in text


# ---- large data by reference -------------------------------------------------------------------
def test_small_data_is_bundled_by_value(bundle):
    m = read_bundle(bundle).manifest
    assert m["data"]["by"] == "value" and "data.jsonl" in m["files"]


def test_large_operator_data_is_bundled_by_reference(session, tiny_model_path, tmp_path):
    """Data whose rows pass the by-value limit goes in as its spec and content hash (no
    data.jsonl); import re-reads the source and checks the hash; a source that is missing,
    changed, or refused by ``allow_data`` is one line and no session."""
    from unlearnviz.bundle import data_rows

    rows = data_rows(session.data)
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = tiny_session(str(path))
    s.run_edit("rmu", {"steps": 3})
    b = export_bundle(s, tmp_path / "ref.zip", max_data_bytes=1000)
    m = read_bundle(b).manifest
    assert m["data"]["by"] == "reference" and m["data"]["spec"] == str(path) and "data.jsonl" not in m["files"]
    with zipfile.ZipFile(b) as zf:
        assert "data.jsonl" not in zf.namelist()
    assert b.stat().st_size < path.stat().st_size + 10 * 2**20
    restored = import_bundle(b)
    assert restored.data.content_hash() == s.data.content_hash() and restored.after == s.after
    seen = []
    import_bundle(b, allow_data=lambda spec: seen.append(spec) or spec)
    assert seen == [str(path)]
    with pytest.raises(UserError, match="outside") as info:
        import_bundle(b, allow_data=lambda spec: (_ for _ in ()).throw(UserError(f"{spec} is outside")))
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[1:]))  # one row fewer: another data set
    with pytest.raises(UserError, match=r"has changed since the bundle was made") as info:
        import_bundle(b)
    assert "\n" not in str(info.value)
    path.unlink()
    with pytest.raises(UserError, match=r"is a reference to .*corpus\.jsonl.*cannot be read here") as info:
        import_bundle(b)
    assert "\n" not in str(info.value)


def test_large_data_without_a_source_is_refused(session, tmp_path):
    s = tiny_session()
    s.history = [h for h in s.history if h.get("action") != "load_data"]
    with pytest.raises(UserError, match="names no source to bundle it by reference"):
        export_bundle(s, tmp_path / "none.zip", max_data_bytes=1000)
    assert not (tmp_path / "none.zip").exists()


@pytest.mark.slow
def test_an_imported_checkpoint_travels_in_a_bundle(tiny_model_path, tmp_path):
    """A checkpoint made by a plain loop, imported as an edit with a fitted RMU edit on top, bundles
    like any edit: restored on a fresh copy of the base, its deltas and metrics are the same and its
    config entry still names the checkpoint."""
    from foreign_models import gradient_ascent

    ckpt = gradient_ascent(tiny_model_path, tmp_path / "ga", steps=3, lr=5e-2)
    s = tiny_session()
    s.import_unlearned(str(ckpt))
    s.run_edit("rmu", {"steps": 4})
    path = export_bundle(s, tmp_path / "imported.zip")
    restored = import_bundle(path, lm=_fresh_lm(tiny_model_path))
    first = restored.stack.edits[0]
    assert first.method == "imported" and set(first.weights) == set(s.stack.edits[0].weights) and first.weights
    assert all((first.weights[k].cpu() == v.cpu()).all() for k, v in s.stack.edits[0].weights.items())
    restored.after = {}
    assert metrics_of(restored.evaluate()["after"]) == metrics_of(s.after[1])
    assert restored.to_config().edits[0].source == str(ckpt.resolve())


def test_undone_edits_travel_in_format_2_only_when_asked(session, tiny_model_path, tmp_path):
    """The autosave keeps the redo list (undone/ with each undone edit's results, format 2); a
    bundle made to share leaves it out and stays format 1; a format-1 bundle carrying undone/ is
    refused."""
    import copy

    from unlearnviz.ui.common import UISession

    s = UISession()
    s.adopt(session)
    s = copy.deepcopy(s)
    s.select(None)
    s.undo()  # the MRP edit, with its metrics and relearning result, onto the redo list
    shared = export_bundle(s, tmp_path / "shared.zip")
    kept = export_bundle(s, tmp_path / "kept.zip", include_undone=True)
    assert read_bundle(shared).manifest["format_version"] == 1 and read_bundle(shared).count("undone") == 0
    assert read_bundle(kept).manifest["format_version"] == 2 and read_bundle(kept).count("undone") == 1
    assert import_bundle(shared, lm=s.lm).undone == []
    restored = import_bundle(kept, lm=_fresh_lm(tiny_model_path))
    assert restored.undone[0]["after"] == s.undone[0]["after"] and restored.undone[0]["relearn"] == s.undone[0]["relearn"]
    assert restored.conversation == s.conversation and [e.label() for e in restored.stack.edits] == ["1. rmu"]
    restored.redo()
    assert [e.label() for e in restored.stack.edits] == ["1. rmu", "2. mrp"] and restored.after[1] == session.after[1]
    assert metrics_of(restored.evaluate()["after"]) == metrics_of(session.after[1])  # the edit itself came back
    older = _rezip(kept, tmp_path / "v1.zip", manifest=lambda m: {**m, "format_version": 1})
    with pytest.raises(UserError, match="format 1 holds no undone edits"):
        read_bundle(older)
    with zipfile.ZipFile(kept) as zf:
        results = json.loads(zf.read("results.json"))
    del results["undone"]  # the undone edit without its results entry
    blob = json.dumps(results).encode()
    lost = _rezip(kept, tmp_path / "lost.zip", change=lambda n, b: blob if n == "results.json" else b,
                  manifest=lambda m: _resign(m, "results.json", blob))
    with pytest.raises(UserError, match="'undone' does not describe the 1 undone edit"):
        import_bundle(lost, lm=s.lm)
