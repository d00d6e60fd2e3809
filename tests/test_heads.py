"""Attention heads made by a reshape (timm's Attention, Hugging Face self-attention), matmul and
scaled_dot_product_attention, the module attributes that size heads (updated by apply, kept by
save_pruned), and the embedding width, pruned only when asked (prune_embedding=True)."""

import math

import pytest
import timm
import torch
import torch.nn.functional as F
import transformers
from torch import nn

import pyprune_fast as ppf
from pyprune_fast.testing import dead_channel_check, kill_channels


def tiny_vit():
    torch.manual_seed(0)
    return timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                             num_classes=10).eval()


def hf_vit():
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                                 image_size=32, patch_size=8, num_labels=5)
    return transformers.ViTForImageClassification(cfg).eval()


X = torch.randn(2, 3, 32, 32)


def heads_groups(g):
    return [grp for grp in g.groups if "heads of" in grp.origin]


def test_timm_heads_are_groups_whose_attributes_follow():
    model = tiny_vit()
    g = ppf.DependencyGraph(model, X, heads="whole")
    heads = heads_groups(g)
    assert len(heads) == 2 and all(h.prunable and h.channels == 6 for h in heads)
    assert {s[1:] for s in heads[0].sizes} == {("num_heads", 1), ("attn_dim", 64)}
    qkv = [m for m in heads[0].members if m.name == "blocks.0.attn.qkv.weight"]
    assert sorted((m.offset, m.block) for m in qkv) == [(0, 64), (384, 64), (768, 64)]  # q, k and v parts
    y = model(X).shape
    ppf.prune(model, X, ratio=0.5, heads="whole")
    attn = model.blocks[0].attn
    assert (attn.num_heads, attn.attn_dim, attn.qkv.out_features, attn.proj.in_features) == (3, 192, 576, 192)
    assert model(X).shape == y


def test_timm_head_dims_are_cut_alike_in_every_head():
    """By default a head's dims are the group: the same positions cut in q, k and v of every head."""
    model = tiny_vit()
    dims = heads_groups(ppf.DependencyGraph(model, X))
    assert len(dims) == 2 and all(d.prunable and d.channels == 64 and "64 dims of each of 6 heads" in d.origin
                                  for d in dims)
    assert {s[1:] for s in dims[0].sizes} == {("head_dim", 1), ("attn_dim", 6)}
    qkv = [m for m in dims[0].members if m.name == "blocks.0.attn.qkv.weight"]
    assert sorted((m.offset, m.block) for m in qkv) == [(64 * i, 1) for i in range(18)]  # 3 parts x 6 heads
    proj = [m for m in dims[0].members if m.name == "blocks.0.attn.proj.weight"]
    assert sorted((m.offset, m.dim, m.role) for m in proj) == [(64 * i, 1, "consumer") for i in range(6)]
    y = model(X).shape
    ppf.prune(model, X, ratio=0.5)
    attn = model.blocks[0].attn
    assert (attn.num_heads, attn.head_dim, attn.attn_dim) == (6, 32, 192)
    assert (attn.qkv.out_features, attn.proj.in_features) == (576, 192) and model(X).shape == y
    assert type(attn).forward is type(tiny_vit().blocks[0].attn).forward  # sizes follow: nothing rewritten


@pytest.mark.parametrize("heads, attribute, kept", [("dims", "head_dim", 32), ("whole", "num_heads", 3)])
def test_pruned_heads_save_and_load(tmp_path, heads, attribute, kept):
    model = tiny_vit()
    ppf.prune(model, X, ratio=0.5, heads=heads)
    ppf.save_pruned(model, tmp_path / "vit.pt")
    loaded = ppf.load_pruned(tiny_vit, tmp_path / "vit.pt")
    assert getattr(loaded.blocks[1].attn, attribute) == kept
    torch.testing.assert_close(loaded(X), model(X))
    ppf.save_pruned(loaded, tmp_path / "again.pt")  # what load_pruned set is saved again
    assert ppf.load_pruned(tiny_vit, tmp_path / "again.pt").blocks[1].attn.attn_dim == 192


@pytest.mark.parametrize("heads, channels", [("dims", 16), ("whole", 4)])
def test_hugging_face_heads_join_q_k_and_v(heads, channels):
    """HF's q, k and v views all read `self.head_dim`: one count for three spaces, so their head dims are cut
    alike (joined) and the attribute follows."""
    model = hf_vit()
    inputs = {"pixel_values": X}
    g = ppf.DependencyGraph(model, inputs, heads=heads)
    groups = heads_groups(g)
    assert len(groups) == 2 and all(h.prunable and h.channels == channels for h in groups)
    names = {m.name.rsplit(".", 2)[-2] for m in groups[0].members}
    assert {"q_proj", "k_proj", "v_proj", "o_proj"} <= names
    y = model(**inputs).logits.shape
    ppf.prune(model, inputs, ratio=0.5, heads=heads)
    attn = next(m for n, m in model.named_modules() if n.endswith("layers.0.attention"))
    assert attn.q_proj.out_features == 32 and model(**inputs).logits.shape == y
    if heads == "dims":
        assert groups[0].sizes == (("vit.layers.0.attention", "head_dim", 1),) and attn.head_dim == 8


def test_dead_heads_are_removed_exactly():
    model = tiny_vit()
    g = ppf.DependencyGraph(model, X, heads="whole")
    heads = heads_groups(g)[0]
    assert heads.inexact is None
    kill_channels(g, heads, torch.tensor([1, 4]))
    y = model(X)
    g = ppf.DependencyGraph(model, X, heads="whole")
    ppf.apply(ppf.Plan(g).remove(heads_groups(g)[0], [1, 4]))
    torch.testing.assert_close(model(X), y, rtol=1e-5, atol=1e-5)
    assert model.blocks[0].attn.num_heads == 4


def test_dead_head_dims_are_removed_exactly_where_the_scale_is_fixed():
    """SDPA's default scale, 1/sqrt(head_dim), would see a head dim cut: apply passes it the dense model's
    (`nn.rewritten`); timm's unfused path multiplies by its own `scale`. Either way dead head dims (zero in q,
    k and v) go without changing the output."""
    model = tiny_vit()
    assert heads_groups(ppf.DependencyGraph(model, X))[0].inexact is None
    for block in model.blocks:
        block.attn.fused_attn = False
    g = ppf.DependencyGraph(model, X)
    dims = heads_groups(g)[0]
    assert dims.inexact is None
    kill_channels(g, dims, torch.tensor([0, 5, 63]))
    y = model(X)
    g = ppf.DependencyGraph(model, X)
    ppf.apply(ppf.Plan(g).remove(heads_groups(g)[0], [0, 5, 63]))
    torch.testing.assert_close(model(X), y, rtol=1e-5, atol=1e-5)
    assert model.blocks[0].attn.head_dim == 61


def test_embedding_width_is_pruned_only_when_asked():
    model = tiny_vit()
    embedding = ppf.DependencyGraph(model, X).group_of(model.patch_embed.proj)
    assert "embedding width of a transformer" in embedding.reason and "prune_embedding=True" in embedding.reason
    assert ppf.DependencyGraph(model, X, prune_embedding=True).group_of(model.patch_embed.proj).prunable
    y = model(X).shape
    ppf.prune(model, X, ratio=0.5, prune_embedding=True)
    assert model.patch_embed.proj.out_channels == 192 and model.pos_embed.shape[-1] == 192 and model(X).shape == y
    with pytest.raises(ValueError, match="prune_embedding must be True or False"):
        ppf.prune(tiny_vit(), X, ratio=0.5, prune_embedding=1)
    with pytest.raises(TypeError, match="prune_embedding must be True or False"):
        ppf.DependencyGraph(model, X, prune_embedding="yes")


class Attention(nn.Module):
    """q, k, v projections and an output projection; `fused`: F.scaled_dot_product_attention, else matmuls."""

    def __init__(self, fused: bool, heads: int = 0):
        super().__init__()
        self.q, self.k, self.v, self.o = nn.Linear(16, 32), nn.Linear(16, 32), nn.Linear(16, 24), nn.Linear(24, 16)
        self.fused, self.heads = fused, heads

    def split(self, t):
        return t.view(t.shape[0], t.shape[1], self.heads, -1).transpose(1, 2) if self.heads else t

    def forward(self, x):
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = (q @ k.transpose(-2, -1)).softmax(-1) @ v
        if self.heads:
            out = out.transpose(1, 2).flatten(2)
        return self.o(out)


def test_matmul_joins_what_it_contracts():
    model = Attention(fused=False)
    g = ppf.DependencyGraph(model, torch.randn(2, 5, 16))
    assert g.group_of(model.q) is g.group_of(model.k) and g.group_of(model.q).prunable  # q . k sums over them
    assert g.group_of(model.v).prunable and g.group_of(model.v) is not g.group_of(model.q)
    x = torch.randn(2, 5, 16)
    ppf.prune(model, x, ratio=0.5)
    assert (model.q.out_features, model.k.out_features, model.v.out_features) == (16, 16, 12)
    assert model(x).shape == (2, 5, 16)


def test_sdpa_joins_q_and_k_and_keeps_its_default_scale():
    """The default scale, 1/sqrt of q's width, is passed explicitly once q and k are cut (the call is
    rewritten), so dead channels go exactly; where the call cannot be rewritten, the group is inexact."""
    model, x = Attention(fused=True), torch.randn(2, 5, 16)
    g = ppf.DependencyGraph(model, x)
    qk = g.group_of(model.q)
    assert qk is g.group_of(model.k) and qk.prunable and qk.inexact is None
    assert ("", "forward", qk.rewrites[0][2], ("scale", 32 ** -0.5)) in qk.rewrites
    assert g.group_of(model.v).prunable and g.group_of(model.v) is not qk  # v's width passes through
    ppf.prune(model, x, ratio=0.5)
    q, k, v = model.q(x), model.k(x), model.v(x)
    torch.testing.assert_close(model(x), model.o((q @ k.transpose(1, 2) / 32 ** 0.5).softmax(-1) @ v))
    closure = Attention(fused=True)
    closure.forward = lambda x: closure.o(F.scaled_dot_product_attention(closure.q(x), closure.k(x), closure.v(x)))
    assert "scales by 1/sqrt(head_dim)" in ppf.DependencyGraph(closure, x).group_of(closure.q).inexact


@pytest.mark.parametrize("fused", [False, True])
def test_heads_through_matmul_and_sdpa(fused):
    model, x = Attention(fused, heads=4), torch.randn(2, 5, 16)
    g = ppf.DependencyGraph(model, x, heads="whole")
    heads = g.group_of(model.q)
    assert heads.prunable and heads.channels == 4 and heads is g.group_of(model.v)
    ppf.apply(ppf.Plan(g).remove(heads, [0, 3]))
    assert (model.q.out_features, model.v.out_features, model.o.in_features) == (16, 12, 12)
    assert model(x).shape == (2, 5, 16)


@pytest.mark.parametrize("fused", [False, True])
def test_head_dims_through_matmul_and_sdpa(fused):
    """q and k dims are contracted together (one group), v's dims are another: each is cut in every head."""
    model, x = Attention(fused, heads=4), torch.randn(2, 5, 16)
    g = ppf.DependencyGraph(model, x)
    qk, v = g.group_of(model.q), g.group_of(model.v)
    assert qk is g.group_of(model.k) and (qk.channels, v.channels) == (8, 6) and qk.prunable and v.prunable
    ppf.apply(ppf.Plan(g).remove(qk, [0, 7]).remove(v, [2]))
    assert (model.q.out_features, model.k.out_features, model.v.out_features, model.o.in_features) == (24, 24, 20, 20)
    assert model(x).shape == (2, 5, 16)


def test_heads_option_is_checked():
    with pytest.raises(ValueError, match="heads must be 'dims' or 'whole', got 'all'"):
        ppf.DependencyGraph(tiny_vit(), X, heads="all")
    model = tiny_vit()
    with pytest.raises(ValueError, match="prune: heads must be 'dims' or 'whole', got 2"):
        ppf.prune(model, X, ratio=0.5, heads=2)
    assert model.blocks[0].attn.head_dim == 64


class UsedTwice(nn.Module):
    """A heads count that sizes the heads and also a tensor made in forward: it cannot follow them."""

    def __init__(self, compare: bool):
        super().__init__()
        self.qkv, self.proj, self.num_heads, self.compare = nn.Linear(8, 24), nn.Linear(8, 8), 2, compare

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, 4).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, -1)
        if self.compare:
            return self.proj(out) if self.num_heads > 1 else out
        return self.proj(out) + torch.zeros(self.num_heads * 4)


@pytest.mark.parametrize("compare", [False, True])
def test_an_attribute_used_otherwise_locks_its_heads(compare):
    model = UsedTwice(compare)
    g = ppf.DependencyGraph(model, torch.randn(2, 3, 8), heads="whole")
    heads = heads_groups(g)[0]
    assert "num_heads sizes these channels and is used otherwise too" in heads.reason


def test_a_saved_heads_count_out_of_range_is_refused(tmp_path):
    model = tiny_vit()
    ppf.prune(model, X, ratio=0.5)
    ppf.save_pruned(model, tmp_path / "vit.pt")
    payload = torch.load(tmp_path / "vit.pt", weights_only=True)
    payload["attrs"]["blocks.0.attn"]["num_heads"] = 100
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"attrs\['blocks.0.attn'\]\['num_heads'\] = 100 must be an int between 1 and the original 6"):
        ppf.load_pruned(tiny_vit, tmp_path / "bad.pt")


class BiasedHeads(nn.Module):
    """Heads with a learned per-head bias added to the scores through SDPA's mask (HF Swin's relative bias)."""

    def __init__(self):
        super().__init__()
        self.qkv, self.proj, self.num_heads = nn.Linear(8, 24), nn.Linear(8, 8), 4
        self.bias = nn.Parameter(torch.randn(4, 3, 3))  # (heads, N, N)

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, 2).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias.unsqueeze(0))
        return self.proj(out.transpose(1, 2).reshape(B, N, -1))


def test_a_per_head_bias_in_the_mask_is_cut_with_the_heads():
    model, x = BiasedHeads(), torch.randn(2, 3, 8)
    heads = heads_groups(ppf.DependencyGraph(model, x, heads="whole"))[0]
    assert heads.prunable and any(m.name == "bias" and m.dim == 0 for m in heads.members)
    ppf.prune(model, x, ratio=0.5, heads="whole")
    assert model.bias.shape == (2, 3, 3) and model.num_heads == 2 and model.qkv.out_features == 12
    assert model(x).shape == (2, 3, 8)


class SplitAttention(nn.Module):
    """ResNeSt's radix: a grouped conv (groups = radix), BatchNorm and ReLU, viewed as (radix, RC // radix) and
    summed over the radix with attention weights per radix and channel."""

    def __init__(self, radix: int = 2):
        super().__init__()
        self.radix = radix
        self.conv, self.bn = nn.Conv2d(8, 16 * radix, 3, padding=1, groups=radix), nn.BatchNorm2d(16 * radix)
        self.fc = nn.Conv2d(16, 16 * radix, 1)
        self.out = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = self.bn(self.conv(x)).relu()
        B, RC, H, W = x.shape
        x = x.reshape(B, self.radix, RC // self.radix, H, W)
        attn = self.fc(x.sum(1).mean((2, 3), keepdim=True)).view(B, self.radix, -1).softmax(1)
        return self.out((x * attn.reshape(B, self.radix, RC // self.radix, 1, 1)).sum(1))


def test_a_grouped_convs_radix_viewed_as_heads_is_cut_alike_in_every_radix():
    model, x = SplitAttention().eval(), torch.randn(2, 8, 6, 6)
    g = ppf.DependencyGraph(model, x)
    dims = g.group_of(model.conv)
    assert dims.prunable and dims.channels == 16 and dims is g.group_of(model.fc) and dims.divisions == 1
    assert dead_channel_check(model, x, g) == "ok"
    ppf.prune(model, x, ratio=0.5)
    assert (model.conv.out_channels, model.conv.groups, model.fc.out_channels, model.out.in_channels) == (16, 2, 16, 8)
    assert model(x).shape == (2, 4, 6, 6)


class SqrtScaled(nn.Module):
    """Older Hugging Face attention: scores / math.sqrt(self.head_size), in forward. The head size made a float
    is a use the graph cannot follow, so head dims are not cut; whole heads are, in the graph's second pass."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)
        self.heads, self.head_size = 4, 4

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = (t.view(B, N, self.heads, self.head_size).transpose(1, 2) for t in (self.q(x), self.k(x), self.v(x)))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_size)
        return self.o((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, N, 16))


def test_a_head_size_made_a_float_falls_back_to_whole_heads():
    model, x = SqrtScaled().eval(), torch.randn(2, 5, 16)
    g = ppf.DependencyGraph(model, x)
    heads = g.group_of(model.q)
    assert heads.prunable and heads.channels == 4 and "4 heads of" in heads.origin and heads is g.group_of(model.v)
    assert dead_channel_check(model, x, g) == "ok"
    assert ppf.DependencyGraph(model, x, heads="whole").group_of(model.q).channels == 4
    ppf.prune(model, x, ratio=0.5)
    assert (model.heads, model.head_size, model.q.out_features) == (2, 4, 8) and model(x).shape == (2, 5, 16)


class LocalValue(nn.Module):
    """EfficientFormerV2's attention: v (a conv) viewed as heads and also read whole by a depthwise conv, the
    attention's output merged back and added to that."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Conv2d(8, 16, 1), nn.Conv2d(8, 16, 1), nn.Conv2d(8, 16, 1)
        self.local, self.proj, self.heads = nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.Conv2d(16, 8, 1), 4

    def forward(self, x):
        B, C, H, W = x.shape
        q = self.q(x).reshape(B, self.heads, -1, H * W).transpose(-1, -2)
        k = self.k(x).reshape(B, self.heads, -1, H * W)
        v = self.v(x)
        local = self.local(v)
        v = v.reshape(B, self.heads, -1, H * W).transpose(-1, -2)
        out = ((q @ k).softmax(-1) @ v).transpose(-1, -2).reshape(B, -1, H, W)
        return self.proj(out + local)


def test_head_dims_of_a_value_other_ops_read_too():
    model, x = LocalValue().eval(), torch.randn(2, 8, 5, 5)
    g = ppf.DependencyGraph(model, x)
    v = g.group_of(model.v)
    assert v.prunable and v.channels == 4 and "4 dims of each of 4 heads" in v.origin
    assert sorted(m.offset for m in v.members if m.name == "local.weight") == [0, 4, 8, 12]
    assert g.group_of(model.q) is g.group_of(model.k) and dead_channel_check(model, x, g) == "ok"
    ppf.prune(model, x, ratio=0.5)
    assert (model.v.out_channels, model.local.groups, model.proj.in_channels) == (8, 8, 8) and model(x).shape == x.shape
