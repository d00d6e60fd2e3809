"""The GPU checks in one command: build for the visible GPU, the CUDA tests, the benchmarks on CUDA.

  python3 tools/gpu_check.py [--out DIR] [--wheels DIR] [--budget SECONDS]   on the GPU machine
  python3 tools/gpu_check.py --dry-run                                       anywhere: the plan, and
                                            every script asked (--help) whether it takes its arguments
  python3 tools/gpu_check.py --download-wheels DIR [--wheels-mib 60]         with registry access: the
                                            wheels the GPU machine lacks (cp312, manylinux x86_64)

Steps, in order, each with its own time limit inside one budget (default 450 s, so the whole run
stays under 8 minutes): pip-install what is missing from --wheels (default ./gpu_wheels when it
exists; no index is used), build the extension in place (TORCH_CUDA_ARCH_LIST from the visible GPU,
MAX_JOBS = all cores), `pytest -m needs_cuda`, then bench_ops, bench_clustering, bench_prune,
bench_methods and bench_latency with --device cuda and reduced repetitions. A step that fails or runs out of time is
recorded and the next one runs. A benchmark column whose package is missing is left out with the
reason in the summary. Everything goes to one folder ($OUT when set, else gpu_check_out/<time>):
one log per step, the CSVs and PNGs, pytest.xml, packages.txt (pip list) and SUMMARY.md (machine,
versions, each step's status, exit code and time, and the key lines of every benchmark).

Runs with the machine's own python (no project venv); only the standard library is imported here.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 450
PYTEST_KEY = r"^(FAILED|ERROR|SKIPPED) |\d+ (passed|failed|errors?|skipped|deselected)\b.* in [\d.]+s"  # -q -ra output
INSTALL_LEAVES = 350  # seconds the pip installs must leave for the build, the tests and the benchmarks


@dataclass(frozen=True)
class Package:
    module: str      # import name
    requirement: str  # what pip installs
    used_by: str
    no_deps: bool = False  # download without dependencies (torch-pruning would pull in torch)
    minimum: str = ""  # an installed version below this one counts as missing

    @property
    def name(self) -> str:
        """The distribution's name."""
        return re.split(r"[<>=!~\[; ]", self.requirement, maxsplit=1)[0]


# What the build, the tests and the benchmarks need beyond torch, torchvision, numpy and pytest, in the
# order --download-wheels fills its size budget: the build's and the tests' first.
PACKAGES = [
    # setuptools < 77 cannot read pyproject.toml's SPDX licence; torch 2.11 asks for < 82
    Package("setuptools", "setuptools>=77,<82", "the build", minimum="77"),
    Package("hypothesis", "hypothesis", "the tests"),
    Package("scipy", "scipy", "the tests; bench_clustering's Ward rows; bench_methods' CUP comparison"),
    Package("sklearn", "scikit-learn", "the tests (k-means, digits); bench_clustering's sklearn row"),
    Package("tqdm", "tqdm", "pyprune_fast's progress bars"),
    Package("torch_pruning", "torch-pruning==1.6.1", "bench_prune's Torch-Pruning rows", no_deps=True),
    Package("faiss", "faiss-cpu", "bench_clustering's faiss rows"),
    Package("matplotlib", "matplotlib", "the PNGs of bench_ops and bench_clustering"),
]
# Dependencies pip download brings that the GPU machine already has (torch and torchvision need them).
ON_GPU_MACHINE = {"numpy", "pillow", "packaging", "typing-extensions"}
WHEEL_TAGS = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312",
              "--abi", "abi3", "--abi", "none", "--platform", "manylinux_2_28_x86_64", "--platform",
              "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64"]


@dataclass
class Step:
    name: str  # also the name of its log
    argv: list[str]
    cap: float  # its own time limit, seconds
    reserve: float = 0.0  # seconds kept for it while the steps before it run
    env: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what it leaves out, and why
    key: Optional[Callable[[str], list[str]]] = None  # its key lines, from its log
    help_argv: Optional[list[str]] = None  # the command that lists the options it takes
    status: str = "not run"
    rc: Optional[int] = None
    seconds: float = 0.0
    timeout: float = 0.0


def from_line(pattern: str) -> Callable[[str], list[str]]:
    """Key lines: from the first line matching `pattern` to the end, without the 'wrote ...' lines."""
    def key(log: str) -> list[str]:
        lines = log.splitlines()
        start = next((i for i, ln in enumerate(lines) if re.search(pattern, ln)), None)
        return [] if start is None else [ln for ln in lines[start:] if not ln.startswith("wrote ")]
    return key


def matching(pattern: str) -> Callable[[str], list[str]]:
    """Key lines: every line matching `pattern`."""
    return lambda log: [ln for ln in log.splitlines() if re.search(pattern, ln)]


def missing_packages(info: dict) -> list[Package]:
    """The PACKAGES that the probe `info` found not importable, or older than their minimum."""
    def numbers(version: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", version.split("+")[0])[:3])

    return [p for p in PACKAGES if info["modules"][p.module] is not None
            or p.minimum and numbers(info["versions"][p.name]) < numbers(p.minimum)]


def wheel_for(pkg: Package, folder: Path) -> Optional[Path]:
    """A wheel of `pkg` in `folder`, if there is one."""
    norm = re.sub(r"[-_.]+", "_", pkg.name).lower()
    found = sorted(p for p in folder.glob("*.whl") if re.sub(r"[-_.]+", "_", p.name.split("-")[0]).lower() == norm)
    return found[-1] if found else None


def install_steps(missing: list[Package], wheels: Optional[Path], py: str) -> tuple[list[Step], list[str]]:
    """One pip step per missing package that has a wheel in `wheels`; notes for those that have none."""
    notes, steps = [], []
    for pkg in missing:
        whl = wheel_for(pkg, wheels) if wheels else None
        if whl is None:
            why = f"no wheel of it is in {wheels}" if wheels else "no --wheels folder was given"
            notes.append(f"{pkg.requirement} is not installed and {why}: {pkg.used_by} go without it")
        else:
            steps.append(pip_install(py, wheels, pkg))
    return steps, notes


def pip_install(py: str, wheels: Path, pkg: Package) -> Step:
    """pip install `pkg` from the wheels folder alone (no index)."""
    argv = [py, "-m", "pip", "install", "--no-index", "--find-links", str(wheels), "--no-warn-script-location"]
    if Path(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED").exists():
        argv.append("--break-system-packages")  # the GPU machine's system python: a throwaway machine
    return Step(f"install-{pkg.module}", argv + [pkg.requirement], cap=90,
                help_argv=[py, "-m", "pip", "install", "--help"], key=matching(r"^(Successfully|ERROR)"))


def plan(have: dict[str, bool], out: Path, py: str, arch: str, jobs: int) -> list[Step]:
    """The build, test and benchmark steps, given which optional modules import (`have`)."""
    build = Step("build", [py, "setup.py", "build_ext", "--inplace"], cap=240, reserve=0,
                 env={"TORCH_CUDA_ARCH_LIST": arch, "MAX_JOBS": str(jobs), "FORCE_CUDA": "1"},
                 key=matching(r"^pyprune_fast: |error:"))
    tests = Step("pytest", [py, "-m", "pytest", "-m", "needs_cuda", "-q", "-p", "no:cacheprovider",
                            "--continue-on-collection-errors", "--durations=5", f"--junit-xml={out / 'pytest.xml'}"],
                 cap=150, reserve=60, help_argv=[py, "-m", "pytest", "--help"],
                 key=matching(PYTEST_KEY))
    gone = [p for p in PACKAGES if "the tests" in p.used_by and not have.get(p.module)]
    if gone:
        tests.notes.append(f"missing {', '.join(p.requirement for p in gone)}: the test modules importing it are "
                           "collection errors (listed below)")

    def bench(name: str, options: list[str], cap: float, reserve: float, key: str) -> Step:
        script = str(ROOT / "benchmarks" / f"{name}.py")
        csv = str(out / f"{name.removeprefix('bench_')}.csv")
        return Step(name, [py, script, "--device", "cuda", *options, "--csv", csv], cap=cap, reserve=reserve,
                    key=from_line(key), help_argv=[py, script, "--help"])

    backends = ",".join(["native", "torch"] + [m for m in ("faiss", "sklearn") if have.get(m)])
    ops = bench("bench_ops", ["--min-time", "0.2"], 90, 30, r"^pyprune_fast ops vs")
    clustering = bench("bench_clustering", ["--models", "resnet50,vgg16", "--reps", "2", "--backends", backends],
                       120, 40, r"^clustering every conv layer")
    prune = bench("bench_prune", ["--models", "resnet50,vit_b_16", "--reps", "3"], 150, 40, r"^medians of")
    methods = bench("bench_methods", ["--models", "resnet50,vit_b_16", "--reps", "2"], 180, 60, r"^torch ")
    script = str(ROOT / "benchmarks" / "bench_latency.py")  # its CSVs and PNG go to a folder of their own
    latency = Step("bench_latency", [py, script, "--device", "cuda", "--models", "resnet50,vit_b_16", "--methods", "l1",
                                     "--keep", "0.5", "--backends", "eager,compile", "--batch-sizes", "1,32",
                                     "--targets", "0.5", "--round-to", "1,8", "--min-time", "0.2",
                                     "--out-dir", str(out / "latency")],
                   cap=150, reserve=40, key=from_line(r"^1\. MACs kept"), help_argv=[py, script, "--help"])
    # What each step leaves out without a module: (step, module, the flag that says so, what goes).
    for step, module, flag, what in (
            (clustering, "faiss", None, "no faiss rows"), (clustering, "sklearn", None, "no scikit-learn rows"),
            (clustering, "scipy", "--no-ward", "no Ward rows"), (prune, "torch_pruning", "--no-tp", "ours only"),
            (methods, "scipy", "--skip-cup", "no CUP-against-published comparison")):
        if not have.get(module):
            step.argv += [flag] if flag else []
            requirement = next(p.requirement for p in PACKAGES if p.module == module)
            step.notes.append(f"{what}{f' ({flag})' if flag else ''}: {requirement} is not installed")
    for step in (ops, clustering):
        png = str(out / f"{step.name.removeprefix('bench_')}.png")
        if have.get("matplotlib"):
            step.argv += ["--plot", png]
        else:
            step.notes.append(f"no {Path(png).name}: matplotlib is not installed")
    return [build, tests, ops, clustering, prune, methods, latency]


# --------------------------------------------------------------------------------------------------
# Running


def run_step(step: Step, out: Path, deadline: float, later_reserve: float) -> None:
    """Run `step` with its log in `out`, killed (with its children) at its time limit."""
    left = deadline - time.monotonic() - later_reserve
    if left < 5:
        step.status = "skipped: the time budget is spent"
        return
    step.timeout = min(step.cap, left)
    env = dict(os.environ, PYTHONUNBUFFERED="1", **step.env)
    print(f"[gpu-check] {step.name}: {shlex.join(step.argv)}  (limit {step.timeout:.0f} s)", flush=True)
    t0 = time.monotonic()
    with open(out / f"{step.name}.log", "w") as log:
        log.write(f"$ {' '.join(f'{k}={v}' for k, v in step.env.items())} {shlex.join(step.argv)}\n")
        log.flush()
        proc = subprocess.Popen(step.argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            step.rc = proc.wait(timeout=step.timeout)
            step.status = "ok" if step.rc == 0 else "FAILED"
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            step.status = f"TIMEOUT after {step.timeout:.0f} s"
    step.seconds = time.monotonic() - t0
    print(f"[gpu-check] {step.name}: {step.status} (exit {step.rc}, {step.seconds:.1f} s)", flush=True)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the step's process group, SIGKILL five seconds later if it is still there."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


PROBE = r"""
import importlib, importlib.util, json, sys
from importlib.metadata import version
mods, really = json.loads(sys.argv[1]), sys.argv[2] == "import"
res = {"modules": {}, "versions": {}}
for m, dist in mods.items():
    try:
        if really:
            importlib.import_module(m)
        elif importlib.util.find_spec(m) is None:
            raise ImportError(f"No module named {m!r}")
        res["modules"][m] = None
    except Exception as e:
        res["modules"][m] = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        continue
    try:
        res["versions"][dist] = version(dist)
    except Exception:
        res["versions"][dist] = "(version unknown)"
import torch
res["torch"] = torch.__version__
res["torch_cuda"] = torch.version.cuda
res["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
res["gpu"] = torch.cuda.is_available()
if res["gpu"]:
    res["gpu_name"] = torch.cuda.get_device_name()
    res["capability"] = list(torch.cuda.get_device_capability())
print(json.dumps(res))
"""


def probe(py: str, really: bool = True) -> dict:
    """What `py` can import (module -> None or the error), versions, and the visible GPU. Without
    `really`, the modules are only looked for, not imported (faster)."""
    mods = {p.module: p.name for p in PACKAGES}
    mods.update({"torchvision": "torchvision", "numpy": "numpy", "pytest": "pytest"})
    proc = subprocess.run([py, "-c", PROBE, json.dumps(mods), "import" if really else "find"], capture_output=True,
                          text=True, cwd=tempfile.gettempdir())
    if proc.returncode != 0:
        raise SystemExit(f"gpu_check: {py} cannot import torch: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cmd(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return proc.stdout.strip() if proc.returncode == 0 else f"unavailable ({proc.stderr.strip()[:100]})"
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({type(e).__name__})"


def machine(py: str, info: dict) -> list[str]:
    """The summary's description of the machine and software."""
    smi = _cmd(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    nvcc = _cmd(["nvcc", "--version"]).splitlines()
    load = os.getloadavg()[0]
    versions = ", ".join(f"{k} {v}" for k, v in sorted(info["versions"].items()))
    return [
        f"- GPU (nvidia-smi: name, driver, memory): {smi}",
        f"- torch sees: {info.get('gpu_name', 'no GPU')}, compute capability {info.get('capability')}",
        f"- CPU: {os.cpu_count()} cores, load average {load:.2f} at the start; {platform.platform()}",
        f"- Python {platform.python_version()} ({py}); torch {info['torch']} (CUDA {info['torch_cuda']}, "
        f"cuDNN {info['cudnn']}); nvcc: {nvcc[-1] if nvcc else 'unavailable'}",
        f"- packages: {versions}",
        f"- source: {_cmd(['git', '-C', str(ROOT), 'log', '-1', '--format=%h %cI %s'])[:120]}"
        if (ROOT / ".git").exists() else "- source: not a git checkout",
    ]


def summary(out: Path, head: list[str], steps: list[Step], notes: list[str], started: str, total: float) -> None:
    lines = [f"# GPU check, {started}", "", *head, "", f"Total {total:.0f} s.", ""]
    left_out = notes + [f"{s.name}: {n}" for s in steps for n in s.notes]
    if left_out:
        lines += ["Left out:", *(f"- {n}" for n in left_out), ""]
    lines += ["| step | status | exit code | seconds | limit s |", "|---|---|---:|---:|---:|"]
    lines += [f"| {s.name} | {s.status} | {'' if s.rc is None else s.rc} | {s.seconds:.1f} | {s.timeout:.0f} |"
              for s in steps]
    for s in steps:
        log = out / f"{s.name}.log"
        if not log.exists() or s.name.startswith("install-") and s.status == "ok":
            continue
        text = log.read_text(errors="replace")
        key = s.key(text) if s.key else []
        if s.status != "ok":
            key = key[-40:] + ["...", *text.splitlines()[-15:]]
        lines += ["", f"## {s.name}: {s.status}", "", f"`{shlex.join(s.argv)}`", "", "```", *key[:80], "```"]
    (out / "SUMMARY.md").write_text("\n".join(lines) + "\n")


def run(args: argparse.Namespace, py: str) -> int:
    start = time.monotonic()
    deadline = start + args.budget
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    info = probe(py)
    if not info["gpu"]:
        print("gpu_check: no CUDA GPU is visible (torch.cuda.is_available() is False); use --dry-run here",
              file=sys.stderr)
        return 2
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "packages.txt").write_text(_cmd([py, "-m", "pip", "list", "--format=freeze"]) + "\n")
    installs, notes = install_steps(missing_packages(info), args.wheels, py)
    head = machine(py, info)
    steps = list(installs)
    for s in installs:
        run_step(s, out, deadline, INSTALL_LEAVES)
        summary(out, head, steps, notes, started, time.monotonic() - start)
    if installs:
        info = probe(py)
        head = machine(py, info)
    have = {m: err is None for m, err in info["modules"].items()}
    arch = "{}.{}".format(*info["capability"])
    later = plan(have, out, py, arch, os.cpu_count() or 1)
    steps += later
    for i, s in enumerate(later):
        run_step(s, out, deadline, sum(t.reserve for t in later[i + 1:]))
        summary(out, head, steps, notes, started, time.monotonic() - start)
        if s.name == "build" and s.status != "ok":
            for t in later[1:]:
                t.status = "skipped: no build"
            break
    summary(out, head, steps, notes, started, time.monotonic() - start)
    print((out / "SUMMARY.md").read_text())
    print(f"[gpu-check] everything is in {out}")
    return 0 if all(s.status == "ok" for s in steps) else 1


# --------------------------------------------------------------------------------------------------
# Dry run


def missing_flags(argv: list[str], help_text: str) -> list[str]:
    """The --options of `argv` that `help_text` does not mention."""
    flags = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    return sorted(f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", help_text))


HELPS = r"""
import contextlib, io, json, runpy, sys
res = {}
for script in json.loads(sys.argv[1]):
    sys.argv, text = [script, "--help"], io.StringIO()
    try:
        with contextlib.redirect_stdout(text):
            runpy.run_path(script, run_name="__main__")
        res[script] = [1, "--help did not exit"]
    except SystemExit as e:
        res[script] = [e.code or 0, text.getvalue()]
    except Exception as e:
        res[script] = [1, f"{type(e).__name__}: {e}"]
print(json.dumps(res))
"""


def help_texts(commands: list[tuple[str, ...]]) -> dict[tuple[str, ...], tuple[int, str]]:
    """(exit code, output) of every help command; the `py script.py --help` ones share one interpreter."""
    scripts = [c for c in commands if c[1].endswith(".py") and c[2:] == ("--help",)]
    others = [c for c in commands if c not in scripts]

    def run_one(c):
        proc = subprocess.run(list(c), capture_output=True, text=True, cwd=ROOT)
        return proc.returncode, proc.stdout if proc.returncode == 0 else proc.stderr

    def run_scripts():
        if not scripts:
            return {}
        proc = subprocess.run([scripts[0][0], "-c", HELPS, json.dumps([c[1] for c in scripts])], capture_output=True,
                              text=True, cwd=ROOT)
        if proc.returncode != 0:
            return {c: (proc.returncode, proc.stderr[-300:]) for c in scripts}
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        return {c: tuple(res[c[1]]) for c in scripts}

    with concurrent.futures.ThreadPoolExecutor(len(others) + 1) as pool:
        together = pool.submit(run_scripts)
        out = dict(zip(others, pool.map(run_one, others)))
        out.update(together.result())
    return out


def dry_run(args: argparse.Namespace, py: str) -> int:
    info = probe(py, really=False)
    have = {m: err is None for m, err in info["modules"].items()}
    arch = "{}.{}".format(*info["capability"]) if info["gpu"] else "<from the visible GPU>"
    installs, notes = install_steps(missing_packages(info), args.wheels, py)
    steps = installs + plan(have, args.out, py, arch, os.cpu_count() or 1)
    print(f"gpu_check --dry-run: would write into {args.out}, within {args.budget:.0f} s; python {py}\n")
    for n in notes:
        print(f"  left out: {n}")
    for s in steps:
        env = " ".join(f"{k}={v}" for k, v in s.env.items())
        print(f"  {s.name:<16} limit {s.cap:>3.0f} s  {env + ' ' if env else ''}{shlex.join(s.argv)}")
        for n in s.notes:
            print(f"  {'':<16} note: {n}")
    # Ask every script about the flags of both extremes: every optional package there, none there.
    variants = steps + plan({p.module: True for p in PACKAGES}, args.out, py, arch, 1)
    variants += plan({}, args.out, py, arch, 1) + [pip_install(py, ROOT / "gpu_wheels", PACKAGES[0])]
    wanted: dict[tuple[str, ...], list[str]] = {}
    for s in variants:
        if s.help_argv:
            wanted.setdefault(tuple(s.help_argv), []).extend(s.argv)
    helps = help_texts(list(wanted))
    problems = []
    for h, argv in wanted.items():
        rc, text = helps[h]
        if rc != 0:
            problems.append(f"{shlex.join(h)} failed (exit {rc}): {text.strip()[-300:]}")
        elif bad := missing_flags(argv, text):
            problems.append(f"{shlex.join(h[:-1])} does not take {', '.join(bad)}")
    if not (ROOT / "setup.py").exists():
        problems.append("setup.py is missing")
    print()
    for p in problems:
        print(f"  PROBLEM: {p}")
    verdict = f"{len(problems)} problem(s)" if problems else "every argument is accepted"
    print(f"checked {len(wanted)} commands: {verdict}")
    return 1 if problems else 0


# --------------------------------------------------------------------------------------------------
# Wheels for the GPU machine


def download_wheels(dest: Path, budget_mib: float, py: str) -> int:
    """Download the wheels of PACKAGES for the GPU machine into `dest`, in order, while they fit."""
    dest.mkdir(parents=True, exist_ok=True)
    used = sum(p.stat().st_size for p in dest.glob("*.whl"))
    left_out = []
    for pkg in PACKAGES:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [py, "-m", "pip", "download", "-q", *WHEEL_TAGS, "-d", tmp, pkg.requirement]
            if pkg.no_deps:
                cmd.insert(4, "--no-deps")
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{pkg.requirement}: download failed: {proc.stderr.strip()[-300:]}", file=sys.stderr)
                return 1
            new = [p for p in Path(tmp).glob("*.whl") if re.sub(r"[-_.]+", "-", p.name.split("-")[0]).lower()
                   not in ON_GPU_MACHINE and not (dest / p.name).exists()]
            size = sum(p.stat().st_size for p in new)
            if used + size > budget_mib * 2**20:
                left_out.append(f"{pkg.requirement} ({size / 2**20:.1f} MiB: over the {budget_mib:g} MiB budget)")
                continue
            for p in new:
                shutil.move(str(p), dest / p.name)
            used += size
            names = ", ".join(sorted(p.name.split("-")[0] for p in new)) or "already there"
            print(f"{pkg.requirement}: {size / 2**20:.1f} MiB ({names})")
    print(f"{dest}: {used / 2**20:.1f} MiB in {len(list(dest.glob('*.whl')))} wheels")
    for item in left_out:
        print(f"left out: {item}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    now = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    default_out = os.environ.get("OUT") or str(ROOT / "gpu_check_out" / now)
    p.add_argument("--out", type=Path, default=Path(default_out), help="folder for every output (default: $OUT, "
                   "else gpu_check_out/<time>)")
    p.add_argument("--wheels", type=Path, default=None, help="install missing packages from the wheels in this "
                   "folder (default: ./gpu_wheels when it exists)")
    p.add_argument("--budget", type=float, default=BUDGET_S, help=f"seconds for the whole run (default {BUDGET_S})")
    p.add_argument("--dry-run", action="store_true", help="list the steps and check every script takes its arguments")
    p.add_argument("--download-wheels", type=Path, metavar="DIR", help="download the GPU machine's missing wheels")
    p.add_argument("--wheels-mib", type=float, default=60, help="size budget of --download-wheels (default 60 MiB)")
    args = p.parse_args(argv)
    if args.download_wheels:
        return download_wheels(args.download_wheels, args.wheels_mib, sys.executable)
    if args.wheels is None and (ROOT / "gpu_wheels").is_dir():
        args.wheels = ROOT / "gpu_wheels"
    if args.wheels is not None and not args.wheels.is_dir():
        p.error(f"--wheels {args.wheels}: no such folder")
    if args.budget < 300:
        p.error("--budget must be at least 300 seconds (the time kept for the steps after the build)")
    args.out = args.out.resolve()
    return dry_run(args, sys.executable) if args.dry_run else run(args, sys.executable)


if __name__ == "__main__":
    sys.exit(main())
