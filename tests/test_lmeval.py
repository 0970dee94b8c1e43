"""lm-evaluation-harness as a scorer (``unlearnviz.evaluation.lmeval``, ``python -m unlearnviz lmeval``).

The agreement tests run the harness itself (the installed lm-eval 0.4.13, its HFLM around the
loaded model, the edit routed through the model's hooks) on a data set's items written as local
``multiple_choice`` tasks, and the project's own cloze scoring on the same items: the two must pick
the same choice for every item, under ``acc`` (summed log-likelihood) and ``acc_norm`` (over the
choice's characters), for the original and for an edited model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unlearnviz.errors import UserError
from unlearnviz.evaluation import lmeval
from unlearnviz.evaluation.mcq import cloze_pick, score_items, summarise
from unlearnviz.evaluation.scoring import continuation_logprobs

ROOT = Path(__file__).resolve().parents[1]
# a strong, quick RMU edit of the tiny synthetic model: forget accuracy falls to about half and the
# choices' log-likelihoods move by tens of nats, so normalisation decides some items
TINY_RMU = {"layer": 2, "window": 2, "steps": 60, "batch_size": 8, "steering_coeff": 20.0, "lr": 1e-2, "alpha": 10}
TINY_RMU_FLAGS = [a for k, v in TINY_RMU.items() for a in ("--set", f"{k}={v}")]


def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "unlearnviz", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(res: subprocess.CompletedProcess, *needles: str) -> str:
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def rmu_edit(lm, data, **over):
    from unlearnviz.methods import get_method, make_hparams

    spec = get_method("rmu")
    return spec.fit(lm, data, make_hparams(spec.hparams_cls, over))


def byte_pick(lls: list[float], choices) -> int:
    """The project's earlier cloze rule: per UTF-8 byte of `` choice`` (the delimiter counted)."""
    return max(range(len(lls)), key=lambda j: lls[j] / len((" " + choices[j]).encode("utf-8")))


def assert_agrees(lm, data, plan, folder: Path, limit: int | None = None) -> dict:
    """The harness on ``data``'s local tasks and ``score_items`` on the same items pick the same
    choice, item by item, for both sides; their log-likelihoods agree; the base is untouched."""
    names = lmeval.write_local_tasks(data, folder)
    fp, tok = lm.fingerprint(), (lm.tokenizer.pad_token_id, lm.tokenizer.padding_side)
    res = lmeval.run_lmeval(lm, names, plan=plan, include=[folder], limit=limit, batch_size=16)
    assert lm.fingerprint() == fp and (lm.tokenizer.pad_token_id, lm.tokenizer.padding_side) == tok
    assert res["lm_eval_version"] == "0.4.13" and res["sides"] == ["original", "edited"]
    for side, p in (("original", None), ("edited", plan)):
        for split, items in (("forget", data.forget_mcq), ("retain", data.retain_mcq)):
            items = items[:limit]
            task = lmeval.LOCAL_TASKS[split]
            theirs = res["samples"][side][task]
            assert [s["doc_id"] for s in theirs] == list(range(len(items)))
            ours = score_items(lm, items, plan=p, letter=False, floor=False)
            lls = [v for v, _ in continuation_logprobs(lm, [(it.question, " " + c) for it in items for c in it.choices],
                                                       plan=p)]
            k = 0
            for it, s, r in zip(items, theirs, ours):
                mine = lls[k:k + len(it.choices)]
                k += len(it.choices)
                assert s["lls"] == pytest.approx(mine, rel=1e-4, abs=1e-4), (side, it.question)
                assert s["pred"] == max(range(len(mine)), key=mine.__getitem__), (side, it.question)
                assert s["pred_norm"] == cloze_pick(mine, it.choices), (side, it.question)
                assert (s["acc"], s["acc_norm"]) == (r["cloze_sum"], r["cloze"]), (side, it.question)
            m = res["results"][side][task]
            assert m["acc"] == pytest.approx(summarise(ours)["cloze_sum_acc"])
            assert m["acc_norm"] == pytest.approx(summarise(ours)["cloze_acc"])
            assert res["n"][task] == len(items)
    return res


# ---- fast: the task files, the names, the messages --------------------------------------------
def test_tasks_split_into_harness_names_and_data_sets(tmp_path):
    f = tmp_path / "items"
    f.write_text("{}\n")
    hub, data = lmeval.split_tasks(f"wmdp_bio, mmlu,builtin:demo,synthetic,{f},preset:wmdp-bio,items.csv,wmdp_cyber,")
    assert hub == ["wmdp_bio", "mmlu", "wmdp_cyber"]
    assert data == ["builtin:demo", "synthetic", str(f), "preset:wmdp-bio", "items.csv"]


@pytest.mark.slow
def test_local_tasks_are_the_cloze_requests(tiny_data, tmp_path):
    """The written YAML, read by lm-eval's own TaskManager: zero-shot, the stem as the context, the
    item's choices after one space, the gold index as the target; the harness's index is not built."""
    from lm_eval.api.instance import Instance

    names = lmeval.write_local_tasks(tiny_data, tmp_path)
    assert names == ["uv_forget", "uv_retain"]
    tm = lmeval.task_manager(names, [tmp_path])
    assert "mmlu" not in tm.task_index
    tasks = tm.load(names)["tasks"]
    for name, items in (("uv_forget", tiny_data.forget_mcq), ("uv_retain", tiny_data.retain_mcq)):
        task = tasks[name]
        assert task.OUTPUT_TYPE == "multiple_choice" and task.config.target_delimiter == " "
        docs = list(task.test_docs())
        assert len(docs) == len(items)
        for doc, it in zip(docs, items):
            assert (task.doc_to_text(doc), task.doc_to_choice(doc), task.doc_to_target(doc)) == \
                (it.question, list(it.choices), it.answer)
        ctx = task.fewshot_context(docs[0], num_fewshot=0)
        requests = task.construct_requests(docs[0], ctx, metadata=(name, 0, 1))
        assert all(isinstance(r, Instance) for r in requests)
        assert [r.arguments for r in requests] == [(items[0].question, " " + c) for c in items[0].choices]
    with pytest.raises(UserError, match="has no task 'uv_nope'"):
        lmeval.check_tasks(tm, ["uv_nope"])


def test_missing_harness_is_one_line(tmp_path, monkeypatch, capsys):
    from unlearnviz.cli import main

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if not installed: `import lm_eval` fails
    with pytest.raises(UserError, match=r"pip install 'unlearnviz\[lmeval\]'"):
        lmeval.require_lmeval()
    assert main(["lmeval", "--model", "default", "--tasks", "builtin:demo", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lm-evaluation-harness is not installed" in err[0] and "lm-eval==0.4.13" in err[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv, needle", [
    (["--edit", "E", "--unlearned", "U", "--tasks", "synthetic"], "not both"),
    (["--tasks", "synthetic", "--out", "O"], "needs --edit RUN, --unlearned CKPT"),
    (["--model", "default", "--tasks", "synthetic"], "--out is needed"),
    (["--model", "default", "--tasks", ",", "--out", "O"], "no tasks"),
    (["--model", "default", "--tasks", "builtin:demo,synthetic", "--out", "O"], "one project data set"),
    (["--model", "default", "--tasks", "synthetic", "--data", "builtin:demo", "--out", "O"], "one project data set"),
    (["--model", "default", "--tasks", "my_task", "--include-path", "nowhere", "--out", "O"], "--include-path nowhere"),
    (["--model", "default", "--tasks", "synthetic", "--batch-size", "0", "--out", "O"], "--batch-size"),
    (["--edit", "no-such-run", "--tasks", "synthetic"], "no manifest.json"),
])
def test_bad_arguments_fail_before_any_model_loads(argv, needle, tmp_path, monkeypatch, capsys):
    from unlearnviz.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["lmeval", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "O").exists()


# ---- the agreement tests ----------------------------------------------------------------------
@pytest.mark.slow
def test_harness_and_cloze_scoring_agree_item_by_item(tiny_lm, tiny_data, tmp_path):
    """The tiny synthetic model and its world, original and after a strong RMU edit."""
    edit = rmu_edit(tiny_lm, tiny_data, **TINY_RMU)
    res = assert_agrees(tiny_lm, tiny_data, edit.plan(), tmp_path)
    orig, edited = res["samples"]["original"]["uv_forget"], res["samples"]["edited"]["uv_forget"]
    # the plan reached the harness's forwards (a ContextVar, read in the calling thread) ...
    assert max(abs(a - b) for o, e in zip(orig, edited) for a, b in zip(o["lls"], e["lls"])) > 5
    assert res["results"]["edited"]["uv_forget"]["acc_norm"] < res["results"]["original"]["uv_forget"]["acc_norm"]
    # ... and the normalisation decides items there: acc and acc_norm pick differently on some
    assert sum(s["pred"] != s["pred_norm"] for s in edited) >= 2


@pytest.mark.slow
def test_harness_and_cloze_scoring_agree_on_the_default_model(default_lm, tmp_path):
    """geo_europe_vs_world on SmolLM2-135M-Instruct: the retain probe items (held-out phrasings,
    never pruned on margins, so some sit where the rules part) on which lm-eval's acc_norm and the
    project's earlier byte normalisation (of `` choice``) pick differently, with others to 40, and
    20 forget items; original and after a short RMU fit."""
    from unlearnviz.data import load_data
    from unlearnviz.data.schema import UnlearningData

    data = load_data("builtin:geo_europe_vs_world")
    items = data.retain_probe
    lls = [v for v, _ in continuation_logprobs(default_lm, [(it.question, " " + c) for it in items
                                                            for c in it.choices])]
    differ, k = [], 0
    for i, it in enumerate(items):
        mine = lls[k:k + len(it.choices)]
        k += len(it.choices)
        if byte_pick(mine, it.choices) != cloze_pick(mine, it.choices):
            differ.append(i)
    assert differ, "no retain item where the two normalisations disagree"
    chosen = differ + [i for i in range(len(items)) if i not in differ][: 40 - len(differ)]
    small = UnlearningData(name="geo-agreement", forget_texts=data.forget_texts, retain_texts=data.retain_texts,
                           forget_mcq=data.forget_mcq[:20], retain_mcq=[items[i] for i in chosen])
    edit = rmu_edit(default_lm, data, steps=12)
    res = assert_agrees(default_lm, small, edit.plan(), tmp_path)
    # where the two rules differ, the harness's acc_norm is the characters' pick, not the bytes'
    for j, i in enumerate(differ):
        s = res["samples"]["original"]["uv_retain"][j]
        assert s["pred_norm"] != byte_pick(s["lls"], items[i].choices), items[i].question


# ---- the command ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_path) -> Path:
    """An RMU run of the tiny synthetic model, written by `python -m unlearnviz run`."""
    out = tmp_path_factory.mktemp("lmeval") / "run"
    res = run_cli("run", "--model", "synthetic", "--device", "cpu", "--data", "synthetic", "--method", "rmu",
                  *TINY_RMU_FLAGS, "--no-letter", "--out", out)
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def edit_result(run_dir) -> dict:
    res = run_cli("lmeval", "--edit", run_dir, "--device", "cpu", "--tasks", "synthetic")
    assert res.returncode == 0, res.stderr
    printed = json.loads(res.stdout)
    assert printed["out"] == str(run_dir / "lmeval.json") and printed["lm_eval_version"] == "0.4.13"
    return json.loads((run_dir / "lmeval.json").read_text())


@pytest.mark.slow
def test_cli_on_a_run_folder_gives_the_runs_metrics(run_dir, edit_result):
    """lm-eval's acc_norm / acc on the written tasks are the run's own cloze / cloze_sum metrics,
    before and after, and lmeval.json records the harness's version and task configs."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    r = edit_result
    for split in ("forget", "retain"):
        task = lmeval.LOCAL_TASKS[split]
        for side, m in (("original", metrics["before"]), ("edited", metrics["after"])):
            assert r["results"][side][task]["acc_norm"] == pytest.approx(m[f"{split}_cloze_acc"]), (side, split)
            assert r["results"][side][task]["acc"] == pytest.approx(m[f"{split}_cloze_sum_acc"]), (side, split)
        cfg = r["configs"][task]
        assert (cfg["output_type"], cfg["target_delimiter"], cfg["doc_to_text"]) == ("multiple_choice", " ", "question")
        assert (run_dir / lmeval.TASKS_DIR / f"{task}.yaml").exists()
    assert metrics["after"]["forget_cloze_acc"] < metrics["before"]["forget_cloze_acc"]
    assert r["source"]["edit"] == str(run_dir.resolve()) and r["source"]["data"]
    assert r["fingerprint"] and r["versions"]["uv_forget"] is not None


@pytest.mark.slow
def test_export_scored_by_the_harness_is_the_edited_model(run_dir, edit_result, tmp_path):
    """`export`, then `lmeval --model <export>`: the plain checkpoint gives the edit's lm-eval
    results item by item; `--base M --unlearned <export>` imports it back as the same edit."""
    exp = tmp_path / "export"
    res = run_cli("export", "--edit", run_dir, "--device", "cpu", "--out", exp)
    assert res.returncode == 0, res.stderr
    res = run_cli("lmeval", "--model", exp, "--device", "cpu", "--tasks", "synthetic", "--out", tmp_path / "lm")
    assert res.returncode == 0, res.stderr
    r = json.loads((tmp_path / "lm" / "lmeval.json").read_text())
    assert r["sides"] == ["model"]

    def same(a: list[dict], b: list[dict]) -> None:
        assert [(s["pred"], s["pred_norm"], s["acc"], s["acc_norm"]) for s in a] == \
            [(s["pred"], s["pred_norm"], s["acc"], s["acc_norm"]) for s in b]
        for x, y in zip(a, b):
            assert x["lls"] == pytest.approx(y["lls"], rel=1e-4, abs=1e-4)

    for task in lmeval.LOCAL_TASKS.values():
        same(r["samples"]["model"][task], edit_result["samples"]["edited"][task])
    base = json.loads((run_dir / "manifest.json").read_text())["model"]["source"]
    res = run_cli("lmeval", "--base", base, "--unlearned", exp, "--device", "cpu", "--tasks", "synthetic",
                  "--out", tmp_path / "imp")
    assert res.returncode == 0, res.stderr
    r = json.loads((tmp_path / "imp" / "lmeval.json").read_text())
    for task in lmeval.LOCAL_TASKS.values():
        same(r["samples"]["edited"][task], edit_result["samples"]["edited"][task])
        same(r["samples"]["original"][task], edit_result["samples"]["original"][task])


@pytest.mark.slow
def test_hub_task_offline_is_one_line_naming_the_dataset(tmp_path):
    res = run_cli("lmeval", "--model", "default", "--tasks", "wmdp_bio", "--out", tmp_path / "o")
    one_line_error(res, "wmdp_bio", "cais/wmdp", "offline", "--tasks builtin:NAME")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
@pytest.mark.parametrize("method, hparams", [
    ("srmu", {"layer": 2, "window": 2, "steps": 60, "batch_size": 8, "lr": 1e-2, "alpha": 10, "c_map": 20.0}),
    ("mrp", {"layers": [2], "k": 4, "steps": 8, "batch_size": 8, "placement": "stream", "spare_first": False}),
])
def test_every_method_exported_scores_in_the_harness_as_the_edit(method, hparams, tiny_lm, tiny_data, tmp_path):
    """SRMU and MRP (stream placement; site placement is refused at export, test_export) beside the
    RMU run above: lm-eval on the plain export gives, item by item, what it gives on the routed edit
    and what our cloze scorer gives."""
    from unlearnviz.methods import EditStack, get_method, make_hparams
    from unlearnviz.methods.edit import export_checkpoint
    from unlearnviz.model import LoadOptions, load_model

    spec = get_method(method)
    edit = spec.fit(tiny_lm, tiny_data, make_hparams(spec.hparams_cls, hparams))
    export_checkpoint(tiny_lm, EditStack([edit]), tmp_path / "export")
    exported = load_model(str(tmp_path / "export"), LoadOptions(device="cpu"))
    folder = tmp_path / "tasks"
    names = lmeval.write_local_tasks(tiny_data, folder)
    routed = lmeval.run_lmeval(tiny_lm, names, plan=edit.plan(), include=[folder])
    plain = lmeval.run_lmeval(exported, names, include=[folder])
    ours = summarise(score_items(tiny_lm, tiny_data.forget_mcq, plan=edit.plan(), letter=False, floor=False))
    for task in names:
        got = [(s["pred"], s["pred_norm"]) for s in plain["samples"]["model"][task]]
        assert got == [(s["pred"], s["pred_norm"]) for s in routed["samples"]["edited"][task]], task
    forget = lmeval.LOCAL_TASKS["forget"]
    assert plain["results"]["model"][forget]["acc_norm"] == pytest.approx(ours["cloze_acc"])
    moved = max(abs(a - b) for se, so in zip(routed["samples"]["edited"][forget], routed["samples"]["original"][forget])
                for a, b in zip(se["lls"], so["lls"]))
    assert moved > 1e-2  # the edit changes what the harness scores
