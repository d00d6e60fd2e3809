"""benchmarks/_harness.py's machine line, --threads and --load: bad values refused with one line, and the
busy processes gone after the run however it ends (normally, by an exception, Ctrl-C, SIGTERM, or its
process killed outright)."""

import argparse
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks")
sys.path.insert(0, BENCH)
import _harness  # noqa: E402


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its reaper does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except FileNotFoundError:
        return False


def gone(pids, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def run_machine(argv):
    with _harness.machine(argparse.ArgumentParser(prog="bench"), argv) as args:
        return args


@pytest.mark.parametrize("argv, message", [
    (["--load", "-1"], "--load -1: must be between 0 and"),
    (["--load", str(os.cpu_count() + 1)], f"--load {os.cpu_count() + 1}: must be between 0 and"),
    (["--threads", "0"], "--threads 0: must be at least 1"),
    (["--threads", "-3"], "--threads -3: must be at least 1"),
])
def test_bad_values_are_refused_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        run_machine(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and message in err[-1] and err[0].startswith("usage:")  # usage, then the one line
    assert [line for line in err if "error" in line] == [err[-1]]


def test_machine_line_names_cpu_simd_threads_and_load(capsys):
    threads = torch.get_num_threads()
    try:
        run_machine(["--threads", "1"])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    line = capsys.readouterr().out.splitlines()[0]
    simd = torch.backends.cpu.get_cpu_capability()
    forced = os.environ.get("ATEN_CPU_CAPABILITY")  # a lesser level set for the run: the line says so
    assert line.startswith(f"machine: {_harness.cpu_model()}, SIMD {simd}" + (f" (ATEN_CPU_CAPABILITY={forced}"
                                                                              if forced else ", 1 torch threads on "))
    assert ", 1 torch threads on " in line
    assert "(1 for pyprune_fast now, PYPRUNE_FAST_THREADS=" in line
    assert "load average" in line and line.endswith("--load 0")


SIMD_SCRIPT = """
import argparse, os, sys
import torch
sys.path.insert(0, {bench!r})
import _harness
with _harness.machine(argparse.ArgumentParser(prog="bench")) as args:
    print("capability", torch.backends.cpu.get_cpu_capability(), os.environ.get("MKL_ENABLE_INSTRUCTIONS"))
"""


def test_simd_runs_the_script_again_on_a_lesser_level(tmp_path, monkeypatch):
    """--simd default: the script starts again with torch's and MKL's level set (read when torch loads), and
    its machine line says so; from Python (argv given) it is refused, as a level above this CPU's is."""
    script = tmp_path / "bench.py"
    script.write_text(SIMD_SCRIPT.format(bench=BENCH))
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")}
    out = subprocess.run([sys.executable, str(script), "--simd", "default"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "SIMD DEFAULT (ATEN_CPU_CAPABILITY=default" in lines[0] and lines[1] == "capability DEFAULT SSE4_2"
    try:
        import faiss  # noqa: F401
        assert "faiss NONE)" in lines[0]  # its dynamic dispatch set to the same level
    except ImportError:
        pass
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)  # not yet on the level asked: it would start again
    with pytest.raises(SystemExit):
        run_machine(["--simd", "default"])
    here = torch.backends.cpu.get_cpu_capability().lower()
    if here != "avx512":
        with pytest.raises(SystemExit):
            run_machine(["--simd", "avx512"])


def test_busy_processes_run_inside_and_are_gone_after():
    with _harness.BusyLoad(1) as load:
        pids = [p.pid for p in load.procs]
        assert len(pids) == 1 and alive(pids[0])
    assert gone(pids)


def test_busy_processes_are_gone_after_an_exception():
    with pytest.raises(RuntimeError):
        with _harness.BusyLoad(1) as load:
            pids = [p.pid for p in load.procs]
            raise RuntimeError("boom")
    assert gone(pids)


# A script that starts one busy process through machine(), says its pid, then waits to be stopped. Ctrl-C raises
# KeyboardInterrupt in it as in a terminal, even where the test runs with SIGINT ignored (started in the background
# by a non-interactive shell: the ignore is inherited); it sleeps in short steps, as a benchmark runs Python
# throughout (a signal that another thread of the process receives is acted on when the main thread runs Python).
SCRIPT = f"""
import argparse, multiprocessing, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, {BENCH!r})
import _harness
with _harness.machine(argparse.ArgumentParser(), ["--load", "1"]) as args:
    [proc] = multiprocessing.active_children()
    print("pid", proc.pid, flush=True)
    for _ in range(600):
        time.sleep(0.1)
"""


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_busy_processes_are_gone_when_the_benchmark_is_stopped(stop):
    bench = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = bench.stdout.readline()
        while line and not line.startswith("pid "):
            line = bench.stdout.readline()
        pid = int(line.split()[1])
        assert alive(pid)
        bench.send_signal(stop)
        bench.wait(60)  # a loaded machine can take a while to unwind and reap
        assert gone([pid]), f"busy process {pid} still runs after {stop.name}"
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
