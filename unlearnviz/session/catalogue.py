"""What a front end lists and labels: the registered methods and their hyperparameters, the
built-in data sets, the relearning attack's defaults, the before/after metric table, and
where unlearnviz keeps its files. Each is read from the one place that defines it, so the
dashboard, the CLI help and the report never disagree."""

from __future__ import annotations

from pathlib import Path

from unlearnviz.data.loaders import builtin_names
from unlearnviz.evaluation.relearn import RelearnSettings
from unlearnviz.evaluation.verdicts import metric_rows as _metric_rows
from unlearnviz.methods.base import REGISTRY, describe_hparams, get_method, make_hparams
from unlearnviz.model.loading import cache_dir


def method_names() -> list[str]:
    """Every registered unlearning method, sorted."""
    return sorted(REGISTRY)


def method_summary(name: str) -> str:
    """One line on what the method does (UserError for an unknown name)."""
    return get_method(name).summary


def hparam_rows(name: str) -> list[dict]:
    """The method's hyperparameters: name, default, doc, paper value and range (UserError for an
    unknown method)."""
    return describe_hparams(get_method(name).hparams_cls)


def changed_hparams(name: str, values: dict) -> dict:
    """A form's values read by the method's own validator (the rules of a config file and of
    ``--set``: "5, 6" is a list, 400.0 an int), keeping only those that differ from the defaults,
    so the edit records what the user changed. A value it cannot read is a UserError naming the key."""
    cls = get_method(name).hparams_cls
    chosen, base = make_hparams(cls, values), cls()
    return {k: getattr(chosen, k) for k in values if getattr(chosen, k) != getattr(base, k)}


def builtin_data_names() -> list[str]:
    """The built-in forget/retain sets (``builtin:NAME``), sorted."""
    return builtin_names()


def relearn_defaults() -> RelearnSettings:
    """The relearning attack's default settings (steps, learning rate, seed, ...)."""
    return RelearnSettings()


def metric_rows(result: dict) -> list[list]:
    """[label, original, edited, change] for every metric of an evaluation result
    (``{"before": ..., "after": ...}``): the same rows as the report's table."""
    return _metric_rows(result.get("before", {}), result.get("after", {}))


def cache_folder() -> Path:
    """Where unlearnviz keeps converted models, fixtures and, by default, exports
    (``UNLEARNVIZ_CACHE``)."""
    return cache_dir()
