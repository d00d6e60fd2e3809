"""A meta pass through post-processing whose sizes depend on the data (graph/guessed.py): the guessed ops
give what the real op gives on data with GUESS elements kept; a model that selects by value is recorded on meta
with `Trace.guessed` set, the same ops as a real pass, and pruned with its run check done for real."""

import pytest
import torch
import torchvision
from torch import nn

import pyprune_fast as ppf
from pyprune_fast.graph.guessed import GUESS, guessed_output
from pyprune_fast.graph.record import record


def _mask(shape, seed) -> torch.Tensor:
    """A boolean mask of `shape` with exactly GUESS elements set, at random places."""
    g = torch.Generator().manual_seed(seed)
    flat = torch.zeros(torch.Size(shape).numel(), dtype=torch.bool)
    flat[torch.randperm(flat.numel(), generator=g)[:GUESS]] = True
    return flat.reshape(shape)


_CASES = {  # x, mask(shape) -> (func, args, kwargs)
    "nonzero": lambda x, m: (torch.nonzero, (m(x.shape),), {}),
    "nonzero-as-tuple": lambda x, m: (torch.Tensor.nonzero, (m(x.shape),), {"as_tuple": True}),
    "argwhere": lambda x, m: (torch.argwhere, (m(x.shape),), {}),
    "where-one-arg": lambda x, m: (torch.where, (m(x.shape),), {}),
    "masked-select": lambda x, m: (torch.masked_select, (x, m(x.shape)), {}),
    "mask-index": lambda x, m: (torch.Tensor.__getitem__, (x, m(x.shape)), {}),
    "mask-index-after-a-dim": lambda x, m: (torch.Tensor.__getitem__, (x, (slice(None), m(x.shape[1:]))), {}),
    "mask-index-then-int": lambda x, m: (torch.Tensor.__getitem__, (x, (m(x.shape[:2]), 1)), {}),
}


@pytest.mark.parametrize("case", list(_CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_a_guessed_op_gives_what_the_real_one_gives_keeping_guess_elements(case, seed):
    x = torch.randn(4, 5, 6, generator=torch.Generator().manual_seed(seed))
    func, args, kwargs = _CASES[case](x, lambda shape: _mask(shape, seed))
    real = func(*args, **kwargs)
    meta = guessed_output(func, tuple(a.to("meta") if isinstance(a, torch.Tensor) else
                                      tuple(t.to("meta") if isinstance(t, torch.Tensor) else t for t in a)
                                      if isinstance(a, tuple) else a for a in args), kwargs)
    real, meta = (real, meta) if isinstance(real, tuple) else ((real,), (meta,))
    assert [(t.shape, t.dtype) for t in meta] == [(t.shape, t.dtype) for t in real]
    assert all(t.is_meta for t in meta)


def test_nms_on_meta_keeps_guess_boxes_and_other_ops_are_not_guessed():
    boxes = torch.rand(30, 4, device="meta")
    keep = guessed_output(torchvision.ops.nms, (boxes, torch.rand(30, device="meta"), 0.5), {})
    assert keep.shape == (GUESS,) and keep.dtype == torch.long
    x = torch.empty(4, 5, device="meta")
    assert guessed_output(torch.Tensor.__getitem__, (x, (slice(1, 3), 2)), {}) is None
    assert guessed_output(torch.where, (x > 0, x, x), {}) is None
    assert guessed_output(torch.nonzero, (torch.ones(3),), {}) is None  # a real tensor: runs


class Selects(nn.Module):
    """A toy detector: per-location scores, the locations above a threshold (`nonzero`), their features by
    a boolean mask, a head on them (a Linear whose input channels are the backbone's)."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
        self.score = nn.Conv2d(16, 1, 1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        f = self.backbone(x)
        keep = self.score(f)[:, 0] > 0
        where = keep.nonzero()
        picked = f.permute(0, 2, 3, 1)[keep]
        return self.head(picked), where


def test_a_model_selecting_by_value_is_recorded_on_meta_with_its_sizes_guessed():
    model, x = Selects().eval(), torch.randn(2, 3, 8, 8)
    trace, real = record(model, x), record(model, x, meta=False)
    assert trace.meta and trace.guessed and not real.guessed
    assert [n.name for n in trace.nodes] == [n.name for n in real.nodes]
    assert [v.shape for v in trace.outputs] == [(GUESS, 4), (GUESS, 3)]
    graph = ppf.DependencyGraph(model, x)
    assert graph.trace.guessed and graph.output_channel_dims[0] == frozenset({1})
    ppf.prune(model, x, "l1", ratio=0.5, progress=False)
    assert model.backbone[2].out_channels == 8 and model.head.in_features == 8
    assert model(x)[0].shape[1:] == (4,)


def test_torchvision_detectors_post_processing_runs_on_meta():
    """Mask and Keypoint R-CNN's post-processing (boxes by score, NMS, masks pasted, keypoints from heatmaps)
    runs on meta: no real pass (it took over 1 s for Mask R-CNN v2), the heads' class and keypoint channels
    kept as outputs, and the pruned models run."""
    from torchvision.models import detection

    for build in (detection.maskrcnn_resnet50_fpn, detection.keypointrcnn_resnet50_fpn):
        torch.manual_seed(0)
        model = build(weights=None, weights_backbone=None, num_classes=3, min_size=96, max_size=96).eval()
        images = [torch.rand(3, 96, 96)]
        trace = record(model, (images,))
        assert trace.meta and trace.guessed
        report = ppf.prune(model, (images,), "l1", ratio=0.3, progress=False)
        assert report.macs_after < report.macs_before
        with torch.no_grad():
            out = model(images)[0]
        if "masks" in out:
            assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 3
            assert out["masks"].shape[1:] == (1, 96, 96)
        else:
            assert model.roi_heads.keypoint_predictor.kps_score_lowres.out_channels == 17
            assert out["keypoints"].shape[1:] == (17, 3)


class MaskedFeatures(nn.Module):
    """Features picked by a boolean mask over some dims: the positions (channels follow) or the channels too."""

    def __init__(self, over_channels: bool):
        super().__init__()
        self.conv, self.fc, self.over_channels = nn.Conv2d(3, 8, 3), nn.Linear(8, 2), over_channels

    def forward(self, x):
        f = self.conv(x).permute(0, 2, 3, 1)
        if self.over_channels:
            return f[f > 0]
        return self.fc(f[f.sum(-1) > 0])


@pytest.mark.parametrize("over_channels", [False, True], ids=["positions", "channels-too"])
def test_a_boolean_mask_over_positions_keeps_the_channels_one_over_them_locks(over_channels):
    model, x = MaskedFeatures(over_channels).eval(), torch.randn(2, 3, 8, 8)
    for meta in (True, False):
        (group,) = [g for g in ppf.DependencyGraph(model, x, meta=meta).groups if g.origin.startswith("conv2d conv")]
        assert group.prunable is not over_channels
        assert over_channels == ("a boolean mask over the channel dim selects channels" in (group.reason or ""))


def test_a_detectors_boxes_are_compared_in_the_dead_channel_check():
    """Killed channels removed change no box: the dead-channel check compares a detector's outputs, whose
    sizes depend on the data, where they keep their size (every box kept here: score threshold 0)."""
    from torchvision.models import detection

    from pyprune_fast.testing import dead_channel_check, forward_leaves

    torch.manual_seed(0)
    model = detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=3,
                                                            box_score_thresh=0.0, min_size=96, max_size=96).eval()
    images = ([torch.rand(3, 96, 96)],)
    assert all(t.shape[0] > 0 for _, t, dd in forward_leaves(model, images) if dd)
    assert dead_channel_check(model, images, ppf.DependencyGraph(model, images, ignored_layers=[])) == "ok"
