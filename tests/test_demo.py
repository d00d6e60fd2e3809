"""The demos `make demo` runs, shortened: they print as they go, write their pictures, and summarise."""

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
import digits_demo  # noqa: E402
import digits_training_demo  # noqa: E402
from machine import describe  # noqa: E402


def test_machine_line_names_cpu_simd_threads_and_torch():
    line = describe()
    assert torch.backends.cpu.get_cpu_capability() in line and torch.__version__ in line
    assert f"{torch.get_num_threads()} threads" in line


def test_digits_demo_prints_each_method_and_plots(tmp_path, capsys):
    threads = torch.get_num_threads()
    summary = digits_demo.demo(["--epochs", "1", "--finetune-epochs", "1", "--methods", "l1,cup",
                                "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert torch.get_num_threads() == threads  # restored after its one-thread run
    assert "  l1 " in out and "  cup " in out and "| method | MACs kept |" in out
    png = tmp_path / "digits_demo.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and len(summary) == 1 and str(png) in summary[0]


def test_training_demo_prints_every_epoch_as_it_ends(tmp_path, capsys):
    summary = digits_training_demo.demo(["--epochs", "3", "--offset", "0.3", "--out-dir", str(tmp_path)])
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line[:5].strip().isdigit()]
    assert [r[0] for r in rows] == ["0", "1", "2"]  # epochs counted from 0, as the schedules count them
    assert rows[0][1] == "0.300"  # the threshold at epoch 0 is the offset
    assert (tmp_path / "digits_training_demo.png").stat().st_size > 0 and "CUP-SS" in summary[0]
