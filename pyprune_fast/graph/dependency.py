"""`DependencyGraph`: the channel groups of a model, from one recorded forward pass and the rules."""

from __future__ import annotations

import numbers
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import torch
from torch import nn

from .rules import Context, propagate
from .spaces import Member, join_shared
from .record import model_inputs, record
from .tensors import child, first_change, named_tensors, shapes_of

__all__ = ["HEADS", "DependencyGraph", "Group", "KeepOutputs", "check_heads", "uncompiled"]

KeepOutputs = Union[str, Callable[[tuple], bool], Sequence[int]]  # "all", a predicate on paths, leaf numbers


def uncompiled(model: nn.Module) -> nn.Module:
    """The module a `torch.compile`d model wraps (its `_orig_mod`), or `model` itself. Pruning changes that
    module in place; the compiled wrapper still runs it (recompiling for the new shapes)."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")  # loaded by anything that compiled
    return model._orig_mod if eval_frame is not None and isinstance(model, eval_frame.OptimizedModule) else model


HEADS = ("dims", "whole")


def check_heads(heads: Any, where: str = "DependencyGraph") -> None:
    """ValueError unless `heads` is a way to prune attention heads (see DependencyGraph)."""
    if not isinstance(heads, str) or heads not in HEADS:
        raise ValueError(f"{where}: heads must be 'dims' or 'whole', got {heads!r}")


def _check_keep(keep: Any) -> None:
    """TypeError or ValueError unless `keep` is a keep_outputs value (see DependencyGraph)."""
    if isinstance(keep, str):
        if keep != "all":
            raise ValueError(f"keep_outputs must be 'all', a list of output numbers or a predicate on output paths, "
                             f"got {keep!r}")
    elif isinstance(keep, (list, tuple)):
        bad = next((k for k in keep if not isinstance(k, numbers.Integral) or isinstance(k, bool)), None)
        if bad is not None:
            raise TypeError(f"keep_outputs: a list holds output numbers (int), got {bad!r}")
    elif not callable(keep):
        raise TypeError(f"keep_outputs must be 'all', a list of output numbers or a predicate on output paths, got "
                        f"{type(keep).__name__}")


def _kept(keep: KeepOutputs, paths: list[tuple]) -> tuple[int, ...]:
    """The numbers of the outputs (of paths `paths`) that `keep` keeps; ValueError where it keeps none or
    names one the model does not return."""
    n = len(paths)
    if isinstance(keep, str):
        return tuple(range(n))
    if callable(keep):
        chosen = [keep(p) for p in paths]
        bad = next((c for c in chosen if not isinstance(c, bool)), None)
        if bad is not None:
            raise TypeError(f"keep_outputs: the predicate must return True or False, got {bad!r}")
        kept = tuple(i for i, c in enumerate(chosen) if c)
    else:
        bad = next((k for k in keep if not -n <= k < n), None)
        if bad is not None:
            raise ValueError(f"keep_outputs: the model returns {n} tensors (numbered 0 to {n - 1}), got {bad}")
        kept = tuple(sorted({int(k) % n for k in keep}))
    if not kept:
        raise ValueError(f"keep_outputs keeps none of the model's {n} output tensors (paths {paths}); keep at least "
                         "one")
    return kept


def _channels(trace, ignored: set[str], kept: tuple[int, ...], whole_heads: Optional[frozenset]) -> Context:
    """The rules run over `trace`: every value's channel labels and the spaces, shared weights joined.
    `whole_heads`: the views whose heads are pruned whole (None: every one; see `recut.split_heads`)."""
    ctx = Context(trace, ignored, whole_heads)
    propagate(ctx, kept)
    join_shared(ctx.spaces, ctx.fixed)
    return ctx


@dataclass(frozen=True, eq=False)
class Group:
    """One channel index space: `channels` channels, held by `members` (parameter or buffer, dim,
    offset, block, role). `reason` says why it cannot be pruned, or is None when it can; `inexact` says
    which op would see the removal of dead channels (channels that are exactly zero), or is None when
    removing them leaves every output unchanged; `reduced` says which op reads the channels other than
    through weights (a sum or norm over them), so that merging identical channels by adding their
    weights (channel addition) would change outputs, or is None.

    `divisions`: an op reads the channels in this many equal contiguous divisions that must stay equal (a
    grouped conv's groups, a GroupNorm's groups; the lcm where several do), so pruning removes as many
    channels from each division and `groups`/`num_groups` stay as they are. `uniform`: it also removes the
    same local positions from every division (a grouped conv reads its input by position within a group).

    `sizes`: (module, attribute, block) for each int attribute of the model's code that sizes these channels
    (timm's `attn.num_heads`, block 1; `attn.attn_dim`, block head_dim): surgery sets it to the channels
    kept times block. `rewrites`: (module, method, call position, size index) for each view/reshape of the
    model's code whose size there surgery rewrites to -1 when these channels are cut, or (..., (keyword,
    value)) for a call given that argument (sdpa's default scale; `nn.rewritten`)."""

    index: int
    channels: int
    members: tuple[Member, ...]
    modules: tuple[str, ...]
    origin: str
    reason: Optional[str]
    inexact: Optional[str] = None
    reduced: Optional[str] = None
    divisions: int = 1
    uniform: bool = False
    sizes: tuple[tuple[str, str, int], ...] = ()
    rewrites: tuple[tuple[str, str, tuple, Any], ...] = ()

    @property
    def merges_exactly(self) -> bool:
        """Whether channels made identical can be merged into one (their consumers' weights added) without
        changing outputs: no op mixes them, none counts them."""
        return self.inexact is None and self.reduced is None

    @property
    def prunable(self) -> bool:
        return self.reason is None

    def __repr__(self) -> str:
        state = "prunable" if self.prunable else f"not prunable: {self.reason}"
        if self.prunable and self.divisions > 1:
            state += f" in {self.divisions} equal divisions" + (", the same positions in each" if self.uniform else "")
        return f"Group({self.index}: {self.channels} channels of {self.origin}, {len(self.members)} members, {state})"


class DependencyGraph:
    """Channel groups of `model`, found by running it once on `example_inputs` (in eval mode, no grad).
    The model is left as it was: tensors, attributes, every module's `training` flag, hooks, grad mode;
    forward hooks never see meta tensors (see `record.record`).

    `options` keeps prune_embedding, heads and keep_outputs as given, to build the same kind of graph again.

    Args:
        model: any nn.Module; for a `torch.compile`d model, the module it wraps (see `uncompiled`).
        example_inputs: a tensor, a tuple or list of positional inputs, or a dict of keyword inputs
            (`{"pixel_values": x}`), on the model's device (see `record.model_inputs`); TypeError for others.
        ignored_layers: modules whose output channels must not be pruned (the classifier, say).
        meta: record the forward pass on meta tensors (shapes only; falls back to a real pass when the
            model needs real values). meta=False always runs it for real.
        prune_embedding: let the embedding width of a transformer (the width its attention heads are read
            from: patch embedding, class and position embeddings, every LayerNorm, projections and MLPs of
            the residual stream) be pruned; a big change to a model, so it is locked by default.
        heads: how attention heads made by a view (timm, Hugging Face) are pruned: "dims" (default) cuts
            head dims, the same positions in every head, so each head gets narrower and their count stays,
            and prunes whole heads only where something reads the head dims whole (a rotary embedding);
            "whole" prunes whole heads wherever it can (fewer, full-width heads).
        keep_outputs: the tensors the model returns that must keep their shape (their channels are locked; the
            run check after pruning compares them); the others may change their channel count (the neck
            feature maps YOLO returns next to its detections). "all" (default); a list of numbers, counting
            the tensors the model returns in `graph.ir.leaves` order (depth first, tuples and lists by position,
            dicts by insertion order; negative from the end): `[0]` keeps only the first; or a predicate on
            each tensor's path, the tuple of indices and keys that reaches it (`lambda path: path[0] == 0`
            keeps everything in `out[0]`). `trace.output_paths` lists the paths. Keeping none is a ValueError.
    """

    def __init__(self, model: nn.Module, example_inputs: Any, ignored_layers: Iterable[nn.Module] = (), *,
                 meta: bool = True, prune_embedding: bool = False, heads: str = "dims",
                 keep_outputs: KeepOutputs = "all"):
        if not isinstance(model, nn.Module):
            raise TypeError(f"DependencyGraph: model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(prune_embedding, bool):
            raise TypeError(f"DependencyGraph: prune_embedding must be True or False, got {prune_embedding!r}")
        check_heads(heads)
        _check_keep(keep_outputs)
        model = uncompiled(model)
        model_inputs(example_inputs)  # a TypeError for inputs of the wrong kind, not a failed run
        names = {m: n for n, m in model.named_modules()}
        ignored = set()
        for m in ignored_layers:
            if m not in names:
                raise ValueError(f"DependencyGraph: ignored_layers holds a {type(m).__name__} that is not part of the model")
            ignored.add(names[m])
        try:
            trace = record(model, example_inputs, meta=meta)
        except Exception as e:
            raise ValueError(f"DependencyGraph: running the model on example_inputs failed: {type(e).__name__}: {e}") from e
        self.kept_outputs = _kept(keep_outputs, trace.output_paths)  # numbers into trace.outputs
        ctx = _channels(trace, ignored, self.kept_outputs, None if heads == "whole" else frozenset())
        whole = frozenset(node for node, space in ctx.head_dims.items() if space.root().locked is not None)
        if whole:  # head dims something reads whole (a rotary embedding): those heads are pruned whole instead
            ctx = _channels(trace, ignored, self.kept_outputs, whole)

        self.model = model
        self.options = {"prune_embedding": prune_embedding, "heads": heads, "keep_outputs": keep_outputs}  # to rebuild
        self.trace = trace
        self.example_inputs = example_inputs  # what apply's run check runs the pruned model on
        # per output of the trace, the dims that hold channels (locked where kept): what a run check reads
        self.output_channel_dims = [frozenset(ctx.of(v).dims) for v in trace.outputs]
        self._groups_follow = frozenset(ctx.groups_follow)
        self.shapes = trace.shapes
        sizes: dict = {}  # root -> the attributes that size its channels (spaces may have joined since)
        for space, attributes in ctx.sizes.items():
            sizes.setdefault(space.root(), []).extend(attributes)
        rewrites: dict = {}  # root -> the calls to rewrite when its channels are cut
        for node, j, labels in ctx.rewrites:
            for root in dict.fromkeys(seg.space.root() for label in labels for seg in label):
                rewrites.setdefault(root, []).append((node.site.module, node.site.method, node.site.positions, j))
        if not prune_embedding:
            for space, heads in ctx.embeddings.items():
                space.lock(f"it is the embedding width of a transformer ({heads}): prune_embedding=True prunes it")
        roots = []
        for s in ctx.spaces:
            r = s.root()
            if r not in roots and r not in ctx.replaced:
                roots.append(r)
        self.groups: list[Group] = []
        for r in roots:
            members = tuple(dict.fromkeys(r.members))
            reason = r.locked
            if reason is None and not any(m.role == "producer" for m in members):
                reason = "no parameter produces these channels"
            if reason is None and r.size < 2:
                reason = "it has a single channel"
            self.groups.append(Group(len(self.groups), r.size, members, tuple(sorted(r.modules)), r.origin, reason,
                                     r.inexact, r.reduced, r.divisions, r.uniform, tuple(sizes.get(r, ())),
                                     tuple(dict.fromkeys(rewrites.get(r, ())))))
        self.stale = False

    def groups_follow_channels(self, module: str) -> bool:
        """Whether module `module`'s groups follow its channel count (a depthwise conv, a GroupNorm with one
        channel a group): pruning its channels prunes its groups too."""
        return module in self._groups_follow

    @property
    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def group_of(self, module: nn.Module) -> Group:
        """The group holding `module`'s output channels (the dim of its weight that makes them: 0, or 1 for a
        transposed conv or Hugging Face's Conv1D)."""
        name = next((n for n, m in self.model.named_modules() if m is module), None)
        if name is None:
            raise ValueError(f"group_of: the {type(module).__name__} is not part of the model")
        weight = child(name, "weight")
        for g in self.groups:
            if any(m.name == weight and m.role == "producer" for m in g.members):
                return g
        raise ValueError(f"group_of: no group holds the output channels of {name} ({type(module).__name__})")

    def check_current(self) -> dict[str, torch.Tensor]:
        """The model's tensors by name; ValueError if their shapes changed since the graph was built."""
        if self.stale:
            raise ValueError("this DependencyGraph was used by apply() already; build a new one for the pruned model")
        tensors = named_tensors(self.model)
        changed = first_change(shapes_of(tensors), self.shapes)
        if changed is not None:
            raise ValueError(f"the model changed since the DependencyGraph was built ({changed}); build a new one")
        return tensors

    def summary(self) -> str:
        lines = [f"{len(self.groups)} groups, {len(self.prunable_groups)} prunable"]
        for g in self.groups:
            lines.append(f"  {g!r}")
        return "\n".join(lines)
