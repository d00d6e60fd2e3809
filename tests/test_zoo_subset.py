"""check_coverage on a small subset of every zoo benchmarks/coverage.py runs (timm, Hugging Face transformers,
torchvision detection, ultralytics YOLO; torchvision classifiers are in test_coverage_subset.py), at small
inputs: the pruned model runs, every output keeps its shape (but for data-dependent box counts), the
dead-channel check passes or is skipped, and the MACs fall."""

import copy

import pytest
import timm
import torch
import torchvision
import transformers
from ultralytics.nn.tasks import ClassificationModel, DetectionModel

from pyprune_fast.testing import compare_shapes, check_coverage, lock_kind, output_leaves


def _timm(name, size, **kwargs):
    return lambda: (timm.create_model(name, pretrained=False, **kwargs), torch.randn(1, 3, size, size))


def _hf_resnet():
    config = transformers.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic",
                                       num_labels=10)
    return transformers.ResNetForImageClassification(config), {"pixel_values": torch.randn(1, 3, 32, 32)}


def _hf_vit():
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=128, num_labels=10)
    return transformers.ViTForImageClassification(config), {"pixel_values": torch.randn(1, 3, 32, 32)}


def _detector():
    model = torchvision.models.get_model("fasterrcnn_mobilenet_v3_large_320_fpn", weights=None, weights_backbone=None,
                                         min_size=128, max_size=128)
    return model, ([torch.randn(3, 128, 128)],)


def _yolo(yaml, size):
    return lambda: (DetectionModel(yaml, verbose=False) if "cls" not in yaml else ClassificationModel(yaml, verbose=False),
                    torch.randn(1, 3, size, size))


MODELS = {
    "timm_resnet18": _timm("resnet18", 64),
    "timm_convnext_atto": _timm("convnext_atto", 64),
    "timm_efficientnet_b0": _timm("efficientnet_b0", 64),
    "timm_vit_tiny": _timm("vit_tiny_patch16_224", 64, img_size=64),
    "timm_cait": _timm("cait_xxs24_224", 64, img_size=64, depth=2),  # class attention: q through an unsqueeze
    "timm_resnest14d": _timm("resnest14d", 64),  # split attention: a grouped conv's radix viewed as heads
    "timm_levit": _timm("levit_128s", 64, img_size=64),  # heads through Linear + BatchNorm, split into q, k, v
    "hf_resnet": _hf_resnet,
    "hf_vit": _hf_vit,
    "tv_fasterrcnn_mobilenet_320": _detector,
    "yolov8n": _yolo("yolov8n.yaml", 128),
    "yolov8n_cls": _yolo("yolov8n-cls.yaml", 64),
}


@pytest.mark.parametrize("name", MODELS)
def test_zoo_model(name):
    model, x = MODELS[name]()
    row = check_coverage(model.eval(), x, 0.3)
    assert row.runs_after_prune, f"{name}: {row.reason}"
    assert row.shapes.startswith("same"), f"{name}: {row.shapes}"
    assert row.dead_check == "ok" or row.dead_check.startswith("skipped"), f"{name}: {row.dead_check}"
    assert row.macs_after < row.macs_before and 0 < row.macs_cut < 1, f"{name}: {row.macs_before} -> {row.macs_after}"
    assert row.groups == row.prunable_groups + row.locked_groups and row.graph_seconds > 0


def test_detection_counts_are_data_dependent():
    det = [{"boxes": torch.zeros(5, 4), "labels": torch.zeros(5), "scores": torch.zeros(5), "masks": torch.zeros(5, 1, 8, 8)}]
    fewer = [{k: v[:2] for k, v in det[0].items()}]
    assert compare_shapes(list(output_leaves(det)), list(output_leaves(fewer))) == "same except data-dependent dims"
    wider = [{**fewer[0], "masks": torch.zeros(2, 1, 8, 9)}]
    assert compare_shapes(list(output_leaves(det)), list(output_leaves(wider))) == "differs: output[0]['masks'] (2, 1, 8, 9) != (5, 1, 8, 8)"


def test_every_output_shape_is_compared():
    out = (torch.zeros(1, 10), {"feats": [torch.zeros(1, 8, 4, 4)]})
    assert compare_shapes(list(output_leaves(out)), list(output_leaves(out))) == "same"
    narrower = (torch.zeros(1, 10), {"feats": [torch.zeros(1, 6, 4, 4)]})
    assert compare_shapes(list(output_leaves(out)), list(output_leaves(narrower))) == "differs: output[1]['feats'][0] (1, 6, 4, 4) != (1, 8, 4, 4)"
    assert compare_shapes(list(output_leaves(out)), list(output_leaves(out[:1]))).startswith("differs: output structure")
    assert compare_shapes(list(output_leaves(out)), list(output_leaves(narrower)), kept=[0]) == "same"
    flat = (torch.zeros(1, 10), {"feats": [torch.zeros(1, 96)]})
    assert compare_shapes(list(output_leaves(out)), list(output_leaves(flat)), kept=[0]).startswith("differs")


def test_yolo_with_the_predictions_kept_prunes_the_neck():
    """keep_outputs as a YOLO user sets it (the zoo's too): the neck feature maps next to the predictions
    in eval mode are pruned, and only the predictions keep their shape."""
    every, x = _yolo("yolov8n.yaml", 128)()
    predictions = copy.deepcopy(every)
    every = check_coverage(every.eval(), x, 0.3)
    row = check_coverage(predictions.eval(), x, 0.3, keep_outputs=lambda path: path[0] == 0)
    assert row.ok and row.shapes == "same" and row.dead_check == "ok", row.reason
    assert row.macs_cut > every.macs_cut + 0.02, (row.macs_cut, every.macs_cut)


@pytest.mark.parametrize("reason, kind", [
    ("layer4.0.conv2 is a grouped conv (groups=32): its channels go in whole groups",
     "<module> is a grouped conv: its channels go in whole groups"),
    ("the model's code compares this channel count (64 (dim 1 of a [1, 64, 20, 20] tensor) == 64)",
     "the model's code compares this channel count"),
    ("roi_align (no rule for this op; pass its module in ignored_layers or keep these channels)", "roi_align has no rule"),
    ("view from [1, 196, 768] to [1, 14, 14, 768] splits or mixes channels", "view from [..] to [..] splits or mixes channels"),
    ("max_pool2d (no rule for this op; pass its module in ignored_layers or keep these channels)", "max_pool2d has no rule"),
    ("backbone.body.layer1.0.bn1 is a GroupNorm with 32 groups: pruning would unbalance them",
     "<module> is a GroupNorm with N groups: pruning would unbalance them"),
])
def test_lock_kind_drops_names_and_numbers(reason, kind):
    assert lock_kind(reason) == kind
