"""Command line: `pyprune-fast prune | inspect | bench` (also `python -m pyprune_fast`).

    pyprune-fast prune --model torchvision:resnet50 --method cup --target-flops 0.45 --out pruned.pt
    pyprune-fast inspect --model torchvision.models:mobilenet_v2 --input-shape 1,3,160,160
    pyprune-fast bench ops --min-time 0.2

Bad options and values (an unknown model, a ratio of 1.5) end with a one-line message on stderr and
exit status 2; `main` returns the exit status instead of raising.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NoReturn, Optional, Sequence

import torch
from torch import nn

__all__ = ["build_model", "classifier_name", "main"]

PROG = "pyprune-fast"
BENCHMARKS = ("ops", "clustering", "prune", "methods")
PROGRESS_DELAY_S = 2.0  # the progress bar appears once a command has run this long
USER_ERRORS = (ValueError, TypeError, ImportError, OSError)  # reported in one line, exit status 2


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on stderr (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def build_model(spec: str) -> nn.Module:
    """The model named by `spec`: a torchvision model name (`torchvision:resnet50` or just `resnet50`,
    built with random weights) or `package.module:function`, any importable callable that returns an
    nn.Module when called without arguments."""
    module_name, _, attr = spec.rpartition(":")
    if module_name in ("", "torchvision"):
        import torchvision

        if attr not in torchvision.models.list_models():
            raise ValueError(f"unknown torchvision model {attr!r} (see torchvision.models.list_models())")
        return torchvision.models.get_model(attr, weights=None)
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except AttributeError:
        raise ValueError(f"module {module_name} has no attribute {attr!r}") from None
    if not callable(fn):
        raise TypeError(f"{spec} is a {type(fn).__name__}, not a callable that builds a model")
    model = fn()
    if not isinstance(model, nn.Module):
        raise TypeError(f"{spec}() returned a {type(model).__name__}, not an nn.Module")
    return model


def classifier_name(model: nn.Module, example_inputs: torch.Tensor) -> Optional[str]:
    """Name of the model's final classifier: the last nn.Linear whose out_features is the size of the
    last dim of an output (one shape-only pass finds the outputs); None when there is none."""
    from .graph.trace import record

    sizes = {v.shape[-1] for v in record(model, example_inputs).outputs if v.ndim}
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
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r} (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: no CUDA GPU is visible")
    return device


class _Progress:
    """A tqdm bar over named stages on stderr, shown when stderr is a terminal and once the command has
    run for PROGRESS_DELAY_S seconds (quick commands, logs and pipes get nothing)."""

    def __init__(self, stages: int):
        from tqdm import tqdm

        self.bar = tqdm(total=stages, file=sys.stderr, delay=PROGRESS_DELAY_S, disable=None, leave=False,
                        bar_format="{desc}: {n}/{total} stages [{elapsed}]")
        self.start = time.monotonic()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.bar.set_description_str(name, refresh=time.monotonic() - self.start >= PROGRESS_DELAY_S)
        yield
        self.bar.update()

    def close(self) -> None:
        self.bar.close()


def _model_and_inputs(args: argparse.Namespace, progress: _Progress) -> tuple[nn.Module, torch.Tensor, list[nn.Module]]:
    """Build the model (seeded) and its example input on args.device, and find the layers to ignore."""
    with progress.stage(f"build {args.model}"):
        torch.manual_seed(args.seed)
        model = build_model(args.model).to(args.device).eval()
        x = torch.randn(args.input_shape, device=args.device)
        names = args.ignore if args.ignore is not None else [n for n in [classifier_name(model, x)] if n]
        try:
            ignored = [model.get_submodule(n) for n in names]
        except AttributeError as e:
            raise ValueError(f"--ignore: {e}") from None
    return model, x, ignored


def _prune(args: argparse.Namespace) -> int:
    import pyprune_fast as ppf

    amount = {k: getattr(args, k) for k in ("ratio", "global_ratio", "target_flops", "threshold")}
    progress = _Progress(2 + (args.out is not None) + (args.plot is not None))
    try:
        model, x, ignored = _model_and_inputs(args, progress)
        with progress.stage(f"trace + prune ({args.method})"):
            report = ppf.prune(model, x, args.method, **{k: v for k, v in amount.items() if v is not None},
                               min_channels=args.min_channels, round_to=args.round_to, ignored_layers=ignored,
                               seed=args.seed)
        if args.out is not None:
            with progress.stage(f"save {args.out}"):
                ppf.save_pruned(model, args.out)
        if args.plot is not None:
            with progress.stage(f"plot {args.plot}"):
                report.plot(args.plot)
    finally:
        progress.close()
    print(report)
    if args.out is not None:
        print(f"saved to {args.out}; load with ppf.load_pruned(lambda: pyprune_fast.cli.build_model({args.model!r}), {str(args.out)!r})")
    if args.plot is not None:
        print(f"wrote {args.plot}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    import pyprune_fast as ppf
    from .flops import profile_trace

    progress = _Progress(2)
    try:
        model, x, ignored = _model_and_inputs(args, progress)
        with progress.stage("trace"):
            graph = ppf.DependencyGraph(model, x, ignored)
    finally:
        progress.close()
    width = max(len(g.origin) for g in graph.groups)
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
                epilog=f"'{PROG} COMMAND --help' explains each command's options.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    model = _Parser(add_help=False)
    model.add_argument("--model", required=True, metavar="SPEC",
                       help="torchvision model name (torchvision:resnet50, or just resnet50; random weights) or "
                            "package.module:function, an importable callable returning an nn.Module")
    model.add_argument("--input-shape", type=_input_shape, default=(1, 3, 224, 224), metavar="N,C,H,W",
                       help="shape of the random example input the model is traced with (default 1,3,224,224)")
    model.add_argument("--ignore", action="append", metavar="MODULE",
                       help="name of a module whose output channels are kept (repeatable; default: the final "
                            "classifier, the last Linear whose out_features is the output size)")
    model.add_argument("--seed", type=int, default=0, help="seed for the model's random weights, the example input "
                                                           "and randomised methods (default 0)")
    model.add_argument("--device", type=_device, default=torch.device("cpu"), help="cpu or cuda[:N] (default cpu)")

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
    amount.add_argument("--threshold", type=float, help="cluster distance threshold (method cup only)")
    pr.add_argument("--min-channels", type=int, default=1, help="every group keeps at least this many channels (default 1)")
    pr.add_argument("--round-to", type=int, default=1, help="kept channel counts are multiples of this (default 1)")
    pr.add_argument("--out", metavar="PATH", help="save the pruned model here (ppf.save_pruned: widths + state dict)")
    pr.add_argument("--plot", metavar="PNG", help="also write the report's plot (widths before/after) to this PNG")
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
    except SystemExit as e:  # --help (0) or a bad option (2, message already printed)
        return int(e.code or 0)
    try:
        return args.run(args)
    except BrokenPipeError:  # stdout closed early (`| head`): nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except USER_ERRORS as e:
        print(f"{PROG} {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
