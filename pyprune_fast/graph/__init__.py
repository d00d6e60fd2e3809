"""The channel-dependency graph: which parameters share which channel index space.

`DependencyGraph(model, example_inputs)` records one forward pass (see `record.py`), follows the
channel dim of every activation through the recorded ops (see `rules/`) and returns the *groups*:
sets of (parameter or buffer, dim, index mapping) that must be cut together. A residual add joins
the spaces of its branches into one group; a concat lays several groups side by side along one dim;
a flatten into a Linear makes each channel a block of columns.

Tracing records the ops the forward really executes, so Python control flow (data-dependent
branches, loops) is followed as it ran for `example_inputs`. `torch.fx` symbolic tracing is not
used: it cannot follow such control flow and gains nothing once every executed op is recorded.

The package: `ir.py` (Value, Node, Trace), `record.py` (the recorder; `meta.py`: shortcuts on meta
tensors, `unchanged.py`: the model put back, `one_op.py`: module types recorded as one op, `tensors.py`:
tensors by name), `rules/` (one rule per op, registered by kind; `register_rule`), `taxonomy.py` (op
kinds, shared with flops and relevance), `spaces.py` (channel spaces), `analyses.py`, `dependency.py`
(DependencyGraph, Group), `channels.py` (questions about a group's channels). Code outside the graph
imports only the names below.
"""

from . import taxonomy
from .analyses import batchnorm_after
from .channels import dead_channels_are_exact, kill_channels, positions
from .dependency import DependencyGraph, Group, check_heads, uncompiled
from .ir import Node, Trace, Value, leaves, map_tensors, op_name
from .record import failed_op, has_hooks, model_inputs, output_shapes, output_trace, record
from .rules import NORM_PARAMS, Context, register_rule
from .spaces import Member, Role
from .taxonomy import SIZE_READS
from .tensors import Modules, child, first_change, module_of, named_tensors, shapes_of, tensor_slots
from .unchanged import Unchanged

__all__ = ["NORM_PARAMS", "SIZE_READS", "Context", "DependencyGraph", "Group", "Member", "Modules", "Node", "Role",
           "Trace", "Unchanged", "Value", "batchnorm_after", "check_heads", "child", "dead_channels_are_exact",
           "failed_op", "first_change", "has_hooks", "kill_channels", "leaves", "map_tensors", "model_inputs",
           "module_of", "named_tensors", "op_name", "output_shapes", "output_trace", "positions", "record",
           "register_rule", "shapes_of", "taxonomy", "tensor_slots", "uncompiled"]
