"""The meta shortcuts (graph/meta.py): outputs made directly on meta tensors must have the real shapes, and
must leave a mismatch for the kernels to report (the run check after apply relies on it)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyprune_fast.graph import output_shapes
from pyprune_fast.graph.meta import meta_output


def test_the_run_check_on_meta_sees_a_bias_that_does_not_fit():
    """A pass on meta tensors raises for a bias that does not fit its weight, as the real kernels do (the
    meta shortcut leaves linear's to its meta kernel; conv's meta kernel does not check: the shortcut does)."""
    meta = {"device": "meta"}
    args = (torch.empty(2, 4, **meta), torch.empty(6, 4, **meta), torch.empty(7, **meta))
    assert meta_output(F.linear, args, {}) is None
    with pytest.raises(RuntimeError):
        F.linear(*args)
    with pytest.raises(RuntimeError, match=r"conv2d: a bias of shape \(5,\) for 6 output channels"):
        meta_output(torch.conv2d, (torch.empty(2, 4, 3, 3, **meta), torch.empty(6, 4, 1, 1, **meta),
                                   torch.empty(5, **meta)), {})


@pytest.mark.parametrize("rnn, x", [
    (nn.LSTM(8, 16, batch_first=True, bidirectional=True, num_layers=2), torch.randn(2, 5, 8)),
    (nn.GRU(8, 16), torch.randn(5, 2, 8)), (nn.RNN(8, 16), torch.randn(5, 8)),
    (nn.LSTM(8, 16, proj_size=4), torch.randn(5, 2, 8))], ids=["lstm-bi-2", "gru", "rnn-unbatched", "lstm-proj"])
def test_recurrent_layers_on_meta_have_their_shapes_made_directly(rnn, x):
    """torch.lstm & co on meta are slow Python step by step (timm's sequencer2d took seconds to trace): their
    outputs are made directly, of the shapes the real layer gives; a weight that does not fit still raises."""
    y = rnn(x)
    states = list(y[1]) if isinstance(y[1], tuple) else [y[1]]
    assert output_shapes(rnn, x, True) == [tuple(t.shape) for t in (y[0], *states)]
    rnn.weight_ih_l0 = nn.Parameter(torch.randn(rnn.weight_ih_l0.shape[0], 7))  # as a bad prune would leave it
    with pytest.raises(RuntimeError):
        output_shapes(rnn, x, True)


class _SizedByInput(nn.Module):
    """A position table resized to sizes the model reads from an integer input (as Hugging Face SigLIP2's
    `spatial_shapes`), masked by an integer mask moved to the features' device."""

    def __init__(self, write_into_input_buffer: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 2, stride=2)
        self.pos = nn.Parameter(torch.randn(1, 8, 4, 4))
        self.fc = nn.Linear(8, 5)
        self.write = write_into_input_buffer

    def forward(self, x, sizes, mask):
        y = self.conv(x).flatten(2).transpose(1, 2)
        h, w = (int(s) for s in sizes[0])  # Tensor.__int__ -> .item(): a value the model needs
        pos = F.interpolate(self.pos, size=(h, w)).flatten(2).transpose(1, 2)
        m = mask.to(device=y.device, dtype=y.dtype)
        if bool(m.sum() > 0):
            y = (y + pos) * m[..., None]
        if self.write:
            out = torch.zeros(y.shape[0], y.shape[1], 5, device=sizes.device)
            out[:] = self.fc(y)  # meta values written into a real tensor: the pass runs for real
            return out
        return self.fc(y)


@pytest.mark.parametrize("write", [False, True], ids=["read", "written-into"])
def test_integer_inputs_stay_real_in_the_meta_pass(write):
    """Integer inputs stay real in the meta pass, so the model's code can read their values (`.item()`,
    `bool(...)`): the graph is still recorded on meta, the same as a real pass records; an op that would write
    meta values into a real tensor makes the pass run for real instead."""
    from pyprune_fast.graph.record import record

    model = _SizedByInput(write).eval()
    inputs = (torch.randn(2, 3, 8, 8), torch.tensor([[4, 4], [4, 4]]), torch.ones(2, 16, dtype=torch.long))
    trace, real = record(model, inputs), record(model, inputs, meta=False)
    assert trace.meta is not write
    assert [n.name for n in trace.nodes] == [n.name for n in real.nodes]
    assert [v.shape for v in trace.outputs] == [tuple(model(*inputs).shape)]
    assert inputs[1].device.type == "cpu" and not model.pos.is_meta  # nothing of the caller's moved
    import pyprune_fast as ppf
    before = model(*inputs).shape
    ppf.prune(model, inputs, method="l1", ratio=0.5)
    assert model.conv.out_channels == 4 and model(*inputs).shape == before


@pytest.mark.parametrize("x, grid", [((2, 3, 5, 7), (2, 4, 6, 2)), ((1, 4, 3, 5, 6), (1, 2, 3, 4, 3)),
                                     ((2, 3, 5, 7), (2, 4, 6, 3)), ((2, 3, 5, 7), (1, 4, 6, 2))],
                         ids=["2d", "3d", "bad-last-dim", "bad-batch"])
def test_grid_sample_on_meta_has_its_shape_made_directly(x, grid):
    """F.grid_sample on meta is a slow Python decomposition (RAFT's correlation lookups): its output is made
    directly, of the real shape; a grid that does not fit is left for the real kernel to report."""
    x, grid = torch.randn(x), torch.rand(grid) * 2 - 1
    made = meta_output(F.grid_sample, (x.to("meta"), grid.to("meta")), {"align_corners": False})
    try:
        real = F.grid_sample(x, grid, align_corners=False)
    except RuntimeError:
        assert made is None
        return
    assert made.is_meta and made.shape == real.shape and made.dtype == real.dtype and made.is_contiguous()


_T = torch.Tensor
ARITHMETIC = [(torch.add, {}), (_T.add, {"alpha": 2}), (torch.sub, {"alpha": 0.5}), (_T.__sub__, {}),
              (_T.__rsub__, {}), (torch.mul, {}), (_T.__mul__, {}), (_T.__radd__, {}), (torch.div, {}),
              (_T.div, {"rounding_mode": "floor"}), (_T.__truediv__, {}), (_T.__rtruediv__, {})]
OPERANDS = {  # (x, y): y a shape, a number, or (shape, dtype) / "transposed"
    "same": ((2, 3, 4), (2, 3, 4)), "broadcast": ((2, 1, 4), (3, 1)), "vector": ((1, 5, 8), (8,)),
    "number": ((2, 3), 1.5), "int-number": ((2, 3), 3), "no-fit": ((2, 3), (4,)),
    "other-dtype": ((2, 3), ((2, 3), torch.float64)), "transposed": ((3, 2), "transposed"),
    "int-tensors": (((2, 3), torch.int64), ((2, 3), torch.int64)), "0-dim": ((2, 3), ((), torch.float64)),
}


def _operand(spec, other=None):
    if spec == "transposed":
        return torch.randn(other.shape[::-1]).t()
    if isinstance(spec, (int, float)):
        return spec
    shape, dtype = spec if isinstance(spec[-1], torch.dtype) else (spec, torch.float32)
    t = (torch.randn(shape) * 10).to(dtype)
    return t if dtype.is_floating_point else t.abs() + 1  # no integer zero divisors


@pytest.mark.parametrize("func, kwargs", ARITHMETIC, ids=lambda v: getattr(v, "__name__", str(v)))
@pytest.mark.parametrize("operands", OPERANDS, ids=str)
def test_binary_arithmetic_on_meta_has_the_real_output_or_is_left_to_the_op(func, kwargs, operands):
    """Residual adds and scalings are Python references on meta (~0.1 ms a call): where the output is plain it is
    made directly, with the real op's shape, dtype and strides; anything else (mixed dtypes, integers, a view,
    shapes that do not broadcast) is left to the op, for its own result or error."""
    x = _operand(OPERANDS[operands][0])
    y = _operand(OPERANDS[operands][1], x)
    meta = lambda v: v.to("meta") if isinstance(v, torch.Tensor) else v  # noqa: E731
    with torch.no_grad():
        made = meta_output(func, (meta(x), meta(y)), kwargs)
        try:
            real = func(x, y, **kwargs)
        except RuntimeError:
            assert made is None
            with pytest.raises((RuntimeError, ValueError)):  # as the op on meta reports it
                func(meta(x), meta(y), **kwargs)
            return
        if made is None:
            assert operands in ("other-dtype", "transposed", "int-tensors", "0-dim")
            return
    assert made.is_meta and made.shape == real.shape and made.dtype == real.dtype and made.stride() == real.stride()


def test_binary_arithmetic_is_left_to_the_op_with_grad_or_out():
    x, y = torch.randn(2, 3, device="meta"), torch.randn(2, 3, device="meta")
    assert meta_output(torch.add, (x, y), {"out": torch.empty(2, 3, device="meta")}) is None
    with torch.enable_grad():
        assert meta_output(torch.add, (x, y), {}) is None
    with torch.no_grad():
        assert meta_output(torch.add, (x, y), {}).shape == (2, 3)
