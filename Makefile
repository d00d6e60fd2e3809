# make test : venv + dependencies + extension (CUDA compiled) + CMake library + all tests
# make demo : every method on real data (digits), pruning while training (CUP-SS), prune ResNet-50 (L1, 50%), the ops and clustering benchmarks, a summary
# Second runs are incremental: only what changed is rebuilt.

PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
VPIP := $(VPY) -m pip
TORCH_SPEC ?= torch==2.13.0 torchvision==0.28.0

# CUDA code is compiled even without a GPU, so CI proves it builds. PYPRUNE_FAST_FORCE_CPU=1 skips it.
TORCH_CUDA_ARCH_LIST ?= 9.0
export TORCH_CUDA_ARCH_LIST
# The toolkit root (holding bin/nvcc and include/); `which nvcc` may be a wrapper outside it.
CUDA_HOME ?= $(shell for d in "$$(dirname "$$(dirname "$$(readlink -f "$$(command -v nvcc)")")")" /usr/local/cuda; do \
	[ -f "$$d/include/cuda_runtime.h" ] && echo "$$d" && break; done 2>/dev/null)
ifneq ($(CUDA_HOME),)
export CUDA_HOME
endif
MAX_JOBS ?= 2
export MAX_JOBS

SOURCES := $(shell find csrc -type f -name '*.cpp' -o -type f -name '*.cu' -o -type f -name '*.h' -o -type f -name '*.cuh') setup.py
BUILD_TAG := $(subst ;,_,$(subst $() ,_,cpu$(PYPRUNE_FAST_FORCE_CPU)-arch$(TORCH_CUDA_ARCH_LIST)-debug$(DEBUG)))
STAMP_TORCH := $(VENV)/.stamp-torch
STAMP_DEPS := $(VENV)/.stamp-deps
STAMP_EXT := build/.stamp-ext-$(BUILD_TAG)
STAMP_CMAKE := build/.stamp-cmake

.PHONY: all venv build cmake test test-py test-cpp demo bench clean

all: build

venv: $(STAMP_DEPS)

# The CUDA build of torch from the registry: the local CPU-only file is named in PIP_FIND_LINKS and in
# pip's config, so both are cleared for this one step (see shared/DESIGN.md).
$(STAMP_TORCH):
	$(PYTHON) -m venv $(VENV)
	$(VPIP) install --upgrade pip
	PIP_FIND_LINKS= PIP_CONFIG_FILE=/dev/null $(VPIP) install $(TORCH_SPEC)
	touch $@

# The build tools of pyproject's build-system.requires (setuptools>=77, wheel, ninja: builds without isolation use
# these), the dependencies (its [tool.pyprune_fast] table, which setup.py reads) and every extra.
$(STAMP_DEPS): $(STAMP_TORCH) pyproject.toml
	$(VPIP) install $$($(VPY) -c 'import tomllib; t = tomllib.load(open("pyproject.toml", "rb")); \
		extras = sorted({d for ds in t["project"]["optional-dependencies"].values() for d in ds}); \
		print(" ".join(t["build-system"]["requires"] + t["tool"]["pyprune_fast"]["dependencies"] + extras))')
	touch $@

build: $(STAMP_EXT)

$(STAMP_EXT): $(STAMP_DEPS) $(SOURCES)
	$(VPY) setup.py build_ext --inplace
	mkdir -p build && rm -f build/.stamp-ext-* && touch $@

cmake: $(STAMP_CMAKE)

$(STAMP_CMAKE): $(STAMP_DEPS) $(SOURCES) CMakeLists.txt tests/cpp/smoke.cpp
	site=$$($(VPY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	nvrtc=$$(ls $$site/nvidia/*/lib/libnvrtc.so.* 2>/dev/null | grep -v builtins | head -n1); \
	cmake -S . -B build/cmake -G Ninja -DWITH_CUDA=OFF \
		-DCMAKE_PREFIX_PATH="$$($(VPY) -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
		$${CUDA_HOME:+-DCUDA_TOOLKIT_ROOT_DIR=$$CUDA_HOME -DCUDAToolkit_ROOT=$$CUDA_HOME} \
		$${nvrtc:+-DCUDA_nvrtc_LIBRARY=$$nvrtc}
	cmake --build build/cmake -j $(MAX_JOBS)
	touch $@

test-cpp: $(STAMP_CMAKE)
	cd build/cmake && ctest --output-on-failure

test-py: $(STAMP_EXT)
	$(VPY) -m pytest

test: test-cpp test-py

# The extension built with AddressSanitizer and UndefinedBehaviorSanitizer (SANITIZE=1: CPU only, -O1 -g) into
# build/sanitize, then the op tests against it (tools/sanitize.py); the release build in pyprune_fast/ is untouched.
.PHONY: test-sanitize
test-sanitize: $(STAMP_DEPS)
	$(VPY) tools/sanitize.py --build-dir build/sanitize

# examples/demo.py runs the three demos and two short benchmarks, then summarises them (PNGs, CSVs in bench_out/).
demo: $(STAMP_EXT)
	$(VPY) examples/demo.py --out-dir bench_out

bench: $(STAMP_EXT)
	$(VPY) benchmarks/bench_ops.py --csv bench_out/ops.csv

# On the GPU machine, with its own python (no venv): build for the visible GPU, pytest -m needs_cuda, the
# benchmarks on CUDA; everything into $(OUT) when set. GPU_CHECK_ARGS=--dry-run lists and checks the steps.
.PHONY: gpu-check
gpu-check:
	$(PYTHON) tools/gpu_check.py $(if $(OUT),--out $(OUT)) $(GPU_CHECK_ARGS)

clean:
	rm -rf build pyprune_fast/_C*.so pyprune_fast/_build_info.py
