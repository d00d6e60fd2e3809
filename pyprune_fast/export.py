"""`export_onnx`: a (pruned) model written as an ONNX file, with an error naming the op that cannot be."""

from __future__ import annotations

import importlib
import os
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from .graph import model_inputs

__all__ = ["OPSET", "eval_mode", "export_onnx", "require"]

OPSET = 17  # onnxruntime >= 1.14 runs it; LayerNorm is one op from 17 on
PIP_NAMES = {"onnxruntime": "onnxruntime (or onnxruntime-gpu for CUDA)"}


def require(module: str, why: str) -> Any:
    """`module` imported, or ImportError naming `why` needs it and the pip package that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pip = PIP_NAMES.get(module, module)
        raise ImportError(f"{why} needs the package {module!r}, which is not installed (pip install {pip})") from None


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode inside the block, every module's train flag as it was after it."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _failed_op(error: BaseException) -> str:
    """The op an exporter error names ("aten::foo"), or "" when it names none."""
    found = re.search(r"operator '?((?:[a-z_]+::)?[A-Za-z0-9_.]+)'?", str(error))
    return found.group(1) if found else ""


def export_onnx(model: nn.Module, example_inputs: Any, path, *, opset_version: int = OPSET) -> Path:
    """Write `model` (pruned or not) to `path` as ONNX, traced on `example_inputs` (a tensor, a tuple or list
    of positional inputs, or a dict of keyword inputs) in eval mode, and return the path.

    Uses torch's TorchScript-based exporter (`dynamo=False`: it needs only the `onnx` package, not
    onnxscript), with nn.MultiheadAttention's fused inference path off (it has no ONNX form). Inputs are named input0, input1, ... (keyword inputs by their keyword).
    The model is left as it was (train/eval mode, device, parameters). A model that cannot be exported raises
    ValueError naming the op; a missing `onnx` package, ImportError naming the pip package.
    """
    require("onnx", "export_onnx")
    if not isinstance(model, nn.Module):
        raise TypeError(f"export_onnx: model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"export_onnx: path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"export_onnx: the folder {str(path.parent)!r} of {str(path)!r} does not exist")
    args, kwargs = model_inputs(example_inputs)
    names = [f"input{i}" for i in range(len(args))] + list(kwargs)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:  # without nn.MultiheadAttention's fused eval path (aten::_native_multi_head_attention has no ONNX form)
        torch.backends.mha.set_fastpath_enabled(False)
        with eval_mode(model), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
            torch.onnx.export(model, args, str(path), kwargs=kwargs or None, dynamo=False,
                              opset_version=opset_version, input_names=names)
    except Exception as e:  # the exporter's errors are of many types; one ValueError with the op
        op, said = _failed_op(e), (str(e).strip().splitlines() or [""])[0].split(" Please feel free")[0]
        what = f"the op {op} is not supported" if op else "the exporter failed"
        raise ValueError(f"export_onnx: {type(model).__name__} cannot be exported to ONNX (opset {opset_version}): "
                         f"{what} ({type(e).__name__}: {said})") from e
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return path
