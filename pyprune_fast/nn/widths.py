"""What the engine knows about a module type: the pruned class it becomes and the heads it holds."""

from __future__ import annotations

import sys
from typing import Optional

from torch import nn

__all__ = ["pruned_class", "heads_held"]


def pruned_class(module: nn.Module) -> Optional[type]:
    """For torchvision's Swin window attention (V1 or V2; exactly those classes, or ours already), the
    subclass that runs with pruned heads; None for any other module."""
    if "torchvision.models.swin_transformer" not in sys.modules:
        return None  # no model can hold one
    from .swin import PRUNED  # imports torchvision, already loaded

    return PRUNED.get(type(module))


def heads_held(module: nn.Module) -> int:
    """The number of heads a Swin window attention module's parameters hold (V2: logit_scale,
    V1: the columns of the relative position bias table)."""
    scale = getattr(module, "logit_scale", None)
    return scale.shape[0] if scale is not None else module.relative_position_bias_table.shape[1]
