"""`measure_latency`: how long one forward pass of a model takes, measured, on a chosen backend and device."""

from __future__ import annotations

import copy
import inspect
import math
import numbers
import statistics
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

from .export import eval_mode, export_onnx, require
from .graph import model_inputs
from .threads import user_threads

__all__ = ["BACKENDS", "MEASURE_KEYS", "Latency", "check_backend", "measure_latency", "measure_options"]

BACKENDS = ("eager", "compile", "onnxruntime")


@dataclass(frozen=True)
class Latency:
    """One measured forward pass: the median and the spread (interquartile range) over `runs` timed runs, in
    seconds, with how it was measured. `compile_s`: seconds spent compiling (torch.compile) or exporting and
    loading (onnxruntime) before the first timed run, not counted in the median; None for eager."""

    median: float
    spread: float
    runs: int
    backend: str
    device: str
    batch_size: Optional[int]  # the inputs' batch dim as run; None when no input has one
    threads: int  # CPU threads (torch's intra-op threads, or onnxruntime's)
    compile_s: Optional[float] = None

    @property
    def ms(self) -> float:
        """The median in milliseconds."""
        return self.median * 1e3

    @property
    def setting(self) -> str:
        """How it was run, in words: "eager on cpu, batch 8, 4 threads"."""
        batch = f", batch {self.batch_size}" if self.batch_size is not None else ""
        return f"{self.backend} on {self.device}{batch}, {self.threads} thread{'s' * (self.threads != 1)}"

    def __str__(self) -> str:
        setup = "export" if self.backend == "onnxruntime" else "compile"
        extra = f", {setup} {self.compile_s:.1f} s" if self.compile_s is not None else ""
        return f"{self.ms:.3f} ms ({self.setting}; median of {self.runs} runs, IQR {self.spread * 1e3:.3f} ms{extra})"


def _device(device: Any, model: nn.Module) -> torch.device:
    """The device to run on: `device`, or the model's (its first parameter or buffer's; CPU if none); ValueError
    when it is not there."""
    if device is None:
        first = next(iter(model.parameters()), None)
        if first is None:
            first = next(iter(model.buffers()), None)
        return first.device if first is not None else torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"measure_latency: {device!r} is not a device: {e}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"measure_latency: device {str(device)!r} is not available: torch.cuda.is_available() "
                             "is False on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"measure_latency: device {str(device)!r} is not available: this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    elif device.type != "cpu":
        try:
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError) as e:
            raise ValueError(f"measure_latency: device {str(device)!r} is not available: {e}") from None
    return device


def _int(name: str, value: Any, low: int = 1) -> Optional[int]:
    """`value` as an int >= `low` (None stays None), or ValueError naming `name`."""
    if value is None:
        return None
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise ValueError(f"measure_latency: {name} must be an int >= {low}, got {value!r}")
    return int(value)


def batched(example_inputs: Any, batch_size: Optional[int]) -> Any:
    """`example_inputs` with every tensor's first dim (the batch) made `batch_size` long, by repeating its
    rows (cut to length); unchanged for None. 0-d tensors are left as they are."""
    if batch_size is None:
        return example_inputs

    def grow(t):
        if not isinstance(t, torch.Tensor) or t.dim() == 0 or t.shape[0] == batch_size:
            return t
        if t.shape[0] == 0:
            raise ValueError("measure_latency: batch_size cannot grow an input whose batch dim is empty")
        reps = math.ceil(batch_size / t.shape[0])
        return t.repeat(reps, *([1] * (t.dim() - 1)))[:batch_size]

    return tree_map(grow, example_inputs)


def _batch_of(example_inputs: Any) -> Optional[int]:
    sizes = [t.shape[0] for t in tree_flatten(example_inputs)[0] if isinstance(t, torch.Tensor) and t.dim()]
    return sizes[0] if sizes else None


@contextmanager
def cpu_threads(threads: Optional[int]) -> Iterator[int]:
    """torch's intra-op threads set to `threads` (None: as they are) inside the block, restored after; yields
    the number in use."""
    before = torch.get_num_threads()
    if threads is not None and threads != before:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


class _Clock:
    """Seconds one call of `fn` takes: CUDA events on a CUDA device (the host waits for the GPU at each
    end), the host clock on CPU."""

    def __init__(self, device: torch.device, events: bool):
        self.cuda = device.type == "cuda"
        self.events = events and self.cuda

    def __call__(self, fn: Callable[[], Any]) -> float:
        if self.events:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        if self.cuda:  # work on streams the events would not see (onnxruntime's): wait for the whole device
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0


def _timed_runs(fn: Callable[[], Any], clock: _Clock, warmup: int, min_runs: int, min_time: float,
                max_time: float) -> list[float]:
    """Seconds per run of `fn`, after `warmup` untimed runs: at least `min_runs` runs and `min_time` seconds,
    then on until the median is stable (its standard error under 1% of it) or `max_time` seconds have passed."""
    for _ in range(warmup):
        clock(fn)
    times: list[float] = []
    while True:
        times.append(clock(fn))
        total = sum(times)
        if len(times) < min_runs or total < min_time:
            continue
        if total >= max_time or _stable(times):
            return times


def _stable(times: list[float]) -> bool:
    """The median's standard error (from the IQR, as for a normal spread) is under 1% of the median."""
    if len(times) < 2:
        return False
    q1, med, q3 = statistics.quantiles(times, n=4)
    return 1.2533 * (q3 - q1) / 1.349 / math.sqrt(len(times)) < 0.01 * med


def _spread(times: list[float]) -> float:
    if len(times) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(times, n=4)
    return q3 - q1


def _ort_session(model: nn.Module, inputs: Any, device: torch.device, threads: Optional[int]):
    """(a function running the model's ONNX export once in onnxruntime, the intra-op threads it uses)."""
    ort = require("onnxruntime", "measure_latency(backend='onnxruntime')")
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ValueError("measure_latency: onnxruntime has no CUDA provider here (providers: "
                             f"{', '.join(ort.get_available_providers())}); pip install onnxruntime-gpu, or "
                             "measure on device='cpu'")
        providers = [("CUDAExecutionProvider", {"device_id": device.index or 0})]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    with tempfile.TemporaryDirectory() as folder:
        path = export_onnx(model, inputs, Path(folder) / "model.onnx")
        session = ort.InferenceSession(str(path), options, providers=providers)
    tensors = [t for t in tree_flatten(inputs)[0] if isinstance(t, torch.Tensor)]
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(tensors):
        raise ValueError(f"measure_latency: the ONNX model takes {len(names)} inputs but the example inputs hold "
                         f"{len(tensors)} tensors")
    binding = session.io_binding()
    for name, t in zip(names, tensors):
        t = t.contiguous()
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(t.cpu().numpy(), device.type,
                                                                           device.index or 0))
    for out in session.get_outputs():
        binding.bind_output(out.name, device.type, device.index or 0)
    return (lambda: session.run_with_iobinding(binding)), options.intra_op_num_threads


def _runner(model: nn.Module, inputs: Any, backend: str) -> tuple[Callable[[], Any], Optional[float]]:
    """(a function running the model once on `inputs` with the backend, seconds it took to get ready)."""
    args, kwargs = model_inputs(inputs)
    if backend == "eager":
        return (lambda: model(*args, **kwargs)), None
    compiled = torch.compile(model)
    t0 = time.perf_counter()
    compiled(*args, **kwargs)  # the compilation, timed apart
    if any(isinstance(t, torch.Tensor) and t.is_cuda for t in tree_flatten(inputs)[0]):
        torch.cuda.synchronize()
    return (lambda: compiled(*args, **kwargs)), time.perf_counter() - t0


def _on(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` itself when it is on `device` already, else a copy moved there (the model is never moved)."""
    here = {t.device for t in [*model.parameters(), *model.buffers()]}
    return model if here <= {device} else copy.deepcopy(model).to(device)


def measure_latency(model: nn.Module, example_inputs: Any, backend: str = "eager", device: Any = None,
                    batch_size: Optional[int] = None, threads: Optional[int] = None, min_time: float = 1.0, *,
                    min_runs: int = 10, warmup: int = 3, max_time: Optional[float] = None) -> Latency:
    """The latency of one forward pass of `model` (eval mode, no grad) on `example_inputs` (a tensor, a
    tuple or list of positional inputs, or a dict of keyword inputs), measured.

    backend: "eager" (the module as it is), "compile" (`torch.compile`; the compilation is timed apart, in
        `compile_s`) or "onnxruntime" (the model exported with `export_onnx`, run in an onnxruntime session:
        CPU provider, or CUDA provider on a CUDA device; export and load time in `compile_s`).
    device: where to run (default: the model's device); a model elsewhere is copied there, never moved.
    batch_size: every input's first dim repeated (or cut) to this length; None: as given.
    threads: CPU intra-op threads during the measurement (torch's, or onnxruntime's), restored after; None:
        torch's current number as the user set it (not the lower count pyprune_fast's own work runs on under
        load: threads.user_threads).
    Timing: `warmup` untimed runs, then timed runs (CUDA events on a GPU, after which the host waits) until
    there are `min_runs` of them, `min_time` seconds have passed and the median is stable (standard error
    under 1%), or `max_time` (default 3 * min_time) seconds have passed.
    The model is left as it was (parameters, device, train/eval mode). A backend that is not installed
    raises ImportError naming the pip package; a device that is not there, or a bad option, ValueError.
    """
    check_backend(backend, "measure_latency: unknown backend")
    if not isinstance(model, nn.Module):
        raise TypeError(f"measure_latency: model must be an nn.Module, got {type(model).__name__}")
    batch_size, threads = _int("batch_size", batch_size), _int("threads", threads) or user_threads()
    min_runs, warmup = _int("min_runs", min_runs), _int("warmup", warmup, low=0)
    for name, value in (("min_time", min_time), ("max_time", max_time)):
        if value is not None and (not isinstance(value, numbers.Real) or isinstance(value, bool) or not value >= 0):
            raise ValueError(f"measure_latency: {name} must be a number of seconds >= 0, got {value!r}")
    max_time = 3 * min_time if max_time is None else max(max_time, min_time)
    if backend == "onnxruntime":
        require("onnxruntime", "measure_latency(backend='onnxruntime')")
    device = _device(device, model)
    model_inputs(example_inputs)  # TypeError for inputs that are none of the kinds
    inputs = tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, batched(example_inputs, batch_size))
    target = _on(model, device)
    with eval_mode(target), torch.no_grad(), cpu_threads(threads) as used:
        if backend == "onnxruntime":
            t0 = time.perf_counter()
            fn, used = _ort_session(target, inputs, device, threads)
            ready = time.perf_counter() - t0
        else:
            fn, ready = _runner(target, inputs, backend)
        times = _timed_runs(fn, _Clock(device, events=backend != "onnxruntime"), warmup, min_runs, min_time, max_time)
    return Latency(median=statistics.median(times), spread=_spread(times), runs=len(times), backend=backend,
                   device=str(device), batch_size=_batch_of(inputs), threads=used, compile_s=ready)


MEASURE_KEYS = tuple(inspect.signature(measure_latency).parameters)[2:]  # backend, device, batch_size, ...


def measure_options(measure: Any, who: str = "prune") -> Optional[dict]:
    """A `measure=` option as keyword arguments of `measure_latency` (None: nothing to measure): a backend
    name ("eager"), or a dict of those keyword arguments ({"backend": "onnxruntime", "threads": 4}); ValueError
    naming `who` for anything else. The values themselves are checked by `measure_latency`."""
    if measure is None:
        return None
    if isinstance(measure, str):
        measure = {"backend": measure}
    if not isinstance(measure, dict) or not set(measure) <= set(MEASURE_KEYS):
        raise ValueError(f"{who}: measure must be None, a backend ({', '.join(BACKENDS)}) or a dict of "
                         f"measure_latency's keyword arguments ({', '.join(MEASURE_KEYS)}); got {measure!r}")
    check_backend(measure.get("backend", "eager"), f"{who}: measure: unknown backend", f"{who}(measure='onnxruntime')")
    return dict(measure)


def check_backend(backend: Any, unknown: str, caller: Optional[str] = None) -> None:
    """ValueError (`unknown` and the name) unless `backend` is one of BACKENDS; where `caller` is given,
    ImportError naming the pip package if it is onnxruntime and that is not installed: before any work."""
    if backend not in BACKENDS:
        raise ValueError(f"{unknown} {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "onnxruntime" and caller is not None:
        require("onnxruntime", caller)
