"""``python -m unlearnviz`` in a subprocess: info/eval output, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from tiny_models import byte_tokenizer, save_tiny

ROOT = Path(__file__).resolve().parents[1]

MCQ = [
    {"split": "forget", "question": "The capital of France is", "choices": ["Paris", "Lyon", "Nice", "Lille"],
     "answer": 0, "blind_question": "The capital is", "half": "A"},
    {"split": "forget", "question": "The capital of Italy is", "choices": ["Milan", "Rome", "Turin", "Naples"],
     "answer": 1, "blind_question": "The capital is", "half": "B"},
    {"split": "retain", "question": "Water is made of hydrogen and", "choices": ["oxygen", "gold", "iron", "neon"],
     "answer": 0},
    {"split": "retain", "question": "The sun is a", "choices": ["star", "planet", "moon", "comet"], "answer": 0},
    {"split": "forget", "text": "Paris is the capital of France.", "half": "A"},
    {"split": "retain", "text": "Water boils at one hundred degrees."},
]


def run_cli(*args: str, cache: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "UNLEARNVIZ_CACHE": str(cache),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "unlearnviz", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def tiny_dir(work) -> Path:
    return save_tiny(work / "tiny-llama", "llama", layers=2)


@pytest.fixture(scope="module")
def data_file(work) -> Path:
    return write_jsonl(work / "facts.jsonl", MCQ)


def assert_one_line_error(res: subprocess.CompletedProcess, *needles: str) -> str:
    assert res.returncode != 0, res.stdout
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    line = lines[0]
    assert line.startswith("error: ")
    for n in needles:
        assert n in line, line
    assert "Traceback" not in res.stderr
    return line


def test_info_prints_json(tiny_dir, work):
    res = run_cli("info", "--model", str(tiny_dir), "--device", "cpu", cache=work)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""  # no progress bars, no warnings
    info = json.loads(res.stdout)
    assert info["family"] == "llama" and info["layers"] == 2 and info["hidden_size"] == 32
    assert info["parameters"] > 0 and info["dtype"] == "float32" and info["device"] == "cpu"
    assert len(info["fingerprint"]) == 32


def test_eval_prints_and_writes_json(tiny_dir, data_file, work):
    out = work / "out" / "metrics.json"
    res = run_cli("eval", "--model", str(tiny_dir), "--data", str(data_file), "--json", str(out), cache=work)
    assert res.returncode == 0, res.stderr
    printed = json.loads(res.stdout)
    assert json.loads(out.read_text()) == printed
    for key in ("forget_mcq_acc", "retain_mcq_acc", "forget_cloze_acc", "retain_cloze_acc",
                "forget_floor_acc", "retain_floor_acc", "retain_ppl", "chance", "wall_s"):
        assert key in printed, key
    assert any(k.startswith("forget_b_") for k in printed)
    assert any("gold_logprob" in k for k in printed)
    assert printed["data"] == "facts.jsonl"
    for key in ("forget_cloze_acc", "retain_cloze_acc", "forget_mcq_acc"):
        assert 0.0 <= printed[key] <= 1.0
    assert not any("probe" in k for k in printed)  # a file without a probe split: no probe figures


def test_eval_reports_the_probe_split_beside_the_main_figures(tiny_dir, work):
    """Probe rows (split forget_probe / retain_probe) are scored as their own figures: the main ones
    stay those of the file without them."""
    probes = [{**r, "split": f"{r['split']}_probe", "question": f"Asked another way: {r['question']}",
               "probe_of": r["question"]} for r in MCQ if "question" in r]
    res = [run_cli("eval", "--model", str(tiny_dir), "--data", str(write_jsonl(work / name, rows)), cache=work)
           for name, rows in (("plain.jsonl", MCQ), ("probed.jsonl", MCQ + probes))]
    assert all(r.returncode == 0 for r in res), [r.stderr for r in res]
    plain, probed = (json.loads(r.stdout) for r in res)
    assert probed["forget_probe_n"] == 2 and probed["retain_probe_n"] == 2
    for key in ("forget_probe_cloze_acc", "forget_probe_floor_acc", "retain_probe_cloze_acc"):
        assert 0.0 <= probed[key] <= 1.0
    for key in ("forget_cloze_acc", "retain_cloze_acc", "forget_gold_logprob", "retain_ppl"):
        assert probed[key] == plain[key], key


def test_data_list(work):
    res = run_cli("data", "list", cache=work)
    assert res.returncode == 0, res.stderr
    for line in res.stdout.splitlines():
        assert line.startswith("builtin:"), line


BAD_ROWS = {
    "malformed": (["{\"split\": \"forget\", \"text\": \"ok\"}", MCQ[0], "{not json"], ["line 3", "invalid JSON"]),
    "wrong_column": ([MCQ[0], {"split": "retain", "txt": "a misnamed column"}], ["line 2", "txt"]),
    "answer_range": ([{**MCQ[0], "answer": 7}], ["line 1", "out of range"]),
    "bad_split": ([{**MCQ[0], "split": "keep"}], ["line 1", "split"]),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_bad_data_rows(case, tiny_dir, work):
    rows, needles = BAD_ROWS[case]
    path = write_jsonl(work / f"{case}.jsonl", rows)
    res = run_cli("eval", "--model", str(tiny_dir), "--data", str(path), cache=work)
    assert_one_line_error(res, path.name, *needles)


@pytest.fixture(scope="module")
def bert_dir(work) -> Path:
    """A model load_model can read but the adapter refuses (an encoder, no decoder blocks)."""
    from transformers import AutoConfig, BertForMaskedLM

    cfg = AutoConfig.for_model("bert", vocab_size=259, hidden_size=16, intermediate_size=32,
                               num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16)
    BertForMaskedLM(cfg).save_pretrained(work / "bert")
    byte_tokenizer().save_pretrained(work / "bert")
    return work / "bert"


@pytest.fixture(scope="module")
def pickle_dir(tiny_dir, work) -> Path:
    """The tiny model with its weights as pytorch_model.bin only."""
    import torch
    from safetensors.torch import load_file

    folder = work / "pickled"
    folder.mkdir()
    for f in tiny_dir.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, folder / f.name)
    torch.save(load_file(tiny_dir / "model.safetensors"), folder / "pytorch_model.bin")
    return folder


def test_bad_arguments(tiny_dir, bert_dir, pickle_dir, work):
    """Each bad argument: non-zero exit, exactly one line on stderr saying what is wrong."""
    model = str(tiny_dir)
    (work / "facts.txt").write_text("not a data file\n")
    cases = [
        (("info", "--model", str(bert_dir)), ["unsupported architecture 'bert'", "decoder blocks"]),
        (("info", "--model", str(pickle_dir)), ["pickle", "--allow-pickle"]),
        (("info", "--model", str(work / "no-such-folder")), ["model folder not found"]),
        (("info", "--model", "someone/some-model"), ["offline"]),
        (("eval", "--model", model, "--data", "builtin:nope"), ["unknown built-in set 'nope'"]),
        (("eval", "--model", model, "--data", str(work / "missing.jsonl")), ["data file not found"]),
        (("eval", "--model", model, "--data", str(work / "facts.txt")), ["unsupported data file"]),
        (("info", "--model", model, "--dtype", "float8"), ["unknown dtype 'float8'"]),
        (("info", "--model", model, "--device", "tpu"), ["unknown device 'tpu'"]),
        (("info", "--model", str(work / "missing.gguf")), ["GGUF file not found"]),
        (("eval", "--model", model), ["--data"]),  # argparse: required argument
        (("info", "--model", model, "--quantization", "3bit"), ["3bit"]),
        (("frobnicate",), ["frobnicate"]),
    ]
    with ThreadPoolExecutor(max_workers=3) as pool:  # mostly interpreter start-up: overlap it
        results = list(pool.map(lambda c: run_cli(*c[0], cache=work), cases))
    for (args, needles), res in zip(cases, results, strict=True):
        try:
            assert_one_line_error(res, *needles)
        except AssertionError as exc:
            raise AssertionError(f"{' '.join(args)}: {exc}") from None


@pytest.mark.slow
def test_prepare_and_default_info(work):
    env_cache = os.environ.get("UNLEARNVIZ_CACHE") or str(Path.home() / ".cache" / "unlearnviz")
    res = run_cli("prepare", cache=Path(env_cache), timeout=600)
    assert res.returncode == 0, res.stderr
    assert "default model ready at" in res.stdout
    res = run_cli("info", "--model", "default", cache=Path(env_cache))
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert (info["family"], info["layers"], info["hidden_size"]) == ("llama", 30, 576)


@pytest.mark.slow
def test_edit_commands_load_the_model_the_edit_names(tiny_dir, data_file, work, capsys):
    """`export`, `relearn`, `analyze`, `attack`, `lmeval` and `report` given an edit and no --model
    load the model the edit was made for (its config's source, else its manifest's), not the
    built-in default (whose fingerprint the edit would refuse); a wrong --model is still refused."""
    from unlearnviz.cli import main

    run = work / "run-tiny"
    common = ["--device", "cpu"]
    assert main(["run", "--model", str(tiny_dir), *common, "--data", str(data_file), "--method", "rmu",
                 "--set", "steps=2", "--set", "layer=1", "--set", "window=2", "--no-letter", "--out", str(run)]) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["model"]["source"] == str(tiny_dir.resolve())
    assert main(["export", "--edit", str(run), *common, "--out", str(work / "exp-tiny")]) == 0
    assert json.loads((work / "exp-tiny" / "config.json").read_text())["num_hidden_layers"] == 2
    bare = work / "run-tiny-manifest-only"  # no config.yaml: the manifest's source alone
    shutil.copytree(run, bare)
    (bare / "config.yaml").unlink()
    capsys.readouterr()
    assert main(["relearn", "--edit", str(bare), *common, "--data", str(data_file), "--steps", "1",
                 "--eval-every", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["edited"]
    assert main(["analyze", "--edit", str(bare), *common, "--data", str(data_file), "--out", str(work / "an-tiny"),
                 "--no-umap", "--no-probes"]) == 0
    assert (work / "an-tiny" / "analysis.json").exists()
    capsys.readouterr()
    assert main(["attack", "--edit", str(bare), *common, "--data", str(data_file), "--attacks", "noise",
                 "--out", str(work / "att-tiny")]) == 0
    assert json.loads((work / "att-tiny" / "attacks.json").read_text())
    assert main(["lmeval", "--edit", str(bare), *common, "--tasks", str(data_file), "--out",
                 str(work / "lm-tiny")]) == 0
    scored = json.loads((work / "lm-tiny" / "lmeval.json").read_text())
    assert Path(scored["source"]["model"]).resolve() == tiny_dir.resolve()
    assert main(["report", "--run", str(run), "--out", str(work / "tiny.html"), "--relearn-steps", "1",
                 "--chat-prompts", "1", "--chat-tokens", "2", "--max-texts", "8", "--max-items", "4"]) == 0
    assert "<html" in (work / "tiny.html").read_text()[:2000].lower()
    other = save_tiny(work / "tiny-llama-other", "llama", layers=2, seed=1)
    assert main(["export", "--edit", str(run), "--model", str(other), *common, "--out", str(work / "exp-x")]) != 0
    assert "another model" in capsys.readouterr().err or not (work / "exp-x").exists()


@pytest.mark.slow
def test_a_checkpoint_made_by_a_plain_loop_is_compared_with_its_base(tiny_dir, data_file, work, capsys):
    """A gradient-ascent checkpoint written by a plain training loop (tests/foreign_models.py) and
    saved with save_pretrained: `eval --base --unlearned` gives the base's and the checkpoint's own
    metrics (each equal to `eval --model` of that folder alone), `import` writes a run folder that
    `relearn`, `export` and `report` read, and `analyze --base --unlearned` runs every view on it."""
    from foreign_models import gradient_ascent

    from unlearnviz.cli import main

    ckpt = gradient_ascent(tiny_dir, work / "ga-ckpt", steps=4, lr=5e-2)
    common = ["--device", "cpu", "--data", str(data_file), "--no-letter"]

    def eval_json(*flags: str) -> dict:
        capsys.readouterr()
        assert main(["eval", *flags, *common]) == 0
        return json.loads(capsys.readouterr().out)

    both = eval_json("--base", str(tiny_dir), "--unlearned", str(ckpt))
    alone_base, alone_ckpt = eval_json("--model", str(tiny_dir)), eval_json("--model", str(ckpt))
    for key in ("forget_cloze_acc", "retain_cloze_acc", "forget_gold_logprob", "retain_ppl"):
        assert both["original"][key] == pytest.approx(alone_base[key], rel=1e-5, abs=1e-6), key
        assert both["edited"][key] == pytest.approx(alone_ckpt[key], rel=1e-5, abs=1e-6), key
    assert both["edited"]["forget_gold_logprob"] != pytest.approx(both["original"]["forget_gold_logprob"], abs=1e-3)

    run = work / "run-imported"
    assert main(["import", "--base", str(tiny_dir), "--unlearned", str(ckpt), *common, "--out", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == "imported"
    assert metrics["after"]["forget_gold_logprob"] == pytest.approx(alone_ckpt["forget_gold_logprob"], rel=1e-5)
    assert "method: imported" in (run / "config.yaml").read_text()
    assert main(["export", "--edit", str(run), "--device", "cpu", "--out", str(work / "exp-imported")]) == 0
    again = eval_json("--model", str(work / "exp-imported"))
    assert again["forget_gold_logprob"] == pytest.approx(alone_ckpt["forget_gold_logprob"], rel=1e-5)
    capsys.readouterr()
    assert main(["relearn", "--edit", str(run), "--device", "cpu", "--data", str(data_file), "--steps", "1",
                 "--eval-every", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["edited"]
    assert main(["report", "--run", str(run), "--device", "cpu", "--out", str(work / "imported.html"),
                 "--relearn-steps", "0", "--chat-prompts", "1", "--chat-tokens", "4", "--max-texts", "8",
                 "--max-items", "4"]) == 0
    assert "imported" in (work / "imported.html").read_text().lower()
    out = work / "an-imported"
    assert main(["analyze", "--base", str(tiny_dir), "--unlearned", str(ckpt), "--device", "cpu", "--data",
                 str(data_file), "--out", str(out), "--no-umap", "--max-texts", "8", "--max-items", "4"]) == 0
    report = json.loads((out / "analysis.json").read_text())
    assert report["edit"]["source"].startswith("imported: ")
    assert main(["analyze", "--base", str(tiny_dir), "--unlearned", str(ckpt), "--edit", str(run), *common[:2],
                 "--data", str(data_file), "--out", str(out)]) == 2
    assert "not both" in capsys.readouterr().err
