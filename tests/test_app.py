"""The real Gradio server driven by a real HTTP client (gradio_client), on the tiny model.

Each named endpoint is exercised; two clients editing at once never see each other's edit; bad
input gives a readable error and the server keeps serving.
"""

from __future__ import annotations

import concurrent.futures as cf

import pytest
from app_server import Server
from gradio_client import Client

FAST = {"steps": 15}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The server's --data-dir: the only folder whose files a visitor may name."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def server(tiny_model_path, tmp_path_factory, data_dir):
    srv = Server("--model", "synthetic", "--data", "synthetic", "--data-dir", str(data_dir),
                 env={"UNLEARNVIZ_EXPORTS": str(tmp_path_factory.mktemp("exports"))})
    yield srv
    srv.stop()


def client(server) -> Client:
    return Client(server.url, verbose=False)


def test_named_endpoints_listed(server):
    api = client(server).view_api(print_info=False, return_format="dict")
    names = set(api["named_endpoints"])
    for name in ("/load_model", "/load_data", "/run_edit", "/chat", "/evaluate", "/analyze", "/export", "/demo",
                 "/relearn", "/export_config", "/export_bundle", "/import_bundle", "/export_report", "/sweep",
                 "/cancel_sweep", "/load_parts"):
        assert name in names, names


def test_model_data_edit_chat_evaluate_export(server):
    c = client(server)
    info = c.predict("synthetic", "float32", "cpu", api_name="/load_model")[-1]
    assert info["family"] == "gpt2" and info["layers"] == 4
    summary = c.predict("synthetic", "", None, api_name="/load_data")[-1]
    assert summary["forget_mcq"] > 0 and summary["retain_mcq"] > 0
    out = c.predict("rmu", FAST, api_name="/run_edit")[-1]
    assert out["method"] == "rmu" and out["index"] == 0
    after, before = out["metrics"]["after"], out["metrics"]["before"]
    assert after["forget_gold_logprob"] < before["forget_gold_logprob"]
    chat = c.predict("The capital of Velmora is", 12, 0.0, api_name="/chat")[-1]
    assert set(chat) >= {"original", "edited", "first_divergence"}
    assert chat["original"] != "" and chat["edited"] != ""
    ev = c.predict(False, api_name="/evaluate")[-1]
    assert "before" in ev and "after" in ev
    exported = c.predict("client-edit", api_name="/export")[-1]
    assert exported["saved"].endswith("client-edit.zip")


def test_load_parts_composes_four_sources(server, data_dir, tmp_path):
    """The Data tab's four-source load: a file in --data-dir, the synthetic world and built-in
    questions, each part's provenance in the summary; a path outside --data-dir, an unknown
    preset and a missing column are readable errors that change nothing."""
    import json

    texts = [f"Velmora document {i}: the harbour city exports amber and salt." for i in range(7)]
    (data_dir / "forget.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (data_dir / "abstracts.jsonl").write_text(json.dumps({"abstract": texts[0]}) + "\n")
    outside = tmp_path / "secret.jsonl"
    outside.write_text(json.dumps({"text": "not to be read"}) + "\n")
    c = client(server)
    c.predict("synthetic", "float32", "cpu", api_name="/load_model")
    four = ("forget.jsonl", "synthetic", "synthetic?max_rows=5", "synthetic")
    table, _preview, summary = c.predict(*four, "", api_name="/load_parts")
    assert summary["forget_texts"] == 7 and summary["forget_mcq"] == 5, summary
    parts = summary["parts"]
    assert parts["forget_corpus"]["count"] == 7 and parts["forget_mcq"]["count"] == 5
    # the file by its name in --data-dir: answers never show the server's folders
    assert parts["forget_corpus"]["sources"] == ["forget.jsonl"]
    assert parts["retain_corpus"]["sources"] == ["synthetic"]
    assert parts["retain_corpus"]["count"] == summary["retain_texts"] > 0
    assert "forget.jsonl" in table and "synthetic?max_rows=5" in table, table
    with pytest.raises(Exception, match=r"forget_corpus: .*outside the folders"):
        c.predict(str(outside), "", "", "", "synthetic", api_name="/load_parts")
    with pytest.raises(Exception, match="unknown preset 'nope'"):
        c.predict("", "", "", "", "preset:nope", api_name="/load_parts")
    with pytest.raises(Exception, match=r"no column 'text'.*\?text=COLUMN"):
        c.predict("abstracts.jsonl", "", "", "", "synthetic", api_name="/load_parts")
    # the refused loads (each with the whole synthetic set as base) left the composed data in place
    assert c.predict(False, api_name="/evaluate")[-1]["before"]["forget_n"] == 5
    assert server.alive()


def test_relearn_settings_reach_the_exported_config(server):
    """The Evaluate tab's relearning attack goes through Session.run_relearn, so the session's
    config (Export tab) carries its settings and `run --config` replays the attack."""
    from pathlib import Path

    from unlearnviz.config import load_config

    c = client(server)
    c.predict("synthetic", "float32", "cpu", api_name="/load_model")
    c.predict("synthetic", "", None, api_name="/load_data")
    c.predict("rmu", FAST, api_name="/run_edit")
    c.predict(10, 1e-3, api_name="/relearn")
    out = c.predict("relearn-config", api_name="/export_config")
    assert out[-1]["saved"] == "relearn-config.yaml"  # named in the export folder, not by the server's path
    saved = out[0]  # the downloaded copy
    relearn = load_config(Path(saved)).evaluation.relearn
    assert relearn is not None, Path(saved).read_text()
    assert (relearn.steps, relearn.lr, relearn.eval_every) == (10, 1e-3, 2)


def test_bad_input_is_a_readable_error_and_server_lives(server):
    c = client(server)
    with pytest.raises(Exception, match="unknown method"):
        c.predict("nope", {}, api_name="/run_edit")
    with pytest.raises(Exception, match="unknown hyperparameter"):
        c.predict("rmu", {"bogus": 1}, api_name="/run_edit")
    with pytest.raises(Exception, match="invalid file name"):
        c.predict("../escape", api_name="/export")
    assert server.alive()


@pytest.mark.slow
def test_a_refused_value_leaves_the_good_edit_shown(server):
    """steps=-5 after a good run: refused in one message naming the field (in the page by the
    form's validator; over the API by the handler, whose one line the client receives whole),
    nothing runs, and the status line and the timeline still show the good edit; an empty chat
    prompt is refused the same way and leaves the conversation as it was."""
    from gradio_client.exceptions import AppError as ValidationError

    c = client(server)
    c.predict("synthetic", "float32", "cpu", api_name="/load_model")
    c.predict("synthetic", "", None, api_name="/load_data")
    good = c.predict("rmu", FAST, api_name="/run_edit")
    status, timeline = good[0], good[1]
    with pytest.raises(ValidationError, match=r"steps") as refused:
        c.predict("rmu", {"steps": -5}, api_name="/run_edit")
    assert str(refused.value).count("steps=-5") <= 1  # one message, once
    again = c.predict(None, api_name="/select_edit")
    assert again[0] == status and again[1]["data"] == timeline["data"] and len(timeline["data"]) == 1
    c.predict("The capital of Velmora is", 6, 0.0, api_name="/chat")
    before = c.predict(api_name="/conversation")
    with pytest.raises(ValidationError, match="the prompt is empty"):
        c.predict("   ", 6, 0.0, api_name="/chat")
    assert c.predict(api_name="/conversation") == before and len(before["conversation"]) == 1


@pytest.mark.slow
def test_a_two_turn_chat_keeps_each_models_history(server):
    """Turn two is conditioned on turn one: each model read its own first answer before the new
    prompt (the tiny model has no chat template: plain concatenation); no special token shows;
    a new conversation forgets both."""
    c = client(server)
    c.predict("synthetic", "float32", "cpu", api_name="/load_model")
    c.predict("synthetic", "", None, api_name="/load_data")
    c.predict("rmu", FAST, api_name="/run_edit")
    c.predict(api_name="/new_conversation")
    p1, p2 = "The capital of Velmora is", "The river of Velmora is"
    first = c.predict(p1, 8, 0.0, api_name="/chat")[-1]
    second = c.predict(p2, 8, 0.0, api_name="/chat")[-1]
    assert first["turn"] == 0 and first["prompts"] == {"original": p1, "edited": p1}
    assert second["turn"] == 1
    assert second["prompts"]["original"] == f"{p1}{first['original']}\n{p2}"
    assert second["prompts"]["edited"] == f"{p1}{first['edited']}\n{p2}"
    turns = c.predict(api_name="/conversation")["conversation"]
    assert [t["prompt"] for t in turns] == [p1, p2] and turns[1]["original"] == second["original"]
    assert not any("<|" in t[k] for t in turns for k in ("original", "edited"))
    c.predict(api_name="/new_conversation")
    fresh = c.predict(p2, 8, 0.0, api_name="/chat")[-1]
    assert fresh["turn"] == 0 and fresh["prompts"]["original"] == p2


PROMPTS = ("The capital of Velmora is", "Tell me about the weather")


def _user(server, method: str, hparams: dict) -> list[str]:
    c = client(server)
    c.predict("synthetic", "float32", "cpu", api_name="/load_model")
    c.predict("synthetic", "", None, api_name="/load_data")
    c.predict(method, hparams, api_name="/run_edit")
    return [c.predict(p, 10, 0.0, api_name="/chat")[-1]["edited"] for p in PROMPTS]


def test_two_clients_are_isolated(server):
    """Two users edit at once; each one's answers equal what its own edit gives when run alone."""
    a_cfg = ("rmu", {"steps": 15, "steering_coeff": 4.0})
    b_cfg = ("srmu", {"steps": 15, "c_map": 0.5})
    with cf.ThreadPoolExecutor(2) as pool:
        a = pool.submit(_user, server, *a_cfg)
        b = pool.submit(_user, server, *b_cfg)
        together_a, together_b = a.result(), b.result()
    assert together_a == _user(server, *a_cfg)
    assert together_b == _user(server, *b_cfg)


# ---- the launcher's data-part flags ---------------------------------------------------------
def test_launch_part_flags_compose_the_start_data(tiny_model_path, tmp_path):
    """``app.py --data synthetic --forget-corpus FILE --forget-mcq ...``: the dashboard's first
    load (ensure_ready, what every tab calls) reads the composed set, each part from its source."""
    import json

    from unlearnviz.ui.common import AppConfig, UISession, ensure_ready
    from unlearnviz.ui.launch import launch_data_spec, parse_args

    texts = [f"Velmora document {i}: the harbour city exports amber and salt." for i in range(6)]
    (tmp_path / "forget.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    args = parse_args(["--model", "synthetic", "--data", "synthetic", "--forget-corpus", str(tmp_path / "forget.jsonl"),
                       "--forget-mcq", "synthetic?max_rows=4"])
    assert parse_args([]).forget_corpus is None and launch_data_spec(parse_args([])) == "builtin:demo"
    spec = launch_data_spec(args)
    session = ensure_ready(UISession(), AppConfig(default_model="synthetic", default_data=spec))
    summary = session.data_summary()
    assert summary["forget_texts"] == 6 and summary["forget_mcq"] == 4, summary
    assert summary["parts"]["forget_corpus"]["sources"] == [str((tmp_path / "forget.jsonl").resolve())]
    assert summary["parts"]["retain_corpus"]["count"] == summary["retain_texts"] > 0


@pytest.mark.parametrize("flags, words", [
    (["--forget-corpus", "no-such-file.jsonl"], "--forget-corpus: no-such-file.jsonl: no such file"),
    (["--forget-mcq", "builtin:demo?text=abstract"], "forget_mcq: a multiple-choice set reads no field 'text'"),
    (["--data", "", "--retain-mcq", "builtin:demo"], "no source for forget_corpus, retain_corpus, forget_mcq"),
])
def test_launch_bad_part_is_one_line_and_exit_2(flags, words):
    """The real launcher (``python app.py``) refuses a bad part before serving: one line, exit 2."""
    import subprocess
    import sys

    from app_server import ROOT

    done = subprocess.run([sys.executable, str(ROOT / "app.py"), "--port", "1", *flags], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], done.stderr


def test_opening_the_unlearn_tab_plans_for_the_session_model(tiny_lm, tiny_data):
    """The Unlearn tab's memory plan follows the session: a model loaded in another tab (or by the
    demo or a bundle) is what the plan describes once the tab is opened, not the page's first text."""
    import gradio as gr

    from unlearnviz.ui.app import build_app
    from unlearnviz.ui.common import UISession

    app = build_app()
    tab = next(b for b in app.blocks.values() if isinstance(b, gr.Tab) and getattr(b, "id", None) == "unlearn")
    on_open = [f for f in app.fns.values() if (tab._id, "select") in [tuple(t) for t in f.targets]]
    assert len(on_open) == 1 and [type(o).__name__ for o in on_open[0].outputs] == ["Markdown"]
    defaults = [c.value for c in on_open[0].inputs]
    empty = on_open[0].fn(UISession(), *defaults[1:])
    assert "Load a model" in empty
    session = UISession(lm=tiny_lm, data=tiny_data)
    planned = on_open[0].fn(session, *defaults[1:])
    assert "Planned peak memory" in planned and "the device has" in planned


@pytest.mark.slow
def test_compare_with_a_checkpoint_made_by_a_plain_loop(tiny_model_path, tmp_path_factory):
    """The Model tab's "compare with a checkpoint": a gradient-ascent checkpoint of the served
    model, written by a plain loop and saved with save_pretrained inside --model-dir, is checked
    (headers only), imported as an edit whose metrics are the checkpoint's own, and every tab then
    shows it; a folder outside --model-dir and a checkpoint of another model are readable errors
    that leave the timeline as it was."""
    from foreign_models import gradient_ascent
    from gradio_client.exceptions import AppError
    from tiny_models import save_tiny

    from unlearnviz.data.synthetic import make_world
    from unlearnviz.evaluation.mcq import evaluate
    from unlearnviz.model import LoadOptions, load_model

    models = tmp_path_factory.mktemp("models")
    ckpt = gradient_ascent(tiny_model_path, models / "ga", steps=3, lr=5e-2)
    direct = evaluate(load_model(str(ckpt), LoadOptions(device="cpu")), make_world(0.1, seed=0), letter=False)
    srv = Server("--model", "synthetic", "--data", "synthetic", "--model-dir", str(models))
    try:
        c = client(srv)
        c.predict("synthetic", "float32", "cpu", api_name="/load_model")
        c.predict("synthetic", "", None, api_name="/load_data")
        described = c.predict(str(ckpt), api_name="/describe_unlearned")
        assert "checkpoint" in described and "MB" in described
        out = c.predict(str(ckpt), api_name="/import_unlearned")[-1]
        assert out["method"] == "imported" and out["index"] == 0
        after = out["metrics"]["after"]
        for key in ("forget_cloze_acc", "retain_cloze_acc", "forget_gold_logprob"):
            assert after[key] == pytest.approx(direct[key], rel=1e-4, abs=1e-6), key
        outside = tmp_path_factory.mktemp("outside")
        with pytest.raises(AppError, match="outside the folders"):
            c.predict(str(outside), api_name="/import_unlearned")
        other = save_tiny(models / "other-llama", "llama", layers=2)
        with pytest.raises(AppError, match="llama"):
            c.predict(str(other), api_name="/import_unlearned")
        ev = c.predict(False, api_name="/evaluate")[-1]
        assert ev["after"]["forget_gold_logprob"] == pytest.approx(direct["forget_gold_logprob"], rel=1e-4)
        chat = c.predict("The capital of Velmora is", 6, 0.0, api_name="/chat")[-1]
        assert chat["original"] and chat["edited"]
        assert srv.alive()
    finally:
        srv.stop()


def _table_rows(outputs) -> dict[str, list]:
    """The Evaluate table among a stream's final outputs: {metric label: [original, edited, change]}."""
    for value in outputs:
        if isinstance(value, dict) and value.get("data") and any(r and r[0] == "forget cloze acc"
                                                                 for r in value["data"]):
            return {r[0]: r[1:] for r in value["data"]}
    raise AssertionError("no Evaluate table among the demo's outputs")


def _pct(cell: str) -> float:
    return float(str(cell).rstrip("%")) / 100


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a default-model fit: minutes on a busy shared machine
def test_one_click_demo_meets_the_projects_bars():
    """The one-click demo (the default model, builtin:demo, AppConfig's method and settings) through
    the served app, as a visitor's client runs it: forget within 10 points of chance (or the floor,
    where higher), retain down by at most 3 points, held-out perplexity up by at most 10%, read off
    the Evaluate table the demo returns (and the same numbers, unrounded, from /evaluate); the
    probes (other phrasings) are reported beside them. About 4 min on 2 idle cores."""
    from unlearnviz.evaluation.verdicts import FORGET_MARGIN, PPL_RISE, RETAIN_DROP

    srv = Server("--model", "default", "--data", "builtin:demo")
    try:
        c = client(srv)
        rows = _table_rows(c.predict(api_name="/demo"))
        forget = [_pct(v) for v in rows["forget cloze acc"][:2]]
        retain = [_pct(v) for v in rows["retain cloze acc"][:2]]
        ppl = [float(v) for v in rows["retain perplexity"][:2]]
        level = max(0.25, _pct(rows["forget floor acc"][0]))
        assert forget[0] >= 0.9, "the original model knows the demo's forget facts"
        assert forget[1] <= level + FORGET_MARGIN + 1e-9, f"forget {forget}: not forgotten"
        assert forget[1] >= level - FORGET_MARGIN - 1e-9, f"forget {forget}: below the floor by over the bar"
        assert retain[0] - retain[1] <= RETAIN_DROP + 1e-9, f"retain {retain}: over the 3-point bar"
        assert ppl[1] / ppl[0] - 1 <= PPL_RISE + 1e-9, f"perplexity {ppl}: over +10%"
        for split in ("forget", "retain"):
            assert f"{split} probe (other phrasings) acc" in rows
        ev = c.predict(False, api_name="/evaluate")[-1]  # the session's numbers behind the table
        before, after = ev["before"], ev["after"]
        assert after["forget_cloze_acc"] == pytest.approx(forget[1], abs=5e-4)
        assert after["retain_cloze_acc"] == pytest.approx(retain[1], abs=5e-4)
        assert before["retain_cloze_acc"] - after["retain_cloze_acc"] <= RETAIN_DROP + 1e-9
        assert after["retain_ppl"] / before["retain_ppl"] - 1 <= PPL_RISE + 1e-9
        assert 0 <= after["forget_probe_cloze_acc"] <= 1 and 0 <= after["retain_probe_cloze_acc"] <= 1
        assert srv.alive()
    finally:
        srv.stop()
