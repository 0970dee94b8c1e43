"""The presenter view (``ui/tab_present.py``): the selected edit's story, on a real tiny edit.

Its verdicts are the report's (``evaluation.verdicts``) and its figures the session's own
metrics for the selected edit; it names that edit (number and content hash) and follows the
selection. In-process on the tiny model, and over HTTP through the real server.
"""

from __future__ import annotations

import html

import pytest

from unlearnviz.evaluation.verdicts import fmt_metric, forget_verdict, headline, retain_verdict
from unlearnviz.session import shown
from unlearnviz.ui import tab_present
from unlearnviz.ui.common import UISession


@pytest.fixture(scope="module")
def two_edits(tiny_lm, tiny_data):
    session = UISession(lm=tiny_lm, data=tiny_data)
    session.run_edit("rmu", {"steps": 12})
    session.run_edit("rmu", {"steps": 4, "layer": 2, "window": 1})
    return session


def check_story(session: UISession, page: str, data: dict, index: int) -> None:
    before, after = session.before, session.after[index]
    tag = shown.selected(session)
    assert (data["number"], data["hash"], data["edit"]) == (index + 1, tag.hash, tag.text())
    fv, rv = forget_verdict(before, after), retain_verdict(before, after)
    assert data["verdicts"] == [headline(fv, rv).text, fv.text, rv.text]
    for key in ("forget_cloze_acc", "retain_cloze_acc", "retain_ppl"):
        assert data["figures"][key] == {"before": before[key], "after": after[key]}
        assert html.escape(f"{fmt_metric(key, before[key])} → {fmt_metric(key, after[key])}") in page
    assert f'data-hash="{tag.hash}"' in page and html.escape(tag.named()) in page
    assert html.escape(fv.text) in page and html.escape(headline(fv, rv).text) in page


def test_the_page_tells_the_selected_edits_story(two_edits):
    session = two_edits
    page, data = tab_present.render(session, answers=True)
    check_story(session, page, data, index=1)
    pairs = data["pairs"]
    assert [p["split"].split()[0] for p in pairs] == ["forget", "retain"]  # one forget, one retain question
    for p in pairs:
        assert html.escape(p["prompt"]) in page and html.escape(p["edited"].strip()) in page


def test_it_follows_the_selection_and_answers_once_asked(two_edits):
    session = two_edits
    session.select(0)
    try:
        page, data = tab_present.render(session, answers=False)  # the quick redraw after a selection
        check_story(session, page, data, index=0)
        assert data["pairs"] is None and "made when this tab is opened" in page
        page, data = tab_present.render(session, answers=True)
        assert len(data["pairs"]) == 2 and "made when this tab is opened" not in page
        assert tab_present.render(session, answers=False)[1]["pairs"] == data["pairs"]  # kept for this edit
    finally:
        session.select(None)


def test_no_edit_says_what_to_do(tiny_lm, tiny_data):
    page, data = tab_present.render(UISession(lm=tiny_lm, data=tiny_data), answers=True)
    assert "No edit yet" in page and data == {}


def test_text_from_models_and_data_is_escaped():
    from unlearnviz.evaluation.verdicts import Verdict

    tag = shown.Tag(1, "abcdef123456", "1. rmu", ("fp", "dh"), "set")
    story = {"tag": tag, "title": "RMU on <b>m</b>", "data": "set", "measured": True,
             "verdicts": [Verdict(True, "In one line: <ok>")], "figures": [],
             "pairs": [{"split": "forget question", "prompt": "<script>x</script>", "original": "a & b",
                        "edited": "<|im_end|>"}]}
    page = tab_present.story_html(story)
    assert "<script>" not in page and "&lt;script&gt;" in page and "<b>m</b>" not in page
    assert "&lt;|im_end|&gt;" in page and "a &amp; b" in page


@pytest.mark.slow
def test_the_served_presenter_view_matches_the_evaluation(tiny_model_path):
    """Over HTTP: /present after /run_edit names edit #1 and shows the metrics /evaluate reports."""
    from app_server import Server
    from gradio_client import Client

    server = Server("--model", "synthetic", "--data", "synthetic")
    try:
        c = Client(server.url, verbose=False)
        c.predict("rmu", {"steps": 10}, api_name="/run_edit")
        page, data = c.predict(api_name="/present")
        metrics = c.predict(False, api_name="/evaluate")[-1]
        assert data["number"] == 1 and data["hash"] in page
        for key, pair in data["figures"].items():
            assert pair == {"before": metrics["before"][key], "after": metrics["after"][key]}
        fv = forget_verdict(metrics["before"], metrics["after"])
        assert data["verdicts"][1] == fv.text and html.escape(fv.text) in page
        assert len(data["pairs"]) == 2
    finally:
        server.stop()
