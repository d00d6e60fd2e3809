"""Splits and slices of the channel dim (chunk, split, tensor_split, narrow, x[:, a:b]) and a Linear's features
viewed as an image: each part follows its own channels, a space cut into equal parts is pruned alike in every
part, sizes given as module attributes are updated with the parts, and what cannot follow locks with a reason
naming the op."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pyprune_fast as ppf
from pyprune_fast.testing import dead_channel_check


def conv_bn(cin, cout, k=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU())


class GLU(nn.Module):
    """fc1 -> halves -> a * sigmoid(b) -> fc2: fc1's two halves are one space of 32 channels, cut by chunk,
    tensor_split, or split at a size computed from the count (or at a plain int, which locks)."""

    def __init__(self, how="chunk"):
        super().__init__()
        self.how = how
        self.fc1, self.fc2 = nn.Linear(16, 64), nn.Linear(32, 10)

    def forward(self, x):
        h = self.fc1(x)
        a, b = {"chunk": lambda: h.chunk(2, -1), "tensor_split": lambda: h.tensor_split(2, dim=-1),
                "count": lambda: h.split(h.shape[-1] // 2, -1), "plain": lambda: torch.split(h, 32, -1)}[self.how]()
        return self.fc2(a * torch.sigmoid(b))


class C2f(nn.Module):
    """YOLO's C2f: cv1 (conv, BN, SiLU) chunked in two; a residual bottleneck on the second half; every part
    concatenated into cv2. Before a head that keeps the output's channels."""

    def __init__(self, c=8, n=2):
        super().__init__()
        self.cv1 = conv_bn(3, 2 * c)
        self.m = nn.ModuleList(nn.Sequential(conv_bn(c, c, 3), conv_bn(c, c, 3)) for _ in range(n))
        self.cv2 = conv_bn((2 + n) * c, 16)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(y[-1] + m(y[-1]) for m in self.m)
        return self.head(self.cv2(torch.cat(y, 1)))


class AttributeSplit(nn.Module):
    """conv's channels split at sizes that are module attributes: (self.c, self.c) into equal parts, or
    (self.a, self.b) into unequal ones."""

    def __init__(self, equal):
        super().__init__()
        self.equal = equal
        self.c, self.a, self.b = 12, 8, 16
        self.conv = conv_bn(3, 24)
        self.left, self.right = nn.Conv2d(12 if equal else 8, 6, 3, padding=1), nn.Conv2d(12 if equal else 16, 6, 1)
        self.out = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        left, right = self.conv(x).split((self.c, self.c) if self.equal else (self.a, self.b), 1)
        return self.out(torch.cat([self.left(left), self.right(right)], 1))


class Slices(nn.Module):
    """Two convs concatenated, then sliced back on the boundary: by an attribute (self.ca), by the end of
    the dim (GhostNet's out[:, :self.oup] with oup the whole width), by a plain int (fixes the first part)."""

    def __init__(self, how):
        super().__init__()
        self.how, self.ca, self.oup = how, 8, 20
        self.a, self.b = conv_bn(3, 8), conv_bn(3, 12)
        self.head = nn.Conv2d(20, 4, 1)
        self.fa, self.fb = nn.Conv2d(8, 4, 1), nn.Conv2d(12, 4, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)
        if self.how == "end":
            return self.head(y[:, :self.oup, :, :])
        if self.how == "attribute":
            return self.fa(y[:, :self.ca]) + self.fb(y[:, self.ca:])
        return self.fa(y[:, :8]) + self.fb(y.narrow(1, 8, 12))


class Decoder(nn.Module):
    """A Linear's 32 * 4 * 4 features viewed as a 32-channel image (the width an attribute or inferred),
    then a transposed conv."""

    def __init__(self, view):
        super().__init__()
        self.view, self.ch = view, 32
        self.fc = nn.Linear(16, 32 * 4 * 4)
        self.up = nn.ConvTranspose2d(32, 3, 2, stride=2)

    def forward(self, z):
        h = F.relu(self.fc(z))
        h = h.view(z.shape[0], self.ch, 4, 4) if self.view == "attribute" else h.view(z.shape[0], -1, 4, 4)
        return self.up(h)


class FixedCat(nn.Module):
    """The model's input concatenated with a conv's channels."""

    def __init__(self):
        super().__init__()
        self.conv, self.out = conv_bn(3, 8), nn.Conv2d(11, 4, 1)

    def forward(self, x):
        return self.out(torch.cat([x, self.conv(x)], 1))


class Inside(nn.Module):
    """Cuts that cannot follow: a slice inside a conv's channels, select, and a tensor read twice, chunked (its
    equal parts hold the channels everywhere from then on) and sliced inside the first part."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.conv, self.fc = conv_bn(3, 8), nn.Conv2d(5, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        if self.how == "slice":
            return self.fc(y[:, :5])
        if self.how == "select":
            return y.select(1, 0)
        a, b = y.chunk(2, 1)
        return torch.cat([a * b, y[:, :2]], 1)


class PartialShortcut(nn.Module):
    """RexNet's shortcut into the first channels of a wider block, `cat([y[:, :self.in_channels] + x,
    y[:, self.in_channels:]])`, twice: the second block's shortcut holds the first's two parts."""

    def __init__(self):
        super().__init__()
        self.stem, self.head = conv_bn(3, 6), nn.Conv2d(13, 4, 1)
        self.blocks = nn.ModuleList([conv_bn(6, 10), conv_bn(10, 13)])
        for block, c in zip(self.blocks, (6, 10)):
            block.in_channels = c

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            y, c = block(x), block.in_channels
            x = torch.cat([y[:, 0:c] + x, y[:, c:]], dim=1)
        return self.head(x)


class Gated(nn.Module):
    """MambaOut's gated block: a Linear split by a tuple attribute into (gate, identity, conv) parts, the gate
    times the concatenated (identity, conv(conv part)) parts."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.split_indices = nn.Linear(4, 12), nn.Linear(6, 4), (6, 2, 4)
        self.conv = nn.Conv2d(4, 4, 3, padding=1, groups=4)

    def forward(self, x):  # (B, H, W, C)
        g, i, c = torch.split(self.fc1(x), self.split_indices, dim=-1)
        c = self.conv(c.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.fc2(torch.relu(g) * torch.cat((i, c), dim=-1))


X = torch.randn(2, 3, 8, 8)


def group_with(g, name):
    return next(grp for grp in g.groups if any(m.name == name for m in grp.members))


def pruned_runs(model, x, **options):
    shape = model(x).shape
    report = ppf.prune(model, x, ratio=0.5, progress=False, **options)
    assert model(x).shape == shape
    return report


def exact(model, x, keep):
    """dead_channel_check on the group of `keep`'s weight: the outputs of layers outside it are ignored."""
    names = {m.name for m in group_with(ppf.DependencyGraph(model, x), f"{keep}.weight").members}
    ignored = [m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and f"{n}.weight" not in names]
    return dead_channel_check(model, x, ppf.DependencyGraph(model, x, ignored_layers=ignored))


@pytest.mark.parametrize("how", ["chunk", "tensor_split", "count"])
def test_glu_halves_are_pruned_alike(how):
    model, x = GLU(how), torch.randn(4, 16)
    g = ppf.DependencyGraph(model, x)
    grp = group_with(g, "fc1.weight")
    assert grp.prunable and grp.channels == 32 and "2 equal parts" in grp.origin
    rows = sorted((m.offset, m.block) for m in grp.members if m.name == "fc1.weight")
    assert rows == [(0, 1), (32, 1)]
    assert exact(model, x, "fc1") == "ok"
    pruned_runs(model, x)
    assert (model.fc1.out_features, model.fc2.in_features) == (32, 16)


def test_glu_split_at_a_plain_int_locks():
    g = ppf.DependencyGraph(GLU("plain"), torch.randn(4, 16))
    assert "split cuts the channels of linear fc1 into [32, 32], and its sizes 32, 32 are numbers fixed" in \
        group_with(g, "fc1.weight").reason


def test_c2f_chunk_and_cat_of_the_same_space_twice():
    model = C2f()
    g = ppf.DependencyGraph(model, X)
    grp = group_with(g, "cv1.0.weight")
    assert grp.prunable and grp.channels == 8
    cv2 = sorted(m.offset for m in grp.members if m.name == "cv2.0.weight" and m.dim == 1)
    assert cv2 == [0, 8, 16, 24]  # the half-space: cv1's halves and the residual outputs of both bottlenecks
    assert exact(model, X, "cv1.0") == "ok"
    pruned_runs(model, X)
    assert (model.cv1[0].out_channels, model.cv2[0].in_channels, model.m[0][0][0].in_channels) == (8, 16, 4)


@pytest.mark.parametrize("equal", [True, False])
def test_split_sizes_from_attributes_follow(equal):
    model = AttributeSplit(equal)
    g = ppf.DependencyGraph(model, X)
    parts = [next(grp for grp in g.groups if grp.origin.endswith("(split)") and any(
        m.name == name and m.dim == 1 for m in grp.members)) for name in ("left.weight", "right.weight")]
    assert all(p.prunable for p in parts)
    if equal:
        assert parts[0] is parts[1] and {s[1:] for s in parts[0].sizes} == {("c", 1)}
    else:
        assert [p.channels for p in parts] == [8, 16] and [p.sizes[0][1] for p in parts] == ["a", "b"]
    assert exact(model, X, "conv.0") == "ok"
    pruned_runs(model, X)
    assert model.conv[0].out_channels == 12
    assert (model.c if equal else (model.a, model.b)) == (6 if equal else (4, 8))


@pytest.mark.parametrize("how", ["end", "attribute", "plain"])
def test_slices_on_segment_boundaries(how):
    model = Slices(how)
    g = ppf.DependencyGraph(model, X)
    a, b = group_with(g, "a.0.weight"), group_with(g, "b.0.weight")
    if how == "plain":  # the int 8 and narrow's length 12 fix both parts
        assert "__getitem__ is given the size 8" in a.reason and "narrow is given the size 12" in b.reason
        return
    assert a.prunable and b.prunable
    if how == "attribute":
        assert a.sizes and a.sizes[0][1] == "ca"
    pruned_runs(model, X)
    if how == "attribute":
        assert (model.ca, model.fa.in_channels, model.fb.in_channels) == (4, 4, 6)


@pytest.mark.parametrize("view", ["attribute", "inferred"])
def test_linear_viewed_as_an_image(view):
    model, z = Decoder(view), torch.randn(2, 16)
    g = ppf.DependencyGraph(model, z)
    grp = group_with(g, "fc.weight")
    assert grp.prunable and grp.channels == 32 and grp.origin.startswith("32 channels of")
    assert {(m.offset, m.block) for m in grp.members if m.name == "fc.weight"} == {(0, 16)}
    assert {(m.name, m.dim) for m in grp.members} >= {("fc.bias", 0), ("up.weight", 0)}
    assert dead_channel_check(model, z, g) == "ok"
    pruned_runs(model, z)
    assert (model.fc.out_features, model.up.in_channels) == (16 * 16, 16)
    if view == "attribute":
        assert model.ch == 16


def test_linear_viewed_with_a_plain_width_locks():
    class Plain(Decoder):
        def forward(self, z):
            return self.up(F.relu(self.fc(z)).view(-1, 32, 4, 4))

    g = ppf.DependencyGraph(Plain("plain"), torch.randn(2, 16))
    assert "view is given the size 32" in group_with(g, "fc.weight").reason


def test_concat_with_the_models_input_keeps_it_fixed():
    model = FixedCat()
    g = ppf.DependencyGraph(model, X)
    assert group_with(g, "conv.0.weight").prunable
    fixed = next(grp for grp in g.groups if grp.origin == "a concatenated tensor")
    assert fixed.reason == "concatenated with fixed channels" and fixed.channels == 3
    pruned_runs(model, X)
    assert (model.conv[0].out_channels, model.out.in_channels) == (4, 7)


@pytest.mark.parametrize("how, reason", [("slice", "__getitem__ slices the channel dim at [0:5] of 8, inside"),
                                         ("select", "select takes single channels out"),
                                         ("chunk", "__getitem__ slices the channel dim at [0:2] of 8, inside the "
                                                   "channels of 2 equal parts")])
def test_cuts_that_cannot_follow_lock(how, reason):
    g = ppf.DependencyGraph(Inside(how), X)
    assert reason in group_with(g, "conv.0.weight").reason


def test_yolov8n_c2f_prunes():
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model, x = DetectionModel("yolov8n.yaml", verbose=False).eval(), torch.randn(1, 3, 160, 160)
    g = ppf.DependencyGraph(model, x)
    assert group_with(g, "model.2.cv1.conv.weight").prunable
    assert not any("chunk" in (grp.reason or "") for grp in g.groups)
    report = ppf.prune(model, x, ratio=0.3, progress=False)
    assert report.macs_after < 0.65 * report.macs_before


def test_split_sizes_are_kept_by_save_pruned(tmp_path):
    model = AttributeSplit(equal=False)
    pruned_runs(model, X)
    ppf.save_pruned(model, tmp_path / "split.pt")
    loaded = ppf.load_pruned(lambda: AttributeSplit(equal=False), tmp_path / "split.pt")
    assert (loaded.a, loaded.b) == (4, 8)
    torch.testing.assert_close(loaded(X), model(X))


class WrongHalf(nn.Module):
    """A split size computed from the width that is width / 2 only for this width (C - 8): locks."""

    def __init__(self):
        super().__init__()
        self.conv, self.out = nn.Conv2d(3, 16, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        C = y.shape[1]
        a, b = y.split(C - 8, 1)  # 8 and 8 for C = 16, but not half of any other width
        return self.out(a * b)


def test_a_split_size_that_is_not_a_fraction_of_the_width_locks():
    model = WrongHalf()
    g = ppf.DependencyGraph(model, torch.randn(1, 3, 4, 4))
    assert not g.group_of(model.conv).prunable


class Ghost(nn.Module):
    """GhostNet's module: a primary conv and a cheap depthwise conv of it, concatenated, added to a shortcut conv."""

    def __init__(self):
        super().__init__()
        self.primary, self.cheap = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.shortcut, self.out = nn.Conv2d(3, 16, 1), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = self.primary(x)
        return self.out(torch.cat([y, self.cheap(y)], 1) + self.shortcut(x))


def test_a_shortcut_added_to_a_concat_is_cut_into_its_parts():
    model, x = Ghost(), torch.randn(2, 3, 8, 8)
    g = ppf.DependencyGraph(model, x)
    group = g.group_of(model.primary)
    assert group.prunable and group is g.group_of(model.cheap)
    assert sorted(m.offset for m in group.members if m.name == "shortcut.weight") == [0, 8]  # both halves
    assert dead_channel_check(model, x, g) == "ok"
    ppf.prune(model, x, ratio=0.5)
    assert (model.primary.out_channels, model.shortcut.out_channels, model.out.in_channels) == (4, 8, 8)
    assert model(x).shape == (2, 4, 8, 8)


class SplitByInputWidth(nn.Module):
    """FocalNet's modulation: a projection split at the width of its input, (C, C, 3): its first two parts are
    joined with the input's channels, whose count sizes them; the gates (3, a number in the code) stay."""

    def __init__(self):
        super().__init__()
        self.embed, self.proj, self.out = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 19, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        h = self.embed(x)
        q, ctx, gates = torch.split(self.proj(h), (h.shape[1], h.shape[1], 3), 1)
        return self.out(q * ctx + h) * gates.sum(1, keepdim=True)


def test_split_sized_by_another_count_joins_those_channels():
    model, x = SplitByInputWidth(), torch.randn(1, 3, 4, 4)
    g = ppf.DependencyGraph(model, x)
    group = g.group_of(model.embed)
    assert group.prunable and sorted(m.offset for m in group.members if m.name == "proj.weight") == [0, 0, 8]
    assert dead_channel_check(model, x, g) == "ok"
    ppf.prune(model, x, ratio=0.5)
    assert (model.embed.out_channels, model.proj.out_channels) == (4, 4 + 4 + 3) and model(x).shape == (1, 4, 4, 4)


class ChunkedAndAdded(nn.Module):
    """EdgeNeXt-like: a conv's output chunked in two for a branch and also added back whole."""

    def __init__(self):
        super().__init__()
        self.conv, self.mix, self.out = conv_bn(3, 8), nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        a, b = y.chunk(2, 1)
        return self.out(torch.cat([self.mix(a), b], 1) + y)


def test_a_chunk_of_a_tensor_read_again_holds_its_parts_there_too():
    model = ChunkedAndAdded().eval()
    g = ppf.DependencyGraph(model, X)
    parts = group_with(g, "conv.0.weight")
    assert parts.prunable and parts.channels == 4 and dead_channel_check(model, X, g) == "ok"
    assert sorted(m.offset for m in parts.members if m.name == "out.weight") == [0, 4]
    pruned_runs(model, X)
    assert (model.conv[0].out_channels, model.mix.groups, model.out.in_channels) == (4, 2, 4)


class SplitByAttribute(nn.Module):
    """InceptionNeXt/MixNet: a split at sizes the module keeps in a tuple (or list) attribute, each part through
    its own depthwise conv, concatenated back."""

    def __init__(self, kind=tuple):
        super().__init__()
        self.proj, self.out = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)
        self.splits = kind((5, 3))
        self.dw = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1, groups=c) for c in self.splits)

    def forward(self, x):
        parts = torch.split(self.proj(x), self.splits, 1)
        return self.out(torch.cat([dw(p) for dw, p in zip(self.dw, parts)], 1))


@pytest.mark.parametrize("kind", [tuple, list])
def test_split_sizes_in_a_tuple_attribute_follow(kind, tmp_path):
    model, x = SplitByAttribute(kind).eval(), torch.randn(1, 3, 4, 4)
    g = ppf.DependencyGraph(model, x)
    assert g.group_of(model.dw[0]).prunable and g.group_of(model.dw[1]).prunable
    assert dead_channel_check(model, x, g) == "ok"
    ppf.prune(model, x, ratio=0.4)
    assert model.splits == kind((3, 2)) and model.out.in_channels == 5 and model(x).shape == (1, 4, 4, 4)
    ppf.save_pruned(model, tmp_path / "m.pt")
    loaded = ppf.load_pruned(lambda: SplitByAttribute(kind).eval(), tmp_path / "m.pt")
    assert tuple(loaded.splits) == (3, 2)
    torch.testing.assert_close(loaded(x), model(x))
    payload = torch.load(tmp_path / "m.pt", weights_only=False)
    payload["attrs"][""]["splits"] = kind((6, 2))  # past the original 5
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"\['splits'\] = .*6, 2.* must be 2 ints, each between 1 and the original"):
        ppf.load_pruned(lambda: SplitByAttribute(kind).eval(), tmp_path / "bad.pt")


def test_a_slice_at_a_module_attribute_inside_a_layers_channels_cuts_them_there(tmp_path):
    model = PartialShortcut().eval()
    g = ppf.DependencyGraph(model, X)
    stem = group_with(g, "stem.0.weight")
    first = next(grp for grp in g.groups if any(m.name == "blocks.0.0.weight" and m.offset == 6 for m in grp.members))
    assert stem.prunable and first.prunable and (stem.channels, first.channels) == (6, 4)
    assert ("blocks.0", "in_channels", 1) in stem.sizes and ("blocks.1", "in_channels", 1) in stem.sizes
    assert ("blocks.1", "in_channels", 1) in first.sizes  # the second block's shortcut: both parts
    assert ("blocks.0.0.weight", 0, 0) in {(m.name, m.dim, m.offset) for m in stem.members}
    assert dead_channel_check(model, X, g) == "ok"
    pruned_runs(model, X)
    assert [b.in_channels for b in model.blocks] == [3, 5] and model.head.in_channels == 6  # 3 + 2 + 1
    ppf.save_pruned(model, tmp_path / "m.pt")
    torch.testing.assert_close(ppf.load_pruned(lambda: PartialShortcut().eval(), tmp_path / "m.pt")(X), model(X))


def test_a_part_of_a_split_laid_out_as_the_concat_it_meets_keeps_its_size_attribute(tmp_path):
    model, x = Gated().eval(), torch.randn(2, 5, 5, 4)
    g = ppf.DependencyGraph(model, x)
    conv = group_with(g, "conv.weight")
    assert conv.prunable and conv.channels == 4 and ("", "split_indices[0]", 1) in conv.sizes
    assert dead_channel_check(model, x, g) == "ok"
    pruned_runs(model, x)
    assert model.split_indices == (3, 1, 2) and model.fc1.out_features == 6 and model.conv.groups == 2
    ppf.save_pruned(model, tmp_path / "m.pt")
    torch.testing.assert_close(ppf.load_pruned(lambda: Gated().eval(), tmp_path / "m.pt")(x), model(x))
