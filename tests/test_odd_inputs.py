"""Odd models and allocations get a working prune or a clear error, with nothing modified: no prunable
group, float64 models, torch.inference_mode(), torch.compile'd models."""

import pytest
import torch
from torch import nn

import pyprune_fast as ppf
from pyprune_fast.graph import DependencyGraph
from pyprune_fast.methods import METHODS
from nets import TinyResNet

ALLOCATIONS = [{"ratio": 0.5}, {"global_ratio": 0.5}, {"target_flops": 1.0}]


def state(model: nn.Module) -> dict:
    """Every tensor of the state dict: (id, value), to check that nothing changed."""
    return {k: (id(v), v.detach().clone()) for k, v in model.state_dict(keep_vars=True).items()}


def assert_same_state(before: dict, model: nn.Module) -> None:
    after = state(model)
    assert before.keys() == after.keys()
    for k, (i, v) in before.items():
        assert after[k][0] == i and torch.equal(after[k][1], v), k


def nothing_prunable():
    """Every channel group is the model's output or a single channel."""
    return nn.Sequential(nn.Conv2d(3, 1, 3), nn.ReLU(), nn.Flatten(), nn.Linear(36, 4))


def _allocations(method, allocations=ALLOCATIONS):
    return [a for a in allocations if next(iter(a)) in METHODS[method].allocations]


@pytest.mark.parametrize("method", list(METHODS))
def test_no_prunable_group(method):
    """ratio, global_ratio and target_flops=1 prune nothing and say so; target_flops < 1 is refused."""
    model, x = nothing_prunable(), torch.randn(1, 3, 8, 8)
    before = state(model)
    for alloc in _allocations(method):
        report = ppf.prune(model, x, method, progress=False, **alloc)
        assert report.prunable_groups == 0 and report.widths == [], alloc
        assert report.macs_after == report.macs_before and "no prunable group" in report.allocation
        assert_same_state(before, model)
    with pytest.raises(ValueError, match="target_flops=0.5 cannot be reached: none of the model's 2 channel groups"):
        ppf.prune(model, x, method, target_flops=0.5, progress=False)
    assert_same_state(before, model)


def test_no_prunable_group_because_all_are_ignored():
    model = TinyResNet()
    x = torch.randn(1, 1, 8, 8)
    ignored = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    before = state(model)
    assert ppf.prune(model, x, "cup", threshold=0.1, ignored_layers=ignored, progress=False).prunable_groups == 0
    with pytest.raises(ValueError, match="none of the model's .* channel groups is prunable"):
        ppf.prune(model, x, "l1", target_flops=0.9, ignored_layers=ignored, progress=False)
    assert_same_state(before, model)


@pytest.mark.parametrize("method", list(METHODS))
def test_float64_model(method, tv_model):
    torch.manual_seed(0)
    model = tv_model("resnet18", num_classes=10).double().eval()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    report = ppf.prune(model, x, method, ratio=0.3, ignored_layers=[model.fc], progress=False)
    assert report.macs_after < 0.6 * report.macs_before
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    out = model(x)
    assert out.dtype == torch.float64 and out.shape == (1, 10) and bool(torch.isfinite(out).all())


def test_inference_mode_is_refused_before_anything():
    model = TinyResNet()
    x = torch.randn(2, 1, 8, 8)
    before = state(model)
    with torch.inference_mode():
        for call in (lambda: ppf.prune(model, x, "l1", ratio=0.5, progress=False),
                     lambda: ppf.decide(model, x, "l1", ratio=0.5, progress=False)):
            with pytest.raises(ValueError, match=r"call (prune|decide) outside torch.inference_mode\(\)"):
                call()
    assert_same_state(before, model)
    decision = ppf.decide(model, x, "l1", ratio=0.5, progress=False)
    with torch.inference_mode(), pytest.raises(ValueError, match=r"call commit outside torch.inference_mode\(\)"):
        ppf.commit(decision, x)
    assert_same_state(before, model)
    ppf.commit(decision, x)  # outside: prunes, and the model trains
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_compiled_model_prunes_the_module_it_wraps():
    """The compiled wrapper is unwrapped (its _orig_mod is pruned) and still runs afterwards, recompiled."""
    torch.manual_seed(0)
    model = TinyResNet().eval()
    compiled = torch.compile(model, backend="eager")  # dynamo's wrapper, without code generation (fast)
    x = torch.randn(2, 1, 8, 8)
    compiled(x)
    assert DependencyGraph(compiled, x).model is model
    report = ppf.prune(compiled, x, "l1", ratio=0.5, progress=False)
    assert report.params_after < report.params_before
    assert model.stem[0].out_channels == 8
    with torch.no_grad():
        assert torch.equal(compiled(x), model(x))


@pytest.mark.parametrize("method", list(METHODS))
def test_allocations_that_cut_nothing_change_nothing(method):
    model, x = TinyResNet(), torch.randn(1, 1, 8, 8)
    before = state(model)
    for alloc in _allocations(method, [{"ratio": 0.0}, {"global_ratio": 0.0}, {"target_flops": 1.0}]):
        report = ppf.prune(model, x, method, progress=False, **alloc)
        assert report.macs_after == report.macs_before and report.prunable_groups > 0, alloc
        assert_same_state(before, model)
