"""Data and checks shared by the tests of the clustering ops and of pyprune_fast.cluster."""

import numpy as np
import torch


def blobs(n_per, centers, dim, spread=0.1, seed=0):
    """n_per points around each of `centers` random centres far apart, and the true labels."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(centers, dim, generator=g) * 10
    x = torch.cat([means[i] + spread * torch.randn(n_per, dim, generator=g) for i in range(centers)])
    return x, torch.arange(centers).repeat_interleave(n_per)


def points(n, d, dtype=torch.float64, generator=None):
    """Continuous random points: tie-free, so the tree is unique."""
    return (torch.randn(n, d, dtype=torch.float64, generator=generator) * 2 + 1).to(dtype)


def assert_same_tree(ours: torch.Tensor, theirs: np.ndarray):
    """Same merges, same heights to rtol 1e-9. The atol covers the distances: pairwise_distance's come
    from a Gram matrix, off by ~1e-16 |x|^2 / d, i.e. ~1e-12 absolute for points 1e-4 apart."""
    assert ours.dtype == torch.float64 and ours.shape == theirs.shape
    z = ours.numpy()
    np.testing.assert_array_equal(z[:, [0, 1, 3]], theirs[:, [0, 1, 3]])
    scale = max(1.0, float(np.abs(theirs[:, 2]).max(initial=0)))
    np.testing.assert_allclose(z[:, 2], theirs[:, 2], rtol=1e-9, atol=1e-10 * scale)
