"""Unlearning methods, registered by name: rmu, srmu, mrp."""

from unlearnviz.methods import mrp, rmu, srmu  # noqa: F401  (registration)
from unlearnviz.methods.base import REGISTRY, get_method, make_hparams
from unlearnviz.methods.edit import Edit, EditStack, load_edit, save_edit

__all__ = ["REGISTRY", "Edit", "EditStack", "get_method", "load_edit", "make_hparams", "save_edit"]
