"""FRS feature relevance scores (Aketi et al., 2020): how much each channel carries of the evidence
for the true class, by layer-wise relevance propagation (LRP) with the alpha=2, beta=1 rule.

LRP runs as "input x modified gradient": one forward pass in which some ops are reparametrised so that
their forward value is unchanged while their backward implements an LRP rule, then one backward pass
seeded with the one-hot of the true label. The relevance of any tensor t is then `t * grad(t)`: at the
logits it is the true class's logit at its position and 0 elsewhere. Rules, per op:

- conv / Linear (alpha-beta, alpha=2, beta=1): with contributions z_ij = a_i w_ij,
  z+ = sum of the positive ones (a+ w+ and a- w-) plus the bias's positive part, z- likewise negative,
  R_i = sum_j (alpha z+_ij / z+_j - beta z-_ij / z-_j) R_j. Denominators get eps=1e-6 with their
  sign. A BatchNorm (eval statistics) that is the only reader of a conv/Linear output is folded into
  it, so the rule applies to the folded layer and the layer's relevance is read after the BatchNorm.
- BatchNorm on its own (not folded): z-rule of its per-channel affine map (plain gradient; the
  alpha-beta rule of a one-input unit would double the relevance).
- ReLU, dropout (eval), copies: relevance passes unchanged (plain gradient). Other elementwise
  activations (ReLU6, hardswish, SiLU, GELU, ...): relevance passes unchanged (gradient a/z).
- add / sub / cat / split / slicing: z-rule, each input gets its share of the sum (plain gradient).
- avg pool / mean: z-rule (in proportion); max pool: all to the winners; view / flatten / permute:
  the relevance is reshaped. Products with a constant or a parameter keep it.
- Anything else that reads an activation (matmul, attention, softmax, LayerNorm / GroupNorm, products
  of two activations as in squeeze-excitation) raises ValueError naming the module.

Scores (`relevance_scores`): the relevance at each producing layer's output, averaged over spatial
positions (one score per channel per image), averaged per class, class c weighted by
sigmoid(1 / (acc_c / max_acc)) with acc_c the model's accuracy on the class in the given batches
(harder classes weigh more), averaged over the classes present, absolute value, L2-normalised per layer.
A group several layers produce (a residual group: several convs add into one space; a depthwise conv
and the conv before it) sums its layers' normalised scores.
"""

from __future__ import annotations

import itertools
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..graph import (DependencyGraph, Group, Trace, batchnorm_after, leaves, module_of, named_tensors, op_name, record,
                     taxonomy as ops)

__all__ = ["layer_relevance", "layer_scores", "class_weighted", "relevance_scores"]

ALPHA, BETA, EPS = 2.0, 1.0, 1e-6
PROGRESS_DELAY_S = 2.0

_LAYERS = {torch.conv1d: 1, torch.conv2d: 1, torch.conv3d: 1, F.linear: -1}  # op -> output channel dim
# Ops whose plain gradient is the LRP rule (see the module docstring), from the graph's op taxonomy.
_PLAIN = (ops.RELUS | ops.DROPOUTS | ops.COPIES | {"neg", "stack", "__getitem__", "pad", "mean", "sum", "amax", "amin"}
          | ops.SUMS | ops.CATS | ops.SPLITS | ops.RESHAPES | ops.PERMUTES | ops.EXPANDS | ops.POOLS | ops.MAX_POOLS)
_SCALING = ops.PRODUCTS | ops.QUOTIENTS - {"__rtruediv__"}  # by a constant or a parameter (a number over x is not)


def _stab(z: Tensor, negative: bool) -> Tensor:
    """z pushed away from 0 by EPS, keeping its sign (0 counts as positive, or as negative if `negative`)."""
    return z - EPS if negative else z + EPS


def _alpha_beta(layer: Callable, a: Tensor, w: Tensor, b: Optional[Tensor], channel_dim: int) -> Tensor:
    """layer(a, w, b) whose backward is the alpha-beta rule: value z, gradient such that
    a * grad(a) = R_in when grad(z) = R / z."""
    w, b = w.detach(), None if b is None else b.detach()
    with torch.no_grad():
        z = layer(a, w, b)
    wp, wn, ap = w.clamp(min=0), w.clamp(max=0), a.clamp(min=0)
    zp, zn = layer(ap, wp, None), layer(ap, wn, None)
    if bool((a < 0).any()):
        an = a.clamp(max=0)
        zp, zn = zp + layer(an, wn, None), zn + layer(an, wp, None)
    bp = bn = 0.0
    if b is not None:
        shape = [-1] + [1] * (z.dim() - 2) if channel_dim == 1 else [-1]
        bp, bn = b.clamp(min=0).reshape(shape), b.clamp(max=0).reshape(shape)
    with torch.no_grad():
        cp, cn = z / _stab(zp + bp, False), z / _stab(zn + bn, True)
    expr = ALPHA * zp * cp - BETA * zn * cn
    return z + (expr - expr.detach())


def _pass_unchanged(x: Tensor, a: Tensor) -> Tensor:
    """Value a = act(x), gradient a / x: the relevance of x equals the relevance of a."""
    with torch.no_grad():
        ratio = torch.where(x != 0, a / x, torch.zeros_like(a))
    scaled = x * ratio
    return a + (scaled - scaled.detach())


class _LRP(TorchFunctionMode):
    """Runs the forward with the LRP reparametrisations; `captured[name]` holds (relevance-carrying output,
    channel dim) of every conv/Linear (by weight name) and unfolded BatchNorm (by its weight name)."""

    def __init__(self, tensors: dict[str, Tensor], fold: set[str], stack: list[str]):
        super().__init__()
        self.names = {id(t): n for n, t in tensors.items()}
        self.fold, self.stack = fold, stack
        self.pending: dict[int, tuple] = {}
        self.keep_alive: list[Tensor] = []
        self.captured: dict[str, list[tuple[Tensor, int]]] = {}

    def _capture(self, name: Optional[str], out: Tensor, channel_dim: int) -> Tensor:
        if name is None:
            return out
        self.captured.setdefault(name, []).append((out, channel_dim))
        return out.clone()  # in-place ops downstream (`out += identity`) must not rewrite what we read

    def _is_activation(self, t) -> bool:
        return isinstance(t, Tensor) and t.requires_grad and id(t) not in self.names

    def _fail(self, what: str):
        where = self.stack[-1] if self.stack else ""
        raise ValueError(f"relevance: {where or 'the model'} {what}: LRP has no rule for it here "
                         "(supported: conv, Linear, BatchNorm, pooling, ReLU-like activations, add, reshape)")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = op_name(func)
        if func in _LAYERS:
            return self._layer(func, args, kwargs)
        if func is F.batch_norm:
            return self._batch_norm(func, args, kwargs)
        if name in ops.ACTIVATIONS and args and self._is_activation(args[0]):
            x = args[0]
            with torch.no_grad():
                a = func(x.detach().clone(), *args[1:], **kwargs)
            out = _pass_unchanged(x, a)
            if name.endswith("_") or kwargs.get("inplace") or any(v is True for v in args[1:]):
                return x.copy_(out)
            return out
        if name in _SCALING:
            if sum(self._is_activation(t) for t in leaves((args, kwargs))) > 1:
                self._fail(f"multiplies or divides two activations ({name})")
        elif name not in _PLAIN and name not in ops.SIZE_READS and any(self._is_activation(t) for t in leaves((args, kwargs))):
            self._fail(f"calls {name}")
        return func(*args, **kwargs)

    def _layer(self, func, args, kwargs):
        names = ("input", "weight", "bias")
        given = dict(zip(names, args), **{k: v for k, v in kwargs.items() if k in names})
        rest = {k: v for k, v in kwargs.items() if k not in names}
        x, w, b = given["input"], given["weight"], given.get("bias")
        wname = self.names.get(id(w))
        layer = lambda a, w_, b_: func(a, w_, b_, *args[3:], **rest)  # noqa: E731
        if wname in self.fold:
            with torch.no_grad():
                y = layer(x, w, b)
            self.pending[id(y)] = (x, w, b, layer, wname, _LAYERS[func])
            self.keep_alive.append(y)
            return y
        return self._capture(wname, _alpha_beta(layer, x, w, b, _LAYERS[func]), _LAYERS[func])

    def _batch_norm(self, func, args, kwargs):
        keys = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
        p = dict(zip(keys, args), **kwargs)
        if p.get("running_mean") is None or p.get("training"):
            self._fail("is a BatchNorm using batch statistics")
        pend = self.pending.pop(id(p["input"]), None)
        if pend is None:  # on its own: z-rule of its affine map, the plain gradient
            return self._capture(self.names.get(id(p.get("weight"))), func(*args, **kwargs), 1)
        x, w, b, layer, wname, channel_dim = pend
        scale = (p["running_var"] + p.get("eps", 1e-5)).rsqrt()
        if p.get("weight") is not None:
            scale = scale * p["weight"].detach()
        shift = -p["running_mean"] * scale + (0 if p.get("bias") is None else p["bias"].detach())
        wf = w.detach() * scale.reshape(-1, *[1] * (w.dim() - 1))
        bf = shift if b is None else b.detach() * scale + shift
        return self._capture(wname, _alpha_beta(layer, x, wf, bf, channel_dim), channel_dim)


class _Session:
    """Eval mode and module-name hooks (for error messages) on `model`, both undone on exit."""

    def __init__(self, model: nn.Module):
        self.model, self.stack = model, []

    def __enter__(self):
        self.was_training, self.handles = self.model.training, []
        try:
            self.model.eval()
            for name, m in self.model.named_modules():
                self.handles.append(m.register_forward_pre_hook(lambda *_, n=name: self.stack.append(n)))
                self.handles.append(m.register_forward_hook(self._pop, always_call=True))
        except BaseException:
            self.__exit__()
            raise
        return self

    def _pop(self, *_) -> None:
        self.stack.pop()

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.model.train(self.was_training)


def _relevance(model: nn.Module, x: Tensor, y: Tensor, fold: set[str], stack: list[str]):
    """(logits, {weight name: [(relevance at the layer output, channel dim)]}) for one batch."""
    mode = _LRP(named_tensors(model), fold, stack)
    inp = x.detach().requires_grad_(True).clone()
    with torch.enable_grad(), mode:
        logits = model(inp)
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        raise ValueError(f"relevance: the model must return (batch, classes) logits, got {type(logits).__name__}"
                         + (f" of shape {list(logits.shape)}" if isinstance(logits, Tensor) else ""))
    if y.shape != (x.shape[0],) or bool(((y < 0) | (y >= logits.shape[1])).any()):
        raise ValueError(f"relevance: labels must be ({x.shape[0]},) ints in [0, {logits.shape[1]}), "
                         f"got shape {list(y.shape)}")
    names = list(mode.captured)
    outs = [o for n in names for o, _ in mode.captured[n]]
    seed = F.one_hot(y, logits.shape[1]).to(logits.dtype)
    grads = torch.autograd.grad(logits, outs, seed, allow_unused=True) if outs else []
    rel, it = {}, iter(zip(outs, grads))
    for n in names:
        rel[n] = []
        for _, dim in mode.captured[n]:
            o, g = next(it)
            rel[n].append((o.detach() * g if g is not None else torch.zeros_like(o), dim))
    return logits.detach(), rel


def layer_relevance(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """LRP alpha=2 beta=1 relevance of the true class `y` ((batch,) int64) for inputs `x` (both on the
    model's device), at the output of every conv / Linear (after its BatchNorm when one is folded in) and
    unfolded BatchNorm, by module name: tensors shaped like the layer's output (batch, C, ...), summed
    over repeated calls of a module. The model runs in eval mode (restored after)."""
    with _Session(model) as s:
        fold = set(batchnorm_after(record(model, x[:1])))
        _, rel = _relevance(model, x, y, fold, s.stack)
    out = {}
    for n, parts in rel.items():
        total = parts[0][0]
        for r, _ in parts[1:]:
            total = total + r
        out[module_of(n)] = total
    return out


def _per_channel(r: Tensor, dim: int) -> Tensor:
    """(batch, C): relevance averaged over every position but the batch and channel dims."""
    r = r.movedim(dim, 1)
    return r.reshape(r.shape[0], r.shape[1], -1).mean(2)


def class_weighted(class_sums: Tensor, counts: Tensor, correct: Tensor) -> Tensor:
    """(C,) scores from per-class sums of per-image channel scores (classes, C), images per class (classes,)
    and correctly classified images per class: class means weighted by sigmoid(max_acc / acc_c), averaged
    over the classes present, absolute value, L2-normalised."""
    present = counts > 0
    means = class_sums[present] / counts[present, None]
    acc = correct[present].to(means.dtype) / counts[present]
    ratio = acc / acc.max() if bool(acc.max() > 0) else torch.ones_like(acc)
    s = (torch.sigmoid(1 / ratio)[:, None] * means).mean(0).abs()
    s = s / s.amax().clamp_min(torch.finfo(s.dtype).tiny)  # first to max 1: squares of tiny scores underflow
    return s / s.norm().clamp_min(torch.finfo(s.dtype).tiny)


def _device(model: nn.Module) -> torch.device:
    p = next(itertools.chain(model.parameters(), model.buffers()), None)
    return p.device if p is not None else torch.device("cpu")


def layer_scores(model: nn.Module, batches: Iterable, num_classes: Optional[int] = None,
                 trace: Optional[Trace] = None) -> dict[str, Tensor]:
    """FRS score of every channel of every conv / Linear / unfolded BatchNorm output, by weight name:
    (C,) float tensors with L2 norm 1 (see `class_weighted`), on the model's device.

    batches: iterable of (x, y), y int labels of x's images. trace: a recorded forward of the model (a
    DependencyGraph's), to find the BatchNorms to fold; recorded from the first batch when None."""
    from tqdm import tqdm

    device = _device(model)
    sums: dict[str, Tensor] = {}
    counts = correct = fold = None
    with _Session(model) as s:
        for batch in tqdm(batches, desc="FRS relevance", delay=PROGRESS_DELAY_S, disable=None, leave=False):
            x, y = batch[0].to(device), torch.as_tensor(batch[1]).to(device).long()
            if fold is None:
                fold = set(batchnorm_after(trace if trace is not None else record(model, x[:1])))
            logits, rel = _relevance(model, x, y, fold, s.stack)
            k = num_classes or logits.shape[1]
            if counts is None:
                counts = torch.zeros(k, device=device)
                correct = torch.zeros(k, device=device)
            counts.index_add_(0, y, torch.ones_like(y, dtype=counts.dtype))
            correct.index_add_(0, y, (logits.argmax(1) == y).to(counts.dtype))
            for n, parts in rel.items():
                per_image = sum(_per_channel(r, dim).float() for r, dim in parts)
                acc = sums.setdefault(n, torch.zeros(k, per_image.shape[1], device=device))
                acc.index_add_(0, y, per_image)
    if counts is None:
        raise ValueError("relevance: no batches")
    return {n: class_weighted(v, counts, correct) for n, v in sums.items()}


def relevance_scores(model: nn.Module, graph: DependencyGraph, groups: list[Group], batches: Iterable,
                     num_classes: Optional[int] = None) -> list[Tensor]:
    """FRS score of every channel of every group in `groups` ((channels,) float32 each, on the model's
    device): the sum over the group's producing layers of their L2-normalised `layer_scores`.

    batches: iterable of (x, y) with x the model's inputs and y their int labels. The model runs in eval
    mode (restored after); its parameters and buffers are not changed."""
    graph.check_current()
    scores = layer_scores(model, batches, num_classes, graph.trace)
    out = []
    for g in groups:
        parts = [m.channel_sums(scores[m.name], g.channels)
                 for m in g.members if m.role == "producer" and m.dim == 0 and m.name in scores]
        if not parts:
            raise ValueError(f"relevance: no conv, Linear or BatchNorm produces the channels of group {g.index} ({g.origin})")
        out.append(sum(parts))
    return out
