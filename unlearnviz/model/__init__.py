"""Model loading, architecture adapters and per-call edit routing."""

from unlearnviz.model.adapter import ArchitectureAdapter
from unlearnviz.model.loading import DEFAULT_MODEL, LoadedModel, LoadOptions, load_model, wrap_model
from unlearnviz.model.routing import Router, RoutingPlan, StopForward

__all__ = ["ArchitectureAdapter", "DEFAULT_MODEL", "LoadOptions", "LoadedModel", "Router",
           "RoutingPlan", "StopForward", "load_model", "wrap_model"]
