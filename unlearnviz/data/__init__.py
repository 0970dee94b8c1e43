"""Forget/retain corpora, multiple-choice sets, loaders and built-in data."""

from unlearnviz.data.compose import check_data, load_data
from unlearnviz.data.loaders import builtin_names
from unlearnviz.data.schema import MCQItem, UnlearningData
from unlearnviz.data.sources import PARTS, compose_spec, preset_names

__all__ = ["PARTS", "MCQItem", "UnlearningData", "builtin_names", "check_data", "compose_spec", "load_data",
           "preset_names"]
