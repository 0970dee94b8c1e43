"""Benchmarks: every hot path against the naive way, side by side in one run (``make bench``)."""
