"""The sanitizer build (setup.py's SANITIZE=1) and the guard of tools/sanitize.py, which refuses to run the op
tests against any build but the sanitized one. `make test-sanitize` (run by .ci/run) builds and runs them."""

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SANITIZERS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-fno-wrapv"]

# Runs setup.py with setuptools.setup replaced: prints the extension's flags and the build record it would write.
PROBE = """
import runpy, setuptools
def show(ext_modules, **kw):
    ext = ext_modules[0]
    print(repr((ext.extra_compile_args, ext.extra_link_args, ext.define_macros)))
setuptools.setup = show
print(runpy.run_path("setup.py")["_build_info_text"]().split("BUILD_INFO = ")[1].strip())
"""


def probe(**env):
    """(compile args, link args, macros, build record) of a build with `env`."""
    clean = {k: v for k, v in os.environ.items() if k not in ("SANITIZE", "DEBUG", "PYPRUNE_FAST_FORCE_CPU", "FORCE_CUDA")}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env={**clean, **env}, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    return (*ast.literal_eval(out[-2]), ast.literal_eval(out[-1]))


def test_sanitize_builds_cpu_only_with_both_sanitizers_and_assertions():
    compile_args, link_args, macros, info = probe(SANITIZE="1", FORCE_CUDA="1")
    assert "nvcc" not in compile_args  # CPU only, even when CUDA is asked for
    assert compile_args["cxx"] == ["-O1", "-g", "-UNDEBUG", *SANITIZERS, "-fopenmp"]
    assert link_args == ["-fopenmp", *SANITIZERS] and macros == []
    assert info["sanitize"] is True and info["debug"] is True and info["with_cuda"] is False
    assert info["cuda_reason"] == "SANITIZE=1 (sanitizer builds are CPU-only)"


def test_release_flags_have_no_sanitizers():
    compile_args, link_args, macros, info = probe(PYPRUNE_FAST_FORCE_CPU="1")
    assert compile_args["cxx"] == ["-O3", "-g0", "-fopenmp"]
    assert link_args == ["-fopenmp"] and macros == [("NDEBUG", None)]
    assert info["sanitize"] is False and info["debug"] is False


def test_the_op_tests_refuse_a_build_that_is_not_the_sanitized_one(tmp_path):
    """Here the package resolves to this checkout's own (release) build: pytest stops before any test."""
    import pyprune_fast

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(pyprune_fast.__file__).parents[1]), str(ROOT / "tools")]),
           "PYPRUNE_FAST_SANITIZED_DIR": str(tmp_path)}
    res = subprocess.run([sys.executable, "-P", "-m", "pytest", "-p", "sanitize", "tests/ops/test_op_inputs.py"], cwd=ROOT,
                         env=env, capture_output=True, text=True)
    assert res.returncode == 4, res.stdout + res.stderr  # pytest's "usage error": nothing ran
    assert f"sanitize: the tests would use {Path(pyprune_fast._C.__file__).resolve()}" in res.stderr
    assert f"not the sanitized build in {tmp_path}" in res.stderr
