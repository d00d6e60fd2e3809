import importlib
import sys
import types
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_rand_score

from helpers import cpu_and_cuda
from pyprune_fast import _reference, cluster, ops

CPU_BACKENDS = ["native", "torch", "faiss"]


def blobs(n_per, centers, dim, spread=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(centers, dim, generator=g) * 10
    x = torch.cat([means[i] + spread * torch.randn(n_per, dim, generator=g) for i in range(centers)])
    return x, torch.arange(centers).repeat_interleave(n_per)


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


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 20), d=st.integers(1, 5), r=st.integers(0, 19), c=st.integers(0, 4),
       value=st.sampled_from([float("nan"), float("inf"), -float("inf")]), in_centroids=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_property_non_finite_values_are_refused(n, d, r, c, value, in_centroids, dtype):
    """kmeans_lloyd (and the batched loop) on a NaN or Inf anywhere: a ValueError naming the problem
    and the entry, the inputs untouched."""
    xs = [torch.randn(6, d, dtype=dtype), torch.randn(n, d, dtype=dtype)]
    cs = [xs[0][:2].clone(), xs[1][:1].clone()]
    target = cs[1] if in_centroids else xs[1]
    r, c = r % target.shape[0], c % d
    target[r, c] = value
    name = "centroids" if in_centroids else "xs"
    before = [t.clone() for t in xs + cs]
    for op in (ops.kmeans_lloyd, lambda *a: batched(*a, 1)):
        with pytest.raises(ValueError, match=rf"kmeans_lloyd: {name}\[1\] holds {value} at \[{r}, {c}\] \(problem 1\)"):
            op(xs, cs, 3, False)
        for a, b in zip(xs + cs, before):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def test_faiss_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        cluster.kmeans(torch.randn(10, 3), 2, backend="faiss")
    cluster.kmeans(torch.randn(10, 3), 2)  # auto still works


def test_opcheck():
    xs = [torch.randn(20, 4), torch.randn(9, 3, dtype=torch.float64)]
    cs = [xs[0][:5].clone(), xs[1][:2].clone()]
    torch.library.opcheck(torch.ops.pyprune_fast.kmeans_lloyd.default, (xs, cs, 4, False))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), d=st.integers(1, 8), k=st.integers(1, 70), seed=st.integers(0, 1000))
def test_property_native_equals_reference(n, d, k, seed):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    a = cluster.kmeans(x, k, seed=seed, backend="native")
    b = cluster.kmeans(x, k, seed=seed, backend="torch")
    assert a.inertia == pytest.approx(b.inertia, rel=1e-4, abs=1e-6)
    assert a.labels.shape == (n,) and int(a.labels.max()) < min(k, n)


# ---- the batched loop (CUDA's kmeans_lloyd) as ATen ops on any device: _kmeans_lloyd_batched ----

batched = torch.ops.pyprune_fast._kmeans_lloyd_batched.default
kmeans_module = importlib.import_module("pyprune_fast.cluster.kmeans")  # `cluster.kmeans` is the function

# (N, D, k): duplicates make buckets of several problems; k = 1, k = N, k > N, N = 0 and D = 0 included
SHAPES = [(64, 27, 32), (40, 9, 1), (12, 5, 12), (6, 4, 10), (0, 7, 3), (128, 50, 64), (33, 3, 7), (20, 2, 19), (9, 0, 2)]


def problem_list(seed, count=10, spherical=False, device="cpu"):
    """Problems drawn from SHAPES, some float64, with initial centroids: distinct points, or random ones for k > N."""
    g = torch.Generator().manual_seed(seed)
    xs, cs = [], []
    for j in torch.randint(len(SHAPES), (count,), generator=g).tolist():
        n, d, k = SHAPES[j]
        dtype = torch.float64 if torch.rand(1, generator=g) < 0.3 else torch.float32
        x = torch.randn(n, d, generator=g, dtype=dtype)
        if spherical:
            x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        c = x[torch.randperm(n, generator=g)[:k]].clone() if k <= n else torch.randn(k, d, generator=g, dtype=dtype)
        xs.append(x.to(device))
        cs.append(c.to(device))
    return xs, cs


def check_against_reference(xs, cs, niter, spherical, result):
    """Inertia as the torch reference's (rel 1e-4; abs 1e-5 for the near-zero k >= N case); labels as the
    CPU kernel's when k < N (k >= N: points tie between copies of themselves, rounding picks one)."""
    labels, cents, inertia = result
    assert len(labels) == len(cents) == inertia.shape[0] == len(xs)
    cpu_labels, _, _ = ops.kmeans_lloyd([x.cpu() for x in xs], [c.cpu() for c in cs], niter, spherical)
    for i, (x, c) in enumerate(zip(xs, cs)):
        assert labels[i].dtype == torch.int64 and labels[i].device == x.device and cents[i].dtype == x.dtype
        assert cents[i].shape == c.shape
        if x.shape[0] == 0:
            assert labels[i].shape == (0,) and torch.equal(cents[i], c) and float(inertia[i]) == 0.0
            continue
        _, _, ref = _reference.kmeans_lloyd(x.cpu(), c.cpu(), niter, spherical)
        assert float(inertia[i]) == pytest.approx(ref, rel=1e-4, abs=1e-5), i
        if c.shape[0] < x.shape[0]:
            assert torch.equal(labels[i].cpu(), cpu_labels[i]), i


@pytest.mark.parametrize("spherical", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_batched_matches_reference_on_mixed_problem_lists(seed, spherical):
    xs, cs = problem_list(seed, spherical=spherical)
    check_against_reference(xs, cs, 25, spherical, batched(xs, cs, 25, spherical, 1 + seed))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), count=st.integers(1, 8), niter=st.integers(0, 12), sync_every=st.integers(1, 5),
       spherical=st.booleans())
def test_property_batched_equals_reference(seed, count, niter, sync_every, spherical):
    xs, cs = problem_list(seed, count, spherical)
    check_against_reference(xs, cs, niter, spherical, batched(xs, cs, niter, spherical, sync_every))


def test_batched_converged_problems_stay_frozen():
    """One bucket: planted blobs from their centres converge at once, random problems go on; every problem
    ends as it does alone, whenever the host reads the flags."""
    blob, _ = blobs(20, 10, 2)
    slow = [torch.randn(200, 2) for _ in range(2)]  # 2-D points: Lloyd takes many small steps
    xs = [slow[0], blob, slow[1]]
    cs = [slow[0][:10].clone(), blob[::20].clone(), slow[1][:10].clone()]
    labels_after = lambda x, c, niter: _reference.kmeans_lloyd(x, c, niter, False)[0]  # noqa: E731
    assert torch.equal(labels_after(blob, cs[1], 1), labels_after(blob, cs[1], 30))
    for x, c in zip(slow, cs[::2]):
        assert not torch.equal(labels_after(x, c, 3), labels_after(x, c, 30))
    alone = [batched([x], [c], 30, False) for x, c in zip(xs, cs)]
    for sync_every in (1, 2, 7, 100):
        labels, cents, inertia = batched(xs, cs, 30, False, sync_every)
        for i, (lab, cent, tot) in enumerate(alone):
            assert torch.equal(labels[i], lab[0]) and torch.equal(cents[i], cent[0]), (sync_every, i)
            assert float(inertia[i]) == float(tot[0])
    torch.testing.assert_close(cents[1], blob.view(10, 20, 2).mean(1))
    check_against_reference(xs, cs, 30, False, (labels, cents, inertia))


def test_batched_finds_planted_clusters_like_the_reference():
    problems = [blobs(20, 5, 8, seed=s) for s in range(4)]  # one shape: one bucket
    xs = [x for x, _ in problems]
    cs = [cluster.init_centroids(x, 5, "k-means++", seed=i) for i, x in enumerate(xs)]
    labels, _, _ = batched(xs, cs, 25, False)
    for (x, truth), c, lab in zip(problems, cs, labels):
        assert torch.equal(lab, _reference.kmeans_lloyd(x, c, 25, False)[0])
        assert adjusted_rand_score(truth, lab) == 1.0


def test_batched_is_deterministic_and_leaves_inputs_alone():
    xs, cs = problem_list(7, count=12)
    before = [c.clone() for c in cs]
    a, b = batched(xs, cs, 25, False), batched(xs, cs, 25, False)
    assert all(torch.equal(u, v) for u, v in zip(a[0] + a[1] + [a[2]], b[0] + b[1] + [b[2]]))
    assert all(torch.equal(c, c0) for c, c0 in zip(cs, before))


def test_batched_bad_inputs():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="sync_every must be >= 1, got 0"):
        batched([x], [x[:2]], 3, False, 0)
    with pytest.raises(ValueError, match=r"centroids\[0\] must be k x 3"):
        batched([x], [torch.randn(2, 4)], 3, False)
    with pytest.raises(ValueError, match="niter must be >= 0"):
        batched([x], [x[:2]], -1, False)


def test_batched_opcheck():
    xs = [torch.randn(20, 4), torch.randn(20, 4), torch.randn(9, 3, dtype=torch.float64)]
    cs = [xs[0][:5].clone(), xs[1][:5].clone(), xs[2][:2].clone()]
    torch.library.opcheck(batched, (xs, cs, 4, False, 2))


# ---- CUDA: the batched kernel against the CPU kernel, the reference and its own ATen loop ----


@pytest.mark.needs_cuda
@pytest.mark.parametrize("spherical", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_cuda_matches_reference_on_mixed_problem_lists(seed, spherical):
    xs, cs = problem_list(seed, spherical=spherical, device="cuda")
    check_against_reference(xs, cs, 25, spherical, ops.kmeans_lloyd(xs, cs, 25, spherical))


@pytest.mark.needs_cuda
def test_cuda_fused_epilogue_matches_the_aten_loop():
    xs, cs = problem_list(11, count=16, device="cuda")
    fused, aten = ops.kmeans_lloyd(xs, cs, 25), batched(xs, cs, 25, False)
    for x, c, a, b, ia, ib in zip(xs, cs, fused[0], aten[0], fused[2], aten[2]):
        if c.shape[0] < x.shape[0]:
            assert torch.equal(a, b)
        assert float(ia) == pytest.approx(float(ib), rel=1e-5, abs=1e-5)


@pytest.mark.needs_cuda
def test_cuda_planted_clusters_and_determinism():
    problems = [blobs(30, 6, 16, seed=s) for s in range(5)]
    xs = [x.cuda() for x, _ in problems]
    cs = [cluster.init_centroids(x, 6, "k-means++", seed=i) for i, x in enumerate(xs)]
    runs = [ops.kmeans_lloyd(xs, cs, 25) for _ in range(2)]
    for (x, truth), c, lab in zip(problems, cs, runs[0][0]):
        assert torch.equal(lab.cpu(), _reference.kmeans_lloyd(x, c.cpu(), 25, False)[0])
        assert adjusted_rand_score(truth, lab.cpu()) == 1.0
    assert all(torch.equal(u, v) for u, v in zip(runs[0][0] + runs[0][1], runs[1][0] + runs[1][1]))
    assert torch.equal(runs[0][2], runs[1][2])


@pytest.mark.needs_cuda
def test_cuda_host_syncs_do_not_grow_with_the_problems():
    """At most one host read per iteration for all problems together (the convergence flags)."""
    niter = 10
    for count in (4, 40):
        xs = [torch.randn(256, 64, device="cuda") for _ in range(count)]
        cs = [x[:128].clone() for x in xs]
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                ops.kmeans_lloyd(xs, cs, niter)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        assert len(syncs) <= niter, (count, [str(w.message) for w in syncs])


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
