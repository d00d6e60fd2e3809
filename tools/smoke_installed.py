"""Smoke test of an installed pyprune_fast (.ci/run runs it from `/`, on the wheel built from the sdist).

    PYTHONPATH=<site> python tools/smoke_installed.py --site <site> --script <site>/bin/pyprune-fast

Checks that the package is imported from <site> (not from a source tree), that every module imports, that the
`pyprune-fast` command answers `--help`, and that a CUP prune of torchvision's resnet18 to half its MACs works.
Exits 1 with a message at the first failure.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path


def _check(ok: bool, message: str) -> None:
    if not ok:
        sys.exit(f"smoke_installed: {message}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--site", type=Path, required=True, help="the folder the package was installed into")
    ap.add_argument("--script", type=Path, required=True, help="the installed pyprune-fast command")
    args = ap.parse_args(argv)

    import torch
    import torchvision

    import pyprune_fast as ppf

    where = Path(ppf.__file__).resolve().parent
    _check(where.parent == args.site.resolve(), f"pyprune_fast imported from {where}, not from {args.site}")
    modules = [m.name for m in pkgutil.walk_packages(ppf.__path__, "pyprune_fast.") if m.name != "pyprune_fast.__main__"]
    for name in modules:
        importlib.import_module(name)
    for sub in ("graph", "methods", "cluster", "schedules"):
        _check(f"pyprune_fast.{sub}" in modules, f"subpackage pyprune_fast.{sub} is not installed")
    _check((where / "py.typed").is_file(), "py.typed is not installed")
    print(f"smoke_installed: pyprune_fast {ppf.__version__} from {where}, {len(modules)} modules import; {ppf.build_info()}")

    out = subprocess.run([str(args.script), "--help"], capture_output=True, text=True)
    _check(out.returncode == 0 and "usage" in out.stdout, f"`{args.script} --help` failed: {out.stderr.strip()}")

    model = torchvision.models.resnet18()
    x = torch.randn(1, 3, 224, 224)
    report = ppf.prune(model, x, method="cup", target_flops=0.5, ignored_layers=[model.fc])
    kept = report.macs_after / report.macs_before
    _check(abs(kept - 0.5) <= 0.02, f"CUP kept {kept:.3f} of resnet18's MACs, asked for 0.5")
    _check(model(x).shape == (1, 1000), "the pruned resnet18 does not run")
    print(f"smoke_installed: `pyprune-fast --help` answers; CUP pruned resnet18 to {kept:.3f} of its MACs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
