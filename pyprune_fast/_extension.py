"""Loads the compiled extension `pyprune_fast._C` and reports how it was built."""

from __future__ import annotations

import importlib
from typing import Any

import torch

_REBUILD = "rebuild it against the torch you have: `pip install --no-build-isolation .` (or `make build` in a checkout)"


def _recorded() -> dict[str, Any]:
    try:
        from ._build_info import BUILD_INFO
    except ImportError as e:
        raise ImportError(f"pyprune_fast: the compiled extension has not been built; {_REBUILD}") from e
    return dict(BUILD_INFO)


def check_versions(info: dict[str, Any], torch_version: str, cuda_version: str | None) -> None:
    """Raise ImportError when the extension was built for another torch or CUDA than the running one."""
    built_cuda = info.get("cuda")
    if info["torch"] != torch_version or (built_cuda is not None and built_cuda != cuda_version):
        raise ImportError(
            f"pyprune_fast was built for torch {info['torch']} / CUDA {built_cuda or 'none'}, "
            f"you have torch {torch_version} / CUDA {cuda_version or 'none'}; {_REBUILD}"
        )


def load() -> dict[str, Any]:
    """Import `_C` (registering every op); return the recorded build information."""
    info = _recorded()
    check_versions(info, torch.__version__, torch.version.cuda)
    try:
        importlib.import_module("pyprune_fast._C")
    except (ImportError, OSError) as e:
        raise ImportError(
            f"pyprune_fast: loading the extension built for torch {info['torch']} / CUDA {info.get('cuda') or 'none'} "
            f"failed with torch {torch.__version__} / CUDA {torch.version.cuda or 'none'} ({e}); {_REBUILD}"
        ) from e
    return info
