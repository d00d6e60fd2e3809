"""ultralytics YOLO (random weights, from the YAMLs) prunes, runs in eval and train mode, trains (loss and
backward), and reloads both ways (save_pruned/load_pruned, ultralytics' own checkpoint); `keep_outputs` says
which outputs keep their shape (YOLO returns its neck feature maps next to its detections)."""

import pytest
import torch
from torch import nn

import pyprune_fast as ppf
from pyprune_fast.graph import DependencyGraph
from pyprune_fast.graph.ir import leaf_paths

tasks = pytest.importorskip("ultralytics.nn.tasks")

SIZE = 128
MODELS = {
    "yolov8n": (tasks.DetectionModel, "yolov8n.yaml"),
    "yolov8n-seg": (tasks.SegmentationModel, "yolov8n-seg.yaml"),
    "yolov8n-pose": (tasks.PoseModel, "yolov8n-pose.yaml"),
    "yolov8n-cls": (tasks.ClassificationModel, "yolov8n-cls.yaml"),
    "yolo11n": (tasks.DetectionModel, "yolo11n.yaml"),
}


def detections(path: tuple) -> bool:
    """YOLO's eval output is (predictions, raw head outputs): keep the predictions' shape only."""
    return path[0] == 0


def build(name: str) -> nn.Module:
    cls, yaml = MODELS[name]
    return cls(yaml, verbose=False)


def image(batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE)


def shapes(out) -> dict[tuple, tuple]:
    """{path: shape} of every tensor in a model's output."""
    return {p: tuple(t.shape) for p, t in leaf_paths(out) if isinstance(t, torch.Tensor)}


def only(shapes_: dict[tuple, tuple], keep) -> dict[tuple, tuple]:
    """The {path: shape} items whose path `keep` keeps."""
    return {p: s for p, s in shapes_.items() if keep(p)}


@torch.no_grad()
def run(model: nn.Module, x: torch.Tensor):
    return model.eval()(x)


def pruned(name: str, keep=detections) -> tuple[nn.Module, ppf.PruneReport]:
    model = build(name).eval()
    return model, ppf.prune(model, image(), ratio=0.3, keep_outputs=keep)


def random_batch(n_images: int = 2, nc: int = 80) -> dict:
    """A detection batch as ultralytics' loss takes it: per box its image (in order, as its collate sorts
    them), class and xywh (normalised)."""
    boxes = 5
    return {"img": image(n_images), "batch_idx": (torch.arange(boxes) * n_images // boxes).float(),
            "cls": torch.randint(0, nc, (boxes, 1)).float(), "bboxes": torch.rand(boxes, 4) * 0.4 + 0.3}


@pytest.mark.parametrize("name", MODELS)
def test_every_task_prunes_and_runs_in_eval_and_train_mode(name):
    model = build(name)
    x = image(2)
    before_eval, before_train = shapes(run(model, x)), shapes(model.train()(x))
    report = ppf.prune(model.eval(), image(), ratio=0.3, keep_outputs=detections)
    assert report.macs_after < report.macs_before
    after_eval = shapes(run(model, x))
    assert after_eval.keys() == before_eval.keys()
    assert only(after_eval, detections) == only(before_eval, detections)
    after_train = shapes(model.train()(x))

    def head(path):  # the head's outputs in train mode (the classifier's logits: path ()); the loss reads them
        return path == () or path[0] in {"boxes", "scores", "kpts", "mask_coefficient", "proto"}

    assert only(after_train, head) == only(before_train, head)
    if name != "yolov8n-cls":  # the neck's feature maps were pruned
        feats = [p for p in before_eval if "feats" in p]
        assert all(after_eval[p][1] < before_eval[p][1] for p in feats)


def test_head_widths_stay_fixed():
    """The class scores are the predictions' channels; the box distribution (4 x reg_max, DFL) is read by a view
    sized from reg_max: neither is prunable, even when only the predictions keep their shape."""
    model = build("yolov8n")
    graph = DependencyGraph(model, image(), keep_outputs=detections)
    head = model.model[-1]
    for branch, reason in ((head.cv2, "reg_max"), (head.cv3, "the model's output")):
        group = graph.group_of(branch[0][2])
        assert not group.prunable and reason in group.reason
    model, _ = pruned("yolov8n")
    head = model.model[-1]
    assert [b[2].out_channels for b in head.cv2] == [4 * head.reg_max] * 3 and head.dfl.conv.in_channels == head.reg_max
    assert [b[2].out_channels for b in head.cv3] == [head.nc] * 3


def test_pruned_detector_trains():
    from ultralytics.cfg import get_cfg

    model, _ = pruned("yolov8n")
    model.args = get_cfg()  # the loss reads its gains (box, cls, dfl) there
    model.train()
    loss, items = model.loss(random_batch())
    assert loss.shape == (3,) and torch.isfinite(loss).all() and set(items) == {"box_loss", "cls_loss", "dfl_loss"}
    loss.sum().backward()
    params = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None and p.grad.shape == p.shape for p in params)
    assert torch.optim.SGD(params, lr=0.01).step() is None


def test_save_pruned_load_pruned(tmp_path):
    model, _ = pruned("yolov8n")
    ppf.save_pruned(model, tmp_path / "pruned.pt")
    loaded = ppf.load_pruned(lambda: build("yolov8n"), tmp_path / "pruned.pt")
    x = image()
    for (p, a), (q, b) in zip(leaf_paths(run(model, x)), leaf_paths(run(loaded, x))):
        assert p == q and torch.equal(a, b), p


def test_ultralytics_checkpoint(tmp_path):
    """ultralytics' loaders take a checkpoint that is a dict with the pickled module under "model"."""
    from ultralytics import YOLO

    model, _ = pruned("yolov8n")
    path = tmp_path / "pruned.pt"  # ultralytics insists on the suffix
    torch.save({"model": model}, path)
    x = image()
    want = run(model, x)[0]
    loaded, _ = tasks.load_checkpoint(path)
    assert torch.allclose(run(loaded, x)[0], want, atol=1e-5)
    yolo = YOLO(path)
    assert yolo.task == "detect" and torch.allclose(run(yolo.model, x)[0], want, atol=1e-5)
    (result,) = yolo.predict(torch.rand(1, 3, SIZE, SIZE), imgsz=SIZE, verbose=False)  # ultralytics fuses conv + bn
    assert result.boxes is not None


def test_keeping_only_the_detections_cuts_more():
    model = build("yolov8n")
    graph = DependencyGraph(model, image())
    assert graph.trace.output_paths == [(0,), (1, "boxes"), (1, "scores"), (1, "feats", 0), (1, "feats", 1),
                                        (1, "feats", 2)]
    assert graph.kept_outputs == tuple(range(6))
    assert DependencyGraph(model, image(), keep_outputs=detections).kept_outputs == (0,)
    assert DependencyGraph(model, image(), keep_outputs=[0, -1, 5]).kept_outputs == (0, 5)
    model_all, everything = pruned("yolov8n", keep="all")
    x = image()
    assert shapes(run(model_all, x)) == shapes(run(build("yolov8n"), x))
    _, only = pruned("yolov8n", keep=[0])
    cut = [1 - r.macs_after / r.macs_before for r in (everything, only)]
    assert 0 < cut[0] < cut[1]


class TwoOutputs(nn.Module):
    """Logits and the feature map they were computed from, as (logits, {"feats": map})."""

    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        feats = self.body(x).relu()
        return self.head(feats).mean((2, 3)), {"feats": feats}


@pytest.mark.parametrize("hooked", [False, True])  # a forward hook: recorded and checked on a real pass
def test_outputs_not_kept_change_their_channels_only(hooked):
    model, x = TwoOutputs(), torch.randn(2, 3, 6, 6)
    if hooked:
        model.body.register_forward_hook(lambda m, i, o: None)
    assert not DependencyGraph(model, x).group_of(model.body).prunable
    ppf.prune(model, x, ratio=0.5, keep_outputs=[0])
    logits, rest = run(model, x)
    assert logits.shape == (2, 4) and rest["feats"].shape == (2, 4, 6, 6)


@pytest.mark.parametrize("keep, error, words", [
    ("some", ValueError, "'all'"),
    (0, TypeError, "got int"),
    ([0, 1.0], TypeError, "output numbers (int), got 1.0"),
    ([True], TypeError, "got True"),
    ([2], ValueError, "returns 2 tensors (numbered 0 to 1), got 2"),
    ([-3], ValueError, "got -3"),
    ([], ValueError, "keeps none"),
    (lambda path: False, ValueError, "keeps none of the model's 2 output tensors (paths [(0,), (1, 'feats')])"),
    (lambda path: path, TypeError, "must return True or False, got (0,)"),
])
def test_bad_keep_outputs(keep, error, words):
    model, x = TwoOutputs(), torch.randn(1, 3, 6, 6)
    weight = model.body.weight.clone()
    with pytest.raises(error, match="keep_outputs") as e:
        DependencyGraph(model, x, keep_outputs=keep)
    assert words in str(e.value)
    with pytest.raises(error, match="keep_outputs"):
        ppf.prune(model, x, ratio=0.5, keep_outputs=keep)
    assert torch.equal(model.body.weight, weight)


def test_the_anchor_cache_check_locks_nothing():
    """Detect remakes its anchors when `self.shape != shape` (the first feature map's B, C, H, W): a cache the
    graph clears while it records (and puts back), so no group is locked for comparing that channel count."""
    model = build("yolov8n").eval()
    run(model, image())  # fills the cache: Detect.shape is the last input's feature shape
    cached = model.model[-1].shape
    graph = DependencyGraph(model, image(), keep_outputs=detections)
    assert cached is not None and model.model[-1].shape is cached
    assert not any("compares a channel count" in (g.reason or "") for g in graph.groups)
    pruned_model, _ = pruned("yolov8n")
    assert only(shapes(run(pruned_model, image())), detections) == only(shapes(run(build("yolov8n"), image())), detections)
