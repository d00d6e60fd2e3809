import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import cpu_and_cuda, device_dtypes, tolerance
from pyprune_fast import _reference, ops

SHAPES = [(64, 27), (64, 27), (128, 72), (7, 3), (1, 5), (33, 1), (64, 27)]  # repeated shapes share one product


def check_against_reference(xs, metric, ds):
    for x, d in zip(xs, ds):
        ref = _reference.pairwise_distance(x, metric)
        assert d.shape == (x.shape[0], x.shape[0]) and d.dtype == x.dtype and d.device == x.device
        rtol, atol = tolerance(x.dtype)
        if metric == "euclidean" and x.numel():
            # squared distances from a Gram product are right to about eps |x|^2, so a small distance only to
            # the square root of that (how far depends on the CPU's kernels): compare squares
            scale = max(1.0, x.double().pow(2).sum(1).max().item())
            torch.testing.assert_close(d.double() ** 2, ref.double() ** 2, rtol=rtol, atol=atol * scale)
        else:
            scale = max([1.0] + ([ref.double().abs().max().item()] if ref.numel() else []))
            torch.testing.assert_close(d.double(), ref.double(), rtol=rtol, atol=atol * scale)
        assert torch.equal(d, d.T), "not exactly symmetric"
        assert torch.all(d.diagonal() == 0), "diagonal not exactly zero"
        assert not d.isnan().any() and (d >= 0).all()


@pytest.mark.parametrize("metric", ops.METRICS)
@pytest.mark.parametrize("device,dtype", device_dtypes())
def test_list_matches_reference(device, dtype, metric):
    xs = [torch.randn(n, d, device=device, dtype=dtype) * 3 + 1 for n, d in SHAPES]
    check_against_reference(xs, metric, ops.pairwise_distance(xs, metric))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_single_tensor_returns_tensor(device):
    x = torch.randn(20, 9, device=device)
    d = ops.pairwise_distance(x)
    assert isinstance(d, torch.Tensor)
    check_against_reference([x], "euclidean", [d])


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_non_contiguous(device):
    base = torch.randn(40, 50, device=device)
    xs = [base.T, base[::2, ::3], base[:, 5:20]]
    assert not any(x.is_contiguous() for x in xs)
    for metric in ops.METRICS:
        check_against_reference(xs, metric, ops.pairwise_distance(xs, metric))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_empty_inputs(device):
    assert ops.pairwise_distance([]) == []
    assert ops.pairwise_distance(torch.randn(0, 4, device=device)).shape == (0, 0)
    no_cols = torch.randn(3, 0, device=device)
    assert torch.equal(ops.pairwise_distance(no_cols), torch.zeros(3, 3, device=device))
    assert torch.equal(ops.pairwise_distance(no_cols, "cosine"), 1 - torch.eye(3, device=device))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_duplicate_rows_give_zero_not_nan(device):
    row = torch.randn(1, 300, device=device) * 100 + 50  # large common offset: the cancellation-prone case
    x = torch.cat([row, row, torch.randn(5, 300, device=device), row])
    for metric in ("euclidean", "sqeuclidean"):
        d = ops.pairwise_distance(x, metric)
        assert not d.isnan().any()
        assert d[0, 1] < 1e-2 and d[0, 7] < 1e-2, d[0, [1, 7]]


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_cosine_zero_row_is_at_distance_one(device):
    x = torch.randn(6, 10, device=device)
    x[2] = 0
    d = ops.pairwise_distance(x, "cosine")
    assert not d.isnan().any()
    others = [i for i in range(6) if i != 2]
    assert torch.all(d[2, others] == 1) and torch.all(d[others, 2] == 1) and d[2, 2] == 0


def test_bad_inputs():
    good = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"pairwise_distance: xs\[1\] must be 2-D \(rows are filters\), got 1-D"):
        ops.pairwise_distance([good, torch.randn(5)])
    with pytest.raises(ValueError, match=r"xs\[0\] must be 2-D .* got 3-D"):
        ops.pairwise_distance(torch.randn(2, 3, 4))
    with pytest.raises(TypeError, match=r"xs\[0\] must be a floating-point tensor, got Long"):
        ops.pairwise_distance(torch.ones(3, 3, dtype=torch.long))
    with pytest.raises(TypeError, match=r"one dtype, but xs\[0\] is Float and xs\[1\] is Double"):
        ops.pairwise_distance([good, good.double()])
    with pytest.raises(ValueError, match="unknown metric 'manhattan'"):
        ops.pairwise_distance(good, "manhattan")
    with pytest.raises(ValueError, match="unknown metric 'manhattan'"):  # the C++ check, for C++ callers
        torch.ops.pyprune_fast.pairwise_distance([good], "manhattan")
    with pytest.raises(TypeError, match="xs must be a tensor or a list of tensors"):
        ops.pairwise_distance([good, "x"])


@pytest.mark.parametrize("metric", ops.METRICS)
@pytest.mark.parametrize("device,dtype", [p for p in device_dtypes() if p.values[1] in (torch.float32, torch.float64)])
def test_column_blocks_measure_their_concatenation(device, dtype, metric):
    """A problem given as column blocks (transposed views, an empty block, N past the CPU's block
    triangle) gives the distances of the blocks concatenated along dim 1."""
    def t(*shape):
        return torch.randn(*shape, device=device, dtype=dtype) * 2 + 0.5
    problems = [(t(200, 30), t(70, 200).T, t(200, 0)), t(9, 4), (t(600, 40), t(600, 3)), (t(1, 5),), (t(0, 3), t(0, 2))]
    ds = ops.pairwise_distance(problems, metric)
    whole = [p if isinstance(p, torch.Tensor) else torch.cat(p, 1) for p in problems]
    assert len(ds) == len(problems)
    check_against_reference(whole, metric, ds)


def test_a_problem_does_not_depend_on_its_batch_mates():
    """On the CPU a big problem runs alone on every thread and the others side by side, one thread
    each: each one's distances are the same bits as when it is computed alone."""
    torch.manual_seed(0)
    problems = [torch.randn(600, 300), torch.randn(200, 50), (torch.randn(200, 30), torch.randn(70, 200).T),
                *[torch.randn(150, 90) for _ in range(5)]]
    together = ops.pairwise_distance(problems)
    for p, d in zip(problems, together):
        assert torch.equal(d, ops.pairwise_distance([p])[0])


def test_column_blocks_bad_inputs():
    a = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"the blocks of problem 1 must have one row count, but xs\[1\] has 4 rows "
                                         r"and xs\[2\] has 5"):
        ops.pairwise_distance([a, (a, torch.randn(5, 3))])
    with pytest.raises(TypeError, match="xs must be a tensor or a list of tensors"):
        ops.pairwise_distance([a, ()])
    with pytest.raises(TypeError, match="xs must be a tensor or a list of tensors"):
        ops.pairwise_distance([(a, "x")])
    with pytest.raises(ValueError, match="blocks add up to 3 tensors but 2 were given"):
        torch.ops.pyprune_fast.pairwise_distance([a, a], "euclidean", [1, 2])
    with pytest.raises(ValueError, match="blocks add up to 1 tensors but 2 were given"):
        torch.ops.pyprune_fast.pairwise_distance([a, a], "euclidean", [1])
    with pytest.raises(ValueError, match=r"blocks\[0\] must be >= 1, got 0"):
        torch.ops.pyprune_fast.pairwise_distance([a], "euclidean", [0, 1])


@pytest.mark.needs_cuda
def test_mixed_devices():
    with pytest.raises(ValueError, match=r"one device, but xs\[0\] is on cpu and xs\[1\] is on cuda:0"):
        ops.pairwise_distance([torch.randn(3, 2), torch.randn(3, 2, device="cuda")])


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_opcheck(device):
    xs = [torch.randn(9, 4, device=device), torch.randn(9, 4, device=device), torch.randn(5, 7, device=device)]
    for metric in ops.METRICS:
        torch.library.opcheck(torch.ops.pyprune_fast.pairwise_distance.default, (xs, metric))
        torch.library.opcheck(torch.ops.pyprune_fast.pairwise_distance.default, (xs, metric, [2, 1]))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_torch_compile_fullgraph(device):
    def f(a, b):
        da, db = ops.pairwise_distance([a, b], "sqeuclidean")
        return da.sum(1) + 1, db * 2

    compiled = torch.compile(f, fullgraph=True)
    a, b = torch.randn(12, 5, device=device), torch.randn(7, 3, device=device)
    for got, want in zip(compiled(a, b), f(a, b)):
        torch.testing.assert_close(got, want)


@settings(max_examples=60, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 24)), min_size=0, max_size=5),
    metric=st.sampled_from(ops.METRICS),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_property_any_shapes(shapes, metric, dtype):
    xs = [torch.randn(n, d, dtype=dtype) for n, d in shapes]
    ds = ops.pairwise_distance(xs, metric)
    assert len(ds) == len(xs)
    check_against_reference(xs, metric, ds)


def check_finite_rows(x, metric, d):
    """d against the reference on the finite rows, NaN in the rows and columns of the others."""
    bad = ~torch.isfinite(x).all(1)
    assert d[bad].isnan().all() and d[:, bad].isnan().all()
    good = ~bad
    check_against_reference([x[good]], metric, [d[good][:, good]])


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 30),
    d=st.integers(1, 12),
    spots=st.lists(st.tuples(st.integers(0, 29), st.integers(0, 11), st.sampled_from([float("nan"), float("inf"), -float("inf")])),
                   min_size=1, max_size=4),
    metric=st.sampled_from(ops.METRICS),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_non_finite_rows_give_nan_in_their_row_and_column_only(n, d, spots, metric, dtype, seed):
    x = torch.randn(n, d, dtype=dtype, generator=torch.Generator().manual_seed(seed)) * 3 + 1
    for r, c, v in spots:
        x[r % n, c % d] = v
    check_finite_rows(x, metric, ops.pairwise_distance(x, metric))
    # the same problem as two column blocks, next to a finite problem it must not disturb
    other = torch.randn(5, 3, dtype=dtype)
    got, alone = ops.pairwise_distance([(x[:, : d // 2], x[:, d // 2 :]), other], metric)
    check_finite_rows(x, metric, got)
    assert torch.equal(alone, ops.pairwise_distance(other, metric))


@settings(max_examples=40, deadline=None)
@given(
    dtype_exp=st.one_of(st.tuples(st.just(torch.float32), st.integers(-44, 37)),
                        st.tuples(st.just(torch.float64), st.integers(-300, 300))),
    n=st.integers(1, 20),
    d=st.integers(1, 10),
    metric=st.sampled_from(ops.METRICS),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_huge_and_tiny_finite_inputs(dtype_exp, n, d, metric, seed):
    """Rows near 1e20 in float32 (squares overflow) or 1e-40 (squares underflow): distances as exact
    as at unit scale wherever the true distance is representable, inf where it is too large."""
    dtype, exp = dtype_exp
    x = (torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 10.0**exp).to(dtype)
    got = ops.pairwise_distance(x, metric).double()
    # the reference in float64 on the same inputs, scaled by a power of two (exact) to keep its squares finite
    e = math.frexp(x.double().abs().max().item())[1]
    exact = _reference.pairwise_distance(torch.ldexp(x.double(), torch.tensor(-e)), metric)
    if metric != "cosine":
        exact = torch.ldexp(exact, torch.tensor(e if metric == "euclidean" else 2 * e))
    ref = exact.to(dtype).double()  # what the output dtype can hold: inf past its range
    assert torch.equal(got.isinf(), ref.isinf()) and not got.isnan().any()
    finite = ref[~ref.isinf()]
    scale = finite.abs().max().item() if finite.numel() else 0.0
    rtol, atol = tolerance(dtype)
    tiny = torch.finfo(dtype).smallest_normal * 16  # subnormal outputs hold few bits
    torch.testing.assert_close(got[~ref.isinf()], finite, rtol=rtol, atol=max(atol * scale, tiny))
    assert torch.all(got.diagonal() == 0) and torch.equal(got, got.T)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_one_float32_row_near_1e20(device):
    x = torch.tensor([[1e20, 0.0], [0.0, 1e20], [0.0, 0.0]], device=device)
    d = ops.pairwise_distance(x).cpu()
    torch.testing.assert_close(d[0, 1], torch.tensor(2**0.5 * 1e20), rtol=1e-6, atol=0)
    torch.testing.assert_close(d[0, 2], torch.tensor(1e20), rtol=1e-6, atol=0)
    assert ops.pairwise_distance(x, "sqeuclidean")[0, 1].item() == float("inf")  # 2e40: past float32


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_nan_and_inf_rows_next_to_a_finite_problem(device):
    """The same problem shape twice (one batched product on CUDA): only the non-finite rows of the
    first get NaN, the second is untouched."""
    x = torch.randn(40, 7, device=device) * 3 + 1
    x[3, 2], x[17, 0] = float("nan"), -float("inf")
    y = torch.randn(40, 7, device=device)
    for metric in ops.METRICS:
        dx, dy = ops.pairwise_distance([x, y], metric)
        check_finite_rows(x.cpu(), metric, dx.cpu())
        check_against_reference([y], metric, [dy])


def test_blocks_whose_sum_overflows_int64():
    a = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"blocks add up to more than int64 holds \(blocks\[1\] = "
                                         r"4611686018427387904 after 4611686018427387904\) but 1 tensors were given"):
        torch.ops.pyprune_fast.pairwise_distance([a], "euclidean", [2**62, 2**62, 2**62, 2**62 + 1])
