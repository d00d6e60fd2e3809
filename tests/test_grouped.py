"""Grouped convs and GroupNorms prune within their groups: the same number of channels from every division
(and, for a grouped conv's input, the same local positions), so `groups` / `num_groups` stay as they are."""

import copy

import pytest
import torch
from torch import nn

import pyprune_fast as ppf
from pyprune_fast.methods import METHODS
from pyprune_fast.testing import dead_channel_check, kill_channels


class GroupedNet(nn.Module):
    """conv1 -> GroupNorm(4, 16) -> grouped conv2 (groups=2) -> conv3: conv1's 16 channels are read by the
    GroupNorm in 4 divisions and by conv2 per local position in 2 groups (4 uniform divisions: the lcm);
    conv2's outputs fall into its 2 groups."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 1)
        self.gn = nn.GroupNorm(4, 16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, groups=2)
        self.conv3 = nn.Conv2d(16, 5, 1)

    def forward(self, x):
        return self.conv3(torch.relu(self.conv2(torch.relu(self.gn(self.conv1(x))))))


def kept_per_division(group, kept):
    mask = torch.zeros(group.channels, dtype=torch.bool)
    mask[kept] = True
    return mask.view(group.divisions, -1)


def test_graph_groups_divide_with_the_lcm_and_uniform_where_a_grouped_conv_reads():
    model = GroupedNet()
    g = ppf.DependencyGraph(model, torch.randn(1, 3, 8, 8))
    first, second = g.group_of(model.conv1), g.group_of(model.conv2)
    assert first.prunable and (first.divisions, first.uniform) == (4, True)
    assert second.prunable and (second.divisions, second.uniform) == (2, False)
    assert first.inexact is not None  # the GroupNorm mixes channels within its groups
    assert "4 equal divisions, the same positions in each" in repr(first)
    local = [m for m in first.members if m.name == "conv2.weight"]
    assert [(m.dim, m.divisions, m.role) for m in local] == [(1, 2, "consumer")]


def test_timm_regnet_groups_are_prunable_in_divisions():
    timm = pytest.importorskip("timm")
    model = timm.create_model("regnetx_002").eval()
    g = ppf.DependencyGraph(model, torch.randn(1, 3, 64, 64))
    conv2 = model.s2.b1.conv2.conv  # 56 channels in 7 groups of 8
    assert (g.group_of(conv2).divisions, g.group_of(conv2).uniform) == (7, False)
    inputs = g.group_of(model.s2.b1.conv1.conv)
    assert inputs.prunable and (inputs.divisions, inputs.uniform) == (7, True)


def test_too_few_channels_per_division_lock_with_a_reason():
    """A GroupNorm in 2 groups and a grouped conv in 3 read 6 channels: 6 divisions (the lcm) of one channel
    each lock them (a depthwise conv's groups, one channel each, follow its channels instead)."""
    model = nn.Sequential(nn.Conv2d(3, 6, 1), nn.GroupNorm(2, 6), nn.Conv2d(6, 12, 3, groups=3), nn.Conv2d(12, 2, 1))
    g = ppf.DependencyGraph(model, torch.randn(1, 3, 8, 8))
    assert "into 6 groups of one" in g.group_of(model[0]).reason
    assert g.group_of(model[2]).prunable and g.group_of(model[2]).divisions == 3


def _models():
    timm = pytest.importorskip("timm")
    tv = pytest.importorskip("torchvision.models")
    return {"hand": GroupedNet, "regnetx_002": lambda: timm.create_model("regnetx_002"),
            "resnext26ts": lambda: timm.create_model("resnext26ts"),
            "resnet50_gn": lambda: timm.create_model("resnet50_gn"),
            "resnext50_32x4d": lambda: tv.resnext50_32x4d(), "regnet_x_400mf": lambda: tv.regnet_x_400mf()}


@pytest.mark.parametrize("name", ["hand", "regnetx_002", "resnext26ts", "resnet50_gn", "resnext50_32x4d",
                                  "regnet_x_400mf"])
def test_prune_keeps_groups_and_divisions(name):
    model = _models()[name]().eval()
    x = torch.randn(1, 3, 16, 16) if name == "hand" else torch.randn(1, 3, 64, 64)
    if name != "hand":  # its one exact group is divided: dead_channel_check's random third would not be
        # resnet50_gn: every group meets a GroupNorm, which mixes the channels of a group: skipped
        assert dead_channel_check(model, x, ppf.DependencyGraph(model, x)) == ("skipped: no prunable group of "
            ">= 4 channels with exact dead channels" if name == "resnet50_gn" else "ok")
    groups = {n: (m.groups if isinstance(m, nn.Conv2d) else m.num_groups) for n, m in model.named_modules()
              if isinstance(m, (nn.Conv2d, nn.GroupNorm))}
    shape = model(x).shape
    decision = ppf.decide(model, x, ratio=0.3)
    divided = [e for e in decision.plan.entries.values() if e.group.divisions > 1]
    assert divided, "some group read in divisions is pruned"
    for e in divided:
        per = kept_per_division(e.group, e.keep)
        assert (per.sum(1) == per.sum(1)[0]).all() and per.sum(1)[0] >= 1
        if e.group.uniform:
            assert (per == per[0]).all()
    ppf.commit(decision, x)
    assert model(x).shape == shape
    after = {n: (m.groups if isinstance(m, nn.Conv2d) else m.num_groups) for n, m in model.named_modules()
             if isinstance(m, (nn.Conv2d, nn.GroupNorm))}
    assert after == groups
    for m in model.modules():
        if isinstance(m, nn.GroupNorm):
            assert m.num_channels % m.num_groups == 0


def test_a_plan_across_divisions_raises_and_leaves_the_model_alone():
    model = GroupedNet().eval()
    x = torch.randn(1, 3, 8, 8)
    before = copy.deepcopy(model.state_dict())
    g = ppf.DependencyGraph(model, x)
    first, second = g.group_of(model.conv1), g.group_of(model.conv2)
    with pytest.raises(ValueError, match=r"group \d+ .* 2 equal divisions .* keeps 7, 8 channels per division"):
        ppf.Plan(g).remove(second, [0])
    with pytest.raises(ValueError, match=r"4 equal divisions .* same local positions .* keeps 3, 3, 3, 3"):
        ppf.Plan(g).remove(first, [0, 5, 10, 15])  # as many per division, at other local positions
    with pytest.raises(ValueError, match="every cluster must lie within one division"):
        ppf.Plan(g).merge(second, [0, 0] + list(range(1, 7)) + [0] + list(range(7, 14)))
    with pytest.raises(ValueError, match="by position within 4 groups"):
        ppf.Plan(g).merge(first, list(range(16)))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    plan = ppf.Plan(g).remove(first, [1, 5, 9, 13]).remove(second, [0, 8])
    ppf.apply(plan)
    assert model.conv2.weight.shape == (14, 6, 3, 3) and model.conv2.groups == 2 and model.gn.num_groups == 4
    assert model(x).shape == (1, 5, 8, 8)


def test_removing_dead_channels_of_a_divided_group_leaves_outputs_unchanged():
    model = GroupedNet().eval()
    x = torch.randn(1, 3, 8, 8)
    g = ppf.DependencyGraph(model, x)
    second = g.group_of(model.conv2)
    assert second.inexact is None
    kill_channels(g, second, torch.tensor([2, 5, 9, 14]))
    y = model(x).detach()
    ppf.apply(ppf.Plan(g).remove(second, [2, 5, 9, 14]))
    assert model.conv2.weight.shape[0] == 12 and torch.allclose(model(x), y, rtol=0, atol=1e-6 * float(y.abs().max()))


def test_merges_within_divisions_equal_channel_addition():
    model = GroupedNet().eval()
    x = torch.randn(1, 3, 8, 8)
    g = ppf.DependencyGraph(model, x)
    second = g.group_of(model.conv2)
    with torch.no_grad():  # channels 1 and 9 copy 0 and 8: merging them into those changes nothing
        model.conv2.weight[1], model.conv2.bias[1] = model.conv2.weight[0], model.conv2.bias[0]
        model.conv2.weight[9], model.conv2.bias[9] = model.conv2.weight[8], model.conv2.bias[8]
    y = model(x)
    ppf.apply(ppf.Plan(g).merge(second, [0, 0, *range(1, 7), 7, 7, *range(8, 14)]))
    assert model.conv2.weight.shape[0] == 14 and torch.allclose(model(x), y, atol=1e-5)


def _set_known_magnitudes(model):
    """Every weight 1 but: conv1/GroupNorm channels 3, 7, 11, 15 at 0.3 and 1 at 0.01; conv2 channel 1 at
    0.01, 2 at 0.02, 12 at 0.5. L1 then removes local position 3 of conv1's group (lowest summed over the
    divisions, though channel 1 is the lowest single channel) and conv2's 1 and 12 (lowest within each of
    its two divisions, though 1 and 2 are the lowest two)."""
    a = torch.ones(16)
    a[[3, 7, 11, 15]], a[1] = 0.3, 0.01
    b = torch.ones(16)
    b[1], b[2], b[12] = 0.01, 0.02, 0.5
    with torch.no_grad():
        model.conv1.weight.copy_(a[:, None, None, None].expand_as(model.conv1.weight))
        model.conv1.bias.copy_(a)
        model.gn.weight.copy_(a)
        model.gn.bias.copy_(a)
        cols = a.view(2, 1, 8)  # conv2's input column i of group j reads conv1 channel 8 j + i
        w = (b.view(2, 8, 1) * cols).reshape(16, 8)
        model.conv2.weight.copy_(w[:, :, None, None].expand_as(model.conv2.weight))
        model.conv2.bias.copy_(b)
        model.conv3.weight.copy_(b[None, :, None, None].expand_as(model.conv3.weight))


@pytest.mark.parametrize("method", ["l1", "l2"])
def test_scores_remove_the_lowest_channels_within_each_division(method):
    model = GroupedNet().eval()
    _set_known_magnitudes(model)
    g = ppf.DependencyGraph(model, torch.randn(1, 3, 8, 8))
    groups = g.prunable_groups
    crit = METHODS[method](g, groups)
    first, second = g.group_of(model.conv1), g.group_of(model.conv2)
    widths = torch.tensor([12 if gr is first else 14 if gr is second else gr.channels for gr in groups])
    plan = ppf.Plan(g)
    crit.decide(plan, widths)
    removed = lambda gr: sorted(set(range(gr.channels)) - set(plan.entries[gr.index].keep.tolist()))
    assert removed(first) == [3, 7, 11, 15]
    assert removed(second) == [1, 12]


def test_widths_round_to_whole_divisions_and_ascp_keeps_divided_groups_whole():
    model = GroupedNet().eval()
    g = ppf.DependencyGraph(model, torch.randn(1, 3, 8, 8))
    groups = g.prunable_groups
    l1 = METHODS["l1"](g, groups)
    widths = dict(zip([gr.index for gr in groups], l1.uniform(0.3).tolist()))
    assert widths[g.group_of(model.conv1).index] == 12  # 16 - 4, then up to a multiple of 4
    assert widths[g.group_of(model.conv2).index] == 12  # 16 - 4, a multiple of 2
    assert all(w >= gr.divisions for gr, w in zip(groups, l1.uniform(0.99).tolist()))
    ascp = METHODS["ascp"](g, groups)  # k-means clusters would cross the divisions
    assert all(w == gr.channels for gr, w in zip(groups, ascp.uniform(0.5).tolist()) if gr.divisions > 1)


@pytest.mark.parametrize("alloc", [{"ratio": 0.5}, {"threshold": 0.0}, {"target_flops": 0.5}])
def test_cup_clusters_local_positions_of_divided_groups(alloc):
    model = GroupedNet().eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():  # conv2's channels 0 and 3 identical in both of its groups: one merge at height 0
        model.conv2.weight[[3, 11]] = model.conv2.weight[[0, 8]]
        model.conv2.bias[[3, 11]] = model.conv2.bias[[0, 8]]
        model.conv3.weight[:, [3, 11]] = model.conv3.weight[:, [0, 8]]
    decision = ppf.decide(model, x, method="cup", **alloc)
    entries = [e for e in decision.plan.entries.values() if e.group.divisions > 1]
    assert entries
    for e in entries:  # CUP keeps the same local positions in every division
        per = kept_per_division(e.group, e.keep)
        assert (per == per[0]).all() and per[0].sum() >= 1
    if "threshold" in alloc:
        second = [e for e in entries if e.group.divisions == 2][0]
        assert sorted(set(range(16)) - set(second.keep.tolist())) in ([0, 8], [3, 11])
    ppf.commit(decision, x)
    assert model(x).shape == (1, 5, 8, 8) and model.conv2.groups == 2 and model.gn.num_groups == 4


def test_macs_model_counts_a_grouped_convs_input_columns():
    model = GroupedNet().eval()
    x = torch.randn(1, 3, 8, 8)
    report = ppf.prune(model, x, ratio=0.3)
    assert report.macs_after == ppf.flops.profile(model, x).macs
    d = ppf.decide(GroupedNet().eval(), x, ratio=0.3)
    assert d.macs_exact and d.macs_predicted == pytest.approx(report.macs_after)


def test_a_pruned_grouped_model_saves_and_loads(tmp_path):
    model = GroupedNet().eval()
    x = torch.randn(1, 3, 8, 8)
    ppf.prune(model, x, ratio=0.3)
    ppf.save_pruned(model, tmp_path / "m.pt")
    loaded = ppf.load_pruned(GroupedNet, tmp_path / "m.pt").eval()
    assert (loaded.conv2.groups, loaded.gn.num_groups, loaded.gn.num_channels) == (2, 4, 12)
    torch.testing.assert_close(loaded(x), model(x))


class Multiplier(nn.Module):
    """A depthwise conv with a channel multiplier (one input channel a group, 3 outputs each), then a 1x1."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 24, 3, padding=1, groups=8)
        self.bn = nn.BatchNorm2d(24)
        self.c2 = nn.Conv2d(24, 4, 1)

    def forward(self, x):
        return self.c2(self.bn(self.dw(self.c1(x)).relu()))


def test_a_channel_multiplier_prunes_whole_groups(tmp_path):
    model, x = Multiplier().eval(), torch.randn(2, 3, 8, 8)
    g = ppf.DependencyGraph(model, x)
    grp = g.group_of(model.c1)
    assert grp.prunable and g.group_of(model.dw) is grp
    assert {(m.name, m.block) for m in grp.members if m.name.startswith(("dw.", "bn.", "c2."))} == {
        ("dw.weight", 3), ("dw.bias", 3), ("bn.weight", 3), ("bn.bias", 3), ("bn.running_mean", 3),
        ("bn.running_var", 3), ("c2.weight", 3)}
    assert dead_channel_check(model, x, g) == "ok"
    ppf.prune(model, x, ratio=0.5)
    assert (model.dw.in_channels, model.dw.out_channels, model.dw.groups, model.c2.in_channels) == (4, 12, 4, 12)
    assert model(x).shape == (2, 4, 8, 8)
    ppf.save_pruned(model, tmp_path / "m.pt")
    torch.testing.assert_close(ppf.load_pruned(lambda: Multiplier().eval(), tmp_path / "m.pt")(x), model(x))


class MultipliedThenMixed(nn.Module):
    """FastViT's downsampling: a depthwise conv doubles the channels (each input channel 2 positions wide), a
    depthwise conv over those, and a block adding a 1x1 conv's output to them (its identity branch)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.Conv2d(8, 16, 3, padding=1, groups=8)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.mix, self.out = nn.Conv2d(16, 16, 1), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = self.dw(self.up(self.c1(x)))
        return self.out(y + self.mix(y))


def test_a_layer_added_to_multiplied_channels_is_cut_in_their_blocks():
    model, x = MultipliedThenMixed().eval(), torch.randn(2, 3, 8, 8)
    g = ppf.DependencyGraph(model, x)
    grp = g.group_of(model.c1)
    assert grp.prunable and grp.channels == 8 and g.group_of(model.mix) is grp
    assert {(m.name, m.block) for m in grp.members if m.name.startswith(("dw.", "mix.weight"))} == {
        ("dw.weight", 2), ("dw.bias", 2), ("mix.weight", 2)}
    assert dead_channel_check(model, x, g) == "ok"
    ppf.prune(model, x, ratio=0.5)
    assert (model.up.out_channels, model.dw.groups, model.mix.in_channels, model.mix.out_channels) == (8, 8, 8, 8)
    assert model(x).shape == (2, 4, 8, 8)
