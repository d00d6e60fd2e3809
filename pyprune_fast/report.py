"""PruneReport: what one prune did, as numbers, a table (`str`) and a picture (`plot`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

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
    group counts, seconds per phase and the allocation in words. `print(report)` gives a table."""

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

    def __str__(self) -> str:
        pct = lambda a, b: f"{100 * a / b:.1f}%" if b else "-"  # noqa: E731
        lines = [
            f"pyprune_fast.prune(method={self.method!r}, {self.allocation})",
            f"  MACs   {self.macs_before / 1e9:8.3f} G -> {self.macs_after / 1e9:8.3f} G  ({pct(self.macs_after, self.macs_before)} kept)",
            f"  params {self.params_before / 1e6:8.3f} M -> {self.params_after / 1e6:8.3f} M  ({pct(self.params_after, self.params_before)} kept)",
            f"  groups {self.groups}, prunable {self.prunable_groups}, pruned {sum(b != a for _, b, a in self.widths)}",
            "  time   " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in self.timings.items())
            + f" (total {sum(self.timings.values()) * 1e3:.1f} ms)",
            "  widths (group: before -> after):",
        ]
        lines += [f"    {origin[:60]:<60} {b:>5} -> {a:<5}" for origin, b, a in self.widths]
        return "\n".join(lines)

    def plot(self, path) -> None:
        """Write an image (PNG unless `path` ends otherwise) of the fraction of channels every group kept,
        one row per group, named by its first layer; MACs and params in the title. A missing matplotlib
        or a path that cannot be written raises ImportError/ValueError before anything is drawn."""
        plot_widths(self, path)
