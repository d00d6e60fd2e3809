"""Sizes the model's code reads lock only what they must (graph/sizes.py, rules/sizing.py): a batch or
spatial size, a shape printed in a message, or a channel count given back as the size of the same channels
locks nothing; a channel count the code computes with, compares, or gives to other channels locks them."""

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pyprune_fast as ppf
from pyprune_fast.graph.sizes import Size, SizeFloat
from pyprune_fast.nn.rewritten import Rewritten

X = torch.randn(2, 3, 8, 8)


class Net(nn.Module):
    """conv(3->16) -> `mid(y)` -> conv(16->8) -> mean -> linear(8->4); `mid` is what each test varies."""

    def __init__(self, mid):
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 1), nn.Linear(8, 4)
        self.mid = mid

    def forward(self, x):
        y = self.mid(self.c1(x))
        z = self.c2(y)
        return self.fc(z.mean((2, 3)).view(z.size(0), -1))


def same_size_views(y):
    B, C, H, W = y.shape
    assert H > 0 and W > 0, f"an empty image {tuple(y.shape)}"  # a message and a spatial test: nothing locked
    return y.view(B, C, H * W).reshape(B, C, H, W).expand(B, C, H, W)


def tf_same_padding(y):
    h, w = y.shape[-2:]  # TensorFlow "SAME" padding reads spatial sizes only
    return F.pad(y, [0, max(3 - w % 2, 0), 0, max(3 - h % 2, 0)])[..., :h, :w]


def shuffle(y):
    B, C, H, W = y.size()
    return y.view(B, 2, C // 2, H, W).transpose(1, 2).reshape(B, C, H, W)


def branch(y):
    return y * 2 if y.shape[1] == 16 else y


def numel_view(y):
    return y.reshape(y.shape[0], y.numel() // y.shape[0]).view(y.shape)  # numel // B = C * H * W: follows C


def zeros_of_width(y):
    return y + torch.zeros(1, y.size(1), 1, 1)  # a tensor sized by the count, made in forward: follows C


def zeros_of_twice_width(y):
    return y + torch.zeros(1, 2 * y.size(1), 1, 1)[:, ::2]  # sized by a number computed from the count


class OtherCount(nn.Module):
    """View the 16 channels of c1 with the count of c2's 16: pruned alike, the sizes still agree."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(3, 16, 1)

    def forward(self, x):
        a, b = self.c1(x), self.c2(x)
        return a.view(a.size(0), b.size(1), -1).mean() + b.mean()


class JoinedLater(nn.Module):
    """An SE-style gate viewed with the input's channel count, joined to those channels by the product after."""

    def __init__(self):
        super().__init__()
        self.c1, self.fc, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Linear(16, 16), nn.Conv2d(16, 8, 1)

    def forward(self, x):
        y = self.c1(x)
        B, C = y.shape[:2]
        gate = self.fc(y.mean((2, 3))).view(B, C, 1, 1)
        return self.c2(y * gate.sigmoid()).mean()


def c1_group(model):
    g = ppf.DependencyGraph(model, X)
    return g, g.group_of(model.c1)


@pytest.mark.parametrize("mid", [same_size_views, tf_same_padding, numel_view, zeros_of_width],
                         ids=lambda f: f.__name__)
def test_reads_that_keep_counts_right_lock_nothing(mid):
    model = Net(mid).eval()
    g, grp = c1_group(model)
    assert grp.prunable, grp.reason
    y = model(X).shape
    ppf.prune(model, X, ratio=0.5)
    assert model.c1.out_channels == 8 and model(X).shape == y


@pytest.mark.parametrize("mid,reason", [
    (shuffle, "view is given the size 2 for the channels of 2 heads of conv2d c1, a number fixed in the model's code"),
    (branch, "compares a channel count: 16 (dim 1 of a [2, 16, 8, 8] tensor) == 16"),
    (zeros_of_twice_width, "computes an argument of zeros from a channel count: 32 (dim 1"),
], ids=["shuffle", "branch", "zeros"])
def test_counts_the_code_computes_with_lock(mid, reason):
    g, grp = c1_group(Net(mid).eval())
    assert not grp.prunable and reason in grp.reason
    assert g.group_of(g.model.c2).prunable  # the other channels are free


def test_a_count_given_to_other_channels_joins_them():
    model = OtherCount().eval()
    g = ppf.DependencyGraph(model, X)
    assert g.group_of(model.c1) is g.group_of(model.c2) and g.group_of(model.c1).prunable
    ppf.prune(model, X, ratio=0.5)
    assert model.c1.out_channels == model.c2.out_channels == 8 and model(X).shape == ()


def test_a_count_joined_later_to_its_channels_is_followed():
    model = JoinedLater().eval()
    g, grp = c1_group(model)
    assert grp.prunable and grp is g.group_of(model.fc)
    ppf.prune(model, X, ratio=0.5)
    assert model.c1.out_channels == model.fc.out_features == 8
    model(X)


def test_comparing_counts_of_the_same_channels_locks_nothing():
    def same(y):
        assert y.size(1) == y.shape[1]
        return y

    assert c1_group(Net(same).eval())[1].prunable


def test_size_numbers_act_as_numbers():
    c = Size._make(16, frozenset({("v", 1)}), True, None)
    h = Size._make(7, frozenset({("v", 2)}), True, None)
    assert isinstance(c, int) and c == 16 and hash(c) == hash(16)
    for value, expected in ((c // 4, 4), (c * h, 112), (3 + c, 19), (c - h, 9), (-c, -16), (abs(-c), 16),
                            (c % 5, 1), (2 ** Size._make(3, frozenset(), True, None), 8), (math.ceil(c / 3), 6),
                            (round(c / 3), 5), (math.floor(h / 2), 3)):
        assert value == expected and isinstance(value, Size) and not value.pure
    assert (c * h).reads == {("v", 1), ("v", 2)}
    q = c / 3
    assert isinstance(q, SizeFloat) and q == pytest.approx(16 / 3)
    assert c * 0.5 == 8.0 and isinstance(c * 0.5, SizeFloat)
    assert f"{c}" == "16" and str(c) == "16" and repr(c) == "16" and list(range(c))[-1] == 15
    assert torch.zeros(c, h).shape == (16, 7)
    log = []
    d = Size._make(16, frozenset({("v", 1)}), True, lambda a, b, symbol: log.append((a, b, symbol)))
    assert (d < 17, d >= c, d != 3, 4 < d) == (True, True, True, True)
    assert [(int(a), int(b), s) for a, b, s in log] == [(16, 17, "<"), (16, 16, ">="), (16, 3, "!="), (16, 4, ">")]


class Merged(nn.Module):
    """A conv's channels merged with their positions by a size the code computes (C * H * W), into a Linear."""

    def __init__(self, square: bool = False, infer_batch: bool = False):
        super().__init__()
        self.c1, self.fc, self.square = nn.Conv2d(3, 16, 3, padding=1), nn.Linear(16 * 64, 4), square
        self.infer_batch = infer_batch

    def forward(self, x):
        y = self.c1(x)
        B, C, H, W = y.shape
        width = C * H * W if not self.square else C * C * 4
        return self.fc(y.reshape(-1 if self.infer_batch else B, width))


def test_a_count_times_positions_is_followed_and_a_square_is_not():
    model = Merged().eval()
    g, grp = c1_group(model)
    assert grp.prunable and any(m.name == "fc.weight" and m.block == 64 for m in grp.members)
    ppf.prune(model, X, ratio=0.5)
    assert model.c1.out_channels == 8 and model.fc.in_features == 8 * 64 and model(X).shape == (2, 4)
    locked = c1_group(Merged(square=True, infer_batch=True).eval())[1]  # -1 taken: the size cannot be rewritten
    assert "computes an argument of reshape from a channel count: 1024" in locked.reason


def test_a_size_pruning_would_make_wrong_is_rewritten_to_minus_one():
    """reshape(B, C * C * 4) is right only for 16 channels: apply gives that one module's forward -1 there."""
    model, other = Merged(square=True).eval(), Merged(square=True).eval()
    grp = c1_group(model)[1]
    assert grp.prunable and grp.rewrites == (("", "forward", grp.rewrites[0][2], 1),)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    ppf.prune(model, X, ratio=0.5)
    assert model.fc.in_features == 8 * 64 and model(X).shape == (2, 4)
    assert isinstance(vars(model)["forward"], Rewritten) and "forward" not in vars(other)
    assert other(X).shape == (2, 4) and all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    copied, loaded = copy.deepcopy(model), _reloaded(model)
    for m in (copied, loaded):
        assert torch.allclose(m(X), model(X)) and vars(m)["forward"].module is m


def _reloaded(model: nn.Module) -> nn.Module:
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


class ViewedScale(nn.Module):
    """PoolFormer's layer scale: a parameter viewed at a shape held in a tuple attribute, times the channels."""

    def __init__(self, follow: bool):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 1)
        self.scale, self.shape, self.follow = nn.Parameter(torch.ones(16)), (16, 1, 1), follow

    def forward(self, x):
        y = self.c1(x)
        scale = self.scale.view(self.scale.shape[0], 1, 1) if self.follow else self.scale.view(self.shape)
        return self.c2(y * scale)


@pytest.mark.parametrize("follow", [False, True])
def test_a_parameter_viewed_at_a_fixed_size_keeps_its_width(follow):
    model = ViewedScale(follow)
    g, grp = c1_group(model)
    assert grp.prunable == follow
    if not follow:
        assert "scale is also read with fixed channels" in grp.reason
    ppf.prune(model, X, ratio=0.5)
    assert model(X).shape == (2, 8, 8, 8) and model.c1.out_channels == (8 if follow else 16)


class CheckedWidth(nn.Module):
    """Hugging Face's patch embeddings check their input's width against an attribute (`num_channels`)."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.num_channels = nn.Conv2d(3, 16, 1), nn.Conv2d(16, 4, 1), 16

    def forward(self, x):
        y = self.c1(x)
        if y.shape[1] != self.num_channels:
            raise ValueError("wrong width")
        return self.c2(y)


def test_an_attribute_a_count_is_checked_against_follows_the_channels():
    model = CheckedWidth().eval()
    g, grp = c1_group(model)
    assert grp.prunable, grp.reason
    ppf.prune(model, X, ratio=0.5)
    assert model.num_channels == model.c1.out_channels == 8 and model(X).shape == (2, 4, 8, 8)
    used = CheckedWidth().eval()
    used.forward = lambda x: used.c2(used.c1(x)[:, :used.num_channels]) if used.c1(x).shape[1] == used.num_channels else x
    assert not c1_group(used)[1].prunable  # the attribute is used otherwise too: locked
