"""tools/gpu_check.py (make gpu-check) and the benchmark options it relies on: the dry run finds every
argument accepted; a real run refuses a machine without a GPU; a step past its time limit is killed
with its children and recorded; a missing optional package leaves out its rows and says why."""

import csv
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "gpu_check.py"
STEPS = ("build", "pytest", "bench_ops", "bench_clustering", "bench_prune", "bench_methods", "bench_latency")


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


gpu_check = load(TOOL, "gpu_check")


def tool(*args):
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_dry_run_lists_every_step_and_every_script_accepts_its_arguments(tmp_path):
    out = tmp_path / "out"
    proc = tool("--dry-run", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    listed = [line.split()[0] for line in proc.stdout.splitlines() if " limit " in line]
    assert listed[-len(STEPS):] == list(STEPS)
    assert proc.stdout.count("--device cuda") == 5
    assert "every argument is accepted" in proc.stdout
    assert not out.exists()  # a dry run writes nothing


def test_bad_arguments_are_refused_before_any_work(tmp_path):
    proc = tool("--dry-run", "--wheels", str(tmp_path / "nowhere"))
    assert proc.returncode == 2
    assert "--wheels" in proc.stderr and "no such folder" in proc.stderr
    proc = tool("--budget", "100", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "--budget must be at least 300 seconds" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine this would start the whole check")
def test_a_real_run_refuses_a_machine_without_a_gpu(tmp_path):
    out = tmp_path / "out"
    proc = tool("--out", str(out))
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("gpu_check: no CUDA GPU is visible (torch.cuda.is_available() is False); "
                                   "use --dry-run here")
    assert not out.exists()


def test_missing_flags_reads_whole_option_names():
    help_text = "  --device DEVICE   cpu or cuda\n  --no-tp-recipe    skip it\n  --csv CSV\n"
    assert gpu_check.missing_flags(["py", "x.py", "--device", "cuda", "--csv=a.csv"], help_text) == []
    assert gpu_check.missing_flags(["--no-tp", "--device", "--reps", "3"], help_text) == ["--no-tp", "--reps"]


def test_the_plan_builds_for_the_gpu_and_leaves_out_what_is_missing(tmp_path):
    full = {s.name: s for s in gpu_check.plan({p.module: True for p in gpu_check.PACKAGES}, tmp_path, "py", "9.0", 16)}
    bare = {s.name: s for s in gpu_check.plan({}, tmp_path, "py", "9.0", 16)}
    assert list(full) == list(bare) == list(STEPS)
    assert full["build"].env == {"TORCH_CUDA_ARCH_LIST": "9.0", "MAX_JOBS": "16", "FORCE_CUDA": "1"}
    assert all(not s.notes for s in full.values())
    for name in STEPS[2:]:
        assert full[name].argv[2:4] == bare[name].argv[2:4] == ["--device", "cuda"]
        assert all(str(tmp_path) in a for a in full[name].argv if a.endswith((".csv", ".png")))
    assert "--plot" in full["bench_ops"].argv and "--plot" not in bare["bench_ops"].argv
    for flag, name in (("--no-tp", "bench_prune"), ("--skip-cup", "bench_methods"), ("--no-ward", "bench_clustering")):
        assert flag not in full[name].argv and flag in bare[name].argv
    backends = lambda s: s.argv[s.argv.index("--backends") + 1]  # noqa: E731
    assert backends(full["bench_clustering"]) == "native,torch,faiss,sklearn"
    assert backends(bare["bench_clustering"]) == "native,torch"
    notes = " ".join(bare["bench_clustering"].notes + bare["bench_prune"].notes + bare["pytest"].notes)
    for package in ("faiss-cpu", "scikit-learn", "scipy", "matplotlib", "torch-pruning", "hypothesis"):
        assert package in notes


def test_missing_packages_install_from_the_wheels_folder_alone(tmp_path):
    (tmp_path / "scikit_learn-1.9.1-cp312-cp312-manylinux_2_28_x86_64.whl").write_bytes(b"")
    by_module = {p.module: p for p in gpu_check.PACKAGES}
    steps, notes = gpu_check.install_steps([by_module["sklearn"], by_module["faiss"]], tmp_path, "py")
    assert [s.name for s in steps] == ["install-sklearn"]
    argv = steps[0].argv
    assert argv[:4] == ["py", "-m", "pip", "install"] and argv[-1] == "scikit-learn"
    assert "--no-index" in argv and argv[argv.index("--find-links") + 1] == str(tmp_path)
    assert len(notes) == 1 and "faiss-cpu" in notes[0]


def test_a_package_older_than_its_minimum_counts_as_missing():
    info = {"modules": {p.module: None for p in gpu_check.PACKAGES},
            "versions": {p.name: "1.0" for p in gpu_check.PACKAGES}}
    info["versions"]["setuptools"] = "76.1.0"
    assert [p.name for p in gpu_check.missing_packages(info)] == ["setuptools"]
    info["versions"]["setuptools"] = "81.0.0"
    info["modules"]["faiss"] = "ModuleNotFoundError: No module named 'faiss'"
    assert [p.name for p in gpu_check.missing_packages(info)] == ["faiss-cpu"]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_step_past_its_limit_is_killed_with_its_children_and_recorded(tmp_path):
    child = ("import subprocess, sys, time; "
             "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
             "print('grandchild', p.pid, flush=True); time.sleep(120)")
    step = gpu_check.Step("sleepy", [sys.executable, "-c", child], cap=3, key=gpu_check.matching("^grandchild"))
    t0 = time.monotonic()
    gpu_check.run_step(step, tmp_path, deadline=time.monotonic() + 100, later_reserve=0)
    assert time.monotonic() - t0 < 30
    assert step.status == "TIMEOUT after 3 s" and step.rc is None
    log = (tmp_path / "sleepy.log").read_text()
    grandchild = int(log.split("grandchild ")[1].split()[0])
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(grandchild)

    late = gpu_check.Step("late", [sys.executable, "-c", "pass"], cap=60)
    gpu_check.run_step(late, tmp_path, deadline=time.monotonic() + 30, later_reserve=28)
    assert late.status == "skipped: the time budget is spent" and not (tmp_path / "late.log").exists()

    gpu_check.summary(tmp_path, ["- a machine"], [step, late], ["x is missing"], "today", 4.0)
    text = (tmp_path / "SUMMARY.md").read_text()
    assert "| sleepy | TIMEOUT after 3 s |  | 3." in text and "| late | skipped: the time budget is spent |" in text
    assert "- x is missing" in text and f"grandchild {grandchild}" in text


def test_key_lines():
    log = "setup\nclustering every conv layer\nrow 1\nwrote a.csv\nrow 2\n"
    assert gpu_check.from_line("^clustering every")(log) == ["clustering every conv layer", "row 1", "row 2"]
    assert gpu_check.from_line("^absent")(log) == []
    assert gpu_check.matching("^row")(log) == ["row 1", "row 2"]


# --------------------------------------------------------------------------------------------------
# The benchmark options the check uses where a package is missing


def bench(name: str):
    return load(ROOT / "benchmarks" / f"{name}.py", f"gpu_check_{name}")


def test_bench_clustering_runs_only_the_backends_named(tmp_path, capsys):
    out = tmp_path / "c.csv"
    assert bench("bench_clustering").main(["--models", "resnet18", "--backends", "native,torch", "--no-ward",
                                           "--reps", "1", "--niter", "2", "--csv", str(out)]) == 0
    with open(out) as f:
        rows = [(r["task"], r["backend"]) for r in csv.DictReader(f)]
    assert rows == [("kmeans", "native (cpu)"), ("kmeans", "torch (cpu)"), ("kmeans defaults", "native (cpu)")]
    with pytest.raises(SystemExit) as e:
        bench("bench_clustering").main(["--backends", "native,bogus"])
    assert e.value.code == 2 and "--backends 'native,bogus'" in capsys.readouterr().err


def test_bench_prune_without_torch_pruning(tmp_path, capsys, monkeypatch):
    module = bench("bench_prune")
    monkeypatch.setitem(sys.modules, "torch_pruning", None)  # as where it is not installed
    with pytest.raises(SystemExit) as e:
        module.main(["--models", "resnet50", "--reps", "1"])
    assert e.value.code == 2 and "pass --no-tp" in capsys.readouterr().err
    out = tmp_path / "p.csv"
    assert module.main(["--models", "resnet50", "--reps", "1", "--no-tp", "--csv", str(out)]) == 0
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [r["tool"] for r in rows] == ["ours"] and rows[0]["error"] == "" and int(rows[0]["macs_after"]) > 0


def test_bench_methods_without_scipy_needs_skip_cup(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.cluster.hierarchy", None)  # as where scipy is not installed
    module = bench("bench_methods")
    assert module.linkage is None
    with pytest.raises(SystemExit) as e:
        module.main(["--models", ""])
    assert e.value.code == 2 and "pass --skip-cup" in capsys.readouterr().err
    assert module.main(["--models", "", "--skip-cup"]) == 0
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            module.main(["--device", "cuda", "--skip-cup"])
        assert "no CUDA GPU is visible" in capsys.readouterr().err
