"""How many threads pyprune_fast's own work runs on: by default no more than the CPUs idle right now.

Torch's OpenMP threads (libgomp) spin for a few milliseconds after every parallel region before they
sleep, and a region ends only when its slowest thread arrives. On a machine whose cores are busy (data
loader workers, other jobs) a spinning or descheduled thread costs the caller a share of a core at
every region, and code made of many short regions (small tensors, per-layer loops) can run several
times slower on its default threads than on one. So the ops, `cluster.kmeans`, `cluster.ward` and
`prune` lower torch's thread count to the idle CPUs for the duration of the call (never raise it) and
restore it after.

The setting: the environment variable PYPRUNE_FAST_THREADS, read at every call:
    "auto" (default): at most the CPUs idle now (usable CPUs minus other runnable threads, at least 1);
    "torch": torch's own thread count, whatever the load;
    N (an integer >= 1): at most N threads.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import time
from typing import Callable, Iterator, TypeVar

import torch

__all__ = ["ENV", "idle_cpus", "threads_for_call", "limited", "on_idle_cpus", "user_threads"]

ENV = "PYPRUNE_FAST_THREADS"
_RECHECK_S = 0.1  # a probe reads a few /proc files (~0.1 ms): one per this many seconds
_last: tuple[float, int] = (-1.0, 0)  # (when, idle CPUs then)

F = TypeVar("F", bound=Callable)
_user: contextvars.ContextVar = contextvars.ContextVar("pyprune_fast_user_threads", default=None)


def _own_running_threads() -> int:
    """This process's threads that are running or runnable now (its spinning OpenMP workers included)."""
    running = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                running += f.read().rsplit(")", 1)[1].split()[0] == "R"
        except (OSError, IndexError):
            pass  # the thread ended meanwhile
    return running


def idle_cpus() -> int:
    """The usable CPUs (affinity mask) not taken by other processes' runnable threads right now, at least
    1; all usable CPUs where /proc cannot be read. Cached for 0.1 s."""
    global _last
    now = time.monotonic()
    if now - _last[0] < _RECHECK_S:
        return _last[1]
    usable = len(os.sched_getaffinity(0))
    try:
        with open("/proc/loadavg") as f:
            runnable = int(f.read().split()[3].split("/")[0])  # system-wide, this reading thread included
        others = max(0, runnable - max(1, _own_running_threads()))
    except (OSError, ValueError, IndexError):
        others = 0
    _last = (now, max(1, usable - others))
    return _last[1]


def threads_for_call() -> int:
    """The threads a call of pyprune_fast would use now, by PYPRUNE_FAST_THREADS (see the module)."""
    setting = os.environ.get(ENV, "auto").strip().lower()
    current = torch.get_num_threads()
    if setting == "auto":
        return 1 if current == 1 else min(current, idle_cpus())
    if setting == "torch":
        return current
    try:
        n = int(setting)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{ENV} must be 'auto', 'torch' or a positive integer, got {os.environ[ENV]!r}")
    return min(current, n)


@contextlib.contextmanager
def limited() -> Iterator[int]:
    """Torch's thread count lowered to `threads_for_call()` inside (never raised), restored on the way out;
    yields the count in force."""
    before = torch.get_num_threads()
    n = threads_for_call()
    token = None
    try:
        token = _user.set((user_threads(), min(n, before)))
        if n < before:
            torch.set_num_threads(n)
        yield n
    finally:
        if token is not None:
            _user.reset(token)
        if n < before:
            torch.set_num_threads(before)


def user_threads() -> int:
    """Torch's thread count as the user set it: outside `limited()` the current one, inside it the count it
    lowered (what the user's own model runs on: latency is measured on it). A value left behind by a call
    cut short (an exception inside `limited`'s own lines) is ignored once torch's count is no longer the one
    that call set."""
    current, entered = torch.get_num_threads(), _user.get()
    return entered[0] if entered is not None and entered[1] == current else current


def on_idle_cpus(fn: F) -> F:
    """`fn` run inside `limited()` (not while torch.compile traces it)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        with limited():
            return fn(*args, **kwargs)
    return wrapper  # type: ignore[return-value]
