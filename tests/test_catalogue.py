"""The session layer's catalogue: what the dashboard lists, and how its form becomes overrides."""

from __future__ import annotations

import pytest

from unlearnviz.errors import UserError
from unlearnviz.session import catalogue


def test_form_values_are_read_by_the_methods_own_rules():
    # What Gradio hands over: Number gives floats, Textbox gives the list as text, Checkbox a bool.
    rows = {r["name"]: r["default"] for r in catalogue.hparam_rows("rmu")}
    form = {name: (",".join(map(str, d)) if isinstance(d, list) else float(d) if type(d) is int else d)
            for name, d in rows.items()}
    assert catalogue.changed_hparams("rmu", form) == {}  # an untouched form changes nothing
    form.update(steps=12.0, layer=3.0, anchor_first=not rows["anchor_first"])
    assert catalogue.changed_hparams("rmu", form) == {"steps": 12, "layer": 3, "anchor_first": not rows["anchor_first"]}
    mrp = catalogue.changed_hparams("mrp", {"layers": "[4, 6]", "k": 8.0})
    assert mrp == {"layers": [4, 6]}


@pytest.mark.parametrize("values, key", [({"steps": 4.5}, "steps"), ({"layers": "4, x"}, "layers"),
                                         ({"nope": 1}, "nope")])
def test_unreadable_form_values_name_the_key(values, key):
    with pytest.raises(UserError, match=key):
        catalogue.changed_hparams("mrp" if "layers" in values else "rmu", values)


def test_unknown_method_is_a_user_error():
    with pytest.raises(UserError, match="unknown method"):
        catalogue.changed_hparams("nope", {})
