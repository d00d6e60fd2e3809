"""Sizes the model's code reads (`x.shape`, `x.size(d)`, `x.numel()`, `len(x)`), followed as numbers.

While a forward pass is recorded, a size read returns `Size` numbers instead of plain ints: each
remembers which (Value, dim) pairs it was computed from, and arithmetic on it keeps that (`C // 4`,
`H * W`, `math.ceil(C / 2)`). A rule can then tell what the code did with a channel count: shape a
`view` that stays consistent when the channels are pruned (`x.view(B, C, -1)`), compute some other
size from it (a channel shuffle's `C // groups`), or nothing at all (an assert message). Comparing a
channel count (`if C == 64`) is recorded as a `size_comparison` op: the code may branch on it.
Modules' int attributes (`self.num_heads`, YOLO's `self.c`) are `Size` numbers too while recorded, so a
rule can tell that a view's size comes from one (and surgery can update it with the channels).

A number that leaves through `int()` or numpy is no longer followed; the run check after apply
(`run_check.py`) is the net for such code.
"""

from __future__ import annotations

import math
import operator
from contextlib import contextmanager
from typing import Any, Callable, Optional

__all__ = ["Reads", "Size", "SizeFloat", "Tracked", "attribute_reads", "attributes_tracked", "int_sequence", "reads_in",
           "size_comparison", "tracked"]

Reads = frozenset  # of (Value, dim) sizes and (module name, attribute, synced) ints a number was computed from


class Tracked:
    """Mixin of `Size` and `SizeFloat`: `reads`, `pure` (a size as read, no arithmetic), `log`, called
    with (a, b, symbol) for every comparison, and `formula` (env -> the number recomputed with the reads in
    env taking other values; see `at`)."""

    __slots__ = ()
    reads: Reads
    pure: bool
    log: Optional[Callable]
    formula: Optional[Callable[[dict], Any]]

    @classmethod
    def _make(cls, value, reads: Reads, pure: bool, log: Optional[Callable], formula=None):
        s = (int if issubclass(cls, int) else float).__new__(cls, value)
        s.reads, s.pure, s.log, s.formula = reads, pure, log, formula
        return s

    def scales(self, reads, given: int, gives: int) -> bool:
        """Whether this number, recomputed with every read in `reads` at c * `given` (c = 1, 2, 3), is c * `gives`:
        it follows those sizes (`C * H * W` is C times H * W; `C // 2` of a width cut in 2 is the part's)."""
        try:
            return all(self.at({r: c * given for r in reads}) == c * gives for c in (1, 2, 3))
        except (ArithmeticError, ValueError, TypeError):
            return False

    def at(self, env: dict) -> Any:
        """This number recomputed as if the reads in `env` (read -> value) had read other sizes."""
        if self.formula is None:  # a size as read
            return env.get(next(iter(self.reads)), _plain(self))
        return self.formula(env)

    def _wrap(self, value: Any, reads: Reads, formula: Callable[[dict], Any]) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return value
        cls = Size if isinstance(value, int) else SizeFloat
        return cls._make(value, reads, False, self.log, formula)


def _plain(x: Any) -> Any:
    if isinstance(x, Size):
        return int(x)
    if isinstance(x, SizeFloat):
        return float(x)
    return x


def _at(x: Any, env: dict) -> Any:
    return x.at(env) if isinstance(x, Tracked) else x


def _reads(*xs: Any) -> Reads:
    return frozenset().union(*(x.reads for x in xs if isinstance(x, Tracked)))


def _binary(op, reflected: bool = False):
    def method(self, other):
        if not isinstance(other, (int, float)):
            return NotImplemented
        a, b = (other, self) if reflected else (self, other)
        return self._wrap(op(_plain(a), _plain(b)), _reads(self, other), lambda env: op(_at(a, env), _at(b, env)))
    return method


def _unary(op):
    def method(self, *args):
        return self._wrap(op(_plain(self), *args), self.reads, lambda env: op(self.at(env), *args))
    return method


def _compare(op, symbol: str):
    def method(self, other):
        if not isinstance(other, (int, float)):
            return NotImplemented
        if self.log is not None:
            self.log(self, other, symbol)
        return op(_plain(self), _plain(other))
    return method


_ARITHMETIC = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "floordiv": operator.floordiv,
               "truediv": operator.truediv, "mod": operator.mod, "pow": operator.pow}
_COMPARISONS = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}


def _add_methods(cls: type) -> type:
    for name, op in _ARITHMETIC.items():
        setattr(cls, f"__{name}__", _binary(op))
        setattr(cls, f"__r{name}__", _binary(op, reflected=True))
    for name, symbol in _COMPARISONS.items():
        setattr(cls, f"__{name}__", _compare(getattr(operator, name), symbol))
    for name, op in (("neg", operator.neg), ("pos", operator.pos), ("abs", abs), ("floor", math.floor),
                     ("ceil", math.ceil), ("trunc", math.trunc), ("round", round)):
        setattr(cls, f"__{name}__", _unary(op))
    cls.__hash__ = lambda self: hash(_plain(self))
    return cls


@_add_methods
class Size(Tracked, int):
    """An int read from (or computed from) tensor sizes. Made a float (`math.sqrt(self.head_size)`), it is no
    longer followed: `log` hears of it as a comparison with the symbol "float", so its value counts as used."""

    def __float__(self) -> float:
        if self.log is not None:
            self.log(self, None, "float")
        return float(int(self))


@_add_methods
class SizeFloat(Tracked, float):
    """A float computed from tensor sizes (`C / 2`)."""


def tracked(out: Any, value, name: str, args: tuple, log: Callable) -> Any:
    """The result `out` of size read `name` on the tensor recorded as `value`, as `Size` numbers."""
    import torch

    if name in ("shape", "size") and isinstance(out, torch.Size):
        return torch.Size([Size._make(s, frozenset({(value, d)}), True, log) for d, s in enumerate(out)])
    if name == "size" and isinstance(out, int):
        d = args[1] if len(args) > 1 else None
        if isinstance(d, int):
            d = d + value.ndim if d < 0 else d
            return Size._make(out, frozenset({(value, d)}), True, log)
    if name == "__len__" and isinstance(out, int) and value.ndim:
        return Size._make(out, frozenset({(value, 0)}), True, log)
    if name == "numel" and isinstance(out, int):
        reads = [(value, d) for d in range(value.ndim)]
        return Size._make(out, frozenset(reads), False, log,
                          lambda env: math.prod(env.get(r, s) for r, s in zip(reads, value.shape)))
    return out


@contextmanager
def attributes_tracked(model, log: Callable, synced: Callable[[Any], tuple]):
    """Every module's int attributes (`self.num_heads`, `self.c`) as `Size` numbers that remember
    (module name, attribute, synced), for one recorded pass; the plain ints are put back on exit. `synced`:
    the attribute is one that `synced(module)` names, a width surgery sets from the tensors' shapes (a
    conv's `out_channels`), so it follows the channels whatever the code does with it. A tuple or list of
    ints of the model's own modules (InceptionNeXt's split sizes; not torch.nn's kernel sizes) is one of
    Sizes, element i named `attribute[i]`."""
    from torch import jit

    swapped = []
    for name, m in model.named_modules():
        if isinstance(m, jit.ScriptModule):
            continue
        d, skip = vars(m), synced(m)
        swapped += [(d, k, v, Size._make(v, frozenset({(name, k, k in skip)}), True, log)) for k, v in d.items()
                    if type(v) is int]
        swapped += [(d, k, v, type(v)(Size._make(e, frozenset({(name, f"{k}[{i}]", False)}), True, log)
                                      for i, e in enumerate(v))) for k, v in d.items() if int_sequence(m, v)]
    try:
        for d, k, _, size in swapped:
            d[k] = size
        yield
    finally:
        for d, k, v, size in swapped:
            if d.get(k) is size:
                d[k] = v


def int_sequence(module, value) -> bool:
    """Whether `value`, an attribute of `module`, is a tuple or list of positive ints of the model's own code
    (not torch.nn's kernel sizes and strides; not a shape with -1): its elements are tracked
    (`attributes_tracked`) and may be set."""
    return (type(value) in (tuple, list) and bool(value) and all(type(e) is int and e > 0 for e in value)
            and not type(module).__module__.startswith("torch."))


def attribute_reads(number: Tracked) -> list[tuple[str, str, bool]]:
    """The (module, attribute, synced) a number was computed from (see `attributes_tracked`)."""
    return [r for r in number.reads if isinstance(r[0], str)]


def size_comparison(a: Any, b: Any, symbol: str) -> Any:
    """Recorded in place of a comparison the model's code made of a size it read (`a symbol b`), or of the
    size made a float (symbol "float")."""
    if symbol == "float":
        return float(_plain(a))
    return getattr(operator, {v: k for k, v in _COMPARISONS.items()}[symbol])(_plain(a), _plain(b))


def reads_in(obj: Any) -> list[Tracked]:
    """The tracked numbers anywhere in an op's arguments (nested sequences, dicts and slices)."""
    if isinstance(obj, Tracked):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [r for o in obj for r in reads_in(o)]
    if isinstance(obj, dict):
        return [r for o in obj.values() for r in reads_in(o)]
    if isinstance(obj, slice):
        return reads_in((obj.start, obj.stop, obj.step))
    return []
