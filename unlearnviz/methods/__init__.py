"""Unlearning methods, registered by name: rmu, srmu, mrp; and unlearned models made elsewhere, imported as edits."""

from unlearnviz.methods import mrp, rmu, srmu  # noqa: F401  (registration)
from unlearnviz.methods.base import REGISTRY, get_method, make_hparams
from unlearnviz.methods.edit import Edit, EditStack, load_edit, save_edit
from unlearnviz.methods.imports import IMPORTED, describe_unlearned, import_unlearned

__all__ = ["IMPORTED", "REGISTRY", "Edit", "EditStack", "describe_unlearned", "get_method", "import_unlearned",
           "load_edit", "make_hparams", "save_edit"]
