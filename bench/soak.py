"""B12: the soak and fault scenario (issue 20): eight API clients on one served dashboard, killed
with SIGKILL and restarted on the same state folder and port twice, every session checked after
each restart against what its client last saw acknowledged.

A lab runs one dashboard for a group: visitors fit edits, chat, analyse, attack and export at the
same time, and the server may be killed (an OOM kill, a redeploy) at any moment. What must hold is
what the issue names: nothing acknowledged is lost, the base weights never change, no answer leaks
internals, and memory does not creep. This module is the scenario itself, shared by the soak test
(``tests/test_soak.py``, in ``make test``) and the bench row (``python -m bench --only B12``), so
the figures in SECURITY.md and docs/benchmarks.md come from the code the test runs.

The run, on the tiny synthetic lab model (``--model synthetic --data synthetic``, one OpenMP
thread): ``rounds`` rounds in which every client runs its round's requests in its own thread,
interleaved with the others' (an RMU, SRMU or MRP fit of a few steps, chats, a malformed request,
and one of: an analysis, an attack, an export, an imported checkpoint, a fresh evaluation, an
undo, the Present page, the fingerprint), then reads back what its session holds (``/session``,
``/evaluate``, ``/conversation``, the timeline through ``/select_edit`` of the edit already
selected): that is what it saw acknowledged. After the rounds in ``kill_after`` (all clients
idle, every autosave on disk: ``unlearnviz.state_folder.list_saved``) the server gets SIGKILL and a
new one starts on the same folder and port; each client re-attaches by its session id from a new
``gradio_client.Client`` and must read back exactly what it saw. Kills fall between rounds so that
"acknowledged" is well defined: a request in flight at a kill may be lost by design.
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.common import ROOT, Result, device_name

TESTS = ROOT / "tests"
HOME = str(Path.home())
METHODS = ("rmu", "srmu", "mrp")
PROMPTS = ("The capital of Velmora is", "Once upon a time, in a land far away,", "The river of Dunmere is",
           "Q: What is the capital of Velmora?\nA:")
CLASS_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception)\b|Traceback|Internal error")
ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")
ABSOLUTE = re.compile(r"(?<![\w.~/])/(?:tmp|home|root|usr|work|var|proc|opt|srv|mnt)/")
# Malformed requests a careless or hostile client sends among its real ones: each must be refused
# in one readable line and leave the session as it was (the read-back after the round checks that).
MALFORMED = (
    ("/run_edit", ("rmu", {"steps": True})),
    ("/run_edit", ("nope", {"steps": 2})),
    ("/run_edit", ("mrp", {"layers": [1.9]})),
    ("/chat", ("The capital of", 5.5, 0.0)),
    ("/chat", (None, 4, 0.0)),
    ("/chat", ("The capital of", 4, 1e-300)),
    ("/select_edit", (1.5,)),
    ("/select_edit", (999,)),
    ("/evaluate", ("false",)),
    ("/export", ("../escape",)),
    ("/export", ("fzx\n",)),
    ("/load_model", ("synthetic:0.1:4242", "float32", "auto")),
    ("/import_unlearned", ("../../etc",)),
    ("/session", ("../../etc",)),
    ("/attacks", (["prompts"], 2.5, 4)),
    ("/attacks", (["nope"], 2, 4)),
)


@dataclass
class SoakSettings:
    """The scenario's size: ``clients`` threads, ``rounds`` rounds, SIGKILL after the rounds in
    ``kill_after``; fits of ``steps`` steps. ``rss_bound_mb``: the growth of the server's resident
    memory after warm-up that counts as a problem (see ``RSS_BOUND_MB``)."""

    clients: int = 8
    rounds: int = 6
    kill_after: tuple[int, ...] = (3, 5)
    steps: int = 2
    warm_rounds: int = 2  # rounds before the resident-memory baseline: every request kind run twice, every
    # session holding its first edits, results and caches
    rss_bound_mb: float = 0.0  # 0: RSS_BOUND_MB

    def __post_init__(self) -> None:
        if not self.rss_bound_mb:
            self.rss_bound_mb = RSS_BOUND_MB
        if any(not 1 <= k < self.rounds for k in self.kill_after):
            raise ValueError(f"kill_after {self.kill_after} must name rounds before the last ({self.rounds})")
        if not 1 <= self.warm_rounds < self.rounds:
            raise ValueError(f"warm_rounds {self.warm_rounds} must leave rounds to measure ({self.rounds})")


# The bound on the server's resident-memory growth after the warm-up rounds, from measurements on 2 busy
# CPU cores with glibc's default allocator: the warm server with eight sessions holds 0.9-1.1 GB; in this
# scenario the largest later sample was -24 to +224 MB from it (six runs of 2026-12-02), the peak nearly
# always the round before the first kill. Over twelve rounds without a kill it rose in steps to +330 MB and
# fell back (1309 -> 1157 MB between two rounds): glibc keeps the freed memory of concurrent fits resident,
# and each session's edits (kilobytes to a few MB on the tiny model) and bounded caches grow. 500 MB is over
# twice the worst growth measured, and what a leak of 1.25 MB per request would add over the ~400 requests
# after warm-up.
RSS_BOUND_MB = 500.0


@dataclass
class Figures:
    """What one run measured (the bench row and SECURITY.md read these)."""

    requests: int = 0  # answered requests (a normal result or a refusal), every client, every server life
    malformed: int = 0
    refused: int = 0
    restarts: int = 0
    sessions_checked: int = 0  # sessions read back equal after a restart (clients x restarts)
    rss_warm_mb: float = 0.0  # the server's resident memory after the warm-up rounds
    rss_end_mb: float = 0.0
    rss_growth_mb: float = 0.0  # the largest sample after warm-up (any server life) less rss_warm_mb (< 0: below it)
    rss_samples_mb: list = field(default_factory=list)  # after each round
    server_cpu_s: float = 0.0  # CPU time of the three server processes (what an idle machine's wall time needs)
    client_cpu_s: float = 0.0
    chat_p50_s: float = 0.0
    chat_p95_s: float = 0.0
    eval_p50_s: float = 0.0
    eval_p95_s: float = 0.0
    edit_p50_s: float = 0.0
    edit_p95_s: float = 0.0
    wall_s: float = 0.0
    fingerprint: str = ""
    problems: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _server_class():
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    from app_server import Server

    return Server


def rss_mb(pid: int) -> float:
    """Resident memory of a process (VmRSS in /proc/PID/status), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


class Visitor:
    """One client thread's view: its ``gradio_client.Client``, its session id, the edit it last saw
    selected and what it last read back (``seen``); latencies and problems go to the run."""

    def __init__(self, k: int, run: Soak):
        self.k, self.run = k, run
        self.sid: str | None = None
        self.selected: int | None = None  # the selected edit (1-based) as last shown
        self.seen: dict = {}
        self.client = None

    def connect(self) -> None:
        from gradio_client import Client

        self.client = Client(self.run.server.url, verbose=False, download_files=str(self.run.downloads))

    def call(self, api: str, *args, bad: bool = False, tag: str | None = None):
        """One request; (ok, result or refusal message). Every answer is checked for internals;
        ``tag``: the name its latency is filed under (default: the endpoint)."""
        from gradio_client.exceptions import AppError

        t0 = time.perf_counter()
        try:
            out = self.client.predict(*args, api_name=api)
        except AppError as exc:
            self.run.answered(api, time.perf_counter() - t0, refused=True, malformed=bad)
            self.run.check_refusal(api, args, str(exc))
            if not bad:
                self.run.problem(f"client {self.k} {api}{str(args)[:80]} refused: {str(exc)[:200]}")
            return False, str(exc)
        except Exception as exc:  # noqa: BLE001 - no answer at all (a dropped connection): a problem, not a crash
            self.run.problem(f"client {self.k} {api}{str(args)[:80]}: no answer ({type(exc).__name__}: {str(exc)[:200]})")
            return False, None
        self.run.answered(tag or api, time.perf_counter() - t0, refused=False, malformed=bad)
        self.run.check_answer(api, out)
        self.track(out)
        if bad:
            self.run.problem(f"client {self.k}: malformed {api}{str(args)[:80]} was accepted: {str(out)[:200]}")
        return True, out

    def track(self, out) -> None:
        """The selected edit, from an answer that shows it: a timeline (its "◀ selected" row) or an
        edit's summary (``index``, 0-based)."""
        for value in out if isinstance(out, (list, tuple)) else (out,):
            if isinstance(value, dict) and value.get("headers", [None])[:2] == ["#", "edit"]:
                self.selected = next((row[0] for row in value.get("data") or [] if str(row[-1]).endswith("selected")),
                                     None)
            elif isinstance(value, dict) and isinstance(value.get("index"), int) and "method" in value:
                self.selected = value["index"] + 1

    # ---- a round -------------------------------------------------------------------------------
    def attach(self) -> dict:
        """A new Client on the (new) server, attached to this visitor's session (a new one at first)."""
        self.connect()
        ok, out = self.call("/session", self.sid or "")
        if ok:
            self.sid = out["id"]
            return out
        raise RuntimeError(f"client {self.k} could not attach to session {self.sid}: {out}")

    def round(self, r: int) -> None:
        s = self.run.settings
        k = self.k
        method = METHODS[(k + r) % len(METHODS)]
        extra = (k + r) % 8
        if extra == 5 and (self.seen.get("session") or {}).get("undone"):
            self.call("/redo")  # the edit undone last round back (before a new fit clears what redo holds)
        self.call("/run_edit", method, {"steps": s.steps, "seed": k})
        self.call("/chat", PROMPTS[(k + r) % len(PROMPTS)], 4, 0.0)
        if (k + r) % 2 == 0:
            self.call("/evaluate", True, tag="evaluation")  # lettered scoring: both sides measured afresh
        api, args = MALFORMED[(k * s.rounds + r) % len(MALFORMED)]
        self.call(api, *args, bad=True)
        if extra == 0:
            self.call("/analyze")
        elif extra == 1:
            self.call("/attacks", ["prompts"], 2, 4)
        elif extra == 2:
            self.call("/export", f"soak-c{k}-r{r}")
        elif extra == 3:
            self.call("/import_unlearned", self.run.checkpoint.name)
        elif extra == 4:
            if len(self.seen.get("edits", [])) >= 2:
                self.call("/undo")
            self.call("/new_conversation")
        elif extra == 5:
            self.call("/describe_unlearned", "ga")  # a name under the model folder, as a visitor types it
        elif extra == 6:
            self.call("/present")
        else:
            ok, out = self.call("/fingerprint")
            if ok:
                self.run.saw_fingerprint(out["fingerprint"], f"client {k}, round {r}")
        self.call("/chat", PROMPTS[(k + r + 1) % len(PROMPTS)], 3, 0.7)

    def read_back(self) -> dict:
        """What the session holds, as this client sees it: the session summary, the metrics, the
        conversation and the timeline (``/select_edit`` of the edit already selected, which changes
        nothing)."""
        _, summary = self.call("/session", self.sid)
        _, metrics = self.call("/evaluate", False)
        _, conversation = self.call("/conversation")
        timeline = None
        if isinstance(summary, dict) and summary.get("edits") and self.selected is not None:
            _, out = self.call("/select_edit", self.selected)
            timeline = out[1]["data"] if isinstance(out, (list, tuple)) else out
        return {"session": summary, "metrics": metrics[-1] if isinstance(metrics, (list, tuple)) else metrics,
                "conversation": conversation, "timeline": timeline}

    def snapshot(self) -> None:
        got = self.read_back()
        self.seen = {**got, "edits": (got["session"] or {}).get("edits", [])}

    def verify(self, restart: int) -> None:
        """After a restart: a new Client, re-attached by id, reads back what was last acknowledged."""
        want = {k: self.seen.get(k) for k in ("session", "metrics", "conversation", "timeline")}
        self.attach()
        got = self.read_back()
        for key, value in want.items():
            if got[key] != value:
                self.run.problem(f"after restart {restart}, client {self.k}'s {key} differs: saw "
                                 f"{json.dumps(value, default=str)[:300]}, got {json.dumps(got[key], default=str)[:300]}")
        self.run.checked()


class Soak:
    """One run of the scenario in ``work`` (a fresh folder: state, models, exports, downloads)."""

    def __init__(self, work: Path, settings: SoakSettings | None = None, log=print):
        self.work, self.settings, self.log = Path(work), settings or SoakSettings(), log
        self.state, self.models, self.exports = self.work / "state", self.work / "models", self.work / "exports"
        self.downloads = self.work / "downloads"
        for folder in (self.state, self.models, self.exports, self.downloads):
            folder.mkdir(parents=True, exist_ok=True)
        self.fig = Figures()
        self.lat: dict[str, list[float]] = {}
        self.lock = threading.Lock()
        self.server = None
        self.port: int | None = None
        self.checkpoint: Path | None = None

    # ---- bookkeeping (called from the client threads) ------------------------------------------
    def problem(self, text: str) -> None:
        with self.lock:
            self.fig.problems.append(text)

    def answered(self, api: str, seconds: float, refused: bool, malformed: bool) -> None:
        with self.lock:
            self.fig.requests += 1
            self.fig.refused += refused
            self.fig.malformed += malformed
            if not refused:
                self.lat.setdefault(api, []).append(seconds)

    def checked(self) -> None:
        with self.lock:
            self.fig.sessions_checked += 1

    def saw_fingerprint(self, fp: str, where: str) -> None:
        with self.lock:
            if not self.fig.fingerprint:
                self.fig.fingerprint = fp
            elif fp != self.fig.fingerprint:
                self.fig.problems.append(f"the base weights' fingerprint changed ({where}): {fp} != {self.fig.fingerprint}")

    def _folders(self) -> tuple[str, ...]:
        return (str(ROOT), HOME, str(self.work), "/tmp/gradio")

    def check_refusal(self, api: str, args, message: str) -> None:
        where = f"{api}{str(args)[:60]}"
        if not message.strip() or "\n" in message.strip() or len(message) > 700:
            self.problem(f"{where}: not one short line: {message[:300]!r}")
        for rule in (CLASS_NAME, ADDRESS, ABSOLUTE):
            if rule.search(message):
                self.problem(f"{where}: internals in the refusal ({rule.pattern[:24]}…): {message[:300]!r}")
        if any(f in message for f in self._folders()):
            self.problem(f"{where}: a server folder in the refusal: {message[:300]!r}")

    def check_answer(self, api: str, out) -> None:
        downloads = str(self.downloads)
        for text in _strings(out):
            if text.startswith(downloads):
                continue  # a file this client downloaded (an export): the client's own folder
            if "Traceback" in text or "Internal error" in text or ADDRESS.search(text):
                self.problem(f"{api}: internals in a normal answer: {text[:300]!r}")
            if any(f in text for f in self._folders()):
                self.problem(f"{api}: a server folder in a normal answer: {text[:300]!r}")

    # ---- the server ----------------------------------------------------------------------------
    def start(self) -> None:
        Server = _server_class()
        flags = ("--model", "synthetic", "--data", "synthetic", "--state-dir", str(self.state),
                 "--model-dir", str(self.models), "--max-steps", "40")
        env = {"OMP_NUM_THREADS": "1", "UNLEARNVIZ_EXPORTS": str(self.exports), "HF_HUB_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "false")}
        self.server = Server(*flags, env=env, port=self.port)
        self.port = self.server.port

    def kill(self) -> None:
        """SIGKILL: no shutdown hook, no final save; what is on disk is what survives."""
        srv = self.server
        self.fig.server_cpu_s += cpu_s(srv.proc.pid)
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(timeout=30)
        self._scan_log(srv)
        srv.log.close()
        self._keep_log(srv)

    def stop(self) -> None:
        if self.server is not None and self.server.proc.poll() is None:
            self.fig.server_cpu_s += cpu_s(self.server.proc.pid)
            self._scan_log(self.server)
            self.server.stop()
            self._keep_log(self.server)

    def _keep_log(self, srv) -> None:
        """The server's log into ``work/logs`` (server-1.log, ...): where a problem's traceback is."""
        import shutil

        folder = self.work / "logs"
        folder.mkdir(exist_ok=True)
        if srv.log_path.exists():
            shutil.move(str(srv.log_path), folder / f"server-{len(list(folder.iterdir())) + 1}.log")

    def _scan_log(self, srv) -> None:
        srv.log.flush()
        text = srv.log_path.read_text() if srv.log_path.exists() else ""
        caught = text.count("an argument could not be read") + text.count("internal error")
        if caught:
            self.problem(f"{caught} request(s) reached a catch-all in the server's log: "
                         f"{text[text.find('Traceback'):][:600]!r}")

    def rss(self) -> float:
        return rss_mb(self.server.proc.pid)

    def fingerprint(self, where: str) -> None:
        v = Visitor(-1, self)
        v.connect()
        ok, out = v.call("/fingerprint")
        if ok:
            if out["fingerprint"] != out["loaded_fingerprint"]:
                self.problem(f"{where}: the weights hash to {out['fingerprint']}, loaded as {out['loaded_fingerprint']}")
            self.saw_fingerprint(out["fingerprint"], where)

    def wait_saved(self, visitors: list[Visitor], timeout: float = 60.0) -> None:
        """Until every session's sidecar in the state folder shows the edits and chats its client
        last read back (the autosave runs before each answer; this confirms it landed)."""
        from unlearnviz.state_folder import list_saved

        deadline = time.time() + timeout
        while True:
            saved = {i["id"]: i for i in list_saved(self.state)}
            behind = [v.k for v in visitors
                      if (saved.get(v.sid) or {}).get("edits") != v.seen.get("edits")
                      or (saved.get(v.sid) or {}).get("chats") != (v.seen.get("session") or {}).get("chats")]
            if not behind:
                return
            if time.time() > deadline:
                self.problem(f"the autosave of clients {behind} did not land in {timeout:.0f} s")
                return
            time.sleep(0.2)

    # ---- the run -------------------------------------------------------------------------------
    def make_checkpoint(self) -> Path:
        """A checkpoint of the served lab model made by a plain gradient-ascent loop (three steps on
        two tensors) and saved with ``save_pretrained`` under the model folder: what a visitor
        imports as an edit."""
        import torch

        if str(TESTS) not in sys.path:
            sys.path.insert(0, str(TESTS))
        from foreign_models import gradient_ascent

        from unlearnviz.data.synthetic import synthetic_model_path

        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            base = synthetic_model_path(0.1, seed=0)
            return gradient_ascent(base, self.models / "ga", steps=3, lr=5e-2,
                                   train=("transformer.h.1.mlp.c_proj.weight", "transformer.ln_f.weight"))
        finally:
            torch.set_num_threads(before)

    def run(self) -> Figures:
        s, t_start = self.settings, time.perf_counter()
        cpu0 = os.times().user + os.times().system
        self.checkpoint = self.make_checkpoint()
        self.start()
        visitors = [Visitor(k, self) for k in range(s.clients)]
        try:
            self.fingerprint("at start")
            with ThreadPoolExecutor(s.clients) as pool:
                list(pool.map(lambda v: v.attach(), visitors))
                for r in range(1, s.rounds + 1):
                    list(pool.map(lambda v, r=r: v.round(r), visitors))
                    list(pool.map(lambda v: v.snapshot(), visitors))
                    rss = self.rss()
                    self.fig.rss_samples_mb.append(round(rss, 1))
                    if r == s.warm_rounds:
                        self.fig.rss_warm_mb = rss
                    self.log(f"round {r}: {self.fig.requests} requests, RSS {rss:.0f} MB")
                    if r in s.kill_after:
                        self.wait_saved(visitors)
                        self.fingerprint(f"before kill {self.fig.restarts + 1}")
                        self.kill()
                        self.start()
                        self.fig.restarts += 1
                        list(pool.map(lambda v: v.verify(self.fig.restarts), visitors))
                        self.fingerprint(f"after restart {self.fig.restarts}")
                        self.log(f"restart {self.fig.restarts}: {len(visitors)} sessions read back")
            self.fingerprint("at the end")
            self.fig.rss_end_mb = round(self.rss(), 1)
        finally:
            self.stop()
        lat = self.lat
        self.fig.chat_p50_s, self.fig.chat_p95_s = _pct(lat.get("/chat", []), 50), _pct(lat.get("/chat", []), 95)
        evals = lat.get("evaluation", [])
        self.fig.eval_p50_s, self.fig.eval_p95_s = _pct(evals, 50), _pct(evals, 95)
        edits = lat.get("/run_edit", [])
        self.fig.edit_p50_s, self.fig.edit_p95_s = _pct(edits, 50), _pct(edits, 95)
        later = self.fig.rss_samples_mb[s.warm_rounds:]  # every server life's samples after the warm-up
        self.fig.rss_warm_mb = round(self.fig.rss_warm_mb, 1)
        self.fig.rss_growth_mb = round(max(later) - self.fig.rss_warm_mb, 1) if later else 0.0
        self.fig.wall_s = round(time.perf_counter() - t_start, 1)
        own = os.times()
        self.fig.client_cpu_s = round(own.user + own.system - cpu0, 1)
        self.fig.server_cpu_s = round(self.fig.server_cpu_s, 1)
        return self.fig


def run_soak(work: Path, settings: SoakSettings | None = None, log=print) -> Figures:
    return Soak(work, settings, log).run()


def b12_soak(quick: bool = False) -> dict:
    """The bench row: the same scenario as the soak test (``--quick``: four clients, five rounds)."""
    import tempfile

    settings = SoakSettings(clients=4, rounds=5, kill_after=(3, 4)) if quick else SoakSettings()
    with tempfile.TemporaryDirectory(prefix="unlearnviz-soak-") as work:
        fig = run_soak(Path(work), settings)
    met = not fig.problems and fig.restarts == len(settings.kill_after) and fig.rss_growth_mb < settings.rss_bound_mb
    note = (f"{settings.clients} clients × {settings.rounds} rounds on the tiny lab model, SIGKILL + restart after rounds "
            f"{', '.join(map(str, settings.kill_after))}: {fig.requests} requests answered ({fig.malformed} malformed, "
            f"{fig.refused} refused), {fig.restarts} restarts survived, {fig.sessions_checked} sessions read back equal, "
            f"{len(fig.problems)} problems; RSS {fig.rss_warm_mb:.0f} MB after {settings.warm_rounds} warm-up rounds; "
            f"p50/p95 chat {fig.chat_p50_s:.2f}/{fig.chat_p95_s:.2f} s, evaluation {fig.eval_p50_s:.2f}/"
            f"{fig.eval_p95_s:.2f} s, edit {fig.edit_p50_s:.2f}/{fig.edit_p95_s:.2f} s; {fig.wall_s:.0f} s wall, "
            f"server CPU {fig.server_cpu_s:.0f} s")
    limit = "; ".join(fig.problems[:3]) if fig.problems else (
        "" if met else f"RSS grew {fig.rss_growth_mb:.0f} MB after warm-up (samples {fig.rss_samples_mb})")
    return {"results": [Result("B12", f"soak: {settings.clients} API clients, SIGKILL + restart "
                               f"{len(settings.kill_after)}×, sessions read back after each",
                               fig.rss_growth_mb, None, None, f"< {settings.rss_bound_mb:.0f} MB, 0 problems", met, "MB",
                               device_name(), note, limit)]}
