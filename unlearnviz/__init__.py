"""unlearnviz: see what representation-level unlearning did to a language model."""

__version__ = "0.1.0"
