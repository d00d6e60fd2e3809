"""What the benchmark scripts share: devices, timing, memory sampling, the table, the CSV and the plot."""

from __future__ import annotations

import argparse
import csv
import ctypes
import os
import sys
import threading
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # the checkout's pyprune_fast, also when a script is loaded by its path
    sys.path.insert(0, ROOT)


# --------------------------------------------------------------------------------------------------
# Devices and models


def check_device(parser: argparse.ArgumentParser, device: str) -> None:
    """Exit through `parser` (status 2) when `device` is CUDA and no GPU is visible."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible")


def sync(device: str) -> None:
    """Wait for the device's queued kernels (a no-op on the CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def conv_weights(model_name: str, device: str) -> list[torch.Tensor]:
    """The (out, in/groups, kh, kw) weight of every conv layer of torchvision's `model_name` (random init)."""
    import torchvision

    model = getattr(torchvision.models, model_name)(weights=None)
    return [m.weight.detach().to(device) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


# --------------------------------------------------------------------------------------------------
# Timing


def timed(fn: Callable[[], Any], device: str, reps: int = 1) -> tuple[float, Any]:
    """Best of `reps` wall times in seconds (synchronised on CUDA) and the last result."""
    best, out = float("inf"), None
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best, out


def median_ms(fn: Callable[[], Any], min_run_time: float) -> float:
    """Median milliseconds of `fn()` by torch.utils.benchmark, after one warm-up call."""
    import torch.utils.benchmark as tbench

    fn()  # warm-up (CUDA context, allocator, lazy init)
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


# --------------------------------------------------------------------------------------------------
# Memory

MMAP_THRESHOLD = 64 * 1024  # MALLOC_MMAP_THRESHOLD_ for a child that measures RSS: big tensors are own mappings


class RssSampler:
    """Peak resident set size (bytes) seen by a 1 ms polling thread and by explicit `sample()` calls."""

    PAGE = os.sysconf("SC_PAGE_SIZE")

    def __init__(self, interval: float = 0.001):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._f = open("/proc/self/statm", "rb", buffering=0)
        self._lock = threading.Lock()

    def rss(self) -> int:
        with self._lock:
            self._f.seek(0)
            return int(self._f.read().split()[1]) * self.PAGE

    def sample(self) -> None:
        self.peak = max(self.peak, self.rss())

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def __enter__(self):
        self.base = self.rss()
        self.peak = self.base
        self._old_switch = sys.getswitchinterval()
        sys.setswitchinterval(0.0005)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.sample()
        self._stop.set()
        self._thread.join()
        sys.setswitchinterval(self._old_switch)
        self._f.close()
        return False

    @property
    def extra(self) -> int:
        return self.peak - self.base


class CudaPeak:
    """Peak allocated CUDA bytes above those allocated on entry, as `extra`."""

    def __init__(self, device: str):
        self.device = device

    def __enter__(self):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(self.device)
        self.base = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc):
        torch.cuda.synchronize()
        self.extra = torch.cuda.max_memory_allocated(self.device) - self.base
        return False


def memory_meter(device: str):
    """A fresh context manager with `.extra` after exit: CudaPeak on CUDA, RssSampler on the CPU."""
    return CudaPeak(device) if device.startswith("cuda") else RssSampler()


def malloc_trim() -> None:
    """Give the heap's free memory back to the OS (glibc), so that an RSS baseline starts low."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# --------------------------------------------------------------------------------------------------
# Output


def table_line(columns: Sequence[tuple[str, str, str]], values: Sequence[Any]) -> str:
    """One line of a table; `columns` are (title, alignment and width such as "<9", value format such as ".3f")."""
    return " ".join(f"{v:{width}{fmt}}" for v, (_, width, fmt) in zip(values, columns))


def table_header(columns: Sequence[tuple[str, str, str]]) -> str:
    """The titles of `columns`, aligned as their values are."""
    return " ".join(f"{title:{width}}" for title, width, _ in columns)


def print_table(columns: Sequence[tuple[str, str, str]], rows: Sequence[Sequence[Any]], rule: bool = True) -> None:
    """Print the header, a rule under it (unless `rule` is False) and one line per row."""
    header = table_header(columns)
    print(header)
    if rule:
        print("-" * len(header))
    for row in rows:
        print(table_line(columns, row))


def write_csv(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write `rows` (dicts with the same keys, in column order) to `path`, its folder made if missing."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {path}")


def bar_plot(path: str, labels: Sequence[str], values: Sequence[float], ylabel: str, *, title: Optional[str] = None,
             colors: Any = "tab:blue", hline: Optional[float] = None, log: bool = False,
             figsize: tuple[float, float] = (7, 3.5), fontsize: int = 7) -> None:
    """A bar chart of `values`, one bar per label, written as a PNG to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize)
    ax.bar(range(len(values)), values, color=colors)
    if hline is not None:
        ax.axhline(hline, color="grey", lw=1, ls="--")
    ax.set_xticks(range(len(values)), labels, fontsize=fontsize)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if log:
        ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")
