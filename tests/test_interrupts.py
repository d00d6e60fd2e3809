"""apply is all or nothing under an exception raised at any line it runs: a tracer (sys.settrace) raises
a KeyboardInterrupt, or a RuntimeError, at the k-th line event executed in pyprune_fast's files, for
every k up to the number of line events of a whole apply; afterwards parameters (identity, data, dtype,
device, requires_grad), gradients, buffers, module attributes and classes, optimizer state, grad mode,
torch's function mode stack and graph.stale are exactly as before, and the one graph and plan still
apply for real at the end."""

import os
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import _get_current_function_mode_stack

import pyprune_fast as ppf
from helpers import torch_threads, trained
from nets import Tied

PACKAGE = os.path.dirname(ppf.__file__) + os.sep


class Injector:
    """A tracer counting line events in pyprune_fast's files; raises `error` at event number `at`
    (tracing stops there: CPython drops a tracer that raises)."""

    def __init__(self, at: int, error: type):
        self.at, self.error, self.count, self.raised = at, error, 0, None

    def __call__(self, frame, event, arg):
        return self.line if frame.f_code.co_filename.startswith(PACKAGE) else None

    def line(self, frame, event, arg):
        if event == "line":
            if self.count == self.at:
                self.raised = self.error(f"injected at line event {self.at}")
                raise self.raised
            self.count += 1
        return self.line


def traced_apply(plan, optimizer, at: int, error: type):
    """apply under an Injector: (the injector, the exception apply raised or None)."""
    injector, previous = Injector(at, error), sys.gettrace()
    sys.settrace(injector)
    try:
        ppf.apply(plan, optimizer)
    except BaseException as e:  # the injected KeyboardInterrupt included
        return injector, e
    finally:
        sys.settrace(previous)
    return injector, None


def _copy(v):
    return dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else set(v)


def _same_items(now, then) -> bool:
    """A dict, list or set holds the same objects as its copy `then` (dicts: same keys, in order)."""
    if isinstance(now, dict):
        return list(now) == list(then) and all(now[k] is v for k, v in then.items())
    if isinstance(now, list):
        return len(now) == len(then) and all(a is b for a, b in zip(now, then))
    return len(now) == len(then) and all(any(a is b for b in then) for a in now)


class Snapshot:
    """Everything apply may change: objects by identity, tensors also by value."""

    def __init__(self, model: nn.Module, optimizer, graph):
        self.model, self.optimizer, self.graph = model, optimizer, graph
        self.modules = [(m, type(m), dict(vars(m)),
                         {k: _copy(v) for k, v in vars(m).items() if isinstance(v, (dict, list, set))})
                        for m in model.modules()]
        tensors = {id(t): t for m in model.modules() for t in (*m._parameters.values(), *m._buffers.values())
                   if t is not None}
        self.tensors = [(t, t.detach().clone(), t.data_ptr(), t.dtype, t.device, t.shape, t.requires_grad, t.grad,
                         None if t.grad is None else t.grad.clone()) for t in tensors.values()]
        self.state = {p: (s, {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()})
                      for p, s in optimizer.state.items()}
        self.flags = self.global_flags()

    def global_flags(self):
        return (torch.is_grad_enabled(), torch.is_inference_mode_enabled(), len(_get_current_function_mode_stack()),
                self.graph.stale)

    def assert_same(self, when: str) -> None:
        assert self.global_flags() == self.flags, f"{when}: grad/inference mode, mode stack or graph.stale changed"
        for m, cls, attrs, containers in self.modules:
            now = vars(m)
            assert type(m) is cls, f"{when}: {cls.__name__} became {type(m).__name__}"
            assert now.keys() == attrs.keys() and all(now[k] is v for k, v in attrs.items()), \
                f"{when}: attributes of a {cls.__name__} changed: " \
                f"{[k for k in now.keys() | attrs.keys() if now.get(k, None) is not attrs.get(k, None)]}"
            for k, items in containers.items():
                assert _same_items(now[k], items), f"{when}: {cls.__name__}.{k} changed"
        for t, value, ptr, dtype, device, shape, requires_grad, grad, grad_value in self.tensors:
            assert (t.dtype, t.device, t.shape, t.requires_grad) == (dtype, device, shape, requires_grad), \
                f"{when}: a tensor became {t.dtype} {tuple(t.shape)} on {t.device}, requires_grad={t.requires_grad}"
            assert t.data_ptr() == ptr and torch.equal(t.detach(), value), f"{when}: a tensor's data changed"
            assert t.grad is grad, f"{when}: a gradient was replaced"
            assert grad is None or torch.equal(grad, grad_value), f"{when}: a gradient's value changed"
        assert self.optimizer.state.keys() == self.state.keys(), f"{when}: optimizer state gained or lost entries"
        for p, (s, values) in self.state.items():
            assert self.optimizer.state[p] is s and s.keys() == values.keys(), f"{when}: optimizer state replaced"
            assert all(torch.equal(s[k], v) if torch.is_tensor(v) else s[k] == v for k, v in values.items()), \
                f"{when}: optimizer state changed"


class Residual(nn.Module):
    """conv-BN-ReLU, a residual conv, pool, Linear."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn, self.c2, self.fc = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.Conv2d(6, 6, 1), \
            nn.Linear(6, 3)

    def forward(self, x):
        y = F.relu(self.bn(self.c1(x)))
        return self.fc((y + self.c2(y)).mean((2, 3)))


class Attention(nn.Module):
    """Tokens through nn.MultiheadAttention (pruning a head turns it into PrunedMultiheadAttention)."""

    def __init__(self):
        super().__init__()
        self.embed, self.attn, self.head = nn.Linear(4, 8), nn.MultiheadAttention(8, 2), nn.Linear(8, 3)

    def forward(self, x):
        h = self.embed(x)
        return self.head(self.attn(h, h, h, need_weights=False)[0] + h)


class TiedWithHook(Tied):
    """Tied (a conv and a Linear weight each held by two modules, BatchNorms sharing their running
    statistics) with a call counter buffer that the forward updates in place, and a forward pre-hook, so
    that the graph and apply's run check run the model for real."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))
        self.head.register_forward_pre_hook(lambda module, args: None)

    def forward(self, x):
        self.calls += 1
        return super().forward(x)


def with_grads(model, x, optimizer_cls, **kwargs):
    """The model after one optimizer step (so the optimizer has state), with fresh gradients."""
    optimizer = trained(model, x, optimizer_cls, **kwargs)
    model(x).sum().backward()
    return model.eval(), optimizer


def residual():
    x = torch.randn(2, 3, 5, 5)
    return (*with_grads(Residual(), x, torch.optim.SGD, momentum=0.9), x)


def attention():
    x = torch.randn(3, 2, 4)
    return (*with_grads(Attention(), x, torch.optim.Adam), x)


def tied():
    x = torch.randn(2, 3, 5, 5)
    return (*with_grads(TiedWithHook(), x, torch.optim.SGD), x)


def one_plan(graph):
    """Two channels (or one head) from every prunable group."""
    plan = ppf.Plan(graph)
    for group in graph.prunable_groups:
        plan.remove(group, [0] if group.channels == 2 else [1, group.channels - 1])
    return plan


# model, exception, stride between the injection points: every line event for one model (with either
# exception), every third for the others, to keep the test within seconds (an apply runs 4,000 to 5,500)
CASES = [(residual, KeyboardInterrupt, 1), (residual, RuntimeError, 1), (attention, KeyboardInterrupt, 3),
         (tied, KeyboardInterrupt, 3)]


@pytest.fixture
def one_thread():
    """Tiny tensors: torch's worker threads only add waiting, a lot of it on a loaded machine."""
    with torch_threads(1):
        yield


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("make, error, stride", CASES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_an_exception_at_any_line_of_apply_leaves_everything_as_it_was(make, error, stride):
    model, optimizer, x = make()
    graph = ppf.DependencyGraph(model, x)
    plan = one_plan(graph)
    assert plan.entries
    snapshot = Snapshot(model, optimizer, graph)
    injected = 0
    for at in range(0, 10**6, stride):
        injector, raised = traced_apply(plan, optimizer, at, error)
        if injector.raised is None:  # the whole apply ran in fewer line events: it applied for real
            break
        injected += 1
        # a RuntimeError in the run check's forward pass is reported as the pruned model failing to run
        assert raised is injector.raised or (error is RuntimeError and raised.__cause__ is injector.raised), \
            f"at line event {at}: {type(raised).__name__}: {raised}"
        snapshot.assert_same(f"after an exception at line event {at}")
    assert raised is None and injector.count > 1000 and injected == len(range(0, injector.count, stride))
    assert graph.stale and optimizer.state.keys() == snapshot.state.keys()
    with torch.no_grad():
        model(x)
    model.train()
    model(x).sum().backward()
    optimizer.step()  # parameters, gradients and optimizer state agree in shape
