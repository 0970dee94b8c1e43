"""Chat tab: one prompt, the original and the edited answer side by side, in one batched pass."""

from __future__ import annotations

import gradio as gr

from unlearnviz.session import views
from unlearnviz.ui.common import AppConfig, UISession, ensure_ready, readable

INTRO = ("**Chat.** Ask both models at once: the original (left) and the selected edit (right) answer in one "
         "batched generation, the edit routed to one row only. Tokens where the edited answer departs from the "
         "original are highlighted; the table gives, for each edited token, the probability the edited and the "
         "original model gave it.")


def example_prompts(session: UISession, n: int = 3) -> list[str]:
    if session.data is None:
        return ["What is the capital of France?", "What is the chemical symbol for gold?"]
    return views.example_questions(session.data, session.lm is not None and session.lm.is_chat, n)


def example_samples(session: UISession) -> gr.Dataset:
    """The example list for the session's current data (it changes with the data)."""
    return gr.Dataset(samples=[[p] for p in example_prompts(session)])


def highlighted(lm, state) -> list[tuple[str, str | None]]:
    return [(row["token"], "diverged" if row["diverged"] else None) for row in views.token_divergence(lm, state)]


def detail_rows(lm, state) -> list[list]:
    return [[i, row["token"], round(row["p_edited"], 4),
             None if row["p_original"] is None else round(row["p_original"], 4), "yes" if row["diverged"] else ""]
            for i, row in enumerate(views.token_divergence(lm, state))]


def build(state: gr.State, config: AppConfig) -> dict:
    gr.Markdown(INTRO)
    prompt = gr.Textbox(label="Prompt", placeholder="Ask something from the forget or the retain set", lines=2)
    with gr.Row():
        max_new = gr.Slider(1, config.limits.max_new_tokens, value=48, step=1, label="max new tokens")
        temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="temperature (0 = greedy)")
    with gr.Row():
        ask = gr.Button("Ask both", variant="primary")
        stop = gr.Button("Stop", variant="stop")
    with gr.Row(equal_height=True):
        original = gr.Textbox(label="Original model", lines=6, interactive=False)
        edited = gr.HighlightedText(label="Edited model (divergent tokens highlighted)",
                                    color_map={"diverged": "#f59e0b"}, combine_adjacent=False, show_legend=True)
    with gr.Accordion("Token details: probabilities under each model", open=False):
        details = gr.Dataframe(headers=["#", "edited token", "p (edited)", "p (original)", "diverged"], value=[],
                               interactive=False)
    examples = gr.Dataset(components=[prompt], samples=[[p] for p in example_prompts(UISession())],
                          label="Example prompts from the forget and retain sets")
    api_out = gr.JSON(visible=False)

    @readable
    def on_ask(session: UISession, text: str, n: float, temp: float):
        ensure_ready(session, config)
        session.cancel_flag.clear()
        final = None
        for final in session.chat_stream(text, int(n), float(temp), should_stop=session.should_stop):
            a, _ = final.texts(session.lm.tokenizer)
            yield session, a, highlighted(session.lm, final), [], {}
        a, b = final.texts(session.lm.tokenizer)
        yield (session, a, highlighted(session.lm, final), detail_rows(session.lm, final),
               {"original": a, "edited": b, "first_divergence": final.first_divergence(),
                "edit": session.current_edit().label() if session.current_edit() else None})

    ev = ask.click(on_ask, [state, prompt, max_new, temperature], [state, original, edited, details, api_out],
                   api_name="chat")
    prompt.submit(on_ask, [state, prompt, max_new, temperature], [state, original, edited, details, api_out],
                  api_visibility="private")

    def on_stop(session: UISession):
        session.cancel_flag.set()

    stop.click(on_stop, state, None, cancels=[ev], api_visibility="private")
    examples.click(lambda x: x[0], examples, prompt, api_visibility="private")
    return {"prompt": prompt, "original": original, "edited": edited, "details": details, "examples": examples,
            "on_ask": on_ask}
