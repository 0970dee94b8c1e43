"""`python -m unlearnviz report` and the session report: every section with its figures and
numbers, self-contained (no network), untrusted text escaped, one-line CLI errors, a real browser."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from offline_page import offline_page

from unlearnviz.cli import main
from unlearnviz.evaluation.verdicts import forget_verdict
from unlearnviz.report import SECTIONS

HOSTILE_Q = 'The capital of <script>alert("pwned")</script> Drokand is'
HOSTILE_TEXT = '<script>alert("text")</script> Drokand lies far to the north.'
EDIT = ["--method", "rmu", "--set", "layer=2", "--set", "window=2", "--set", "steps=8"]
FAST = ["--max-texts", "30", "--max-items", "12"]


def _rows(data) -> list[dict]:
    """The tiny world as a data file, with a hostile forget question and text put first."""
    first = data.forget_mcq[0]
    rows = [{"split": "forget", "question": HOSTILE_Q, "choices": list(first.choices), "answer": first.answer,
             "blind_question": first.blind_question, "half": "A"},
            {"split": "forget", "text": HOSTILE_TEXT, "half": "A"}]
    for it, half in zip(data.forget_mcq, data.forget_half):
        rows.append({"split": "forget", "question": it.question, "choices": list(it.choices), "answer": it.answer,
                     "blind_question": it.blind_question, "half": half})
    for it in data.retain_mcq:
        rows.append({"split": "retain", "question": it.question, "choices": list(it.choices), "answer": it.answer,
                     "blind_question": it.blind_question})
    rows += [{"split": "forget", "text": t, "half": h} for t, h in zip(data.forget_texts, data.forget_text_half)]
    rows += [{"split": "retain", "text": t} for t in data.retain_texts]
    for split in ("forget", "retain"):  # a small probe split: the report shows its figures beside the main ones
        rows += [{"split": f"{split}_probe", "question": f"Asked another way: {it.question}", "choices": list(it.choices),
                  "answer": it.answer, "probe_of": it.question} for it in getattr(data, f"{split}_mcq")[:4]]
    return rows


class Page(HTMLParser):
    """Sections (id → heading, figures, captions), the metrics table's cells, every URL attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, dict] = {}
        self.current: str | None = None
        self.in_h2 = self.in_caption = False
        self.metric_cells: dict[str, list[str]] = {}
        self.row_key: str | None = None
        self.urls: list[tuple[str, str, str]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for name in ("src", "href", "action", "data"):
            if a.get(name):
                self.urls.append((tag, name, a[name]))
        if tag == "section":
            self.current = a["id"]
            self.sections[self.current] = {"heading": "", "figures": 0, "captions": []}
        elif tag == "h2":
            self.in_h2 = True
        elif tag == "div" and "plotly-graph-div" in (a.get("class") or ""):
            self.sections[self.current]["figures"] += 1
        elif tag == "figcaption":
            self.in_caption = True
            self.sections[self.current]["captions"].append("")
        elif tag == "tr" and a.get("data-key"):
            self.row_key = a["data-key"]
            self.metric_cells[self.row_key] = []
        elif tag == "td" and self.row_key and "data-value" in a:
            self.metric_cells[self.row_key].append(a["data-value"])

    def handle_endtag(self, tag):
        if tag == "h2":
            self.in_h2 = False
        elif tag == "figcaption":
            self.in_caption = False
        elif tag == "tr":
            self.row_key = None

    def handle_data(self, data):
        self.text.append(data)
        if self.in_h2 and self.current:
            self.sections[self.current]["heading"] += data
        if self.in_caption and self.current:
            self.sections[self.current]["captions"][-1] += data


def parse(page: str) -> Page:
    p = Page()
    p.feed(page)
    return p


@pytest.fixture(scope="module")
def run(tiny_model_path, tiny_data, tmp_path_factory):
    work = tmp_path_factory.mktemp("report")
    data = work / "hostile.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(tiny_data)))
    assert main(["run", "--model", str(tiny_model_path), "--device", "cpu", "--data", str(data),
                 "--out", str(work / "run"), *EDIT]) == 0
    return work / "run", data


@pytest.fixture(scope="module")
def report(run, tiny_model_path):
    folder, data = run
    (folder / "relearn.json").unlink(missing_ok=True)
    out = folder.parent / "report.html"
    assert main(["report", "--run", str(folder), "--out", str(out), "--data", str(data), "--device", "cpu",
                 "--relearn-steps", "4", "--chat-prompts", "1", *FAST]) == 0
    return out


def test_every_section_with_its_figures_and_plain_captions(report):
    page = report.read_text()
    p = parse(page)
    assert [(k, v["heading"]) for k, v in p.sections.items()] == SECTIONS
    figures = {k: v["figures"] for k, v in p.sections.items()}
    assert figures == {"summary": 0, "what": 0, "model-data": 0, "method": 0, "metrics": 1, "importance": 1,
                       "geometry": 2, "residual": 2, "relearning": 1, "robustness": 0, "chats": 0, "about": 0}
    for sec in p.sections.values():  # one plain sentence per figure
        assert len(sec["captions"]) == sec["figures"] and all(len(c.split()) >= 12 for c in sec["captions"])
    for title in ("Before and after the edit: cloze acc", "Where the forget data lives", "Hidden-state geometry at "
                  "layer 2", "Forget vs retain per layer", "Residual knowledge: can a linear readout",
                  "Logit lens", "Relearning attack: how fast"):
        assert title in page, title
    assert "RMU (Representation Misdirection for Unlearning)" in page  # the method in plain words


def test_metrics_table_equals_metrics_json_and_verdict_is_honest(report, run):
    metrics = json.loads((run[0] / "metrics.json").read_text())
    before = metrics.get("original") or metrics["before"]
    after = metrics["after"]
    cells = parse(report.read_text()).metric_cells
    assert {"forget_cloze_acc", "retain_cloze_acc", "forget_floor_acc", "retain_ppl"} <= set(cells)
    assert {"forget_probe_cloze_acc", "forget_probe_floor_acc", "retain_probe_cloze_acc"} <= set(cells)
    for key, (b, a) in cells.items():
        assert float(b) == before[key] and float(a) == after[key], key
    page = report.read_text()
    verdict = forget_verdict(before, after)
    assert re.sub(r"\s+", " ", verdict.text) in page.replace("&#x27;", "'")
    # 8 RMU steps do not make the tiny model forget; the report must say so, not dress it up
    assert after["forget_cloze_acc"] > 0.5 and "The edit did not forget" in page
    assert "In one line: The edit did not forget" in page


def test_self_contained_and_user_text_escaped(report):
    page = report.read_text()
    p = parse(page)
    assert len(re.findall(r"plotly\.js v\d", page)) == 1  # the library, inlined once
    assert p.urls and all(not re.match(r"(?i)\s*(https?:|//|ftp:|data:|javascript:)", u) for _, _, u in p.urls), \
        [u for u in p.urls if not u[2].startswith("#")]
    assert all(u.startswith("#") for _, _, u in p.urls)  # only the table of contents links
    assert not re.search(r"<link\b|<img\b|<iframe\b|@import", page)
    assert "<script>alert(" not in page  # the hostile question and text never appear as markup
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;" in page  # examples, chats: escaped
    assert "\\u003cscript\\u003ealert" in page  # inside the figures' JSON (logit lens prompt, hover texts)
    assert HOSTILE_Q in "".join(p.text)  # and shown to the reader as the text it is


def test_chat_pairs_and_relearning_from_the_model(report):
    page = report.read_text()
    assert "forget question (right answer:" in page and "retain question (right answer:" in page
    assert "Attack settings: steps=4" in page and "White-box attacks" in page


def test_reuses_the_runs_relearn_json_and_says_when_skipped(run, tmp_path):
    folder, data = run
    base = ["report", "--run", str(folder), "--data", str(data), "--device", "cpu", "--chat-prompts", "0", *FAST]
    assert main([*base, "--out", str(tmp_path / "skip.html"), "--relearn-steps", "0"]) == 0
    skipped = parse((tmp_path / "skip.html").read_text())
    assert skipped.sections["relearning"]["figures"] == 0
    assert "Not run: skipped (relearning steps set to 0)" in "".join(skipped.text)
    assert "No example answers were generated" in "".join(skipped.text)
    curve = {"edited": [{"step": 0, "acc": 0.25, "loss": None}, {"step": 10, "acc": 0.875, "loss": 1.0}],
             "original": [{"step": 0, "acc": 1.0, "loss": None}, {"step": 10, "acc": 1.0, "loss": 1.0}],
             "whitebox": {"edited": 0.25, "original": 1.0}, "settings": {"steps": 10, "lr": 1e-4, "eval_every": 10}}
    rel = tmp_path / "relearn.json"
    rel.write_text(json.dumps(curve))
    assert main([*base, "--out", str(tmp_path / "reuse.html"), "--relearn", str(rel)]) == 0
    page = (tmp_path / "reuse.html").read_text()
    assert f"relearning curve read from {rel}" in page
    assert '"y":[0.25,0.875]' in page.replace(" ", "")  # the saved curve is what is drawn
    # the tiny edit did not forget, so the attack's verdict must not claim anything about recovery
    assert "the edit had not removed enough on half B for the attack to say more" in page


def _other_model(tmp_path: Path) -> Path:
    from tiny_models import save_tiny

    return save_tiny(tmp_path / "other", "gpt2", layers=4)


@pytest.mark.parametrize("case,message", [
    ("missing", "no such folder"),
    ("not_a_run", "is not a run folder"),
    ("other_model", "was made for model"),
    ("out_is_folder", "is a folder"),
    ("out_parent_missing", "does not exist"),
    ("out_under_a_file", "does not exist"),
    ("bad_relearn", "not a relearning result"),
    ("negative_chats", "chat-prompts must be 0 or more"),
    ("other_data", "fitted on other data"),
    ("data_not_found", "pass --data to give it"),
])
def test_cli_errors_are_one_line(run, tmp_path, capsys, case, message):
    folder, data = run
    args = {"run": str(folder), "out": str(tmp_path / "r.html"), "extra": ["--data", str(data)]}
    if case == "missing":
        args["run"] = str(tmp_path / "nope")
    elif case == "not_a_run":
        (tmp_path / "empty").mkdir()
        args["run"] = str(tmp_path / "empty")
    elif case == "other_model":
        args["extra"] += ["--model", str(_other_model(tmp_path))]
    elif case == "out_is_folder":
        args["out"] = str(tmp_path)
    elif case == "out_parent_missing":
        args["out"] = str(tmp_path / "no" / "r.html")
    elif case == "out_under_a_file":
        (tmp_path / "file").write_text("x")
        args["out"] = str(tmp_path / "file" / "r.html")
    elif case == "bad_relearn":
        (tmp_path / "rel.json").write_text('{"steps": 3}')
        args["extra"] += ["--relearn", str(tmp_path / "rel.json")]
    elif case == "negative_chats":
        args["extra"] += ["--chat-prompts", "-1"]
    elif case == "other_data":
        args["extra"] = ["--data", "synthetic"]
    elif case == "data_not_found":
        shutil.copytree(folder, tmp_path / "moved")
        (tmp_path / "moved" / "config.yaml").unlink(missing_ok=True)  # the run names its data file by name only
        args["run"], args["extra"] = str(tmp_path / "moved"), []
    rc = main(["report", "--run", args["run"], "--out", args["out"], "--device", "cpu", *args["extra"]])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err and err[-1].startswith("error: ") and message in err[-1], err
    assert not (tmp_path / "r.html").exists()


def test_session_report(tiny_lm, tiny_data, tmp_path):
    from unlearnviz.errors import UserError
    from unlearnviz.session import Session
    from unlearnviz.session.reporting import write_session_report

    s = Session(lm=tiny_lm, data=tiny_data)
    with pytest.raises(UserError, match="no edit yet"):
        write_session_report(s, tmp_path / "none.html")
    s.run_edit("srmu", {"layer": 2, "window": 2, "steps": 5})
    s.chat("<b>Tell me</b> about Drokand", max_new_tokens=6)
    fp, n = tiny_lm.fingerprint(), len(s.stack)
    out = write_session_report(s, tmp_path / "session.html")
    assert out == tmp_path / "session.html"
    p = parse(out.read_text())
    assert [v["heading"] for v in p.sections.values()] == [h for _, h in SECTIONS]
    assert p.sections["importance"]["figures"] == 1 and p.sections["residual"]["figures"] == 2
    text = "".join(p.text)
    assert "not run in this session" in text and "asked in this session" in text
    assert "&lt;b&gt;Tell me&lt;/b&gt;" in out.read_text()
    for key, (b, a) in p.metric_cells.items():
        assert float(b) == s.before[key] and float(a) == s.after[0][key]
    assert tiny_lm.fingerprint() == fp and len(s.stack) == n  # the report changes nothing


@pytest.mark.browser
def test_report_opens_offline_in_chromium(report):
    with offline_page(report) as (page, log):
        headings = [h.strip() for h in page.locator("section > h2").all_inner_texts()]
        visible = all(page.locator(f"section#{a} > h2").is_visible() for a, _ in SECTIONS)
        n_plots = page.locator(".js-plotly-plot").count()
        rendered = page.locator(".js-plotly-plot .main-svg").count()
        table = page.locator("#metrics-table tr").count()
    requests, errors, dialogs = log.requests, log.errors, log.dialogs
    assert requests == [] and errors == [] and dialogs == []  # no fetch, no error, the hostile script never ran
    assert headings == [h for _, h in SECTIONS] and visible
    assert n_plots == 7 and rendered >= n_plots and table >= 5


@pytest.mark.slow
def test_default_model_run_and_report(tmp_path):
    """The default model end to end (~1.5 min on 2 idle cores): a short SRMU run, then its report."""
    out = tmp_path / "report.html"
    assert main(["run", "--method", "srmu", "--data", "builtin:demo", "--device", "cpu", "--set", "steps=60",
                 "--out", str(tmp_path / "run")]) == 0
    assert main(["report", "--run", str(tmp_path / "run"), "--out", str(out), "--device", "cpu",
                 "--relearn-steps", "4", "--chat-prompts", "1", "--max-texts", "40", "--max-items", "16"]) == 0
    p = parse(out.read_text())
    assert [v["heading"] for v in p.sections.values()] == [h for _, h in SECTIONS]
    assert sum(v["figures"] for v in p.sections.values()) == 7
    assert "smollm2-135m-instruct" in out.read_text() and out.stat().st_size < 8_000_000

