"""Fuzz the pruning pipeline with random models: nothing may crash, corrupt a model, or change outputs
when only dead channels go.

Each model comes from a small grammar over an (N, C, H, W) activation (C 4-16, H 8-16): a stem conv,
2-6 blocks, a head. Blocks: conv/BN/activation, residual adds and subtractions (also in place,
`y += x`, `relu_`), concats, depthwise and grouped convs, squeeze-excitation (convs or Linears),
permutes to channels-last with a LayerNorm and a Linear, interpolation up and pooling back, a conv or
conv/BN block applied in a loop, Siamese branches (one sub-network applied twice), a Parameter tied
into two convs, BatchNorms sharing their running stats, bare `nn.Parameter`s through `F.conv2d` (also
in a loop), channel-mixing attention (CBAM spatial attention, softmax over channels), a gated linear
unit (chunk of the channels), a transposed conv, a plain tensor attribute that forward reassigns,
and a skip around nested blocks. Heads: global pool or flatten into a Linear.

Model `i` of a run with `--seed S` has seed `S + i` (grammar and weights), so every failure is
reproduced by `--seed S+i --models 1`. Per model:

  1. building the DependencyGraph (in train or eval mode, with one module the other way, with or
     without grad, sometimes with a user's forward hook) must leave the model as it was (tensors by
     identity and value, gradients, plain tensor attributes, training flags, hooks, grad mode), and
     the hook must not see meta tensors;
  2. a plan keeping (or merging) random channels of random prunable groups is applied: a ValueError
     is a refusal and must leave the model bitwise untouched; any other exception is a crash; if
     apply returns, the model must run and give outputs of the unpruned shapes, finite, every tied
     slot must still hold one tensor and the optimizer state must be sliced along, else it is a
     silent corruption; sometimes a second plan follows; the pruned model, saved by `save_pruned` and
     rebuilt by `load_pruned` from a fresh model of its seed, must compute the same outputs;
  3. exactness (float64, on a fresh copy): zero random channels of groups that
     `dead_channels_are_exact` calls exact, record the output, remove those channels: the output
     must not change (max |y1 - y0| <= 1e-6 * max(1, max |y0|));
  4. on every third model, `ppf.prune` by a random method (l1, l2, random, bn_scale, fpgm, kcp, cup,
     ascp) and allocation (ratio 0.3, global_ratio 0.3, target_flops 0.7), checked as in 2.

  python benchmarks/fuzz.py [--models 2000] [--seed 0] [--out bench_out/fuzz]

Prints a summary table and writes every failure as {seed, model, kind, stage, error} to
OUT/failures.json (by kind, smallest model first), and the smallest model of every class of failure.
"""

from __future__ import annotations

import argparse
import copy
import io
import itertools
import json
import os
import random
import re
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pyprune_fast as ppf  # noqa: E402
from _harness import machine  # noqa: E402
from pyprune_fast.testing import dead_channels_are_exact, kill_channels  # noqa: E402

CLASSES = 5
EXACT_RTOL = 1e-6  # float64: removing exact zeros only reorders sums (~1e-16); a real change is far above
METHODS = ("l1", "l2", "random", "bn_scale", "fpgm", "kcp", "cup", "ascp")  # for ppf.prune
RUN_CHECK = "the pruned model would not run"  # apply's refusal after its run check
FAILURE_KINDS = ("crash", "silent corruption", "dirty refusal", "trace side effect", "exactness failure",
                 "reload failure")

# ----------------------------------------------------------------------------------------- the grammar


class AddOne(nn.Module):
    """x + 1: maps a dead (zero) channel to a live one."""

    def forward(self, x):
        return x + 1


ACTS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "relu_": lambda: nn.ReLU(inplace=True), "gelu": nn.GELU, "silu": nn.SiLU,
    "hardswish": nn.Hardswish, "leaky": lambda: nn.LeakyReLU(0.1), "sigmoid": nn.Sigmoid,
    "addone": AddOne, "none": nn.Identity,
}


class ConvBNAct(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 3, groups: int = 1, act: str = "relu", bias: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(cout)
        self.act = ACTS[act]()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Residual(nn.Module):
    """relu(x + body(x)), in place (`y += x`, `relu_`) or not, or x - body(x)."""

    def __init__(self, c: int, act: str, op: str):
        super().__init__()
        self.body = nn.Sequential(ConvBNAct(c, c, 3, act=act), ConvBNAct(c, c, 3, act="none"))
        self.op = op

    def forward(self, x):
        y = self.body(x)
        if self.op == "+=":
            y += x
            return y.relu_()
        return F.relu(x + y) if self.op == "+" else x - y


class Concat(nn.Module):
    def __init__(self, cin: int, widths: list[int], with_input: bool):
        super().__init__()
        self.branches = nn.ModuleList(ConvBNAct(cin, w, k) for w, k in zip(widths, (1, 3, 1)))
        self.with_input = with_input

    def forward(self, x):
        return torch.cat([b(x) for b in self.branches] + ([x] if self.with_input else []), 1)


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, hidden: int, linear: bool):
        super().__init__()
        layer = nn.Linear if linear else (lambda i, o: nn.Conv2d(i, o, 1))
        self.fc1, self.fc2, self.linear = layer(c, hidden), layer(hidden, c), linear

    def forward(self, x):
        s = x.mean((2, 3), keepdim=not self.linear)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * (s[:, :, None, None] if self.linear else s)


class ChannelsLast(nn.Module):
    """permute to (N, H, W, C), LayerNorm and Linear on the last dim, permute back."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm, self.fc = nn.LayerNorm(cin), nn.Linear(cin, cout)

    def forward(self, x):
        return self.fc(self.norm(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)


class Interpolate(nn.Module):
    def __init__(self, cin: int, cout: int, mode: str, pool: str):
        super().__init__()
        self.conv, self.mode, self.pool = ConvBNAct(cin, cout, 3), mode, pool

    def forward(self, x):
        y = self.conv(F.interpolate(x, scale_factor=2, mode=self.mode))
        return F.avg_pool2d(y, 2) if self.pool == "avg" else F.max_pool2d(y, 2)


class Loop(nn.Module):
    """One conv (c -> c), or conv+BN+relu block, applied `times` times: weight sharing across uses."""

    def __init__(self, c: int, times: int, block: bool):
        super().__init__()
        self.conv = ConvBNAct(c, c, 3) if block else nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU())
        self.times = times

    def forward(self, x):
        for _ in range(self.times):
            x = self.conv(x)
        return x


class Siamese(nn.Module):
    """One sub-network applied to x and to x flipped or blurred, then added or concatenated."""

    def __init__(self, cin: int, cout: int, other: str, join: str):
        super().__init__()
        self.sub, self.other, self.join = ConvBNAct(cin, cout, 3), other, join

    def forward(self, x):
        a, b = self.sub(x), self.sub(x.flip(3) if self.other == "flip" else F.avg_pool2d(x, 3, 1, 1))
        return a + b if self.join == "add" else torch.cat([a, b], 1)


class TiedConvs(nn.Module):
    """Two convs holding one weight Parameter (own biases), on x and relu(x), added."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.a, self.b = nn.Conv2d(cin, cout, 3, padding=1), nn.Conv2d(cin, cout, 3, padding=1)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.a(x) + self.b(F.relu(x))


class SharedStats(nn.Module):
    """Two conv+BN branches whose BatchNorms hold the same running-stat buffers, added or concatenated."""

    def __init__(self, cin: int, cout: int, join: str):
        super().__init__()
        self.a, self.b = ConvBNAct(cin, cout, 3), ConvBNAct(cin, cout, 1)
        self.b.bn.running_mean = self.a.bn.running_mean
        self.b.bn.running_var = self.a.bn.running_var
        self.join = join

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        return a + b if self.join == "add" else torch.cat([a, b], 1)


class BareConv(nn.Module):
    """Bare Parameters through F.conv2d, `times` times (cin == cout when more than once)."""

    def __init__(self, cin: int, cout: int, times: int):
        super().__init__()
        self.w = nn.Parameter(torch.randn(cout, cin, 3, 3) / (3 * cin ** 0.5))
        self.b = nn.Parameter(torch.randn(cout) * 0.1)
        self.times = times

    def forward(self, x):
        for _ in range(self.times):
            x = F.relu(F.conv2d(x, self.w, self.b, padding=1))
        return x


class GatedLinearUnit(nn.Module):
    """conv to 2w channels, chunk in two along channels: a * sigmoid(b)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, 2 * cout, 1)

    def forward(self, x):
        a, b = self.conv(x).chunk(2, dim=1)
        return a * torch.sigmoid(b)


class UpDown(nn.Module):
    """ConvTranspose2d (stride 2) + BN + relu, then pooled back."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.up, self.bn = nn.ConvTranspose2d(cin, cout, 2, stride=2), nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.avg_pool2d(F.relu(self.bn(self.up(x))), 2)


class SpatialAttention(nn.Module):
    """CBAM: x * sigmoid(conv([mean over channels, max over channels]))."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x):
        s = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.conv(s))


class ChannelSoftmax(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        return torch.softmax(self.conv(x), dim=1)


class TensorAttr(nn.Module):
    """x * scale, `scale` a plain tensor attribute that forward reassigns (as torchvision's anchor caches)."""

    def __init__(self):
        super().__init__()
        self.scale = torch.rand(1) + 0.5

    def forward(self, x):
        self.scale = self.scale.to(x.device, x.dtype)
        return x * self.scale


class Skip(nn.Module):
    """x + body(x), body a nested random sequence closed by a 1x1 conv back to x's width."""

    def __init__(self, body: nn.Sequential):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


class Head(nn.Module):
    def __init__(self, c: int, hw: int, kind: str):
        super().__init__()
        self.kind = kind
        self.fc = nn.Linear(c * (1 if kind == "gap" else hw * hw), CLASSES)

    def forward(self, x):
        if self.kind == "gap":
            return self.fc(x.mean((2, 3)))
        return self.fc(torch.flatten(x, 1) if self.kind == "flatten" else x.reshape(x.shape[0], -1))


def _divisor(rng: random.Random, c: int) -> Optional[int]:
    ds = [d for d in range(2, c) if c % d == 0]
    return rng.choice(ds) if ds else None


def _block(rng: random.Random, c: int, depth: int) -> tuple[nn.Module, int, str]:
    """A random block on c channels: (module, output channels, description)."""
    w = rng.randint(4, 16)
    kind = rng.choice(BLOCKS if depth == 0 else BLOCKS[:-1])
    if kind == "conv":
        k, act = rng.choice((1, 3)), rng.choice(list(ACTS))
        return ConvBNAct(c, w, k, act=act, bias=rng.random() < 0.3), w, f"conv({c}->{w},k{k},{act})"
    if kind == "res":
        act, op = rng.choice(("relu", "relu_", "silu")), rng.choice(("+", "+=", "-"))
        return Residual(c, act, op), c, f"res({c},{act},{op})"
    if kind == "cat":
        widths, with_input = [rng.randint(2, 8) for _ in range(rng.randint(2, 3))], rng.random() < 0.3
        out = sum(widths) + (c if with_input else 0)
        return Concat(c, widths, with_input), out, f"cat({c}->{'+'.join(map(str, widths))}{'+x' if with_input else ''})"
    if kind == "dw":
        return nn.Sequential(ConvBNAct(c, c, 3, groups=c), ConvBNAct(c, w, 1)), w, f"dw({c})+pw({c}->{w})"
    if kind == "group":
        g = _divisor(rng, c)
        if g is None:
            return _block(rng, c, depth)
        w = g * rng.randint(1, max(1, 16 // g))
        return ConvBNAct(c, w, 3, groups=g), w, f"grouped({c}->{w},g{g})"
    if kind == "se":
        hidden, linear = rng.randint(2, 8), rng.random() < 0.5
        return SqueezeExcite(c, hidden, linear), c, f"se({c},{hidden},{'linear' if linear else 'conv'})"
    if kind == "perm":
        return ChannelsLast(c, w), w, f"permute-ln-linear({c}->{w})"
    if kind == "interp":
        mode, pool = rng.choice(("nearest", "bilinear")), rng.choice(("avg", "max"))
        return Interpolate(c, w, mode, pool), w, f"interp({c}->{w},{mode},{pool})"
    if kind == "loop":
        times, block = rng.randint(2, 3), rng.random() < 0.5
        return Loop(c, times, block), c, f"loop({'conv-bn-relu' if block else 'conv-relu'},{c},x{times})"
    if kind == "siamese":
        other, join = rng.choice(("flip", "blur")), rng.choice(("add", "cat"))
        return Siamese(c, w, other, join), w * (2 if join == "cat" else 1), f"siamese({c}->{w},{other},{join})"
    if kind == "tied":
        return TiedConvs(c, w), w, f"tied-param({c}->{w})"
    if kind == "shared-bn":
        join = rng.choice(("add", "cat"))
        return SharedStats(c, w, join), w * (2 if join == "cat" else 1), f"shared-bn-stats({c}->{w},{join})"
    if kind == "bare":
        times = rng.choice((1, 1, 2))
        w = c if times > 1 else w
        return BareConv(c, w, times), w, f"bare-conv2d({c}->{w},x{times})"
    if kind == "glu":
        return GatedLinearUnit(c, w), w, f"glu-chunk({c}->2x{w})"
    if kind == "attr":
        return TensorAttr(), c, f"plain-tensor-attr({c})"
    if kind == "updown":
        return UpDown(c, w), w, f"convtranspose-pool({c}->{w})"
    if kind == "spatial":
        return SpatialAttention(), c, f"spatial-attention({c})"
    if kind == "softmax":
        return ChannelSoftmax(c, w), w, f"softmax-over-channels({c}->{w})"
    # skip: nested blocks, then a 1x1 conv back to c
    mods, descs, cc = [], [], c
    for _ in range(rng.randint(1, 2)):
        m, cc, d = _block(rng, cc, depth + 1)
        mods.append(m)
        descs.append(d)
    mods.append(ConvBNAct(cc, c, 1, act="none"))
    return Skip(nn.Sequential(*mods)), c, f"skip[{' '.join(descs)} conv({cc}->{c},k1)]"


BLOCKS = ("conv", "res", "cat", "dw", "group", "se", "perm", "interp", "loop", "siamese", "tied",
          "shared-bn", "bare", "spatial", "softmax", "glu", "updown", "attr", "skip")  # "skip" last: not nested


def build(seed: int) -> tuple[nn.Module, torch.Tensor, str]:
    """The model, example input and description of `seed` (same seed, same model and weights)."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    c, hw = rng.randint(4, 16), rng.choice((8, 12, 16))
    mods, descs = [ConvBNAct(3, c, 3)], [f"stem(3->{c})"]
    for _ in range(rng.randint(2, 6)):
        m, c, d = _block(rng, c, 0)
        mods.append(m)
        descs.append(d)
    head = rng.choice(("gap", "flatten", "reshape"))
    mods.append(Head(c, hw, head))
    descs.append(f"head({head},{c}->{CLASSES})")
    model, x = nn.Sequential(*mods), torch.randn(2, 3, hw, hw)
    with torch.no_grad():  # BatchNorms that are not the identity
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    if rng.random() < 0.2:  # weights and input in channels-last memory format
        model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
        descs.append("channels_last")
    if rng.random() < 0.2:  # some parameters frozen
        frozen = [p for p in model.parameters() if rng.random() < 0.3]
        for p in frozen:
            p.requires_grad_(False)
        descs.append(f"frozen({len(frozen)})")
    return model.eval(), x, " | ".join(descs)


# ------------------------------------------------------------------------------------ the model check


def snapshot(model: nn.Module) -> dict:
    """What must not change: every tensor slot (identity, value, grad), plain tensor attributes,
    training flags, forward hooks, grad mode."""
    def entry(t):
        if not isinstance(t, torch.Tensor):
            return t
        grad = None if t.grad is None else t.grad.detach().clone()
        return id(t), t.dtype, t.device, t.requires_grad, t.detach().clone(), grad

    state = {"grad mode": torch.is_grad_enabled()}
    for name, m in model.named_modules():
        state[name, "training"] = m.training
        for k in ("_forward_hooks", "_forward_pre_hooks"):
            state[name, k] = id(getattr(m, k)), [(h, id(f)) for h, f in getattr(m, k).items()]
        for k, v in list(m._parameters.items()) + list(m._buffers.items()) + list(vars(m).items()):
            if isinstance(v, torch.Tensor) or k in m._parameters or k in m._buffers:
                state[name, k] = entry(v)
    return state


def first_difference(before: dict, after: dict) -> Optional[str]:
    """The first entry that differs (None if none does)."""
    for key in before.keys() | after.keys():
        b, a = before.get(key, "absent"), after.get(key, "absent")
        if isinstance(b, tuple) and isinstance(a, tuple) and len(a) == len(b) == 6:
            same = a[:4] == b[:4] and _equal(a[4], b[4]) and _equal(a[5], b[5])
        else:
            same = a == b
        if not same:
            return f"{'.'.join(map(str, key))} changed"
    return None


def _equal(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return a.device == b.device and a.shape == b.shape and (a.device.type == "meta" or torch.equal(a, b))


def normalized(text: str, limit: int = 140) -> str:
    """`text` without its numbers, names and lists: one line per kind of message."""
    s = re.sub(r"'[^']*'|\"[^\"]*\"|`[^`]*`", "'…'", text.split("\n")[0])
    s = re.sub(r"\[[^\]]*\]", "[…]", s)
    s = re.sub(r"\b\d+(\.\d+)?(e[+-]?\d+)?\b", "N", s)
    return re.sub(r"\b[\w-]+(\.[\w-]+)+\b", "X", s)[:limit]


SUSPECTS = ("spatial-attention", "softmax-over-channels", "sigmoid)", "addone)")  # ops dead channels change


def failure_class(f: dict) -> str:
    """Failures of one cause share a class; an exactness failure's is the first block, from the one
    that made the dead channels on, holding an op that mixes channels or maps 0 to non-zero."""
    group = re.search(r"of group \d+ \(\w+ (\d+)\b", f["error"])
    if f["kind"] == "exactness failure" and group:
        later = " | ".join(f["model"].split(" | ")[int(group.group(1)):])
        found = sorted((later.find(k), k.rstrip(")")) for k in SUSPECTS if k in later)
        return f"exactness failure: dead channels reach {found[0][1] if found else 'no op known to see them'}"
    return f"{f['kind']} in {f['stage']}: {normalized(f['error'].split(' [at ')[0], 90)}"


def _error(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)[-3:]
    where = " <- ".join(f"{os.path.basename(f.filename)}:{f.lineno}" for f in reversed(tb))
    return f"{type(e).__name__}: {str(e)[:600]} [at {where}]"


@dataclass
class Summary:
    models: int = 0
    graphs: int = 0
    groups: int = 0
    prunable: int = 0
    groups_pruned: int = 0
    plans_applied: int = 0
    prune_calls: int = 0
    prune_ok: int = 0
    exact_checks: int = 0
    exact_failed: int = 0
    refusals: Counter = field(default_factory=Counter)
    refusal_models: dict = field(default_factory=dict)  # refusal class -> [(seed, model)]
    blocks: dict = field(default_factory=dict)  # block kind -> Counter of the random plan's outcomes
    current: tuple = ()  # (seed, model) being checked
    failures: list = field(default_factory=list)

    def count(self, kind: str) -> int:
        return sum(f["kind"] == kind for f in self.failures)

    def run_check_refusals(self) -> int:
        """Plans refused because the pruned model would not run: no model here fixes a width in its
        code, so each is a group the graph wrongly called prunable (caught by apply's last check)."""
        return sum(n for k, n in self.refusals.items() if RUN_CHECK in k)


class Failure(Exception):
    def __init__(self, kind: str, stage: str, error: str):
        super().__init__(f"{kind} in {stage}: {error}")
        self.kind, self.stage, self.error = kind, stage, error


def _guarded(stage: str, model: nn.Module, summary: Summary, fn: Callable):
    """fn(); a ValueError is a refusal (None returned) that must leave `model` bitwise untouched."""
    before = snapshot(model)
    try:
        return fn()
    except ValueError as e:
        changed = first_difference(before, snapshot(model))
        if changed:
            raise Failure("dirty refusal", stage, f"{changed} after {_error(e)}") from None
        key = f"{stage}: {type(e).__name__}: {normalized(str(e))}"
        summary.refusals[key] += 1
        summary.refusal_models.setdefault(key, []).append(summary.current)
        return None
    except Failure:
        raise
    except Exception as e:  # noqa: BLE001 - anything but a clear refusal is a crash
        raise Failure("crash", stage, _error(e)) from None


def _slots(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer slot, shared ones under each of their names."""
    return dict(itertools.chain(model.named_parameters(remove_duplicate=False),
                                model.named_buffers(remove_duplicate=False)))


def tied_slots(model: nn.Module) -> list[tuple[str, ...]]:
    """The slots of every tensor that several slots hold (a tied Parameter, a shared buffer)."""
    names: dict[int, list[str]] = {}
    for name, t in _slots(model).items():
        names.setdefault(id(t), []).append(name)
    return [tuple(v) for v in names.values() if len(v) > 1]


def retie(model: nn.Module, ties: list) -> None:
    """Make every slot of each tie hold the tensor of its first slot."""
    slots = _slots(model)
    for first, *others in ties:
        for name in others:
            owner, _, attr = name.rpartition(".")
            module = model.get_submodule(owner)
            (module._parameters if attr in module._parameters else module._buffers)[attr] = slots[first]


def invariants(model: nn.Module) -> tuple[list, dict]:
    """What pruning keeps: the tied slots, and which parameters are trainable."""
    return tied_slots(model), {n: p.requires_grad for n, p in model.named_parameters()}


def _runs(stage: str, model: nn.Module, x: torch.Tensor, shape: torch.Size, before: tuple, optimizer=None) -> None:
    """The pruned model must run on x, with the unpruned output shape, finite; tied slots still hold one
    tensor; parameters as trainable as before; gradients and optimizer state sliced."""
    slots, (ties, trainable) = _slots(model), before
    changed = [n for n, p in model.named_parameters() if p.requires_grad != trainable.get(n)]
    if changed:
        raise Failure("silent corruption", stage, f"{changed[0]}.requires_grad is now {slots[changed[0]].requires_grad}")
    for names in ties:
        if len({id(slots[n]) for n in names}) > 1:
            shapes = ", ".join(f"{n} {tuple(slots[n].shape)}" for n in names)
            raise Failure("silent corruption", stage, f"tied slots no longer hold one tensor: {shapes}")
    try:
        with torch.no_grad():
            y = model(x)
    except Exception as e:  # noqa: BLE001
        raise Failure("silent corruption", stage, f"the pruned model fails: {_error(e)}") from None
    if y.shape != shape or not torch.isfinite(y).all():
        raise Failure("silent corruption", stage, f"output shape {tuple(y.shape)} (was {tuple(shape)}) "
                      f"or not finite ({int((~torch.isfinite(y)).sum())} non-finite)")
    for name, p in model.named_parameters():
        if p.grad is not None and p.grad.shape != p.shape:
            raise Failure("silent corruption", stage, f"{name}.grad {tuple(p.grad.shape)} for a parameter of shape "
                          f"{tuple(p.shape)}")
    for p, st in (optimizer.state.items() if optimizer is not None else ()):
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and v.dim() and v.shape != p.shape:
                raise Failure("silent corruption", stage, f"optimizer state {k} {tuple(v.shape)} for a parameter "
                              f"of shape {tuple(p.shape)}")


def _graph(stage: str, model: nn.Module, x: torch.Tensor, summary: Summary):
    """The DependencyGraph of model (None: refused), checked to leave the model as it was."""
    before = snapshot(model)
    graph = _guarded(stage, model, summary, lambda: ppf.DependencyGraph(model, x))
    changed = first_difference(before, snapshot(model))
    if changed:
        raise Failure("trace side effect", stage, changed)
    return graph


def _random_plan(rng: random.Random, graph) -> tuple[Optional[object], int]:
    """A plan keeping random channels (sometimes merging) of random prunable groups, and its size."""
    groups = [g for g in graph.prunable_groups if g.channels >= 2]
    if not groups:
        return None, 0
    plan = ppf.Plan(graph)
    for g in rng.sample(groups, rng.randint(1, len(groups))):
        if rng.random() < 0.2 and not g.uniform:
            plan.merge(g, _random_assignment(rng, g))
        else:
            plan.keep(g, _random_keep(rng, g))
    return plan, len(plan.entries)


def _random_keep(rng: random.Random, g) -> list[int]:
    """Some (not all) random channels of group `g`: as many in each of its divisions, at the same local
    positions where it is uniform (see Group.divisions)."""
    n = g.channels // g.divisions
    k = rng.randint(1, n - 1)
    picks = [rng.sample(range(n), k)] * g.divisions if g.uniform else [rng.sample(range(n), k) for _ in range(g.divisions)]
    return sorted(j * n + i for j, local in enumerate(picks) for i in local)


def _random_assignment(rng: random.Random, g) -> list[int]:
    """A random clustering of group `g`'s channels into fewer clusters, as many in each division, none across."""
    n = g.channels // g.divisions
    clusters = rng.randint(1, n - 1)
    assignment = []
    for j in range(g.divisions):
        ids = list(range(clusters)) + [rng.randrange(clusters) for _ in range(n - clusters)]
        rng.shuffle(ids)
        assignment += [j * clusters + c for c in ids]
    return assignment


def _optimizer(rng: random.Random, model: nn.Module, x: torch.Tensor):
    """Sometimes an optimizer (SGD with momentum, or Adam) with state and gradients, to be sliced along."""
    if rng.random() >= 0.3:
        return None
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9) if rng.random() < 0.5 else \
        torch.optim.Adam(model.parameters(), lr=1e-3)
    model(x).square().mean().backward()
    opt.step()
    return opt


def _check_plan(rng: random.Random, model: nn.Module, x: torch.Tensor, summary: Summary) -> None:
    train = rng.random() < 0.3  # some models traced in training mode, with one module the other way
    model.train(train)
    mods = list(model.modules())
    rng.choice(mods).train(not train)
    seen: list[str] = []  # devices a user's forward hook saw
    hook = rng.choice(mods).register_forward_hook(lambda m, i, o: seen.append(getattr(o, "device", "cpu").type)) \
        if rng.random() < 0.2 else None
    with torch.set_grad_enabled(rng.random() < 0.7):
        graph = _graph("graph", model, x, summary)
    if hook is not None:
        hook.remove()
    model.eval()
    if "meta" in seen:
        raise Failure("trace side effect", "graph", "a forward hook saw meta tensors")
    if graph is None:
        return
    summary.graphs += 1
    summary.groups += len(graph.groups)
    summary.prunable += len(graph.prunable_groups)
    optimizer = _optimizer(rng, model, x)
    with torch.no_grad():
        shape = model(x).shape
    for again in range(rng.choice((1, 2))):  # sometimes a second plan on the pruned model
        if optimizer is not None or again:  # after an optimizer step (same tensors, new values) or a prune
            graph = _graph("graph after a prune" if again else "graph", model, x, summary)
            if graph is None:
                return
        plan, n, before = *_random_plan(rng, graph), invariants(model)
        stage = "second apply" if again else "apply"
        if plan is None or _guarded(stage, model, summary, lambda: ppf.apply(plan, optimizer)) is None:
            return
        summary.plans_applied += 1
        summary.groups_pruned += n
        _runs(stage, model, x, shape, before, optimizer)
    _reloads(model, x, summary.current[0])


def _reloads(model: nn.Module, x: torch.Tensor, seed: int) -> None:
    """save_pruned, then load_pruned into a fresh model of `seed`: the same outputs."""
    buf = io.BytesIO()
    try:
        ppf.save_pruned(model, buf)
        buf.seek(0)
        loaded = ppf.load_pruned(lambda: build(seed)[0], buf)
        with torch.no_grad():
            y, y_loaded = model(x), loaded.eval()(x)
    except Exception as e:  # noqa: BLE001
        raise Failure("reload failure", "save_pruned/load_pruned", _error(e)) from None
    if y.shape != y_loaded.shape or not torch.allclose(y, y_loaded, rtol=1e-5, atol=1e-6):
        raise Failure("reload failure", "save_pruned/load_pruned", "the reloaded model computes other outputs")


def _check_exact(rng: random.Random, model: nn.Module, x: torch.Tensor, summary: Summary) -> None:
    ties = tied_slots(model)
    model, x = model.double(), x.double()
    retie(model, ties)  # .double() gives each module its own copy of a shared buffer
    graph = _graph("exactness graph", model, x, summary)
    exact = [g for g in graph.prunable_groups if g.channels >= 2 and dead_channels_are_exact(graph, g)] if graph else []
    if not exact:
        return
    g = rng.choice(exact)
    dead = torch.tensor(sorted(set(range(g.channels)) - set(_random_keep(rng, g))))
    kill_channels(graph, g, dead)
    plan = ppf.Plan(graph).remove(g, dead)
    with torch.no_grad():
        y0 = model(x)
    before = invariants(model)
    if _guarded("exactness apply", model, summary, lambda: ppf.apply(plan)) is None:
        return
    summary.exact_checks += 1
    _runs("exactness apply", model, x, y0.shape, before)
    with torch.no_grad():
        err = float((model(x) - y0).abs().max()) / max(1.0, float(y0.abs().max()))
    if not err <= EXACT_RTOL:
        summary.exact_failed += 1
        raise Failure("exactness failure", "exactness", f"removing dead channels {dead.tolist()} of group {g.index} "
                      f"({g.origin}, {len(g.members)} members) changed the output "
                      f"by {err:.3g} (relative to max(1, max |y|))")


def _check_prune(rng: random.Random, model: nn.Module, x: torch.Tensor, summary: Summary) -> None:
    method = rng.choice(METHODS)
    alloc = rng.choice(("ratio", "target_flops") + (() if method == "ascp" else ("global_ratio",)))
    options = {alloc: 0.7 if alloc == "target_flops" else 0.3, "progress": False}
    with torch.no_grad():
        shape = model(x).shape
    summary.prune_calls += 1
    before = invariants(model)
    stage = f"prune {method}"
    if _guarded(stage, model, summary, lambda: ppf.prune(model, x, method=method, **options)) is not None:
        summary.prune_ok += 1
        _runs(stage, model, x, shape, before)


OUTCOMES = ("failed", "refused", "pruned", "nothing to prune")


def check_model(seed: int, summary: Summary) -> None:
    """Every check on the model of `seed`; failures go to summary.failures."""
    model, x, desc = build(seed)
    rng = random.Random(seed ^ 0x5EED)
    pristine = copy.deepcopy(model)  # deepcopy keeps the sharing
    summary.models += 1
    summary.current = (seed, desc)
    checks = [_check_plan, _check_exact] + ([_check_prune] if seed % 3 == 0 else [])
    for i, check in enumerate(checks):
        before = (len(summary.failures), sum(summary.refusals.values()), summary.plans_applied)
        try:
            check(rng, model if i == 0 else copy.deepcopy(pristine), x, summary)
        except Failure as f:
            summary.failures.append({"seed": seed, "model": desc, "kind": f.kind, "stage": f.stage, "error": f.error})
        except Exception as e:  # noqa: BLE001 - a bug of this script or a crash outside the guarded calls
            summary.failures.append({"seed": seed, "model": desc, "kind": "crash", "stage": check.__name__,
                                     "error": _error(e)})
        if i == 0:
            after = (len(summary.failures), sum(summary.refusals.values()), summary.plans_applied)
            outcome = OUTCOMES[[a != b for a, b in zip(after, before)].index(True) if after != before else 3]
            for kind in set(re.findall(r"([a-z][\w-]*)[(\[]", desc)):
                summary.blocks.setdefault(kind, Counter())[outcome] += 1


def run(seed: int, models: int, time_limit: Optional[float] = None, progress: bool = False) -> Summary:
    """Check models seed, seed + 1, ... (at most `models`, stopping after `time_limit` seconds), on one
    thread: these tiny models run ~10x slower on two threads of a shared, loaded machine."""
    summary, start, threads = Summary(), time.perf_counter(), torch.get_num_threads()
    seeds = range(seed, seed + models)
    if progress:
        from tqdm import tqdm
        seeds = tqdm(seeds, desc="fuzz", unit="model")
    torch.set_num_threads(1)
    try:
        for s in seeds:
            if time_limit is not None and time.perf_counter() - start > time_limit:
                break
            check_model(s, summary)
    finally:
        torch.set_num_threads(threads)
    return summary


def table(summary: Summary) -> str:
    s = summary
    rows = [("models", s.models), ("graphs built", s.graphs), ("groups (prunable)", f"{s.groups} ({s.prunable})"),
            ("plans applied (groups pruned)", f"{s.plans_applied} ({s.groups_pruned})"),
            ("ppf.prune calls (returned)", f"{s.prune_calls} ({s.prune_ok})"),
            ("refusals, model untouched", sum(s.refusals.values())),
            ("  of which apply's run check", s.run_check_refusals()),
            ("exactness checks done / failed", f"{s.exact_checks} / {s.exact_failed}")]
    rows += [("crashes" if kind == "crash" else kind + "s", s.count(kind)) for kind in FAILURE_KINDS]
    width = max(len(r[0]) for r in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines.append(f"\nthe random plan, by the blocks its model holds (models: {', '.join(OUTCOMES)}):")
    lines += [f"  {k:<22} {sum(c.values()):5d}: " + " / ".join(str(c[o]) for o in OUTCOMES)
              for k, c in sorted(s.blocks.items())]
    if s.refusals:
        lines.append("refusals by message:")
        for m, n in s.refusals.most_common():
            seed, desc = min(s.refusal_models[m], key=lambda sd: (len(sd[1]), sd[0]))
            lines += [f"  {n:5d}  {m}", f"         smallest: seed {seed}: {desc}"]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=int, default=200, help="number of models (seeds SEED .. SEED+N-1)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the first model")
    ap.add_argument("--out", default="bench_out/fuzz", help="folder for failures.json")
    with machine(ap, argv) as args:
        if args.models < 1:
            ap.error(f"--models must be >= 1, got {args.models}")
        start = time.perf_counter()
        summary = run(args.seed, args.models, progress=True)
        print(table(summary))
        print(f"{summary.models} models in {time.perf_counter() - start:.1f} s")
        os.makedirs(args.out, exist_ok=True)
        failures = sorted(summary.failures, key=lambda f: (f["kind"], len(f["model"]), f["seed"]))
        with open(os.path.join(args.out, "failures.json"), "w") as fh:
            json.dump(failures, fh, indent=1)
        classes: dict[str, list] = {}
        for f in failures:
            classes.setdefault(failure_class(f), []).append(f)
        for name, fs in sorted(classes.items(), key=lambda kv: -len(kv[1])):
            f = min(fs, key=lambda f: (len(f["model"]), f["seed"]))
            print(f"\n{len(fs)} x {name}\n  smallest: seed {f['seed']}: {f['model']}\n  {f['error']}")
        print(f"\n{len(failures)} failures written to {os.path.join(args.out, 'failures.json')}")
        return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
