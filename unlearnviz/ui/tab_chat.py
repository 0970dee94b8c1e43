"""Chat tab: a conversation with both models at once, the original (left) and the selected edit
(right), each continuing its own side of the chat, streamed from one batched generation."""

from __future__ import annotations

import html

import gradio as gr

from unlearnviz.session import shown, views
from unlearnviz.ui.common import AppConfig, UISession, ensure_ready, readable, valid
from unlearnviz.ui.inputs import Chat

INTRO = ("**Chat.** Talk to both models at once: the original (left) and the selected edit (right) answer in one "
         "batched generation, the edit routed to one row only. Each model continues its own conversation (it reads "
         "its own earlier answers); Enter sends, *New conversation* starts afresh. Where the two answers of a turn "
         "first differ, the rest of each is highlighted. The badge says whether the prompt names a subject of the "
         "loaded forget or retain questions: a prompt about neither cannot show what the edit removed.")

UNRELATED = ("What is the chemical symbol for gold?", "Write one sentence about the sea.")
MARK = '<mark style="background:#fde68a">{}</mark>'


def paraphrase(prompt: str) -> str:
    """The same question in other words (a cloze stem "The capital of X is" becomes a question)."""
    text = prompt.strip().removeprefix("Complete the sentence: ").removesuffix(" ...").strip()
    if text.endswith("?"):
        return f"Quick question: {text[0].lower()}{text[1:]}"
    return f"Do you know what {text[0].lower()}{text[1:]}?"


def labelled_prompts(session: UISession, n: int = 2) -> list[tuple[str, str]]:
    """(kind, prompt): forget and retain questions of the loaded data, a paraphrase of a forget
    question, and prompts about neither."""
    if session.data is None:
        return [("unrelated", p) for p in UNRELATED]
    chat = session.lm is not None and session.lm.is_chat
    asked = views.example_questions(session.data, chat, n)
    forget, retain = asked[: len(session.data.forget_mcq[:n])], asked[len(session.data.forget_mcq[:n]):]
    out = [("forget", p) for p in forget] + [("retain", p) for p in retain]
    if forget:
        out.append(("paraphrase", paraphrase(forget[0])))
    return out + [("unrelated", UNRELATED[0])]


def example_prompts(session: UISession, n: int = 3) -> list[str]:
    """The prompts alone, forget first (the demo asks the first)."""
    return [p for _, p in labelled_prompts(session, n)]


def badge(session: UISession, prompt: str) -> str:
    """Whether ``prompt`` concerns a forget or retain fact of the loaded data (nearest subject match)."""
    if not (prompt or "").strip():
        return ""
    m = session.prompt_match(prompt)
    if m["part"] == "forget":
        return f"forget fact: {m['subject']}"
    if m["part"] == "retain":
        return f"retain fact: {m['subject']}"
    return "neither: names no subject of the loaded data"


def example_samples(session: UISession) -> gr.Dataset:
    """The labelled examples for the session's current data (they change with the data)."""
    return gr.Dataset(samples=[[kind, p, badge(session, p)] for kind, p in labelled_prompts(session)])


def _split(a: str, b: str) -> int:
    """Where two answers first differ (characters); len of the shorter when one extends the other."""
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    return i


def _render(text: str, at: int | None) -> str:
    """An answer as chat markdown (HTML escaped), highlighted from character ``at`` on."""
    if at is None or at >= len(text):
        return html.escape(text)
    return html.escape(text[:at]) + MARK.format(html.escape(text[at:]))


def panes(turns: list[dict], pending: tuple[str, str, str] | None = None) -> tuple[list[dict], list[dict]]:
    """Both chat panes: every turn of the conversation (and the one being generated), each side
    highlighted from where its answer departs from the other's; a turn whose answers are the
    same has no highlight."""
    left, right = [], []
    rows = [(t["prompt"], t["original"], t["edited"]) for t in turns] + ([pending] if pending else [])
    for prompt, a, b in rows:
        at = None if a == b else _split(a, b)
        for pane, text in ((left, a), (right, b)):
            pane.append({"role": "user", "content": html.escape(prompt)})
            pane.append({"role": "assistant", "content": _render(text, at)})
    return left, right


def compared_pane(turns: list[dict], pending: tuple[str, str, str] | None = None) -> list[dict]:
    """The compared edit's pane: its answer to every turn it was asked (``compared``), highlighted
    from where it departs from the original's answer; ``pending``: (prompt, original, answer so far)."""
    pane = []
    rows = [(t["prompt"], t["original"], t["compared"]) for t in turns if t.get("compared") is not None]
    for prompt, a, c in rows + ([pending] if pending else []):
        pane.append({"role": "user", "content": html.escape(prompt)})
        pane.append({"role": "assistant", "content": _render(c, None if a == c else _split(a, c))})
    return pane


def pane_labels(session: UISession) -> tuple[str, str | None]:
    """The edited and the compared pane's labels: the edits the conversation shown is with (the
    selected and compared ones while there is no turn yet); None: no compared pane."""
    first, second = shown.chat_shown(session) or shown.wanted(session, "chat")
    edited = f"Edited: {first.named()} (departures from the original highlighted)"
    return edited, (None if second is None else f"Compared: {second.named()}")


def detail_rows(lm, state) -> list[list]:
    return [[i, row["token"], round(row["p_edited"], 4),
             None if row["p_original"] is None else round(row["p_original"], 4), "yes" if row["diverged"] else ""]
            for i, row in enumerate(views.token_divergence(lm, state))]


def conversation_json(session: UISession, state=None) -> dict:
    """The chat in progress for the API: its turns and, for the last, the prompt each model read."""
    turns = session.conversation_turns()
    out = {"conversation": [{k: t.get(k) for k in ("prompt", "original", "edited", "first_divergence", "edit",
                                                   "turn", "compared", "compare_edit")} for t in turns],
           "edit": session.current_edit().label() if session.current_edit() else None}
    if state is not None:
        a, b = state.texts(session.lm.tokenizer)
        seen_a, seen_b = state.prompt_texts(session.lm.tokenizer)
        out.update({"original": a, "edited": b, "first_divergence": state.first_divergence(),
                    "turn": len(turns) - 1, "prompts": {"original": seen_a, "edited": seen_b},
                    "compared": turns[-1].get("compared") if turns else None})
    return out


def build(state: gr.State, config: AppConfig) -> dict:
    gr.Markdown(INTRO)
    tag = gr.Markdown(elem_id="uv-tag-chat", elem_classes=["uv-tag"])
    with gr.Row(equal_height=True):
        chat_opts = dict(height=420, latex_delimiters=[], feedback_options=None, buttons=["copy"])
        original = gr.Chatbot(label="Original model", **chat_opts)
        edited = gr.Chatbot(label="Edited model (departures from the original highlighted)", **chat_opts)
        compared = gr.Chatbot(label="Compared edit", visible=False, elem_id="uv-chat-compared", **chat_opts)
    with gr.Row():
        prompt = gr.Textbox(label="Prompt", placeholder="Ask something from the forget or the retain set; Enter sends",
                            lines=1, max_lines=1, scale=5)
        match = gr.Textbox(label="Concerns", interactive=False, scale=2)
    with gr.Row():
        ask = gr.Button("Send to both", variant="primary")
        stop = gr.Button("Stop", variant="stop")
        new = gr.Button("New conversation")
    with gr.Row():
        max_new = gr.Slider(1, config.limits.max_new_tokens, value=48, step=1, label="max new tokens")
        temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="temperature (0 = greedy)")
    with gr.Accordion("Token details of the last turn: probabilities under each model", open=False):
        details = gr.Dataframe(headers=["#", "edited token", "p (edited)", "p (original)", "diverged"], value=[],
                               interactive=False)
    kind = gr.Textbox(visible=False, label="kind")
    concerns = gr.Textbox(visible=False, label="concerns")
    examples = gr.Dataset(components=[kind, prompt, concerns], headers=["kind", "prompt", "concerns"],
                          samples=[[k, p, ""] for k, p in labelled_prompts(UISession())],
                          label="Example prompts (forget, retain, a paraphrase, unrelated) and what each concerns")
    api_out = gr.JSON(visible=False)

    def check(session: UISession, text: str, n: float, temp: float):
        """A prompt that cannot be asked is refused before anything runs, on its field."""
        limit = config.limits.max_prompt_chars
        if not (text or "").strip():
            return [valid(), valid("the prompt is empty; type a question"), valid(), valid()]
        if len(text) > limit:
            return [valid(), valid(f"the prompt is {len(text)} characters; the limit is {limit}"), valid(), valid()]
        return [valid()] * 4

    def as_is(session: UISession, *_):
        """The conversation as the session holds it (a failed turn is not part of it)."""
        turns = session.conversation_turns()
        left, right = panes(turns)
        return session, gr.skip(), left, right, compared_pane(turns), gr.skip(), gr.skip()

    @readable(restore=as_is, args=Chat)
    def on_ask(session: UISession, text: str, n: float, temp: float):
        ensure_ready(session, config)
        session.cancel_flag.clear()
        final = None
        for final in session.chat_stream(text, int(n), float(temp), should_stop=session.should_stop,
                                         follow_up=True):
            a, b = final.texts(session.lm.tokenizer)  # the turn joins the conversation once it is whole
            turns = session.conversation_turns()
            left, right = panes(turns, (text, a, b))
            yield session, "", left, right, compared_pane(turns), [], {}
        turns = session.conversation_turns()
        left, right = panes(turns)
        a = turns[-1]["original"] if turns else ""
        for answer in session.compare_stream(should_stop=session.should_stop):  # the compared edit, if any
            yield session, "", left, right, compared_pane(turns[:-1], (text, a, answer)), [], {}
        yield (session, "", left, right, compared_pane(session.conversation_turns()), detail_rows(session.lm, final),
               conversation_json(session, final))

    inputs = [state, prompt, max_new, temperature]
    outputs = [state, prompt, original, edited, compared, details, api_out]
    ev = ask.click(on_ask, inputs, outputs, api_visibility="private", validator=check)
    sub = prompt.submit(on_ask, inputs, outputs, api_visibility="private", validator=check)
    # The API form: no validator (a refused validator reaches an API client as a bare 400; the
    # handler's own one-line error reaches it whole)
    api_ask = gr.Button(visible=False)
    api_ev = api_ask.click(on_ask, inputs, outputs, api_name="chat")

    def on_stop(session: UISession):
        session.cancel_flag.set()

    stop.click(on_stop, state, None, cancels=[ev, sub, api_ev], api_visibility="private")

    @readable
    def on_new(session: UISession):
        session.new_conversation()
        return session, [], [], [], [], conversation_json(session)

    new_event = new.click(on_new, state, [state, original, edited, compared, details, api_out],
                          api_name="new_conversation")

    @readable
    def on_history(session: UISession):
        return conversation_json(session)

    history_btn = gr.Button(visible=False)
    history_btn.click(on_history, state, api_out, api_name="conversation")
    prompt.change(badge, [state, prompt], match, api_visibility="private", show_progress="hidden")
    examples.click(lambda x: x[1], examples, prompt, api_visibility="private")

    def sync(session: UISession) -> list:
        """The panes redrawn from the conversation in progress, labelled with the edits it is with;
        the tag line says so, or that the selection moved on (the next prompt then starts a new
        conversation with the selected edit)."""
        turns = session.conversation_turns()
        left, right = panes(turns)
        edited_label, compared_label = pane_labels(session)
        line = shown.line(session, "chat", "your next prompt starts a new conversation with it",
                          have=shown.chat_shown(session)) or f"Answers come from **{shown.selected(session).named()}**."
        return [line, left, gr.update(value=right, label=edited_label),
                gr.update(value=compared_pane(turns), label=compared_label or "Compared edit",
                          visible=compared_label is not None)]

    sync_outputs = [tag, original, edited, compared]
    for event in (ev, sub, new_event):
        event.then(sync, state, sync_outputs, api_visibility="private", show_progress="hidden")
    return {"prompt": prompt, "original": original, "edited": edited, "details": details, "examples": examples,
            "match": match, "on_ask": on_ask, "compared": compared, "sync": (sync, sync_outputs)}
