"""Model tab: which model is loaded, and what it is."""

from __future__ import annotations

import gradio as gr

from unlearnviz.session import planning
from unlearnviz.ui import inputs
from unlearnviz.ui.common import AppConfig, UISession, confine_model_source, ensure_ready, md_table, readable

INTRO = ("**Model.** Load the built-in default (SmolLM2-135M-Instruct, offline), a local Hugging Face "
         "folder or a hub id. The table shows the architecture unlearnviz found; the fingerprint proves the "
         "base weights never change, whatever you do in the other tabs.")


def info_markdown(session: UISession) -> str:
    if session.lm is None:
        return "_No model loaded yet._"
    i = session.lm.info()
    return md_table([("name", i["name"]), ("family", i["family"]), ("layers", str(i["layers"])),
                     ("hidden size", str(i["hidden_size"])), ("parameters", f"{i['parameters'] / 1e6:.1f} M"),
                     ("dtype / device", f"{i['dtype']} / {i['device']}"), ("memory", f"{i['memory_mb']} MB"),
                     ("chat template", "yes" if i["chat_template"] else "no (plain completion)"),
                     ("fingerprint", f"`{session.lm.fingerprint(refresh=False)}`")]) + "\n\n" + planning.model_line(session)


def build(state: gr.State, config: AppConfig) -> dict:
    gr.Markdown(INTRO)
    with gr.Row():
        source = gr.Textbox(value=config.default_model, label="Model", scale=3,
                            info="'default', a folder under the allowed model folder, or a hub id (needs a network)")
        dtype = gr.Dropdown(["auto", "float32", "bfloat16", "float16"], value="auto", label="dtype", scale=1)
        device = gr.Dropdown(["auto", "cpu", "cuda", "mps"], value="auto", label="device", scale=1)
    load = gr.Button("Load model", variant="primary")
    info = gr.Markdown(info_markdown(UISession()))

    @readable(args=inputs.LoadModel)
    def on_load(session: UISession, source: str, dtype: str, device: str):
        session.limits = config.limits
        session.load_model(confine_model_source(source, config), dtype, device)
        return session, info_markdown(session), inputs.public(session.lm.info())

    api_out = gr.JSON(visible=False)
    load.click(on_load, [state, source, dtype, device], [state, info, api_out], api_name="load_model")

    @readable
    def on_fingerprint(session: UISession):
        """API: the loaded model's weights hashed afresh (not the cached value), to prove them unchanged."""
        ensure_ready(session, config, need_data=False)
        return {"name": session.lm.name, "fingerprint": session.lm.fingerprint(refresh=True),
                "loaded_fingerprint": session.lm.info()["fingerprint"]}

    fp_btn = gr.Button(visible=False)
    fp_btn.click(on_fingerprint, state, api_out, api_name="fingerprint")

    with gr.Accordion("Compare with a checkpoint made by another tool", open=False):
        gr.Markdown(IMPORT_INTRO)
        ckpt = gr.Textbox(label="Unlearned checkpoint or LoRA adapter", elem_id="uv-unlearned",
                          info="a folder (or .gguf) under the allowed model folder, or a hub id (needs a network)")
        with gr.Row():
            check_btn = gr.Button("Check (reads file headers only)")
            import_btn = gr.Button("Import as an edit", variant="primary")
        ckpt_info = gr.Markdown("")

    @readable(args=inputs.ModelSource)
    def on_check(session: UISession, source: str):
        ensure_ready(session, config, need_data=False)
        return inputs.public(describe_markdown(session, session.describe_unlearned(confine_model_source(source,
                                                                                                       config))))

    @readable(args=inputs.ModelSource)
    def on_import(session: UISession, source: str):
        ensure_ready(session, config)
        out = inputs.public(session.import_unlearned(confine_model_source(source, config)))
        return session, import_markdown(out), out

    check_btn.click(on_check, [state, ckpt], ckpt_info, api_name="describe_unlearned")
    imported = import_btn.click(on_import, [state, ckpt], [state, ckpt_info, api_out], api_name="import_unlearned")
    return {"info": info, "imported": imported}


IMPORT_INTRO = ("Already have an unlearned model (an RMU, NPO or GradDiff checkpoint, a LoRA adapter)? Name it here: "
                "the tensors in which it differs from the loaded base become an edit on the timeline, and every tab "
                "compares it with the original, row by row in the same batches. Only the changed tensors are kept "
                "beside the base (a LoRA adapter stays low-rank). Architecture, shapes and tokenizer are checked "
                "first.")


def _mb(n) -> str:
    return f"{float(n) / 2**20:,.1f} MB" if isinstance(n, (int, float)) else str(n)


def describe_markdown(session: UISession, d: dict) -> str:
    """What an import would read and keep, beside the loaded model's own memory."""
    rows = [(k.replace("_", " "), _mb(v) if k.endswith("bytes") else str(v)) for k, v in d.items()
            if isinstance(v, (str, int, float)) and v is not None]
    if session.lm is not None:
        rows.append(("base in memory", f"{session.lm.info()['memory_mb']} MB"))
    return "**Before importing:**\n\n" + md_table(rows)


def import_markdown(out: dict) -> str:
    info = out.get("import", {})
    rows = [("edit", out.get("label", "")), ("import time", f"{out.get('import_s', 0):.1f} s")]
    rows += [(k.replace("_", " "), _mb(v) if k.endswith("bytes") else str(v)) for k, v in info.items()
             if isinstance(v, (str, int, float))]
    m = out.get("metrics") or {}
    after = m.get("after") or {}
    if after:
        rows.append(("forget / retain (cloze)", f"{after.get('forget_cloze_acc', float('nan')):.1%} / "
                                                f"{after.get('retain_cloze_acc', float('nan')):.1%}"))
    return "**Imported.** Every tab now compares it with the original.\n\n" + md_table(rows)
