"""Export tab: the edit file, a standalone checkpoint, a config that reproduces the session."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import gradio as gr
import yaml

from unlearnviz.errors import UserError
from unlearnviz.io import atomic_write_text, safe_child
from unlearnviz.model.loading import cache_dir
from unlearnviz.ui.common import AppConfig, UISession, readable

INTRO = ("**Export.** Save the selected edit (safetensors + manifest with checksums and the model's "
         "fingerprint: it refuses to load onto another model), a standalone Hugging Face checkpoint with the "
         "edit merged in, or a YAML config that replays this session from the command line.")


def export_root() -> Path:
    root = Path(os.environ.get("UNLEARNVIZ_EXPORTS", cache_dir() / "exports"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def session_config(session: UISession) -> dict:
    """A config for ``python -m unlearnviz run --config`` that reproduces the selected edit."""
    edit = session.current_edit()
    if edit is None:
        raise UserError("there is no edit yet (Unlearn tab)")
    return {"model": session.lm.source if session.lm else "default",
            "data": session.data.name if session.data else None,
            "method": edit.method, "hparams": edit.hparams,
            "stack": [{"method": e.method, "hparams": e.hparams} for e in session.stack.edits[: session.current_index + 1]],
            "history": session.history}


def zip_folder(folder: Path, target: Path) -> Path:
    """Zip atomically: build under a temporary name, then rename."""
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".zip"))
    try:
        made = shutil.make_archive(str(tmp / target.stem), "zip", folder)
        os.replace(made, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build(state: gr.State, config: AppConfig) -> dict:
    gr.Markdown(INTRO)
    name = gr.Textbox(value="my-edit", label="Export name", info="letters, digits, '.', '_' and '-'; saved under the "
                      "server's export folder")
    with gr.Row():
        edit_btn = gr.Button("Edit file (.zip)", variant="primary")
        ckpt_btn = gr.Button("Standalone checkpoint")
        cfg_btn = gr.Button("Reproducing config (YAML)")
    files = gr.File(label="Download", interactive=False)
    message = gr.Markdown()
    api_out = gr.JSON(visible=False)

    @readable
    def on_export(session: UISession, label: str, kind: str):
        root = export_root()
        if kind == "edit":
            folder = safe_child(root, label)
            session.export_edit(folder)
            path = zip_folder(folder, safe_child(root, f"{label}.zip"))
            msg = f"Saved the edit in `{folder}` and `{path.name}`."
        elif kind == "checkpoint":
            from unlearnviz.methods.edit import EditStack, export_checkpoint

            if session.current_edit() is None:
                raise UserError("there is no edit yet (Unlearn tab)")
            folder = safe_child(root, f"{label}-checkpoint")
            info = export_checkpoint(session.lm, EditStack(session.stack.edits[: session.current_index + 1]), folder)
            path = folder / "unlearnviz_export.json"
            msg = (f"Wrote a Hugging Face checkpoint to `{folder}` (load it with "
                   f"`AutoModelForCausalLM.from_pretrained`). {info.get('note', '')}")
        else:
            path = safe_child(root, f"{label}.yaml")
            atomic_write_text(path, yaml.safe_dump(session_config(session), sort_keys=False))
            msg = f"Saved `{path.name}`: run `python -m unlearnviz run --config {path.name} --out DIR`."
        return str(path), msg, {"saved": str(path), "kind": kind}  # not "path": clients read that as a file

    for btn, kind in ((edit_btn, "edit"), (ckpt_btn, "checkpoint"), (cfg_btn, "config")):
        btn.click(lambda s, n, k=kind: on_export(s, n, k), [state, name], [files, message, api_out],
                  api_name="export" if kind == "edit" else f"export_{kind}")
    return {"message": message}
