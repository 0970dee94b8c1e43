"""Model tab: which model is loaded, and what it is."""

from __future__ import annotations

import gradio as gr

from unlearnviz.session import planning
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

    @readable
    def on_load(session: UISession, src: str, dt: str, dev: str):
        session.limits = config.limits
        session.load_model(confine_model_source(src, config), dt, dev)
        return session, info_markdown(session), session.lm.info()

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
    return {"info": info}
