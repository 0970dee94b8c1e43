"""Export tab: the edit file, a standalone checkpoint, the session's config, a session bundle, an
HTML report; and importing a bundle back (replacing this browser session's state)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import gradio as gr

from unlearnviz.errors import UserError
from unlearnviz.io import atomic_write_text, safe_child
from unlearnviz.session import catalogue
from unlearnviz.session import progress as progress_model
from unlearnviz.ui import inputs, progress_view
from unlearnviz.ui.common import AppConfig, UISession, check_upload, confine_model_source, readable

INTRO = ("**Export.** Save the selected edit (safetensors + manifest with checksums and the model's "
         "fingerprint: it refuses to load onto another model), a standalone Hugging Face checkpoint with the "
         "edit merged in, the YAML config that replays this session (`python -m unlearnviz run --config F --out "
         "DIR`, or `python app.py --config F`), a **session bundle** (one .zip: config, data, every edit, metrics, "
         "relearning results and chats, with checksums) or an HTML report. **Import** a bundle to restore a "
         "session, here or from the command line, without refitting anything.")


def export_root() -> Path:
    root = Path(os.environ.get("UNLEARNVIZ_EXPORTS", catalogue.cache_folder() / "exports"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def zip_folder(folder: Path, target: Path) -> Path:
    """Zip atomically: build under a temporary name, then rename."""
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".zip"))
    try:
        made = shutil.make_archive(str(tmp / target.stem), "zip", folder)
        os.replace(made, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def export_edit_files(session: UISession, folder: Path, zipped: Path) -> None:
    """The selected edit as ``folder`` and ``zipped``, both made under a temporary name in the same
    folder and renamed into place only once whole; if the second rename fails the first is undone
    (an earlier export of that name put back): a failed export leaves nothing behind."""
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".export-"))
    try:
        session.export_edit(tmp / "edit")
        zip_folder(tmp / "edit", tmp / "edit.zip")
        old = tmp / "old"
        if folder.exists():
            folder.rename(old)
        (tmp / "edit").rename(folder)
        try:
            os.replace(tmp / "edit.zip", zipped)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            if old.exists():
                old.rename(folder)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


DERIVED = {"edit": ("{}", "{}.zip"), "checkpoint": ("{}-checkpoint",), "config": ("{}.yaml",),
           "bundle": ("{}-session.zip",), "report": ("{}.html",)}  # every name an export of each kind writes


def export_targets(root: Path, label: str, kind: str) -> list[Path]:
    """Every path an export of ``kind`` named ``label`` writes, each checked by the file-name rule
    before the first byte is written (an edit export is a folder and a zip: a name whose zip would
    be refused must not leave its folder behind)."""
    return [safe_child(root, pattern.format(label)) for pattern in DERIVED[kind]]


def import_into(session: UISession, path: str, config: AppConfig) -> dict:
    """Replace ``session``'s state with a verified bundle's; on any error the session is unchanged."""
    from unlearnviz.bundle import MAX_BUNDLE_BYTES, import_bundle
    from unlearnviz.session import compose_data_spec
    from unlearnviz.ui.common import confine_data_spec

    new = import_bundle(check_upload(path, config), allow_model=lambda s: confine_model_source(s, config),
                        allow_data=lambda s: compose_data_spec(s, {}, confine=lambda p: confine_data_spec(p, config)),
                        limits=config.limits,
                        max_bytes=min(MAX_BUNDLE_BYTES, config.limits.max_upload_mb * 2**20 * 16))
    session.adopt(new)
    return {"model": session.lm.name, "data": session.data.name, "edits": [e.label() for e in session.stack.edits],
            "metrics": sorted(session.after), "chats": len(session.chats)}


def build(state: gr.State, config: AppConfig) -> dict:
    gr.Markdown(INTRO)
    name = gr.Textbox(value="my-edit", label="Export name", info="letters, digits, '.', '_' and '-'; saved under the "
                      "server's export folder")
    with gr.Row():
        edit_btn = gr.Button("Edit file (.zip)", variant="primary")
        ckpt_btn = gr.Button("Standalone checkpoint")
        cfg_btn = gr.Button("Reproducing config (YAML)")
        bundle_btn = gr.Button("Download session bundle (.zip)")
        report_btn = gr.Button("Write HTML report")
    files = gr.File(label="Download", interactive=False)
    message = gr.Markdown()
    api_out = gr.JSON(visible=False)
    gr.Markdown("### Import a session bundle\nReplaces this session (model, data, edits, metrics, chats) with the "
                "bundle's, after checking every checksum, the model's fingerprint and the data's hash. A damaged or "
                "foreign file changes nothing.")
    with gr.Row():
        upload = gr.File(label="Session bundle (.zip)", file_types=[".zip"], type="filepath", scale=3)
        import_btn = gr.Button("Import bundle", scale=1)

    @readable(args=inputs.ExportName)
    def on_export(session: UISession, label: str, kind: str, progress=None):
        root = export_root()
        targets = export_targets(root, label, kind)
        if kind == "edit":
            folder, path = targets
            if session.current_edit() is None:
                raise UserError("there is no edit to export yet (Unlearn tab)")
            export_edit_files(session, folder, path)
            msg = f"Saved the edit in `{folder.name}/` and `{path.name}` (in the server's export folder)."
        elif kind == "checkpoint":
            if session.current_edit() is None:
                raise UserError("there is no edit yet (Unlearn tab)")
            folder = targets[0]
            try:
                info = session.export_checkpoint(folder)
            finally:  # an export that failed midway leaves no half-written folder
                shutil.rmtree(folder.with_name(folder.name + ".tmp"), ignore_errors=True)
            path = folder / "unlearnviz_export.json"
            msg = (f"Wrote a Hugging Face checkpoint to `{folder.name}/` in the server's export folder (load it "
                   f"with `AutoModelForCausalLM.from_pretrained`). {info.get('note', '')}")
        elif kind == "config":
            path = targets[0]
            if session.current_edit() is None:
                raise UserError("there is no edit yet (Unlearn tab): the config replays the session's edits")
            atomic_write_text(path, session.to_config(base=config.run_config).to_yaml())
            msg = (f"Saved `{path.name}`: `python -m unlearnviz run --config {path.name} --out DIR` refits the "
                   f"{len(session.stack)} edit(s) in order; `python app.py --config {path.name}` serves it.")
        elif kind == "bundle":
            from unlearnviz.bundle import export_bundle

            path = targets[0]
            session.require_model()
            export_bundle(session, path, base=config.run_config)
            msg = (f"Saved the session bundle `{path.name}` ({path.stat().st_size / 2**20:.1f} MB, "
                   f"{len(session.stack)} edit(s), {len(session.chats)} chat(s)); import it here or with "
                   f"`python -m unlearnviz bundle import {path.name} --out DIR`.")
        else:
            from unlearnviz.session.reporting import write_session_report

            session.require_model()
            tracker, out = progress_model.report_tracker(), {}  # its stages, bar and ETA in the overlay
            for _ in progress_view.run_tracked(lambda: write_session_report(session, targets[0], tracker=tracker),
                                               tracker, out, progress=progress):
                pass
            path = Path(out["value"])
            msg = f"Wrote the self-contained report `{path.name}` (opens offline)."
        # the file goes to the download box (Gradio serves a copy); the answer names it relative to the
        # export folder, never by the server's own path (not "path": clients read that as a file)
        return str(path), inputs.public(msg), {"saved": str(path.relative_to(root)), "kind": kind}

    for btn, kind in ((edit_btn, "edit"), (ckpt_btn, "checkpoint"), (cfg_btn, "config"), (bundle_btn, "bundle"),
                      (report_btn, "report")):
        btn.click(lambda s, n, k=kind, progress=gr.Progress(): on_export(s, n, k, progress), [state, name],
                  [files, message, api_out],
                  api_name="export" if kind == "edit" else f"export_{kind}")

    @readable(args=inputs.Upload)
    def on_import(session: UISession, path: str | None):
        if not path:
            raise UserError("choose a session bundle (.zip) to import")
        summary = import_into(session, path, config)
        msg = (f"Imported: {summary['model']} on {summary['data']}, {len(summary['edits'])} edit(s), "
               f"{summary['chats']} chat(s). Every tab now shows the imported session.")
        return session, inputs.public(msg), inputs.public(summary)

    imported = import_btn.click(on_import, [state, upload], [state, message, api_out], api_name="import_bundle")
    return {"message": message, "imported": imported}
