"""What every op and clustering function takes: a model's own parameters (they require grad), and, from a
build without CUDA kernels, a clear error for CUDA tensors."""

import pytest
import torch

import pyprune_fast as ppf
from pyprune_fast import _reference, cluster, ops

def kmeans(fs, **options):
    return [(r.labels, r.centroids) for r in cluster.kmeans(fs, 3, niter=5, **options)]


# Each call on a list of (N, D) filter matrices; one name per public entry point.
CALLS = {
    "pairwise_distance": lambda fs: ops.pairwise_distance(fs),
    "pairwise_distance/cosine/blocks": lambda fs: ops.pairwise_distance([(f[:, :1], f[:, 1:]) for f in fs], "cosine"),
    "gather_channels": lambda fs: ops.gather_channels(fs, [torch.arange(0, f.shape[0], 2) for f in fs], 0),
    "kmeans_lloyd": lambda fs: ops.kmeans_lloyd(fs, [f[:3] for f in fs], 5),
    "ward_linkage": lambda fs: ops.ward_linkage([torch.cdist(f, f) for f in fs]),
    "cluster.kmeans": lambda fs: kmeans(fs),
    "cluster.kmeans/torch": lambda fs: kmeans(fs, backend="torch"),
    "cluster.kmeans/init": lambda fs: kmeans(fs, init=[f[:3] for f in fs]),
    "cluster.ward": lambda fs: cluster.ward(fs, n_clusters=4, return_linkage=True),
    "cluster.linkage": lambda fs: cluster.linkage(fs, torch.float32),
}


def tensors(out):
    """The tensors of a nested result, in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in tensors(o)]


@pytest.fixture(scope="module")
def resnet18_filters(tv_model):
    """The flattened filters of the convs of torchvision's resnet18 up to layer2 (10 problems, up to
    128 x 1152), as a user writes them: views of parameters that require grad."""
    model = tv_model("resnet18")
    parts = (model.conv1, model.layer1, model.layer2)
    return [m.weight.flatten(1) for part in parts for m in part.modules() if isinstance(m, torch.nn.Conv2d)]


@pytest.mark.parametrize("grad", ["enabled", "no_grad"])
@pytest.mark.parametrize("name", CALLS)
def test_model_parameters_are_accepted_and_results_do_not_require_grad(resnet18_filters, name, grad):
    fs = resnet18_filters
    assert all(f.requires_grad for f in fs) and len(fs) >= 3  # 3 or more: the CPU ops' threads took part
    with torch.no_grad() if grad == "no_grad" else torch.enable_grad():
        got = tensors(CALLS[name](fs))
    want = tensors(CALLS[name]([f.detach() for f in fs]))
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        assert not g.requires_grad and g.grad_fn is None
        assert torch.equal(g, w)


# The registered ops themselves, as C++ or torch.ops callers reach them (no Python wrapper detaching).
RAW = {
    "pairwise_distance": lambda fs: torch.ops.pyprune_fast.pairwise_distance(fs, "euclidean", None),
    "gather_channels": lambda fs: torch.ops.pyprune_fast.gather_channels(
        fs, [torch.arange(0, f.shape[0], 2) for f in fs], [0]),
    "kmeans_lloyd": lambda fs: torch.ops.pyprune_fast.kmeans_lloyd(fs, [f[:3].detach() for f in fs], 5, False, []),
    "ward_linkage": lambda fs: torch.ops.pyprune_fast.ward_linkage([torch.cdist(f, f) for f in fs]),
}


@pytest.mark.parametrize("grad", ["enabled", "no_grad"])
@pytest.mark.parametrize("name", RAW)
def test_registered_ops_read_parameters_on_every_thread(resnet18_filters, name, grad):
    """The kernels' own ATen calls run below autograd, on the calling thread and on the workers."""
    fs = resnet18_filters
    with torch.no_grad() if grad == "no_grad" else torch.enable_grad():
        got = tensors(RAW[name](fs))
    want = tensors(RAW[name]([f.detach() for f in fs]))
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def test_compiled_with_a_parameter_the_ops_add_no_gradient():
    """torch.compile (through AOTAutograd) keeps the detach: the other terms' gradient only."""
    w = torch.nn.Parameter(torch.randn(8, 5))

    def f(w):
        d = ops.pairwise_distance([w, w * 2, w[:3]])
        return (w * 3).sum() + d[0].sum() + d[2].sum()

    out = torch.compile(f, fullgraph=True, backend="aot_eager")(w)
    torch.testing.assert_close(out, f(w))
    out.backward()
    assert torch.equal(w.grad, torch.full_like(w, 3.0))


def conv_pair(tv_model):
    model = tv_model("resnet18")
    return model.layer1[0].conv1.weight, model.layer1[0].conv2.weight  # conv2 reads conv1's 64 channels


def test_merge_channels_into_a_parameter_needs_no_grad(tv_model):
    _, w = conv_pair(tv_model)
    before = w.detach().clone()
    assignment, keep = torch.arange(64) % 32, torch.arange(32)
    with pytest.raises(ValueError, match=r"merge_channels_: xs\[0\] requires grad and grad mode is on; .* "
                                         r"call it under torch.no_grad\(\)"):
        ops.merge_channels_(w, assignment, keep, 1)
    assert torch.equal(w.detach(), before), "nothing written"
    version = w._version
    with torch.no_grad():
        assert ops.merge_channels_(w, assignment, keep, 1) is w
    want = _reference.merge_channels_(before.clone(), assignment, keep, 1)
    assert torch.equal(w.detach(), want)
    assert w.requires_grad and w.is_leaf and w.grad_fn is None
    assert w._version > version, "autograd sees the edit, as it sees any in-place change"


def test_gather_channels_of_parameters_with_weights_and_indices_requiring_nothing(tv_model):
    conv1, conv2 = conv_pair(tv_model)
    keep = torch.tensor([5, 0, 63])
    a, b = ops.gather_channels([conv1, conv2], keep, [0, 1])
    assert torch.equal(a, conv1.detach()[keep]) and torch.equal(b, conv2.detach()[:, keep])
    assert not a.requires_grad and not b.requires_grad


# ---- CUDA tensors and builds without CUDA kernels ----

def test_missing_cuda_kernels_are_explained_with_how_to_rebuild():
    why = ops.missing_kernels("cuda", {"with_cuda": False, "cuda": None})
    for needed in ("no CUDA kernels", "build_info()['with_cuda'] is False", "FORCE_CUDA=1", "TORCH_CUDA_ARCH_LIST",
                   "pip install -v --no-build-isolation ."):
        assert needed in why, needed


@pytest.mark.parametrize("device_type,with_cuda", [("cuda", True), ("cpu", False), ("cpu", True), ("meta", False)])
def test_builds_have_kernels_for_these_devices(device_type, with_cuda):
    assert ops.missing_kernels(device_type, {"with_cuda": with_cuda}) is None


def test_cpu_tensors_pass_the_check_of_this_build():
    assert ops.missing_kernels("cpu", ppf.build_info()) is None
    x = torch.randn(5, 3)
    torch.testing.assert_close(ops.pairwise_distance(x), _reference.pairwise_distance(x))


@pytest.mark.needs_cuda
def test_cuda_tensors_run_or_are_told_the_build_lacks_cuda():
    """On a GPU machine: a CUDA build runs the op there; a CPU-only build says so, and how to rebuild."""
    x = torch.randn(5, 3, device="cuda")
    if ppf.build_info()["with_cuda"]:
        assert ops.pairwise_distance(x).device == x.device
    else:
        with pytest.raises(ValueError, match=r"pairwise_distance: xs\[0\] is on cuda:0, but this build .* no CUDA "
                                             r"kernels .* FORCE_CUDA=1"):
            ops.pairwise_distance(x)


def test_merge_channels_of_a_tensor_saved_for_backward_is_seen_by_autograd():
    y = torch.randn(4, 5, requires_grad=True)
    z = y * 1
    s = z.sin()  # saves z for its backward
    with torch.no_grad():
        ops.merge_channels_(z, torch.tensor([0, 1, 0, 2, 1]), torch.tensor([0, 4, 3]), 1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        s.sum().backward()
