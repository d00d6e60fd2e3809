"""Rules for transposed convs, embeddings, stack, unfold, norms over channels, and layers whose weight is
computed in forward from a parameter (weight standardisation), or whose groups come from an attribute."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pyprune_fast as ppf
from pyprune_fast.testing import dead_channel_check


def pruned_runs(model, x, ratio=0.5):
    """Prunes `model` by `ratio`; returns (MACs before, after), the output shape unchanged."""
    y0 = model(x)
    before = ppf.profile(model, x).macs
    ppf.prune(model, x, ratio=ratio)
    assert model(x).shape == y0.shape
    return before, ppf.profile(model, x).macs


def fc_reads_blocks(model, x, block):
    """model.conv's 8 channels reach model.fc in blocks of `block` positions, dead channels exact; pruned by
    half, fc reads 4 blocks."""
    g = ppf.DependencyGraph(model, x)
    group = g.group_of(model.conv)
    assert group.prunable and ("fc.weight", 1, 0, block) in {(m.name, m.dim, m.offset, m.block) for m in group.members}
    assert dead_channel_check(model, x, g) == "ok"
    pruned_runs(model, x)
    assert model.fc.in_features == 4 * block


class TinyUNet(nn.Module):
    """Down with convs, up with ConvTranspose2d (plain and depthwise), a skip concatenation."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(3, 16, 3, padding=1)
        self.down = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.smooth = nn.ConvTranspose2d(32, 32, 3, padding=1, groups=32)
        self.head = nn.Conv2d(32, 2, 1)

    def forward(self, x):
        e = torch.relu(self.enc(x))
        u = torch.relu(self.up(torch.relu(self.down(e))))
        return self.head(self.smooth(torch.cat([e, u], 1)))


def test_conv_transpose_groups_and_prune():
    model, x = TinyUNet().eval(), torch.randn(1, 3, 16, 16)
    g = ppf.DependencyGraph(model, x)
    up = g.group_of(model.down)  # up reads down's channels on its weight's dim 0
    assert up.prunable and ("up.weight", 0, "consumer") in {(m.name, m.dim, m.role) for m in up.members}
    made = next(gr for gr in g.groups if any(m.name == "up.weight" and m.dim == 1 for m in gr.members))
    assert made.prunable and {m.name for m in made.members} >= {"up.bias", "smooth.weight", "head.weight"}
    assert dead_channel_check(model, x, g) == "ok"
    before, after = pruned_runs(model, x)
    assert model.up.in_channels == model.up.weight.shape[0] == 16 and model.up.out_channels == 8
    assert model.smooth.groups == model.smooth.out_channels == 16
    assert after < before


def test_conv_transpose_macs():
    model, x = nn.ConvTranspose2d(4, 6, 3, stride=2), torch.randn(2, 4, 5, 5)
    assert ppf.profile(model, x).macs == 2 * 4 * 5 * 5 * 6 * 3 * 3


class TokenNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.fc = nn.Linear(16, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, idx):
        return self.out(torch.relu(self.fc(self.emb(idx)))).mean(1)


def test_embedding_produces_its_columns():
    model, idx = TokenNet().eval(), torch.randint(0, 50, (2, 7))
    g = ppf.DependencyGraph(model, idx)
    group = g.group_of(model.fc)
    assert group.prunable
    emb = next(gr for gr in g.groups if any(m.name == "emb.weight" for m in gr.members))
    assert emb.prunable and {(m.name, m.dim, m.role) for m in emb.members} == {
        ("emb.weight", 1, "producer"), ("fc.weight", 1, "consumer")}
    assert dead_channel_check(model, idx, g) == "ok"
    pruned_runs(model, idx)
    assert model.emb.embedding_dim == model.emb.weight.shape[1] == 8 == model.fc.in_features


class StackNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        s = torch.stack([self.a(x), self.b(x)], 1)  # (N, 2, 8, H, W)
        return self.fc(s.mean((1, 3, 4)))


def test_stack_joins_the_inputs_channels():
    model, x = StackNet().eval(), torch.randn(2, 3, 6, 6)
    g = ppf.DependencyGraph(model, x)
    group = g.group_of(model.a)
    assert group.prunable and group is g.group_of(model.b)
    pruned_runs(model, x)
    assert model.a.out_channels == model.b.out_channels == 4


class UnfoldNet(nn.Module):
    """F.unfold makes (N, C * 9, L): each channel a block of 9 positions read by a Linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.fc = nn.Linear(8 * 9, 5)

    def forward(self, x):
        cols = F.unfold(torch.relu(self.conv(x)), 3, padding=1)
        return self.fc(cols.transpose(1, 2)).sum(1)


def test_unfold_makes_blocks_of_the_window():
    fc_reads_blocks(UnfoldNet().eval(), torch.randn(2, 3, 5, 5), 9)


class WindowsNet(nn.Module):
    """Tensor.unfold along a spatial dim keeps the channels; along channels it locks them."""

    def __init__(self, along):
        super().__init__()
        self.along = along
        self.conv = nn.Conv2d(3, 8, 1)

    def forward(self, x):
        return self.conv(x).unfold(self.along, 2, 2).sum(-1)


def test_tensor_unfold_keeps_or_locks():
    x = torch.randn(1, 3, 6, 6)
    model = WindowsNet(2).eval()
    assert ppf.DependencyGraph(model, x).group_of(model.conv).prunable is False  # the model's output
    kept = nn.Sequential(WindowsNet(3), nn.Conv2d(8, 4, 1)).eval()
    assert ppf.DependencyGraph(kept, x).group_of(kept[0].conv).prunable
    locked = nn.Sequential(WindowsNet(1), nn.Conv2d(4, 4, 1)).eval()
    assert "unfold" in ppf.DependencyGraph(locked, x).group_of(locked[0].conv).reason


class GRN(nn.Module):
    """ConvNeXtV2's global response norm, written with linalg.vector_norm over the spatial dims."""

    def __init__(self, c):
        super().__init__()
        self.gamma, self.beta = nn.Parameter(torch.randn(1, c, 1, 1)), nn.Parameter(torch.randn(1, c, 1, 1))

    def forward(self, x):
        gx = torch.linalg.vector_norm(x, ord=2, dim=(2, 3), keepdim=True)
        nx = gx / (gx.mean(dim=1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


def test_norms_over_channels():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), GRN(8), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(1, 3, 6, 6)
    group = ppf.DependencyGraph(model, x).group_of(model[0])
    assert group.prunable and group.inexact is not None  # the mean across channels sees dead ones
    normed = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)).eval()
    g = ppf.DependencyGraph(normed, x)
    assert g.group_of(normed[0]).inexact is None
    pruned_runs(model, x)
    assert model[1].gamma.shape[1] == 4


class StdConv(nn.Conv2d):
    """Weight standardisation written out: (w - mean) / std over each filter, times a per-filter gain."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.ones(self.out_channels, 1, 1, 1))

    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w * self.gain * 0.5, self.bias, self.stride, self.padding)


class MixedConv(nn.Conv2d):
    """A weight mixed across filters: cannot be followed."""

    def forward(self, x):
        return F.conv2d(x, self.weight - self.weight.mean(0, keepdim=True), self.bias)


def test_computed_weight_is_followed():
    model = nn.Sequential(StdConv(3, 8, 3, padding=1), nn.ReLU(), StdConv(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(1, 3, 8, 8)
    g = ppf.DependencyGraph(model, x)
    first = g.group_of(model[0])
    assert first.prunable and "0.gain" in {m.name for m in first.members}
    assert ("2.weight", 1, "consumer") in {(m.name, m.dim, m.role) for m in first.members}
    assert first.inexact is not None  # standardisation over each filter's inputs
    before, after = pruned_runs(model, x)
    assert model[2].weight.shape == (4, 4, 3, 3) and model[0].gain.shape[0] == 4 and after < before


def test_computed_weight_not_followed_locks_with_a_reason():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), MixedConv(8, 6, 1), nn.Conv2d(6, 4, 1)).eval()
    g = ppf.DependencyGraph(model, torch.randn(1, 3, 4, 4))
    locked = g.group_of(model[0])
    assert not locked.prunable and "in 1 " in locked.reason and "sub combines the filters" in locked.reason
    out = next(gr for gr in g.groups if "1" in gr.modules and gr.channels == 6)
    assert not out.prunable and "sub combines the filters" in out.reason


@pytest.mark.parametrize("name", ["resnetv2_50x1_bit", "nf_resnet26", "convnextv2_atto", "tresnet_m", "skresnet18"])
def test_timm_models_prune_and_run(name):
    timm = pytest.importorskip("timm")
    model, x = timm.create_model(name, pretrained=False).eval(), torch.randn(1, 3, 64, 64)
    g = ppf.DependencyGraph(model, x)
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    held = {m.name for gr in g.groups for m in gr.members if m.dim == 0 and m.role == "producer"}
    assert all(f"{n}.weight" in held for n in layers)  # every conv: prunable or locked with a reason
    assert len(g.prunable_groups) > 10
    before, after = pruned_runs(model, x, 0.3)
    assert after < 0.8 * before


def test_hf_bit_weight_standardized():
    transformers = pytest.importorskip("transformers")
    model = transformers.BitForImageClassification(transformers.BitConfig(
        depths=[1, 1, 1, 1], hidden_sizes=[64, 64, 128, 128], embedding_size=32, num_groups=8)).eval()
    x = {"pixel_values": torch.randn(1, 3, 64, 64)}
    g = ppf.DependencyGraph(model, x)
    assert len(g.prunable_groups) > 5
    before = ppf.profile(model, x).macs
    ppf.prune(model, x, ratio=0.3)
    assert ppf.profile(model, x).macs < 0.8 * before
    assert model(**x).logits.shape == (1, model.config.num_labels)


class RMSNormed(torch.nn.Module):
    """A Linear, an RMSNorm over its features (as timm and LLM-style blocks use), a Linear."""

    def __init__(self):
        super().__init__()
        self.fc1, self.norm, self.fc2 = torch.nn.Linear(6, 16), torch.nn.RMSNorm(16), torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(self.norm(self.fc1(x)))


def test_rms_norm_joins_the_channels_it_normalises():
    model, x = RMSNormed(), torch.randn(4, 6)
    g = ppf.DependencyGraph(model, x)
    group = g.group_of(model.fc1)
    assert group.prunable and any(m.name == "norm.weight" for m in group.members) and group.inexact
    ppf.prune(model, x, ratio=0.5)
    assert model.norm.weight.shape == (8,) and model(x).shape == (4, 3)


class EinsumAttention(nn.Module):
    """Attention written with einsum (heads by a view), and a sum over channels by einsum where `summed`."""

    def __init__(self, summed: bool = False):
        super().__init__()
        self.qkv, self.proj, self.summed = nn.Linear(16, 48), nn.Linear(16, 8), summed

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, 4, 4).permute(2, 0, 3, 1, 4).unbind(0)
        attn = torch.einsum("bhqd,bhkd->bhqk", q, k).softmax(-1)
        out = torch.einsum("bhqk,bhkd->bqhd", attn, v).reshape(B, N, 16)
        return torch.einsum("bnc->bn", out) if self.summed else self.proj(out)


def test_einsum_follows_heads_and_locks_a_sum_over_channels():
    model, x = EinsumAttention().eval(), torch.randn(2, 3, 16)
    for heads in ("dims", "whole"):
        g = ppf.DependencyGraph(model, x, heads=heads)
        group = g.group_of(model.qkv)
        assert group.prunable and group.channels == 4 and dead_channel_check(model, x, g) == "ok"
        assert ("dims of each of 4 heads" in group.origin) == (heads == "dims")
    pruned_runs(model, x)
    summed = EinsumAttention(summed=True).eval()
    assert "einsum 'bnc->bn' sums over these channels" in ppf.DependencyGraph(summed, x).group_of(summed.qkv).reason


class CrossStage(nn.Module):
    """timm CSPNet's cut: x.split(self.expand_chs // 2) of a conv's channels into two equal halves."""

    def __init__(self):
        super().__init__()
        self.expand_chs = 8
        self.conv_exp, self.mid, self.out = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(8, 5, 1)

    def forward(self, x):
        xs, xb = self.conv_exp(x).split(self.expand_chs // 2, dim=1)
        return self.out(torch.cat([xs, self.mid(xb)], dim=1))


class SelectiveKernel(nn.Module):
    """SKNet's input split (timm `SelectiveKernel`): the residual stream cut into `num_paths` equal parts by
    `self.in_channels // self.num_paths`, one conv per part, in two blocks in a row."""

    def __init__(self):
        super().__init__()
        self.stem, self.in_channels, self.num_paths = nn.Conv2d(3, 8, 1), 8, 2
        self.paths = nn.ModuleList(nn.Conv2d(4, 8, 3, padding=1) for _ in range(2))
        self.paths2 = nn.ModuleList(nn.Conv2d(4, 8, 1) for _ in range(2))
        self.head = nn.Linear(8, 2)

    def block(self, x, paths):
        parts = x.split(self.in_channels // self.num_paths, 1)
        return x + sum(p(part) for p, part in zip(paths, parts))

    def forward(self, x):
        return self.head(self.block(self.block(self.stem(x), self.paths), self.paths2).mean((2, 3)))


@pytest.mark.parametrize("make, x, layer, attribute, widths", [
    (CrossStage, torch.randn(2, 3, 8, 8), "conv_exp", "expand_chs",
     ("expand_chs", "conv_exp.out_channels", "mid.in_channels")),
    (SelectiveKernel, torch.randn(2, 3, 6, 6), "stem", "in_channels",
     ("in_channels", "stem.out_channels", "paths.1.in_channels"))],
    ids=["cspnet-halves", "sknet-paths"])
def test_a_split_sized_by_an_attribute_divided_is_followed(tmp_path, make, x, layer, attribute, widths):
    """timm CSPNet's `split(self.expand_chs // 2)`, SKNet's `split(self.in_channels // self.num_paths)`."""
    model = make().eval()
    g = ppf.DependencyGraph(model, x)
    grp = g.group_of(model.get_submodule(layer))
    assert grp.prunable and grp.channels == 4 and grp.sizes == (("", attribute, 2),)
    assert dead_channel_check(model, x, g) == "ok"
    pruned_runs(model, x)
    owner = lambda path: model.get_submodule(path.rpartition(".")[0])  # noqa: E731
    assert [getattr(owner(w), w.rpartition(".")[2]) for w in widths] == [4, 4, 2]
    ppf.save_pruned(model, tmp_path / "m.pt")
    torch.testing.assert_close(ppf.load_pruned(lambda: make().eval(), tmp_path / "m.pt")(x), model(x))


class TokenConv(nn.Module):
    """CoaT's aggregate head: three token vectors of a Linear's channels stacked, then a Conv1d over the three
    tokens (its length dim holds the channels), then a classifier."""

    def __init__(self, kernel: int = 1):
        super().__init__()
        self.fc, self.agg, self.head = nn.Linear(4, 8), nn.Conv1d(3, 1, kernel, padding=kernel // 2), nn.Linear(8, 2)

    def forward(self, x):  # x: (B, 3, 4)
        y = self.fc(x)
        return self.head(self.agg(torch.stack([y[:, 0], y[:, 1], y[:, 2]], dim=1)).squeeze(1))


def test_channels_on_a_convs_length_dim_follow_a_pointwise_kernel_and_lock_otherwise():
    x = torch.randn(2, 3, 4)
    model = TokenConv().eval()
    g = ppf.DependencyGraph(model, x)
    grp = g.group_of(model.fc)
    assert grp.prunable and ("head.weight", 1) in {(m.name, m.dim) for m in grp.members}
    assert "the bias of agg" in grp.inexact  # added at every position, dead channels' too
    pruned_runs(model, x)
    assert model.head.in_features == model.fc.out_features == 4
    wide = TokenConv(kernel=3).eval()
    assert "slides its kernel along these channels" in ppf.DependencyGraph(wide, x).group_of(wide.fc).reason


class WriteNet(nn.Module):
    """y written into a new tensor with x[...] = y: `into` sizes its channel dim ("count": y.shape[1], "fixed":
    8 written in the code); `fill` is the value the rest starts at; `value` writes a number across it."""

    def __init__(self, into="count", fill="zeros", value=None):
        super().__init__()
        self.into, self.fill, self.value = into, fill, value
        self.conv, self.out = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        c = y.shape[1] if self.into == "count" else 8
        r = getattr(torch, self.fill)((3, c, y.shape[2], y.shape[3]), dtype=y.dtype)
        r[torch.tensor([0, 2])] = y.expand(2, -1, -1, -1)
        if self.value is not None:
            r[1] = self.value
        return self.out(r)


@pytest.mark.parametrize("fill,value,exact", [("zeros", None, True), ("zeros", 0.0, True), ("ones", None, False),
                                              ("zeros", 2.0, False)])
def test_setitem_into_a_new_tensor_sized_by_the_channels(fill, value, exact):
    model, x = WriteNet(fill=fill, value=value).eval(), torch.randn(1, 3, 6, 6)
    g = ppf.DependencyGraph(model, x)
    group = g.group_of(model.conv)
    assert group.prunable and "out.weight" in {m.name for m in group.members}
    assert (group.inexact is None) == exact, group.inexact
    if exact:
        assert dead_channel_check(model, x, g) == "ok"
    pruned_runs(model, x)
    assert model.out.in_channels == 4


def test_setitem_into_fixed_channels_locks():
    """Writing into a tensor whose channel count is a number in the code: the channels written lock (a
    pruned model would no longer run); the write used to be unrecorded, and the model corrupted."""
    model, x = WriteNet(into="fixed").eval(), torch.randn(1, 3, 6, 6)
    assert "writes them into fixed channels" in ppf.DependencyGraph(model, x).group_of(model.conv).reason
    ppf.prune(model, x, ratio=0.5)
    assert model.conv.out_channels == 8 and model(x).shape == (3, 4, 6, 6)


def test_setitem_of_fixed_channels_into_channels_locks():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.out = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            y = self.conv(x)
            y[:, :, :1] = torch.ones(8, 1, 6)  # a made tensor of 8 channels written in
            return self.out(y)

    model, x = Net().eval(), torch.randn(1, 3, 6, 6)
    assert "writes fixed channels into them" in ppf.DependencyGraph(model, x).group_of(model.conv).reason


def test_roi_align_keeps_the_channels():
    torchvision = pytest.importorskip("torchvision")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8 * 2 * 2, 5)

        def forward(self, x):
            boxes = torch.tensor([[0, 0.0, 0.0, 4.0, 4.0], [0, 2.0, 1.0, 7.0, 7.0]])
            pooled = torchvision.ops.roi_align(torch.relu(self.conv(x)), boxes, (2, 2))
            return self.fc(pooled.flatten(1))

    fc_reads_blocks(Net().eval(), torch.randn(1, 3, 8, 8), 4)


class InterpolatedPosition(nn.Module):
    """PVT's position embedding: a parameter interpolated to the input's size, then added to the channels."""

    def __init__(self):
        super().__init__()
        self.conv, self.out = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.pos = nn.Parameter(torch.randn(1, 8, 4, 4))

    def forward(self, x):
        return self.out(self.conv(x) + F.interpolate(self.pos, size=x.shape[2:], mode="bilinear"))


def test_an_interpolated_parameter_keeps_its_channel_dim():
    model, x = InterpolatedPosition().eval(), torch.randn(1, 3, 8, 8)
    group = ppf.DependencyGraph(model, x).group_of(model.conv)
    assert group.prunable and ("pos", 1) in {(m.name, m.dim) for m in group.members}
    pruned_runs(model, x)
    assert model.pos.shape == (1, 4, 4, 4)


def test_hf_conv1d_is_a_linear_stored_transposed():
    """Hugging Face's Conv1D (GPT-2): torch.addmm(bias, x, weight) with weight (in, out), its width `nf`."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_embd=32, n_head=4, n_layer=2, n_positions=16, vocab_size=50)
    model, x = transformers.GPT2Model(config).eval(), {"input_ids": torch.randint(0, 50, (1, 8))}
    g = ppf.DependencyGraph(model, x)
    mlp = model.h[0].mlp
    group = g.group_of(mlp.c_fc)
    assert group.prunable, group.reason
    assert {("h.0.mlp.c_fc.weight", 1), ("h.0.mlp.c_fc.bias", 0), ("h.0.mlp.c_proj.weight", 0)} <= {
        (m.name, m.dim) for m in group.members}
    assert dead_channel_check(model, x, g) == "ok"
    before = ppf.profile(model, x).macs
    ppf.prune(model, x, ratio=0.5)
    assert mlp.c_fc.weight.shape == (32, 64) and mlp.c_fc.nf == 64 and mlp.c_proj.weight.shape == (64, 32)
    assert model(**x).last_hidden_state.shape == (1, 8, 32) and ppf.profile(model, x).macs < before


class PickedBias(nn.Module):
    """LeViT's attention biases: a parameter of (heads, offsets) indexed by a tensor along dim 1, added per head."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 1), nn.Linear(4, 2)
        self.biases = nn.Parameter(torch.randn(4, 5))
        self.register_buffer("idx", torch.randint(0, 5, (16,)), persistent=False)

    def forward(self, x):
        return self.fc((self.conv(x).flatten(2) + self.biases[:, self.idx]).transpose(1, 2))


def test_a_parameter_picked_along_another_dim_keeps_its_channel_dim():
    model, x = PickedBias().eval(), torch.randn(1, 3, 4, 4)
    g = ppf.DependencyGraph(model, x)
    group = g.group_of(model.conv)
    assert group.prunable and ("biases", 0) in {(m.name, m.dim) for m in group.members}
    pruned_runs(model, x)
    assert model.biases.shape == (2, 5)


class TiledPosition(nn.Module):
    """SAM2/Hiera's position embedding: an interpolated parameter plus a window's, tiled, added to the channels;
    `repeat` > 1 repeats the channels themselves."""

    def __init__(self, repeat=1):
        super().__init__()
        self.repeat = repeat
        self.conv, self.out = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8 * repeat, 4, 1)
        self.pos, self.win = nn.Parameter(torch.randn(1, 8, 4, 4)), nn.Parameter(torch.randn(1, 8, 2, 2))

    def forward(self, x):
        pos = F.interpolate(self.pos, size=x.shape[2:], mode="bilinear") + self.win.tile(1, 1, 4, 4)
        return self.out((self.conv(x) + pos.repeat(x.shape[0], 1, 1, 1)).repeat(1, self.repeat, 1, 1))


def test_parameters_combined_tiled_and_repeated_follow_the_channels():
    model, x = TiledPosition().eval(), torch.randn(2, 3, 8, 8)
    group = ppf.DependencyGraph(model, x).group_of(model.conv)
    assert group.prunable and {("pos", 1), ("win", 1)} <= {(m.name, m.dim) for m in group.members}
    pruned_runs(model, x)
    assert model.pos.shape == (1, 4, 4, 4) and model.win.shape == (1, 4, 2, 2)
    doubled = TiledPosition(repeat=2).eval()
    assert "repeat repeats channels" in ppf.DependencyGraph(doubled, x).group_of(doubled.conv).reason


class Recurrent(nn.Module):
    """A Linear's features read by a 2-layer bidirectional LSTM and, along another layout, a GRU given a hidden
    state made by a layer; a packed sequence into an RNN."""

    def __init__(self):
        super().__init__()
        self.a, self.h0 = nn.Linear(8, 6), nn.Linear(8, 4)
        self.lstm = nn.LSTM(6, 5, batch_first=True, bidirectional=True, num_layers=2)
        self.gru, self.rnn = nn.GRU(6, 4), nn.RNN(6, 3)
        self.out = nn.Linear(10 + 4 + 3, 2)

    def forward(self, x):
        h = self.a(x)
        y, _ = self.lstm(h)
        z, _ = self.gru(h.transpose(0, 1), self.h0(x[:, 0]).unsqueeze(0))
        packed = nn.utils.rnn.pack_padded_sequence(h, [4, 3], batch_first=True)
        r, _ = nn.utils.rnn.pad_packed_sequence(self.rnn(packed)[0], batch_first=True)
        return self.out(torch.cat([y, z.transpose(0, 1), r], -1))


def test_recurrent_layers_read_their_input_features_with_weight_ih_l0():
    model, x = Recurrent().eval(), torch.randn(2, 4, 8)
    g = ppf.DependencyGraph(model, x)
    features = g.group_of(model.a)
    assert features.prunable and {"lstm", "gru", "rnn"} <= set(features.modules)
    held = {(m.name, m.dim) for m in features.members}
    assert {("lstm.weight_ih_l0", 1), ("lstm.weight_ih_l0_reverse", 1), ("gru.weight_ih_l0", 1),
            ("rnn.weight_ih_l0", 1)} <= held and not any("l1" in name or "hh" in name for name, _ in held)
    hidden = g.group_of(model.h0)  # the GRU's hidden state keeps its size
    assert not hidden.prunable and "hidden state" in hidden.reason
    assert dead_channel_check(model, x, g) == "ok"
    ppf.prune(model, x, ratio=0.5)
    assert model.a.out_features == 3
    assert (model.lstm.input_size, model.gru.input_size, model.rnn.input_size) == (3, 3, 3)
    assert model.lstm.weight_ih_l0_reverse.shape == (20, 3) and model.lstm.weight_ih_l1.shape == (20, 10)
    assert model(x).shape == (2, 4, 2)


def test_recurrent_layer_along_channels_locks():
    """An LSTM run along a dim that holds channels (the sequence is the channels) mixes them: locked."""
    model = nn.Sequential(nn.Conv1d(3, 6, 1), nn.LSTM(5, 4, batch_first=True)).eval()
    g = ppf.DependencyGraph(model, torch.randn(2, 3, 5))
    conv = g.group_of(model[0])
    assert not conv.prunable and "lstm 1 runs along these channels" in conv.reason


class PositionTable(nn.Module):
    """Gemma4's vision position embedding: one-hot positions @ a (2, P, D) table, summed over the 2 axes, added
    to the patch embedding."""

    def __init__(self):
        super().__init__()
        self.proj, self.table, self.head = nn.Linear(6, 8), nn.Parameter(torch.randn(2, 5, 8)), nn.Linear(8, 3)

    def forward(self, x):  # x: (B, N, 6)
        positions = torch.arange(x.shape[1]).remainder(5).expand(2, -1)
        pe = (F.one_hot(positions, 5).to(x) @ self.table).sum(0)
        return self.head(self.proj(x) + pe)


def test_a_parameters_columns_through_matmul_and_sum_follow_the_channels():
    model, x = PositionTable().eval(), torch.randn(2, 4, 6)
    g = ppf.DependencyGraph(model, x)
    grp = g.group_of(model.proj)
    assert grp.prunable and {("table", 2), ("head.weight", 1)} <= {(m.name, m.dim) for m in grp.members}
    pruned_runs(model, x)
    assert model.table.shape == (2, 5, 4)
