import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import INT64, cpu_and_cuda, device_dtypes, index_values, run_apart, with_both_extremes
from pyprune_fast import _reference, ops


def random_like_dtype(shape, dtype, device):
    if dtype.is_floating_point:
        return torch.randn(shape, device=device).to(dtype)
    return torch.randint(-100, 100, shape, device=device).to(dtype)


@pytest.mark.parametrize("device,dtype", device_dtypes())
def test_list_matches_reference(device, dtype):
    # The tensors of a pruned conv layer: its weight (out dim 0), BN vectors, the next conv (in dim 1).
    xs = [random_like_dtype(s, dtype, device) for s in [(16, 8, 3, 3), (16,), (16,), (32, 16, 1, 1), (5, 16)]]
    dims = [0, 0, 0, 1, -1]
    keep = torch.randperm(16, device=device)[:9]
    outs = ops.gather_channels(xs, keep, dims)
    for x, d, out in zip(xs, dims, outs):
        assert out.is_contiguous() and out.dtype == x.dtype and out.device == x.device
        assert torch.equal(out, _reference.gather_channels(x, keep, d))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape, dim", [((300, 512, 1, 1), 1), ((64, 300, 3, 3), 1), ((700, 40, 3, 3), 0),
                                        ((33, 70, 7, 7), 1), ((3, 4000), 1), ((257, 3, 200), 0)],
                         ids=["1x1-in", "3x3-in", "3x3-out", "7x7-in", "linear-in", "long-rows"])
def test_large_tensors_split_across_tasks_match_reference(shape, dim, threads):
    """Tensors large enough to be split into many tasks, whose bounds fall inside an outer slice (an odd number
    of channels kept): single elements, 3x3 and 7x7 kernels, rows longer than 256 bytes."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(shape)
        keep = torch.randperm(shape[dim])[: shape[dim] // 2 + 1]
        out = ops.gather_channels([x, x.double()], keep, [dim, dim])
        assert torch.equal(out[0], _reference.gather_channels(x, keep, dim))
        assert torch.equal(out[1], _reference.gather_channels(x.double(), keep, dim))
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex128])
def test_any_element_size(device, dtype):
    x = torch.randn(6, 5, 4, device=device).mul(10).to(dtype) if dtype != torch.complex128 else torch.randn(
        6, 5, 4, dtype=dtype, device=device)
    idx = torch.tensor([4, 1, 2], device=device)
    assert torch.equal(ops.gather_channels(x, idx, 1), _reference.gather_channels(x, idx, 1))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_per_tensor_indices_int32_and_list_of_ints(device):
    xs = [torch.randn(10, 3, device=device), torch.randn(4, 7, device=device)]
    idx = [torch.tensor([9, 0, 5], device=device, dtype=torch.int32), torch.tensor([6, 2], device=device)]
    a, b = ops.gather_channels(xs, idx, [0, 1])
    assert torch.equal(a, xs[0][[9, 0, 5]]) and torch.equal(b, xs[1][:, [6, 2]])
    assert torch.equal(ops.gather_channels(xs[0], [3, 1], 0), xs[0][[3, 1]])


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_non_contiguous_and_empty(device):
    x = torch.randn(8, 12, 3, device=device).transpose(0, 1)  # (12, 8, 3), not contiguous
    idx = torch.tensor([7, 0, 3], device=device)
    assert torch.equal(ops.gather_channels(x, idx, 1), _reference.gather_channels(x, idx, 1))
    none = torch.empty(0, dtype=torch.long, device=device)
    assert ops.gather_channels(x, none, 1).shape == (12, 0, 3)
    assert ops.gather_channels(torch.randn(0, 4, device=device), torch.tensor([1, 2], device=device), 1).shape == (0, 2)
    assert ops.gather_channels([], none, 0) == []


def test_bad_inputs():
    xs = [torch.randn(5, 3), torch.randn(2, 4)]
    with pytest.raises(ValueError, match=r"gather_channels: indices\[0\] holds 4 more than once"):
        ops.gather_channels(xs[0], torch.tensor([4, 1, 4]), 0)
    with pytest.raises(ValueError, match=r"indices\[1\] holds 4, out of range for xs\[1\] with 4 channels along dim 1"):
        ops.gather_channels(xs, [torch.tensor([0]), torch.tensor([3, 4])], [0, 1])
    with pytest.raises(ValueError, match=r"indices\[0\] holds -1, out of range for xs\[0\]"):
        ops.gather_channels(xs[0], torch.tensor([-1, 2]), 0)
    with pytest.raises(ValueError, match=r"indices\[0\] holds 2, out of range for xs\[1\] with 2 channels"):
        ops.gather_channels(xs, torch.tensor([0, 2]), 0)  # shared indices checked against every tensor
    with pytest.raises(TypeError, match=r"indices\[0\] must be an int64 or int32 tensor, got Float"):
        ops.gather_channels(xs[0], torch.tensor([0.0]), 0)
    with pytest.raises(ValueError, match=r"indices\[0\] must be 1-D, got 2-D"):
        ops.gather_channels(xs[0], torch.tensor([[0, 1]]), 0)
    with pytest.raises(ValueError, match=r"dim 2 is out of range for xs\[0\] with 2 dimension"):
        ops.gather_channels(xs[0], torch.tensor([0]), 2)
    with pytest.raises(ValueError, match=r"dims must hold one entry per tensor \(2\) or one for all, got 3"):
        torch.ops.pyprune_fast.gather_channels(xs, [torch.tensor([0])], [0, 0, 0])
    with pytest.raises(ValueError, match=r"indices must hold one entry per tensor \(2\)"):
        ops.gather_channels(xs, [torch.tensor([0])] * 3, 0)
    with pytest.raises(TypeError, match="dims must be an int or a list of ints"):
        ops.gather_channels(xs, torch.tensor([0]), "0")
    with pytest.raises(ValueError, match=r"gather_channels: indices\[1\] = 9223372036854775808 does not fit in int64"):
        ops.gather_channels(xs[0], [0, 2**63], 0)


@pytest.mark.needs_cuda
def test_mixed_devices():
    x = torch.randn(4, 3, device="cuda")
    with pytest.raises(ValueError, match=r"indices\[0\] is on cpu but the tensors are on cuda:0"):
        ops.gather_channels(x, torch.tensor([1]), 0)
    with pytest.raises(ValueError, match=r"xs\[0\] is on cuda:0 and xs\[1\] is on cpu"):
        ops.gather_channels([x, torch.randn(4)], torch.tensor([1], device="cuda"), 0)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_opcheck_and_compile(device):
    xs = [torch.randn(6, 4, device=device), torch.randn(3, 6, 2, device=device)]
    idx = torch.tensor([5, 1, 2], device=device)
    torch.library.opcheck(torch.ops.pyprune_fast.gather_channels.default, (xs, [idx], [0, 1]))

    def f(a, b, i):
        ga, gb = ops.gather_channels([a, b], i, [0, 1])
        return ga.relu(), gb.sum()

    got = torch.compile(f, fullgraph=True, backend="aot_eager")(*xs, idx)
    for g, w in zip(got, f(*xs, idx)):
        assert torch.equal(g, w)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_property_any_shape(data):
    """Any shape, zero sizes included, any dtype of every element size."""
    shape = data.draw(st.lists(st.integers(0, 6), min_size=1, max_size=4))
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float16, torch.int8, torch.int64, torch.bool,
                                       torch.complex128]))
    x = random_like_dtype(shape, dtype, "cpu")
    channels = shape[dim]
    picked = data.draw(st.permutations(range(channels)).map(lambda p: p[: data.draw(st.integers(0, channels))]))
    idx = torch.tensor(picked, dtype=torch.long)
    assert torch.equal(ops.gather_channels(x, idx, dim), _reference.gather_channels(x, idx, dim))


# ---- adversarial inputs: int64 extremes, meta among real tensors, zero sizes ----



def crash_cases():
    x = torch.randn(4, 3)
    for idx in ([INT64.min, INT64.max], [INT64.max, INT64.min, 0], [0, INT64.min]):
        with pytest.raises(ValueError, match=rf"gather_channels: indices\[0\] holds {min(idx)}, out of range"):
            ops.gather_channels(x, torch.tensor(idx), 0)
    with pytest.raises(ValueError, match=rf"indices\[0\] holds {INT64.max}, out of range for xs\[0\] with 3"):
        ops.gather_channels(x, torch.tensor([1, INT64.max]), 1)


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def property_index_extremes(data):
    """Any int64 values: the reference's result, or a ValueError naming the op and the bad value."""
    shape = data.draw(st.lists(st.integers(0, 5), min_size=1, max_size=3))
    dim = data.draw(st.integers(0, len(shape) - 1))
    values = with_both_extremes(data, data.draw(st.lists(index_values(shape[dim]), max_size=6)))
    x, idx = torch.randn(shape), torch.tensor(values, dtype=torch.long)
    if all(0 <= v < shape[dim] for v in values) and len(set(values)) == len(values):
        assert torch.equal(ops.gather_channels(x, idx, dim), _reference.gather_channels(x, idx, dim))
    else:
        lo, hi = min(values), max(values)
        bad = lo if lo < 0 else hi if hi >= shape[dim] else None  # the C++ check reports one of the two
        message = f"holds {bad}, out of range" if bad is not None else "holds .* more than once"
        with pytest.raises(ValueError, match=rf"gather_channels: indices\[0\] {message}"):
            ops.gather_channels(x, idx, dim)


def test_int64_extremes_in_a_subprocess():
    run_apart(__file__, "crash_cases", "property_index_extremes")


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_property_meta_among_real_tensors_refused(data):
    """A meta tensor among CPU ones (an index or one of xs) is refused; all on meta gives the shapes."""
    n = data.draw(st.integers(1, 3))
    on_meta = data.draw(st.lists(st.booleans(), min_size=n + 1, max_size=n + 1))
    xs = [torch.randn(4, 5, device="meta" if m else "cpu") for m in on_meta[:n]]
    idx = torch.tensor([3, 0], device="meta" if on_meta[n] else "cpu")
    if all(on_meta):
        assert [o.shape for o in ops.gather_channels(xs, idx, 1)] == [(4, 2)] * n
    elif any(on_meta):
        with pytest.raises(ValueError, match=r"gather_channels: .* is on (meta|cpu)"):
            ops.gather_channels(xs, idx, 1)
