"""Safe defaults, durable saves, crashes and cancellation.

In-process: launch flags and login parsing, file-name and path confinement, pickle and remote
code refused, atomic writes and edits that never load when damaged, a crash inside a method and
a cancelled edit leaving the session usable and the weights unchanged. Served: one real app with
a login and small operator limits: loopback bind, login enforced, limits with clear messages, an
upload that is not an upload refused, an edit cancelled mid-way through the real API.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import time
from pathlib import Path

import pytest
from tiny_models import save_tiny

from unlearnviz.errors import UserError

GOOD_ROWS = [
    {"split": "forget", "question": "The capital of Velmora is", "choices": ["Brask", "Tolun", "Averin"], "answer": 0},
    {"split": "retain", "question": "The sun is a", "choices": ["star", "moon", "rock"], "answer": 0},
]


class Evil:
    marker: Path

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# ---- launch defaults and login --------------------------------------------------------------


def test_launch_defaults_are_safe(monkeypatch):
    from unlearnviz.ui.launch import parse_args

    for var in ("UNLEARNVIZ_AUTH_FILE", "UNLEARNVIZ_MODEL_DIRS", "UNLEARNVIZ_DATA_DIRS"):
        monkeypatch.delenv(var, raising=False)
    a = parse_args([])
    assert a.host == "127.0.0.1" and a.share is False and a.auth_file is None
    assert a.model_dir == [] and a.data_dir == []
    assert (a.max_steps, a.max_new_tokens, a.max_prompt_chars, a.max_points, a.max_upload_mb) == (1000, 256, 4000, 120, 20)
    for flag in ("--trust-remote-code", "--allow-pickle"):  # operator flags of the CLI only, never the app's
        with pytest.raises(SystemExit):
            parse_args([flag])
    for bad in (["--max-steps", "0"], ["--max-new-tokens", "-3"], ["--max-upload-mb", "big"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
    assert parse_args(["--host", "0.0.0.0", "--share"]).share is True


def test_auth_file_parsing(tmp_path, monkeypatch):
    from unlearnviz.ui.launch import read_auth

    monkeypatch.delenv("UNLEARNVIZ_AUTH", raising=False)
    f = tmp_path / "auth"
    f.write_text("# team logins\n\nalice:s3cret\n  bob : pa:ss:word\n")
    assert read_auth(str(f)) == [("alice", "s3cret"), ("bob", " pa:ss:word")]
    assert read_auth(None) is None
    monkeypatch.setenv("UNLEARNVIZ_AUTH", "carol:pw")
    assert read_auth(None) == [("carol", "pw")]
    assert read_auth(str(f))[0] == ("carol", "pw") and len(read_auth(str(f))) == 3
    monkeypatch.delenv("UNLEARNVIZ_AUTH")
    for text in ("nocolon\n", "alice:\n", ":pw\n", "# only a comment\n", ""):
        f.write_text(text)
        with pytest.raises(SystemExit, match="error: "):
            read_auth(str(f))
    monkeypatch.setenv("UNLEARNVIZ_AUTH", "justaname")
    with pytest.raises(SystemExit, match="UNLEARNVIZ_AUTH"):
        read_auth(None)


def test_limits_must_be_positive():
    from unlearnviz.session import Limits

    assert Limits().max_points == 120
    for bad in ({"max_steps": 0}, {"max_new_tokens": -1}, {"max_points": 1.5}, {"max_upload_mb": True}):
        with pytest.raises(UserError, match="must be a positive integer"):
            Limits(**bad)


# ---- names and paths --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", "../x", "/abs", "/etc/passwd", "a/b", "a\\b", "", ".hidden", "x" * 200,
                                  "name with space", "~user", "a\x00b", "..zip", "ok/../../x", "fzx\n", "x\n\n", 5])
def test_export_names_cannot_escape(name, tmp_path):
    from unlearnviz.io import safe_child

    with pytest.raises(UserError, match="invalid file name|escapes"):
        safe_child(tmp_path, name)


def test_export_names_that_are_fine(tmp_path):
    from unlearnviz.io import safe_child

    for name in ("my-edit", "run_2.zip", "A.b-c_d", "x" * 128):
        assert safe_child(tmp_path, name) == (tmp_path / name).resolve()


def test_visitor_paths_confined(tmp_path):
    from unlearnviz.ui.common import AppConfig, confine_data_spec, confine_model_source

    models, data, outside = tmp_path / "models", tmp_path / "data", tmp_path / "outside"
    for d in (models / "mine", data, outside / "theirs"):
        d.mkdir(parents=True)
    (data / "facts.jsonl").write_text("{}\n")
    cfg = AppConfig(default_model="synthetic", default_data="synthetic", model_dirs=(models,), data_dirs=(data,))
    # allowed: names, hub ids, the operator's defaults, and what is inside the allowed folders
    assert confine_model_source("default", cfg) == "default"
    assert confine_model_source("synthetic:0.2", cfg) == "synthetic:0.2"
    assert confine_model_source("HuggingFaceTB/SmolLM2-135M", cfg) == "HuggingFaceTB/SmolLM2-135M"
    assert confine_model_source("mine", cfg) == str((models / "mine").resolve())
    assert confine_model_source(str(models / "mine"), cfg) == str((models / "mine").resolve())
    assert confine_data_spec("builtin:demo", cfg) == "builtin:demo"
    assert confine_data_spec("facts.jsonl", cfg) == str((data / "facts.jsonl").resolve())
    for bad in (str(outside / "theirs"), f"{models}/../outside/theirs", "../outside/theirs", "~/.ssh",
                "/etc", str(outside / "x.gguf")):
        with pytest.raises(UserError, match="outside the folders"):
            confine_model_source(bad, cfg)
    for bad in ("/etc/passwd", f"{data}/../outside/secret.csv", "~/secret.jsonl", str(outside / "a.parquet")):
        with pytest.raises(UserError, match="outside the folders"):
            confine_data_spec(bad, cfg)
    no_dirs = AppConfig(default_model="synthetic")
    with pytest.raises(UserError, match="no --model-dir"):
        confine_model_source(str(models / "mine"), no_dirs)


def test_pickle_weights_refused_and_never_unpickled(tmp_path):
    from unlearnviz.model import LoadOptions, load_model

    tiny = save_tiny(tmp_path / "tiny", "llama", layers=2)
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(tiny / "config.json", folder / "config.json")
    Evil.marker = tmp_path / "PICKLE-RAN"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(UserError, match="pickle.*--allow-pickle"):
        load_model(str(folder), LoadOptions(device="cpu"))
    assert not Evil.marker.exists()


def test_remote_code_never_runs_from_the_ui_path(tmp_path):
    """A model folder that ships code: the app's load path (confined + Session) never executes it."""
    from unlearnviz.session import ModelStore, Session
    from unlearnviz.ui.common import AppConfig, confine_model_source

    models = tmp_path / "models"
    folder = save_tiny(models / "custom", "llama", layers=2)
    marker = tmp_path / "REMOTE-CODE-RAN"
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                             "from transformers import LlamaForCausalLM as EvilForCausalLM\n")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (folder / "config.json").write_text(json.dumps(cfg))
    app = AppConfig(default_model="synthetic", model_dirs=(models,))
    session = Session()
    try:
        session.load_model(confine_model_source("custom", app), "float32", "cpu", store=ModelStore())
    except UserError as exc:
        assert "--trust-remote-code" in str(exc)
    assert not marker.exists()


# ---- durable saves ----------------------------------------------------------------------------


def test_atomic_write_interrupted_keeps_the_old_file(tmp_path, monkeypatch):
    from unlearnviz import io

    target = tmp_path / "report.json"
    io.atomic_write_text(target, "old, complete\n")

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        io.atomic_write_bytes(target, b"new but never finished")
    assert target.read_text() == "old, complete\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temporary left behind


@pytest.fixture(scope="module")
def small_edit(tiny_lm, tiny_data):
    from unlearnviz.methods import get_method, make_hparams

    spec = get_method("rmu")
    return spec.fit(tiny_lm, tiny_data, make_hparams(spec.hparams_cls, {"steps": 3}))


def test_truncated_edit_never_loads(small_edit, tiny_lm, tmp_path):
    from unlearnviz.methods.edit import load_edit, save_edit

    folder = save_edit(small_edit, tmp_path / "e", tiny_lm)
    assert load_edit(folder, tiny_lm).deltas.keys() == small_edit.deltas.keys()
    blob, manifest = (folder / "edit.safetensors").read_bytes(), (folder / "manifest.json").read_text()
    tried = 0
    for frac in (0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99):
        (folder / "edit.safetensors").write_bytes(blob[: int(len(blob) * frac)])
        with pytest.raises(UserError, match="checksum mismatch"):
            load_edit(folder, tiny_lm)
        tried += 1
    (folder / "edit.safetensors").write_bytes(blob)
    for frac in (0.0, 0.3, 0.6, 0.95):
        (folder / "manifest.json").write_text(manifest[: int(len(manifest) * frac)])
        with pytest.raises(UserError, match="not valid JSON"):
            load_edit(folder, tiny_lm)
        tried += 1
    assert tried == 12


def test_interrupted_resave_never_loads_as_valid(small_edit, tiny_lm, tiny_data, tmp_path, monkeypatch):
    """Save A, then a save of B dies after its tensors but before its manifest: neither loads as B."""
    from unlearnviz.methods import edit as edit_mod
    from unlearnviz.methods import get_method, make_hparams

    folder = edit_mod.save_edit(small_edit, tmp_path / "e", tiny_lm)
    spec = get_method("rmu")
    other = spec.fit(tiny_lm, tiny_data, make_hparams(spec.hparams_cls, {"steps": 2, "seed": 7}))

    def die(path, text):
        raise KeyboardInterrupt  # the user pressed Ctrl-C between the two files

    monkeypatch.setattr(edit_mod, "atomic_write_text", die)
    with pytest.raises(KeyboardInterrupt):
        edit_mod.save_edit(other, folder, tiny_lm)
    monkeypatch.undo()
    with pytest.raises(UserError, match="checksum mismatch"):
        edit_mod.load_edit(folder, tiny_lm)
    fresh = tmp_path / "fresh"
    monkeypatch.setattr(edit_mod, "atomic_write_text", die)
    with pytest.raises(KeyboardInterrupt):
        edit_mod.save_edit(other, fresh, tiny_lm)
    monkeypatch.undo()
    with pytest.raises(UserError, match="not an edit folder"):
        edit_mod.load_edit(fresh, tiny_lm)
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_zip_export_is_atomic(tmp_path, monkeypatch):
    from unlearnviz.ui import tab_export

    src = tmp_path / "edit"
    src.mkdir()
    (src / "edit.safetensors").write_bytes(b"x" * 1000)
    target = tmp_path / "edit.zip"
    target.write_bytes(b"an earlier, complete zip")

    def die(*a, **k):
        raise OSError("killed mid-archive")

    monkeypatch.setattr(tab_export.shutil, "make_archive", die)
    with pytest.raises(OSError):
        tab_export.zip_folder(src, target)
    assert target.read_bytes() == b"an earlier, complete zip"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edit", "edit.zip"]


# ---- crashes and cancellation -----------------------------------------------------------------


PROMPT = "The capital of Velmora is"


def test_crash_inside_a_method_leaves_the_session_usable(tiny_lm, tiny_data):
    """A block that fails mid-fit (a failing hook): reported, nothing applied, weights unchanged."""
    from unlearnviz.session import Session
    from unlearnviz.ui.common import readable

    fp = tiny_lm.fingerprint()
    s = Session(lm=tiny_lm, data=tiny_data)
    reference = s.chat(PROMPT, 8)
    calls = {"n": 0}

    def failing(module, args, output):
        calls["n"] += 1
        if calls["n"] > 6:
            raise RuntimeError("simulated crash inside block 2")

    handle = tiny_lm.adapter.blocks[2].register_forward_hook(failing)
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            s.run_edit("rmu", {"steps": 20}, evaluate=False)
        import gradio as gr

        with pytest.raises(gr.Error, match="Internal error.*still running") as info:
            readable(lambda: s.run_edit("srmu", {"steps": 20}, evaluate=False))()
        assert "simulated crash" not in str(info.value) and "RuntimeError" not in str(info.value)  # log only
    finally:
        handle.remove()
    assert calls["n"] > 6
    assert len(s.stack) == 0 and s.current_edit() is None
    assert tiny_lm.fingerprint() == fp
    assert s.chat(PROMPT, 8) == reference  # no edit and no hook left behind in the routing
    out = s.run_edit("rmu", {"steps": 3}, evaluate=False)
    assert out["index"] == 0 and tiny_lm.fingerprint() == fp


def test_cancel_mid_edit_applies_nothing(tiny_lm, tiny_data):
    from unlearnviz.methods.base import Cancelled
    from unlearnviz.session import Session

    fp = tiny_lm.fingerprint()
    s = Session(lm=tiny_lm, data=tiny_data)
    seen = []
    with pytest.raises(Cancelled):
        s.run_edit("srmu", {"steps": 50}, progress=seen.append, should_stop=lambda: len(seen) >= 5)
    assert 5 <= len(seen) < 50
    assert len(s.stack) == 0 and s.after == {}
    assert tiny_lm.fingerprint() == fp



def test_cancel_mid_generation_and_mid_evaluation(tiny_lm, tiny_data):
    """A stopped chat ends early and leaves no state behind; a cancelled evaluation stores nothing."""
    from unlearnviz.session import Session

    fp = tiny_lm.fingerprint()
    s = Session(lm=tiny_lm, data=tiny_data)
    s.run_edit("rmu", {"steps": 5}, evaluate=False)
    full = s.chat(PROMPT, 12)
    ticks = []

    def stop_after_three():
        ticks.append(1)
        return len(ticks) > 3

    states = list(s.chat_stream(PROMPT, 12, should_stop=stop_after_three))
    assert len(states[-1].edited_ids) == 3 and states[-1].done  # stopped at once, mid-answer
    assert s.chat(PROMPT, 12) == full  # the next chat is whole and unchanged
    calls = []
    with pytest.raises(InterruptedError):
        s.evaluate(should_stop=lambda: calls.append(1) or len(calls) > 2)
    assert s.before is None and s.after == {}  # no partial metrics kept
    got, fresh = s.evaluate()["after"], Session(lm=tiny_lm, data=tiny_data, stack=s.stack).evaluate()["after"]
    assert {k: v for k, v in got.items() if k != "wall_s"} == {k: v for k, v in fresh.items() if k != "wall_s"}
    assert len(s.stack) == 1 and tiny_lm.fingerprint() == fp


def test_a_closed_stream_is_a_cancel_not_an_internal_error(caplog):
    """Gradio closes a streaming handler's generator when a visitor cancels: no error, no log entry."""
    from unlearnviz.ui.common import readable

    cleaned = []

    @readable
    def stream():
        try:
            yield from range(100)
        finally:
            cleaned.append(True)

    gen = stream()
    assert [next(gen), next(gen)] == [0, 1]
    with caplog.at_level("ERROR", logger="unlearnviz.ui"):
        gen.close()  # raised RuntimeError ("generator ignored GeneratorExit") before the fix
    assert cleaned == [True] and not caplog.records


def test_geometry_points_capped_by_the_operator(tiny_lm, tiny_data):
    """--max-points caps how many texts the Geometry views embed (PCA here; UMAP uses the same texts)."""
    from unlearnviz.session import Limits, Session
    from unlearnviz.ui.tab_analysis import geometry_figures

    s = Session(lm=tiny_lm, data=tiny_data)
    for cap in (10, 40):
        s.limits = Limits(max_points=cap)
        scatter = geometry_figures(s)[0]  # the selected entry's scatter (the compared one's follow)
        assert max(len(t.x) for t in scatter.data) == cap // 2  # per group: forget, retain

# ---- one served app with a login and small limits ---------------------------------------------

USER, PASSWORD = "alice", "correct horse"


@pytest.fixture(scope="module")
def locked(tmp_path_factory, tiny_model_path):
    from app_server import Server

    w = tmp_path_factory.mktemp("sec")
    (w / "auth").write_text(f"# logins\n{USER}:{PASSWORD}\n")
    (w / "secret.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GOOD_ROWS))
    big = w / "big.jsonl"
    big.write_text(json.dumps({"split": "forget", "text": "y" * (2 * 2**20)}) + "\n")
    srv = Server("--model", "synthetic", "--data", "synthetic", "--auth-file", str(w / "auth"),
                 "--max-steps", "400", "--max-new-tokens", "16", "--max-prompt-chars", "60",
                 "--max-upload-mb", "1", env={"UNLEARNVIZ_EXPORTS": str(w / "exports"), "OMP_NUM_THREADS": "1"})
    yield srv, w
    srv.stop()


def _client(srv, auth=(USER, PASSWORD)):
    from gradio_client import Client

    return Client(srv.url, auth=auth, verbose=False)


def test_served_on_loopback_only(locked):
    srv, _ = locked
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if Path(table).exists():
            for line in Path(table).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == srv.port:  # 0A = LISTEN
                    listening.append(local.rsplit(":", 1)[0])
    assert listening, "the app's port is not listening"
    assert all(addr in ("0100007F", "00000000000000000000000001000000") for addr in listening), listening
    log = srv.tail()
    assert "gradio.live" not in log and "public share link" not in log and "(login required)" in log


def _opener(srv, login: bool = True):
    """A bare HTTP client (cookies kept), logged in through the login form when asked."""
    import http.cookiejar
    import urllib.parse
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    if login:
        form = urllib.parse.urlencode({"username": USER, "password": PASSWORD}).encode()
        opener.open(srv.url + "login", form, timeout=10).read()
    return opener


def _raw_call(opener, srv, api: str, data: list) -> tuple[str, str]:
    """POST /gradio_api/call/API, then read its event stream: (last event name, its data)."""
    body = json.dumps({"data": data}).encode()
    req = __import__("urllib.request").request.Request(srv.url + f"gradio_api/call/{api}", body,
                                                       {"Content-Type": "application/json"})
    event_id = json.loads(opener.open(req, timeout=20).read())["event_id"]
    stream = opener.open(srv.url + f"gradio_api/call/{api}/{event_id}", timeout=60).read().decode()
    events = [line[len("event: "):] for line in stream.splitlines() if line.startswith("event: ")]
    datas = [line[len("data: "):] for line in stream.splitlines() if line.startswith("data: ")]
    return events[-1], datas[-1]


def test_login_is_enforced(locked):
    import urllib.error

    srv, _ = locked
    with pytest.raises(Exception):  # noqa: B017  (gradio_client raises a plain ValueError/HTTP error)
        _client(srv, auth=None).predict(api_name="/fingerprint")
    with pytest.raises(Exception):  # noqa: B017
        _client(srv, auth=(USER, "wrong")).predict(api_name="/fingerprint")
    with pytest.raises(urllib.error.HTTPError) as info:  # the bare API without a login
        _raw_call(_opener(srv, login=False), srv, "fingerprint", [])
    assert info.value.code == 401
    assert _raw_call(_opener(srv), srv, "fingerprint", [])[0] == "complete"
    assert len(_client(srv).predict(api_name="/fingerprint")["fingerprint"]) == 32


def test_operator_limits_have_clear_messages(locked):
    from gradio_client import handle_file

    srv, w = locked
    c = _client(srv)
    cases = [
        (lambda: c.predict("The capital of Velmora is", 17, 0.0, api_name="/chat"), r"1\.\.16|maximum"),
        (lambda: c.predict("x" * 61, 8, 0.0, api_name="/chat"), r"the prompt is 61 characters; the limit is 60"),
        (lambda: c.predict("rmu", {"steps": 401}, api_name="/run_edit"), r"steps=401 is over this server's limit of 400"),
        (lambda: c.predict(401, 1e-3, api_name="/relearn"), r"steps must be 1\.\.400|maximum"),
        (lambda: c.predict("synthetic", "", handle_file(str(w / "big.jsonl")), api_name="/load_data"),
         r"(?i)too large|exceed|maximum|limit"),
    ]
    for fn, needle in cases:
        with pytest.raises(Exception) as info:
            fn()
        assert re.search(needle, str(info.value)), str(info.value)[:400]
        assert "Internal error" not in str(info.value)
    assert c.predict("The capital of Velmora is", 16, 0.0, api_name="/chat")[-1]["original"]


def test_a_server_file_passed_as_an_upload_is_refused(locked):
    """A raw API call that names a file on the server instead of uploading one reads nothing.

    (gradio_client would upload a local path itself, so this goes through bare HTTP.)
    """
    srv, w = locked
    opener = _opener(srv)
    for path in (str(w / "secret.jsonl"), "/etc/hostname"):
        fake = {"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": Path(path).name}
        event, data = _raw_call(opener, srv, "load_data", ["synthetic", "", fake])
        assert event == "error", (event, data[:300])
        assert re.search(r"not uploaded (by a user|to this server)|not in the server.s upload folder", data), data[:300]
        assert "forget_mcq" not in data and "Velmora" not in data
    assert srv.alive()


def test_oversized_upload_refused_by_the_server_itself(locked):
    """gradio_client checks the size before sending; a bare HTTP upload must be refused by the server."""
    import urllib.error
    import urllib.request

    srv, _ = locked
    boundary = "----unlearnviz-test"

    def upload(n_bytes: int):
        blob = b'{"split": "forget", "text": "' + b"z" * n_bytes + b'"}\n'
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"f.jsonl\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + blob + f"\r\n--{boundary}--\r\n".encode()
        req = urllib.request.Request(srv.url + "gradio_api/upload", body,
                                     {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        return _opener(srv).open(req, timeout=60).read()

    assert json.loads(upload(1000))[0].endswith("f.jsonl")  # the same request, small: accepted
    with pytest.raises(urllib.error.HTTPError) as info:
        upload(3 * 2**20)
    assert info.value.code in (400, 413), info.value.code
    assert srv.alive()


def test_cancel_an_edit_through_the_api(locked):
    srv, _ = locked
    c = _client(srv)
    fp = c.predict(api_name="/fingerprint")
    job = c.submit("srmu", {"steps": 400}, api_name="/run_edit")
    time.sleep(3.0)  # let it load and start training
    c.predict(api_name="/cancel")
    deadline = time.time() + 60
    while not job.done() and time.time() < deadline:
        time.sleep(0.2)
    assert job.done(), "the cancelled edit is still running"
    with pytest.raises(Exception, match="there is no edit to undo"):  # nothing was pushed
        c.predict(api_name="/undo")
    after = c.predict(api_name="/fingerprint")
    assert after["fingerprint"] == fp["fingerprint"] == after["loaded_fingerprint"]
    answer = c.predict("The capital of Velmora is", 6, 0.0, api_name="/chat")[-1]  # still responsive
    assert answer["original"] == answer["edited"]  # no partial edit is routed
    assert srv.alive()



def test_upload_outside_the_upload_folder_refused(tmp_path):
    """The app's own check behind Gradio's: a 'file' argument must lie in Gradio's upload folder."""
    from unlearnviz.ui.common import AppConfig, check_upload

    secret = tmp_path / "secret.jsonl"
    secret.write_text("{}\n")
    with pytest.raises(UserError, match="not in the server's upload folder"):
        check_upload(str(secret), AppConfig())
