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


@pytest.fixture(scope="session")
def tv_model():
    """Factory of torchvision models: `tv_model("resnet18", num_classes=10)` builds a new one (random init,
    from the test's seed) at every call, so no test sees another's pruning."""
    models = pytest.importorskip("torchvision.models")
    return lambda name, **kwargs: models.get_model(name, weights=None, **kwargs)


@pytest.fixture(scope="session")
def small_vit():
    """Factory of torchvision ViTs on 32x32 images, 4x4 patches, 10 classes: `small_vit(layers, heads, dim, mlp)`
    builds a new one at every call."""
    models = pytest.importorskip("torchvision.models")
    return lambda layers=4, heads=8, dim=128, mlp=512: models.VisionTransformer(32, 4, layers, heads, dim, mlp,
                                                                                num_classes=10)
