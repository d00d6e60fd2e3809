"""Build the extension with AddressSanitizer and UndefinedBehaviorSanitizer, then run the op tests under it.

    python tools/sanitize.py [--build-dir build/sanitize] [more pytest arguments, e.g. -x -k ward]

The build (setup.py with SANITIZE=1: CPU only, -O1 -g, every report fatal) goes to a folder of its own, beside a
copy of the package's Python files, so the release `_C` in pyprune_fast/ is never touched; a second run recompiles
only what changed. Python and torch are not instrumented, so pytest runs with the ASan runtime preloaded, imports the
package from that folder only (python -P keeps the checkout off sys.path), and, with this module as a plugin
(-p sanitize), refuses to start unless the `_C` it loaded is the sanitized one. Any report is printed and ends the
process with status 1 (in the tests' own subprocesses too, whose tests then fail), so the run fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The tests that mainly call the compiled ops: tests/ops, and tests/cluster (Ward and k-means over them).
OP_TESTS = ["tests/ops", "tests/cluster"]
EXPECTED = "PYPRUNE_FAST_SANITIZED_DIR"  # the build folder, for the plugin's check

# Only what torch 2.13 needs: the op tests run clean with ASan's other defaults (alloc_dealloc_mismatch stays on;
# protect_shadow_gap=0 is for the CUDA driver, which a CPU-only build never loads).
ASAN_OPTIONS = [
    "detect_leaks=0",  # CPython and torch keep allocations until exit by design: `import torch` alone "leaks" 11 MB
]
# halt_on_error: a build without -fno-sanitize-recover would still stop at the first report; print_stacktrace:
# the report says where, not only what.
UBSAN_OPTIONS = ["halt_on_error=1", "print_stacktrace=1"]


def build(build_dir: Path) -> None:
    """The sanitized _C and its _build_info.py into build_dir/pyprune_fast, beside a fresh copy of the package."""
    package = build_dir / "pyprune_fast"
    if package.exists():  # modules deleted from the checkout must not linger; the compiled _C is kept
        for p in package.iterdir():
            if not p.name.startswith("_C"):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    shutil.copytree(ROOT / "pyprune_fast", package, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("_C*", "_build_info.py", "__pycache__"))
    env = {**os.environ, "SANITIZE": "1"}
    subprocess.run([sys.executable, "setup.py", "build_ext", "--build-lib", str(build_dir),
                    "--build-temp", str(build_dir / "temp")], cwd=ROOT, env=env, check=True)


def runtime(name: str) -> str:
    """The path of a runtime library of the compiler torch builds with (CXX, else c++)."""
    compiler = os.environ.get("CXX", "c++")
    path = subprocess.run([compiler, f"-print-file-name={name}"], capture_output=True, text=True, check=True).stdout.strip()
    if not os.path.isabs(path) or not os.path.exists(path):
        sys.exit(f"sanitize: {compiler} has no {name} (got {path!r}); install its sanitizer runtimes (libasan)")
    return path


def run_tests(build_dir: Path, pytest_args: list[str]) -> int:
    """pytest's exit status under the sanitizers: every report ends the process that hit it with status 1."""
    env = {**os.environ,
           # ASan's runtime must come first. libstdc++ right after it: python is not a C++ program, so without it
           # ASan finds no __cxa_throw to wrap at start-up and its CHECK fails at the first C++ exception.
           "LD_PRELOAD": " ".join([runtime("libasan.so"), runtime("libstdc++.so.6")]),
           "ASAN_OPTIONS": ":".join(ASAN_OPTIONS),
           "UBSAN_OPTIONS": ":".join(UBSAN_OPTIONS),
           "PYTHONPATH": os.pathsep.join([str(build_dir), str(Path(__file__).resolve().parent)]),
           EXPECTED: str(build_dir)}
    # -P: the checkout (the cwd) stays off sys.path, so its release build is not imported; the tests' own
    # subprocesses run from tests/ and find the package through PYTHONPATH. --capture=sys: a report, written to
    # file descriptor 2 just before the process exits, reaches the log instead of pytest's capture file.
    cmd = [sys.executable, "-P", "-m", "pytest", "-p", "sanitize", "--capture=sys", *OP_TESTS, *pytest_args]
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


def _loaded_extension() -> tuple[Path, dict]:
    import pyprune_fast
    from pyprune_fast import _C

    return Path(_C.__file__).resolve(), pyprune_fast.build_info()


def pytest_configure(config) -> None:
    """As a plugin: stop before any test unless the sanitized build in $PYPRUNE_FAST_SANITIZED_DIR is loaded."""
    import pytest

    expected = os.environ.get(EXPECTED)
    so, info = _loaded_extension()
    if not expected or not so.is_relative_to(Path(expected).resolve()) or not info.get("sanitize"):
        raise pytest.UsageError(f"sanitize: the tests would use {so} (build_info sanitize={info.get('sanitize')}), "
                                f"not the sanitized build in {expected}")


def pytest_report_header(config) -> str:
    so, info = _loaded_extension()
    return f"sanitize: {so} (sanitize={info['sanitize']}, debug={info['debug']}, with_cuda={info['with_cuda']})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", type=Path, default=ROOT / "build" / "sanitize")
    args, pytest_args = parser.parse_known_args(argv)
    build_dir = args.build_dir.resolve()
    build(build_dir)
    return run_tests(build_dir, pytest_args)


if __name__ == "__main__":
    sys.exit(main())
