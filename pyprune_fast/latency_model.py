"""Widths for a latency target (`prune(..., target_latency=)`): a latency model measured on the device,
solved on the method's own ladder, the result measured and the solve corrected by it.

The model is built from real pruned copies, measured with `measure_latency` on the chosen backend, device
and batch size, each next to the dense model (its latency kept is a ratio measured side by side): uniform
thinnings (every group keeps 3/4, 1/2, 1/4 of its channels, and the fewest allowed). Between these points
the latency kept is interpolated linearly in the MACs kept (`MacsModel`), so any widths on the ladder get
a prediction. The ladder is bisected on the prediction; the copy pruned to the rung found is measured, and
while it misses the target by more than the tolerance its point joins the model and the ladder is bisected
again (a secant step on measured points). The rung whose measurement was nearest wins. Only copies are
pruned here: the user's model is pruned once, after.

The uniform points do not depend on the method: they are cached on disk as JSON per device, backend and
model (`~/.cache/pyprune_fast/latency/<device>-<backend>-<hash>.json`, or the `cache` folder given; False:
no cache). A cached model still measures its candidates.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import numbers
import os
import platform
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten

from .allocation import Ladder, bisect
from .latency import MEASURE_KEYS, _device, check_backend, measure_latency
from .methods.base import lowest
from .plan import Plan
from .surgery import apply

__all__ = ["LatencyModel", "LatencyOptions", "latency_options", "solve_latency", "auto_round_to"]

UNIFORM_KEEP = (0.75, 0.5, 0.25)  # the uniform thinnings measured, besides the dense model and the fewest channels
ROUNDS = 4  # candidates measured at most


@dataclass(frozen=True)
class LatencyOptions:
    """How a latency target is measured: `measure` (measure_latency's keyword arguments), the relative
    tolerance on the measured latency, and the cache folder (None: the default one, False: none)."""

    measure: dict = field(default_factory=dict)
    tolerance: float = 0.05
    cache: Any = None

    def device(self, model: torch.nn.Module) -> torch.device:
        """The device measured on: the one given, else the model's."""
        return _device(self.measure.get("device"), model)


def latency_options(value: Any) -> LatencyOptions:
    """`prune`'s `latency=` option (None or a dict: backend, device, batch_size, threads, min_time as for
    `measure_latency`, tolerance, cache) checked, or ValueError/TypeError naming the problem; the backend's
    package and the device are checked here, before any work."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise TypeError(f"prune: latency must be a dict of measure_latency options, got {type(value).__name__}")
    valid = (*MEASURE_KEYS, "tolerance", "cache")
    unknown = sorted(set(value) - set(valid))
    if unknown:
        raise ValueError(f"prune: unknown latency option {unknown[0]!r}; valid: {', '.join(valid)}")
    tolerance = value.get("tolerance", 0.05)
    if not isinstance(tolerance, numbers.Real) or isinstance(tolerance, bool) or not 0 < tolerance < 1:
        raise ValueError(f"prune: latency tolerance must be in (0, 1), got {tolerance!r}")
    cache = value.get("cache")
    if not (cache is None or cache is False or isinstance(cache, (str, os.PathLike))):
        raise TypeError(f"prune: latency cache must be a folder, None (the default folder) or False, got {cache!r}")
    measure = {k: value[k] for k in MEASURE_KEYS if value.get(k) is not None}
    _check_measure(measure)
    return LatencyOptions(measure, float(tolerance), cache)


def _check_measure(measure: dict) -> None:
    """The backend known and installed, the device there: measure_latency's own checks, before any work."""
    check_backend(measure.get("backend", "eager"), "prune: unknown latency backend",
                  "prune(latency={'backend': 'onnxruntime'})")
    if measure.get("device") is not None:
        _device(measure["device"], torch.nn.Module())


def auto_round_to(device: torch.device) -> int:
    """round_to="auto": multiples of 8 on CUDA (tensor cores), of the vector width in floats on a CPU
    (16 with AVX-512, 8 with AVX2, else 4)."""
    if device.type == "cuda":
        return 8
    capability = torch.backends.cpu.get_cpu_capability().lower()
    return 16 if "avx512" in capability else 8 if "avx2" in capability else 4


class LatencyModel:
    """Latency kept (a fraction of the dense model's) as a function of the widths: measured points (MACs kept,
    latency kept), interpolated linearly in the MACs (the nearest segment's slope beyond them). A point added
    replaces those it contradicts (more MACs but faster, or fewer but slower), so the model stays
    non-decreasing in the MACs and bisection on the ladder holds."""

    def __init__(self, macs, points: list[tuple[float, float]]):
        self.macs = macs
        self.points: list[tuple[float, float]] = []
        for p in points:
            self.add(*p)

    def add(self, macs: float, latency: float) -> None:
        keep = [(m, s) for m, s in self.points if (m < macs and s <= latency) or (m > macs and s >= latency)]
        self.points = sorted(keep + [(float(macs), float(latency))])

    def at(self, macs: float) -> float:
        pts = self.points
        if len(pts) == 1:
            return pts[0][1] * macs / pts[0][0]
        i = min(max(1, sum(m <= macs for m, _ in pts)), len(pts) - 1)
        (m0, s0), (m1, s1) = pts[i - 1], pts[i]
        return s0 + (s1 - s0) * (macs - m0) / (m1 - m0)

    def __call__(self, widths: Tensor) -> float:
        return self.at(self.macs(widths) / self.macs.total)


@dataclass
class LatencyResult:
    """What solve_latency found: the widths, their rung, and the numbers for the report (latencies as
    fractions of the dense model's)."""

    widths: Tensor
    rung: int
    dense: float  # seconds, the median of its measurements
    predicted: float
    measured: float
    build_s: float  # building the latency model (copies and their measurements), seconds
    cached: bool
    candidates: int  # rungs measured
    where: str  # backend, device, batch size

    def __str__(self) -> str:
        return (f"latency {self.measured:.3f} measured, {self.predicted:.3f} predicted, of {self.dense * 1e3:.3g} ms "
                f"on {self.where}; latency model {self.build_s:.1f} s" + (" (cached)" if self.cached else "")
                + f", {self.candidates} candidate{'s' * (self.candidates != 1)} measured")


class _Probe:
    """The latency kept by real pruned copies of the graph's model at given widths, measured on the backend.
    Each copy is measured next to the dense model (before and after it), and its latency divided by their
    mean: a ratio measured side by side holds when the machine's load drifts."""

    def __init__(self, crit, options: LatencyOptions):
        self.graph, self.groups, self.options = crit.graph, crit.groups, options
        self.dense = [self._run(self.graph.model)]  # seconds, every measurement
        self.measured: dict[tuple, float] = {}

    def __call__(self, widths: Tensor, again: bool = False) -> float:
        """The latency kept at `widths`, measured once (again: measured anew, the lower of the two kept)."""
        key = tuple(widths.tolist())
        if key not in self.measured or again:
            pruned = self._run(self.pruned(widths))
            self.dense.append(self._run(self.graph.model))
            self.measured[key] = min(pruned / (sum(self.dense[-2:]) / 2), self.measured.get(key, math.inf))
        return self.measured[key]

    def pruned(self, widths: Tensor) -> torch.nn.Module:
        """A copy of the model with group i cut to widths[i] channels (which ones does not matter here)."""
        # the model comes along (the user's is not touched); the recorded ops' functions are shared, not copied
        # (some, as a tensor attribute's getter, cannot be)
        graph = copy.deepcopy(self.graph, {id(n.func): n.func for n in self.graph.trace.nodes})
        plan = Plan(graph)
        for g, w in zip(self.groups, widths.tolist()):
            if w < g.channels:
                twin = graph.groups[g.index]
                plan.remove(twin, lowest(twin, torch.zeros(g.channels), g.channels - w))
        apply(plan)
        return graph.model

    def _run(self, model: torch.nn.Module) -> float:
        if self.options.measure.get("backend") == "compile":
            # copies of one class share their forward's code: past torch._dynamo's recompile limit (8) a compiled
            # copy would run eager, silently, and the guards of every earlier copy would be timed with it
            torch._dynamo.reset()
        return float(measure_latency(model, self.graph.example_inputs, **self.options.measure).median)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.machine()
        try:
            name = next(line.split(":", 1)[1] for line in Path("/proc/cpuinfo").read_text().splitlines()
                        if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return re.sub(r"[^A-Za-z0-9.]+", "_", f"{device.type} {name}".strip()).strip("_")[:60]


def _cache_file(crit, options: LatencyOptions, device: str, widths: list[Tensor]) -> Optional[Path]:
    """Where the uniform points of this model, widths, device and backend are kept; None: no cache."""
    if options.cache is False:
        return None
    folder = Path(options.cache) if options.cache is not None else Path.home() / ".cache" / "pyprune_fast" / "latency"
    inputs = tree_flatten(crit.graph.example_inputs)[0]
    shapes = [(tuple(t.shape), str(t.dtype)) for t in inputs if isinstance(t, Tensor)]
    measure = sorted(options.measure.items(), key=str)
    key = json.dumps([repr(crit.graph.model), shapes, [w.tolist() for w in widths], measure, torch.__version__,
                      torch.get_num_threads()], default=str)
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return folder / f"{device}-{options.measure.get('backend', 'eager')}-{digest}.json"


def _uniform_points(crit, probe: _Probe, macs, ladder: Ladder, options: LatencyOptions,
                    device: str) -> tuple[list[tuple[float, float]], bool]:
    """[(MACs kept, latency kept)] of the uniform thinnings and the last rung (last), and whether they came
    from the cache."""
    widths = [crit.limits((crit.channels * k).round().long().clamp_min(1), crit.channels) for k in UNIFORM_KEEP]
    widths.append(ladder.widths(ladder.steps - 1))
    path = _cache_file(crit, options, device, widths)
    if path is not None and path.is_file():
        try:
            return [(float(m), float(s)) for m, s in json.loads(path.read_text())["points"]], True
        except (ValueError, KeyError, TypeError):
            pass  # a damaged file is measured again and written anew
    points = [(macs(w) / macs.total, probe(w)) for w in widths]
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"points": points, "device": device, "dense_s": probe.dense[0],
                                        "measure": {k: str(v) for k, v in options.measure.items()}}))
        except OSError:
            pass  # a folder that cannot be written: no cache
    return points, False


def solve_latency(crit, ladder: Ladder, macs, value: float, options: LatencyOptions) -> LatencyResult:
    """The rung of `ladder` whose measured latency is nearest `value` times the dense model's; ValueError
    when even the last rung is slower than that, with the smallest reachable value measured."""
    t0 = time.perf_counter()
    probe = _Probe(crit, options)
    device = options.device(crit.graph.model)
    points, cached = _uniform_points(crit, probe, macs, ladder, options, _device_name(device))
    model = LatencyModel(macs, [(1.0, 1.0)] + points)
    build_s = time.perf_counter() - t0
    fewest = points[-1][1]
    if value < fewest:  # measured once more before refusing: one slow spell of the machine is not a verdict
        fewest = probe(ladder.widths(ladder.steps - 1), again=True)
        model.add(points[-1][0], fewest)
    if value < fewest:
        raise ValueError(f"prune: target_latency={value} cannot be reached with method {crit.name!r}: keeping the "
                         f"fewest channels allowed in every group measured {fewest:.3f} of the dense model's latency "
                         f"({statistics.median(probe.dense) * 1e3:.3g} ms); the smallest reachable target_latency is "
                         f"{math.ceil(fewest * 1e3) / 1e3}")
    tried: dict[int, tuple[float, float]] = {}  # rung -> (predicted, measured)
    for _ in range(ROUNDS):
        rung = bisect(ladder, model, value)
        if rung in tried:
            break
        w = ladder.widths(rung)
        tried[rung] = (model(w), probe(w))
        if abs(tried[rung][1] - value) <= options.tolerance * value:
            break
        model.add(macs(w) / macs.total, tried[rung][1])
    rung = min(tried, key=lambda r: abs(tried[r][1] - value))
    m = options.measure
    where = f"{m.get('backend', 'eager')} {device}" + (f" batch {m['batch_size']}" if m.get("batch_size") else "")
    return LatencyResult(ladder.widths(rung), rung, statistics.median(probe.dense), *tried[rung], build_s, cached,
                         len(tried), where)
