"""Random scores: the baseline every criterion must beat."""

from __future__ import annotations

import torch

from .base import Scored, check_finite, member_tensors

__all__ = ["Random"]


class Random(Scored):
    """Uniform random scores, reproducible for a `seed`. The weights are still checked for NaN and Inf."""

    name = "random"

    def score(self) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        out = []
        for g in self.groups:
            for _, t in member_tensors(self.tensors, g, "producer"):
                check_finite(self.tensors, g, t.sum())
            out.append(torch.rand(g.channels, generator=gen))
        return out
