import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import INT64, cpu_and_cuda, device_dtypes, index_values, run_apart, tolerance, with_both_extremes
from pyprune_fast import _reference, ops


def random_clusters(channels, clusters, device):
    """assignments (every cluster non-empty) and keep (one member of each cluster, chosen at random)."""
    if channels == 0:
        return torch.empty(0, dtype=torch.long, device=device), torch.empty(0, dtype=torch.long, device=device)
    assignments = torch.cat([torch.arange(clusters), torch.randint(0, clusters, (channels - clusters,))])
    assignments = assignments[torch.randperm(channels)]
    keep = torch.stack([torch.nonzero(assignments == g)[torch.randint(0, int((assignments == g).sum()), ())][0]
                        for g in range(clusters)])
    return assignments.to(device), keep.to(device)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("device,dtype", device_dtypes())
def test_matches_reference(device, dtype, weighted):
    assignments, keep = random_clusters(24, 9, device)
    weights = torch.rand(24, device=device, dtype=torch.float64) + 0.5 if weighted else None
    # A consuming conv (channels on dim 1), a Linear (dim 1) and a 1-D vector (dim 0).
    xs = [torch.randn(s, device=device).to(dtype) for s in [(16, 24, 3, 3), (10, 24), (24,)]]
    dims = [1, -1, 0]
    expected = [_reference.merge_channels_(x.clone(), assignments, keep, d, weights) for x, d in zip(xs, dims)]
    ops.merge_channels_(xs, assignments, keep, dims, weights)
    rtol, atol = tolerance(dtype)
    for x, e in zip(xs, expected):
        torch.testing.assert_close(x.double(), e.double(), rtol=rtol, atol=atol * 4)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_compact_result_equals_index_add(device):
    x = torch.randn(8, 30, 5, device=device)
    assignments, keep = random_clusters(30, 11, device)
    expected = torch.zeros(8, 11, 5, device=device).index_add_(1, assignments, x)
    merged = ops.gather_channels(ops.merge_channels_(x, assignments, keep, 1), keep, 1)
    torch.testing.assert_close(merged, expected)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_other_channels_untouched_and_bitwise_deterministic(device):
    x = torch.randn(64, 200, 9, device=device)
    assignments, keep = random_clusters(200, 37, device)
    runs = [ops.merge_channels_(x.clone(), assignments, keep, 1) for _ in range(3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])
    untouched = torch.ones(200, dtype=torch.bool, device=device)
    untouched[keep] = False
    assert torch.equal(runs[0][:, untouched], x[:, untouched])


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_non_contiguous_in_place_and_empty(device):
    base = torch.randn(12, 7, device=device)
    x = base.T  # (7, 12) view, not contiguous: must be updated in place
    assignments, keep = random_clusters(12, 5, device)
    expected = _reference.merge_channels_(x.clone(), assignments, keep, 1)
    ops.merge_channels_(x, assignments, keep, 1)
    torch.testing.assert_close(base.T, expected)
    empty = torch.randn(0, 12, device=device)
    ops.merge_channels_(empty, assignments, keep, 1)
    none = torch.empty(0, dtype=torch.long, device=device)
    ops.merge_channels_(torch.randn(3, 0, device=device), none, none, 1)
    assert ops.merge_channels_([], none, none, 0) == []


def test_schema_declares_mutation():
    schema = torch.ops.pyprune_fast.merge_channels_.default._schema
    assert schema.arguments[0].alias_info is not None and schema.arguments[0].alias_info.is_write
    assert len(schema.returns) == 0


def test_bad_inputs():
    x = torch.randn(4, 5)
    a, k = torch.tensor([0, 1, 0, 2, 1]), torch.tensor([0, 4, 3])
    with pytest.raises(ValueError, match=r"merge_channels_: keep\[0\]\[1\] = 3 but assignments\[0\]\[3\] = 2"):
        ops.merge_channels_(x, a, torch.tensor([0, 3, 1]), 1)
    with pytest.raises(ValueError, match=r"assignments\[0\] holds 3, out of range for the 3 clusters of keep\[0\]"):
        ops.merge_channels_(x, torch.tensor([0, 1, 0, 3, 1]), k, 1)
    with pytest.raises(ValueError, match=r"keep\[0\] holds 4 more than once"):
        ops.merge_channels_(x, a, torch.tensor([4, 4, 3]), 1)
    with pytest.raises(ValueError, match=r"keep\[0\] holds 7, out of range for xs\[0\] with 5 channels along dim 1"):
        ops.merge_channels_(x, a, torch.tensor([0, 7, 3]), 1)
    with pytest.raises(ValueError, match=r"assignments\[0\] has 5 entries but xs\[0\] has 4 channels along dim 0"):
        ops.merge_channels_(x, a, k, 0)
    with pytest.raises(ValueError, match=r"weights\[0\] must have shape \(5,\) to match xs\[0\], got \[4\]"):
        ops.merge_channels_(x, a, k, 1, torch.ones(4))
    with pytest.raises(TypeError, match=r"weights\[0\] must be a floating-point tensor, got Long"):
        ops.merge_channels_(x, a, k, 1, torch.ones(5, dtype=torch.long))
    with pytest.raises(TypeError, match=r"xs\[0\] must be a float32, float64, float16 or bfloat16 tensor, got Long"):
        ops.merge_channels_(torch.ones(4, 5, dtype=torch.long), a, k, 1)
    with pytest.raises(ValueError, match=r"xs\[0\] and xs\[1\] share memory"):
        ops.merge_channels_([x, x[1:]], a, k, 1)
    with pytest.raises(ValueError, match=r"keep must hold one entry per tensor \(2\)"):
        ops.merge_channels_([x, x.clone()], a, [k, k, k], 1)
    # Nothing was modified by the rejected calls.
    assert torch.equal(x, x.clone())


def test_rejected_call_leaves_tensors_untouched():
    xs = [torch.randn(4, 5), torch.randn(5)]
    before = [x.clone() for x in xs]
    a = torch.tensor([0, 1, 0, 2, 1])
    with pytest.raises(ValueError):
        # valid for xs[0], but xs[1]'s keep is wrong: the whole call must fail before touching xs[0]
        ops.merge_channels_(xs, a, [torch.tensor([0, 4, 3]), torch.tensor([0, 4, 1])], [1, 0])
    assert all(torch.equal(x, b) for x, b in zip(xs, before))


@pytest.mark.needs_cuda
def test_mixed_devices():
    x = torch.randn(4, 5, device="cuda")
    with pytest.raises(ValueError, match=r"keep\[0\] is on cpu but the tensors are on cuda:0"):
        ops.merge_channels_(x, torch.tensor([0, 1, 0, 2, 1], device="cuda"), torch.tensor([0, 4, 3]), 1)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_opcheck_and_compile(device):
    a, k = torch.tensor([0, 1, 0, 2, 1], device=device), torch.tensor([0, 4, 3], device=device)
    xs = [torch.randn(4, 5, device=device), torch.randn(5, 2, device=device)]
    torch.library.opcheck(torch.ops.pyprune_fast.merge_channels_.default, (xs, [a], [k], [1, 0], [None]))

    def f(x, y):
        x = x * 2
        ops.merge_channels_([x, y], a, k, [1, 0])
        return x + 1

    x, y = torch.randn(4, 5, device=device), torch.randn(5, 2, device=device)
    x2, y2 = x.clone(), y.clone()
    got = torch.compile(f, fullgraph=True, backend="aot_eager")(x, y)
    assert torch.equal(got, f(x2, y2)) and torch.equal(y, y2)  # y was mutated the same way


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_property_any_shape(data):
    """Any shape, zero sizes (and zero channels) included."""
    shape = data.draw(st.lists(st.integers(0, 6), min_size=1, max_size=4))
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    channels = shape[dim]
    clusters = data.draw(st.integers(min(1, channels), channels))
    torch.manual_seed(data.draw(st.integers(0, 2**16)))
    assignments, keep = random_clusters(channels, clusters, "cpu")
    weights = torch.rand(channels) if data.draw(st.booleans()) else None
    x = torch.randn(shape, dtype=torch.float64)
    expected = _reference.merge_channels_(x.clone(), assignments, keep, dim, weights)
    torch.testing.assert_close(ops.merge_channels_(x, assignments, keep, dim, weights), expected)


# ---- adversarial inputs: int64 extremes, aliasing views, meta among real tensors, mixed dtypes ----


def bits(t):
    """The bytes of t (NaN-safe and dtype-agnostic, for "nothing was modified")."""
    return t.detach().contiguous().view(-1).view(torch.uint8).clone()


def is_valid(channels, assignments, keep):
    a, k = assignments.tolist(), keep.tolist()
    return (all(0 <= v < len(k) for v in a) and all(0 <= v < channels for v in k) and len(set(k)) == len(k)
            and all(a[v] == g for g, v in enumerate(k)))


def merged_or_refused(xs, assignments, keep, dims, weights=None, error=ValueError, match="merge_channels_: "):
    """merge_channels_ on xs equals the reference when the call is valid; otherwise it raises `error`
    and no byte of xs changes. Validity: `error` is None."""
    before = [bits(x) for x in xs]
    if error is None:
        expected = [_reference.merge_channels_(x.clone(), assignments, keep, d, weights) for x, d in zip(xs, dims)]
        ops.merge_channels_(xs, assignments, keep, dims, weights)
        for x, e in zip(xs, expected):
            rtol, atol = tolerance(x.dtype)
            torch.testing.assert_close(x.double(), e.double(), rtol=rtol, atol=atol * 4, equal_nan=True)
        return
    with pytest.raises(error, match=match):
        ops.merge_channels_(xs, assignments, keep, dims, weights)
    assert all(torch.equal(bits(x), b) for x, b in zip(xs, before))


def crash_cases():
    x = torch.randn(4, 3)
    a = torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match=rf"keep\[0\] holds {INT64.min}, out of range for xs\[0\] with 4"):
        ops.merge_channels_(x, a, torch.tensor([INT64.min, INT64.max]), 0)
    with pytest.raises(ValueError, match=rf"assignments\[0\] holds {INT64.min}, out of range for the 2 clusters"):
        ops.merge_channels_(x, torch.tensor([INT64.max, 0, INT64.min, 1]), torch.tensor([1, 3]), 0)
    # keep (and then assignments) as a view of the tensor being merged: the kernel would rewrite them.
    buf = torch.zeros(16, dtype=torch.float64)
    keep = buf[8:10].view(torch.long)
    keep.copy_(torch.tensor([0, 1]))
    before = bits(buf)
    with pytest.raises(ValueError, match=r"merge_channels_: keep\[0\] and xs\[0\] share memory"):
        ops.merge_channels_(buf[6:], torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 0, 1]), keep, 0)
    with pytest.raises(ValueError, match=r"merge_channels_: assignments\[0\] and xs\[1\] share memory"):
        ops.merge_channels_([torch.zeros(4), buf[:4]], buf[:4].view(torch.long), torch.tensor([1, 0]), 0)
    assert torch.equal(bits(buf), before)


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def property_index_extremes(data):
    """Valid clusters with a few entries replaced by any int64 (extremes often): merged, or refused."""
    channels = data.draw(st.integers(1, 6))
    torch.manual_seed(data.draw(st.integers(0, 2**16)))
    a, k = random_clusters(channels, data.draw(st.integers(1, channels)), "cpu")
    for t in data.draw(st.lists(st.sampled_from([0, 1]), max_size=3)):
        t = (a, k)[t]
        t[data.draw(st.integers(0, t.numel() - 1))] = data.draw(index_values(channels))
    a, k = (torch.tensor(with_both_extremes(data, t.tolist()), dtype=torch.long) for t in (a, k))
    xs = [torch.randn(3, channels), torch.randn(channels, dtype=torch.float64)]
    merged_or_refused(xs, a, k, [1, 0], error=None if is_valid(channels, a, k) else ValueError)


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def property_aliasing_views(data):
    """x, keep, assignments and weights cut from one buffer at random offsets: merged when x overlaps none
    of the others, else refused with the buffer untouched."""
    channels = data.draw(st.integers(1, 5))
    torch.manual_seed(data.draw(st.integers(0, 2**16)))
    a, k = random_clusters(channels, data.draw(st.integers(1, channels)), "cpu")
    buf = torch.randn(24, dtype=torch.float64)
    spans = {}

    def cut(name, length):
        start = data.draw(st.integers(0, 24 - length), label=name)
        spans[name] = range(start, start + length)
        return buf[start:start + length]

    a = cut("assignments", channels).view(torch.long).copy_(a)  # later cuts may overwrite: views read the buffer
    k = cut("keep", k.numel()).view(torch.long).copy_(k)
    w = cut("weights", channels).uniform_(0.5, 1.5) if data.draw(st.booleans()) else None
    x = cut("xs", 2 * channels).view(2, channels)
    shared = [n for n, r in spans.items() if n != "xs" and set(r) & set(spans["xs"])]
    if shared:
        merged_or_refused([x], a, k, [1], w, match=r"merge_channels_: \w+\[0\] and xs\[0\] share memory")
    else:
        merged_or_refused([x], a, k, [1], w, error=None if is_valid(channels, a, k) else ValueError)


def test_crash_cases_in_a_subprocess():
    run_apart(__file__, "crash_cases", "property_index_extremes", "property_aliasing_views")


DTYPE_CHOICES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.int64,
                 torch.complex64, torch.bool]


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_property_mixed_dtypes_all_or_nothing(data):
    """A list mixing supported and unsupported dtypes is refused before any tensor is modified."""
    dtypes = data.draw(st.lists(st.sampled_from(DTYPE_CHOICES), min_size=1, max_size=3))
    xs = [torch.randn(2, 5).to(d) for d in dtypes]
    a, k = torch.tensor([0, 1, 0, 2, 1]), torch.tensor([0, 4, 3])
    supported = all(d in (torch.float32, torch.float64, torch.float16, torch.bfloat16) for d in dtypes)
    merged_or_refused(xs, a, k, [1], error=None if supported else TypeError,
                      match=r"merge_channels_: xs\[\d\] must be a float32, float64, float16 or bfloat16 tensor")


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_property_meta_among_real_tensors_refused(data):
    """A meta tensor among CPU ones (any argument) is refused, nothing modified; all on meta is a no-op."""
    where = data.draw(st.lists(st.booleans(), min_size=5, max_size=5))
    device = ["meta" if m else "cpu" for m in where]
    xs = [torch.randn(4, 5, device=device[0]), torch.randn(5, device=device[1])]
    a, k = torch.tensor([0, 1, 0, 2, 1], device=device[2]), torch.tensor([0, 4, 3], device=device[3])
    w = torch.rand(5, device=device[4])
    if all(where):
        ops.merge_channels_(xs, a, k, [1, 0], w)
    elif any(where):
        real = [x for x in xs if x.device.type == "cpu"]
        before = [x.clone() for x in real]
        with pytest.raises(ValueError, match=r"merge_channels_: .* is on (meta|cpu)"):
            ops.merge_channels_(xs, a, k, [1, 0], w)
        assert all(torch.equal(x, b) for x, b in zip(real, before))
