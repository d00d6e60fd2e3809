"""The channel-dependency graph: which parameters share which channel index space.

`DependencyGraph(model, example_inputs)` records one forward pass (see `trace.py`), follows the
channel dim of every activation through the recorded ops (see `rules.py`) and returns the *groups*:
sets of (parameter or buffer, dim, index mapping) that must be cut together. A residual add joins
the spaces of its branches into one group; a concat lays several groups side by side along one dim;
a flatten into a Linear makes each channel a block of columns.

Tracing records the ops the forward really executes, so Python control flow (data-dependent
branches, loops) is followed as it ran for `example_inputs`. `torch.fx` symbolic tracing is not
used: it cannot follow such control flow and gains nothing once every executed op is recorded.
"""

from .channels import dead_channels_are_exact, kill_channels, positions
from .dependency import DependencyGraph, Group, uncompiled
from .rules import NORM_PARAMS, child, module_of
from .spaces import Member
from .trace import (SIZE_READS, Modules, Node, Trace, Value, batchnorm_after, first_change, has_hooks, leaves,
                    map_tensors, named_tensors, op_name, record, shapes_of, tensor_slots)
from .trace import _Unchanged as Unchanged

__all__ = ["DependencyGraph", "Group", "Member", "Modules", "NORM_PARAMS", "Node", "SIZE_READS", "Trace", "Unchanged",
           "Value", "batchnorm_after", "child", "dead_channels_are_exact", "first_change", "has_hooks", "kill_channels",
           "leaves", "map_tensors", "module_of", "named_tensors", "op_name", "positions", "record", "shapes_of",
           "tensor_slots", "uncompiled"]
