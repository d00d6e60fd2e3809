"""FPGM (He et al., "Filter pruning via geometric median", 2019): the filters closest to all the others
are the most replaceable."""

from __future__ import annotations

import torch

from .. import ops
from .base import Scored, check_finite, producer_rows

__all__ = ["FPGM"]


class FPGM(Scored):
    """Score of a channel: the sum of Euclidean distances from its filter to the group's other filters
    (the filters of a residual group laid side by side). The lowest sums, nearest the geometric
    median, go. All groups' distance matrices come from one batched `ops.pairwise_distance` call."""

    name = "fpgm"

    def score(self) -> list[torch.Tensor]:
        rows = [producer_rows(self.tensors, g) for g in self.groups]
        for g, r in zip(self.groups, rows):  # the distance op clamps, so NaN would not reach the scores
            check_finite(self.tensors, g, r)
        return [d.sum(1).float().cpu() for d in ops.pairwise_distance(rows, "euclidean")]
