"""A method describes itself to the report through its registration: adding one touches only its
module, and the report's title and method section speak of it in its own words."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from unlearnviz.methods.base import REGISTRY, get_method, hp, register
from unlearnviz.report import ReportData, build_report


@dataclass
class ToyParams:
    nudge: float = hp(0.5, "How far the toy method nudges each forget feature.", "no paper", min=0.0)


@pytest.fixture
def toy_method():
    @register("toy", ToyParams, "A throwaway method", plain_name="TOY",
              description="TOY (a throwaway test method) nudges a <few> features & nothing else.")
    def fit_toy(lm, data, hparams, progress=None, should_stop=None, prior=None):
        raise NotImplementedError

    try:
        yield get_method("toy")
    finally:
        REGISTRY.pop("toy", None)


def _method_section(page: str) -> str:
    return page[page.index('<section id="method">'):page.index('<section id="metrics">')]


def test_the_report_uses_the_registered_prose(toy_method, tiny_data):
    report = ReportData(model={"name": "tiny"}, data=tiny_data, before={}, after={},
                        edits=[{"method": "toy", "hparams": {"nudge": 0.7}, "layers": [1], "steps": 3, "fit_s": 1.5}])
    page = build_report(report)
    assert "<title>Unlearning report: TOY on tiny</title>" in page
    section = _method_section(page)
    assert "TOY (a throwaway test method) nudges a &lt;few&gt; features &amp; nothing else." in section
    assert "How far the toy method nudges each forget feature." in section  # the hyperparameter's own doc
    assert "<td>nudge</td><td>0.7</td>" in section


def test_every_built_in_method_describes_itself():
    for name in ("rmu", "srmu", "mrp"):
        spec = get_method(name)
        assert spec.plain_name == name.upper() and spec.description.startswith(f"{spec.plain_name} (")
        assert len(spec.description.split()) >= 15


def test_an_unregistered_method_is_named_as_it_is(tiny_data):
    page = build_report(ReportData(model={"name": "tiny"}, data=tiny_data, before={}, after={},
                                   edits=[{"method": "gone", "hparams": {}}]))
    assert "Unlearning report: GONE on tiny" in page and "Method gone." in _method_section(page)
