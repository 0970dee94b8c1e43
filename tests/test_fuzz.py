"""An adversarial visitor against the served app: malformed and out-of-order requests over real HTTP.

One ``python app.py`` on the tiny lab model; requests go through Gradio's own queue protocol
(``/gradio_api/queue/join`` + the event stream, as ``gradio_client`` speaks it) with raw JSON, so
NaN, infinity, bools for numbers, too few arguments and forged upload objects reach the server
exactly as sent. Categories: wrong types for every argument of every API endpoint, NaN/inf, huge
and control-character strings, traversal names, nested-bracket, many-choice and oversized
uploads, damaged and hostile bundles, calls before anything is loaded, too few arguments, and
concurrent clients. After every request: the server still answers; the answer is a normal result
or one readable line that carries no exception class name, memory address, handler or component
name and no server folder (working folder, home, upload folder); no normal answer carries the
server's home either. At the end: nothing was written outside the export folder, no lab model was
trained, and the base weights' fingerprint is what it was.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from app_server import Server

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
HOME = str(Path.home())
MIN_REQUESTS = 250
CLASS_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception)\b|Traceback|Internal error")
ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")
INTERNALS = re.compile(r"\bon_[a-z_]+\b|event handler|component at index|gradio\.components|pydantic|FileData|"
                       r"object at")
FORBIDDEN = (str(ROOT), HOME, "/tmp/gradio")
NAN, INF = float("nan"), float("inf")
BIG = "x" * (1 << 20)


class Answer:
    def __init__(self, ok: bool, data=None, message: str | None = None, logs: tuple = ()):
        self.ok, self.data, self.message, self.logs = ok, data, message, logs

    def __repr__(self) -> str:
        return f"Answer(ok={self.ok}, message={self.message!r}, data={str(self.data)[:200]})"


class Visitor:
    """One browser session (or API client) speaking Gradio's queue protocol with raw JSON."""

    def __init__(self, url: str, api: bool = True):
        self.url, self.api = url, api
        self.session = uuid.uuid4().hex[:12]
        self.http = httpx.Client(timeout=300, headers={"x-gradio-user": "api"} if api else {})
        config = self.http.get(url + "config").json()
        kinds = {c["id"]: c.get("type") for c in config["components"]}
        self.fns = {d["api_name"]: (d["id"], [kinds.get(i) for i in d["inputs"]])
                    for d in config["dependencies"] if d.get("api_name") and d.get("api_visibility", "public") != "private"}

    def call(self, api: str, *args, body=None) -> Answer:
        """``args``: the endpoint's arguments without its session state (sent as null); ``body``: the
        whole data list as given (too few arguments, anything)."""
        fn, kinds = self.fns[api]
        if body is None:
            it = iter(args)
            body = [None if k == "state" else next(it) for k in kinds]
        text = json.dumps({"data": body, "fn_index": fn, "session_hash": self.session, "event_data": None,
                           "trigger_id": None})  # NaN and Infinity as JavaScript writes them
        r = self.http.post(self.url + "gradio_api/queue/join", content=text,
                           headers={"content-type": "application/json"})
        if r.status_code != 200:
            return Answer(False, message=f"HTTP {r.status_code}: {r.text[:300]}")
        event = r.json()["event_id"]
        logs = []
        with self.http.stream("GET", self.url + "gradio_api/queue/data", params={"session_hash": self.session}) as s:
            for line in s.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("event_id") not in (None, event):
                    continue
                if msg.get("msg") == "log":
                    logs.append(str(msg.get("log")))
                if msg.get("msg") == "process_completed":
                    out = msg.get("output") or {}
                    if msg.get("success") and "error" not in out:
                        return Answer(True, data=out.get("data"), logs=tuple(logs))
                    return Answer(False, message=out.get("error"), logs=tuple(logs))
        return Answer(False, message=None, logs=tuple(logs))

    def upload(self, name: str, blob: bytes) -> dict:
        r = self.http.post(self.url + "gradio_api/upload", files={"files": (name, blob)})
        r.raise_for_status()
        return {"path": r.json()[0], "orig_name": name, "meta": {"_type": "gradio.FileData"}}


def _strings(value, skip_files: bool = True):
    if isinstance(value, dict):
        if skip_files and (value.get("meta") or {}).get("_type") == "gradio.FileData":
            return  # a download: Gradio's own file protocol names its cached copy
        for v in value.values():
            yield from _strings(v, skip_files)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v, skip_files)
    elif isinstance(value, str):
        yield value


def readable(answer: Answer) -> str | None:
    """None when the answer is fine; else what is wrong with it."""
    if answer.ok:
        for text in _strings(answer.data):
            if HOME in text or str(ROOT) in text:
                return f"a normal answer names a server folder: {text[:200]!r}"
        return None
    msg = answer.message
    if not isinstance(msg, str) or not msg.strip():
        return f"an error without a readable message: {answer!r}"
    if len(msg) > 700 or "\n" in msg.strip():
        return f"not one short line: {msg[:300]!r}"
    for rule in (CLASS_NAME, ADDRESS, INTERNALS):
        if rule.search(msg):
            return f"internals in the message ({rule.pattern[:30]}…): {msg[:300]!r}"
    for folder in FORBIDDEN:
        if folder in msg:
            return f"a server folder in the message: {msg[:300]!r}"
    return None


def listing(folder: Path, depth: int = 2) -> set[str]:
    out: set[str] = set()
    if not folder.is_dir():
        return out
    for p in folder.iterdir():
        if p.name in (".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache"):
            continue
        out.add(str(p))
        if depth > 1 and p.is_dir():
            out |= listing(p, depth - 1)
    return out


def bundle_zip(members: dict[str, bytes], manifest: dict | None = None) -> bytes:
    """A zip with the bundle's member names and a manifest whose checksums match (a forged bundle)."""
    buf = io.BytesIO()
    man = manifest or {"format": "unlearnviz-session-bundle", "format_version": 1,
                       "files": {n: hashlib.sha256(b).hexdigest() for n, b in members.items()}}
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("manifest.json", json.dumps(man))
        for name, blob in members.items():
            z.writestr(name, blob)
    return buf.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = tmp_path_factory.mktemp("fuzz")
    for name in ("models", "data", "exports", "outside"):
        (w / name).mkdir()
    (w / "data" / "facts.jsonl").write_text(json.dumps({"split": "forget", "question": "The capital of Velmora is",
                                                        "choices": ["Brask", "Tolun"], "answer": 0}) + "\n")
    (w / "outside" / "secret.jsonl").write_text('{"split": "forget", "text": "secret"}\n')
    return w


@pytest.fixture(scope="module")
def server(world, tiny_model_path):  # the lab model trained before the server looks for it
    srv = Server("--model", "synthetic", "--data", "synthetic", "--max-steps", "40", "--max-upload-mb", "2",
                 "--model-dir", str(world / "models"), "--data-dir", str(world / "data"), "--concurrency", "4",
                 env={"UNLEARNVIZ_EXPORTS": str(world / "exports"), "OMP_NUM_THREADS": "1"})
    yield srv
    srv.stop()


def bad_values(kind: str) -> list:
    """Wrong values for an argument of this component kind."""
    common = [True, [1], {"a": 1}, 2**70]
    if kind in ("number", "slider"):
        return [*common, "5", 5.5, NAN, INF, -INF, None, -1e308]
    if kind == "checkbox":
        return [*common, "false", 0, 1.0, None]
    if kind == "json":
        return [True, "x", 5, [1, 2], {"steps": True}, {"lr": True}, {"steps": "1"}, {"layers": [1.9]},
                {"seed": 2**70}, {"anchor_first": [0]}, {"lr": NAN}]
    if kind in ("checkboxgroup",):
        return [*common, "rmu", [5], [None], ["x" * 10_000]]
    if kind == "file":
        return [5, "x", {"path": "/etc/passwd"}, {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}},
                [1, 2]]
    return [*common, 5, 5.5, BIG, "a\x00b", "fzx\n", "\x1b[31mred", "../../etc/passwd", "/etc/passwd",
            "x" * 300]


NO_ARGS = ("fingerprint", "undo", "cancel", "new_conversation", "conversation", "analyze", "cancel_analysis",
           "cancel_sweep", "cancel_attacks", "cancel_calibration", "demo")
SLOW = {"demo", "analyze", "calibrate", "sweep", "attacks", "relearn", "run_edit", "export_checkpoint",
        "import_unlearned", "evaluate"}


def test_fuzz_the_served_app(server, world, tiny_model_path):
    from unlearnviz.data.synthetic import model_dir

    models = Path(model_dir(0.1, 0)).parent
    before = {"root": listing(ROOT, 1), "world": listing(world, 3) - listing(world / "exports", 3),
              "models": listing(models, 1), "home": listing(Path.home(), 1)}
    results: list[tuple[str, object, Answer]] = []
    problems: list[str] = []

    def record(label: str, args, answer: Answer) -> Answer:
        results.append((label, args, answer))
        why = readable(answer)
        if why:
            problems.append(f"{label} {str(args)[:120]}: {why}")
        for log in answer.logs:
            if CLASS_NAME.search(log) or ADDRESS.search(log) or any(f in log for f in FORBIDDEN):
                problems.append(f"{label}: internals in a warning: {log[:200]!r}")
        return answer

    first = Visitor(server.url)
    baseline = record("fingerprint", (), first.call("fingerprint"))
    assert baseline.ok, baseline
    fp = baseline.data[0]["fingerprint"]
    kinds = {api: [k for k in ks if k != "state"] for api, (_, ks) in first.fns.items()}

    # 1. calls before anything is loaded: every endpoint, in a fresh session, with sensible arguments
    sensible = {"load_model": ["synthetic", "float32", "cpu"], "load_data": ["synthetic", "", None],
                "select_edit": [1], "compare_edit": [1], "export": ["early"], "export_config": ["early"],
                "export_checkpoint": ["early"], "export_bundle": ["early"], "export_report": ["early"],
                "chat": ["The capital of", 4, 0.0], "relearn": [5, 1e-3], "evaluate": [False],
                "import_bundle": [None], "describe_unlearned": ["nothing-here"], "use_calibration": [None]}
    for api in sorted(first.fns):
        if api in SLOW - {"evaluate", "relearn"} or api not in sensible and kinds[api]:
            continue
        record(f"before-load {api}", sensible.get(api, []), Visitor(server.url).call(api, *sensible.get(api, [])))

    # 2. wrong types, NaN/inf, huge and control-character strings, traversal names: every argument
    #    of every endpoint, the others left sensible
    defaults = {**sensible, "run_edit": ["rmu", {"steps": 2}], "sweep": [["rmu"], "steps=2"],
                "attacks": [["prompts"], 2, 4], "calibrate": ["rmu", 1, 2], "load_parts": ["", "", "", "", "synthetic"],
                "import_unlearned": ["nothing-here"]}
    v = Visitor(server.url)
    for api in sorted(first.fns):
        if api in NO_ARGS or api not in defaults:
            continue
        for i, kind in enumerate(kinds[api]):
            for bad in bad_values(kind):
                args = list(defaults[api])
                args[i] = bad
                if api in ("run_edit",) and i == 1 and isinstance(bad, dict) and bad and all(
                        isinstance(x, (int, float)) and not isinstance(x, bool) and x == x for x in bad.values()):
                    continue  # a well-typed override would train
                answer = record(f"types {api}[{i}]", args, v.call(api, *args))
                if answer.ok and bad is not None and not isinstance(bad, str) and kind != "checkbox":
                    problems.append(f"{api}[{i}] accepted {str(bad)[:60]!r}: {str(answer.data)[:160]}")

    # 3. findings of the first fuzz round, each refused with a message naming what is wrong
    named = [
        ("load_model", ["synthetic:0.1:4242", "float32", "auto"], r"not offered here"),
        ("load_model", ["x" * (1 << 20), "float32", "cpu"], r"source .*over the limit"),
        ("load_data", ["y" * 300, "", None], r"255"),
        ("load_data", [7, "", None], r"name .*expected a string"),
        ("chat", [None, 8, 0.0], r"text .*must not be null"),
        ("chat", ["The capital of", 8, 1e-300], r"too small to sample"),
        ("chat", ["The capital of", 5.5, 0.0], r"n .*expected an integer"),
        ("chat", ["The capital of", NAN, 0.0], r"n .*expected an integer"),
        ("select_edit", [1.5], r"value .*expected an integer"),
        ("evaluate", ["false"], r"with_letter .*expected true or false"),
        ("run_edit", ["rmu", {"steps": True}], r"steps: expected an integer, got True"),
        ("run_edit", ["rmu", {"lr": True}], r"lr: expected a number, got True"),
        ("run_edit", ["rmu", {"anchor_first": [0]}], r"anchor_first: expected true or false"),
        ("run_edit", ["mrp", {"layers": [1.9]}], r"layers: expected a list of integers"),
        ("run_edit", ["rmu", {"steps": "1"}], r"steps: expected an integer, got '1'"),
        ("run_edit", ["rmu", {"seed": 2**70}], r"seed: .* above the maximum"),
        ("export", ["fzx\n"], r"invalid file name|control character"),
        ("export", ["f" * 128], r"over the limit of 100"),
        ("export", ["../escape"], r"invalid file name"),
    ]
    for api, args, needle in named:
        answer = record(f"finding {api}", args, Visitor(server.url).call(api, *args))
        if answer.ok or not re.search(needle, answer.message or ""):
            problems.append(f"finding {api} {str(args)[:80]}: expected /{needle}/, got {answer!r}")

    # 4. too few arguments, over raw HTTP
    for api in ("chat", "load_model", "load_data", "export", "run_edit", "select_edit", "evaluate", "relearn"):
        record(f"arity {api}", "[]", v.call(api, body=[]))
        record(f"arity {api}", "[null]", v.call(api, body=[None]))

    # 5. uploads: nested brackets, many choices, oversized, wrong type, forged upload objects
    nested = ("[" * 100_000 + "]" * 100_000 + "\n").encode()
    many = json.dumps({"split": "forget", "question": "Q is", "choices": [f"c{i}" for i in range(5000)],
                       "answer": 0}).encode() + b"\n"
    uploads = {"nested.jsonl": nested, "many.jsonl": many, "big.jsonl": b'{"split":"forget","text":"x"}\n' * 200_000,
               "nested-choices.csv": b'split,question,choices,answer\nforget,Q,"' + b"[" * 50_000 + b'",0\n',
               "notes.txt": b"hello", "bin.jsonl": bytes(range(256)) * 8}
    up = Visitor(server.url)
    for name, blob in uploads.items():
        try:
            file = up.upload(name, blob)
        except httpx.HTTPStatusError as exc:  # refused by the upload route itself (size, type)
            results.append((f"upload {name}", "", Answer(False, message=str(exc.response.status_code))))
            continue
        record(f"upload {name}", name, up.call("load_data", "synthetic", "", file))

    # 6. damaged and hostile bundles
    bundles = {
        "truncated.zip": bundle_zip({"config.yaml": b"model: synthetic\n"})[:-40],
        "not-a-zip.zip": b"PK\x03\x04 not really",
        "traversal.zip": bundle_zip({"../../escape.txt": b"x"}),
        "no-manifest.zip": b"",
        "deep-results.zip": bundle_zip({"config.yaml": b"model: synthetic\ndata: synthetic\n",
                                        "results.json": b"[" * 100_000 + b"]" * 100_000}),
        "lab-seed.zip": bundle_zip({"config.yaml": b"model: {source: 'synthetic:0.1:4242'}\ndata: synthetic\n"}),
        "bad-config.zip": bundle_zip({"config.yaml": b"model: [1, 2\n"}),
        "huge-manifest.zip": bundle_zip({}, manifest={"format": "x" * 100_000}),
    }
    bv = Visitor(server.url)
    for name, blob in bundles.items():
        try:
            file = bv.upload(name, blob)
        except httpx.HTTPStatusError:
            continue
        answer = record(f"bundle {name}", name, bv.call("import_bundle", file))
        if answer.ok:
            problems.append(f"bundle {name} was imported: {answer!r}")

    # 7. out of order in one session: undo, select, export and chat around a real edit
    s = Visitor(server.url)
    for api, args in (("undo", []), ("select_edit", [3]), ("compare_edit", [0]), ("export", ["order"]),
                      ("run_edit", ["rmu", {"steps": 2}]), ("select_edit", [2]), ("undo", []), ("undo", []),
                      ("export_config", ["order"]), ("chat", ["The capital of", 3, 0.0]), ("select_edit", [None])):
        record(f"order {api}", args, s.call(api, *args))

    # 8. concurrent clients, each sending a share of the bad calls above
    def client(k: int) -> list[tuple[str, object, Answer]]:
        c = Visitor(server.url, api=k % 2 == 0)  # half as API clients, half as the page (warnings, not errors)
        out = []
        for api, args, _ in named[k::6]:
            if api == "run_edit":
                continue
            out.append((f"concurrent {api}", args, c.call(api, *args)))
        out.append(("concurrent chat", "ok", c.call("chat", "The capital of", 3, 0.0)))
        return out

    with ThreadPoolExecutor(6) as pool:
        for got in pool.map(client, range(6)):
            for label, args, answer in got:
                record(label, args, answer)

    # afterwards: still serving, unchanged weights, nothing written where it must not be
    assert server.alive(), server.tail()
    after = record("fingerprint", (), Visitor(server.url).call("fingerprint"))
    assert after.ok and after.data[0]["fingerprint"] == fp == after.data[0]["loaded_fingerprint"]
    now = {"root": listing(ROOT, 1), "world": listing(world, 3) - listing(world / "exports", 3),
           "models": listing(models, 1), "home": listing(Path.home(), 1)}
    for where in before:
        added = sorted(now[where] - before[where])
        assert not added, f"written in {where}: {added[:10]}"
    exports = [p.name for p in (world / "exports").iterdir()]
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", n) for n in exports), exports
    assert not any(n.startswith("f" * 100) or n.endswith(".tmp") for n in exports), exports
    server.log.flush()
    log = server.log_path.read_text()
    caught = log.count("an argument could not be read") + log.count("internal error")
    assert caught == 0, f"{caught} request(s) reached a catch-all (see {server.log_path})"
    tried = len(results)
    print(f"\nfuzz: {tried} requests, {sum(1 for *_, a in results if not a.ok)} refused, "
          f"{sum(1 for *_, a in results if a.ok)} answered; {len(problems)} problems")
    assert tried >= MIN_REQUESTS, tried
    assert not problems, "\n".join(problems[:40])
