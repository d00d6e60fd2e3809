"""pyprune_fast: channel pruning for PyTorch models, with compiled CPU and CUDA ops."""

from __future__ import annotations

from typing import Any

from . import _extension
from ._version import __version__

_BUILD_INFO = _extension.load()

from . import ops  # noqa: E402  (registers the fake kernels of the ops just loaded)
from .export import export_onnx  # noqa: E402
from .flops import Profile, profile  # noqa: E402
from .graph import DependencyGraph, Group, Member, register_rule  # noqa: E402
from .latency import Latency, measure_latency  # noqa: E402
from .plan import Plan  # noqa: E402
from .pruning import Decision, PruneReport, commit, decide, prune  # noqa: E402
from .schedules import ASCPSchedule, CUPSS, FRSSchedule, PlayAndPrune, rewrap  # noqa: E402
from .serialization import load_pruned, save_pruned  # noqa: E402
from .surgery import apply  # noqa: E402

ASCP, FRS = ASCPSchedule, FRSSchedule  # the schedules under their papers' names (ppf.methods has the criteria)

__all__ = [
    "build_info", "ops", "DependencyGraph", "Group", "Member", "Plan", "apply", "profile", "Profile", "prune",
    "PruneReport", "save_pruned", "load_pruned", "decide", "commit", "Decision", "CUPSS", "ASCP", "FRS",
    "PlayAndPrune", "rewrap", "register_rule", "measure_latency", "Latency", "export_onnx",
]


def build_info() -> dict[str, Any]:
    """How the extension was built: `torch` and `cuda` (None for a CPU-only build) versions it was built
    against, `with_cuda` and `cuda_reason` (why the build did or did not compile CUDA code), `openmp`,
    `cuda_arch_list` and `debug`."""
    return dict(_BUILD_INFO)
