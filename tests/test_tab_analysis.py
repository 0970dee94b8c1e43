"""The analysis tabs' choices made from a view's numbers (unlearnviz/ui/tab_analysis.py)."""

from __future__ import annotations

from unlearnviz.ui.tab_analysis import most_changed_layer


def test_the_geometry_slider_opens_where_the_edit_changed_most():
    rows = [{"layer": 0, "cka": 1.0, "changed": False}, {"layer": 1, "cka": 0.62, "changed": True},
            {"layer": 2, "cka": 0.41, "changed": True}, {"layer": 3, "cka": 0.2, "changed": True}]
    assert most_changed_layer(rows, {0: None, 1: None, 2: None}) == 2  # layer 3 has no view
    assert most_changed_layer(rows[:1], {0: None}) is None  # no edit: the first layer
