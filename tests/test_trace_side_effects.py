"""Building a DependencyGraph changes nothing of the model: tensors (identity and value), plain tensor
attributes, every module's own training flag, hook dicts, grad mode; user hooks never see meta tensors."""

import pytest
import torch
import torchvision
from torch import nn

from pyprune_fast.graph import DependencyGraph

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks")


def _tensor_attrs(m: nn.Module):
    """(key, tensor) for every plain tensor attribute of m, also inside a list, tuple or dict attribute."""
    for k, v in vars(m).items():
        if k in ("_parameters", "_buffers"):
            continue
        if isinstance(v, torch.Tensor):
            yield k, v
        elif isinstance(v, (list, tuple)):
            yield from ((f"{k}[{i}]", t) for i, t in enumerate(v) if isinstance(t, torch.Tensor))
        elif isinstance(v, dict):
            yield from ((f"{k}[{i!r}]", t) for i, t in v.items() if isinstance(t, torch.Tensor))


def snapshot(model: nn.Module) -> dict:
    """Everything tracing must leave as it was, by (module name, what)."""
    state = {"grad mode": torch.is_grad_enabled()}
    for name, m in model.named_modules():
        tensors = list(m._parameters.items()) + list(m._buffers.items()) + list(_tensor_attrs(m))
        for k, t in tensors:
            state[(name, k)] = None if t is None else (id(t), t.device, t.detach().clone())
        state[(name, "training")] = m.training
        for k in HOOK_DICTS:
            d = getattr(m, k)
            state[(name, k)] = (id(d), [(h, id(f)) for h, f in d.items()])
        state[(name, "attributes")] = sorted(vars(m))
    return state


def assert_unchanged(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for key, b in before.items():
        a = after[key]
        if isinstance(b, tuple) and len(b) == 3 and isinstance(b[2], torch.Tensor):
            assert a[:2] == b[:2], f"{key}: now {a[1]} id {a[0]}, was {b[1]} id {b[0]}"
            assert torch.equal(a[2], b[2]), f"{key}: value changed"
        else:
            assert a == b, f"{key}: now {a}, was {b}"


def check_graph_changes_nothing(model: nn.Module, x, grad_modes=(True, False)) -> DependencyGraph:
    for grad in grad_modes:
        with torch.set_grad_enabled(grad):
            before = snapshot(model)
            graph = DependencyGraph(model, x)
            assert_unchanged(before, snapshot(model))
    return graph


def _small_vit():
    return torchvision.models.VisionTransformer(32, 8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                                                num_classes=10)


def _images():
    return ([torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(0))],)


# keyword arguments of the torchvision models by name ("vit" is _small_vit)
CLASSIFIERS = {"resnet18": {"num_classes": 10}, "mobilenet_v3_small": {"num_classes": 10}, "vit": None}
SEGMENTATION = {name: {"weights_backbone": None, "num_classes": 3}
                for name in ("deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large", "fcn_resnet50")}
DETECTION = {  # small images, no resizing up, every box kept (random weights score low)
    "fasterrcnn_mobilenet_v3_large_320_fpn": {"weights_backbone": None, "num_classes": 3, "min_size": 64,
                                              "max_size": 96, "box_score_thresh": 0.0},
    "fcos_resnet50_fpn": {"weights_backbone": None, "num_classes": 3, "min_size": 64, "max_size": 96,
                          "score_thresh": 0.0, "topk_candidates": 8, "detections_per_img": 8},
}


@pytest.mark.parametrize("name, train", [(n, t) for n in CLASSIFIERS for t in (False, True)]
                         + [(n, n.startswith("deeplab")) for n in SEGMENTATION])
def test_classification_and_segmentation(name, train, tv_model):
    torch.manual_seed(0)
    model = _small_vit() if name == "vit" else tv_model(name, **{**CLASSIFIERS, **SEGMENTATION}[name])
    model.train(train)
    check_graph_changes_nothing(model, torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize("name", list(DETECTION))
def test_detection_still_runs(name, tv_model):
    """Tracing used to leave AnchorGenerator's cell_anchors on the meta device ("Cannot copy out of meta tensor")."""
    torch.manual_seed(0)
    model = tv_model(name, **DETECTION[name]).eval()
    x = _images()
    with torch.no_grad():
        expected = model(*x)
    graph = check_graph_changes_nothing(model, x, grad_modes=(True,))
    assert graph.prunable_groups
    with torch.no_grad():
        got = model(*x)
    assert len(expected[0]["boxes"]) > 0  # score threshold 0: boxes to compare
    for e, g in zip(expected, got):
        assert e.keys() == g.keys()
        for k in e:
            assert torch.equal(e[k], g[k]), k


def test_own_training_flags_kept(tv_model):
    """A frozen BatchNorm in a training model stays in eval; MC dropout in an eval model stays in train."""
    model = tv_model("resnet18", num_classes=10).train()
    model.layer1[0].bn1.eval()
    check_graph_changes_nothing(model, torch.randn(2, 3, 32, 32))
    assert not model.layer1[0].bn1.training and model.layer1[0].bn2.training and model.training

    model = tv_model("mobilenet_v3_small", num_classes=10).eval()
    dropout = model.classifier[2]
    assert isinstance(dropout, nn.Dropout)
    dropout.train()
    check_graph_changes_nothing(model, torch.randn(2, 3, 32, 32))
    assert dropout.training and not model.training and not model.classifier.training


class _Cache(nn.Module):
    """Plain tensor attributes that forward reassigns, changes in place or adds, as detection code does."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.conv2 = nn.Conv2d(8, 4, 1)
        self.scale = torch.ones(1)
        self.anchors = [torch.arange(4.0), torch.zeros(2)]
        self.table = {"offset": torch.zeros(8)}
        self.calls = torch.zeros((), dtype=torch.long)

    def forward(self, x):
        self.scale = self.scale.to(x.device)
        self.anchors = [a.to(x.device) for a in self.anchors]
        self.table["offset"] = self.table["offset"].to(x.device)
        self.calls += 1
        self.last_shape = x.shape
        y = self.conv(x) * self.scale + self.table["offset"].view(1, -1, 1, 1)
        return self.conv2(y) + self.anchors[0].view(1, -1, 1, 1)


def test_plain_tensor_attributes_restored():
    model = _Cache()
    x = torch.randn(1, 3, 8, 8)
    check_graph_changes_nothing(model, x)
    assert int(model.calls) == 0 and not hasattr(model, "last_shape")
    assert not any(t.is_meta for t in [model.scale, *model.anchors, model.table["offset"]])
    model(x)  # runs on real tensors
    assert int(model.calls) == 1


def test_hooks_never_see_meta_tensors(tv_model):
    """Hooks run only in a real pass (once, on the example inputs), never on meta tensors; the hook
    dicts and global hooks are as they were, and the graph is that of the model with its hooks."""
    model = tv_model("resnet18", num_classes=10)
    seen = []

    def pre_hook(m, args):
        seen.append(("pre", args[0].device.type))

    def hook(m, args, out):
        seen.append(("post", out.device.type))

    handles = [model.layer1.register_forward_pre_hook(pre_hook), model.fc.register_forward_hook(hook)]
    handles.append(nn.modules.module.register_module_forward_hook(
        lambda m, args, out: seen.append(("global", out.device.type)) if m is model.conv1 else None))
    try:
        from torch.nn.modules import module as mod

        global_before = (dict(mod._global_forward_hooks), dict(mod._global_forward_pre_hooks))
        graph = check_graph_changes_nothing(model, torch.randn(1, 3, 32, 32))
        assert (dict(mod._global_forward_hooks), dict(mod._global_forward_pre_hooks)) == global_before
    finally:
        for h in handles:
            h.remove()
    assert "meta" not in {d for _, d in seen}
    assert sorted(seen) == sorted([("pre", "cpu"), ("post", "cpu"), ("global", "cpu")] * 2)  # one pass per graph
    assert not graph.trace.meta
    assert DependencyGraph(model, torch.randn(1, 3, 32, 32)).trace.meta  # without hooks, on meta again
