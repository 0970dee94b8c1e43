"""Forget/retain corpora, multiple-choice sets, loaders and built-in data."""

from unlearnviz.data.loaders import builtin_names, load_data
from unlearnviz.data.schema import MCQItem, UnlearningData

__all__ = ["MCQItem", "UnlearningData", "builtin_names", "load_data"]
