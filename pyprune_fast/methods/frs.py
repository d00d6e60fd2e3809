"""FRS (Aketi et al., 2020): a channel matters as much as its feature relevance score, the LRP relevance
of the true class at its layer's output, class-weighted and normalised per layer (see relevance.py)."""

from __future__ import annotations

import itertools
from typing import Iterable, Optional

import torch

from ..allocation import Limits
from .relevance import relevance_scores
from .base import Scored

__all__ = ["FRS"]


class FRS(Scored):
    """Scores from `batches` batches (all when None) of `data`, an iterable of (inputs, int labels) such
    as a DataLoader, run through the graph's model in eval mode on its device."""

    name = "frs"
    options = {"data": None, "batches": None}

    def __init__(self, graph, groups, limits=Limits(), seed=0, data: Optional[Iterable] = None,
                 batches: Optional[int] = None):
        if data is None:
            raise ValueError("prune: method 'frs' needs data: an iterable of (inputs, labels) batches")
        if batches is not None and (not isinstance(batches, int) or batches < 1):
            raise ValueError(f"prune: batches must be a positive int or None, got {batches!r}")
        self.data, self.batches = data, batches
        super().__init__(graph, groups, limits, seed)

    def score(self) -> list[torch.Tensor]:
        batches = itertools.islice(self.data, self.batches) if self.batches else self.data
        return relevance_scores(self.graph.model, self.graph, self.groups, batches)
