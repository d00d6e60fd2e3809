"""Parametrisations and tolerances shared by the op tests; a free port for process groups; an eval-mode forward."""

import socket

import pytest
import torch

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


def run(model: torch.nn.Module, x: torch.Tensor):
    """`model`'s output on `x`, in eval mode and without grad."""
    model.eval()
    with torch.no_grad():
        return model(x)
