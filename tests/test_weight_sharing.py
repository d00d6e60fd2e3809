"""Weight sharing: every use of a shared tensor (a module called in a loop or on two branches, a tied
parameter or buffer, the shared heads of RetinaNet and FCOS) joins one group, so the same channels go
from every use; uses that lay a tensor out differently lock the group with a reason."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pyprune_fast as ppf
from pyprune_fast.testing import dead_channels_are_exact, kill_channels


class Siamese(nn.Module):
    """One encoder on two inputs; the two embeddings concatenated into the head."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.Conv2d(8, 6, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(12, 2)

    def forward(self, a, b):
        return self.head(torch.cat([self.enc(a).mean((2, 3)), self.enc(b).mean((2, 3))], 1))


class Loop(nn.Module):
    """A conv applied three times: its input and output channels are one space."""

    def __init__(self):
        super().__init__()
        self.stem, self.body, self.out = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = F.relu(self.stem(x))
        for _ in range(3):
            x = F.relu(self.body(x))
        return self.out(x)


class TiedBuffers(nn.Module):
    """Two branches whose BatchNorms share their running statistics (the same tensors)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 1)
        self.bn_a, self.bn_b = nn.BatchNorm2d(8), nn.BatchNorm2d(8)
        self.bn_b.running_mean, self.bn_b.running_var = self.bn_a.running_mean, self.bn_a.running_var
        self.out = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.out(torch.cat([self.bn_a(self.a(x)), self.bn_b(self.b(x))], 1))


class Conflicting(nn.Module):
    """One conv applied to an 8-channel activation and to a 4 + 4 concat: no one channel set fits both."""

    def __init__(self):
        super().__init__()
        self.p, self.q, self.r = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
        self.shared = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        return self.shared(self.p(x)) + self.shared(torch.cat([self.q(x), self.r(x)], 1))


def _inputs(model):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    return (x, torch.randn_like(x)) if isinstance(model, Siamese) else (x,)


def _holders(graph, name, dim=None):
    """The groups holding tensor `name` (along `dim`, or any dim)."""
    return [g for g in graph.groups if any(m.name == name and dim in (None, m.dim) for m in g.members)]


@pytest.mark.parametrize("cls, shared, groups", [(Siamese, "enc.3.weight", 2), (Loop, "body.weight", 1)])
def test_every_use_joins_one_group(cls, shared, groups):
    model = cls().double().eval()
    g = ppf.DependencyGraph(model, _inputs(model))
    assert len(g.prunable_groups) == groups
    held = _holders(g, shared, dim=0)
    assert len(held) == 1, g.summary()
    if cls is Siamese:  # the head reads the encoder's channels twice, at columns c and 6 + c
        assert {(m.offset, m.role) for m in held[0].members if m.name == "head.weight"} == {(0, "consumer"), (6, "consumer")}


@pytest.mark.parametrize("cls", [Siamese, Loop, TiedBuffers])
def test_dead_channels_go_from_every_use_exactly(cls):
    """Channels killed in the shared layer and then removed: outputs unchanged (float64), and the pruned model runs."""
    model = cls().double().eval()
    inputs = _inputs(model)
    g = ppf.DependencyGraph(model, inputs)
    for group in g.prunable_groups:
        assert dead_channels_are_exact(g, group)
        kill_channels(g, group, torch.tensor([0, 2]))
    with torch.no_grad():
        before = model(*inputs)
    plan = ppf.Plan(g)
    for group in g.prunable_groups:
        plan.remove(group, [0, 2])
    ppf.apply(plan)
    with torch.no_grad():
        after = model(*inputs)
    torch.testing.assert_close(after, before, rtol=1e-12, atol=1e-12)


def test_tied_buffers_join_their_branches():
    model = TiedBuffers().eval()
    g = ppf.DependencyGraph(model, _inputs(model)[0].float())
    held = _holders(g, "bn_a.running_mean")
    assert len(held) == 1
    assert {"a", "b", "bn_a"} <= set(held[0].modules)  # bn_b holds no tensor of its own name


@pytest.mark.parametrize("method", ["l1", "random", "fpgm", "cup"])
@pytest.mark.parametrize("cls", [Siamese, Loop, TiedBuffers])
def test_prune_shared_models(method, cls):
    model = cls().eval()
    inputs = tuple(x.float() for x in _inputs(model))
    shape = model(*inputs).shape
    report = ppf.prune(model, inputs, method=method, ratio=0.5)
    assert model(*inputs).shape == shape and report.macs_after < report.macs_before
    if cls is TiedBuffers:  # both holders of the shared statistics hold the new ones, and their widths follow
        assert model.bn_b.running_mean is model.bn_a.running_mean and model.bn_b.running_var is model.bn_a.running_var
        assert model.bn_a.num_features == model.bn_b.num_features == model.bn_a.running_mean.numel() < 8


def test_different_layouts_lock_with_a_reason():
    model = Conflicting().eval()
    g = ppf.DependencyGraph(model, _inputs(model)[0].float())
    locked = _holders(g, "shared.weight", dim=1)
    assert locked and all(not h.prunable and "shared.weight is used more than once" in h.reason for h in locked)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ppf.prune(model, _inputs(model)[0].float(), ratio=0.5)  # prunes nothing it cannot
    x = _inputs(model)[0].float()
    assert model(x).shape == (2, 5, 8, 8)
    assert model.shared.in_channels == 8 and torch.equal(model.shared.weight, before["shared.weight"])


def _head_outputs(model, images):
    """The shared head's raw outputs (per-anchor logits and boxes; the detections after them depend on ties)."""
    got = {}
    hook = model.head.register_forward_hook(lambda m, i, o: got.update(o))
    try:
        with torch.no_grad():
            model(images)
    finally:
        hook.remove()
    return got


@pytest.mark.parametrize("name", ["retinanet_resnet50_fpn", "fcos_resnet50_fpn"])
def test_detector_shared_heads(name):
    """RetinaNet's and FCOS's heads run the same convs on every FPN level: each head layer is one group
    over all levels (not one per level). RetinaNet's head groups prune: removing dead channels there
    leaves the head's outputs unchanged. FCOS's prune in 32 equal divisions (a GroupNorm with 32 groups
    after every head conv), their dead channels inexact. An L1 prune of either gives a detector that runs."""
    from torchvision.models import detection

    torch.manual_seed(0)
    model = getattr(detection, name)(weights=None, weights_backbone=None, num_classes=3, min_size=64,
                                     max_size=64).double().eval()
    images = [torch.rand(3, 64, 64, dtype=torch.float64)]
    g = ppf.DependencyGraph(model, (images,))
    head_convs = [n for n, m in model.head.named_modules() if isinstance(m, nn.Conv2d)]
    outputs = [_holders(g, f"head.{n}.weight", dim=0) for n in head_convs]
    assert all(len(held) == 1 for held in outputs), "one group per shared head layer, whatever the FPN level"
    first = _holders(g, f"head.{head_convs[0]}.weight", dim=1)
    assert len(first) == 1 and sum(m.name.startswith("backbone.fpn.layer_blocks") for m in first[0].members) >= 3, \
        "every FPN level feeds the same head: one group"
    hidden = [held[0] for n, held in zip(head_convs, outputs) if ".conv." in f".{n}"]
    if name == "fcos_resnet50_fpn":
        assert hidden and all(h.prunable and h.divisions == 32 and "normalises" in h.inexact for h in hidden)
    else:
        assert hidden and all(h.prunable and dead_channels_are_exact(g, h) for h in hidden)
        for gr in hidden:
            kill_channels(g, gr, torch.tensor([1, 3]))
        before = _head_outputs(model, images)
        plan = ppf.Plan(g)
        for gr in hidden:
            plan.remove(gr, [1, 3])
        ppf.apply(plan)
        after = _head_outputs(model, images)
        assert model.head.classification_head.conv[0][0].out_channels == 254
        for k in before:
            torch.testing.assert_close(after[k], before[k], rtol=1e-9, atol=1e-9)

    model = getattr(detection, name)(weights=None, weights_backbone=None, num_classes=3, min_size=64,
                                     max_size=64).eval()
    images = [torch.rand(3, 64, 64)]
    report = ppf.prune(model, (images,), method="l1", ratio=0.3)
    assert report.macs_after < report.macs_before
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.weight.shape[0] == c.out_channels and c.weight.shape[1] * c.groups == c.in_channels for c in convs)
    with torch.no_grad():
        out = model(images)
    assert set(out[0]) >= {"boxes", "labels", "scores"}


class FixedOnce(nn.Module):
    """A conv called twice: first on channels no rule follows (flipped), then on its own output."""

    def __init__(self):
        super().__init__()
        self.c1, self.conv, self.fc = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 3, padding=1), nn.Linear(4, 2)

    def forward(self, x):
        x = torch.flip(self.c1(x), [1])
        for _ in range(2):
            x = F.relu(self.conv(x))
        return self.fc(x.mean((2, 3)))


def test_a_use_with_fixed_channels_locks_the_shared_tensor():
    model = FixedOnce().eval()
    x = torch.randn(2, 3, 8, 8)
    g = ppf.DependencyGraph(model, x)
    group = g.group_of(model.conv)
    assert not group.prunable and "conv.weight is also read with fixed channels" in group.reason
    ppf.prune(model, x, ratio=0.5)
    assert model(x).shape == (2, 2) and model.conv.weight.shape == (4, 4, 3, 3)


class NormedQuery(nn.Module):
    """A learned query (Perceiver's decoder) normalised by a LayerNorm (fixed channels) and added to a layer's
    output elsewhere: the query's width may not change."""

    def __init__(self):
        super().__init__()
        self.query, self.fc, self.norm, self.head = nn.Parameter(torch.randn(1, 8)), nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.fc(x) + self.query) + self.norm(self.query).sum()


def test_a_parameter_read_whole_by_a_norm_keeps_its_width():
    model, x = NormedQuery(), torch.randn(3, 4)
    g = ppf.DependencyGraph(model, x)
    assert "query is also read with fixed channels" in g.group_of(model.fc).reason
    ppf.prune(model, x, ratio=0.5)
    assert model(x).shape == (3, 2)
