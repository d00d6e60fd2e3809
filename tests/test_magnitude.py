"""L1/L2 channel scores against a channel-by-channel sum over every member slice."""

import pytest
import torch
from torch import nn
from torchvision.models import VisionTransformer

import pyprune_fast as ppf
from nets import BranchNet, FlattenNet
from pyprune_fast.methods.magnitude import l1, l2
from pyprune_fast.graph import positions


def reference(graph, group, p):
    params = dict(graph.model.named_parameters())
    total = torch.zeros(group.channels, dtype=torch.float64)
    for m in group.members:
        if m.name in params:
            t = params[m.name].detach().double().movedim(m.dim, 0)
            for c in range(group.channels):
                total[c] += t[positions(torch.tensor([c]), m.offset, m.block)].abs().pow(p).sum()
    return total ** (1 / p)


class LayerScaleNet(nn.Module):
    """A (C, 1, 1) scale between two convs, as in ConvNeXt."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3), nn.Conv2d(6, 4, 1)
        self.scale = nn.Parameter(torch.randn(6, 1, 1))

    def forward(self, x):
        return self.conv2(self.conv1(x) * self.scale).mean((2, 3))


MODELS = {
    "layer_scale": (LayerScaleNet, (2, 3, 6, 6)),
    "flatten": (FlattenNet, (2, 3, 8, 8)),  # flatten into a Linear: blocks of columns
    "branches": (BranchNet, (2, 3, 6, 6)),  # concat: offsets
    "vit": (lambda: VisionTransformer(32, 8, 2, 4, 64, 128), (1, 3, 32, 32)),  # heads: q, k, v blocks
}


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("name", list(MODELS))
def test_scores_sum_every_member(name, p):
    build, shape = MODELS[name]
    model = build().eval()
    g = ppf.DependencyGraph(model, torch.randn(shape))
    groups = g.prunable_groups
    got = (l1 if p == 1 else l2)(g, groups)
    assert len(got) == len(groups) > 0
    for grp, s in zip(groups, got):
        assert s.dtype == torch.float32 and s.device.type == "cpu" and s.shape == (grp.channels,)
        torch.testing.assert_close(s.double(), reference(g, grp, p), rtol=1e-5, atol=1e-6)


def test_no_groups_no_scores():
    model = FlattenNet()
    assert l1(ppf.DependencyGraph(model, torch.randn(1, 3, 8, 8)), []) == []
