"""Builds pyprune_fast._C: CPU kernels always, CUDA kernels when asked for or useful.

Environment variables (see the README's table):
  PYPRUNE_FAST_FORCE_CPU=1  never compile CUDA code
  FORCE_CUDA=1              compile CUDA code even when no GPU is visible
  TORCH_CUDA_ARCH_LIST      architectures to compile for; setting it also turns CUDA on
  CUDA_HOME                 toolkit root (the folder holding bin/nvcc, include/, lib64/)
  MAX_JOBS                  parallel compile jobs (ninja)
  DEBUG=1                   -O0 -g, no NDEBUG (otherwise -O3 -g0: no debug info in the binary)
  SANITIZE=1                AddressSanitizer and UndefinedBehaviorSanitizer (compile and link), -O1 -g, no NDEBUG,
                            CPU only; the binary needs libasan preloaded (tools/sanitize.py runs the tests so)
  NVCC_FLAGS                extra flags for nvcc, split on spaces

The build writes pyprune_fast/_build_info.py beside the compiled _C (the build folder, or the source tree for
`build_ext --inplace`), never into an sdist. A wheel's metadata pins the torch it was compiled against.
"""

import glob
import os
import re
import shutil
import site
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _find_cuda_home():
    """Toolkit root. `which nvcc` may be a wrapper script outside the toolkit, so check for headers."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(os.path.realpath(nvcc)).parent.parent)
    candidates += [Path("/usr/local/cuda"), *sorted(Path("/usr/local").glob("cuda-*"), reverse=True)]
    for c in candidates:
        if (c / "bin" / "nvcc").exists() and (c / "include" / "cuda_runtime.h").exists():
            return str(c)
    return None


# torch.utils.cpp_extension reads CUDA_HOME when it is imported: settle it first.
_cuda_home = _find_cuda_home()
if _cuda_home:
    os.environ["CUDA_HOME"] = _cuda_home

import torch  # noqa: E402
from setuptools import setup  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _cuda_decision():
    """(with_cuda, reason) following the rules of the module docstring."""
    if SANITIZE:
        return False, "SANITIZE=1 (sanitizer builds are CPU-only)"
    if _env_flag("PYPRUNE_FAST_FORCE_CPU"):
        return False, "PYPRUNE_FAST_FORCE_CPU=1"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU-only build"
    if _cuda_home is None:
        return False, "no CUDA toolkit found (set CUDA_HOME to the folder holding bin/nvcc)"
    if torch.cuda.is_available():
        return True, "a GPU is visible"
    if _env_flag("FORCE_CUDA"):
        return True, "FORCE_CUDA=1"
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return True, f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}"
    return False, "no GPU visible and neither FORCE_CUDA=1 nor TORCH_CUDA_ARCH_LIST set"


def _math_header_dirs():
    """Include dirs of the CUDA math libraries shipped with torch's CUDA build, if the toolkit lacks them.

    torch's own CUDA headers include cublas_v2.h and cusparse.h; a runtime-only toolkit does not have them.
    """
    if (Path(_cuda_home) / "include" / "cusparse.h").exists():
        return []
    roots = [Path(p) for p in site.getsitepackages() + [site.getusersitepackages()]]
    roots.append(Path(torch.__file__).resolve().parent.parent)
    found = []
    for root in roots:
        for header in sorted(glob.glob(str(root / "nvidia" / "**" / "include" / "cusparse.h"), recursive=True)):
            d = str(Path(header).parent)
            if d not in found:
                found.append(d)
    return found


def _openmp_flags():
    return ["-fopenmp"] if sys.platform.startswith("linux") else []


SANITIZE = _env_flag("SANITIZE")
DEBUG = _env_flag("DEBUG") or SANITIZE
# Every report is fatal (-fno-sanitize-recover); frame pointers give the reports whole stacks. -fno-wrapv undoes the
# -fwrapv of Python's own CFLAGS, which defines signed overflow and so hides it from UBSan.
SANITIZER_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer",
                   "-fno-wrapv"] if SANITIZE else []
WITH_CUDA, CUDA_REASON = _cuda_decision()
OPENMP = _openmp_flags()
ARCH_LIST = os.environ.get("TORCH_CUDA_ARCH_LIST") if WITH_CUDA else None
MATH_HEADERS = _math_header_dirs() if WITH_CUDA else []


def _extension():
    # -g0 overrides the -g in Python's own CFLAGS (nvcc gets no -g, so needs none). nvcc's -lineinfo only maps
    # GPU code to source lines (for profilers and compute-sanitizer); it adds no host debug sections.
    # -O1 for sanitizer builds, as the sanitizers' documentation advises: usable speed, exact stacks.
    opt = ["-O1", "-g"] if SANITIZE else ["-O0", "-g"] if DEBUG else ["-O3"]
    # the C++ standard is torch's choice; ours is C++17
    # Python's own CFLAGS define NDEBUG: -UNDEBUG keeps assertions in debug builds.
    cxx = [*opt, "-UNDEBUG", *SANITIZER_FLAGS, *OPENMP] if DEBUG else [*opt, "-g0", *OPENMP]
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    kwargs = dict(
        name="pyprune_fast._C",
        include_dirs=[str(ROOT / "csrc")],
        extra_link_args=[*OPENMP, *SANITIZER_FLAGS],
        define_macros=[] if DEBUG else [("NDEBUG", None)],
    )
    if not WITH_CUDA:
        return CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **kwargs)
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    nvcc = [*opt, "--expt-relaxed-constexpr", "-lineinfo", *os.environ.get("NVCC_FLAGS", "").split()]
    kwargs["include_dirs"] += MATH_HEADERS
    return CUDAExtension(sources=sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)


def _report():
    """The decisions, printed where `pip install -v` shows them."""
    print(f"pyprune_fast: building with CUDA: {'yes' if WITH_CUDA else 'no'} ({CUDA_REASON})")
    if WITH_CUDA:
        print(f"pyprune_fast: CUDA_HOME={_cuda_home}, TORCH_CUDA_ARCH_LIST={ARCH_LIST or '(torch default)'}")
        if MATH_HEADERS:
            print(f"pyprune_fast: toolkit lacks the CUDA math headers; adding {', '.join(MATH_HEADERS)}")
    print(f"pyprune_fast: torch {torch.__version__}, OpenMP: {'yes' if OPENMP else 'no'}, debug: {'yes' if DEBUG else 'no'}, "
          f"sanitizers: {' '.join(SANITIZER_FLAGS) or 'no'}")


def _build_info_text():
    info = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda if WITH_CUDA else None,
        "with_cuda": WITH_CUDA,
        "cuda_reason": CUDA_REASON,
        "openmp": bool(OPENMP),
        "cuda_arch_list": ARCH_LIST,
        "debug": DEBUG,
        "sanitize": SANITIZE,
    }
    return '"""Written by setup.py at build time; do not edit."""\n\nBUILD_INFO = ' + repr(info) + "\n"


class BuildExt(BuildExtension.with_options(use_ninja=True)):
    """torch's build_ext; it also prints the CUDA decision and writes _build_info.py beside the built _C."""

    def run(self):
        _report()
        super().run()
        text = _build_info_text()
        # The build folder (what a wheel packs) and, for --inplace, the package in the source tree.
        for folder in {Path(self.build_lib, "pyprune_fast"), Path(self.get_ext_fullpath("pyprune_fast._C")).parent}:
            path = folder / "_build_info.py"
            if not path.exists() or path.read_text() != text:
                folder.mkdir(parents=True, exist_ok=True)
                path.write_text(text)


def _install_requires():
    """[tool.pyprune_fast] dependencies of pyproject.toml. The metadata of a wheel (bdist_wheel, and dist_info,
    editable_wheel: what pip prepares for one) pins torch to the version compiled against, without its local
    part (+cu130, +cpu); an sdist keeps the range."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pyprune_fast"]["dependencies"]
    if not {"bdist_wheel", "dist_info", "editable_wheel"} & set(sys.argv[1:]):
        return deps
    pin = f"torch=={torch.__version__.split('+')[0]}"
    return [pin if re.match(r"torch\b(?![-.])", d) else d for d in deps]


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExt},
    install_requires=_install_requires(),
)
