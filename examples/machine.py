"""What the demos' numbers were measured on (CPU, SIMD level torch dispatches to, threads, torch), and
how a demo runs on its own."""

from __future__ import annotations

import os
import platform
from typing import Callable, Optional

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe() -> str:
    """e.g. "AMD EPYC (2 cores), torch CPU kernels: AVX512, 2 threads, torch 2.13.0+cu130" """
    forced = os.environ.get("ATEN_CPU_CAPABILITY")
    simd = torch.backends.cpu.get_cpu_capability() + (f" (forced by ATEN_CPU_CAPABILITY={forced})" if forced else "")
    return (f"{cpu_model()} ({os.cpu_count()} cores), torch CPU kernels: {simd}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}")


def standalone(demo: Callable[[Optional[list[str]]], list[str]], argv: Optional[list[str]] = None) -> int:
    """Run one demo from the command line: the machine first, then the demo (its summary is for make demo)."""
    print(describe(), flush=True)
    demo(argv)
    return 0
