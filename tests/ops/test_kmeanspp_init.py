"""The kmeanspp_init op against _reference.kmeanspp_init: exact draws on integer-valued points (every dot
product exact in float32 and float64, so any summation order gives the same bits), draws valid up to
rounding on random points, bad arguments, and the CUDA kernel."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyprune_fast import _reference, ops

DTYPES = [torch.float32, torch.float64]


def uniforms(k, seed=0):
    return torch.rand(k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def integer_points(n, d, seed, values=3, pool=None, dtype=torch.float64):
    """n points with integer coordinates in [-values, values]; with `pool`, copies of `pool` distinct ones."""
    g = torch.Generator().manual_seed(seed)
    if pool is None:
        return torch.randint(-values, values + 1, (n, d), generator=g).to(dtype)
    rows = torch.randint(-values, values + 1, (pool, d), generator=g).to(dtype)
    return rows[torch.randint(pool, (n,), generator=g)]


def assert_same_as_reference(xs, ks, u):
    got = ops.kmeanspp_init(xs, ks, u)
    assert len(got) == len(xs)
    for x, k, idx in zip(xs, ks, got):
        assert idx.dtype == torch.int64 and idx.shape == (k,) and idx.device == x.device
        assert idx.tolist() == _reference.kmeanspp_init(x.cpu(), k, u).tolist()


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), d=st.integers(0, 12), frac=st.floats(0, 1), seed=st.integers(0, 2**31 - 1),
       pool=st.one_of(st.none(), st.integers(1, 6)), dtype=st.sampled_from(DTYPES),
       scale=st.sampled_from([1.0, 2.0**40, 2.0**-40]))
def test_property_integer_points_draw_as_the_reference(n, d, frac, seed, pool, dtype, scale):
    """Any k in [1, N] (small k: one matrix-vector product per draw; large: the Gram matrix), duplicates and
    all-equal points (pool), huge and tiny magnitudes (power-of-two scales keep every product exact)."""
    k = max(1, round(frac * n))
    x = integer_points(n, d, seed, pool=pool, dtype=dtype) * scale
    assert_same_as_reference([x], [k], uniforms(k, seed))


@pytest.mark.parametrize("dtype", DTYPES)
def test_many_problems_in_one_call_draw_as_each_alone(dtype):
    """Problems of mixed shapes and k in one call: each as the reference draws it, whatever the others."""
    shapes = [(1, 3, 1), (7, 1, 7), (40, 9, 20), (40, 9, 20), (64, 27, 3), (300, 5, 150), (5, 0, 2), (12, 4, 1)]
    xs = [integer_points(n, d, i, dtype=dtype) for i, (n, d, _) in enumerate(shapes)]
    ks = [k for _, _, k in shapes]
    assert_same_as_reference(xs, ks, uniforms(max(ks), 7))
    alone = [ops.kmeanspp_init([x], [k], uniforms(max(ks), 7))[0] for x, k in zip(xs, ks)]
    assert all(torch.equal(a, b) for a, b in zip(alone, ops.kmeanspp_init(xs, ks, uniforms(max(ks), 7))))


def test_k_equal_n_draws_every_distinct_point_once():
    x = integer_points(30, 4, 3, values=50, dtype=torch.float32)
    idx = ops.kmeanspp_init([x], 30, uniforms(30))[0]
    assert sorted(idx.tolist()) == list(range(30))  # distinct points: never a zero-distance draw before all are in


def test_all_equal_points_draw_uniformly():
    u = uniforms(6, 5)
    idx = ops.kmeanspp_init([torch.full((10, 3), 0.7)], [6], u)[0]
    assert idx.tolist() == [min(int(v * 10), 9) for v in u.tolist()]


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_points(dtype):
    base = integer_points(50, 16, 11, dtype=dtype)
    for x in (base[:, ::2], base.t().contiguous().t(), base[::2]):  # strided columns, column-major, strided rows
        assert_same_as_reference([x], [x.shape[0] // 2], uniforms(x.shape[0] // 2))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 300), d=st.integers(1, 40), frac=st.floats(0, 1), seed=st.integers(0, 2**31 - 1),
       dtype=st.sampled_from(DTYPES))
def test_property_random_points_draw_validly(n, d, frac, seed, dtype):
    """Gaussian points: every draw is the inverse-CDF draw of the float64 distances to the op's own earlier
    draws, up to rounding (relative 1e-4 of the total); float64 draws equal the reference's."""
    k = max(1, round(frac * n))
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 10.0 ** (seed % 7 - 3)
    u = uniforms(k, seed)
    idx = ops.kmeanspp_init([x], [k], u)[0]
    assert_valid_draws(x, idx, u)
    if dtype == torch.float64:
        assert idx.tolist() == _reference.kmeanspp_init(x, k, u).tolist()


def assert_valid_draws(x, idx, u, rtol=1e-4):
    p = x.double().cpu()
    idx = idx.cpu().tolist()
    n = p.shape[0]
    assert idx[0] == min(int(u[0] * n), n - 1)
    d2 = ((p - p[idx[0]]) ** 2).sum(1)
    for t in range(1, len(idx)):
        cdf = d2.cumsum(0)
        total = float(cdf[-1])
        i = idx[t]
        if total > rtol * float((p * p).sum(1).max()):
            target, tol = float(u[t]) * total, rtol * total
            assert float(cdf[i]) > target - tol and (i == 0 or float(cdf[i - 1]) <= target + tol), (t, i)
        d2 = torch.minimum(d2, ((p - p[i]) ** 2).sum(1))


def test_bad_arguments():
    x = torch.randn(5, 3)
    u = uniforms(5)
    with pytest.raises(ValueError, match=r"kmeanspp_init: k\[0\] must be in \[1, N\] with N = 5 points in xs\[0\], got 6"):
        ops.kmeanspp_init([x], [6], uniforms(6))
    with pytest.raises(ValueError, match=r"k\[1\] must be in \[1, N\] with N = 5 points in xs\[1\], got 0"):
        ops.kmeanspp_init([x, x], [1, 0], u)
    with pytest.raises(ValueError, match=r"k\[0\] must be in \[1, N\] with N = 0 points"):
        ops.kmeanspp_init([torch.empty(0, 3)], [1], u)
    with pytest.raises(ValueError, match="got 2 problems but 1 values of k"):
        ops.kmeanspp_init([x, x], [2], u)
    with pytest.raises(TypeError, match=r"xs\[0\] must be float32 or float64, got Half"):
        ops.kmeanspp_init([x.half()], [2], u)
    with pytest.raises(TypeError, match=r"all tensors must have one dtype, but xs\[0\] is Float and xs\[1\] is Double"):
        ops.kmeanspp_init([x, x.double()], [2, 2], u)
    with pytest.raises(ValueError, match=r"xs\[0\] must be 2-D"):
        ops.kmeanspp_init([x[0]], [1], u)
    with pytest.raises(TypeError, match="uniforms must be float64, got Float"):
        ops.kmeanspp_init([x], [2], u.float())
    with pytest.raises(ValueError, match=r"uniforms must be 1-D with at least max k = 4 entries, got shape \[3\]"):
        ops.kmeanspp_init([x], [4], u[:3])
    with pytest.raises(TypeError, match="k must be an int or a list of ints"):
        ops.kmeanspp_init([x], 2.0, u)
    assert ops.kmeanspp_init([], [], u) == []


def test_opcheck():
    xs = [torch.randn(20, 4), torch.randn(9, 4)]
    for return_gram in (False, True):
        torch.library.opcheck(torch.ops.pyprune_fast.kmeanspp_init.default, (xs, [5, 9], uniforms(9), return_gram))


@pytest.mark.parametrize("dtype", DTYPES)
def test_return_gram_hands_back_the_gram_matrix_the_draws_read(dtype):
    """Same draws with and without return_gram; X X^T where the draws read it (k >= N/4, k > 1), else None."""
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(n, d, generator=g, dtype=dtype) * s for n, d, s in [(40, 9, 1.0), (40, 9, 1e5), (40, 9, 1e-5),
                                                                         (40, 9, 1.0), (40, 9, 1.0), (30, 2, 1.0)]]
    ks = [20, 10, 40, 1, 5, 30]
    u = uniforms(40)
    idx, grams = ops.kmeanspp_init(xs, ks, u, return_gram=True)
    assert all(torch.equal(a, b) for a, b in zip(idx, ops.kmeanspp_init(xs, ks, u)))
    for x, k, gm in zip(xs, ks, grams):
        if k == 1 or 4 * k < x.shape[0]:
            assert gm is None
        else:
            assert gm.dtype == dtype and gm.shape == (x.shape[0], x.shape[0])
            torch.testing.assert_close(gm, x @ x.T, rtol=1e-5, atol=1e-6 * float(x.abs().max()) ** 2)
    assert ops.kmeanspp_init([], [], u, return_gram=True) == ([], [])


# ---- CUDA ----


@pytest.mark.needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_integer_points_draw_as_the_reference(dtype):
    """Integer points make every float64 sum exact, so the kernel's chunked running sums give the same bits."""
    shapes = [(1, 3, 1), (7, 1, 7), (40, 9, 20), (64, 27, 3), (300, 5, 150), (2048, 64, 1024), (5, 0, 2)]
    xs = [integer_points(n, d, i, pool=None if i % 2 else 4, dtype=dtype).cuda() for i, (n, d, _) in enumerate(shapes)]
    ks = [k for _, _, k in shapes]
    assert_same_as_reference(xs, ks, uniforms(max(ks), 3))


@pytest.mark.needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_random_points_draw_validly(dtype):
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(n, d, generator=g, dtype=dtype).cuda() for n, d in [(500, 30), (64, 576), (3, 2)]]
    ks = [250, 32, 3]
    u = uniforms(250, 1)
    for x, idx in zip(xs, ops.kmeanspp_init(xs, ks, u)):
        assert_valid_draws(x, idx, u)
    with pytest.raises(ValueError, match="uniforms is on cpu but the tensors are on cuda"):
        torch.ops.pyprune_fast.kmeanspp_init(xs, ks, u)


def test_cluster_init_uses_the_op_for_every_dtype():
    """cluster.init_all's k-means++: the op's draws, one call per dtype (half precision drawn in float32)."""
    from pyprune_fast import cluster

    xs = [integer_points(20, 3, 0), integer_points(30, 5, 1, dtype=torch.float32), integer_points(9, 2, 2).half()]
    ks = [7, 4, 9]
    got = cluster.init_all(xs, ks, "k-means++", seed=4)
    for x, k, c in zip(xs, ks, got):
        assert c.dtype == x.dtype and torch.equal(c, x[_reference.kmeanspp_init(x.float(), k, uniforms(9, 4))])
    with pytest.raises(ValueError, match=r"k-means\+\+ draws k in \[1, N\] points, got k = 21 for xs\[0\] of 20"):
        cluster.init_all(xs[:1], [21])
