"""A size in the model's code that pruning would make wrong is rewritten to -1 in that module's own method
(`nn.rewritten`): timm's `reshape(B, N, C)` after attention heads, kept through copies and files."""

import functools

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import pyprune_fast as ppf
from pyprune_fast.nn.rewritten import REWRITES, Rewritten
from pyprune_fast.testing import dead_channel_check, kill_channels

X = torch.randn(2, 3, 32, 32)


def cait():
    """timm's CaiT: its attention ends with `(attn @ v).transpose(1, 2).reshape(B, N, C)`, C read from x."""
    torch.manual_seed(0)
    return timm.create_model("cait_xxs24_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                             depth_token_only=1, num_classes=10).eval()


@pytest.mark.parametrize("how, num_heads, qkv", [("whole", 2, 3 * 2 * 48), ("dims", 4, 3 * 4 * 24)])
def test_timm_heads_reshaped_by_the_input_width_are_pruned(how, num_heads, qkv):
    """CaiT's `reshape(B, N, 3, self.num_heads, C // self.num_heads)` and `reshape(B, N, C)`, C the input's
    width: both sizes become -1 in the pruned module's forward, for whole heads and for head dims."""
    model = cait()
    g = ppf.DependencyGraph(model, X, heads=how)
    heads = [grp for grp in g.groups if "heads of" in grp.origin and "blocks.0" in grp.origin]
    assert heads and heads[0].prunable
    assert any(r[:2] == ("blocks.0.attn", "forward") for r in heads[0].rewrites)
    shape = model(X).shape
    ppf.prune(model, X, ratio=0.5, heads=how)
    attn = model.blocks[0].attn
    assert attn.num_heads == num_heads and attn.qkv.out_features == qkv and model(X).shape == shape
    assert isinstance(vars(attn)["forward"], Rewritten) and "forward" in getattr(attn, REWRITES)
    assert "forward" not in vars(cait().blocks[0].attn)  # the class and other instances are as they were


def test_rewrites_are_saved_and_loaded(tmp_path):
    model = cait()
    ppf.prune(model, X, ratio=0.5)
    ppf.save_pruned(model, tmp_path / "cait.pt")
    loaded = ppf.load_pruned(cait, tmp_path / "cait.pt")
    torch.testing.assert_close(loaded(X), model(X))
    assert getattr(loaded.blocks[0].attn, REWRITES) == getattr(model.blocks[0].attn, REWRITES)


def test_a_rewritten_model_exports():
    model = cait()
    ppf.prune(model, X, ratio=0.5)
    exported = torch.export.export(model, (X,))
    torch.testing.assert_close(exported.module()(X), model(X))


@pytest.mark.parametrize("edit, message", [
    ([[1, 1, 0, 5, 2]], "does not fit the model's code"),
    ("x", r"must be a list of \[line, end_line, col, end_col, index\] ints"),
])
def test_a_tampered_rewrite_is_refused(tmp_path, edit, message):
    model = cait()
    ppf.prune(model, X, ratio=0.5)
    ppf.save_pruned(model, tmp_path / "cait.pt")
    payload = torch.load(tmp_path / "cait.pt", weights_only=True)
    payload["rewrites"]["blocks.0.attn"]["forward"] = edit
    torch.save(payload, tmp_path / "bad.pt")
    fresh = cait()
    with pytest.raises(ValueError, match=message):
        ppf.load_pruned(lambda: fresh, tmp_path / "bad.pt")
    assert "forward" not in vars(fresh.blocks[0].attn) and fresh.blocks[0].attn.num_heads == 4  # left as built


def passthrough(fn):
    @functools.wraps(fn)
    def call(*args, **kwargs):
        return fn(*args, **kwargs)
    return call


class Squared(nn.Module):
    """A flatten sized C * C * 4: right only for 16 channels."""

    def __init__(self):
        super().__init__()
        self.c1, self.fc = nn.Conv2d(3, 16, 3, stride=4, padding=1), nn.Linear(16 * 64, 4)

    def forward(self, x):
        y = self.c1(x)
        B, C = y.shape[:2]
        return self.fc(y.reshape(B, C * C * 4))


class SquaredByName(Squared):
    def forward(self, x):
        y = self.c1(x)
        shape = (y.shape[0], y.shape[1] * y.shape[1] * 4)
        return self.fc(y.reshape(shape))  # the sizes are not written out in the call


class DecoratedSquared(Squared):
    @passthrough
    def forward(self, x):
        return super().forward(x)


@pytest.mark.parametrize("cls", [DecoratedSquared, SquaredByName])
def test_code_that_cannot_be_rewritten_locks(cls):
    """A subclass whose forward wraps the method holding the call (the method ran is not the class's own), or
    a call given its sizes as one variable: locked as before."""
    g = ppf.DependencyGraph(cls(), X)
    assert "computes an argument of reshape from a channel count" in g.group_of(g.model.c1).reason
    g = ppf.DependencyGraph(Squared(), X)
    assert g.group_of(g.model.c1).prunable


def test_qkv_bias_concatenated_in_forward_is_cut_with_the_heads():
    """timm's BEiT adds cat((q_bias, k_bias, v_bias)) as the qkv bias: q, k and v become equal parts of the
    layer's channels, so each bias is cut with its heads; dead heads leave the output as it was."""
    torch.manual_seed(0)
    model = timm.create_model("beit_base_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                              embed_dim=64, num_heads=4, num_classes=10).eval()
    g = ppf.DependencyGraph(model, X, heads="whole")
    heads = g.group_of(model.blocks[0].attn.qkv)
    assert heads.prunable and heads.channels == 4
    assert {(m.name, m.block) for m in heads.members} >= {(f"blocks.0.attn.{p}_bias", 16) for p in "qkv"}
    kill_channels(g, heads, torch.tensor([1, 2]))  # weights and biases of heads 1 and 2 zeroed
    y = model(X)
    g = ppf.DependencyGraph(model, X, heads="whole")
    ppf.apply(ppf.Plan(g).remove(g.group_of(model.blocks[0].attn.qkv), [1, 2]))
    assert model.blocks[0].attn.num_heads == 2 and model.blocks[0].attn.q_bias.shape == (32,)
    torch.testing.assert_close(model(X), y, rtol=1e-5, atol=1e-5)
    for heads, num_heads in (("whole", 2), ("dims", 4)):
        model = timm.create_model("beit_base_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                                  embed_dim=64, num_heads=4, num_classes=10).eval()
        if heads == "dims":  # each bias holds the same positions of every head
            dims = ppf.DependencyGraph(model, X).group_of(model.blocks[0].attn.qkv)
            assert dims.channels == 16 and sorted(m.offset for m in dims.members if m.name.endswith("q_bias")) == [
                0, 16, 32, 48]
        ppf.prune(model, X, ratio=0.5, prune_embedding=True, heads=heads)
        attn = model.blocks[0].attn
        assert attn.num_heads == num_heads and attn.q_bias.shape == attn.k_bias.shape == (32,)
        assert model(X).shape == (2, 10)


class ScaledBias(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.out(F.linear(x, self.fc.weight, self.fc.bias * 2))


def test_a_bias_computed_otherwise_locks_its_layer():
    g = ppf.DependencyGraph(ScaledBias(), torch.randn(3, 4))
    assert "the bias of fc is computed in forward" in g.group_of(g.model.fc).reason


def test_sdpa_keeps_the_dense_models_scale(tmp_path):
    """timm's fused attention calls F.scaled_dot_product_attention without `scale` (1/sqrt(head_dim)): pruned
    head dims would change it, and the fused path would no longer match the unfused one (`self.scale`). The
    call gets `scale=` with the dense model's value, so head-dim groups are exact; saved and loaded too."""
    def vit():
        torch.manual_seed(0)
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                                 num_classes=10).eval()

    model = vit()
    g = ppf.DependencyGraph(model, X)
    dims = [grp for grp in g.groups if "dims of each of 3 heads" in grp.origin]
    assert dims and all(grp.prunable and grp.inexact is None for grp in dims)
    assert any(r[3] == ("scale", 64 ** -0.5) for r in dims[0].rewrites)
    assert dead_channel_check(model, X, g) == "ok"
    ppf.prune(model, X, ratio=0.5)
    assert model.blocks[0].attn.head_dim == 32
    fused = model(X)
    for block in model.blocks:
        block.attn.fused_attn = False
    torch.testing.assert_close(model(X), fused)
    for block in model.blocks:
        block.attn.fused_attn = True
    ppf.save_pruned(model, tmp_path / "vit.pt")
    torch.testing.assert_close(ppf.load_pruned(vit, tmp_path / "vit.pt")(X), fused)
