import copy
import functools

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import VisionTransformer

import pyprune_fast as ppf
from pyprune_fast.nn.attention import PrunedMultiheadAttention
from pyprune_fast.nn.widths import pruned_class
from pyprune_fast.testing import kill_channels


def vit():
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128)
    nn.init.normal_(model.heads.head.weight)  # torchvision starts it at zero
    return model.eval()


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("masks", ["none", "padding", "bool2d", "float3d"])
def test_pruned_attention_computes_what_multihead_attention_does(batch_first, need_weights, masks):
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    ours = copy.deepcopy(reference)
    ours.__class__ = PrunedMultiheadAttention
    L, S, N = 5, 7, 3
    shape = (lambda n: (N, n, 16)) if batch_first else (lambda n: (n, N, 16))
    q, kv = torch.randn(shape(L)), torch.randn(shape(S))
    kwargs = {"need_weights": need_weights}
    if masks == "padding":
        kwargs["key_padding_mask"] = torch.rand(N, S) < 0.3
    elif masks == "bool2d":
        kwargs["attn_mask"] = torch.rand(L, S) < 0.3
    elif masks == "float3d":
        kwargs["attn_mask"] = torch.randn(N * 4, L, S)
    with torch.no_grad():
        want, want_w = reference(q, kv, kv, **kwargs)
        got, got_w = ours(q, kv, kv, **kwargs)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, equal_nan=True)
    if need_weights:
        torch.testing.assert_close(got_w, want_w, rtol=1e-4, atol=1e-5, equal_nan=True)


def test_unbatched_input():
    reference = nn.MultiheadAttention(8, 2).eval()
    ours = copy.deepcopy(reference)
    ours.__class__ = PrunedMultiheadAttention
    x = torch.randn(4, 8)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, x, x)[0], reference(x, x, x)[0], rtol=1e-4, atol=1e-5)


def test_dead_heads_are_removed_without_changing_outputs(tmp_path):
    model = vit()
    x = torch.randn(2, 3, 32, 32)
    g = ppf.DependencyGraph(model, x)
    heads = [grp for grp in g.prunable_groups if grp.origin.startswith("attention heads")]
    assert len(heads) == 2 and all(grp.channels == 4 for grp in heads)
    for grp in heads:
        kill_channels(g, grp, torch.tensor([0, 2]))
    with torch.no_grad():
        before = model(x)
    plan = ppf.Plan(g)
    for grp in heads:
        plan.remove(grp, [0, 2])
    ppf.apply(plan)
    attention = model.encoder.layers[0].self_attention
    assert isinstance(attention, PrunedMultiheadAttention) and attention.num_heads == 2
    assert attention.in_proj_weight.shape == (3 * 2 * 16, 64) and attention.out_proj.weight.shape == (64, 32)
    with torch.no_grad():
        after = model(x)
    assert ((after - before).abs().max() / before.abs().max()) < 1e-5
    ppf.save_pruned(model, tmp_path / "vit.pt")
    rebuilt = ppf.load_pruned(lambda: vit(), tmp_path / "vit.pt").eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), after)


SWIN = ["swin_t", "swin_v2_t"]


@functools.cache
def _pristine(name):
    torch.manual_seed(0)
    return getattr(torchvision.models, name)().eval()


def swin(name):
    return copy.deepcopy(_pristine(name))  # building one costs seconds


def window_heads(graph):
    return [grp for grp in graph.groups if grp.origin.startswith("window attention heads")]


@pytest.mark.parametrize("name", SWIN)
def test_swin_heads_form_one_group_per_attention(name):
    model = swin(name)
    g = ppf.DependencyGraph(model, torch.randn(1, 3, 64, 64))
    heads = window_heads(g)
    assert [grp.channels for grp in heads] == [3, 3, 6, 6] + [12] * 6 + [24, 24]
    assert all(grp.prunable for grp in heads)
    attn, hd = "features.1.0.attn", 32
    got = {(m.name, m.dim, m.offset, m.block, m.role) for m in heads[0].members}
    want = {(f"{attn}.qkv.{p}", 0, part * 96, hd, "producer") for p in ("weight", "bias") for part in range(3)}
    want.add((f"{attn}.proj.weight", 1, 0, hd, "consumer"))
    if name == "swin_t":
        want.add((f"{attn}.relative_position_bias_table", 1, 0, 1, "producer"))
    else:
        want |= {(f"{attn}.cpb_mlp.2.weight", 0, 0, 1, "producer"), (f"{attn}.logit_scale", 0, 0, 1, "producer")}
    assert got == want
    # the residual width is not part of any head group, and stays locked
    assert not any(m.name == f"{attn}.qkv.weight" and m.dim == 1 for grp in g.prunable_groups for m in grp.members)


@pytest.mark.parametrize("name", SWIN)
def test_pruned_swin_attention_computes_what_torchvision_does(name):
    model = swin(name)
    ours = copy.deepcopy(model)
    for m in ours.modules():
        if pruned_class(m) is not None:
            m.__class__ = pruned_class(m)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), model(x))


@pytest.mark.parametrize("name", SWIN)
def test_dead_swin_heads_are_removed_without_changing_outputs(name, tmp_path):
    model = swin(name)
    model.features[1][0].attn.qkv.weight.requires_grad_(False)
    x = torch.randn(2, 3, 64, 64)
    g = ppf.DependencyGraph(model, x)
    plan = ppf.Plan(g)
    for grp in window_heads(g):
        dead = torch.arange(0, grp.channels, 3)  # heads 0, 3, 6, ...
        kill_channels(g, grp, dead)
        plan.remove(grp, dead)
    with torch.no_grad():
        before = model(x)
    ppf.apply(plan)
    attn = model.features[1][0].attn
    assert type(attn).__name__ == "PrunedShiftedWindowAttention" + ("" if name == "swin_t" else "V2")
    assert attn.num_heads == 2 and model.features[7][1].attn.num_heads == 16
    assert attn.qkv.weight.shape == (3 * 2 * 32, 96) and attn.proj.weight.shape == (96, 2 * 32)
    assert (attn.qkv.out_features, attn.proj.in_features) == (192, 64)
    assert not attn.qkv.weight.requires_grad and attn.proj.weight.requires_grad
    if name == "swin_t":
        assert attn.relative_position_bias_table.shape == (169, 2)
    else:
        assert attn.logit_scale.shape == (2, 1, 1) and attn.cpb_mlp[2].weight.shape == (2, 512)
    with torch.no_grad():
        after = model(x)
    assert ((after - before).abs().max() / before.abs().max()) < 1e-5
    assert len(window_heads(ppf.DependencyGraph(model, x))) == 12  # a pruned model prunes again

    ppf.save_pruned(model, tmp_path / "swin.pt")
    rebuilt = ppf.load_pruned(lambda: swin(name), tmp_path / "swin.pt").eval()
    assert type(rebuilt.features[1][0].attn) is type(attn) and rebuilt.features[1][0].attn.num_heads == 2
    with torch.no_grad():
        assert torch.equal(rebuilt(x), after)


@pytest.mark.parametrize("name", SWIN)
def test_swin_plan_removing_nothing_is_bitwise_identity(name):
    model = swin(name)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    g = ppf.DependencyGraph(model, x)
    plan = ppf.Plan(g)
    for grp in window_heads(g):
        plan.remove(grp, [])
    ppf.apply(plan)
    assert all(type(m) is not pruned_class(m) for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(x), before)
