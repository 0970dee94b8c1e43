"""The one way the page shows long work: a job's stages, a bar and one status line.

Every long action (the demo, a fit, the relearning attack, the robustness card, a sweep, the
report) moves a ``session.progress.Tracker`` from a worker thread; the event that runs it yields
:func:`html` of the tracker's snapshot to a ``gr.HTML`` beside its results, about twice a second,
with the event's own Gradio overlay hidden (``show_progress="hidden"``) so the live loss curve
stays visible while it trains. Gradio's ``gr.Progress`` (what API clients see as the job's
status) gets the same line through :func:`to_gradio`.
"""

from __future__ import annotations

import contextvars
import html as _html
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from unlearnviz.session.progress import Snapshot, Tracker

REFRESH_S = 0.5  # how often a running job's bar is redrawn

CSS = """
.uv-progress {margin: .3em 0 .6em 0}
.uv-progress-track {height: .8em; border-radius: .4em; background: #e5e7eb; overflow: hidden}
.uv-progress-fill {height: 100%; background: #4f46e5; transition: width .4s linear}
.uv-progress-line {margin: .35em 0 0 0; font-size: 1.05em}
.uv-progress-stages {margin: .2em 0 0 0; font-size: .9em; color: #6b7280}
.uv-progress-stages .now {color: #111827; font-weight: 600}
"""


def html(snap: Snapshot | None, with_line: bool = True) -> str:
    """A snapshot as a bar, the status line (``with_line``: False where a status line above shows
    it already) and the stages (done ✓, now ▶, to come); empty for None."""
    if snap is None:
        return ""
    pct = round(100 * snap.fraction)
    line = _html.escape(snap.line())
    marks = []
    for i, name in enumerate(snap.stages):
        if snap.finished or i < snap.index:
            marks.append(f"<span>✓ {_html.escape(name)}</span>")
        elif i == snap.index and snap.stage is not None:
            marks.append(f'<span class="now">▶ {_html.escape(name)}</span>')
        else:
            marks.append(f"<span>{_html.escape(name)}</span>")
    shown_line = f'<p class="uv-progress-line">{line}</p>' if with_line else ""
    return (f'<div class="uv-progress" data-stage="{_html.escape(snap.stage or "")}" '
            f'data-finished="{str(snap.finished).lower()}">'
            f'<div class="uv-progress-track" role="progressbar" aria-valuemin="0" aria-valuemax="100" '
            f'aria-valuenow="{pct}" aria-label="{line}"><div class="uv-progress-fill" style="width: {pct}%"></div>'
            f'</div>{shown_line}'
            f'<p class="uv-progress-stages">{" · ".join(marks)}</p></div>')


def to_gradio(progress, snap: Snapshot) -> None:
    """The same line to a ``gr.Progress`` (None: nothing): API clients' view of the job."""
    if progress is not None and not snap.finished:
        progress(snap.fraction, desc=snap.line())


def run_tracked(work: Callable[[], Any], tracker: Tracker, out: dict, events: queue.Queue | None = None,
                progress=None, finish: bool = True) -> Iterator[tuple[Snapshot, list]]:
    """Run ``work()`` in a worker thread; yield (snapshot, events that arrived since) every
    ``REFRESH_S`` while it runs and once when it is done (the result in ``out["value"]``; the
    tracker finished unless ``finish`` is False: a job that goes on). ``events``: a queue ``work``
    puts its own events in (training events for a live curve). An exception ``work`` raised is
    raised here, in the caller's thread."""
    def target():
        try:
            out["value"] = work()
        except BaseException as exc:  # re-raised in the caller's thread
            out["error"] = exc

    # the caller's context goes with the work (the visitor its cache entries are charged to)
    worker = threading.Thread(target=contextvars.copy_context().run, args=(target,), daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(REFRESH_S)
        arrived = _drain(events)
        snap = tracker.snapshot()
        to_gradio(progress, snap)
        if worker.is_alive():
            yield snap, arrived
    if "error" in out:
        raise out["error"]
    if finish:
        tracker.finish()
    yield tracker.snapshot(), _drain(events)


def _drain(events: queue.Queue | None) -> list:
    got = []
    while events is not None:
        try:
            got.append(events.get_nowait())
        except queue.Empty:
            break
    return got
