"""The sdist built from this checkout and a wheel's metadata (tools/check_dist.py; .ci/run checks a built wheel too)."""

import importlib.util
import io
import subprocess
import sys
import tarfile
from email.parser import HeaderParser
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("check_dist", ROOT / "tools" / "check_dist.py")
check_dist = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_dist)


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    out = tmp_path_factory.mktemp("sdist")
    cmd = [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out), str(ROOT)]
    subprocess.run(cmd, check=True, capture_output=True)
    (path,) = out.glob("*.tar.gz")
    return path


def test_source_files_cover_the_build_and_the_tests():
    files = check_dist.source_files()
    assert {"LICENSE", "CHANGELOG.md", "ARCHITECTURE.md", "CMakeLists.txt", "setup.py", "csrc/checks.h", "csrc/cpu/parallel_rows.h",
            "csrc/cuda/launch.cuh", "tests/helpers.py", "tests/cpp/smoke.cpp", "pyprune_fast/graph/rules/registry.py",
            "pyprune_fast/py.typed"} <= files
    assert not any(f.endswith((".so", ".pyc")) or f.endswith("_build_info.py") for f in files)


def test_sdist_holds_every_source_file_and_nothing_generated(sdist):
    assert check_dist.check_sdist(sdist) == []


def test_check_sdist_names_a_missing_header_and_generated_files(sdist, tmp_path):
    doctored = tmp_path / sdist.name
    with tarfile.open(sdist) as src, tarfile.open(doctored, "w:gz") as dst:
        top = src.getmembers()[0].name.split("/")[0]
        for m in src.getmembers():
            if m.name != f"{top}/csrc/checks.h":
                dst.addfile(m, src.extractfile(m) if m.isfile() else None)
        for name in ("pyprune_fast/_build_info.py", "pyprune_fast/_C.cpython-311-x86_64-linux-gnu.so"):
            info = tarfile.TarInfo(f"{top}/{name}")
            dst.addfile(info, io.BytesIO(b""))
    assert check_dist.check_sdist(doctored) == [
        "sdist lacks csrc/checks.h",
        "sdist holds pyprune_fast/_C.cpython-311-x86_64-linux-gnu.so, which a build generates",
        "sdist holds pyprune_fast/_build_info.py, which a build generates",
    ]


def test_wheel_metadata_pins_the_torch_it_is_built_against(tmp_path):
    # dist_info is what pip prepares for a wheel; it compiles nothing.
    cmd = [sys.executable, "setup.py", "-q", "dist_info", "--output-dir", str(tmp_path)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    (metadata,) = tmp_path.glob("*.dist-info/METADATA")
    requires = HeaderParser().parsestr(metadata.read_text()).get_all("Requires-Dist")
    assert f"torch=={torch.__version__.split('+')[0]}" in requires
    assert not any(r.startswith("torch>") for r in requires)
