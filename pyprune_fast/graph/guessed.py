"""A meta pass through a detector's post-processing: ops whose output size depends on the data (`nonzero`,
`where(cond)`, `masked_select`, a boolean mask index, torchvision's `nms`) made with a guessed count of
elements (GUESS: a count of boxes, on no channel dim), and a few library functions that read values as ints
throughout run as stand-ins of their shapes. A pass that guessed (`Trace.guessed`) is no check of output
shapes: the run check after apply then runs for real (`run_check`)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .ir import op_name

__all__ = ["GUESS", "guessed_output", "postprocessing_on_meta"]

GUESS = 11  # elements an op whose output size depends on the data keeps, in a meta pass (rarely a width)


def _meta(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_meta


def _key_without_masks(key):
    """A getitem key with every boolean mask (meta) as the long index tensors it stands for; None where it
    holds no mask."""
    parts = key if isinstance(key, tuple) else (key,)
    if not any(_meta(k) and k.dtype == torch.bool for k in parts):
        return None
    out = []
    for k in parts:
        if _meta(k) and k.dtype == torch.bool:
            out.extend(torch.empty(GUESS, dtype=torch.long, device="meta") for _ in range(k.dim()))
        else:
            out.append(k)
    return tuple(out) if isinstance(key, tuple) or len(out) > 1 else out[0]


def guessed_output(func: Callable, args: tuple, kwargs: dict) -> Optional[object]:
    """func's output on meta inputs where its size depends on the data (a guessed count, GUESS); None for
    any other op."""
    if not args or not _meta(args[0]):
        return None
    name, x = op_name(func), args[0]
    if name in ("nonzero", "argwhere") and not kwargs.get("as_tuple", False):
        return x.new_empty((GUESS, x.dim()), dtype=torch.long)
    if name == "nonzero" or (name == "where" and len(args) == 1 and not kwargs):
        return tuple(x.new_empty(GUESS, dtype=torch.long) for _ in range(x.dim()))
    if name == "masked_select":
        return x.new_empty(GUESS)
    if name == "nms":
        return x.new_empty(GUESS, dtype=torch.long)
    if name == "__getitem__" and len(args) == 2 and (key := _key_without_masks(args[1])) is not None:
        return func(x, key)
    return None


def _pasted_masks(masks: torch.Tensor, boxes, img_shape, padding: int = 1) -> torch.Tensor:
    """torchvision's `paste_masks_in_image` (each box's mask pasted into the image, reading its corners as
    ints), shapes only: (boxes, 1, *img_shape), dim 1 the masks' own."""
    return F.interpolate(masks, size=tuple(img_shape))


def _keypoints(maps: torch.Tensor, rois) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's `heatmaps_to_keypoints` (each box's heatmaps resized to it, reading its size as ints),
    shapes only: keypoints (boxes, K, 3) and their scores (boxes, K), K the heatmaps' channels."""
    scores = maps.amax(dim=(2, 3))
    return scores.unsqueeze(-1).expand(-1, -1, 3), scores


# Post-processing functions of model libraries that read values (as ints) throughout, run in a meta pass as
# stand-ins of the same output shapes made by ops that carry the same channels: (module, name) -> stand-in.
_SHAPES_ONLY = {("torchvision.models.detection.transform", "paste_masks_in_image"): _pasted_masks,
                ("torchvision.models.detection.roi_heads", "heatmaps_to_keypoints"): _keypoints}


@contextmanager
def postprocessing_on_meta():
    """The functions of _SHAPES_ONLY (of the libraries imported) as their stand-ins, and back."""
    swapped = [(module, name, getattr(module, name)) for (path, name) in _SHAPES_ONLY
               if (module := sys.modules.get(path)) is not None and hasattr(module, name)]
    try:
        for module, name, _ in swapped:
            setattr(module, name, _SHAPES_ONLY[(module.__name__, name)])
        yield
    finally:
        for module, name, original in swapped:
            setattr(module, name, original)
