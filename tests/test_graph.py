import pytest
import torch
from torch import nn

import pyprune_fast as ppf
from nets import BranchNet, FlattenNet


def members(group, name):
    return [m for m in group.members if m.name == name]


def test_residual_branches_share_one_group(tv_model):
    model = tv_model("resnet18")
    g = ppf.DependencyGraph(model, torch.randn(1, 3, 64, 64))
    stem = g.group_of(model.conv1)
    assert stem is g.group_of(model.layer1[0].conv2) is g.group_of(model.layer1[1].conv2)
    names = {m.name for m in stem.members}
    assert {"bn1.weight", "bn1.running_var", "layer1.0.bn2.bias", "layer2.0.conv1.weight", "layer2.0.downsample.0.weight"} <= names
    assert members(stem, "layer2.0.conv1.weight")[0].role == "consumer"
    assert stem.prunable and g.group_of(model.layer1[0].conv1).prunable
    assert g.group_of(model.layer2[0].conv2) is g.group_of(model.layer2[0].downsample[0])


def test_output_and_ignored_layers_are_not_prunable(tv_model):
    model = tv_model("resnet18")
    g = ppf.DependencyGraph(model, torch.randn(1, 3, 64, 64), ignored_layers=[model.layer1[0].conv1])
    assert not g.group_of(model.fc).prunable and "output" in g.group_of(model.fc).reason
    assert "ignored_layers" in g.group_of(model.layer1[0].conv1).reason
    with pytest.raises(ValueError, match="not part of the model"):
        ppf.DependencyGraph(model, torch.randn(1, 3, 64, 64), ignored_layers=[nn.Linear(2, 2)])


def test_flatten_into_linear_gives_channel_blocks():
    model = FlattenNet()
    g = ppf.DependencyGraph(model, torch.randn(2, 3, 8, 8))
    grp = g.group_of(model.conv2)
    (fc,) = members(grp, "fc1.weight")
    assert (fc.dim, fc.offset, fc.block, fc.role) == (1, 0, 16, "consumer")
    assert {m.name for m in g.group_of(model.conv1).members} >= {"bn1.weight", "bn1.bias", "bn1.running_mean", "conv2.weight"}


def test_concat_offsets_and_squeeze_excitation():
    model = BranchNet()
    g = ppf.DependencyGraph(model, torch.randn(1, 3, 6, 6))
    a, b = g.group_of(model.a), g.group_of(model.b)
    # y + mix(y) adds mix's 9 channels, read by that add alone, to the [4 | 5] concat: mix's rows are cut into
    # the same parts (and so are se2's, which scale y), its columns read the concat
    assert sorted((m.dim, m.offset, m.block) for m in members(a, "mix.weight")) == [(0, 0, 1), (1, 0, 1)]
    assert sorted((m.dim, m.offset, m.block) for m in members(b, "mix.weight")) == [(0, 4, 1), (1, 4, 1)]
    assert sorted(m.offset for m in members(b, "se2.weight")) == [4]
    assert all(g.group_of(conv).prunable for conv in (model.a, model.b, model.se1))
    x = torch.randn(1, 3, 6, 6)
    ppf.prune(model, x, ratio=0.5)
    assert (model.a.out_channels, model.b.out_channels, model.mix.out_channels) == (2, 2, 4)
    assert model(x).shape == (1, 2)


def test_depthwise_and_se_in_mobilenet(tv_model):
    model = tv_model("mobilenet_v3_small")
    g = ppf.DependencyGraph(model, torch.randn(1, 3, 64, 64))
    expand = model.features[4].block[0][0]   # 1x1 expansion conv
    depthwise = model.features[4].block[1][0]
    grp = g.group_of(expand)
    assert grp is g.group_of(depthwise)
    assert members(grp, "features.4.block.1.0.weight")[0].role == "producer"
    assert grp is g.group_of(model.features[4].block[2].fc2)  # the SE scale multiplies these channels


def test_reasons_for_unprunable_groups(tv_model):
    shufflenet = ppf.DependencyGraph(tv_model("shufflenet_v2_x0_5"), torch.randn(1, 3, 64, 64))
    reasons = " | ".join(g.reason for g in shufflenet.groups if g.reason)
    assert "splits or mixes channels" in reasons  # the channel shuffle views (B, C) as (B, 2, C // 2)
    grouped = nn.Sequential(nn.Conv2d(3, 6, 1), nn.GroupNorm(2, 6), nn.Conv2d(6, 6, 3, groups=3))  # lcm: 6 groups of 1
    assert any("grouped conv" in (g.reason or "") for g in ppf.DependencyGraph(grouped, torch.randn(1, 3, 8, 8)).groups)


def test_bad_model_input_is_a_clear_error(tv_model):
    with pytest.raises(ValueError, match="running the model on example_inputs failed: RuntimeError"):
        ppf.DependencyGraph(tv_model("resnet18"), torch.randn(1, 4, 32, 32))
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        ppf.DependencyGraph(lambda x: x, torch.randn(1))


def test_tracing_leaves_the_model_as_it_was(tv_model):
    model = tv_model("resnet18").train()
    params = {n: p for n, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ppf.DependencyGraph(model, torch.randn(2, 3, 32, 32))
    assert model.training
    assert all(p is params[n] for n, p in model.named_parameters())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # BN statistics untouched


def test_profile_counts_macs():
    model = FlattenNet()
    p = ppf.profile(model, torch.randn(1, 3, 8, 8))
    expected = 8 * 64 * 27 + 6 * 16 * 72 + 10 * 96 + 3 * 10
    assert p.macs == expected and p.params == sum(t.numel() for t in model.parameters())
    assert "conv1" in str(p)


def test_meta_linear_shortcut_leaves_a_width_mismatch_to_the_real_kernel():
    """The shortcut that makes a Linear's meta output without running it must not hide a mismatch
    (the pruned-model check relies on the meta pass failing where the real one would)."""
    from pyprune_fast.graph.meta import meta_output as _meta_output

    w = torch.empty(3, 6, device="meta")
    assert _meta_output(torch.nn.functional.linear, (torch.empty(2, 6, device="meta"), w), {}).shape == (2, 3)
    wrong = torch.empty(2, 5, device="meta")
    assert _meta_output(torch.nn.functional.linear, (wrong, w), {}) is None
    with pytest.raises(RuntimeError):
        torch.nn.functional.linear(wrong, w)


class Clipped(nn.Module):
    def __init__(self, low, high):
        super().__init__()
        self.conv1, self.conv2, self.bounds = nn.Conv2d(3, 6, 3), nn.Conv2d(6, 4, 3), (low, high)

    def forward(self, x):
        return self.conv2(torch.clip(self.conv1(x), *self.bounds))


@pytest.mark.parametrize("low,high,exact", [(0.0, 6.0, True), (1.0, 2.0, False)])
def test_clip_carries_channels_as_clamp_does(low, high, exact):
    """clip is clamp under another name: channels pass through; bounds that exclude 0 make dead channels
    non-zero, so the conv after it sees their removal."""
    model = Clipped(low, high)
    group = ppf.DependencyGraph(model, torch.randn(1, 3, 8, 8)).group_of(model.conv1)
    assert group.prunable, group.reason
    assert (group.inexact is None) == exact
    assert exact or "clip" in group.inexact


def test_batchnorm_after_reads_keyword_arguments():
    """A conv called with weight= (timm's style) still pairs with the BatchNorm after it."""
    from pyprune_fast.graph import batchnorm_after, record

    class KeywordConv(torch.nn.Conv2d):
        def forward(self, x):
            return torch.nn.functional.conv2d(input=x, weight=self.weight, bias=self.bias, padding=1)

    model = torch.nn.Sequential(KeywordConv(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    assert set(batchnorm_after(record(model, torch.randn(1, 3, 8, 8)))) == {"0.weight"}
