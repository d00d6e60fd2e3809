"""Builds pyprune_fast._C: CPU kernels always, CUDA kernels when asked for or useful.

Environment variables (see the README's table):
  PYPRUNE_FAST_FORCE_CPU=1  never compile CUDA code
  FORCE_CUDA=1              compile CUDA code even when no GPU is visible
  TORCH_CUDA_ARCH_LIST      architectures to compile for; setting it also turns CUDA on
  CUDA_HOME                 toolkit root (the folder holding bin/nvcc, include/, lib64/)
  MAX_JOBS                  parallel compile jobs (ninja)
  DEBUG=1                   -O0 -g, no NDEBUG
  NVCC_FLAGS                extra flags for nvcc, split on spaces
"""

import glob
import os
import shutil
import site
import sys
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


def _write_build_info(with_cuda, openmp, arch_list):
    info = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda if with_cuda else None,
        "with_cuda": with_cuda,
        "openmp": openmp,
        "cuda_arch_list": arch_list,
        "debug": _env_flag("DEBUG"),
    }
    text = '"""Written by setup.py at build time; do not edit."""\n\nBUILD_INFO = ' + repr(info) + "\n"
    path = ROOT / "pyprune_fast" / "_build_info.py"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _extension():
    with_cuda, reason = _cuda_decision()
    debug = _env_flag("DEBUG")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    omp = _openmp_flags()
    cxx = [*opt, *omp]  # the C++ standard is torch's choice (17 or 20, by version); our code is C++17
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    kwargs = dict(
        name="pyprune_fast._C",
        include_dirs=[str(ROOT / "csrc")],
        extra_link_args=omp,
        define_macros=[] if debug else [("NDEBUG", None)],
    )
    arch_list = None
    if with_cuda:
        arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST")
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        nvcc = [*opt, "--expt-relaxed-constexpr", "-lineinfo", *os.environ.get("NVCC_FLAGS", "").split()]
        headers = _math_header_dirs()
        kwargs["include_dirs"] += headers
        ext = CUDAExtension(sources=sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)
    else:
        headers = []
        ext = CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **kwargs)
    print(f"pyprune_fast: building with CUDA: {'yes' if with_cuda else 'no'} ({reason})")
    if with_cuda:
        print(f"pyprune_fast: CUDA_HOME={_cuda_home}, TORCH_CUDA_ARCH_LIST={arch_list or '(torch default)'}")
        if headers:
            print(f"pyprune_fast: toolkit lacks the CUDA math headers; adding {', '.join(headers)}")
    print(f"pyprune_fast: torch {torch.__version__}, OpenMP: {'yes' if omp else 'no'}, debug: {'yes' if debug else 'no'}")
    _write_build_info(with_cuda, bool(omp), arch_list)
    return ext


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
