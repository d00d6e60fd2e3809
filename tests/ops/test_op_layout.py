"""One name per op through every layer: checks, kernels, wrapper, reference, tests (README, "Ops")."""

import re
from pathlib import Path

import pytest
import torch

from pyprune_fast import _reference, ops

ROOT = Path(__file__).resolve().parents[2]
OPS = [name for name in ops.__all__ if name not in ("METRICS", "missing_kernels")]


def test_the_six_ops():
    assert OPS == ["pairwise_distance", "gather_channels", "merge_channels_", "ward_linkage", "kmeans_lloyd",
                   "kmeanspp_init"]


@pytest.mark.parametrize("op", OPS)
def test_every_layer_names_the_op(op):
    stem = op.rstrip("_")  # merge_channels_ writes in place; its files drop the underscore
    assert hasattr(torch.ops.pyprune_fast, op) and callable(getattr(ops, op)) and callable(getattr(_reference, op))
    assert (ROOT / "csrc" / f"{stem}.cpp").is_file()
    assert (ROOT / "csrc" / "cpu" / f"{stem}_kernel.cpp").is_file()
    assert (ROOT / "csrc" / "cuda" / f"{stem}_kernel.cu").is_file() or op == "ward_linkage"  # CPU only
    assert (ROOT / "tests" / "ops" / f"test_{stem}.py").is_file()


def test_the_public_schema_file_defines_no_private_op():
    public = re.findall(r'm\.def\(\s*"(\w+)', (ROOT / "csrc" / "pyprune_fast.cpp").read_text())
    assert sorted(public) == sorted(OPS)
