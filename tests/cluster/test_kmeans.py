"""cluster.kmeans and its initialisations: every backend, planted clusters, bad inputs, faiss."""

import importlib
import sys
import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_rand_score

from clustering import blobs
from helpers import cpu_and_cuda
from pyprune_fast import cluster, ops


CPU_BACKENDS = ["native", "torch", "faiss"]


kmeans_module = importlib.import_module("pyprune_fast.cluster.kmeans")  # `cluster.kmeans` is the function


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_planted_clusters_are_found(backend):
    x, truth = blobs(40, 6, 16)
    res = cluster.kmeans(x, 6, backend=backend, seed=3)
    assert adjusted_rand_score(truth, res.labels) == 1.0
    assert res.centroids.shape == (6, 16) and res.labels.dtype == torch.int64


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_native_matches_reference_from_the_same_init(device):
    xs = [torch.randn(n, d, device=device) for n, d in [(128, 27), (64, 300), (200, 9), (33, 5)]]
    ks = [64, 20, 100, 7]
    inits = [cluster.init_centroids(x, k, "random", seed=1) for x, k in zip(xs, ks)]
    native = cluster.kmeans(xs, ks, init=inits, backend="native")
    ref = cluster.kmeans(xs, ks, init=inits, backend="torch")
    for a, b in zip(native, ref):
        assert a.inertia == pytest.approx(b.inertia, rel=1e-2)
        assert a.labels.device == xs[0].device
    faiss_res = cluster.kmeans([x.cpu() for x in xs], ks, init=[c.cpu() for c in inits], backend="faiss")
    for a, b in zip(native, faiss_res):
        assert a.inertia == pytest.approx(b.inertia, rel=1e-2)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_deterministic(device):
    x = torch.randn(300, 20, device=device)
    runs = [cluster.kmeans(x, 37, seed=5) for _ in range(2)]
    assert torch.equal(runs[0].labels, runs[1].labels) and torch.equal(runs[0].centroids, runs[1].centroids)
    other = cluster.kmeans(x, 37, seed=6)
    assert not torch.equal(other.centroids, runs[0].centroids)


def test_edge_cases():
    x = torch.randn(10, 3)
    alone = cluster.kmeans(x, 10)
    assert torch.equal(alone.labels, torch.arange(10)) and alone.inertia == 0.0
    assert torch.equal(cluster.kmeans(x, 50).centroids, x)
    one = cluster.kmeans(x, 1)
    torch.testing.assert_close(one.centroids[0], x.mean(0))
    dup = torch.cat([torch.ones(20, 4), -torch.ones(20, 4)])
    res = cluster.kmeans(dup, 2, init="random", seed=0)
    assert res.inertia == pytest.approx(0.0, abs=1e-6) and adjusted_rand_score(res.labels, [0] * 20 + [1] * 20) == 1.0
    assert cluster.kmeans([], 3) == []


def test_empty_cluster_is_reseeded_with_the_farthest_point():
    x = torch.cat([0.1 * torch.randn(10, 2), torch.full((1, 2), 5.0)])  # distinct points
    init = torch.tensor([[0.0, 0.0], [100.0, 100.0], [-100.0, 0.0]])  # two centroids far from every point
    for backend in ("native", "torch"):
        res = cluster.kmeans(x, 3, init=[init], niter=5, backend=backend)
        assert torch.bincount(res.labels, minlength=3).min() >= 1, backend


def test_spherical():
    x, truth = blobs(30, 4, 8, spread=0.05)
    res = cluster.kmeans(x, 4, spherical=True, seed=2)
    torch.testing.assert_close(res.centroids.norm(dim=1), torch.ones(4))
    assert adjusted_rand_score(truth, res.labels) == 1.0


def test_bad_inputs():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match=r"xs\[0\] must be 2-D"):
        cluster.kmeans(torch.randn(10), 2)
    with pytest.raises(ValueError, match=r"kmeans: xs\[1\] holds nan at \[0, 0\]; points must be finite"):
        cluster.kmeans([x, torch.full((4, 3), float("nan"))], 2)
    with pytest.raises(ValueError, match="every k must be a positive int"):
        cluster.kmeans(x, 0)
    with pytest.raises(ValueError, match="k has 3 entries for 2 problems"):
        cluster.kmeans([x, x], [2, 2, 2])
    with pytest.raises(ValueError, match="backend must be one of"):
        cluster.kmeans(x, 2, backend="gpu")
    with pytest.raises(ValueError, match=r"init\[0\] must have shape \(2, 3\)"):
        cluster.kmeans(x, 2, init=[torch.randn(3, 3)])
    with pytest.raises(ValueError, match="init must be"):
        cluster.kmeans(x, 2, init="kmeans")
    with pytest.raises(TypeError, match=r"xs\[0\] must be float32 or float64, got Half"):
        ops.kmeans_lloyd([x.half()], [x[:2].half()], 3)
    with pytest.raises(ValueError, match=r"centroids\[0\] must be k x 3"):
        ops.kmeans_lloyd([x], [torch.randn(2, 4)], 3)


def test_faiss_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        cluster.kmeans(torch.randn(10, 3), 2, backend="faiss")
    cluster.kmeans(torch.randn(10, 3), 2)  # auto still works


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), d=st.integers(1, 8), k=st.integers(1, 70), seed=st.integers(0, 1000))
def test_property_native_equals_reference(n, d, k, seed):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    a = cluster.kmeans(x, k, seed=seed, backend="native")
    b = cluster.kmeans(x, k, seed=seed, backend="torch")
    assert a.inertia == pytest.approx(b.inertia, rel=1e-4, abs=1e-6)
    assert a.labels.shape == (n,) and int(a.labels.max()) < min(k, n)


@pytest.mark.needs_cuda
def test_faiss_gpu_backend():
    faiss = pytest.importorskip("faiss")
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        pytest.skip("the installed faiss has no GPU support")
    xs = [torch.randn(n, d, device="cuda") for n, d in [(128, 27), (64, 300)]]
    ks = [64, 20]
    inits = [cluster.init_centroids(x, k, "random", seed=1) for x, k in zip(xs, ks)]
    res = cluster.kmeans(xs, ks, init=inits, backend="faiss")
    ref = cluster.kmeans(xs, ks, init=inits, backend="torch")
    for a, b in zip(res, ref):
        assert a.labels.device.type == "cuda" and a.inertia == pytest.approx(b.inertia, rel=1e-2)
    shared = kmeans_module._faiss_gpu_resources
    cluster.kmeans(xs, ks, init=inits, backend="faiss")
    assert shared is not None and kmeans_module._faiss_gpu_resources is shared


def test_faiss_index_choice(monkeypatch):
    """GPU index with one shared StandardGpuResources for CUDA points when faiss has GPU support; else CPU."""
    made = []

    class Config:
        device = -1

    fake = types.SimpleNamespace(
        StandardGpuResources=lambda: made.append(object()) or made[-1], get_num_gpus=lambda: 1,
        GpuIndexFlatConfig=Config, GpuIndexFlatL2=lambda res, d, cfg: ("gpu-L2", res, d, cfg.device),
        GpuIndexFlatIP=lambda res, d, cfg: ("gpu-IP", res, d, cfg.device), IndexFlatL2=lambda d: ("L2", d),
        IndexFlatIP=lambda d: ("IP", d))
    monkeypatch.setattr(kmeans_module, "_faiss_gpu_resources", None)
    index = kmeans_module._faiss_index
    assert index(fake, 8, False, torch.device("cuda", 1)) == ("gpu-L2", made[0], 8, 1)
    assert index(fake, 4, True, torch.device("cuda", 0)) == ("gpu-IP", made[0], 4, 0)
    assert len(made) == 1
    assert index(fake, 8, True, torch.device("cpu")) == ("IP", 8)
    fake.get_num_gpus = lambda: 0  # a faiss build with GPU code but no GPU
    assert index(fake, 8, False, torch.device("cuda", 0)) == ("L2", 8)
    del fake.StandardGpuResources  # faiss-cpu
    assert index(fake, 8, False, torch.device("cuda", 0)) == ("L2", 8)


def test_kmeanspp_batched_equals_each_problem_alone():
    xs = [torch.randn(40, 6) for _ in range(5)] + [torch.randn(25, 6), torch.randn(40, 3)]
    ks = [7, 7, 7, 7, 3, 7, 7]
    batched = cluster.init_all(xs, ks, "k-means++", seed=3)
    for x, k, c in zip(xs, ks, batched):
        alone = cluster.init_centroids(x, k, "k-means++", seed=3)
        assert torch.equal(c, alone)
        rows = [(x == r).all(1).nonzero().squeeze(1).tolist() for r in c]  # every centroid is a point
        assert all(len(r) == 1 for r in rows) and len({r[0] for r in rows}) == k  # distinct points


def test_kmeanspp_seeds_one_centroid_per_separated_blob_and_handles_identical_points():
    centres = torch.randn(6, 4) * 100
    x = centres.repeat_interleave(10, 0) + 0.01 * torch.randn(60, 4)
    c = cluster.init_centroids(x, 6, "k-means++", seed=0)
    assert len(set(torch.cdist(c, centres).argmin(1).tolist())) == 6
    same = torch.ones(8, 3)
    assert torch.equal(cluster.init_centroids(same, 3, "k-means++", seed=0), torch.ones(3, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_default_iterates_from_the_seeding_gram_like_from_its_rows(dtype):
    """Defaults (k-means++, native, CPU): the iterations run from the seeding's Gram matrices where that pays
    (conv-layer shapes, k = N/2; not for D = 9) and give what the same seeds give as centroids, and what the
    reference gives."""
    g = torch.Generator().manual_seed(7)
    xs = [torch.randn(n, d, generator=g, dtype=dtype) for n, d in [(64, 72), (128, 9), (32, 288), (96, 64)]]
    xs[3] = xs[3][torch.randint(20, (96,), generator=g)]  # duplicates: empty clusters along the way
    ks = [x.shape[0] // 2 for x in xs]
    fast = cluster.kmeans(xs, ks)
    rows = cluster.kmeans(xs, ks, init=cluster.init_all(xs, ks))
    ref = cluster.kmeans(xs, ks, backend="torch")
    for i, (a, b, c) in enumerate(zip(fast, rows, ref)):
        assert a.labels.dtype == torch.int64 and a.centroids.dtype == dtype and a.centroids.shape == b.centroids.shape
        assert a.inertia == pytest.approx(b.inertia, rel=1e-4, abs=1e-3)  # all-duplicate problem: ~0 after rounding
        assert a.inertia == pytest.approx(c.inertia, rel=1e-4, abs=1e-3)
        if i < 3:  # copies of points tie, and rounding picks among them
            assert torch.equal(a.labels, b.labels)
            torch.testing.assert_close(a.centroids, b.centroids, rtol=1e-4, atol=1e-5)
