"""The picture of a PruneReport: the fraction of channels every group kept, one row per group."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["check_plot_path", "plot_widths", "short_names"]

NAME_CHARS = 40  # longer layer names keep their end


def check_plot_path(path) -> Path:
    """The path as a Path, once matplotlib is importable and the path can take an image; else ImportError
    or ValueError naming the problem (nothing is drawn or written)."""
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise ImportError("plot: matplotlib is not installed (pip install matplotlib)") from None
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"plot: path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise ValueError(f"plot: {str(path)!r} is a folder; give a file name such as widths.png")
    if not folder.is_dir():
        raise ValueError(f"plot: the folder {str(folder)!r} of {str(path)!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"plot: the folder {str(folder)!r} is not writable")
    kinds = FigureCanvasBase.get_supported_filetypes()
    suffix = path.suffix.lower().lstrip(".")
    if suffix and suffix not in kinds:
        raise ValueError(f"plot: cannot write a {path.suffix!r} image; use one of {', '.join('.' + k for k in sorted(kinds))}")
    return path


def short_names(origins: list[str]) -> tuple[list[str], str]:
    """Each group's label: the layer that made its channels ("conv2d layer1.0.conv1" -> "layer1.0.conv1",
    "... heads" for attention heads, "... head dims" for their dims), less the dotted prefix all share
    (returned too); long names keep their end."""
    names = [o.rsplit(" ", 1)[-1] for o in origins]
    parts = [n.split(".") for n in names]
    common = 0
    while len(parts) > 1 and all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
        common += 1
    prefix = ".".join(parts[0][:common]) + "." if common else ""
    out = []
    for o, n in zip(origins, names):
        n = n[len(prefix):] + (" head dims" if " dims of each of " in o else " heads" if "heads" in o else "")
        out.append(n if len(n) <= NAME_CHARS else "\u2026" + n[-(NAME_CHARS - 1):])
    return out, prefix


def _latency_title(report) -> str:
    """The title's line on measured speed ("" when the report has none)."""
    if report.speedup is None:
        return ""
    before, after = report.latency_before, report.latency_after
    return (f"\nlatency {before.ms:.3g} ms \u2192 {after.ms:.3g} ms (speed-up {report.speedup:.2f}x; "
            f"{after.setting})")


def plot_widths(report, path) -> None:
    """Write an image (PNG unless the suffix says otherwise) of the fraction of its channels every group
    kept, labelled with the group's first layer and "before -> after"; MACs, params and the measured latency
    (when the report has it) in the title.
    `report`: a PruneReport (report.py, which calls this; not imported here, so the two stay acyclic)."""
    path = check_plot_path(path)
    from matplotlib.figure import Figure  # no pyplot: the user's backend and figures are left alone

    rows = report.widths
    n = max(len(rows), 1)
    fig = Figure(figsize=(8.0, 1.8 + 0.19 * n), layout="constrained")
    ax = fig.add_subplot()
    y = range(len(rows))
    kept = [a / b if b else 1.0 for _, b, a in rows]
    ax.barh(y, [1.0] * len(rows), color="#dddddd", height=0.8, label="removed")
    ax.barh(y, kept, color=["#1f77b4" if a < b else "#9ecae1" for _, b, a in rows], height=0.8,
            label="kept (pale: group not pruned)")
    for i, (_, b, a) in enumerate(rows):
        ax.text(1.01, i, f"{b} \u2192 {a}", va="center", fontsize=7, transform=ax.get_yaxis_transform())
    channels = sum(b for _, b, _ in rows)
    if channels:
        share = sum(a for _, _, a in rows) / channels
        ax.axvline(share, color="#d62728", linestyle="--", linewidth=1, label=f"all channels: {share:.1%} kept")
    labels, prefix = short_names([o for o, _, _ in rows])
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # forward order, top to bottom
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of the group's channels kept (right: channels before \u2192 after)")
    ax.xaxis.set_ticks_position("both")
    ax.tick_params(axis="x", labeltop=True, labelsize=8)
    ax.set_ylabel(f"{len(rows)} prunable groups, each named by its first layer"
                  + (f" (under {prefix[:-1]})" if prefix else ""), fontsize=8)
    pct = lambda a, b: f"{a / b:.1%}" if b else "-"  # noqa: E731
    ax.set_title(f"{report.method}, {report.allocation}\n"
                 f"MACs {report.macs_before / 1e9:.3g} G \u2192 {report.macs_after / 1e9:.3g} G "
                 f"({pct(report.macs_after, report.macs_before)} kept),   params {report.params_before / 1e6:.3g} M "
                 f"\u2192 {report.params_after / 1e6:.3g} M ({pct(report.params_after, report.params_before)} kept)"
                 + _latency_title(report), fontsize=9)
    fig.legend(fontsize=7, loc="outside lower center", ncol=3, frameon=False)
    fig.savefig(path, dpi=110)
