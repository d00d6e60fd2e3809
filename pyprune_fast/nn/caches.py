"""Module attributes that cache what was computed for the last input's shape.

ultralytics' Detect heads remake their anchors when `self.shape != shape` (the first feature map's B, C, H,
W), so that comparison reads a channel count only to refresh a cache. While a pass is recorded these
attributes are None (`cleared`; `graph.Unchanged` puts them back), so the check compares nothing and the
channels stay prunable; a pruned model simply refreshes the cache on its next call.

LeViT (timm, Hugging Face) keeps its attention biases, indexed for the input's size, in a dict of tensors
by device (`attention_bias_cache`) in eval mode: apply empties such caches of the modules it prunes
(`tensor_caches`), or a pruned model would read the unpruned biases.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

__all__ = ["CACHES", "cleared", "tensor_caches"]

# (package, class name) -> attributes cached from the last input's shape; subclasses included
CACHES = {("ultralytics", "Detect"): ("shape",), ("ultralytics", "RTDETRDecoder"): ("shapes",)}


def cleared(modules: Iterable[tuple[str, nn.Module]]) -> None:
    """Set every cache attribute of `modules` (CACHES) to None."""
    for _, m in modules:
        for cls in type(m).__mro__:
            for attr in CACHES.get((cls.__module__.partition(".")[0], cls.__name__), ()):
                if attr in vars(m):
                    vars(m)[attr] = None


def tensor_caches(module: nn.Module) -> list[str]:
    """The attributes of `module` that cache tensors computed from its parameters: non-empty dicts of tensors
    whose name says cache."""
    return [name for name, value in vars(module).items() if "cache" in name.lower() and isinstance(value, dict)
            and value and all(isinstance(v, torch.Tensor) for v in value.values())]
