"""dead_channels_are_exact: each claim checked by a real forward pass, in float64. Channels are killed
(their producing parameters zeroed), the output taken, the channels removed, the output taken again:
an exact claim must leave it unchanged; where removal would change it the group says why (Group.inexact)."""

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import pyprune_fast as ppf
from pyprune_fast.testing import dead_channels_are_exact, kill_channels


def randomize(model: nn.Module) -> nn.Module:
    """Norm statistics, affine parameters and layer scales away from their neutral starts, so that a
    norm's shift and every branch count."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.running_mean is not None:
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
            for name in ("weight", "bias"):
                p = getattr(m, name, None)
                if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)) and p is not None:
                    p.normal_(0.5 if name == "weight" else 0.0, 0.5)
            if getattr(m, "layer_scale", None) is not None:
                m.layer_scale.uniform_(0.5, 1.5)
    return model


class Net(nn.Module):
    """conv1 (the group under test) and a BatchNorm, then `between`, then conv2 reads the result."""

    def __init__(self, between, channels=6, **modules):
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, 4, 3, padding=1)
        for name, m in modules.items():
            setattr(self, name, m)
        self.between = between

    def forward(self, x):
        return self.conv2(self.between(self, self.bn(self.conv1(x))))


def killed_then_removed(model, x, module, dead=(0, 2)):
    """The claim for the group of `module(model)` (a layer: its output channels; a module's name: the group
    it is in, as attention heads), its reason, and the outputs with `dead` channels killed, then removed."""
    model, x = randomize(model.double().eval()), x.double()
    g = ppf.DependencyGraph(model, x)
    m = module(model)
    group = g.group_of(m) if hasattr(m, "weight") else next(grp for grp in g.groups if m in grp.modules)
    assert group.prunable, group.reason
    claim = dead_channels_are_exact(g, group)
    kill_channels(g, group, torch.tensor(dead))
    with torch.no_grad():
        y0 = model(x)
    ppf.apply(ppf.Plan(g).remove(group, list(dead)))
    with torch.no_grad():
        y1 = model(x)
    return claim, group.inexact, y0, y1


def assert_claim_holds(claim, y0, y1):
    if claim:
        torch.testing.assert_close(y1, y0, rtol=1e-9, atol=1e-9)
    else:  # the claim is that removal changes outputs: show that it does (NaN counts as a change)
        assert not torch.allclose(y1, y0, rtol=1e-6, atol=1e-6)


def se(gate):
    """A squeeze-excitation block on conv1's channels: the gate's dead channels are gate(0) != 0, but the
    product with the block's input, zero there, is zero."""
    return lambda m, y: y.relu() * gate(m.fc2(m.fc1(F.adaptive_avg_pool2d(y, 1)).relu()))


def se_layers():
    return {"fc1": nn.Conv2d(6, 3, 1), "fc2": nn.Conv2d(3, 6, 1)}


def cbam_spatial(m, y):
    return y * torch.sigmoid(m.spatial(torch.cat([y.mean(1, keepdim=True), y.amax(1, keepdim=True)], 1)))


CASES = {  # name: (between, extra modules, exact, words of the reason)
    "cbam_spatial_attention": (cbam_spatial, {"spatial": nn.Conv2d(2, 1, 7, padding=3)}, False, "mean over"),
    "amax_over_channels": (lambda m, y: y * torch.sigmoid(y.abs().neg().amax(1, keepdim=True)), {}, False,
                           "amax over"),  # the max of -|y| is 0 while a dead channel takes part
    "softmax_over_channels": (lambda m, y: y.softmax(1), {}, False, "softmax along"),
    "softmax_over_positions": (lambda m, y: y.flatten(2).softmax(-1).view_as(y), {}, False,
                               "conv2 reads dead channels that softmax made non-zero"),
    "sigmoid_then_conv": (lambda m, y: torch.sigmoid(y), {}, False, "that sigmoid made non-zero"),
    "plus_one_then_conv": (lambda m, y: y + 1, {}, False, "that add made non-zero"),
    "pad_with_ones": (lambda m, y: F.pad(y, (1, 1, 1, 1), value=1.0), {}, False, "pad with 1.0"),
    "division_by_channels": (lambda m, y: torch.sigmoid(y) / y, {}, False, "divides by these channels"),
    # its running statistics are killed too: (0 - 0) / sqrt(0 + eps) = 0
    "batchnorm_without_affine": (lambda m, y: m.plain(y), {"plain": nn.BatchNorm2d(6, affine=False)}, True, None),
    "layer_norm_across_channels": (lambda m, y: m.ln(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2),
                                   {"ln": nn.LayerNorm(6)}, False, "layer_norm ln normalises across"),
    "group_norm_one_group": (lambda m, y: m.gn(y), {"gn": nn.GroupNorm(1, 6)}, False, "group_norm gn normalises"),
    "group_norm_per_channel": (lambda m, y: m.gn(y), {"gn": nn.GroupNorm(6, 6)}, True, None),
    "instance_norm_without_affine": (lambda m, y: F.instance_norm(y), {}, True, None),  # zeros stay zero
    "squeeze_excitation": (se(torch.sigmoid), se_layers(), True, None),
    "squeeze_excitation_hardsigmoid": (se(F.hardsigmoid), se_layers(), True, None),
    "sum_over_channels": (lambda m, y: y * torch.sigmoid(y.sum(1, keepdim=True)), {}, True, None),
    "l2_normalize_over_channels": (lambda m, y: F.normalize(y, dim=1), {}, True, None),
    "relu_clamp_and_products": (lambda m, y: F.relu6(y) * y.clamp(-1, 2) * 3 - F.hardtanh(y), {}, True, None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_claim_matches_what_removal_does(name):
    between, modules, exact, words = CASES[name]
    claim, reason, y0, y1 = killed_then_removed(Net(between, **copy.deepcopy(modules)), torch.randn(2, 3, 8, 8),
                                                lambda m: m.conv1)
    assert claim is exact, reason
    assert (reason is None) if exact else words in reason
    assert_claim_holds(claim, y0, y1)


def test_squeeze_channels_of_an_se_block_are_exact():
    claim, reason, y0, y1 = killed_then_removed(Net(se(torch.sigmoid), **se_layers()), torch.randn(2, 3, 8, 8),
                                                lambda m: m.fc1, dead=(1,))
    assert claim, reason
    assert_claim_holds(claim, y0, y1)


@pytest.mark.parametrize("p", [2, 1, 0, float("inf"), -1, float("-inf")])
def test_lp_norm_over_channels_is_exact_for_p_at_least_zero(p):
    between = lambda m, y: y / (1 + torch.linalg.vector_norm(y, ord=p, dim=1, keepdim=True))  # noqa: E731
    claim, reason, y0, y1 = killed_then_removed(Net(between), torch.randn(2, 3, 8, 8), lambda m: m.conv1)
    assert claim is (p >= 0), reason
    assert_claim_holds(claim, y0, y1)


class Rows(nn.Module):
    """conv1d channels, then a Linear along the positions: each channel's row becomes W x + b."""

    def __init__(self, bias):
        super().__init__()
        self.conv1 = nn.Conv1d(3, 6, 1)
        self.along = nn.Linear(10, 10, bias=bias)
        self.conv2 = nn.Conv1d(6, 4, 1)

    def forward(self, x):
        return self.conv2(self.along(self.conv1(x)))


@pytest.mark.parametrize("bias", [True, False])
def test_linear_along_other_dims_adds_its_bias_to_dead_channels(bias):
    claim, reason, y0, y1 = killed_then_removed(Rows(bias), torch.randn(2, 3, 10), lambda m: m.conv1)
    assert claim is not bias, reason
    assert_claim_holds(claim, y0, y1)


class Attend(nn.Module):
    """nn.MultiheadAttention between two Linears; `weights`: None, "averaged" or "per head" (then read)."""

    def __init__(self, weights):
        super().__init__()
        self.inp, self.mha, self.out = nn.Linear(8, 16), nn.MultiheadAttention(16, 4), nn.Linear(16, 3)
        self.weights = weights

    def forward(self, x):
        h = self.inp(x)
        y, w = self.mha(h, h, h, need_weights=self.weights is not None, average_attn_weights=self.weights == "averaged")
        return self.out(y) if w is None else self.out(y) * w.pow(2).sum()


@pytest.mark.parametrize("weights", [None, "averaged"])
def test_dead_heads_are_exact_unless_their_averaged_weights_are_read(weights):
    claim, reason, y0, y1 = killed_then_removed(Attend(weights), torch.randn(5, 2, 8), lambda m: "mha", dead=(1,))
    assert claim is (weights is None), reason
    assert weights is None or "averaged over its heads" in reason
    assert_claim_holds(claim, y0, y1)


def test_heads_whose_weights_are_read_one_by_one_stay():
    g = ppf.DependencyGraph(Attend("per head"), torch.randn(5, 2, 8))
    heads = next(grp for grp in g.groups if "mha" in grp.modules)
    assert not heads.prunable and "read head by head" in heads.reason


CLASSIFIERS = {"resnet18": (12, 12), "mobilenet_v3_small": (27, 27), "convnext_tiny": (22, 18)}  # prunable, exact


def small_convnext():
    """torchvision's ConvNeXt, three narrow stages of two blocks: convnext_tiny's float64 forward takes seconds."""
    from torchvision.models.convnext import CNBlockConfig

    return torchvision.models.ConvNeXt([CNBlockConfig(24, 48, 2), CNBlockConfig(48, 96, 2), CNBlockConfig(96, None, 2)])


@functools.cache
def classifier(name, tv_model):
    torch.manual_seed(0)
    model = small_convnext() if name == "small_convnext" else tv_model(name)
    return randomize(model.double().eval())


@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_ordinary_classifiers_keep_their_exact_groups(name, tv_model):
    g = ppf.DependencyGraph(classifier(name, tv_model), torch.randn(1, 3, 32, 32, dtype=torch.float64))
    inexact = [grp for grp in g.prunable_groups if not dead_channels_are_exact(g, grp)]
    assert (len(g.prunable_groups), len(g.prunable_groups) - len(inexact)) == CLASSIFIERS[name]
    assert all("layer_norm" in grp.inexact for grp in inexact)  # ConvNeXt's residual channels


@settings(max_examples=6, deadline=None)
@given(name=st.sampled_from(["resnet18", "mobilenet_v3_small", "small_convnext"]), size=st.sampled_from([32, 48]),
       seed=st.integers(0, 2**31 - 1))
def test_every_group_claimed_exact_is_exact(tv_model, name, size, seed):
    """Random channels of a random half of the groups claimed exact, killed then removed together."""
    gen = torch.Generator().manual_seed(seed)
    model = copy.deepcopy(classifier(name, tv_model))
    x = torch.randn(1, 3, size, size, generator=gen, dtype=torch.float64)
    g = ppf.DependencyGraph(model, x)
    exact = [grp for grp in g.prunable_groups if dead_channels_are_exact(g, grp)]
    chosen = {}
    for i in torch.randperm(len(exact), generator=gen)[: max(1, len(exact) // 2)].tolist():
        grp = exact[i]
        chosen[grp] = torch.randperm(grp.channels, generator=gen)[: max(1, grp.channels // 3)]
        kill_channels(g, grp, chosen[grp])
    with torch.no_grad():
        y0 = model(x)
    plan = ppf.Plan(g)
    for grp, channels in chosen.items():
        plan.remove(grp, channels)
    ppf.apply(plan)
    with torch.no_grad():
        torch.testing.assert_close(model(x), y0, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name, exact", [("relu_clamp_and_products", True), ("squeeze_excitation", True),
                                         ("sum_over_channels", False), ("l2_normalize_over_channels", False),
                                         ("cbam_spatial_attention", False)])
def test_merge_claim_matches_what_channel_addition_does(name, exact):
    """Group.merges_exactly (ASCP merges only then): channel 1 made a copy of channel 0, then the two merged
    by channel addition. A sum or norm over the channels counts the copy, so there the output changes."""
    between, modules, _, _ = CASES[name]
    model = randomize(Net(between, **copy.deepcopy(modules)).double().eval())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    g = ppf.DependencyGraph(model, x)
    group = g.group_of(model.conv1)
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for m in group.members:
            if m.role == "producer":
                t = tensors[m.name]
                t.narrow(m.dim, m.offset + m.block, m.block).copy_(t.narrow(m.dim, m.offset, m.block))
        y0 = model(x)
    ppf.apply(ppf.Plan(g).merge(group, [0, *range(group.channels - 1)]))
    with torch.no_grad():
        y1 = model(x)
    assert group.merges_exactly is exact, (group.inexact, group.reduced)
    assert model.conv1.out_channels == 5
    assert_claim_holds(exact, y0, y1)


class FrozenNorm(nn.Module):
    """A BatchNorm whose scale and shift are buffers (frozen, as detection code keeps them)."""

    def __init__(self, channels):
        super().__init__()
        for name, value in (("weight", torch.rand(channels) + 0.5), ("bias", torch.randn(channels)),
                            ("running_mean", torch.randn(channels)), ("running_var", torch.rand(channels) + 0.5)):
            self.register_buffer(name, value)

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, 1e-5)


def test_a_frozen_norm_with_buffers_is_killed_too():
    """kill_channels zeroes producing buffers as well as parameters: the frozen norm's shift is a buffer."""
    claim, reason, y0, y1 = killed_then_removed(Net(lambda m, y: m.frozen(y), frozen=FrozenNorm(6)),
                                                torch.randn(2, 3, 8, 8), lambda m: m.conv1)
    assert claim, reason
    assert_claim_holds(claim, y0, y1)


def test_a_norm_with_statistics_made_in_forward_locks_its_channels():
    model = Net(lambda m, y: F.batch_norm(y, torch.zeros(6), torch.ones(6))).eval()
    g = ppf.DependencyGraph(model, torch.randn(2, 3, 8, 8))
    group = g.group_of(model.conv1)
    assert not group.prunable and "statistics or parameters made inside forward" in group.reason
