"""Methods of a model's modules with a size argument rewritten to -1, so that they run once channels are gone,
or with a call's default made explicit, so that they compute what they did.

timm's `Attention.forward` ends with `x.transpose(1, 2).reshape(B, N, C)`, `C` read from its input: once
heads are pruned, the merged heads are no longer `C` wide, and only `-1` is right there. The graph notes
where a `view`/`reshape` is given such a number (`Site`: the module, its method, the call's place in the
source); apply gives the module its own copy of that method with the number replaced by `-1` (`Rewritten`,
an instance attribute, so other instances of the class are untouched). The edit is made on the method's
source (`ast`), compiled with the method's globals; methods with closures other than `__class__`, or
decorated, are not rewritten (`_why_not` says why). Likewise `F.scaled_dot_product_attention(q, k, v)`
scales by 1/sqrt of q's last dim, which pruning head dims changes: apply adds `scale=` with the dense
model's value (an edit `(position, ("scale", value))`).
"""

from __future__ import annotations

import ast
import functools
import inspect
import linecache
import textwrap
import types
from typing import NamedTuple, Optional

from torch import nn

__all__ = ["REWRITES", "Rewritten", "Site", "install", "site_of"]

REWRITES = "_pyprune_fast_rewrites"  # on a module: {method: ((positions, index), ...)} that apply rewrote


class Site(NamedTuple):
    """Where the model's code called an op: the module whose method ran it, the method's name and code,
    and the call's (line, end_line, col, end_col) in the source file."""

    module: str
    method: str
    code: types.CodeType
    positions: tuple[int, int, int, int]


def _caller(frame: types.FrameType, skip: tuple[str, ...]) -> Optional[types.FrameType]:
    while frame is not None and frame.f_code.co_filename.startswith(skip):
        frame = frame.f_back
    return frame


def site_of(frame: types.FrameType, skip: tuple[str, ...], names: dict[int, str], want: tuple) -> Optional[Site]:
    """The Site of the op being called from the first frame above `frame` whose file is outside `skip`, where
    that frame runs a method of a module of `names` (id -> name) that can be rewritten there: `want` is
    ("sizes", n), a view/reshape with its n sizes written out, or ("scale",), a call without `scale`;
    else None."""
    frame = _caller(frame, skip)
    if frame is None:
        return None
    code = frame.f_code
    self = frame.f_locals.get("self") if code.co_argcount and code.co_varnames[0] == "self" else None
    if id(self) not in names:
        return None
    positions = tuple(list(code.co_positions())[frame.f_lasti // 2])
    if None in positions or not _fits(type(self), code.co_name, code, positions, want):
        return None
    return Site(names[id(self)], code.co_name, code, positions)


@functools.lru_cache(maxsize=None)
def _fits(cls: type, method: str, code: types.CodeType, positions: tuple, want: tuple) -> bool:
    """Whether the call at `positions` of a rewritable method is as `want` says (see site_of)."""
    if _why_not(cls, method, code) is not None:
        return False
    fdef, shift = _source(_method(cls, method, code)[0])
    call = _calls(fdef, shift).get(positions)
    if call is None:
        return False
    if want[0] == "sizes":
        sizes = _shape_args(call)
        return sizes is not None and len(sizes) == want[1]
    return (len(call.args) < _SCALE_POSITION and not any(isinstance(a, ast.Starred) for a in call.args)
            and all(k.arg not in ("scale", None) for k in call.keywords))


_SCALE_POSITION = 6  # scaled_dot_product_attention's `scale`, counted from 0


def _calls(fdef: ast.FunctionDef, shift: int) -> dict[tuple, ast.Call]:
    """fdef's calls by their (line, end_line, col, end_col) in the file."""
    return {(c.lineno, c.end_lineno, c.col_offset + shift, c.end_col_offset + shift): c
            for c in ast.walk(fdef) if isinstance(c, ast.Call)}


def _method(cls: type, name: str, code: Optional[types.CodeType] = None):
    """The function `name` of class `cls` (and the class that defines it), if its code is `code`."""
    for cls in cls.__mro__:
        fn = cls.__dict__.get(name)
        if isinstance(fn, types.FunctionType):
            return (fn, cls) if code is None or fn.__code__ is code else (None, None)
    return None, None


def _source(fn: types.FunctionType) -> tuple[ast.FunctionDef, int]:
    """fn's definition as an AST with the file's line numbers, and the columns its source was dedented by."""
    lines, first = inspect.getsourcelines(fn)
    text = "".join(lines)
    dedented = textwrap.dedent(text)
    shift = len(lines[0]) - len(lines[0].lstrip()) if dedented != text else 0
    tree = ast.parse(dedented)
    ast.increment_lineno(tree, first - 1)
    return tree.body[0], shift


@functools.lru_cache(maxsize=None)
def _why_not(cls: type, method: str, code: types.CodeType) -> Optional[str]:
    """Why method `method` of `cls` (whose code ran as `code`) cannot be rewritten, or None."""
    fn, _ = _method(cls, method, code)
    if fn is None:
        return f"{method} is not a method of {cls.__name__}"
    if set(fn.__code__.co_freevars) - {"__class__"}:
        return f"{cls.__name__}.{method} is a closure"
    try:
        fdef, _ = _source(fn)
    except (OSError, TypeError, SyntaxError, IndexError):
        return f"the source of {cls.__name__}.{method} is not available"
    if not isinstance(fdef, ast.FunctionDef) or fdef.decorator_list:
        return f"{cls.__name__}.{method} is decorated"
    return None


def _shape_args(call: ast.Call) -> Optional[list]:
    """The list of the call's size expressions (the arguments, or the elements of a single tuple/list)."""
    if call.keywords or any(isinstance(a, ast.Starred) for a in call.args):
        return None
    if len(call.args) == 1 and isinstance(call.args[0], (ast.Tuple, ast.List)):
        elts = call.args[0].elts
        return None if any(isinstance(a, ast.Starred) for a in elts) else elts
    return call.args


def _compile(fn: types.FunctionType, owner: type, edits: tuple) -> types.FunctionType:
    """fn with, for each (positions, index) of `edits`, that call's size argument `index` replaced by -1, or
    where index is (keyword, value), that keyword argument added."""
    fdef, shift = _source(fn)
    calls = _calls(fdef, shift)
    for positions, index in edits:
        call = calls.get(tuple(positions))
        if isinstance(index, tuple):
            keyword, value = index
            if call is None or any(k.arg in (keyword, None) for k in call.keywords):
                raise ValueError(f"cannot rewrite {fn.__qualname__}: no call without {keyword}= at {positions}")
            call.keywords.append(ast.keyword(keyword, ast.Constant(value)))
            continue
        sizes = _shape_args(call) if call is not None else None
        if sizes is None or index >= len(sizes):
            raise ValueError(f"cannot rewrite {fn.__qualname__}: no call with {index + 1} sizes at {positions}")
        sizes[index] = ast.copy_location(ast.Constant(-1), sizes[index])
    factory = ast.FunctionDef(name="_pyprune_fast_factory", args=ast.arguments(
        posonlyargs=[], args=[ast.arg("__class__")], kwonlyargs=[], kw_defaults=[], defaults=[]),
        body=[fdef, ast.Return(ast.Name(fdef.name, ast.Load()))], decorator_list=[], returns=None, type_params=[])
    tree = ast.fix_missing_locations(ast.Module([factory], type_ignores=[]))
    # its own source file (in linecache), so inspect and torch.jit.script read the rewritten text
    source = ast.unparse(tree) + "\n"
    filename = f"<pyprune_fast rewritten {fn.__qualname__} {abs(hash(source)):x}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    scope: dict = {}
    exec(compile(source, filename, "exec"), fn.__globals__, scope)
    new = scope["_pyprune_fast_factory"](owner)
    new.__defaults__, new.__kwdefaults__ = fn.__defaults__, fn.__kwdefaults__
    new.__qualname__, new.__doc__ = fn.__qualname__, fn.__doc__
    return new


class Rewritten:
    """A module's own copy of one of its class's methods, with size arguments rewritten to -1 (or keywords
    added); an instance attribute standing in for the method. Copies, pickles and reloads as the edits it
    was made from."""

    def __init__(self, module: nn.Module, method: str, edits: tuple):
        fn, owner = _method(type(module), method)
        if fn is None:
            raise ValueError(f"cannot rewrite {type(module).__name__}.{method}: not a method of its class")
        self.module, self.method, self.edits = module, method, tuple(edits)
        self._fn = _compile(fn, owner, self.edits)

    def __call__(self, *args, **kwargs):
        return self._fn(self.module, *args, **kwargs)

    def __reduce__(self):
        return Rewritten, (self.module, self.method, self.edits)


def install(module: nn.Module, method: str, edits: tuple, setitem) -> None:
    """Give `module` its rewritten `method` with these edits added to what it has; `setitem(d, key, value)`
    makes each change (apply's, with an undo). The edits are kept in `REWRITES` for save_pruned."""
    done = dict(getattr(module, REWRITES, {}))
    edits = tuple(sorted(set(done.get(method, ())) | set(edits)))
    setitem(vars(module), method, Rewritten(module, method, edits))
    setitem(vars(module), REWRITES, {**done, method: edits})
