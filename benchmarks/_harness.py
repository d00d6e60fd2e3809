"""What the benchmark scripts share: the machine line and --load, devices, timing, memory sampling, the
table, the CSV and the plot."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import csv
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # the checkout's pyprune_fast, also when a script is loaded by its path
    sys.path.insert(0, ROOT)

from examples.machine import cpu_model  # noqa: E402  (the demos' description of the machine)


# --------------------------------------------------------------------------------------------------
# Where a benchmark runs: the machine line, --threads, --load


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), which is what --load is bounded by."""
    return len(os.sched_getaffinity(0))




def machine_line() -> str:
    """One line: CPU model, the SIMD level torch's kernels use, torch threads of usable CPUs, the threads
    pyprune_fast's calls would use now (see pyprune_fast.threads), load average."""
    from pyprune_fast import threads

    simd = torch.backends.cpu.get_cpu_capability()
    if os.environ.get("ATEN_CPU_CAPABILITY"):  # a lesser CPU's code paths (--simd), not this CPU's own
        config = getattr(sys.modules.get("faiss"), "SIMDConfig", None)
        simd += f" (ATEN_CPU_CAPABILITY={os.environ['ATEN_CPU_CAPABILITY']}" + (
            f", faiss {config.get_level_name()})" if config is not None else ")")
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    setting = os.environ.get(threads.ENV, "auto")
    return (f"machine: {cpu_model()}, SIMD {simd}, {torch.get_num_threads()} torch threads on "
            f"{usable_cpus()} usable CPUs ({threads.threads_for_call()} for pyprune_fast now, "
            f"{threads.ENV}={setting}), load average {load}")


def _spin(parent: int) -> None:
    """A busy process: pure arithmetic until its parent is gone (also if the parent is killed -9)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the whole group; the parent stops us
    while os.getppid() == parent:
        for _ in range(200_000):
            pass


class BusyLoad:
    """`n` busy processes (daemonic, pure spin) from enter to exit; always stopped, also on an exception,
    Ctrl-C, SIGTERM or interpreter exit."""

    def __init__(self, n: int):
        self.n = n
        self.procs: list[multiprocessing.Process] = []

    def __enter__(self) -> "BusyLoad":
        ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        atexit.register(self.stop)
        self._old_term = signal.getsignal(signal.SIGTERM)
        if self.n and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
        for _ in range(self.n):
            p = ctx.Process(target=_spin, args=(os.getpid(),), daemon=True)
            p.start()
            self.procs.append(p)
        return self

    def stop(self) -> None:
        """Kill and reap the busy processes (idempotent)."""
        for p in self.procs:
            if p.is_alive():
                p.kill()
        for p in self.procs:
            p.join(5)
        self.procs = []

    def __exit__(self, *exc) -> bool:
        self.stop()
        atexit.unregister(self.stop)
        if self.n and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._old_term)
        return False


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through every `with BusyLoad` and atexit


# torch's CPU capabilities on x86, lowest first, each with the same level's name for MKL
# (MKL_ENABLE_INSTRUCTIONS), for a faiss with one library per level (FAISS_OPT_LEVEL) and in faiss's dispatch
_SIMD = {"default": ("SSE4_2", "generic", "SIMDLevel_NONE"), "avx2": ("AVX2", "AVX2", "SIMDLevel_AVX2"),
         "avx512": ("AVX512", "AVX512", "SIMDLevel_AVX512")}
SIMD_LEVELS = tuple(_SIMD)


def add_machine_args(parser: argparse.ArgumentParser) -> None:
    """--threads (torch threads; default torch's choice), --load (busy processes for the run) and --simd (the
    code paths of a lesser CPU)."""
    parser.add_argument("--threads", type=int, default=None, help="torch threads, >= 1 (default: torch's choice)")
    parser.add_argument("--load", type=int, default=0, metavar="N",
                        help="run N busy processes (pure spin) for the duration, 0 to the number of usable CPUs")
    parser.add_argument("--simd", choices=SIMD_LEVELS, default=None,
                        help="run torch, MKL and faiss on this SIMD level's code paths (at most this CPU's), as on a "
                        "CPU that has no more: the script starts again with ATEN_CPU_CAPABILITY and "
                        "MKL_ENABLE_INSTRUCTIONS set")


def check_machine_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit through `parser` (one line, status 2) for --threads below 1 or --load outside 0..usable CPUs."""
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads {args.threads}: must be at least 1")
    if not 0 <= args.load <= usable_cpus():
        parser.error(f"--load {args.load}: must be between 0 and the {usable_cpus()} usable CPUs")
    if args.simd is not None:
        here = torch.backends.cpu.get_cpu_capability().lower()
        if here not in SIMD_LEVELS or SIMD_LEVELS.index(args.simd) > SIMD_LEVELS.index(here):
            parser.error(f"--simd {args.simd}: this CPU's code paths go up to {here}")


def _on_simd_level(simd: Optional[str], argv: Optional[Sequence[str]], parser: argparse.ArgumentParser) -> None:
    """With --simd, the script again in a fresh interpreter with torch's and MKL's SIMD level set in the
    environment (they are read when torch loads), unless that is this run; then faiss's level is set too."""
    if simd is None:
        return
    if os.environ.get("ATEN_CPU_CAPABILITY") != simd:
        if argv is not None:
            parser.error("--simd: only from the command line (the script starts again with the level set)")
        mkl, faiss_library, _ = _SIMD[simd]
        env = dict(os.environ, ATEN_CPU_CAPABILITY=simd, MKL_ENABLE_INSTRUCTIONS=mkl, FAISS_OPT_LEVEL=faiss_library)
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    try:
        import faiss
    except ImportError:
        return
    if hasattr(faiss, "SIMDConfig"):  # a dynamic-dispatch faiss (1.15 here): one library, its level set here
        faiss.SIMDConfig.set_level(getattr(faiss, _SIMD[simd][2]))


@contextlib.contextmanager
def machine(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> Iterator[argparse.Namespace]:
    """Parse `argv` with --threads and --load added, apply --threads, start the --load busy processes,
    print the machine line, and yield the arguments; on the way out (however it is left) the busy
    processes are stopped and the load average is printed again.

        with machine(parser, argv) as args:
            ...
    """
    add_machine_args(parser)
    args = parser.parse_args(argv)
    check_machine_args(parser, args)
    _on_simd_level(args.simd, argv, parser)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    with BusyLoad(args.load):
        print(f"{machine_line()}, --load {args.load}", flush=True)
        try:
            yield args
        finally:
            print("load average at the end: " + " ".join(f"{v:.2f}" for v in os.getloadavg()), flush=True)


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
