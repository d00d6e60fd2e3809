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
