import importlib
import subprocess
import sys

import pytest
import torch

import pyprune_fast
from pyprune_fast import _extension


def test_build_info_records_versions():
    info = pyprune_fast.build_info()
    assert {"torch", "cuda", "with_cuda", "openmp"} <= info.keys()
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
