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
import os
import sys
from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any, Optional

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..nn.caches import cleared
from ..nn.rewritten import site_of
from ..nn.widths import kind_of, pruned_class
from .ir import Node, Trace, Value, leaf_paths, leaves, map_tensors, op_name
from .guessed import guessed_output, postprocessing_on_meta
from .meta import meta_output
from .one_op import module_call, one_op_class
from .sizes import attributes_tracked, size_comparison, tracked
from .rules.registry import module_rule
from .tensors import Modules, named_tensors, shapes_of, tensor_slots
from .taxonomy import SIZE_READS
from .unchanged import Unchanged

__all__ = ["failed_op", "has_hooks", "model_inputs", "output_shapes", "output_trace", "record"]


_NOT_MODEL_CODE = tuple(os.path.dirname(f) + os.sep for f in (torch.__file__, os.path.dirname(os.path.abspath(__file__))))
# ops whose calls apply may rewrite (nn.rewritten): view/reshape sizes to -1, sdpa's default scale made explicit
_REWRITABLE = {"view", "reshape", "scaled_dot_product_attention"}


def _rewritable(node: Node) -> tuple:
    """What a call of `node`'s op must look like to be rewritten (`nn.rewritten.site_of`)."""
    return ("scale",) if node.name == "scaled_dot_product_attention" else ("sizes", node.outputs[0].ndim)


class _Recorder(TorchFunctionMode):
    def __init__(self, param_names: dict[int, str], module_names: dict[int, str]):
        super().__init__()
        self.param_names = param_names
        self.module_names = module_names
        self.values: dict[int, Value] = {}
        self.keep_alive: list[torch.Tensor] = []  # ids stay unique while we hold the tensors
        self.nodes: list[Node] = []
        self.params: dict[str, Value] = {}
        self._ids = itertools.count()
        self.listening = False  # comparisons of sizes are recorded (model code runs)
        self.mixed = False  # a meta pass with real inputs (integer ones): ops meeting both run on meta
        self.meta = False  # a meta pass
        self.guessed = False  # an op's output size depending on the data was guessed (guessed_output)

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

    def run(self, func, args: tuple, kwargs: dict):
        """func's output (made directly on meta where `meta_output` can), with comparisons inside it not logged
        (they are not the model's code)."""
        self.listening = False
        try:
            if self.mixed:
                if op_name(func) == "to" and isinstance(args[0], torch.Tensor) and not args[0].is_meta:
                    return _to_kept_real(func, args, kwargs)
                args, kwargs = _on_meta(func, args, kwargs)
            out = meta_output(func, args, kwargs)
            if out is None and self.meta:
                out = guessed_output(func, args, kwargs)
                self.guessed |= out is not None
            return func(*args, **kwargs) if out is None else out
        finally:
            self.listening = True

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = self.run(func, args, kwargs)
        # x[key] = v returns nothing: the tensor written into is its output, a new value (as an in-place op's)
        out = args[0] if op_name(func) == "__setitem__" and isinstance(args[0], torch.Tensor) else result
        if (not isinstance(out, torch.Tensor) and not any(isinstance(o, torch.Tensor) for o in leaves(out))
                and op_name(func) not in SIZE_READS):
            return out
        node = Node(func, map_tensors(self.value_of, tuple(args)), map_tensors(self.value_of, kwargs), [], None,
                    id=len(self.nodes))
        node.output_tree = map_tensors(lambda t: self.new_value(t, node), out)
        if node.name in _REWRITABLE:
            node.site = site_of(sys._getframe(1), _NOT_MODEL_CODE, self.module_names, _rewritable(node))
        self.nodes.append(node)
        if node.name in SIZE_READS:  # numbers that remember the sizes they came from
            return tracked(out, node.args[0], node.name, node.args, self.compared)
        return result

    def compared(self, a, b, symbol: str) -> None:
        """The model's code compared a size it read: recorded as a `size_comparison` op (while the pass runs)."""
        if self.listening:
            self.nodes.append(Node(size_comparison, (a, b, symbol), {}, [], None, id=len(self.nodes)))


def _on_meta(func, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The arguments of an op of a meta pass whose real inputs (integer ones, kept real for the model's code
    to read) meet meta tensors: every real tensor as a meta one. RuntimeError where the op would write meta
    values into a real tensor (the pass then runs for real)."""
    tensors = [t for t in leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    if all(t.is_meta for t in tensors) or not any(t.is_meta for t in tensors):
        return args, kwargs
    name = op_name(func)
    if "out" in kwargs or (isinstance(args[0], torch.Tensor) and not args[0].is_meta and (
            name == "__setitem__" or (name.endswith("_") and not name.startswith("__")))):
        raise RuntimeError(f"{name}: writes meta values into a real tensor")
    meta = lambda t: t if t.is_meta else t.to("meta")  # noqa: E731
    return map_tensors(meta, args), map_tensors(meta, kwargs)


def _to_kept_real(func, args: tuple, kwargs: dict) -> torch.Tensor:
    """`real.to(...)` in a meta pass: moved to meta (the model's device there), a real tensor stays real (as
    its dtype asks), so that the model's code can still read it."""
    probe = func(torch.empty_like(args[0], device="meta"), *args[1:], **kwargs)
    return args[0].to(probe.dtype) if probe.is_meta else func(*args, **kwargs)


class _Runner(_Recorder):
    """A recorder that records no ops, for a pass whose output shapes alone are wanted (`output_shapes`): the
    ops run as in a recorded pass (meta outputs made the same way), the model's code reads the same `Size`
    numbers, and an error names the same op (`failed_op`)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = self.run(func, args, kwargs)
        name = op_name(func)
        if name in SIZE_READS:
            value = Value(tuple(args[0].shape)) if isinstance(args[0], torch.Tensor) else args[0]
            return tracked(out, value, name, args, self.compared)
        return out

    def compared(self, a, b, symbol: str) -> None:
        pass


def model_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    """The (positional, keyword) arguments of the model call `example_inputs` stands for: a tensor (the one
    input), a tuple or list (the positional inputs: `([img1, img2],)` passes one list of images), or a
    mapping with str keys (keyword inputs: `{"input_ids": ids, "attention_mask": mask}`, a Hugging Face
    BatchEncoding). TypeError for anything else."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    if isinstance(example_inputs, Mapping):
        key = next((k for k in example_inputs if not isinstance(k, str)), None)
        if key is not None:
            raise TypeError(f"example_inputs: a dict's keys name the model's keyword arguments (str), got {key!r}")
        return (), dict(example_inputs)
    raise TypeError("example_inputs must be a tensor, a tuple or list of positional inputs, or a dict of keyword "
                    f"inputs, got {type(example_inputs).__name__}")


def _run(model: nn.Module, tensors: dict[str, torch.Tensor], inputs: tuple[tuple, dict], meta: bool,
         recorder_class: type = _Recorder) -> Trace:
    """One recorded forward pass on `inputs` ((args, kwargs), as model_inputs gives them); `tensors`: the
    model's parameters and buffers (as named_tensors gives them). Every tensor the model returns, however
    nested (tuples, lists, dicts, Hugging Face ModelOutputs), is an output of the trace (of no ops for a
    `_Runner`)."""
    if meta:  # integer and bool inputs stay real: the model's code may read their values (`.item()`)
        inputs = map_tensors(lambda x: x.to("meta") if x.is_floating_point() or x.is_complex() else x, inputs)
    recorder = recorder_class({id(t): n for n, t in tensors.items()}, {id(m): n for n, m in model.named_modules()})
    recorder.meta = meta
    recorder.mixed = meta and any(isinstance(x, torch.Tensor) and not x.is_meta for x in leaves(inputs))
    input_values = [recorder.value_of(x) for x in leaves(inputs) if isinstance(x, torch.Tensor)]
    args, kwargs = inputs
    with torch.no_grad(), recorder, attributes_tracked(model, recorder.compared, lambda m: kind_of(m).widths):
        recorder.listening = True
        try:
            out = model(*args, **kwargs)
        finally:
            recorder.listening = False
    returned = [(path, o) for path, o in leaf_paths(out) if isinstance(o, torch.Tensor)]
    outputs = [recorder.value_of(o) for _, o in returned]  # seen by no op: as given
    return Trace(recorder.nodes, input_values, outputs, recorder.params, meta, shapes_of(tensors),
                 [path for path, _ in returned], recorder.guessed)


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


def _one_op_class(m: nn.Module) -> Optional[type]:
    """The class `m` runs as while recorded: the one-op subclass of a type with a registered rule, or Swin
    window attention's subclass whose forward is one op; None when it runs as it is."""
    return one_op_class(type(m)) if module_rule(m) is not None else pruned_class(m)


@contextmanager
def _as_one_op(modules: Modules):
    """Modules of registered types and Swin window attention swapped for subclasses whose forward is one
    op, and back."""
    swapped = [(m, type(m), new) for _, m in modules if (new := _one_op_class(m)) not in (None, type(m))]
    try:
        for m, _, new in swapped:
            m.__class__ = new
        yield
    finally:
        for m, cls, _ in swapped:
            m.__class__ = cls


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
    """Record one forward pass of `model` (every module in eval mode, without grad) on `example_inputs`: a
    tensor, a tuple or list of positional inputs, or a dict of keyword inputs (see `model_inputs`).

    meta=True runs the pass on meta tensors (shapes only, no arithmetic): the model's tensors are
    swapped for meta ones and back. If the model needs real values (`.item()`, data-dependent
    branches), has forward hooks or pre-hooks (they never see meta tensors: they run, once, in the real
    pass), or meta=False, the pass runs for real on `example_inputs`.

    Nothing of the model changes: its parameters, buffers, plain attributes (tensors the forward
    reassigns included), every module's own `training` flag and hook dicts, and grad mode are as before.
    """
    inputs = model_inputs(example_inputs)
    modules = list(model.named_modules())  # one walk, for every step below
    with Unchanged(modules, buffers=False) as unchanged, _as_one_op(modules):
        _eval(modules)
        if meta and not has_hooks(modules):
            try:  # the model's tensors are meta stand-ins
                return _pass(model, modules, inputs, meta=True)
            except Exception:
                unchanged.restore()  # what the failed pass changed is undone before a real one
                _eval(modules)
        with Unchanged(modules):
            return _pass(model, modules, inputs, meta=False)


def _pass(model: nn.Module, modules: Modules, inputs: tuple[tuple, dict], meta: bool,
          recorder_class: type = _Recorder) -> Trace:
    """One recorded pass on `inputs` ((args, kwargs)), on meta stand-ins of the model's tensors or on the
    tensors themselves, with the modules' shape caches cleared (inside `Unchanged`, which puts them back)."""
    cleared(modules)
    if meta:
        with _OnMeta(modules) as on_meta, postprocessing_on_meta():
            return _run(model, on_meta.tensors, inputs, True, recorder_class)
    return _run(model, named_tensors(model, modules), inputs, False, recorder_class)


def output_shapes(model: nn.Module, example_inputs: Any, meta: bool) -> list[tuple]:
    """Shapes of the outputs of one recorded forward pass (every module in eval mode, without grad), in the
    order of `Trace.outputs`, on meta stand-ins of every tensor when `meta`, else for real; the model is
    left exactly as it was (as in `record`). Errors of the forward pass propagate (`failed_op` names the
    op that raised)."""
    return [v.shape for v in output_trace(model, example_inputs, meta).outputs]


def output_trace(model: nn.Module, example_inputs: Any, meta: bool, ops: bool = False) -> Trace:
    """The Trace of the pass `output_shapes` runs: its outputs, and where `ops` every op (as `record` records
    them: on meta, the same Trace as record(model, example_inputs) gives)."""
    inputs = model_inputs(example_inputs)
    modules = list(model.named_modules())
    with Unchanged(modules, buffers=not meta), _as_one_op(modules):
        _eval(modules)
        return _pass(model, modules, inputs, meta, _Recorder if ops else _Runner)


def failed_op(error: BaseException) -> Optional[str]:
    """The name of the op a recorded pass (`record`, `output_shapes`) was running when it raised `error`
    (the innermost on its traceback), or None."""
    op, tb = None, error.__traceback__
    while tb is not None:
        local = tb.tb_frame.f_locals
        if isinstance(local.get("self"), _Recorder) and "func" in local:
            args = local.get("args") or (None,)
            op = type(args[0]).__name__ if local["func"] is module_call else op_name(local["func"])
        tb = tb.tb_next
    return op
