import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pyprune_fast
from pyprune_fast import _extension


def test_build_info_records_versions():
    info = pyprune_fast.build_info()
    assert {"torch", "cuda", "with_cuda", "cuda_reason", "openmp"} <= info.keys()
    assert isinstance(info["cuda_reason"], str) and info["cuda_reason"]
    assert info["torch"] == torch.__version__
    assert info["with_cuda"] == (info["cuda"] is not None)
    if info["with_cuda"]:
        assert info["cuda"] == torch.version.cuda
    info["torch"] = "changed"
    assert pyprune_fast.build_info()["torch"] == torch.__version__  # a copy, not the record


def test_kernels_registered_for_every_built_backend():
    backends = ["CPU"] + (["CUDA"] if pyprune_fast.build_info()["with_cuda"] else [])
    for op in ("pairwise_distance", "gather_channels", "merge_channels_"):
        for key in backends:
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"pyprune_fast::{op}", key), (op, key)


@pytest.mark.parametrize(
    "torch_version,cuda_version",
    [("2.99.0", "13.0"), ("2.13.0+cu130", "12.4"), ("2.13.0+cu130", None)],
)
def test_other_torch_gives_readable_import_error(torch_version, cuda_version):
    info = {"torch": "2.13.0+cu130", "cuda": "13.0"}
    with pytest.raises(ImportError, match=r"built for torch 2\.13\.0\+cu130 / CUDA 13\.0, you have torch "):
        _extension.check_versions(info, torch_version, cuda_version)
    _extension.check_versions(info, "2.13.0+cu130", "13.0")
    _extension.check_versions({"torch": "2.13.0+cu130", "cuda": None}, "2.13.0+cu130", None)  # CPU-only build


def test_load_failure_is_reported_with_versions(monkeypatch):
    def broken(name):
        raise ImportError("_C.so: undefined symbol: _ZN3c104impl")

    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(ImportError, match=r"loading the extension built for torch .* failed with torch .*undefined symbol"):
        _extension.load()


def test_import_loads_the_extension_and_nothing_heavy():
    code = "import pyprune_fast, sys; print('pyprune_fast._C' in sys.modules, 'torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False"]


def test_version_is_the_changelog_top_entry():
    changelog = (Path(__file__).resolve().parent.parent / "CHANGELOG.md").read_text()
    assert re.search(r"^## (\S+)", changelog, re.M).group(1) == pyprune_fast.__version__


@pytest.mark.parametrize("checkout", [True, False])
@pytest.mark.parametrize("build_record", [False, True])  # a record without its _C (the .so deleted) is no build either
def test_import_without_a_built_extension_says_so(tmp_path, checkout, build_record):
    package = Path(pyprune_fast.__file__).resolve().parent
    shutil.copytree(package, tmp_path / "pyprune_fast", ignore=shutil.ignore_patterns("_C*", "_build_info.py", "__pycache__"))
    if build_record:
        (tmp_path / "pyprune_fast" / "_build_info.py").write_text(f"BUILD_INFO = {pyprune_fast.build_info()!r}\n")
    if checkout:
        (tmp_path / "setup.py").write_text("")
        (tmp_path / "csrc").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    out = subprocess.run([sys.executable, "-c", "import pyprune_fast"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    if checkout:
        assert last == (
            f"ImportError: pyprune_fast is being imported from the source tree {tmp_path.resolve()}, which has no built "
            "extension: run `make build` or `pip install --no-build-isolation .` there; to use an installed copy "
            "instead, run Python from outside that folder"
        )
    else:
        assert last.startswith(f"ImportError: pyprune_fast at {tmp_path.resolve() / 'pyprune_fast'} has no compiled extension")
    assert "built for torch" not in out.stderr
