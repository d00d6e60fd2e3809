import copy

import pytest
import torch
from torch import nn
from torchvision.models import VisionTransformer

import pyprune_fast as ppf
from pyprune_fast.attention import PrunedMultiheadAttention
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
