"""The dashboard's Blocks layout (placeholder page until the dashboard issue lands)."""

from __future__ import annotations

import gradio as gr


def build_app(model: str = "default", data: str | None = None) -> gr.Blocks:
    with gr.Blocks(title="unlearnviz") as demo:
        gr.Markdown("# unlearnviz\nSee what representation-level unlearning did to a language model.")
        gr.Markdown(f"Model: `{model}`; data: `{data or 'built-in'}`.")
    return demo
