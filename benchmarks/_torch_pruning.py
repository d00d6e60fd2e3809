"""Torch-Pruning (1.6.1) run the way bench_prune.py times it: pruner init, importance + ranking, group pruning."""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Optional

import torch
from torch import nn

from _harness import sync


def _pruner(model: nn.Module, x: torch.Tensor, ratio: float, classifier: str, vit: bool, recipe: bool):
    import torch_pruning as tp

    ignored = [model.get_submodule(classifier)]
    kwargs = {}
    if vit:
        if recipe:  # Torch-Pruning's torchvision-ViT recipe: embedding dim too, in multiples of num_heads.
            # Not num_heads={attention: 12}: with it, TP 1.6.1 treats the embedding-dim group of
            # nn.MultiheadAttention as an attention group, finds no downstream root and skips it.
            kwargs = dict(round_to=model.encoder.layers[0].num_heads)
        else:  # same scope as ours: the embedding-dim group holds conv_proj, so ignoring it locks that group
            ignored.append(model.conv_proj)
    return tp.pruner.MagnitudePruner(
        model, example_inputs=x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ratio,
        ignored_layers=ignored, global_pruning=False, **kwargs)


def run_tp(model: nn.Module, x: torch.Tensor, device: str, *, ratio: float, classifier: str, vit: bool,
           recipe: bool = False, around_step: Optional[Callable] = None) -> dict[str, float]:
    """Prune `model` in place with Torch-Pruning's MagnitudePruner (L1, `ratio` of every group, the
    `classifier` submodule ignored); `around_step()` is a context entered around the step. Phase seconds."""
    t0 = time.perf_counter()
    pruner = _pruner(model, x, ratio, classifier, vit, recipe)
    sync(device)
    t1 = time.perf_counter()
    with around_step() if around_step else contextlib.nullcontext():
        groups = pruner.step(interactive=True)  # what pruner.step() runs, split to time its two halves
        first = next(groups, None)
        sync(device)
        t2 = time.perf_counter()
        if first is not None:
            first.prune()
            for grp in groups:
                grp.prune()
        if vit:  # torchvision's ViT reads hidden_dim in forward
            model.hidden_dim = model.conv_proj.out_channels
        sync(device)
    t3 = time.perf_counter()
    return {"graph": t1 - t0, "scores": t2 - t1, "apply": t3 - t2}
