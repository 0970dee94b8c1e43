"""The page's session: its id in the browser's local storage (Gradio's ``BrowserState``), restored
on every page load, so a reload, a second tab of the same browser and (with ``--state-dir``) a
server restart all return to the same timeline, results and chats; and the Session panel, which
lists the visitor's saved sessions to reopen one or start anew.

The session objects live in the ``unlearnviz.registry`` (bounded in memory, autosaved as bundles
in the state folder); this module binds the page to it. The browser keeps only ids: ``{"id":
the open session, "ids": the sessions this browser made, newest first}``, read back as untrusted
input (every id checked). With a state folder the BrowserState's secret and key are fixed there,
so the stored id still reads after a restart; without one Gradio draws a new secret per process.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import gradio as gr

from unlearnviz.errors import UserError
from unlearnviz.registry import SessionRegistry
from unlearnviz.state_folder import SESSION_ID, describe
from unlearnviz.ui.common import AppConfig, UISession, readable

STORAGE_KEY = "unlearnviz-session"
SECRET_FILE = "browser-secret"
MAX_BROWSER_IDS = 12  # sessions one browser remembers (newest first)


def browser_secret(state_dir: Path | None) -> str | None:
    """The BrowserState's secret, kept in the state folder (created once, owner-only) so a browser's
    stored id decrypts after a restart; None without a state folder (Gradio's random one)."""
    if state_dir is None:
        return None
    path = Path(state_dir) / SECRET_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32))
    return path.read_text(encoding="utf-8").strip()


def restorer(config: AppConfig):
    """Read a saved session back (``state_folder.load_saved``) as a UISession, its model and data through
    the same folder rules as a visitor's bundle import (``tab_export.import_into``)."""
    from unlearnviz.session import compose_data_spec
    from unlearnviz.state_folder import load_saved
    from unlearnviz.ui.common import confine_data_spec, confine_model_source

    def restore(path: Path) -> UISession:
        restored = load_saved(path, allow_model=lambda s: confine_model_source(s, config),
                              allow_data=lambda s: compose_data_spec(s, {}, confine=lambda p: confine_data_spec(p, config)),
                              limits=config.limits)
        restored.history = [h for h in restored.history if h.get("action") != "import_bundle"]  # not an import
        session = UISession(limits=config.limits)
        session.adopt(restored)
        return session

    return restore


def make_registry(config: AppConfig) -> SessionRegistry:
    return SessionRegistry(config.sessions, restore=restorer(config))


def stored_ids(value) -> tuple[str | None, list[str]]:
    """(the open session's id, the browser's ids) from what the browser sent, anything else ignored."""
    if not isinstance(value, dict):
        return None, []
    ids = value.get("ids") if isinstance(value.get("ids"), list) else []
    ids = [i for i in ids if isinstance(i, str) and SESSION_ID.match(i)][:MAX_BROWSER_IDS]
    sid = value.get("id") if isinstance(value.get("id"), str) and SESSION_ID.match(value["id"]) else None
    return sid, ids


def _username() -> str | None:
    """The logged-in user of the event running (``--auth-file``), else None."""
    from gradio.context import LocalContext

    request = LocalContext.request.get(None)
    return getattr(request, "username", None) or None


def _stored(sid: str, ids: list[str]) -> dict:
    return {"id": sid, "ids": [sid, *[i for i in ids if i != sid]][:MAX_BROWSER_IDS]}


def status_line(registry: SessionRegistry, session: UISession, message: str = "") -> str:
    sid = getattr(session, "sid", None) or ""
    if registry.state_dir is not None:
        kept = "autosaved on the server after every change; it survives a reload and a server restart"
    else:
        kept = ("kept in this server's memory: a reload or a second tab returns to it, a server restart does "
                "not (the operator can start the server with --state-dir)")
    line = f"**Session** `{sid[:8]}…`: {kept}."
    return (f"{message}\n\n" if message else "") + line


def choices(registry: SessionRegistry, ids: list[str], current: str | None) -> dict:
    rows = registry.listing(ids, _username())
    labelled = [(("▶ " if r["id"] == current else "") + f"{r.get('model') or '?'} · {r.get('data') or '?'} · "
                 + describe(r), r["id"]) for r in rows]
    return gr.update(choices=labelled, value=current if any(r["id"] == current for r in rows) else None)


def build(config: AppConfig) -> dict:
    """The BrowserState and the Session panel (placed where this is called)."""
    browser = gr.BrowserState(None, storage_key=STORAGE_KEY, secret=browser_secret(config.sessions.state_dir))
    note = gr.Markdown("", elem_id="uv-session-note")  # always shown: where this session is kept, what came back
    with gr.Accordion("Session: reopen a saved session or start a new one", open=False, elem_id="uv-sessions"):
        with gr.Row():
            picker = gr.Dropdown([], label="Your sessions (this browser's; with a login, all of yours)",
                                 interactive=True, scale=4)
            open_btn = gr.Button("Open", scale=1)
            new_btn = gr.Button("New session", scale=1)
    reload_flag = gr.Textbox(visible=False)  # "reload": the page reloads onto the session just stored
    api_id = gr.Textbox(visible=False, label="session_id")
    api_out = gr.JSON(visible=False)
    api_btn = gr.Button(visible=False)
    return {"browser": browser, "note": note, "picker": picker, "open": open_btn, "new": new_btn,
            "reload": reload_flag, "api_id": api_id, "api_out": api_out, "api_btn": api_btn}


def wire(demo: gr.Blocks, ui: dict, state: gr.State, config: AppConfig, show_session, outputs: list,
         registry: SessionRegistry):
    """The page-load restore (returned, so the app can chain its sync of every tab on it), the
    panel's buttons and the ``/session`` API endpoint. ``outputs[0]`` is the state and
    ``show_session(session) -> [session, *outputs[1:]]`` redraws every tab from a session."""
    browser, note, picker, reload_flag = ui["browser"], ui["note"], ui["picker"], ui["reload"]

    def bind(session: UISession) -> UISession:
        session.limits = config.limits
        session.autosave = registry.autosave
        return session

    def attach(fresh: UISession, sid: str | None) -> tuple[UISession, str]:
        """The session of ``sid`` if there is one for this visitor, else ``fresh`` under a new id;
        and what to tell the visitor when a remembered session could not be had."""
        message = ""
        if sid is not None:
            try:
                found = registry.get(sid, _username())
            except UserError as exc:  # its model or data is gone: said once, the page still opens
                found, message = None, f"⚠ {exc}. This is a new session; the saved one is kept on the server."
                gr.Warning(message[2:], title="Session not restored")
            else:
                if found is None:
                    why = ("the server keeps only its most recently used sessions in memory and has no --state-dir"
                           if registry.state_dir is None else "the operator deleted it")
                    message = f"Your previous session is no longer on this server ({why}); this is a new session."
            if found is not None:
                return bind(found), message
        registry.add(fresh, _username())
        return bind(fresh), message

    @readable
    def on_load(session: UISession, stored):
        sid, ids = stored_ids(stored)
        session, message = attach(session, sid)
        drawn = show_session(session)
        return [_stored(session.sid, ids), status_line(registry, session, message),
                choices(registry, [session.sid, *ids], session.sid), *drawn]

    load = demo.load(on_load, [state, browser], [browser, note, picker, *outputs], api_visibility="private")

    @readable
    def on_open(session: UISession, stored, picked):
        """Switch this browser to a listed session: checked (and restored) here, then the page
        reloads onto it, so every tab is drawn from it as after any reload."""
        sid, ids = stored_ids(stored)
        if not picked or not isinstance(picked, str):
            raise UserError("choose one of your sessions in the list first")
        if picked not in {r["id"] for r in registry.listing([*ids, sid or ""], _username())}:
            raise UserError("that session is not one of this browser's (or your login's) sessions")
        if registry.get(picked, _username()) is None:
            raise UserError("that session is no longer on this server")
        if picked == getattr(session, "sid", None):
            return gr.skip(), "That session is the one open.", ""
        return _stored(picked, [*ids, *([sid] if sid else [])]), "Opening the session …", "reload"

    def on_new(session: UISession, stored):
        sid, ids = stored_ids(stored)
        return {"id": "", "ids": ids or ([sid] if sid else [])}, "Starting a new session …", "reload"

    reload_js = "(flag) => { if (flag === 'reload') setTimeout(() => window.location.reload(), 400); }"
    for button, fn, inputs in ((ui["open"], on_open, [state, browser, picker]), (ui["new"], on_new, [state, browser])):
        button.click(fn, inputs, [browser, note, reload_flag], api_visibility="private").then(
            None, reload_flag, None, js=reload_js)

    @readable
    def on_api(session: UISession, session_id: str | None):
        """API: attach this client to a session by id (one from an earlier call: after a restart its
        saved state comes back), or with an empty id to this client's own, registered and autosaved
        from now on. Returns the id and what the session holds."""
        text = (session_id or "").strip() if isinstance(session_id, str) else session_id
        if text:
            from unlearnviz.state_folder import check_id

            found = registry.get(check_id(text), _username())
            if found is None:
                raise UserError("there is no such session on this server")
            session = found
        elif getattr(session, "sid", None) is None:
            registry.add(session, _username())
        bind(session)
        return session, {"id": session.sid, "model": session.lm.name if session.lm else None,
                         "data": session.data.name if session.data else None,
                         "edits": [e.label() for e in session.stack.edits], "undone": len(session.undone),
                         "chats": len(session.chats), "saved": registry.state_dir is not None}

    ui["api_btn"].click(on_api, [state, ui["api_id"]], [state, ui["api_out"]], api_name="session")
    return load
