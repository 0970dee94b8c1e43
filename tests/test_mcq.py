"""The evaluation's probe split (unlearnviz.evaluation.mcq.evaluate): held-out phrasings scored
beside the main items, on the tiny synthetic model, whose training texts state every fact in five
phrasings, so a probe in another trained phrasing is known and one in an untrained phrasing is not."""

from __future__ import annotations

import dataclasses

import pytest

from unlearnviz.data.schema import MCQItem, UnlearningData
from unlearnviz.data.synthetic import TEMPLATES
from unlearnviz.evaluation.mcq import evaluate, score_items, summarise
from unlearnviz.evaluation.verdicts import metric_rows


def _rephrased(item: MCQItem, stem: str) -> MCQItem:
    return dataclasses.replace(item, question=stem, blind_question=stem.replace(item.subject, "this one"))


def trained_phrasing(item: MCQItem) -> MCQItem | None:
    """The item under the next template of its relation that ends in the answer (a phrasing the
    tiny model was trained on), or None where the relation has only one."""
    for t in TEMPLATES[item.relation][1:]:
        if t.endswith("{o}.") and t.index("{s}") < t.index("{o}"):
            stem = t[: -len("{o}.")].rstrip().format(s=item.subject)
            return _rephrased(item, stem[:1].upper() + stem[1:])
    return None


def untrained_phrasing(item: MCQItem) -> MCQItem:
    return _rephrased(item, f"Quiz card 7, about {item.subject}. Fill in the blank with one word:")


def with_probes(data: UnlearningData, make) -> UnlearningData:
    pairs = {split: [(p, it.question) for it in getattr(data, f"{split}_mcq") if (p := make(it)) is not None]
             for split in ("forget", "retain")}
    return dataclasses.replace(data, forget_probe=[p for p, _ in pairs["forget"]],
                               forget_probe_of=[q for _, q in pairs["forget"]],
                               retain_probe=[p for p, _ in pairs["retain"]],
                               retain_probe_of=[q for _, q in pairs["retain"]])


@pytest.fixture(scope="module")
def plain(tiny_lm, tiny_data):
    return evaluate(tiny_lm, tiny_data, letter=False, ppl=False)


def test_data_without_probes_reports_no_probe_figures(plain, tiny_data):
    assert not tiny_data.has_probes
    assert not any("probe" in k for k in plain)
    assert not any("probe" in r[0] for r in metric_rows(plain, plain))


def test_probe_figures_are_the_probe_items_own_scores(tiny_lm, tiny_data, plain):
    data = with_probes(tiny_data, trained_phrasing)
    m = evaluate(tiny_lm, data, letter=False, ppl=False)
    for split in ("forget", "retain"):
        alone = summarise(score_items(tiny_lm, getattr(data, f"{split}_probe"), letter=False))
        assert m[f"{split}_probe_n"] == len(getattr(data, f"{split}_probe")) > 0
        assert m[f"{split}_probe_cloze_acc"] == pytest.approx(alone["cloze_acc"])
        assert m[f"{split}_probe_floor_acc"] == pytest.approx(alone["floor_acc"])
        assert "mcq_acc" not in alone and f"{split}_probe_mcq_acc" not in m  # probes: cloze and floor only
    # the main figures are untouched by the probes beside them
    assert {k: v for k, v in m.items() if "probe" not in k and k != "wall_s"} == \
        {k: v for k, v in plain.items() if k != "wall_s"}


def test_probes_tell_a_known_fact_from_a_known_phrasing(tiny_lm, tiny_data):
    """The model knows the facts in every trained phrasing, but not under a wording it never saw:
    the probe accuracy follows the phrasing, so it can disagree with the main accuracy, which is
    what "forgot the fact, or the phrasing?" reads."""
    trained = evaluate(tiny_lm, with_probes(tiny_data, trained_phrasing), letter=False, ppl=False)
    untrained = evaluate(tiny_lm, with_probes(tiny_data, untrained_phrasing), letter=False, ppl=False)
    assert trained["forget_cloze_acc"] >= 0.9 and trained["forget_probe_cloze_acc"] >= 0.75, trained
    assert untrained["forget_cloze_acc"] == trained["forget_cloze_acc"]
    assert untrained["forget_probe_cloze_acc"] <= untrained["forget_cloze_acc"] - 0.3, untrained
    labels = [r[0] for r in metric_rows(trained, untrained)]
    assert "forget probe (other phrasings) acc" in labels and "retain probe (other phrasings) acc" in labels
    from unlearnviz.ui.tab_evaluate import metrics_rows  # the Evaluate tab shows them as percentages

    shown = {r[0]: r[1:] for r in metrics_rows({"before": trained, "after": untrained})}
    assert shown["forget probe (other phrasings) acc"][:2] == [f"{trained['forget_probe_cloze_acc']:.1%}",
                                                              f"{untrained['forget_probe_cloze_acc']:.1%}"]


def test_a_one_sided_probe_split_reports_that_side_only(tiny_lm, tiny_data):
    data = with_probes(tiny_data, trained_phrasing)
    data = dataclasses.replace(data, retain_probe=[], retain_probe_of=[])
    m = evaluate(tiny_lm, data, letter=False, ppl=False)
    assert "forget_probe_cloze_acc" in m and not any(k.startswith("retain_probe") for k in m)
    assert not any("probe" in k for k in evaluate(tiny_lm, data, letter=False, ppl=False, probes=False))
