"""Pruning while training: schedule objects driven from the user's own training loop (see base.py)."""

from .ascp import ASCPSchedule
from .base import Schedule, ScheduleReport, rewrap, unwrap
from .cupss import CUPSS
from .frs import FRSSchedule
from .play_and_prune import PlayAndPrune

__all__ = ["ASCPSchedule", "CUPSS", "FRSSchedule", "PlayAndPrune", "Schedule", "ScheduleReport", "rewrap", "unwrap"]
