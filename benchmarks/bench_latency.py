"""What pruning buys in measured latency, against what it buys in MACs; and pruning to a latency target.

    python benchmarks/bench_latency.py [--models resnet50,mobilenet_v2,vit_b_16,efficientnet_b0] [--methods l1,cup]
        [--keep 0.3,0.5,0.7] [--backends eager,compile,onnxruntime] [--batch-sizes 1,32] [--device cpu|cuda]
        [--threads N] [--min-time S] [--min-runs N] [--targets 0.7,0.5] [--round-to 1,8,16] [--image-size 224]
        [--quick] [--out-dir DIR] [--plot-from CSV,CSV]

1. MACs kept against latency kept: every model pruned by every method to each fraction of its MACs
   (`target_flops`), each pruned model measured with `ppf.measure_latency` on every backend and batch size.
   The dense model is measured before and after each (model, backend, batch size) block and every pruned
   model's latency divided by the mean of the two: ratios measured side by side, as the machine's load drifts.
2. Rounding: each model pruned by L1 to half its MACs with every `--round-to` (and "auto"), measured on the
   first backend at every batch size: what widths that are multiples of the vector width buy.
3. `target_latency`: each model pruned by each method to each `--targets` fraction of its measured latency
   (eager, on --device, at every batch size); asked, what prune measured on its copy, and the pruned model
   measured again next to the dense one, with the latency model's build time.

Prints a table per part, writes latency.csv, rounding.csv, target_latency.csv and latency_vs_macs.png (MACs
kept against latency kept, one line per backend and batch size, the diagonal drawn; one panel per model) in
--out-dir. --quick: a CI-size run (ResNet-18 and MobileNetV2 at 96x96, 50% of the MACs, eager and onnxruntime,
batch 1, target 0.5). Timings on a shared machine are noisy: the load average is printed with the results.
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import re
import sys
import time

import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import check_device, machine, print_table, write_csv  # noqa: E402

import pyprune_fast as ppf  # noqa: E402
from pyprune_fast.latency_model import auto_round_to  # noqa: E402

MODELS = ("resnet50", "mobilenet_v2", "vit_b_16", "efficientnet_b0")


def _list(kind):
    return lambda text: [kind(t) for t in text.split(",") if t]


def _say(*args) -> None:
    print(*args, flush=True)


class Meter:
    """measure_latency with the run's settings; a backend that fails on a model gives None and says why."""

    def __init__(self, args):
        self.device, self.threads = args.device, args.threads
        self.min_time, self.min_runs = args.min_time, args.min_runs

    def __call__(self, model, x, backend: str, batch: int):
        if backend == "compile":  # past dynamo's recompile limit (8 copies of one class) a model would run eager
            torch._dynamo.reset()
        try:
            lat = ppf.measure_latency(model, x, backend=backend, device=self.device, batch_size=batch,
                                      threads=self.threads, min_time=self.min_time, min_runs=self.min_runs,
                                      warmup=min(3, self.min_runs))
        except Exception as e:  # noqa: BLE001  (an export or compile failure is a result too)
            _say(f"    {backend} batch {batch}: failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
            return None
        return lat.median


def _dense(name: str, args) -> tuple[torch.nn.Module, torch.Tensor]:
    model = torchvision.models.get_model(name, weights=None).eval().to(args.device)
    return model, torch.randn(1, 3, args.image_size, args.image_size, device=args.device)


def _pruned(model, x, method: str, **options):
    pruned = copy.deepcopy(model)
    report = ppf.prune(pruned, x, method, progress=False, **options)
    return pruned, report


def _side_by_side(meter: Meter, dense, x, models: list, backend: str, batch: int) -> tuple[float, list]:
    """(dense seconds, [seconds kept fraction of each model]): dense, every model, dense again."""
    first = meter(dense, x, backend, batch)
    if first is None:
        return None, [None] * len(models)
    times = [meter(m, x, backend, batch) for m in models]
    base = (first + (meter(dense, x, backend, batch) or first)) / 2
    return base, [t / base if t is not None else None for t in times]


def macs_vs_latency(args, meter: Meter) -> list[dict]:
    rows = []
    for name in args.models:
        dense, x = _dense(name, args)
        pruned = []
        for method in args.methods:
            for keep in args.keep:
                t0 = time.perf_counter()
                model, report = _pruned(dense, x, method, target_flops=keep)
                pruned.append((method, keep, model, report.macs_after / report.macs_before))
                _say(f"  {name} {method} target_flops={keep}: {pruned[-1][3]:.3f} of the MACs "
                     f"({time.perf_counter() - t0:.1f} s)")
        for backend in args.backends:
            for batch in args.batch_sizes:
                base, kept = _side_by_side(meter, dense, x, [p[2] for p in pruned], backend, batch)
                for (method, keep, _, macs), lat in zip(pruned, kept):
                    rows.append(dict(model=name, method=method, backend=backend, batch=batch, macs_asked=keep,
                                     macs_kept=macs, dense_ms=base * 1e3 if base else None, latency_kept=lat))
                    _say(f"  {name} {method} {keep} {backend} batch {batch}: MACs {macs:.3f} latency "
                         + (f"{lat:.3f}" if lat is not None else "-"))
    return rows


def rounding(args, meter: Meter) -> list[dict]:
    rows = []
    backend = args.backends[0]
    steps = list(dict.fromkeys([*args.round_to, auto_round_to(torch.device(args.device))]))
    for name in args.models:
        dense, x = _dense(name, args)
        pruned = [(r, *_pruned(dense, x, "l1", target_flops=0.5, round_to=r)) for r in steps]
        for batch in args.batch_sizes:
            base, kept = _side_by_side(meter, dense, x, [p[1] for p in pruned], backend, batch)
            for (r, _, report), lat in zip(pruned, kept):
                rows.append(dict(model=name, backend=backend, batch=batch, round_to=r,
                                 macs_kept=report.macs_after / report.macs_before, latency_kept=lat))
                _say(f"  {name} round_to={r} {backend} batch {batch}: MACs {rows[-1]['macs_kept']:.3f} latency "
                     + (f"{lat:.3f}" if lat is not None else "-"))
    return rows


SOLVED = re.compile(r"latency ([\d.]+) measured, ([\d.]+) predicted.*latency model ([\d.]+) s.*?(\d+) candidate")


def target_latency(args, meter: Meter) -> list[dict]:
    rows = []
    for name in args.models:
        dense, x = _dense(name, args)
        for method in args.methods:
            for batch in args.batch_sizes:
                for target in args.targets:
                    latency = dict(device=args.device, batch_size=batch, threads=args.threads, min_time=args.min_time)
                    t0 = time.perf_counter()
                    try:
                        model, report = _pruned(dense, x, method, target_latency=target, latency=latency)
                    except ValueError as e:  # an unreachable target says so
                        _say(f"  {name} {method} batch {batch} target {target}: {e}")
                        continue
                    seconds = time.perf_counter() - t0
                    solved, predicted, build, candidates = SOLVED.search(report.allocation).groups()
                    _, (again,) = _side_by_side(meter, dense, x, [model], "eager", batch)
                    rows.append(dict(model=name, method=method, batch=batch, asked=target, solved=float(solved),
                                     predicted=float(predicted), measured_again=again,
                                     macs_kept=report.macs_after / report.macs_before, model_build_s=float(build),
                                     candidates=int(candidates), prune_s=seconds))
                    _say(f"  {name} {method} batch {batch} target {target}: measured {float(solved):.3f} "
                         f"(again {again:.3f}), predicted {float(predicted):.3f}, MACs "
                         f"{rows[-1]['macs_kept']:.3f}, latency model {float(build):.1f} s, prune {seconds:.1f} s")
    return rows


def plot(path: str, rows: list[dict], targets: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    panels = len(models) + bool(targets)
    cols = min(panels, 3)
    fig, axes = plt.subplots((panels + cols - 1) // cols, cols, figsize=(4 * cols, 3.6 * ((panels + cols - 1) // cols)),
                             squeeze=False)
    axes = axes.ravel()
    colors = dict(eager="tab:blue", compile="tab:orange", onnxruntime="tab:green")
    for ax, name in zip(axes, models):
        mine = [r for r in rows if r["model"] == name and r["latency_kept"] is not None]
        for backend in dict.fromkeys(r["backend"] for r in mine):
            for i, batch in enumerate(sorted({r["batch"] for r in mine})):  # the first batch size filled, others hollow
                for method, marker in zip(dict.fromkeys(r["method"] for r in mine), "os^vD"):
                    pts = sorted((r["macs_kept"], r["latency_kept"]) for r in mine
                                 if (r["backend"], r["batch"], r["method"]) == (backend, batch, method))
                    if pts:
                        color = colors.get(backend, "tab:grey")
                        ax.plot(*zip(*pts), ("-", "--", ":")[min(i, 2)], marker=marker, color=color, ms=4 + i,
                                mfc=color if i == 0 else "none", label=f"{backend}, batch {batch}, {method}")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        top = max([1.2] + [r["latency_kept"] for r in mine]) * 1.05
        ax.set(title=name, xlabel="MACs kept", ylabel="latency kept", xlim=(0, 1.05), ylim=(0, top))
        ax.legend(fontsize=5, loc="best")
    if targets:
        ax = axes[len(models)]
        runs = dict.fromkeys((r["model"], r["method"], r["batch"]) for r in targets)
        for model, method, batch in runs:
            pts = [(r["asked"], r["measured_again"]) for r in targets if (r["model"], r["method"], r["batch"]) ==
                   (model, method, batch)]
            ax.plot(*zip(*pts), "o", ms=4, label=f"{model} {method} b{batch}")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        ax.fill_between([0, 1], [0, 0.9], [0, 1.1], color="grey", alpha=0.15)
        top = max([1.2] + [r["measured_again"] for r in targets]) * 1.05
        ax.set(title="target_latency: asked vs measured (eager; grey: ±10 %)", xlabel="asked", ylabel="measured",
               xlim=(0, 1.05), ylim=(0, top))
        ax.legend(fontsize=5)
    for ax in axes[panels:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    _say(f"wrote {path}")


def _read_rows(p: argparse.ArgumentParser, paths: list[str]) -> tuple[list[dict], list[dict]]:
    """(MACs-vs-latency rows, target_latency rows) of CSV files this script wrote, numbers as numbers."""
    rows, targets = [], []
    for path in paths:
        try:
            with open(path, newline="") as f:
                found = list(csv.DictReader(f))
        except OSError as e:
            p.error(f"--plot-from: cannot read {path}: {e.strerror}")
        if not found or not ({"latency_kept", "measured_again"} & set(found[0])):
            p.error(f"--plot-from: {path} is neither a latency.csv nor a target_latency.csv of this script")
        for r in found:
            r.update({k: (int(v) if k == "batch" else float(v) if v else None) for k, v in r.items()
                      if k not in ("model", "method", "backend")})
        if "measured_again" in found[0]:
            targets += found
        else:
            rows += [r for r in found if r["latency_kept"] is not None]  # a backend that failed on a model
    # one point per (model, method, backend, batch, MACs asked): a later file's measurement replaces an earlier's
    last = {(r["model"], r["method"], r["backend"], r["batch"], r["macs_asked"]): r for r in rows}
    return list(last.values()), targets


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=_list(str), default=list(MODELS))
    p.add_argument("--methods", type=_list(str), default=["l1", "cup"])
    p.add_argument("--keep", type=_list(float), default=[0.3, 0.5, 0.7], help="MACs kept ('' for none)")
    p.add_argument("--backends", type=_list(str), default=["eager", "compile", "onnxruntime"])
    p.add_argument("--batch-sizes", type=_list(int), default=[1, 32])
    p.add_argument("--targets", type=_list(float), default=[0.7, 0.5], help="target_latency runs ('' for none)")
    p.add_argument("--round-to", type=_list(int), default=[1, 8, 16], help="rounding part ('' for none)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement, at least")
    p.add_argument("--min-runs", type=int, default=10, help="timed runs per measurement, at least (and up to 3 "
                   "warm-up runs): fewer for a slow model, as ViT-B/16 at batch 32 on a CPU")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--quick", action="store_true", help="CI size: see the module docstring")
    p.add_argument("--out-dir", default="bench_out")
    p.add_argument("--plot-from", type=_list(str), default=[], metavar="CSV,CSV",
                   help="measure nothing: draw latency_vs_macs.png from latency.csv and target_latency.csv files "
                   "written by earlier runs (several runs in one picture; where two files measured the same point, "
                   "the later file's is drawn)")
    with machine(p, argv) as args:  # --threads: torch's threads, which the measurements run on; --load
        return _run(p, args)


def _run(p: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    check_device(p, args.device)
    if args.plot_from:
        rows, targets = _read_rows(p, args.plot_from)
        os.makedirs(args.out_dir, exist_ok=True)
        plot(os.path.join(args.out_dir, "latency_vs_macs.png"), rows, targets)
        return 0
    if args.min_runs < 1:
        p.error(f"--min-runs must be at least 1, got {args.min_runs}")
    if args.quick:
        args.models, args.keep, args.backends = ["resnet18", "mobilenet_v2"], [0.5], ["eager", "onnxruntime"]
        args.batch_sizes, args.targets, args.round_to, args.image_size = [1], [0.5], [1, 8], 96
        args.methods, args.min_time = ["l1"], min(args.min_time, 0.2)
    os.makedirs(args.out_dir, exist_ok=True)
    meter = Meter(args)
    _say(f"device {args.device}, {args.threads or torch.get_num_threads()} threads, load average "
         f"{os.getloadavg()[0]:.2f}, torch {torch.__version__}")

    ok = []
    if args.keep:
        _say("1. MACs kept vs latency kept")
        rows = macs_vs_latency(args, meter)
        cols = [("model", "<16", ""), ("method", "<6", ""), ("backend", "<12", ""), ("batch", ">5", ""),
                ("MACs kept", ">9", ".3f"), ("dense ms", ">9", ".2f"), ("latency kept", ">12", ".3f")]
        ok = [r for r in rows if r["latency_kept"] is not None]
        print_table(cols, [(r["model"], r["method"], r["backend"], r["batch"], r["macs_kept"], r["dense_ms"],
                            r["latency_kept"]) for r in ok])
        write_csv(os.path.join(args.out_dir, "latency.csv"), rows)

    if args.round_to:
        _say("2. rounding (L1, half the MACs)")
        rrows = rounding(args, meter)
        print_table([("model", "<16", ""), ("batch", ">5", ""), ("round_to", ">8", ""), ("MACs kept", ">9", ".3f"),
                     ("latency kept", ">12", ".3f")],
                    [(r["model"], r["batch"], r["round_to"], r["macs_kept"], r["latency_kept"]) for r in rrows
                     if r["latency_kept"] is not None])
        write_csv(os.path.join(args.out_dir, "rounding.csv"), rrows)

    trows = []
    if args.targets:
        _say("3. target_latency (eager)")
        trows = target_latency(args, meter)
        print_table([("model", "<16", ""), ("method", "<6", ""), ("batch", ">5", ""), ("asked", ">6", ".2f"),
                     ("measured", ">8", ".3f"), ("again", ">6", ".3f"), ("predicted", ">9", ".3f"),
                     ("MACs kept", ">9", ".3f"), ("model s", ">7", ".1f"), ("prune s", ">7", ".1f")],
                    [(r["model"], r["method"], r["batch"], r["asked"], r["solved"], r["measured_again"],
                      r["predicted"], r["macs_kept"], r["model_build_s"], r["prune_s"]) for r in trows])
        if trows:
            write_csv(os.path.join(args.out_dir, "target_latency.csv"), trows)
    if ok or trows:
        plot(os.path.join(args.out_dir, "latency_vs_macs.png"), ok, trows)
    _say(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
