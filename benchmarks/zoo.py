"""The model zoos users bring, as (name, builder) lists: builder() -> (model in eval mode, example inputs).

Random weights, torch.manual_seed(0) before building and before drawing the inputs, offline (configs and
YAML files only), small inputs where the model allows. Example inputs follow the library's convention: a
tensor, a tuple of positional inputs, or a dict of keyword inputs (Hugging Face models: {"pixel_values": x}).

  torchvision  every torchvision classifier (vit/swin/maxvit at 224, inception_v3 at 299 by default)
  timm         the smallest model (by parameter count) of every timm family (a module of timm.list_modules())
  hf           every transformers image-classification architecture, from its default config
  dense        torchvision detection, segmentation, video and optical-flow models; HF SegFormer, UperNet, DPT
  yolo         ultralytics YOLOv8 and YOLO11, n and s, tasks detect/segment/pose/classify/obb
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable

import torch
from torch import nn

Builder = Callable[[], tuple[nn.Module, Any]]
Entry = tuple[str, Builder]

DEFAULT_SIZE = 224
FIXED_224 = ("vit_", "swin_", "maxvit_")
DETECTION_SIZE = 160  # torchvision detectors resize to min_size/max_size: both set to this where the model takes them
SEGMENTATION_SIZE = 128
YOLO_SIZE = 160


def _built(model: nn.Module, make_inputs: Callable[[], Any]) -> tuple[nn.Module, Any]:
    """`model` in eval mode and its inputs, drawn after torch.manual_seed(0)."""
    model.eval()
    torch.manual_seed(0)
    return model, make_inputs()


def _image(size: int, channels: int = 3) -> Callable[[], torch.Tensor]:
    return lambda: torch.randn(1, channels, size, size)


# --------------------------------------------------------------------------------------------------
# torchvision classifiers


def torchvision_input_size(name: str, size: int = DEFAULT_SIZE) -> int:
    """The input side to use for classifier `name` when asked for `size`."""
    if name.startswith(FIXED_224):
        return 224
    if name == "inception_v3":
        return 299 if size == DEFAULT_SIZE else max(size, 75)
    return size


def _torchvision_classifier(name: str, size: int) -> tuple[nn.Module, Any]:
    import torchvision

    kwargs: dict[str, Any] = {"weights": None}
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=False)
    torch.manual_seed(0)
    return _built(torchvision.models.get_model(name, **kwargs), _image(size))


def torchvision_models(size: int = DEFAULT_SIZE) -> list[Entry]:
    """Every torchvision image classifier, at `size` (see `torchvision_input_size`)."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    return [(n, functools.partial(_torchvision_classifier, n, torchvision_input_size(n, size))) for n in names]


# --------------------------------------------------------------------------------------------------
# timm


@functools.lru_cache(maxsize=None)
def _timm_param_count(name: str) -> float:
    """Parameters of timm's `name`, counted on the meta device (inf when it does not build there)."""
    import timm

    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
    except Exception:
        return float("inf")
    return float(sum(p.numel() for p in model.parameters()))


def timm_smallest(family: str) -> str:
    """The timm model of module `family` with the fewest parameters (ties: the first name)."""
    import timm

    names = timm.list_models(module=family)
    if not names:
        raise ValueError(f"timm_smallest: timm has no model in module {family!r}")
    return min(names, key=_timm_param_count)


def _timm_model(name: str) -> tuple[nn.Module, Any]:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False)
    return _built(model, lambda: torch.randn(1, *model.pretrained_cfg["input_size"]))


def timm_models() -> list[Entry]:
    """The smallest model of every timm family, at its pretrained_cfg input size."""
    import timm

    return [(name, functools.partial(_timm_model, name)) for name in map(timm_smallest, timm.list_modules())]


# --------------------------------------------------------------------------------------------------
# Hugging Face transformers


def _config_image_size(config) -> int:
    """The image side of a transformers config (its vision_config's where it has one), 224 when unset."""
    size = getattr(config, "image_size", None)
    if size is None and getattr(config, "vision_config", None) is not None:
        return _config_image_size(config.vision_config)
    if isinstance(size, (list, tuple)):
        size = size[0]
    if isinstance(size, dict):
        size = size.get("height", DEFAULT_SIZE)
    return int(size or DEFAULT_SIZE)


def _config_channels(config) -> int:
    sub = getattr(config, "vision_config", None)
    return int(getattr(config, "num_channels", None) or (getattr(sub, "num_channels", 3) if sub is not None else 3))


def hf_inputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """`x` as the keyword input a transformers model takes first (pixel_values; Perceiver's inputs, ImageGPT's
    input_ids)."""
    return {next(iter(inspect.signature(model.forward).parameters)): x}


def hf_pixel_model(model: nn.Module, size: int, channels: int = 3) -> tuple[nn.Module, Any]:
    """A transformers vision model and its example inputs: {"pixel_values": an image of `size`} (seed 0)."""
    return _built(model, lambda: hf_inputs(model, torch.randn(1, channels, size, size)))


# In the image-classification mapping but not a vision classifier to prune from a default config.
NOT_IMAGE_CLASSIFIERS = {"shieldgemma2": "a Gemma 3 language model that scores an image and a text policy"}


def _hf_classifier(model_type: str, class_names: str | tuple[str, ...]) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForImageClassification
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type in NOT_IMAGE_CLASSIFIERS:
        raise ValueError(f"{model_type}: {NOT_IMAGE_CLASSIFIERS[model_type]}")
    config = CONFIG_MAPPING[model_type]()
    # where the mapping names several classes (DeiT, LeViT, Perceiver), from_config picks by `architectures`
    config.architectures = [class_names] if isinstance(class_names, str) else list(class_names[:1])
    torch.manual_seed(0)
    model = AutoModelForImageClassification.from_config(config)
    if model_type == "imagegpt":  # its pixels are colour-cluster tokens
        return _built(model, lambda: hf_inputs(model, torch.randint(0, config.vocab_size - 1, (1, config.n_positions))))
    if model_type == "siglip2":  # NaFlex: patches flattened, with their mask and the grid they came from
        vision = config.vision_config
        n, side = vision.num_patches, math.isqrt(vision.num_patches)
        return _built(model, lambda: {"pixel_values": torch.randn(1, n, vision.num_channels * vision.patch_size ** 2),
                                      "pixel_attention_mask": torch.ones(1, n, dtype=torch.long),
                                      "spatial_shapes": torch.tensor([[side, side]])})
    return hf_pixel_model(model, _config_image_size(config), _config_channels(config))


def hf_models() -> list[Entry]:
    """Every transformers image-classification architecture, built from its default config."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    return [(f"hf_{t}", functools.partial(_hf_classifier, t, c)) for t, c in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.items()]


# --------------------------------------------------------------------------------------------------
# Dense prediction: torchvision detection / segmentation / video / optical flow, HF SegFormer, UperNet, DPT

# Detectors whose transform takes min_size/max_size (SSD's size is fixed by its builder).
RESIZABLE_DETECTORS = ("fasterrcnn", "maskrcnn", "keypointrcnn", "retinanet", "fcos")
VIDEO_INPUTS = {"mvit": (16, 224), "s3d": (16, 224), "swin3d": (8, 112)}  # (frames, side); others (8, 112)


def _tv(name: str, **kwargs) -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, **kwargs)


def _detector(name: str) -> tuple[nn.Module, Any]:
    side = DETECTION_SIZE
    kwargs = dict(min_size=side, max_size=side) if name.startswith(RESIZABLE_DETECTORS) else {}
    return _built(_tv(name, weights_backbone=None, **kwargs), lambda: ([torch.randn(3, side, side)],))


def _segmenter(name: str) -> tuple[nn.Module, Any]:
    return _built(_tv(name, weights_backbone=None), _image(SEGMENTATION_SIZE))


def _video(name: str) -> tuple[nn.Module, Any]:
    frames, side = next((v for k, v in VIDEO_INPUTS.items() if name.startswith(k)), (8, 112))
    return _built(_tv(name), lambda: torch.randn(1, 3, frames, side, side))


def _flow(name: str) -> tuple[nn.Module, Any]:
    return _built(_tv(name), lambda: (torch.randn(1, 3, 128, 128), torch.randn(1, 3, 128, 128)))


def _hf_dense(kind: str) -> tuple[nn.Module, Any]:
    import transformers as tf

    config_cls, model_cls = {"segformer": (tf.SegformerConfig, tf.SegformerForSemanticSegmentation),
                             "upernet": (tf.UperNetConfig, tf.UperNetForSemanticSegmentation),
                             "dpt": (tf.DPTConfig, tf.DPTForDepthEstimation)}[kind]
    config = config_cls()
    torch.manual_seed(0)
    model = model_cls(config)
    size = _config_image_size(config) if kind == "dpt" else SEGMENTATION_SIZE  # DPT's position embeddings
    return hf_pixel_model(model, size)


def dense_models() -> list[Entry]:
    """torchvision detection, segmentation, video and optical-flow models; HF SegFormer, UperNet and DPT."""
    import torchvision.models as tm

    builders = [(tm.detection, _detector), (tm.segmentation, _segmenter), (tm.video, _video), (tm.optical_flow, _flow)]
    entries = [(n, functools.partial(b, n)) for module, b in builders for n in tm.list_models(module=module)]
    return entries + [(f"hf_{k}", functools.partial(_hf_dense, k)) for k in ("segformer", "upernet", "dpt")]


# --------------------------------------------------------------------------------------------------
# ultralytics YOLO

YOLO_TASKS = {"detect": "", "segment": "-seg", "pose": "-pose", "classify": "-cls", "obb": "-obb"}


def yolo_model(version: str, scale: str, task: str, size: int = YOLO_SIZE) -> tuple[nn.Module, Any]:
    """ultralytics `version` ("yolov8", "yolo11") at `scale` ("n", "s", ...) for `task`, from its YAML."""
    from ultralytics.nn import tasks

    cls = {"detect": tasks.DetectionModel, "segment": tasks.SegmentationModel, "pose": tasks.PoseModel,
           "classify": tasks.ClassificationModel, "obb": tasks.OBBModel}[task]
    torch.manual_seed(0)
    model = cls(f"{version}{scale}{YOLO_TASKS[task]}.yaml", verbose=False)
    return _built(model, _image(size))


def yolo_models() -> list[Entry]:
    """YOLOv8 and YOLO11, n and s scale, every task."""
    return [(f"{v}{s}{suffix or '-det'}", functools.partial(yolo_model, v, s, task))
            for v in ("yolov8", "yolo11") for s in ("n", "s") for task, suffix in YOLO_TASKS.items()]


def yolo_predictions(path: tuple) -> bool:
    """ultralytics' eval output is (predictions, the head's raw outputs): the predictions keep their shape;
    the raw outputs' neck feature maps ("feats") are prunable, as a user who deploys the predictions wants."""
    return path[0] == 0


KEEP_OUTPUTS = {"yolo": yolo_predictions}  # per zoo, keep_outputs for `ppf.prune` (else "all")

ZOOS: dict[str, Callable[[], list[Entry]]] = {"torchvision": torchvision_models, "timm": timm_models, "hf": hf_models,
                                              "dense": dense_models, "yolo": yolo_models}


def zoo_models(zoo: str) -> list[Entry]:
    """The (name, builder) list of `zoo` (one of ZOOS)."""
    if zoo not in ZOOS:
        raise ValueError(f"zoo_models: unknown zoo {zoo!r}; expected one of {', '.join(ZOOS)}")
    return ZOOS[zoo]()
