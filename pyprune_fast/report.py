"""PruneReport: what one prune did, as numbers, a table (`str`) and a picture (`plot`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Optional

from .latency import Latency
from .plotting import plot_widths

__all__ = ["GroupWidth", "PruneReport"]


class GroupWidth(NamedTuple):
    """One prunable group's channels before and after, named by the op that made them."""

    origin: str
    before: int
    after: int


@dataclass(kw_only=True)
class PruneReport:
    """What `prune` (or `commit`) did: MACs and parameters before and after, every prunable group's width,
    group counts, seconds per phase, the allocation in words, and the measured latency before and after
    when `measure=` asked for it (`speedup`). `print(report)` gives a table."""

    method: str
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    widths: list[GroupWidth] = field(default_factory=list)
    groups: int = 0
    prunable_groups: int = 0
    timings: dict[str, float] = field(default_factory=dict)  # seconds: trace, scores, clustering, allocation, surgery
    allocation: str = ""  # e.g. "target_flops=0.5 (threshold 0.731)"
    latency_before: Optional[Latency] = None  # measured (prune(..., measure=backend)); None when not asked
    latency_after: Optional[Latency] = None

    @property
    def speedup(self) -> Optional[float]:
        """Measured latency before / after (2.0: twice as fast), or None when not measured."""
        if self.latency_before is None or self.latency_after is None:
            return None
        return self.latency_before.median / self.latency_after.median

    def __str__(self) -> str:
        pct = lambda a, b: f"{100 * a / b:.1f}%" if b else "-"  # noqa: E731
        lines = [
            f"pyprune_fast.prune(method={self.method!r}, {self.allocation})",
            f"  MACs   {self.macs_before / 1e9:8.3f} G -> {self.macs_after / 1e9:8.3f} G  ({pct(self.macs_after, self.macs_before)} kept)",
            f"  params {self.params_before / 1e6:8.3f} M -> {self.params_after / 1e6:8.3f} M  ({pct(self.params_after, self.params_before)} kept)",
            *self._latency_lines(),
            f"  groups {self.groups}, prunable {self.prunable_groups}, pruned {sum(b != a for _, b, a in self.widths)}",
            "  time   " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in self.timings.items())
            + f" (total {sum(self.timings.values()) * 1e3:.1f} ms)",
            "  widths (group: before -> after):",
        ]
        lines += [f"    {origin[:60]:<60} {b:>5} -> {a:<5}" for origin, b, a in self.widths]
        return "\n".join(lines)

    def _latency_lines(self) -> list[str]:
        before, after = self.latency_before, self.latency_after
        if before is None or after is None:
            return []
        return [f"  latency {before.ms:7.3f} ms -> {after.ms:8.3f} ms  (speed-up {self.speedup:.2f}x; {after.setting}, "
                f"medians of {before.runs} and {after.runs} runs)"]

    def plot(self, path) -> None:
        """Write an image (PNG unless `path` ends otherwise) of the fraction of channels every group kept,
        one row per group, named by its first layer; MACs, params and the measured latency (when there is
        one) in the title. A missing matplotlib or a path that cannot be written raises ImportError/ValueError
        before anything is drawn."""
        plot_widths(self, path)
