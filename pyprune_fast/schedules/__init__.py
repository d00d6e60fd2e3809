"""Pruning while training: schedule objects driven from the user's own training loop (see base.py)."""

from .ascp import ASCP
from .base import Schedule, ScheduleReport, rewrap, unwrap
from .cupss import CUPSS
from .frs import FRS
from .play_and_prune import PlayAndPrune

__all__ = ["ASCP", "CUPSS", "FRS", "PlayAndPrune", "Schedule", "ScheduleReport", "rewrap", "unwrap"]
