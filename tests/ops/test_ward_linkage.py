"""The ward_linkage op: scipy's tree bit for bit on the same distances, the naive reference, bad inputs."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.cluster.hierarchy import linkage
from scipy.spatial.distance import pdist, squareform

from clustering import assert_same_tree, points
from pyprune_fast import _reference, ops


@pytest.mark.parametrize("n", [2, 3, 5, 17, 64, 200, 513, 1000])
def test_op_equals_scipy_bitwise_on_the_same_distances(n):
    y = pdist(points(n, 7).numpy())
    ours = ops.ward_linkage([torch.from_numpy(squareform(y))])[0]
    assert np.array_equal(ours.numpy(), linkage(y, "ward"))


def test_op_with_ties_gives_a_valid_tree():
    # Points on a small grid: many duplicates and equal distances. Ties may be broken differently from
    # scipy (the issue asks for equality on tie-free input only), but the tree must be a valid one.
    from scipy.cluster.hierarchy import is_valid_linkage

    for _ in range(100):
        n = int(torch.randint(2, 40, ()))
        x = torch.randint(0, 3, (n, 2)).double().numpy()
        ours = ops.ward_linkage([torch.from_numpy(squareform(pdist(x)))])[0].numpy()
        assert is_valid_linkage(ours) and ours[-1, 3] == n
        assert np.all(np.diff(ours[:, 2]) >= 0)
        np.testing.assert_allclose(np.sort(ours[:, 2]), np.sort(linkage(pdist(x), "ward")[:, 2]), rtol=1e-12, atol=1e-12)


def assert_valid_linkage(z: np.ndarray, n: int):
    """scipy's validity check, plus every row's size being its two children's added up."""
    from scipy.cluster.hierarchy import is_valid_linkage

    assert is_valid_linkage(z)
    size = np.ones(2 * n - 1)
    for r, (a, b, _, m) in enumerate(z):
        size[n + r] = size[int(a)] + size[int(b)]
        assert m == size[n + r], (r, m, size[n + r])


def test_op_all_distances_equal():
    d = torch.ones(60, 60, dtype=torch.float64).fill_diagonal_(0)
    ours = ops.ward_linkage([d])[0].numpy()
    assert_valid_linkage(ours, 60)
    assert np.array_equal(ours, linkage(squareform(d.numpy()), "ward"))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 70), levels=st.integers(1, 3), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**31 - 1))
def test_property_tied_distances_give_scipys_valid_tree(n, levels, scale, seed):
    """Distances taking one to three values (ties everywhere; Lance-Williams rounding makes near-ties of
    the later heights): the tree is valid, and scipy's bit for bit."""
    y = np.random.default_rng(seed).integers(1, levels + 1, size=n * (n - 1) // 2) * scale
    ours = ops.ward_linkage([torch.from_numpy(squareform(y))])[0].numpy()
    assert_valid_linkage(ours, n)
    assert np.array_equal(ours, linkage(y, "ward"))


def test_op_float32_and_many_problems():
    sizes = [(40, 3), (1, 4), (300, 9), (0, 2), (2, 5), (77, 1)]
    xs = [points(n, d) for n, d in sizes]
    dists = [torch.from_numpy(squareform(pdist(x.numpy()))).float() for x in xs]
    outs = ops.ward_linkage(dists)
    for d, out, (n, _) in zip(dists, outs, sizes):
        assert out.shape == (max(n - 1, 0), 4) and out.dtype == torch.float64
        if n > 1:  # scipy on the float32 distances, widened
            assert np.array_equal(out.numpy(), linkage(squareform(d.double().numpy(), checks=False), "ward"))
        assert torch.equal(out, ops.ward_linkage([d])[0])


def test_op_reads_the_upper_triangle():
    d = torch.from_numpy(squareform(pdist(points(30, 4).numpy())))
    noisy = d.clone()
    lower = torch.ones(30, 30, dtype=torch.bool).tril()
    noisy[lower] = torch.rand(int(lower.sum()), dtype=torch.float64) * 50
    assert torch.equal(ops.ward_linkage([noisy])[0], ops.ward_linkage([d])[0])


def test_op_matches_naive_reference():
    for n in [2, 3, 4, 9, 25, 60]:
        d = ops.pairwise_distance(points(n, 3))
        ours, ref = ops.ward_linkage([d])[0], _reference.ward_linkage(d)
        assert torch.equal(ours[:, [0, 1, 3]], ref[:, [0, 1, 3]])
        torch.testing.assert_close(ours[:, 2], ref[:, 2], rtol=1e-12, atol=0)


def test_reference_matches_scipy():
    x = points(40, 5)
    assert_same_tree(_reference.ward_linkage(torch.from_numpy(squareform(pdist(x.numpy())))), linkage(x.numpy(), "ward"))


def test_op_small_sizes():
    assert ops.ward_linkage([]) == []
    assert ops.ward_linkage([torch.zeros(0, 0)])[0].shape == (0, 4)
    assert ops.ward_linkage([torch.zeros(1, 1)])[0].shape == (0, 4)
    d = torch.tensor([[0.0, 3.0], [3.0, 0.0]])
    assert torch.equal(ops.ward_linkage([d])[0], torch.tensor([[0.0, 1.0, 3.0, 2.0]], dtype=torch.float64))


def test_op_bad_inputs():
    good = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"ward_linkage: dists\[1\] must be a 2-D distance matrix, got 1-D"):
        ops.ward_linkage([good, torch.zeros(3)])
    with pytest.raises(ValueError, match=r"ward_linkage: dists\[0\] must be square, got 3 x 4"):
        ops.ward_linkage([torch.zeros(3, 4)])
    with pytest.raises(TypeError, match=r"ward_linkage: dists\[0\] must be a floating-point tensor, got Long"):
        ops.ward_linkage([torch.zeros(3, 3, dtype=torch.long)])
    for value, shown in [(float("nan"), "nan"), (float("inf"), "inf"), (-1.0, "-1"), (1e200, "1e\\+200")]:
        bad = torch.zeros(4, 4, dtype=torch.float64)
        bad[2, 1] = value
        with pytest.raises(ValueError, match=rf"ward_linkage: dists\[1\] holds {shown} at \[2, 1\]; distances must be"):
            ops.ward_linkage([good, bad])
        if value != 1e200:  # float32 too (where the 1e150 bound is itself inf)
            with pytest.raises(ValueError, match=rf"ward_linkage: dists\[1\] holds {shown} at \[2, 1\]; distances must"):
                ops.ward_linkage([good, bad.float()])


@pytest.mark.needs_cuda
def test_op_on_cuda_says_to_move_to_cpu():
    with pytest.raises(ValueError, match=r"ward_linkage: dists\[0\] is on cuda:0; the op runs on the CPU only"):
        torch.ops.pyprune_fast.ward_linkage([torch.zeros(3, 3, device="cuda")])


def test_opcheck_and_compile():
    dists = [ops.pairwise_distance(points(n, 3)) for n in (12, 5, 1)]
    torch.library.opcheck(torch.ops.pyprune_fast.ward_linkage.default, (dists[:2],))
    torch.library.opcheck(torch.ops.pyprune_fast.ward_linkage.default, (dists,))

    def f(a, b):
        za, zb = ops.ward_linkage([a, b])
        return za[:, 2].sum() + zb[:, 2].sum()

    got = torch.compile(f, fullgraph=True, backend="aot_eager")(*dists[:2])
    assert torch.equal(got, f(*dists[:2]))
