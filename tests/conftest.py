import os
import tempfile
import zlib

import pytest
import torch

# torch.compile's on-disk cache is not keyed by a forced ATEN_CPU_CAPABILITY: code compiled for AVX-512
# would be reused under `default` and fail to build. One cache per level.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"pyprune_fast_inductor_{os.environ.get('ATEN_CPU_CAPABILITY', 'native')}"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a visible CUDA GPU; torch.cuda.is_available() is False here")
    for item in items:
        if "needs_cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed(request):
    """Fresh random data in every test, reproducible from the test's id (str hash() is salted per run)."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
