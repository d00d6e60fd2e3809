"""Helpers for checking pruning on real models (used by the tests and benchmarks/coverage.py)."""

from .graph import dead_channels_are_exact, kill_channels

__all__ = ["kill_channels", "dead_channels_are_exact"]
