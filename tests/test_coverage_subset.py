"""pyprune_fast.testing.check_coverage (what benchmarks/coverage.py runs) on a representative subset of
torchvision classifiers: the graph builds, dead channels are removed exactly, and a 30% L1 prune keeps the
output shape and finite values."""

import pytest
import torch
from torch import nn

from pyprune_fast.testing import check_coverage

# Small inputs where the model allows; vit/swin run at 224 (fixed sizes).
MODELS = [
    ("resnet18", 64),
    ("vgg11_bn", 64),
    ("mobilenet_v2", 64),
    ("mobilenet_v3_small", 64),
    ("efficientnet_b0", 64),
    ("densenet121", 64),
    ("regnet_x_400mf", 64),
    ("convnext_tiny", 64),
    ("vit_b_16", 224),
    ("swin_t", 224),
]


@pytest.mark.parametrize("name,size", MODELS, ids=[m for m, _ in MODELS])
def test_coverage(name, size, tv_model):
    torch.manual_seed(0)
    row = check_coverage(tv_model(name).eval(), torch.randn(1, 3, size, size), 0.3)
    assert row.ok, f"{name}: {row.reason}"
    assert row.prunable_groups > 0
    assert row.macs_after < row.macs_before
    assert row.dead_check == "ok" or row.dead_check.startswith("skipped"), row.dead_check


class Broken(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


def test_a_failure_is_reported_not_raised():
    row = check_coverage(Broken(), torch.randn(1, 3, 8, 8))
    assert not row.ok and row.reason == "forward: RuntimeError: boom" and row.groups == 0 and row.seconds > 0


@pytest.mark.parametrize("model, ratio, error", [(nn.Linear(3, 4), 1.0, ValueError), (nn.Linear(3, 4), True, ValueError),
                                                 ("resnet18", 0.3, TypeError)])
def test_bad_arguments_raise_before_anything(model, ratio, error):
    state = {k: v.clone() for k, v in model.state_dict().items()} if isinstance(model, nn.Module) else {}
    with pytest.raises(error, match="check_coverage: (ratio must be a number in \\[0, 1\\)|model must be a torch.nn.Module)"):
        check_coverage(model, torch.randn(2, 3), ratio)
    if state:
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
