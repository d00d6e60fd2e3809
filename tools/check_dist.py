"""Check what an sdist and a wheel of pyprune_fast hold (run by .ci/run; tests/test_packaging.py runs it on an sdist).

    python tools/check_dist.py --sdist dist/pyprune_fast-0.2.0.tar.gz --wheel dist/pyprune_fast-0.2.0-*.whl

The sdist must hold every source file of the checkout this script sits in (csrc/ with its headers and CUDA kernels,
the package, tests and their helpers, benchmarks, examples, tools, the top-level build files) and nothing a build
generates, and keep torch as a range. The wheel must hold every module of the package, py.typed, the `_build_info.py`
and `_C` of its own build, no debug info unless that build was a DEBUG=1 one, and pin the torch it was built against.
Prints one line per problem and exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from email.parser import HeaderParser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOP_FILES = ["LICENSE", "README.md", "CHANGELOG.md", "ARCHITECTURE.md", "CMakeLists.txt", "Makefile", "setup.py", "pyproject.toml", "MANIFEST.in"]
SOURCE_DIRS = ["csrc", "pyprune_fast", "tests", "benchmarks", "examples", "tools"]
GENERATED = re.compile(r"(^|/)(_build_info\.py|__pycache__/.*|[^/]*\.(so|o|pyc|pyo|png))$|^(build|dist|\.venv)/")


def source_files(root: Path = ROOT) -> set[str]:
    """Every file of the checkout that a build from source needs, as relative paths."""
    files = {f for f in TOP_FILES if (root / f).is_file()}
    for d in SOURCE_DIRS:
        files |= {p.relative_to(root).as_posix() for p in (root / d).rglob("*") if p.is_file()}
    return {f for f in files if not GENERATED.search(f) and "/." not in f"/{f}"}


def _torch_requirement(metadata: str) -> list[str]:
    reqs = HeaderParser().parsestr(metadata).get_all("Requires-Dist") or []
    return [r.replace(" ", "") for r in reqs if re.match(r"torch\b(?![-.])", r)]


def check_sdist(path: Path, root: Path = ROOT) -> list[str]:
    """Problems with the sdist at `path`."""
    with tarfile.open(path) as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
        top = names[0].split("/")[0]
        files = {n.removeprefix(f"{top}/") for n in names}
        pkg_info = tar.extractfile(f"{top}/PKG-INFO").read().decode()
    problems = [f"sdist lacks {f}" for f in sorted(source_files(root) - files)]
    problems += [f"sdist holds {f}, which a build generates" for f in sorted(files) if GENERATED.search(f)]
    if _torch_requirement(pkg_info) != ["torch>=2.4"]:
        problems.append(f"sdist PKG-INFO requires {_torch_requirement(pkg_info)}, not ['torch>=2.4']")
    if "requires-dist" not in [d.lower() for d in HeaderParser().parsestr(pkg_info).get_all("Dynamic") or []]:
        problems.append("sdist PKG-INFO does not mark Requires-Dist as Dynamic, yet its wheels pin torch")
    return problems


def _debug_sections(data: bytes) -> list[str]:
    with tempfile.NamedTemporaryFile(suffix=".so") as f:
        f.write(data)
        f.flush()
        out = subprocess.run(["readelf", "-S", "--wide", f.name], capture_output=True, text=True, check=True).stdout
    return re.findall(r"\.debug_\w+", out)


def check_wheel(path: Path, root: Path = ROOT) -> list[str]:
    """Problems with the wheel at `path`."""
    with zipfile.ZipFile(path) as whl:
        files = set(whl.namelist())
        dist_info = next(f.split("/")[0] for f in files if f.split("/")[0].endswith(".dist-info"))
        metadata = whl.read(f"{dist_info}/METADATA").decode()
        build_info = whl.read("pyprune_fast/_build_info.py").decode() if "pyprune_fast/_build_info.py" in files else None
        extensions = [f for f in files if re.fullmatch(r"pyprune_fast/_C\..*\.so", f)]
        debug = _debug_sections(whl.read(extensions[0])) if len(extensions) == 1 else []
    modules = {f for f in source_files(root) if f.startswith("pyprune_fast/")}
    problems = [f"wheel lacks {f}" for f in sorted(modules - files)]
    problems += [f"wheel holds {f}, outside the package" for f in sorted(files) if f.split("/")[0] not in ("pyprune_fast", dist_info)]
    if len(extensions) != 1:
        problems.append(f"wheel holds {len(extensions)} compiled extensions pyprune_fast/_C*.so, not 1")
    if f"{dist_info}/licenses/LICENSE" not in files:
        problems.append("wheel lacks its LICENSE")
    if build_info is None:
        return problems + ["wheel lacks pyprune_fast/_build_info.py"]
    info = ast.literal_eval(build_info.split("BUILD_INFO = ", 1)[1])
    if debug and not info["debug"]:
        problems.append(f"the extension of a release build carries debug info: {', '.join(sorted(set(debug)))}")
    pin = f"torch=={info['torch'].split('+')[0]}"
    if _torch_requirement(metadata) != [pin]:
        problems.append(f"wheel METADATA requires {_torch_requirement(metadata)}, not [{pin!r}] (the torch it was built for)")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sdist", type=Path)
    ap.add_argument("--wheel", type=Path)
    args = ap.parse_args(argv)
    problems = (check_sdist(args.sdist) if args.sdist else []) + (check_wheel(args.wheel) if args.wheel else [])
    for p in problems:
        print(f"check_dist: {p}")
    if not problems:
        print(f"check_dist: {', '.join(str(p) for p in (args.sdist, args.wheel) if p)}: contents as required")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
