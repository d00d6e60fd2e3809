"""Network slimming (Liu et al., 2017): a channel matters as much as its BatchNorm scale |gamma|."""

from __future__ import annotations

import torch
from torch import nn

from ..graph import module_of
from .base import Scored, channel_view, check_producers_finite, member_tensors, producer_rows

__all__ = ["BNScale"]


class BNScale(Scored):
    """|gamma| summed over the group's BatchNorms (a residual group has one per branch). A group
    without a BatchNorm (a Linear's hidden units, say) is scored by the L2 norm of its filters."""

    name = "bn_scale"

    def score(self) -> list[torch.Tensor]:
        out = []
        for g in self.groups:
            check_producers_finite(self.tensors, g)
            gammas = [channel_view(t, m, g.channels).reshape(g.channels, -1).abs().sum(1).float()
                      for m, t in member_tensors(self.tensors, g, "producer")
                      if m.name.endswith(".weight") and isinstance(self.graph.model.get_submodule(module_of(m.name)), nn.modules.batchnorm._BatchNorm)]
            out.append(sum(gammas) if gammas else producer_rows(self.tensors, g).norm(dim=1))
        return out
