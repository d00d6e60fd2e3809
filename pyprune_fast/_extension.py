"""Loads the compiled extension `pyprune_fast._C` and reports how it was built."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

import torch

_REBUILD = "rebuild it against the torch you have: `pip install --no-build-isolation .` (or `make build` in a checkout)"


def _not_built_error(package_dir: Path) -> ImportError:
    """The error for a package folder without its build (`_C` and `_build_info.py`): a source checkout
    (setup.py and csrc/ beside it) that was never built in place, or an incomplete install."""
    root = package_dir.parent
    if (root / "setup.py").is_file() and (root / "csrc").is_dir():
        return ImportError(
            f"pyprune_fast is being imported from the source tree {root}, which has no built extension: run "
            "`make build` or `pip install --no-build-isolation .` there; to use an installed copy instead, "
            "run Python from outside that folder"
        )
    return ImportError(
        f"pyprune_fast at {package_dir} has no compiled extension (_C and _build_info.py are missing): "
        "reinstall it with `pip install --force-reinstall --no-build-isolation pyprune-fast`"
    )


def _recorded() -> dict[str, Any]:
    if any(importlib.util.find_spec(f"{__package__}.{m}") is None for m in ("_build_info", "_C")):
        raise _not_built_error(Path(__file__).resolve().parent)
    from ._build_info import BUILD_INFO

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
