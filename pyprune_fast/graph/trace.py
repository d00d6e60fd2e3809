"""Records the tensor operations one forward pass of a model executes.

The recorder is a `TorchFunctionMode`: it sees every torch function, `torch.nn.functional` call and
Tensor method the forward runs, in the order it runs them, so Python control flow is simply followed.
`F.conv2d`, `F.batch_norm`, `F.multi_head_attention_forward` and the like are recorded as single ops
(the mode is suspended while they run), with the parameters and buffers they read. torchvision's Swin
window attention modules run as their `pyprune_fast.swin` subclasses while recording (same arithmetic),
so that each is one op too (`window_attention.shifted_window_attention`).
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..nn.widths import pruned_class

__all__ = ["batchnorm_after", "Value", "Node", "Trace", "record"]


@dataclass(eq=False)
class Value:
    """One tensor seen during the pass. `param` names a parameter or buffer of the model it is."""

    shape: tuple[int, ...]
    producer: Optional["Node"] = None
    param: Optional[str] = None
    id: int = 0

    @property
    def ndim(self) -> int:
        return len(self.shape)


@dataclass(eq=False)
class Node:
    """One executed op: `func` with `args`/`kwargs` in which every tensor is replaced by its Value."""

    func: Callable
    args: tuple
    kwargs: dict
    outputs: list[Value]
    output_tree: Any  # the op's return value with Values in place of tensors
    id: int = 0

    @property
    def name(self) -> str:
        return op_name(self.func)

    def tensor_inputs(self) -> list[Value]:
        return [v for v in leaves((self.args, self.kwargs)) if isinstance(v, Value)]

    def arg(self, i: int, name: str, default=None):
        """The argument at position i, or passed by `name`."""
        return self.args[i] if len(self.args) > i else self.kwargs.get(name, default)


@dataclass
class Trace:
    nodes: list[Node]
    inputs: list[Value]
    outputs: list[Value]
    params: dict[str, Value] = field(default_factory=dict)  # parameter/buffer name -> its Value
    meta: bool = True  # recorded on meta tensors
    shapes: dict[str, tuple] = field(default_factory=dict)  # every parameter/buffer (read or not) -> its shape


# Leaves that are neither containers nor tensors: kept as they are, without a call per leaf.
_ATOMS = frozenset({int, float, bool, str, type(None), slice, torch.Size, torch.dtype, torch.device})


def map_tensors(fn: Callable, obj: Any) -> Any:
    """fn applied to every tensor in nested tuples, lists and dicts (the containers torch ops take)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        mapped = [fn(o) if isinstance(o, torch.Tensor) else o if type(o) in _ATOMS else map_tensors(fn, o) for o in obj]
        return type(obj)(*mapped) if hasattr(obj, "_fields") else type(obj)(mapped)  # namedtuples take fields
    if isinstance(obj, dict):
        return {k: v if type(v) in _ATOMS else map_tensors(fn, v) for k, v in obj.items()}
    return obj


def leaves(obj: Any) -> list:
    if isinstance(obj, (tuple, list)):
        return [leaf for o in obj for leaf in leaves(o)]
    if isinstance(obj, dict):
        return [leaf for v in obj.values() for leaf in leaves(v)]
    return [obj]


# F.multi_head_attention_forward's leading positional arguments.
_MHA_ARGS = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias",
             "bias_k", "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias")


def attention_args(args: tuple, kwargs: dict) -> dict:
    """The arguments of an F.multi_head_attention_forward call, by name."""
    return dict(zip(_MHA_ARGS, args), **kwargs)


# On meta tensors some ops' shape functions are slow Python decompositions; for these the recorder
# makes the output directly. Only ops whose output shape is plain (and that do not work in place).
_SAME_SHAPE = {F.batch_norm, F.instance_norm, F.layer_norm, F.group_norm, F.gelu}


def _params_fit(func: Callable, x: torch.Tensor, params: list) -> bool:
    """Whether a norm's parameters and statistics fit its input: the channels (dim 1), or for layer_norm
    the trailing dims."""
    if func is F.layer_norm:
        return all(tuple(p.shape) == tuple(x.shape[x.dim() - p.dim():]) for p in params)
    return all(x.dim() > 1 and p.numel() == x.shape[1] for p in params)


def _meta_output(func: Callable, args: tuple, kwargs: dict):
    """The output of func on meta inputs, made without running it; None where that is not plain."""
    if not args or not isinstance(args[0], torch.Tensor) or not args[0].is_meta:
        return None
    x = args[0]
    if func in _SAME_SHAPE:
        if not _params_fit(func, x, [a for a in (*args[1:], *kwargs.values()) if isinstance(a, torch.Tensor)]):
            return None  # a mismatch for the real kernel to report
        if not x.is_contiguous():
            return torch.empty_like(x)
        return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)  # empty_like is slow on meta
    if func is F.linear:
        w = args[1] if len(args) > 1 else kwargs["weight"]
        if x.dim() == 0 or w.dim() != 2 or x.shape[-1] != w.shape[1]:
            return None  # a mismatch for the real kernel to report
        return x.new_empty((*x.shape[:-1], w.shape[0]))
    if func in (torch.conv1d, torch.conv2d, torch.conv3d) and not kwargs and x.dim() == args[1].dim():
        w, spatial = args[1], x.dim() - 2
        stride, padding, dilation, groups = (list(args) + [None, 1, 0, 1, 1][len(args) - 2:])[3:7]
        if isinstance(padding, str) or x.shape[1] != w.shape[1] * groups:
            return None  # 'same' padding, or a mismatch for the real kernel to report
        stride, padding, dilation = ([a] * spatial if isinstance(a, int) else list(a) for a in (stride, padding, dilation))
        out = [(x.shape[2 + i] + 2 * padding[i] - dilation[i] * (w.shape[2 + i] - 1) - 1) // stride[i] + 1
               for i in range(spatial)]
        return x.new_empty((x.shape[0], w.shape[0], *out))
    if func is F.multi_head_attention_forward:
        given = attention_args(args, kwargs)
        if given.get("bias_k") is not None or given.get("add_zero_attn") or given.get("static_k") is not None:
            return None
        out = x.new_empty((*x.shape[:-1], given["out_proj_weight"].shape[0]))
        if not given.get("need_weights", True):
            return out, None
        L, S = x.shape[0], given["key"].shape[0]
        batch = () if x.dim() == 2 else (x.shape[1],)
        heads = () if given.get("average_attn_weights", True) else (given["num_heads"],)
        return out, x.new_empty((*batch, *heads, L, S))
    return None

# Calls that read sizes: recorded (with no outputs), since code may compute other shapes from them.
SIZE_READS = {"size", "shape", "numel"}


def op_name(func: Callable) -> str:
    """A short name for a recorded function: 'conv2d', 'add_', '__getitem__', 'T' for the `.T` property."""
    name = getattr(func, "__name__", "")
    if name == "__get__":  # a Tensor property such as .T or .data
        return getattr(getattr(func, "__self__", None), "__name__", name)
    return name or repr(func)


def batchnorm_after(trace: Trace) -> dict[str, Node]:
    """Weight name of every conv / Linear whose output only a BatchNorm reads (on the channel dim, not
    a model output) -> that batch_norm node: the pairs a BatchNorm can be folded into."""
    readers: dict[int, list[Node]] = {}
    for node in trace.nodes:
        if node.name not in SIZE_READS:
            for v in node.tensor_inputs():
                readers.setdefault(v.id, []).append(node)
    outputs = {v.id for v in trace.outputs}
    fold: dict[str, Node] = {}
    keep: set[str] = set()  # a weight used twice folds only if every use does
    for node in trace.nodes:
        if node.name not in ("conv1d", "conv2d", "conv3d", "linear") or len(node.args) < 2 \
                or getattr(node.args[1], "param", None) is None:
            continue
        out = node.outputs[0]
        r = readers.get(out.id, [])
        if len(r) == 1 and r[0].name == "batch_norm" and r[0].args[0] is out and out.id not in outputs \
                and (node.name != "linear" or out.ndim == 2):
            fold[node.args[1].param] = r[0]
        else:
            keep.add(node.args[1].param)
    return {w: bn for w, bn in fold.items() if w not in keep}


class _Recorder(TorchFunctionMode):
    def __init__(self, param_names: dict[int, str]):
        super().__init__()
        self.param_names = param_names
        self.values: dict[int, Value] = {}
        self.keep_alive: list[torch.Tensor] = []  # ids stay unique while we hold the tensors
        self.nodes: list[Node] = []
        self.params: dict[str, Value] = {}
        self._ids = itertools.count()

    def value_of(self, t: torch.Tensor) -> Value:
        v = self.values.get(id(t))
        if v is None:
            name = self.param_names.get(id(t))
            v = Value(tuple(t.shape), param=name, id=next(self._ids))
            self.values[id(t)] = v
            self.keep_alive.append(t)
            if name is not None:
                self.params[name] = v
        return v

    def new_value(self, t: torch.Tensor, node: Node) -> Value:
        v = Value(tuple(t.shape), producer=node, id=next(self._ids))
        self.values[id(t)] = v  # an in-place op makes the same tensor object a new value
        self.keep_alive.append(t)
        node.outputs.append(v)
        return v

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = _meta_output(func, args, kwargs)
        if out is None:
            out = func(*args, **kwargs)
        if (not isinstance(out, torch.Tensor) and not any(isinstance(o, torch.Tensor) for o in leaves(out))
                and op_name(func) not in SIZE_READS):
            return out
        node = Node(func, map_tensors(self.value_of, tuple(args)), map_tensors(self.value_of, kwargs), [], None,
                    id=len(self.nodes))
        node.output_tree = map_tensors(lambda t: self.new_value(t, node), out)
        self.nodes.append(node)
        return out


Modules = list[tuple[str, nn.Module]]  # (qualified name, module), as named_modules() gives them


def tensor_slots(modules: Modules):
    """(qualified name, the dict holding it, key, tensor) for every parameter and buffer slot."""
    for prefix, m in modules:
        for slots in (m._parameters, m._buffers):
            for k, t in slots.items():
                if t is not None:
                    yield (f"{prefix}.{k}" if prefix else k), slots, k, t


def named_tensors(model: nn.Module, modules: Optional[Modules] = None) -> dict[str, torch.Tensor]:
    """Every parameter and buffer under its first qualified name, as named_parameters() names it.
    `modules`: model.named_modules(), when the caller has them already."""
    out, seen = {}, set()
    for name, _, _, t in tensor_slots(model.named_modules() if modules is None else modules):
        if id(t) not in seen:
            seen.add(id(t))
            out[name] = t
    return out


def shapes_of(tensors: dict[str, torch.Tensor]) -> dict[str, tuple]:
    return {n: tuple(t.shape) for n, t in tensors.items()}


def first_change(now: dict[str, tuple], before: dict[str, tuple]) -> Optional[str]:
    """The first tensor name (sorted) whose shape differs between two `shapes_of`, or None."""
    return None if now == before else sorted(set(now.items()) ^ set(before.items()))[0][0]


def _run(model: nn.Module, tensors: dict[str, torch.Tensor], example_inputs: tuple, meta: bool) -> Trace:
    """One recorded forward pass; `tensors`: the model's parameters and buffers (as named_tensors gives them)."""
    inputs = example_inputs
    if meta:
        inputs = map_tensors(lambda x: x.to("meta"), example_inputs)
    recorder = _Recorder({id(t): n for n, t in tensors.items()})
    in_leaves = [x for x in leaves(inputs) if isinstance(x, torch.Tensor)]
    input_values = [recorder.value_of(x) for x in in_leaves]
    with torch.no_grad(), recorder:
        out = model(*inputs)
    outputs = [recorder.values[id(o)] for o in leaves(out) if isinstance(o, torch.Tensor) and id(o) in recorder.values]
    return Trace(recorder.nodes, input_values, outputs, recorder.params, meta, shapes_of(tensors))


class _OnMeta:
    """Puts meta stand-ins (same shapes, no data) in place of every parameter and buffer, and the
    originals back on exit. Ops on meta tensors compute shapes only. `tensors`: the stand-ins by the
    first qualified name of what they stand for (as named_tensors names them)."""

    def __init__(self, modules: Modules):
        self.modules = modules

    def __enter__(self):
        stand_in: dict[int, torch.Tensor] = {}
        self.tensors: dict[str, torch.Tensor] = {}
        self.saved = []
        for name, slots, k, t in tensor_slots(self.modules):
            if id(t) not in stand_in:
                m = torch.empty_like(t, device="meta")
                m = nn.Parameter(m, t.requires_grad) if isinstance(t, nn.Parameter) else m
                stand_in[id(t)] = self.tensors[name] = m
            self.saved.append((slots, k, t))
        for slots, k, t in self.saved:  # after the walk: its dicts are not changed under it
            slots[k] = stand_in[id(t)]
        return self

    def __exit__(self, *exc):
        for slots, k, t in self.saved:
            slots[k] = t


@contextmanager
def _attention_as_one_op(modules: Modules):
    """Swin window attention modules swapped for the subclasses whose forward is one op, and back."""
    swapped = [(m, type(m), new) for _, m in modules if (new := pruned_class(m)) not in (None, type(m))]
    try:
        for m, _, new in swapped:
            m.__class__ = new
        yield
    finally:
        for m, cls, _ in swapped:
            m.__class__ = cls


class _Unchanged:
    """Puts back, on exit, every module's attributes as they were on entry: each `vars(m)` entry (the same
    object; entries added meanwhile are removed), the items of its lists, dicts and sets (the parameter,
    buffer and hook dicts among them), and the values of the buffers and plain tensor attributes (also
    those in a list, tuple or dict attribute) that were changed in place (buffers only if `buffers`: a
    meta pass cannot change them). So a forward that reassigns `self.x` (torchvision's AnchorGenerator),
    counts its calls or sets a `training` flag leaves nothing behind. Grad mode is restored too."""

    def __init__(self, modules: Modules, buffers: bool = True):
        self.modules = modules
        self.skip = _NO_TENSORS if buffers else _NO_TENSORS | {"_buffers"}

    def __enter__(self):
        self.grad = torch.is_grad_enabled()
        self.saved = [(d, dict(d), [(v, _copy(v)) for v in d.values() if isinstance(v, (list, dict, set))])
                      for d in (vars(m) for _, m in self.modules)]
        tensors = {id(t): t for d, _, _ in self.saved for k, v in d.items() if k not in self.skip
                   for t in _tensors(v) if not isinstance(t, nn.Parameter)}
        self.values = [(t, t._version, t.detach().clone()) for t in tensors.values()]
        return self

    def __exit__(self, *exc):
        self.restore()

    def restore(self) -> None:
        """Put everything back as it was on entry (also midway, to start again from there)."""
        for d, entries, containers in self.saved:
            if not _same(d, entries):
                d.clear()
                d.update(entries)
            for v, copy in containers:
                if not _same(v, copy):
                    v.clear()
                    v.extend(copy) if isinstance(v, list) else v.update(copy)
        with torch.no_grad():
            for t, version, value in self.values:
                if t._version != version:
                    t.copy_(value)
        torch.set_grad_enabled(self.grad)


# nn.Module's own attributes that never hold a tensor (hook dicts, submodules; parameters are not copied)
_NO_TENSORS = frozenset(vars(nn.Module())) - {"_buffers"}


def _tensors(v) -> list[torch.Tensor]:
    """v if a tensor, else the tensors directly in it (a list, tuple or dict, as a buffer dict)."""
    if isinstance(v, torch.Tensor):
        return [v]
    items = v.values() if isinstance(v, dict) else v if isinstance(v, (list, tuple)) else ()
    return [t for t in items if isinstance(t, torch.Tensor)]


def _copy(c):
    return list(c) if isinstance(c, list) else dict(c) if isinstance(c, dict) else set(c)


def _same(a, b) -> bool:
    """Whether two lists, sets or dicts hold the same objects (keys and values), in the same order."""
    if len(a) != len(b):
        return False
    if isinstance(a, dict):
        return all(x is y for x, y in zip(a, b)) and all(x is y for x, y in zip(a.values(), b.values()))
    return all(x is y for x, y in zip(a, b))


def has_hooks(modules: Modules) -> bool:
    """Whether a forward hook or pre-hook (a module's, or a global one) would run in a forward pass."""
    from torch.nn.modules import module as mod

    return bool(mod._global_forward_hooks or mod._global_forward_pre_hooks) or \
        any(m._forward_hooks or m._forward_pre_hooks for _, m in modules)


def _eval(modules: Modules) -> None:
    """Every module in eval mode (its own flag; a user's train() override is not called)."""
    for _, m in modules:
        m.training = False


def record(model: nn.Module, example_inputs: Any, *, meta: bool = True) -> Trace:
    """Record one forward pass of `model` (every module in eval mode, without grad).

    meta=True runs the pass on meta tensors (shapes only, no arithmetic): the model's tensors are
    swapped for meta ones and back. If the model needs real values (`.item()`, data-dependent
    branches), has forward hooks or pre-hooks (they never see meta tensors: they run, once, in the real
    pass), or meta=False, the pass runs for real on `example_inputs`.

    Nothing of the model changes: its parameters, buffers, plain attributes (tensors the forward
    reassigns included), every module's own `training` flag and hook dicts, and grad mode are as before.
    """
    if isinstance(example_inputs, torch.Tensor) or not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    modules = list(model.named_modules())  # one walk, for every step below
    with _Unchanged(modules, buffers=False) as unchanged, _attention_as_one_op(modules):
        _eval(modules)
        if meta and not has_hooks(modules):
            try:  # the model's tensors are meta stand-ins
                with _OnMeta(modules) as on_meta:
                    return _run(model, on_meta.tensors, example_inputs, meta=True)
            except Exception:
                unchanged.restore()  # what the failed pass changed is undone before a real one
                _eval(modules)
        with _Unchanged(modules):
            return _run(model, named_tensors(model, modules), example_inputs, meta=False)
