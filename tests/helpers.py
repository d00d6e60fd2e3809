"""Parametrisations, tolerances and adversarial inputs shared by the op tests; a free port for process groups;
an eval-mode forward."""

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import strategies as st

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def cpu_and_cuda():
    """Devices to test; the CUDA case carries the needs_cuda mark (skipped with a reason without a GPU)."""
    return ["cpu", pytest.param("cuda", marks=pytest.mark.needs_cuda)]


def device_dtypes():
    """Every (device, dtype) pair the ops support, as pytest params with readable ids."""
    params = []
    for device in cpu_and_cuda():
        dev = device if isinstance(device, str) else device.values[0]
        marks = () if isinstance(device, str) else device.marks
        for dtype in DTYPES:
            params.append(pytest.param(dev, dtype, marks=marks, id=f"{dev}-{str(dtype).split('.')[-1]}"))
    return params


def tolerance(dtype):
    """(rtol, atol) for comparing a result of `dtype` against a float64 reference."""
    return {
        torch.float64: (1e-10, 1e-10),
        torch.float32: (1e-4, 1e-4),
        torch.float16: (2e-3, 2e-3),
        torch.bfloat16: (1.6e-2, 1.6e-2),
    }[dtype]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a torch.distributed rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trained(model: torch.nn.Module, x: torch.Tensor, optimizer_cls, **kwargs) -> torch.optim.Optimizer:
    """One optimizer step of `model` (train mode) on `x`, so that the optimizer has state; the optimizer."""
    optimizer = optimizer_cls(model.parameters(), lr=0.01, **kwargs)
    model.train()
    model(x).sum().backward()
    optimizer.step()
    return optimizer


def run(model: torch.nn.Module, x: torch.Tensor):
    """`model`'s output on `x`, in eval mode and without grad."""
    model.eval()
    with torch.no_grad():
        return model(x)


# ---- adversarial op inputs: int64 extremes, inputs that may crash the process ----

INT64 = torch.iinfo(torch.int64)
EXTREMES = [INT64.min, INT64.min + 1, -(2**31) - 1, -1, 2**31, INT64.max - 1, INT64.max]


def index_values(channels):
    """Channel indices, mostly in range, often one of the int64 extremes or anything at all."""
    in_range = [st.integers(0, channels - 1)] if channels else []
    return st.one_of(*in_range, st.sampled_from(EXTREMES), st.integers(INT64.min, INT64.max))


def with_both_extremes(data, values):
    """values, often with INT64_MIN and INT64_MAX put in (their span, 2^64 - 1, once wrapped to 0)."""
    values = list(values)
    if len(values) >= 2 and data.draw(st.booleans()):
        i, j = data.draw(st.lists(st.integers(0, len(values) - 1), min_size=2, max_size=2, unique=True))
        values[i], values[j] = INT64.min, INT64.max
    return values


def run_apart(path, *names):
    """Runs the functions `names` of the test file `path` in one fresh interpreter: an input that crashes
    the process (SIGSEGV, glibc abort) fails this test instead of killing the suite."""
    import pyprune_fast

    code = f"import runpy; f = runpy.run_path({str(path)!r}); [f[n]() for n in {names!r}]"
    tests = Path(__file__).resolve().parent  # where `helpers` is
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(pyprune_fast.__file__).parents[1]), str(tests)])}
    res = subprocess.run([sys.executable, "-c", code], cwd=Path(path).parent, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, f"exit code {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to n inside, put back after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
