"""The kmeans_lloyd op: bad inputs, the batched loop (the private op _kmeans_lloyd_batched, what the CUDA
kernel runs) against the CPU kernel and _reference.kmeans_lloyd, and the CUDA kernel."""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_rand_score

from clustering import blobs
from pyprune_fast import _reference, cluster, ops


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


def test_opcheck():
    xs = [torch.randn(20, 4), torch.randn(9, 3, dtype=torch.float64)]
    cs = [xs[0][:5].clone(), xs[1][:2].clone()]
    torch.library.opcheck(torch.ops.pyprune_fast.kmeans_lloyd.default, (xs, cs, 4, False, []))


# ---- the batched loop (CUDA's kmeans_lloyd) as ATen ops on any device: _kmeans_lloyd_batched ----

batched = torch.ops.pyprune_fast._kmeans_lloyd_batched.default


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


# ---- from row indices and the Gram matrix (the seeding's): iterations in O(N^2 + N k) ----

def gram_problems(seed, dtype):
    """(x, seeds) pairs with adversarial values: duplicated points and seeds (empty clusters), k = 1, k = N,
    huge and tiny scales, well-separated and random points."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, d, k, scale in [(64, 72, 32, 1.0), (40, 960, 1, 1.0), (12, 24, 12, 1e-6), (100, 50, 50, 1e6),
                           (33, 120, 7, 1.0), (48, 48, 24, 1.0)]:  # each with 24 N <= k D: from the Gram matrix
        x = torch.randn(n, d, generator=g, dtype=dtype) * scale
        if n == 48:
            x = x[torch.randint(12, (n,), generator=g)]  # 12 distinct points, each several times
        seeds = torch.randperm(n, generator=g)[:k]
        if k == 24:
            seeds[k // 2:] = seeds[: k - k // 2]  # duplicated seeds: equal centroids, empty clusters
        out.append((x, seeds))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(3))
def test_gram_iterations_match_the_reference_and_the_points(seed, dtype):
    """From row indices and X X^T: labels and centroids as _reference.kmeans_lloyd_gram, inertia as the
    iterations from the points (the same Lloyd steps, other rounding)."""
    problems = gram_problems(seed, dtype)
    xs = [x for x, _ in problems]
    seeds = [s for _, s in problems]
    grams = [x @ x.T for x in xs]
    labels, cents, inertia = ops.kmeans_lloyd(xs, seeds, 25, grams=grams)
    _, _, from_points = ops.kmeans_lloyd(xs, [x[s] for x, s in zip(xs, seeds)], 25)
    for i, (x, s, g) in enumerate(zip(xs, seeds, grams)):
        ref_labels, ref_cents, ref = _reference.kmeans_lloyd_gram(x, g, s, 25)
        scale = float((x * x).sum(1).max())  # rounding of |x|^2 - 2 x.c + |c|^2 (copies of points: ~0)
        assert float(inertia[i]) == pytest.approx(ref, rel=1e-4, abs=1e-5 * scale * x.shape[0]), i
        assert float(inertia[i]) == pytest.approx(float(from_points[i]), rel=1e-3, abs=1e-5 * scale * x.shape[0]), i
        assert labels[i].dtype == torch.int64 and cents[i].dtype == dtype and cents[i].shape == (s.shape[0], x.shape[1])
        if s.shape[0] < x.shape[0] and s.unique().numel() == s.numel():
            assert torch.equal(labels[i], ref_labels), i
            torch.testing.assert_close(cents[i], ref_cents, rtol=1e-4, atol=1e-5 * float(x.abs().max()))


def test_the_gram_matrix_is_read_where_it_pays():
    """Given another problem's Gram matrix, the labels follow that problem where 24 N <= k D (the Gram
    matrix is read), and xs where not; the centroids are always means of the rows of xs."""
    g = torch.Generator().manual_seed(2)
    for d, k, read in [(48, 16, True), (47, 16, False), (96, 8, True), (95, 8, False)]:
        x, other = torch.randn(32, d, generator=g), torch.randn(32, d, generator=g)
        s = torch.randperm(32, generator=g)[:k]
        labels, cents, _ = ops.kmeans_lloyd([x], [s], 0, grams=[other @ other.T])
        want = _reference.kmeans_lloyd(other if read else x, (other if read else x)[s], 0, False)[0]
        assert torch.equal(labels[0], want), (d, k)
        assert torch.equal(cents[0], x[s])


def test_gram_iterations_from_the_seeding_equal_those_from_the_points():
    """kmeanspp_init(return_gram=True) hands kmeans_lloyd what it needs: same labels as from the rows."""
    g = torch.Generator().manual_seed(5)
    xs = [torch.randn(n, d, generator=g) for n, d in [(64, 576), (128, 64), (256, 1152)]]
    ks = [32, 64, 128]
    idx, grams = ops.kmeanspp_init(xs, ks, torch.rand(128, generator=g, dtype=torch.float64), return_gram=True)
    assert all(gm is not None and gm.shape == (x.shape[0],) * 2 for x, gm in zip(xs, grams))
    fast = ops.kmeans_lloyd(xs, idx, 25, grams=grams)
    slow = ops.kmeans_lloyd(xs, [x[i] for x, i in zip(xs, idx)], 25)
    for a, b in zip(fast[0], slow[0]):
        assert torch.equal(a, b)
    torch.testing.assert_close(fast[2], slow[2], rtol=1e-5, atol=0)
    for a, b in zip(fast[1], slow[1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("niter", [0, 1, 25])
def test_row_indices_without_a_gram_or_spherical_run_from_the_rows(niter):
    """Row indices are the rows themselves where the Gram matrix is not used: no Gram, spherical, k > N/...;
    results then identical to centroids given as those rows."""
    g = torch.Generator().manual_seed(niter)
    x = torch.randn(50, 8, generator=g)
    x = x / x.norm(dim=1, keepdim=True)
    s = torch.randperm(50, generator=g)[:20]
    for spherical, grams in [(False, None), (True, [x @ x.T]), (False, [None])]:
        a = ops.kmeans_lloyd([x], [s], niter, spherical, grams)
        b = ops.kmeans_lloyd([x], [x[s]], niter, spherical)
        assert torch.equal(a[0][0], b[0][0]) and torch.equal(a[1][0], b[1][0]) and torch.equal(a[2], b[2])
    c = batched([x], [s], niter, False)
    assert torch.equal(c[0][0], b[0][0]) and torch.equal(c[1][0], b[1][0])
    if niter == 0:  # the centroids are the seeds, from the Gram matrix too
        assert torch.equal(ops.kmeans_lloyd([x], [s], 0, grams=[x @ x.T])[1][0], x[s])


def test_row_indices_and_grams_bad_inputs():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match=r"centroids\[0\] holds row index 10, out of \[0, 10\)"):
        ops.kmeans_lloyd([x], [torch.tensor([1, 10])], 3)
    with pytest.raises(ValueError, match=r"centroids\[0\] holds row index -1"):
        ops.kmeans_lloyd([x], [torch.tensor([-1, 2])], 3)
    with pytest.raises(ValueError, match=r"centroids\[2\] holds row index 12, out of \[0, 10\)"):
        ops.kmeans_lloyd([x, x, x], [torch.tensor([9]), x[:2], torch.tensor([3, 12])], 3)
    with pytest.raises(ValueError, match=r"centroids\[0\] as row indices must be 1-D"):
        ops.kmeans_lloyd([x], [torch.tensor([[1, 2]])], 3)
    with pytest.raises(ValueError, match=r"grams\[0\] must be N x N with N = 10"):
        ops.kmeans_lloyd([x], [torch.tensor([1, 2])], 3, grams=[torch.randn(10, 9)])
    with pytest.raises(TypeError, match=r"grams\[0\] is Double but xs\[0\] is Float"):
        ops.kmeans_lloyd([x], [torch.tensor([1, 2])], 3, grams=[torch.randn(10, 10, dtype=torch.float64)])
    with pytest.raises(ValueError, match="got 1 problems but 2 Gram matrices"):
        ops.kmeans_lloyd([x], [torch.tensor([1, 2])], 3, grams=[x @ x.T, x @ x.T])
    with pytest.raises(TypeError, match="grams must be a list of tensors or None"):
        ops.kmeans_lloyd([x], [torch.tensor([1, 2])], 3, grams=x @ x.T)


def test_gram_opcheck():
    xs = [torch.randn(20, 4), torch.randn(9, 4)]
    cs = [torch.tensor([0, 3, 5, 7, 9]), torch.tensor([1, 2])]
    torch.library.opcheck(torch.ops.pyprune_fast.kmeans_lloyd.default, (xs, cs, 4, False, [x @ x.T for x in xs]))


@pytest.mark.needs_cuda
def test_cuda_row_indices_and_grams_match_the_cpu():
    """On CUDA row indices start the batched iterations (the Gram matrices are checked, not read)."""
    problems = gram_problems(1, torch.float32)
    xs = [x.cuda() for x, _ in problems]
    seeds = [s.cuda() for _, s in problems]
    got = ops.kmeans_lloyd(xs, seeds, 25, grams=[x @ x.T for x in xs])
    want = ops.kmeans_lloyd([x.cpu() for x in xs], [x.cpu()[s.cpu()] for x, s in zip(xs, seeds)], 25)
    for i, x in enumerate(xs):
        scale = float((x * x).sum(1).max())
        assert float(got[2][i]) == pytest.approx(float(want[2][i]), rel=1e-3, abs=1e-5 * scale * x.shape[0]), i
    assert ops.kmeanspp_init(xs, [s.shape[0] for s in seeds], torch.rand(100, dtype=torch.float64),
                             return_gram=True)[1] == [None] * len(xs)
