"""Command line: `pyprune-fast prune | inspect | bench` (also `python -m pyprune_fast`).

    pyprune-fast prune --model torchvision:resnet50 --weights trained.pt --method cup --target-flops 0.45 --out pruned.pt
    pyprune-fast prune --model torchvision:resnet18 --ratio 0.3 --measure eager
    pyprune-fast inspect --model torchvision.models:mobilenet_v2 --input-shape 1,3,160,160
    pyprune-fast bench ops --min-time 0.2

Bad input (an unknown model, a ratio of 1.5, an --out folder that does not exist, a checkpoint that does
not fit the model, an input shape the model fails on) ends with a one-line message on stderr and exit
status 2, before anything is pruned or written; `main` returns the exit status instead of raising.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn, Optional, Sequence

import torch
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from .latency import BACKENDS
from .progress import Stages, choice
from .serialization import _FORMAT as PRUNED_FORMAT

__all__ = ["build_model", "classifier_name", "main", "plot_file", "writable_file"]

PROG = "pyprune-fast"
BENCHMARKS = ("ops", "clustering", "prune", "methods", "latency")
USER_ERRORS = (ValueError, TypeError, ImportError, OSError)  # reported in one line, exit status 2
CHECKPOINT_KEYS = ("state_dict", "model", "model_state_dict")  # where a training checkpoint keeps the weights
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DistributedDataParallel, torch.compile


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on stderr (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_one_line(message)}\n")


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _failure(e: BaseException) -> str:
    """An exception from user code in words: its type and the first line of its message."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def build_model(spec: str) -> nn.Module:
    """The model named by `spec`: a torchvision model name (`torchvision:resnet50` or just `resnet50`,
    built with random weights) or `package.module:function`, any importable callable that returns an
    nn.Module when called without arguments. ImportError, ValueError or TypeError when it cannot."""
    module_name, _, attr = spec.rpartition(":")
    if module_name in ("", "torchvision"):
        try:
            import torchvision
        except ImportError as e:
            raise ImportError(f"the torchvision model {attr!r} needs torchvision, which cannot be imported "
                              f"({_failure(e)}): pip install torchvision") from None
        if attr not in torchvision.models.list_models():
            raise ValueError(f"unknown torchvision model {attr!r} (see torchvision.models.list_models())")
        return torchvision.models.get_model(attr, weights=None)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ImportError(f"cannot import {module_name} ({_failure(e)})") from None
    except Exception as e:
        raise ImportError(f"importing {module_name} raised {_failure(e)}") from None
    if not attr.isidentifier() or not hasattr(module, attr):
        raise ValueError(f"module {module_name} has no attribute {attr!r}")
    fn = getattr(module, attr)
    if not callable(fn):
        raise TypeError(f"{spec} is a {type(fn).__name__}, not a callable that builds a model")
    try:
        model = fn()
    except Exception as e:
        raise ValueError(f"{spec}() raised {_failure(e)}") from None
    if not isinstance(model, nn.Module):
        raise TypeError(f"{spec}() returned a {type(model).__name__}, not an nn.Module")
    return model


def _read_weights(path: str) -> dict[str, torch.Tensor]:
    """The state dict in the file `path`: a state dict, or a checkpoint dict holding one under one of
    CHECKPOINT_KEYS. Read with torch.load(weights_only=True): no pickled code is run."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise ValueError(f"--weights {path} holds a pickled {found.group(1)}, which torch.load(weights_only=True) "
                             f"does not run (it could run any code): save model.state_dict() instead") from None
        raise ValueError(f"--weights {path} is not a checkpoint written by torch.save ({_failure(e)})") from None
    if isinstance(payload, Mapping) and payload.get("format") == PRUNED_FORMAT:
        raise ValueError(f"--weights {path} is a pruned model written by save_pruned: load it with ppf.load_pruned")
    if isinstance(payload, Mapping) and not _is_state_dict(payload):
        payload = next((payload[k] for k in CHECKPOINT_KEYS if _is_state_dict(payload.get(k))), payload)
    if not _is_state_dict(payload):
        what = f"a dict with keys {_first(list(payload))}" if isinstance(payload, Mapping) else f"a {type(payload).__name__}"
        raise ValueError(f"--weights {path} holds {what}, not a state dict nor a checkpoint with a "
                         f"{', '.join(repr(k) for k in CHECKPOINT_KEYS)} entry holding one")
    state = OrderedDict(payload)  # a copy, with the module versions load_state_dict reads
    if hasattr(payload, "_metadata"):
        state._metadata = OrderedDict(payload._metadata)
    for prefix in WRAPPER_PREFIXES:  # saved from a wrapped model: strip the wrapper's prefix
        if all(k.startswith(prefix) for k in state):
            consume_prefix_in_state_dict_if_present(state, prefix)
    return state


def _is_state_dict(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def _first(names: Sequence[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _load_weights(model: nn.Module, path: str) -> None:
    """Load the weights saved in `path` (a state dict or a training checkpoint holding one, see
    `_read_weights`; a `module.` prefix from DataParallel/DDP is dropped) into `model`. ValueError naming
    the first keys that differ when they do not fit (the model may then hold some of the weights)."""
    state = _read_weights(path)
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in model.state_dict().items()
              if k in state and state[k].shape != v.shape]
    keys = ([], []) if shapes else model.load_state_dict(state, strict=False)  # torch's rules for which keys fit
    problems = [f"{what} {_first(names)}" for what, names in (("missing:", keys[0]), ("unexpected:", keys[1]),
                                                               ("shapes (checkpoint vs model):", shapes)) if names]
    if problems:
        raise ValueError(f"--weights {path} does not fit the model: {'; '.join(problems)}")


def classifier_name(model: nn.Module, example_inputs: torch.Tensor) -> Optional[str]:
    """Name of the model's final classifier: the last nn.Linear whose out_features is the size of the
    last dim of an output (one shape-only pass finds the outputs); None when there is none."""
    from .graph import record

    return _classifier(model, record(model, example_inputs).outputs)


def _classifier(model: nn.Module, outputs: Sequence[torch.Tensor]) -> Optional[str]:
    sizes = {v.shape[-1] for v in outputs if v.ndim}
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features in sizes]
    return linears[-1] if linears else None


def _input_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas (1,3,224,224), got {text!r}")
    return shape


def _device(text: str) -> torch.device:
    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"not a device pyprune_fast runs on: {text!r} (cpu, cuda, cuda:1, ...)")
    from . import build_info, ops

    why = ops.missing_kernels(device.type, build_info())
    if why:
        raise argparse.ArgumentTypeError(f"{text}: {why}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: no CUDA GPU is visible")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    return device


def _round_to(text: str):
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None


def _output_numbers(text: str):
    if text == "all":
        return text
    try:
        return [int(n) for n in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'all' or output numbers separated by commas, got {text!r}") from None


def _seed(text: str) -> int:
    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if not 0 <= seed < 2**63:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**63), got {text!r}")
    return seed


def writable_file(path: str) -> Path:
    """argparse type for an output file: `path` as a Path when its folder exists and takes a new file and
    it is not a folder, else ArgumentTypeError (checked before any work; nothing is left behind)."""
    p = Path(path)
    if p.is_dir() or path.endswith(os.sep):
        raise argparse.ArgumentTypeError(f"{path} is a folder; give a file name")
    if not p.parent.is_dir():
        what = "is a file, not a folder" if p.parent.exists() else "does not exist"
        raise argparse.ArgumentTypeError(f"{path}: the folder {p.parent} {what}")
    try:
        if p.exists():
            open(p, "ab").close()  # opening to append changes nothing
        else:
            tempfile.TemporaryFile(dir=p.parent).close()
    except OSError as e:
        raise argparse.ArgumentTypeError(f"{path} cannot be written ({e.strerror or _failure(e)})") from None
    return p


def plot_file(path: str) -> Path:
    """argparse type for a plot: as `writable_file`, and matplotlib is installed and writes its suffix."""
    from .plotting import check_plot_path

    if not Path(path).suffix:  # matplotlib would add .png to the name
        raise argparse.ArgumentTypeError(f"{path}: end the name in .png, .pdf, .svg or another picture type "
                                         "matplotlib writes")
    p = writable_file(path)
    try:
        check_plot_path(p)
    except (ImportError, ValueError) as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("plot: ")) from None
    return p


def _readable(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise argparse.ArgumentTypeError(f"{path} {'is a folder' if p.is_dir() else 'does not exist'}")
    try:
        open(p, "rb").close()
    except OSError as e:
        raise argparse.ArgumentTypeError(f"{path} cannot be read ({e.strerror or _failure(e)})") from None
    return path


def _version() -> str:
    import pyprune_fast as ppf

    kernels = "yes" if ppf.build_info().get("with_cuda") else "no"
    return f"{PROG} {ppf.__version__} (torch {torch.__version__}, CUDA kernels: {kernels})"


def _stages(count: int) -> Stages:
    """The command's progress bar over `count` stages: on stderr, shown on a terminal once the command
    has run 2 s, or as PYPRUNE_FAST_PROGRESS says (a bad value of it is refused before any work)."""
    return Stages([""] * count, choice(None), PROG)


def _model_and_inputs(args: argparse.Namespace, stages: Stages) -> tuple[nn.Module, torch.Tensor, list[nn.Module]]:
    """Build the model (seeded; then --weights), check that it runs on its example input, and find the
    layers to ignore; every failure is a ValueError/TypeError/ImportError naming the problem."""
    from .graph import record

    stages.start(f"build {args.model}")
    torch.manual_seed(args.seed)
    model = build_model(args.model)
    if args.weights is not None:
        _load_weights(model, args.weights)
    model = model.to(args.device).eval()
    shape = ",".join(map(str, args.input_shape))
    try:
        x = torch.randn(args.input_shape, device=args.device)
        outputs = record(model, x).outputs
    except Exception as e:
        raise ValueError(f"--model {args.model} fails on a random input of --input-shape {shape}: {_failure(e)}") from None
    names = args.ignore if args.ignore is not None else [n for n in [_classifier(model, outputs)] if n]
    modules = dict(model.named_modules(remove_duplicate=False))
    unknown = [n for n in names if not n or n not in modules]
    if unknown:
        raise ValueError(f"--ignore {unknown[0]!r}: {args.model} has no module of that name")
    return model, x, [modules[n] for n in names]


def _prune(args: argparse.Namespace) -> int:
    import pyprune_fast as ppf
    from .pruning import ALLOCATIONS, _check_options

    options = {k: getattr(args, k) for k in ALLOCATIONS if getattr(args, k) is not None}
    options.update(min_channels=args.min_channels, round_to=args.round_to, seed=args.seed,
                   prune_embedding=args.prune_embedding, heads=args.heads, keep_outputs=args.keep_outputs)
    if args.measure is not None:  # on --device, at --input-shape
        options["measure"] = args.measure
    if args.target_latency is not None:  # measured where the model runs (--device)
        options["latency"] = {"backend": args.latency_backend, "batch_size": args.latency_batch_size}
    try:
        _check_options(args.method, options)  # every number, before any work
    except ValueError as e:  # the library's words, with the command line's option names
        flags = {k: "--" + k.replace("_", "-") for k in (*ALLOCATIONS, *options) if k != "latency"} \
            | {"ignored_layers": "--ignore"}
        raise ValueError(re.sub(r"\b(" + "|".join(flags) + r")\b", lambda m: flags[m[1]],
                                str(e).removeprefix("prune: "))) from None
    outputs = [p for p in (args.out, args.plot) if p is not None]
    if args.out is not None and args.plot is not None and args.out.resolve() == args.plot.resolve():
        raise ValueError(f"--out and --plot are the same file {args.out}")
    if args.weights is not None and any(p.exists() and p.samefile(args.weights) for p in outputs):
        raise ValueError(f"--out/--plot would overwrite --weights {args.weights}")
    with _stages(2 + len(outputs)) as stages:
        model, x, ignored = _model_and_inputs(args, stages)
        stages.start(f"prune {args.method}")
        report = ppf.prune(model, x, args.method, ignored_layers=ignored, progress=False, **options)
        if args.plot is not None:  # before the model: a plot that fails leaves no model behind
            stages.start(f"plot {args.plot}")
            report.plot(args.plot)
        if args.out is not None:
            stages.start(f"save {args.out}")
            ppf.save_pruned(model, args.out)
    print(report)
    if args.out is not None:
        print(f"saved to {args.out}; load with ppf.load_pruned(lambda: pyprune_fast.cli.build_model({args.model!r}), {str(args.out)!r})")
    if args.plot is not None:
        print(f"wrote {args.plot}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    import pyprune_fast as ppf
    from .flops import profile_trace

    with _stages(2) as stages:
        model, x, ignored = _model_and_inputs(args, stages)
        stages.start("trace")
        graph = ppf.DependencyGraph(model, x, ignored, prune_embedding=args.prune_embedding, heads=args.heads)
    width = max([len("origin")] + [len(g.origin) for g in graph.groups])
    print(f"{len(graph.groups)} groups, {len(graph.prunable_groups)} prunable")
    print(f"{'group':>5} {'channels':>8}  {'origin':<{width}}  state")
    for g in graph.groups:
        print(f"{g.index:>5} {g.channels:>8}  {g.origin:<{width}}  {'prunable' if g.prunable else 'locked: ' + g.reason}")
    print()
    print(profile_trace(graph.trace, model))
    return 0


def _bench(args: argparse.Namespace) -> int:
    script = Path(__file__).resolve().parent.parent / "benchmarks" / f"bench_{args.which}.py"
    if not script.is_file():
        raise ValueError(f"{script.name} not found: the benchmarks ship with the source checkout, not the installed package")
    return subprocess.call([sys.executable, str(script), *args.args])


def _parser() -> _Parser:
    from .methods import METHODS

    p = _Parser(prog=PROG, description="Structured channel pruning of PyTorch models (pyprune_fast).",
                epilog=f"'{PROG} COMMAND --help' explains each command's options. Bad input ends with a one-line "
                       "message and exit status 2, before anything is pruned or written.")
    p.add_argument("--version", action="version", version=_version(),
                   help="print the version, the torch version and whether the CUDA kernels are built, and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    model = _Parser(add_help=False)
    model.add_argument("--model", required=True, metavar="SPEC",
                       help="torchvision model name (torchvision:resnet50, or just resnet50; random weights) or "
                            "package.module:function, an importable callable returning an nn.Module")
    model.add_argument("--weights", type=_readable, metavar="PATH",
                       help="load these weights into the model first: a state dict saved with torch.save, or a "
                            "checkpoint dict holding one under 'state_dict', 'model' or 'model_state_dict' "
                            "(a 'module.' prefix from DataParallel/DDP is dropped; read with weights_only=True)")
    model.add_argument("--input-shape", type=_input_shape, default=(1, 3, 224, 224), metavar="N,C,H,W",
                       help="shape of the random example input the model is traced with (default 1,3,224,224)")
    model.add_argument("--ignore", action="append", metavar="MODULE",
                       help="name of a module whose output channels are kept (repeatable; default: the final "
                            "classifier, the last Linear whose out_features is the output size)")
    model.add_argument("--seed", type=_seed, default=0, help="seed for the model's random weights, the example "
                                                             "input and randomised methods (default 0)")
    model.add_argument("--device", type=_device, default=torch.device("cpu"), help="cpu or cuda[:N] (default cpu)")
    model.add_argument("--prune-embedding", action="store_true",
                       help="also prune a transformer's embedding width (the residual stream: a big change to a model)")
    model.add_argument("--heads", choices=("dims", "whole"), default="dims",
                       help="attention heads: 'dims' makes each head narrower (default), 'whole' removes whole heads")

    pr = sub.add_parser("prune", parents=[model], help="prune a model and print the report",
                        description="Prune a model by a channel criterion, print the report (MACs, params, widths, "
                                    "timings) and optionally save it with ppf.save_pruned.")
    pr.add_argument("--method", default="l1", choices=list(METHODS),
                    help="channel criterion (default l1): " + ", ".join(METHODS))
    amount = pr.add_mutually_exclusive_group(required=True)
    amount.add_argument("--ratio", type=float, help="remove this fraction of the channels of every prunable group")
    amount.add_argument("--global-ratio", type=float,
                        help="remove this fraction of all prunable channels, ranked across groups")
    amount.add_argument("--target-flops", type=float, metavar="FRACTION",
                        help="prune until this fraction of the MACs (multiply-accumulates) is left, e.g. 0.45")
    amount.add_argument("--target-latency", type=float, metavar="FRACTION",
                        help="prune until this fraction of the dense model's measured latency is left, e.g. 0.5 "
                             "(measured on --device with --latency-backend)")
    amount.add_argument("--threshold", type=float, help="cluster distance threshold (method cup only)")
    pr.add_argument("--latency-backend", default="eager", choices=["eager", "compile", "onnxruntime"],
                    help="what --target-latency measures: eager PyTorch, torch.compile or onnxruntime (default eager)")
    pr.add_argument("--latency-batch-size", type=int, metavar="N",
                    help="batch size --target-latency measures at (default: --input-shape's)")
    pr.add_argument("--measure", choices=BACKENDS, metavar="BACKEND",
                    help="measure the latency before and after (on --device, at --input-shape) with this backend: "
                         f"{', '.join(BACKENDS)}; the report shows the speed-up")
    pr.add_argument("--min-channels", type=int, default=1, help="every group keeps at least this many channels (default 1)")
    pr.add_argument("--keep-outputs", type=_output_numbers, default="all", metavar="N[,N...]",
                    help="numbers of the output tensors that must keep their shape, in the order the model returns "
                         "them, nested outputs flattened (default: all); the others may change their channels")
    pr.add_argument("--round-to", type=_round_to, default=1,
                    help="kept channel counts are multiples of this, or 'auto' for the device's (default 1)")
    pr.add_argument("--out", type=writable_file, metavar="PATH",
                    help="save the pruned model here (ppf.save_pruned: widths + state dict); its folder must exist")
    pr.add_argument("--plot", type=plot_file, metavar="FILE",
                    help="also write the report's plot (widths before/after) here: .png, .pdf, .svg, ... "
                         "(needs matplotlib)")
    pr.set_defaults(run=_prune)

    ins = sub.add_parser("inspect", parents=[model], help="print a model's channel groups and MACs",
                         description="Print the channel groups of a model (index, channels, origin, prunable or why "
                                     "not) and its multiply-accumulates per layer.")
    ins.set_defaults(run=_inspect)

    b = sub.add_parser("bench", help="run a benchmark script of the source checkout",
                       description="Run benchmarks/bench_WHICH.py of the source checkout (not part of an installed "
                                   "wheel). Every argument after WHICH goes to the script: 'bench ops --help' shows its options.")
    b.add_argument("which", choices=BENCHMARKS, help="which benchmark: " + ", ".join(BENCHMARKS))
    b.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed through to the script")
    b.set_defaults(run=_bench)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line on `argv` (default sys.argv[1:]) and return the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version (0) or a bad option (2, message already printed)
        return int(e.code or 0)
    try:
        return args.run(args)
    except BrokenPipeError:  # stdout closed early (`| head`): nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except USER_ERRORS as e:
        print(f"{PROG} {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
