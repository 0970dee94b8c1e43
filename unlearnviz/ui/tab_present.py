"""Present tab: the selected edit's story in plain words and large type, for a projector.

What the HTML report's summary says (its verdicts, from ``evaluation.verdicts``; its answer
pairs, from ``report.chat_pairs``), told for the edit selected in the timeline through
``session.reporting.story``: the verdict, three key figures (original → edited) and two answer
pairs. The page names the edit (its number and content hash, as every tab does) and is redrawn
whenever the selection or the stack changes; opening the tab or ↻ Refresh measures what is missing.
"""

from __future__ import annotations

import html

import gradio as gr

from unlearnviz.session import progress as progress_model
from unlearnviz.session import reporting, shown
from unlearnviz.ui import progress_view
from unlearnviz.ui.common import AppConfig, UISession, readable

INTRO = ("**Present.** The selected edit's story in plain words, large enough for a projector: the verdict, three "
         "key figures and how both models answer one forget and one retain question. It follows the edit selected "
         "in the Unlearn tab's timeline; the HTML report (Export tab) tells the whole story.")

CSS = """
#uv-present .uv-story {font-size: 26px; line-height: 1.35; color: #111827; max-width: 1300px}
#uv-present .uv-story h1 {font-size: 2.1em; margin: .2em 0 .1em 0; line-height: 1.15}
#uv-present .uv-story .uv-which {font-size: .8em; color: #4b5563; margin: 0 0 .8em 0}
#uv-present .uv-story .verdict {padding: .45em .8em; margin: .35em 0; border-left: .35em solid #7F7F7F;
  background: #f4f4f5}
#uv-present .uv-story .verdict.headline {font-size: 1.25em; font-weight: 600}
#uv-present .uv-story .verdict.good {border-left-color: #009E73} #uv-present .uv-story .verdict.bad {border-left-color: #D55E00}
#uv-present .uv-figures {display: flex; gap: 1em; margin: .9em 0; flex-wrap: wrap}
#uv-present .uv-figure {flex: 1 1 0; min-width: 260px; background: #eef2ff; border-radius: .4em; padding: .5em .8em}
#uv-present .uv-figure .num {font-size: 1.9em; font-weight: 700; font-variant-numeric: tabular-nums}
#uv-present .uv-figure .what {font-size: .85em} #uv-present .uv-figure .note {font-size: .7em; color: #4b5563}
#uv-present .uv-pairs {width: 100%; border-collapse: collapse; margin-top: .5em}
#uv-present .uv-pairs td, #uv-present .uv-pairs th {vertical-align: top; text-align: left; padding: .35em .5em;
  border-bottom: 1px solid #d1d5db; white-space: pre-wrap}
#uv-present .uv-pairs th {font-size: .8em; color: #4b5563}
"""


def _e(text) -> str:
    return html.escape(str(text))


def empty_html(message: str) -> str:
    return f'<div class="uv-story"><p>{_e(message)}</p></div>'


def story_html(story: dict) -> str:
    """The story as one page of large type (every text from data, models or users escaped)."""
    tag = story["tag"]
    parts = [f'<div class="uv-story" data-edit="{_e(tag.text())}" data-hash="{_e(tag.hash)}">',
             f"<h1>{_e(story['title'])}</h1>",
             f'<p class="uv-which">Shows <b>{_e(tag.named())}</b> · data {_e(story["data"])}</p>']
    if not story["measured"]:
        parts.append("<p>This edit has not been measured yet: open this tab again or press ↻ Refresh.</p></div>")
        return "".join(parts)
    for i, v in enumerate(story["verdicts"]):
        parts.append(f'<p class="verdict {v.css}{" headline" if i == 0 else ""}">{_e(v.text)}</p>')
    parts.append('<div class="uv-figures">')
    for f in story["figures"]:
        parts.append(f'<div class="uv-figure" data-key="{_e(f["key"])}"><div class="what">{_e(f["label"])} '
                     f'({_e(f["want"])})</div><div class="num">{_e(f["before_text"])} → {_e(f["after_text"])}</div>'
                     f'<div class="note">original → edited{"; " + _e(f["note"]) if f["note"] else ""}</div></div>')
    parts.append("</div>")
    pairs = story["pairs"]
    if pairs is None:
        parts.append("<p>The answers are made when this tab is opened or ↻ Refresh is pressed.</p>")
    elif pairs:
        parts.append('<table class="uv-pairs"><tr><th>question</th><th>original model</th><th>edited model</th></tr>')
        for p in pairs:
            parts.append(f"<tr><td>{_e(p['prompt'])}<br><small>{_e(p['split'])}</small></td>"
                         f"<td>{_e(p['original'].strip())}</td><td>{_e(p['edited'].strip())}</td></tr>")
        parts.append("</table>")
    parts.append("</div>")
    return "".join(parts)


def summary(story: dict) -> dict:
    """What the page shows, as data (the API's answer; the tests read it back)."""
    return {"edit": story["tag"].text(), "number": story["tag"].number, "hash": story["tag"].hash,
            "verdicts": [v.text for v in story["verdicts"]],
            "figures": {f["key"]: {"before": f["before"], "after": f["after"]} for f in story["figures"]},
            "pairs": story["pairs"]}


def render(session: UISession, answers: bool, progress=None) -> tuple[str, dict]:
    """The page and its data for the session as it stands; ``answers``: measure and answer what is
    missing (opening the tab, ↻ Refresh; ``progress``: a ``gr.Progress`` shown meanwhile), else
    only redraw (after the selection changed)."""
    if session.lm is None or session.data is None or session.current_edit() is None:
        return empty_html("No edit yet: run one (Unlearn tab) or the one-click demo, then open this tab."), {}
    tracker, out = progress_model.story_tracker(), {}
    for _ in progress_view.run_tracked(lambda: reporting.story(session, answers=answers, tracker=tracker),
                                       tracker, out, progress=progress):
        pass
    story = out["value"]
    shown.mark(session, "present")
    return story_html(story), summary(story)


def build(state: gr.State, config: AppConfig) -> dict:
    gr.Markdown(INTRO)
    refresh = gr.Button("↻ Refresh", scale=0)
    page = gr.HTML(empty_html("No edit yet: run one (Unlearn tab) or the one-click demo, then open this tab."),
                   elem_id="uv-present")
    api_out = gr.JSON(visible=False)

    @readable
    def on_refresh(session: UISession, progress=gr.Progress()):
        return session, *render(session, answers=True, progress=progress)

    refresh.click(on_refresh, state, [state, page, api_out], api_name="present")

    def sync(session: UISession) -> list:
        """A quick redraw for the selection as it stands (no measuring, no answering)."""
        return [render(session, answers=False)[0]]

    return {"page": page, "open": (on_refresh, state, [state, page, api_out]), "sync": (sync, [page])}
