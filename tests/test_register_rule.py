"""ppf.register_rule: an op the graph does not know locks the channels it reads; with a rule of the user's
own, its channels are followed and the model prunes and runs."""

import pytest
import torch
from torch import nn

import pyprune_fast as ppf


@torch.library.custom_op("ppf_test::channel_scale", mutates_args=())
def channel_scale(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * scale.view(1, -1, 1, 1)


@channel_scale.register_fake
def _(x, scale):
    return torch.empty_like(x)


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.scale = nn.Parameter(torch.rand(8) + 0.5)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.conv2(torch.relu(channel_scale(self.conv1(x), self.scale)))


def channel_scale_rule(ctx, node):
    x, scale = node.args
    ctx.attach(ctx.of(x).dims.get(1), scale, 0)
    ctx.set(node.outputs[0], ctx.of(x).dims)


def test_custom_op_locks_without_a_rule_and_prunes_with_one():
    torch.manual_seed(0)
    model, x = Scaled(), torch.randn(2, 3, 8, 8)
    group = ppf.DependencyGraph(model, x).group_of(model.conv1)
    assert not group.prunable and "channel_scale" in group.reason and "no rule" in group.reason

    ppf.register_rule(channel_scale, channel_scale_rule)
    for meta in (True, False):
        graph = ppf.DependencyGraph(model, x, meta=meta)
        group = graph.group_of(model.conv1)
        assert group.prunable, group.reason
        assert ("scale", 0, "producer") in {(m.name, m.dim, m.role) for m in group.members}
    with torch.no_grad():
        hidden = torch.relu(channel_scale(model.conv1(x), model.scale))
        keep = torch.tensor([0, 2, 3, 5, 7])
        want = nn.functional.conv2d(hidden[:, keep], model.conv2.weight[:, keep], model.conv2.bias, padding=1)
    ppf.apply(ppf.Plan(graph).remove(group, [1, 4, 6]))
    assert model.conv1.out_channels == 5 and model.scale.shape == (5,) and model.conv2.in_channels == 5
    with torch.no_grad():
        assert torch.allclose(model(x), want, atol=1e-5)

class TensordotScale(nn.Module):
    """A per-channel scale the graph cannot follow op by op (tensordot has no rule)."""

    def __init__(self, channels):
        super().__init__()
        self.scale = nn.Parameter(torch.rand(channels) + 0.5)

    def forward(self, x):
        return torch.tensordot(x, torch.diag(self.scale), dims=([1], [0])).permute(0, 3, 1, 2)


class WithModule(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.mid, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), TensordotScale(8), nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.mid(self.conv1(x)))


def tensordot_scale_rule(ctx, node):
    module, tensors, x = node.args
    assert isinstance(module, TensordotScale) and set(tensors) == {"scale"}
    ctx.attach(ctx.of(x).dims.get(1), tensors["scale"], 0)
    ctx.set(node.outputs[0], ctx.of(x).dims)


def test_module_type_runs_as_one_op_with_its_rule():
    torch.manual_seed(0)
    model, x = WithModule(), torch.randn(2, 3, 8, 8)
    group = ppf.DependencyGraph(model, x).group_of(model.conv1)
    assert not group.prunable and "tensordot" in group.reason

    ppf.register_rule(TensordotScale, tensordot_scale_rule)
    graph = ppf.DependencyGraph(model, x)
    assert type(model.mid) is TensordotScale  # its class is back after recording
    group = graph.group_of(model.conv1)
    assert group.prunable, group.reason
    assert ("mid.scale", 0, "producer") in {(m.name, m.dim, m.role) for m in group.members}
    with torch.no_grad():
        hidden = model.mid(model.conv1(x))
        want = nn.functional.conv2d(hidden[:, 2:], model.conv2.weight[:, 2:], model.conv2.bias, padding=1)
    ppf.apply(ppf.Plan(graph).remove(group, [0, 1]))
    assert model.mid.scale.shape == (6,)
    with torch.no_grad():
        assert torch.allclose(model(x), want, atol=1e-5)


def test_register_rule_rejects_what_it_cannot_use():
    with pytest.raises(TypeError, match="fn must be a function"):
        ppf.register_rule("my_op", "identity")
    with pytest.raises(TypeError, match="target must be"):
        ppf.register_rule(3, channel_scale_rule)
