"""One progress bar over the named stages of a long call (tqdm, on stderr).

`progress=None` (auto) shows it only when stderr is a terminal and the call has run DELAY_S seconds, so
quick calls, logs and pipes get nothing; `True` shows it at once wherever stderr goes; `False` never.
The environment variable PYPRUNE_FAST_PROGRESS=0 (or 1) decides for every call left on auto.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Optional

__all__ = ["DELAY_S", "ENV", "Stages", "choice"]

DELAY_S = 2.0
ENV = "PYPRUNE_FAST_PROGRESS"
TICK_S = 0.5  # how often an open bar redraws (its clock and, once DELAY_S has passed, its first appearance)


def choice(progress: Optional[bool]) -> Optional[bool]:
    """True, False or None (auto), from the argument, else from $PYPRUNE_FAST_PROGRESS; bad values raise."""
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress must be None, True or False, got {progress!r}")
    if progress is not None:
        return progress
    env = os.environ.get(ENV, "").strip()
    if env not in ("", "0", "1"):
        raise ValueError(f"{ENV} must be 0 (no progress bar) or 1 (always one), got {env!r}")
    return None if env == "" else env == "1"


class Stages:
    """A tqdm bar whose steps are the stages of one call: `with Stages(["trace", ...], None, "prune l1") as s:`
    then `s.start("trace")` at the start of each stage. Close it (or leave the `with`) when done; it
    leaves no line behind. `show` is as `choice` returns it."""

    def __init__(self, names: Sequence[str], show: Optional[bool], title: str):
        from tqdm import tqdm

        self.title, self.done = title, -1
        self.bar = tqdm(total=len(names), file=sys.stderr, delay=0 if show else DELAY_S,
                        disable=None if show is None else not show, leave=False,
                        bar_format="{desc} [{n}/{total} stages, {elapsed}]")
        self.start_t = time.monotonic()
        self.delay = 0 if show else DELAY_S
        self.stop = threading.Event()
        self.ticker = None
        if not self.bar.disable:  # a long stage makes no calls: a thread draws the bar once the delay is over
            self.ticker = threading.Thread(target=self._tick, name="pyprune_fast-progress", daemon=True)
            self.ticker.start()

    def _due(self) -> bool:
        return time.monotonic() - self.start_t >= self.delay

    def _tick(self) -> None:
        while not self.stop.wait(TICK_S):
            if self._due():
                self.bar.refresh()

    def start(self, name: str) -> None:
        """Mark the previous stage done and show `name` as the one running."""
        if self.done >= 0:
            self.bar.update()
        self.done += 1
        self.bar.set_description_str(f"{self.title}: {name}", refresh=self._due())

    def __enter__(self) -> "Stages":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.stop.set()
        if self.ticker is not None:
            self.ticker.join()
        self.bar.close()
