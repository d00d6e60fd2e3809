"""Outputs of some ops on meta tensors made directly: their shape functions on meta are slow Python
decompositions, and the recorder calls them for every op of a meta pass."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .ir import op_name

__all__ = ["attention_args", "meta_output"]

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


_RNNS = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}  # torch.lstm & co (nn.LSTM...): gates per unit


def _rnn_output(name: str, x: torch.Tensor, hx, params: list, bidirectional: bool):
    """(output, h_n[, c_n]) of a recurrent layer on meta: the steps' Python meta kernels are slow (sequencer2d
    took seconds); None where the shapes do not fit its first layer's weights (for the real kernel to report)."""
    states = list(hx) if isinstance(hx, (tuple, list)) else [hx]
    h, w_ih, w_hh = states[0], params[0] if params else None, params[1] if len(params) > 1 else None
    if (w_ih is None or w_hh is None or x.dim() not in (2, 3) or x.shape[-1] != w_ih.shape[1]
            or w_hh.shape[1] != h.shape[-1] or w_ih.shape[0] != _RNNS[name] * states[-1].shape[-1]):
        return None
    out = x.new_empty((*x.shape[:-1], h.shape[-1] * (2 if bidirectional else 1)))
    return (out, *(t.new_empty(t.shape) for t in states))


# Binary arithmetic (residual adds, scalings): on meta a Python reference, ~0.1 ms a call. Made directly where the
# output is plain: tensors of one floating dtype, all contiguous (the output is then contiguous too), or one such
# tensor and a Python number; in-place forms and `out=` are left to the op. Allowed keyword arguments per op.
_T = torch.Tensor
_ARITHMETIC = {**dict.fromkeys((torch.add, _T.add, torch.sub, _T.sub), ("alpha",)),
               **dict.fromkeys((torch.div, _T.div), ("rounding_mode",)),
               **dict.fromkeys((torch.mul, _T.mul, _T.__add__, _T.__radd__, _T.__sub__, _T.__rsub__, _T.__mul__,
                                _T.__rmul__, _T.__truediv__, _T.__rtruediv__), ())}
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _arithmetic_output(x: torch.Tensor, args: tuple, kwargs: dict, allowed: tuple):
    if len(args) != 2 or not set(kwargs) <= set(allowed) or torch.is_grad_enabled():
        return None
    y = args[1]
    if type(x) not in _PLAIN or not x.is_floating_point() or not x.is_contiguous():
        return None
    if isinstance(y, (int, float)) and not isinstance(y, bool):
        return x.new_empty(x.shape)
    if type(y) not in _PLAIN or not y.is_meta or y.dtype != x.dtype or not y.is_contiguous():
        return None
    shape = _broadcast(x.shape, y.shape)
    return None if shape is None else x.new_empty(shape)  # None: a mismatch for the real op to report


def _broadcast(a: torch.Size, b: torch.Size):
    """The broadcast shape of a and b, or None where they do not broadcast (no exception: one raised inside
    apply's run check must be the model's)."""
    n = max(len(a), len(b))
    out = []
    for p, q in zip((1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)):
        if p != q and 1 not in (p, q):
            return None
        out.append(q if p == 1 else p)
    return out


def _bias_fits(b, w: torch.Tensor) -> bool:
    return b is None or (isinstance(b, torch.Tensor) and b.dim() == 1 and b.shape[0] == w.shape[0])


# Ops whose meta output is a slow Python decomposition (attention's softmax, masks) but a plain tensor that
# depends on nothing but the call: run once per distinct call (every argument, tensors by shape, strides,
# dtype and device), then made as an empty tensor of the shape and strides it gave. Errors are not kept.
_ONCE = {F.scaled_dot_product_attention}
_made: dict[tuple, tuple] = {}  # call -> (shape, strides, dtype) of its output


def _call_key(obj):
    """What a meta op's output can depend on in `obj` (an argument); TypeError for what cannot be a key."""
    if type(obj) is torch.Tensor:
        return obj.shape, obj.stride(), obj.dtype, obj.device, obj.storage_offset(), obj.requires_grad
    if isinstance(obj, torch.Tensor):
        raise TypeError("a tensor subclass")
    if isinstance(obj, (tuple, list)):
        return (type(obj), *map(_call_key, obj))
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):  # also sizes.Size numbers: as plain ones
        return (int, int(obj)) if isinstance(obj, int) else (float, float(obj))
    hash(obj)
    return type(obj), obj


def _run_once(func: Callable, args: tuple, kwargs: dict):
    """func's output (a tensor on meta inputs, see _ONCE), run for the first call of its kind only."""
    try:
        key = (func, torch.is_grad_enabled(), _call_key(args), _call_key(tuple(kwargs.items())))
    except TypeError:
        return func(*args, **kwargs)
    if key in _made:
        shape, stride, dtype = _made[key]
        return torch.empty_strided(shape, stride, dtype=dtype, device="meta")
    out = func(*args, **kwargs)
    if (type(out) is torch.Tensor and out.is_meta and not out.requires_grad and not out._is_view()
            and out.storage_offset() == 0):
        if len(_made) >= 1024:
            _made.clear()
        _made[key] = (out.shape, out.stride(), out.dtype)
    return out


def meta_output(func: Callable, args: tuple, kwargs: dict):
    """The output of func on meta inputs, made without running it (or for the ops in _ONCE, run once per
    distinct call); None where that is not plain."""
    if not args or not isinstance(args[0], torch.Tensor) or not args[0].is_meta:
        return None
    x = args[0]
    if func in _ONCE:
        return _run_once(func, args, kwargs)
    if func in _ARITHMETIC:
        return _arithmetic_output(x, args, kwargs, _ARITHMETIC[func])
    if func in _SAME_SHAPE:
        if not _params_fit(func, x, [a for a in (*args[1:], *kwargs.values()) if isinstance(a, torch.Tensor)]):
            return None  # a mismatch for the real kernel to report
        if not x.is_contiguous():
            return torch.empty_like(x)
        return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)  # empty_like is slow on meta
    if func is F.linear:
        w = args[1] if len(args) > 1 else kwargs["weight"]
        b = args[2] if len(args) > 2 else kwargs.get("bias")
        if x.dim() == 0 or w.dim() != 2 or x.shape[-1] != w.shape[1] or not _bias_fits(b, w):
            return None  # a mismatch for the real kernel to report
        return x.new_empty((*x.shape[:-1], w.shape[0]))
    if func in (torch.conv1d, torch.conv2d, torch.conv3d) and not kwargs and x.dim() == args[1].dim():
        w, spatial = args[1], x.dim() - 2
        stride, padding, dilation, groups = (list(args) + [None, 1, 0, 1, 1][len(args) - 2:])[3:7]
        if not _bias_fits(args[2] if len(args) > 2 else None, w):  # which conv's meta kernel lets through
            raise RuntimeError(f"{op_name(func)}: a bias of shape {tuple(args[2].shape)} for {w.shape[0]} output channels")
        if isinstance(padding, str) or x.shape[1] != w.shape[1] * groups:
            return None  # 'same' padding, or a mismatch for the real kernel to report
        stride, padding, dilation = ([a] * spatial if isinstance(a, int) else list(a) for a in (stride, padding, dilation))
        out = [(x.shape[2 + i] + 2 * padding[i] - dilation[i] * (w.shape[2 + i] - 1) - 1) // stride[i] + 1
               for i in range(spatial)]
        return x.new_empty((x.shape[0], w.shape[0], *out))
    if func is F.grid_sample:  # on meta a Python decomposition: 12 ms a call (RAFT calls it 48 times)
        grid = args[1] if len(args) > 1 else kwargs.get("grid")
        if not isinstance(grid, torch.Tensor) or x.dim() not in (4, 5) or grid.dim() != x.dim() \
                or grid.shape[0] != x.shape[0] or grid.shape[-1] != x.dim() - 2:
            return None  # a mismatch for the real kernel to report
        return x.new_empty((*x.shape[:2], *grid.shape[1:-1]))
    if getattr(func, "__name__", None) in _RNNS and len(args) == 9 and not kwargs:
        return _rnn_output(func.__name__, *args[:3], bidirectional=args[7])
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
