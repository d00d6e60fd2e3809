"""The papers' criteria behind ppf.prune: each against a plain reference, allocations, and bad input."""

import copy

import numpy as np
import pytest
import torch
from scipy.cluster.hierarchy import fcluster, linkage
from torch import nn

import pyprune_fast as ppf
from pyprune_fast.graph import named_tensors
from pyprune_fast.methods import METHODS
from pyprune_fast.methods.base import channel_view, member_tensors
from pyprune_fast.methods.cup import cup_features, feature_blocks
from helpers import run
from nets import FlattenNet, TinyResNet


def randomise_bn(model):
    """BatchNorm statistics and affine parameters away from their identity defaults."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


class Chain(nn.Module):
    """A VGG-style chain (conv-BN-ReLU, no residuals) into a Linear through a flatten."""

    def __init__(self, widths=(16, 24, 32, 20)):
        super().__init__()
        layers, cin = [], 3
        for w in widths:
            layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
            cin = w
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin * 4 * 4, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


def convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def graph_of(model, x):
    return ppf.DependencyGraph(model, x, ignored_layers=[model.fc])


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_every_method_meets_a_macs_target(method, arch, tv_model):
    model = tv_model(arch)
    x = torch.randn(1, 3, 64, 64)
    report = ppf.prune(model, x, method, target_flops=0.5)
    kept = report.macs_after / report.macs_before
    assert abs(kept - 0.5) <= 0.02 * 0.5, kept
    assert report.macs_after == ppf.profile(model, x).macs
    assert run(model, x).shape == (1, 1000)
    assert set(report.timings) == {"trace", "scores", "clustering", "allocation", "surgery"}


def test_vit_meets_a_macs_target(small_vit):
    model = small_vit()
    x = torch.randn(1, 3, 32, 32)
    for method in ("l1", "cup"):
        m = copy.deepcopy(model)
        report = ppf.prune(m, x, method, target_flops=0.6, ignored_layers=[m.heads.head])
        assert abs(report.macs_after / report.macs_before - 0.6) <= 0.02 * 0.6
        assert run(m, x).shape == (1, 10)


@pytest.mark.parametrize("make", [Chain, FlattenNet, TinyResNet, "resnet18", "mobilenet_v3_small"])
def test_macs_after_without_a_recount_equal_a_recount(make, tv_model):
    """Conv and Linear MACs scale with their weights, so the report takes the MACs model's number for
    CNNs (no second forward pass); it must be what profiling the pruned model gives."""
    torch.manual_seed(0)
    x = {Chain: torch.randn(2, 3, 4, 4), FlattenNet: torch.randn(2, 3, 8, 8), TinyResNet: torch.randn(2, 1, 8, 8)}.get(
        make, torch.randn(1, 3, 64, 64))
    for method, option in (("l1", {"ratio": 0.4}), ("cup", {"ratio": 0.3})):
        model = tv_model(make) if isinstance(make, str) else make()
        decision = ppf.decide(model, x, method, **option)
        assert decision.macs_exact
        report = ppf.commit(decision, x)
        assert report.macs_after == ppf.profile(model, x).macs < report.macs_before
        assert report.params_after == sum(p.numel() for p in model.parameters())


def test_attention_macs_are_recounted(small_vit):
    model = small_vit()
    x = torch.randn(1, 3, 32, 32)
    decision = ppf.decide(model, x, "l1", ratio=0.5, ignored_layers=[model.heads.head])
    assert not decision.macs_exact
    assert ppf.commit(decision, x).macs_after == ppf.profile(model, x).macs


def cup_features_published(model):
    """CUP's features the published way, layer by layer on a chain: incoming kernel-slice norms and
    outgoing norms in the next layer (the Linear's block of columns for the last conv)."""
    cs = convs(model)
    feats = []
    for i, c in enumerate(cs):
        incoming = c.weight.detach().flatten(2).norm(dim=2)  # (out, in)
        if i + 1 < len(cs):
            outgoing = cs[i + 1].weight.detach().flatten(2).norm(dim=2).T  # (this layer's out, next out)
        else:
            w = model.fc.weight.detach()
            outgoing = w.reshape(w.shape[0], c.out_channels, -1).norm(dim=2).T
        feats.append(torch.cat([incoming, outgoing], 1).double().numpy())
    return feats


@pytest.mark.parametrize("threshold", [0.5, 1.0, 1.6])
def test_cup_cluster_counts_match_the_published_recipe(threshold):
    model = Chain()
    x = torch.randn(1, 3, 4, 4)
    expected = [len(np.unique(fcluster(linkage(f, "ward"), threshold, criterion="distance")))
                for f in cup_features_published(model)]
    g = graph_of(model, x)
    cup = METHODS["cup"](g, g.prunable_groups)
    widths = cup.at_threshold(threshold).tolist()
    by_conv = {grp.origin.split()[-1]: w for grp, w in zip(g.prunable_groups, widths)}
    assert [by_conv[f"features.{3 * i}"] for i in range(4)] == expected
    report = ppf.prune(model, x, "cup", threshold=threshold, ignored_layers=[model.fc])
    assert [c.out_channels for c in convs(model)] == expected
    assert report.allocation == f"threshold={threshold:g}"


def slice_norms_reference(t, m, channels):
    """(channels, other): each channel's slice of a member's tensor (its block of indices along m.dim),
    one norm per index of the tensor's other channel dim (1 for dim 0, else 0), everything else summed."""
    other = 1 if m.dim == 0 else 0
    s = channel_view(t, m, channels)  # (channels, block, *the other dims in order)
    o = other if other < m.dim else other - 1  # the other dim's place among the rest
    rest = [d for d in range(1, s.dim()) if d != o + 2]
    return torch.linalg.vector_norm(s.double(), dim=rest)


@pytest.mark.parametrize("make", ["resnet18", "mobilenet_v3_small", FlattenNet, "small_vit"])
def test_cup_feature_blocks_equal_each_members_norms(make, tv_model, small_vit):
    """CUP's features as column blocks (each weight's kernel norms computed once, consumers as transposed
    views) equal the norms taken member by member, residual groups, flattens and a ViT included."""
    torch.manual_seed(0)
    model = FlattenNet() if make is FlattenNet else small_vit(2, 4, 64, 128) if make == "small_vit" else tv_model(make)
    x = torch.randn(2, 3, 8, 8) if make is FlattenNet else torch.randn(1, 3, 32, 32)
    g = ppf.DependencyGraph(model, x)
    tensors = named_tensors(model)
    cache = {}
    for grp in g.prunable_groups:
        blocks = feature_blocks(tensors, grp, cache)
        members = member_tensors(tensors, grp, "producer", min_ndim=2) + member_tensors(tensors, grp, "consumer", min_ndim=2)
        assert len(blocks) == len(members) > 0
        for b, (m, t) in zip(blocks, members):
            torch.testing.assert_close(b.double(), slice_norms_reference(t.detach(), m, grp.channels), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(cup_features(tensors, grp), torch.cat(blocks, 1))


def test_cup_keeps_the_largest_feature_norm_of_each_cluster():
    model = Chain()
    x = torch.randn(1, 3, 4, 4)
    feats = cup_features_published(model)[0]
    labels = fcluster(linkage(feats, "ward"), 5, criterion="maxclust")
    norms = np.linalg.norm(feats, axis=1)
    expected = sorted(int(np.flatnonzero(labels == c)[np.argmax(norms[labels == c])]) for c in np.unique(labels))
    w0 = model.features[0].weight.detach().clone()
    g = graph_of(model, x)
    cup = METHODS["cup"](g, g.prunable_groups)
    widths = cup.uniform(0.0)
    widths[0] = 5
    plan = ppf.Plan(g)
    cup.decide(plan, widths)
    ppf.apply(plan)
    assert torch.equal(model.features[0].weight, w0[expected])


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_ascp_merge_equals_the_reconstructed_model(arch, tv_model):
    model = randomise_bn(tv_model(arch))
    x = torch.randn(2, 3, 64, 64)
    g = ppf.DependencyGraph(model, x)
    ascp = METHODS["ascp"](g, g.prunable_groups)
    plan = ppf.Plan(g)
    ascp.decide(plan, ascp.uniform(0.5))
    tensors = named_tensors(model)
    for name, value in plan.writes.items():
        tensors[name].data = value
    reconstructed = run(model, x)
    ppf.apply(plan)
    torch.testing.assert_close(run(model, x), reconstructed, rtol=1e-4, atol=1e-5)
    assert any(e.assignment is not None for e in plan.entries.values())


def test_ascp_representative_is_the_channel_nearest_its_centre(tv_model):
    model = randomise_bn(tv_model("resnet18"))
    x = torch.randn(1, 3, 32, 32)
    g = ppf.DependencyGraph(model, x)
    crit = METHODS["ascp"](g, g.prunable_groups)
    plan = ppf.Plan(g)
    crit.decide(plan, crit.uniform(0.5))
    merged = 0
    for i, grp in enumerate(crit.groups):
        e = plan.entries.get(grp.index)
        if e is None or e.assignment is None:
            continue
        f, labels = crit.features[i], e.assignment
        for c in range(int(labels.max()) + 1):
            members = (labels == c).nonzero().squeeze(1)
            dist = (f[members] - f[members].mean(0)).norm(dim=1)
            assert e.merge_keep[c] == members[torch.argmin(dist)], (grp.origin, c)
        merged += 1
    assert merged > 5


def test_ascp_reconstruction_stays_close_when_filters_already_cluster():
    """Filters built as noisy copies of a few centres: reconstruction and merging barely change outputs."""
    torch.manual_seed(0)
    model = randomise_bn(Chain())
    with torch.no_grad():
        for c in convs(model):
            centres = torch.randn(c.out_channels // 2, *c.weight.shape[1:]) / c.weight[0].numel() ** 0.5
            c.weight.copy_(centres.repeat(2, 1, 1, 1) + 1e-4 * torch.randn_like(c.weight))
            c.bias.zero_()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                half = m.num_features // 2
                for t in (m.running_mean, m.running_var, m.weight, m.bias):
                    t[half:] = t[:half]
    x = torch.randn(4, 3, 4, 4)
    before = run(model, x)
    report = ppf.prune(model, x, "ascp", ratio=0.5, ignored_layers=[model.fc])
    assert [c.out_channels for c in convs(model)] == [8, 12, 16, 10]
    torch.testing.assert_close(run(model, x), before, rtol=1e-3, atol=1e-3 * before.abs().max().item())
    assert report.timings["clustering"] > 0


def test_fpgm_scores_are_distance_sums():
    model = Chain()
    x = torch.randn(1, 3, 4, 4)
    g = graph_of(model, x)
    scores = METHODS["fpgm"](g, g.prunable_groups).scores
    for c, s in zip(convs(model), scores):
        f = c.weight.detach().flatten(1).double()
        torch.testing.assert_close(s.double(), torch.cdist(f, f).sum(1), rtol=1e-4, atol=1e-4)


def test_kcp_scores_are_kernel_centre_distances():
    model = Chain()
    x = torch.randn(1, 3, 4, 4)
    g = graph_of(model, x)
    scores = METHODS["kcp"](g, g.prunable_groups).scores
    cs = convs(model)
    for i, s in enumerate(scores[:-1]):
        w = cs[i + 1].weight.detach().double()  # kernels reading the group's channels
        centres = w.mean(0).flatten(1)  # (channel, k*k): mean kernel of each input channel
        expected = (centres - w.flatten(2).mean((0, 1))).norm(dim=1)
        torch.testing.assert_close(s.double(), expected, rtol=1e-5, atol=1e-6)


def test_bn_scale_and_random_scores():
    model = randomise_bn(Chain())
    x = torch.randn(1, 3, 4, 4)
    g = graph_of(model, x)
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m, s in zip(bn, METHODS["bn_scale"](g, g.prunable_groups).scores):
        assert torch.equal(s, m.weight.detach().abs())
    a, b, c = (METHODS["random"](g, g.prunable_groups, seed=s).scores for s in (1, 1, 2))
    assert all(torch.equal(u, v) for u, v in zip(a, b)) and not all(torch.equal(u, v) for u, v in zip(a, c))


@pytest.mark.parametrize("method", ["l1", "cup", "ascp"])
def test_min_channels_and_round_to(method, tv_model):
    model = tv_model("resnet18")
    x = torch.randn(1, 3, 32, 32)
    report = ppf.prune(model, x, method, ratio=0.7, round_to=8, min_channels=24, ignored_layers=[model.fc])
    for _, before, after in report.widths:
        assert after % 8 == 0 and after >= 24 and after <= before
    assert run(model, x).shape == (1, 1000)


def test_global_ratio_for_scores_and_cup(tv_model):
    for method in ("l1", "cup"):
        model = tv_model("resnet18")
        report = ppf.prune(model, torch.randn(1, 3, 32, 32), method, global_ratio=0.4, ignored_layers=[model.fc])
        before, after = sum(b for _, b, _ in report.widths), sum(a for _, _, a in report.widths)
        assert after <= round(0.6 * before) + 1 and after >= 0.55 * before
        assert len({b - a for _, b, a in report.widths}) > 1  # not uniform


def test_report_prints_and_plots(tmp_path, tv_model):
    model = tv_model("resnet18")
    report = ppf.prune(model, torch.randn(1, 3, 32, 32), "cup", target_flops=0.45)
    text = str(report)
    assert "MACs" in text and "clustering" in text and "target_flops=0.45" in text
    report.plot(tmp_path / "widths.png")
    assert (tmp_path / "widths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def state_of(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, state):
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        torch.testing.assert_close(now[k], v, rtol=0, atol=0, equal_nan=True)


def test_bad_options_name_the_valid_ones_and_modify_nothing(tv_model):
    model = tv_model("resnet18")
    x = torch.randn(1, 3, 32, 32)
    state = state_of(model)
    with pytest.raises(ValueError, match="unknown method 'cupp'; expected one of l1, l2, random, bn_scale, fpgm, cup, kcp, ascp"):
        ppf.prune(model, x, "cupp", ratio=0.5)
    with pytest.raises(ValueError, match="unknown option 'treshold' for method 'cup'; valid options: ratio, global_ratio"):
        ppf.prune(model, x, "cup", treshold=0.5)
    with pytest.raises(ValueError, match="unknown option 'threshold' for method 'l1'"):
        ppf.prune(model, x, "l1", threshold=0.5)
    with pytest.raises(ValueError, match="give exactly one of ratio, target_flops, target_latency for method 'ascp', got ratio, target_flops"):
        ppf.prune(model, x, "ascp", ratio=0.5, target_flops=0.5)
    for bad in ({"target_flops": 0.0}, {"target_flops": 1.5}, {"ratio": 0.5, "round_to": 0}, {"ratio": 0.5, "min_channels": -1}):
        with pytest.raises(ValueError):
            ppf.prune(model, x, "l1", **bad)
    with pytest.raises(ValueError, match=r"smallest reachable target_flops is 0\.0"):
        ppf.prune(model, x, "l1", target_flops=0.001)
    assert_unchanged(model, state)


@pytest.mark.parametrize("method", list(METHODS))
def test_nan_weights_name_the_layer_and_modify_nothing(method, tv_model):
    model = tv_model("resnet18")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model.layer2[0].conv2.weight[3, 1, 0, 0] = float("nan")
    state = state_of(model)
    with pytest.raises(ValueError, match=r"layer2\.0\.conv2 has NaN or Inf values"):
        ppf.prune(model, x, method, ratio=0.5)
    assert_unchanged(model, state)


def test_failure_during_apply_restores_reconstructed_weights(monkeypatch, tv_model):
    model = randomise_bn(tv_model("resnet18"))
    x = torch.randn(1, 3, 32, 32)
    state = state_of(model)

    def broken(*args, **kwargs):
        raise RuntimeError("injected")

    monkeypatch.setattr(ppf.ops, "gather_channels", broken)
    with pytest.raises(RuntimeError, match="injected"):
        ppf.prune(model, x, "ascp", ratio=0.5)
    assert_unchanged(model, state)
