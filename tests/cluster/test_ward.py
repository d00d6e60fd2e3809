"""cluster.ward and cluster.linkage: the tree and its cuts against scipy's linkage and fcluster."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.cluster.hierarchy import fcluster, linkage

from clustering import assert_same_tree, points
from helpers import cpu_and_cuda
from pyprune_fast.cluster.ward import linkage as ward_linkage_of
from pyprune_fast.cluster.ward import ward


def canonical(labels) -> list[int]:
    """Labels renumbered by first appearance: equal lists mean equal partitions."""
    seen: dict = {}
    return [seen.setdefault(int(v), len(seen)) for v in labels]


def cut_heights(z: np.ndarray) -> list[float]:
    """Thresholds halfway between consecutive merge heights, plus both ends."""
    h = np.unique(z[:, 2])
    return [0.0, *((h[1:] + h[:-1]) / 2)[:: max(1, len(h) // 12)], float(h[-1]) * 2 if len(h) else 1.0]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n,d", [(2, 1), (3, 2), (10, 3), (57, 8), (256, 27), (700, 64)])
def test_ward_matches_scipy(n, d, dtype):
    x = points(n, d, dtype)
    z_scipy = linkage(x.double().numpy(), "ward")
    labels, z = ward(x, threshold=1.0, return_linkage=True)
    assert_same_tree(z, z_scipy)
    for t in cut_heights(z_scipy):
        got = ward(x, threshold=t)
        assert got.dtype == torch.int64 and got.shape == (n,)
        assert got.tolist() == canonical(fcluster(z_scipy, t, "distance")), t
    for m in sorted({1, 2, 3, n // 2 or 1, n - 1 or 1, n, n + 5}):
        assert ward(x, n_clusters=m).tolist() == canonical(fcluster(z_scipy, m, "maxclust")), m


def test_threshold_at_a_merge_height_includes_that_merge():
    x = points(60, 4)
    _, z = ward(x, threshold=0.0, return_linkage=True)
    for t in z[::7, 2].tolist():
        assert ward(x, threshold=t).tolist() == canonical(fcluster(z.numpy(), t, "distance"))


@settings(max_examples=40, deadline=None)
@given(n=st.sampled_from([2, 3, 50, 200]), d=st.integers(1, 8), seed=st.integers(0, 2**31 - 1),
       q=st.floats(0, 1), dtype=st.sampled_from([torch.float64, torch.float32]))
def test_property_threshold_exactly_at_scipys_merge_height(n, d, seed, q, dtype):
    """t one of scipy's own merge heights (the boundary): the cut merges heights <= t as fcluster does,
    and n_clusters agrees with maxclust."""
    x = points(n, d, dtype, generator=torch.Generator().manual_seed(seed))
    z_scipy = linkage(x.double().numpy(), "ward")
    t = float(z_scipy[int(q * (n - 2)), 2])
    assert ward(x, threshold=t).tolist() == canonical(fcluster(z_scipy, t, "distance"))
    _, z = ward(x, threshold=t, return_linkage=True)
    assert np.array_equal(z.numpy(), z_scipy)
    m = 1 + int(q * (n - 1))
    assert ward(x, n_clusters=m).tolist() == canonical(fcluster(z_scipy, m, "maxclust"))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 80), d=st.integers(1, 6), seed=st.integers(0, 2**31 - 1), q=st.floats(0, 1))
def test_property_matches_scipy(n, d, seed, q):
    x = points(n, d, generator=torch.Generator().manual_seed(seed))
    labels, z = ward(x, threshold=0.0, return_linkage=True)
    assert labels.tolist() == list(range(n))
    if n < 2:
        assert z.shape == (0, 4)
        return
    z_scipy = linkage(x.numpy(), "ward")
    assert_same_tree(z, z_scipy)
    t = float(np.quantile(z_scipy[:, 2], q)) * (1 + 1e-6)  # clear of rounding at the quantile's merge
    assert ward(x, threshold=t).tolist() == canonical(fcluster(z_scipy, t, "distance"))
    m = 1 + int(q * n)
    assert ward(x, n_clusters=m).tolist() == canonical(fcluster(z_scipy, m, "maxclust"))


def test_planted_blobs_are_recovered():
    for _ in range(5):
        k = int(torch.randint(2, 9, ()))
        sizes = torch.randint(1, 30, (k,))
        centers = torch.randn(k, 16, dtype=torch.float64) * 100
        truth = torch.repeat_interleave(torch.arange(k), sizes)
        x = centers[truth] + torch.randn(len(truth), 16, dtype=torch.float64)
        perm = torch.randperm(len(truth))
        x, truth = x[perm], truth[perm]
        assert ward(x, n_clusters=k).tolist() == canonical(truth)
        assert ward(x, threshold=60.0).tolist() == canonical(truth)


def test_duplicate_points():
    base = points(30, 3)
    x = torch.cat([base, base[:10], base[:4]])[torch.randperm(44)]  # ties at height 0
    labels, z = ward(x, threshold=1e-9, return_linkage=True)
    z_scipy = linkage(x.numpy(), "ward")
    np.testing.assert_allclose(z[:, 2].numpy(), z_scipy[:, 2], rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(z[:, 3].numpy(), z_scipy[:, 3])
    assert labels.unique().numel() == 30
    for t in [1e-9, *cut_heights(z_scipy)[1:]]:
        assert ward(x, threshold=t).tolist() == canonical(fcluster(z_scipy, t, "distance")), t
    for m in [1, 5, 17, 30]:
        assert ward(x, n_clusters=m).tolist() == canonical(fcluster(z_scipy, m, "maxclust")), m
    # All points equal: every merge at height 0; n_clusters still gives exactly that many clusters.
    same = torch.ones(6, 2)
    assert ward(same, threshold=0.0).tolist() == [0] * 6
    assert ward(same, n_clusters=4).unique().numel() == 4


def test_small_sizes_and_return_types():
    assert ward([], threshold=1.0) == []
    empty = ward(torch.zeros(0, 3), n_clusters=2, return_linkage=True)
    assert empty[0].shape == (0,) and empty[0].dtype == torch.int64 and empty[1].shape == (0, 4)
    assert ward(torch.ones(1, 3), threshold=0.0).tolist() == [0]
    two = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    assert ward(two, threshold=4.9).tolist() == [0, 1]
    assert ward(two, threshold=5.0).tolist() == [0, 0]
    assert ward(two, n_clusters=1).tolist() == [0, 0]
    labels, z = ward(two, n_clusters=2, return_linkage=True)
    assert labels.tolist() == [0, 1] and torch.equal(z, torch.tensor([[0.0, 1.0, 5.0, 2.0]], dtype=torch.float64))


def test_many_problems_in_one_call():
    xs = [points(n, d) for n, d in [(50, 3), (1, 2), (120, 9), (0, 4), (2, 7), (33, 1)]]
    got = ward(xs, n_clusters=4, return_linkage=True)
    assert isinstance(got, list) and len(got) == len(xs)
    for x, (labels, z) in zip(xs, got):
        assert torch.equal(labels, ward(x, n_clusters=4))
        if x.shape[0] > 1:
            assert_same_tree(z, linkage(x.numpy(), "ward"))
    thresholds = ward(xs, threshold=3.0)
    assert all(torch.equal(a, ward(x, threshold=3.0)) for a, x in zip(thresholds, xs))


def test_bad_inputs():
    x = torch.randn(5, 2)
    with pytest.raises(TypeError, match=r"ward: xs must be a tensor or a list of tensors, got ndarray"):
        ward(x.numpy(), threshold=1.0)
    with pytest.raises(TypeError, match=r"ward: xs must be a tensor or a list of tensors, got list"):
        ward([x, [1.0, 2.0]], threshold=1.0)
    with pytest.raises(ValueError, match=r"ward: xs\[1\] must be 2-D \(points x features\), got shape \(5,\)"):
        ward([x, torch.randn(5)], threshold=1.0)
    with pytest.raises(ValueError, match=r"ward: xs\[0\] must be 2-D \(points x features\), got shape \(2, 3, 4\)"):
        ward(torch.randn(2, 3, 4), threshold=1.0)
    with pytest.raises(TypeError, match=r"ward: xs\[0\] must be a floating-point tensor, got torch.int64"):
        ward(torch.ones(3, 2, dtype=torch.long), threshold=1.0)
    for value in [float("nan"), float("inf")]:
        bad = x.clone()
        bad[3, 1] = value
        with pytest.raises(ValueError, match=rf"ward: xs\[1\] holds {value} at \[3, 1\]; points must be finite"):
            ward([x, bad], n_clusters=2)
    with pytest.raises(ValueError, match="ward: give exactly one of threshold and n_clusters, got both"):
        ward(x, threshold=1.0, n_clusters=2)
    with pytest.raises(ValueError, match="ward: give exactly one of threshold and n_clusters, got neither"):
        ward(x)
    for m in [0, -3]:
        with pytest.raises(ValueError, match=f"ward: n_clusters must be positive, got {m}"):
            ward(x, n_clusters=m)
    with pytest.raises(TypeError, match=r"ward: n_clusters must be an int, got 2.5"):
        ward(x, n_clusters=2.5)
    with pytest.raises(ValueError, match=r"ward: threshold must be >= 0, got -0.5"):
        ward(x, threshold=-0.5)
    with pytest.raises(ValueError, match=r"ward: threshold must be >= 0, got nan"):
        ward(x, threshold=float("nan"))
    with pytest.raises(TypeError, match=r"ward: threshold must be a number, got '1'"):
        ward(x, threshold="1")


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_labels_on_the_input_device(device):
    x = points(90, 6, torch.float32).to(device)
    labels, z = ward(x, n_clusters=7, return_linkage=True)
    assert labels.device == x.device and z.device.type == "cpu"
    assert labels.tolist() == canonical(fcluster(linkage(x.double().cpu().numpy(), "ward"), 7, "maxclust"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linkage_in_either_precision_matches_scipy_and_merges_duplicates_at_zero(dtype):
    x = torch.randn(60, 200, dtype=torch.float64)
    x[10] = x[3]
    x[20] = x[3]
    z = ward_linkage_of([x], dtype=dtype)[0]
    assert z[:2, 2].tolist() == [0.0, 0.0]
    ref = linkage(x.numpy(), "ward")
    np.testing.assert_allclose(z[:, 2].numpy(), ref[:, 2], rtol=1e-3 if dtype == torch.float32 else 1e-9)
    with pytest.raises(TypeError, match="dtype"):
        ward_linkage_of([x], dtype=torch.float16)
