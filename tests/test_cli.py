import argparse
import os
import subprocess
import sys

import pytest
import torch
import torchvision

import pyprune_fast as ppf
from pyprune_fast import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--input-shape", "1,3,64,64"]


def run(capsys, *argv):
    """main(argv) in-process: (exit status, stdout, stderr)."""
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_python_dash_m_help():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-m", "pyprune_fast", "--help"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert "pyprune-fast" in res.stdout and all(c in res.stdout for c in ("prune", "inspect", "bench"))


def test_every_option_is_explained(capsys):
    commands = next(a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, parser in commands.items():
        for action in parser._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
        rc, out, _ = run(capsys, name, "--help") if name != "bench" else run(capsys, "bench", "-h")
        assert rc == 0 and "usage: pyprune-fast " + name in out
    assert set(commands["prune"]._option_string_actions) >= {"--method", "--target-flops", "--out", "--plot", "--ignore"}


@pytest.mark.parametrize("method, amount", [
    ("l1", ["--ratio", "0.5"]),
    ("fpgm", ["--global-ratio", "0.4", "--min-channels", "16"]),
    ("cup", ["--target-flops", "0.5", "--round-to", "8"]),
])
def test_prune_save_and_load(capsys, tmp_path, method, amount):
    path, png = tmp_path / "pruned.pt", tmp_path / "widths.png"
    rc, out, err = run(capsys, "prune", "--model", "torchvision:resnet18", *SMALL, "--method", method, *amount,
                       "--out", str(path), "--plot", str(png))
    assert rc == 0, err
    assert f"method={method!r}" in out and "MACs" in out and str(path) in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = ppf.load_pruned(torchvision.models.resnet18, path)
    convs = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert model.layer1[0].conv1.out_channels < 64 and model.fc.out_features == 1000
    assert model.fc.in_features == model.layer4[1].conv2.out_channels
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    if method == "fpgm":
        assert min(convs) >= 16
    if method == "cup":
        assert all(c % 8 == 0 for c in convs)
        kept = ppf.profile(model, torch.randn(1, 3, 64, 64)).macs / ppf.profile(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64)).macs
        assert 0.4 < kept <= 0.5


def test_inspect_lists_groups_and_macs(capsys):
    rc, out, err = run(capsys, "inspect", "--model", "resnet18", *SMALL)
    assert rc == 0, err
    assert "13 groups, 12 prunable" in out
    assert "layer1.0.conv1" in out and "locked: fc is in ignored_layers" in out  # the classifier, found by default
    assert "MMACs" in out and "total:" in out and err == ""


def test_module_function_form(capsys, tmp_path):
    path = tmp_path / "m.pt"
    rc, out, err = run(capsys, "prune", "--model", "torchvision.models:mobilenet_v2", "--input-shape", "1,3,32,32",
                       "--ratio", "0.3", "--out", str(path))
    assert rc == 0, err
    model = ppf.load_pruned(torchvision.models.mobilenet_v2, path)
    assert model.features[0][0].out_channels == 32 - int(0.3 * 32)
    assert cli.classifier_name(model, torch.randn(1, 3, 32, 32)) == "classifier.1"


@pytest.mark.parametrize("argv", [
    ["prune", "--model", "no_such_model", "--ratio", "0.5"],
    ["prune", "--model", "no_such_package.mod:fn", "--ratio", "0.5"],
    ["prune", "--model", "torchvision.models:no_such_fn", "--ratio", "0.5"],
    ["prune", "--model", "torch:pi", "--ratio", "0.5"],
    ["prune", "--model", "resnet18", *SMALL, "--ratio", "1.5"],
    ["prune", "--model", "resnet18", *SMALL, "--target-flops", "0"],
    ["prune", "--model", "resnet18", *SMALL, "--method", "l1", "--threshold", "0.5"],
    ["prune", "--model", "resnet18", *SMALL, "--ratio", "0.5", "--round-to", "0"],
    ["prune", "--model", "resnet18", "--ratio", "0.5", "--bogus"],
    ["prune", "--model", "resnet18", "--ratio", "0.5", "--global-ratio", "0.5"],
    ["prune", "--model", "resnet18"],
    ["prune", "--model", "resnet18", "--ratio", "half"],
    ["prune", "--model", "resnet18", "--ratio", "0.5", "--method", "no_such_method"],
    ["inspect", "--model", "resnet18", "--input-shape", "1,3,x"],
    ["inspect", "--model", "resnet18", *SMALL, "--ignore", "layer9"],
    ["inspect", "--model", "resnet18", "--device", "tpu"],
    ["bench", "no_such_bench"],
    ["no_such_command"],
])
def test_bad_input_is_one_line_and_status_2(capsys, argv):
    rc, out, err = run(capsys, *argv)
    assert rc == 2
    assert err.startswith("pyprune-fast") and "error: " in err and err.count("\n") == 1, err
    assert "Traceback" not in err and out == ""


def test_bench_outside_a_source_checkout(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "__file__", str(tmp_path / "site-packages" / "pyprune_fast" / "cli.py"))
    rc, _, err = run(capsys, "bench", "ops")
    assert rc == 2 and "source checkout" in err and err.count("\n") == 1


def test_bench_passes_arguments_through(capfd):
    assert cli.main(["bench", "ops", "--help"]) == 0
    assert "usage: bench_ops.py" in capfd.readouterr().out


def test_progress_shows_stages_once_slow_on_a_terminal(capsys, monkeypatch):
    rc, _, err = run(capsys, "inspect", "--model", "resnet18", *SMALL)
    assert rc == 0 and err == ""  # not a terminal
    monkeypatch.setattr(cli, "PROGRESS_DELAY_S", 0.0)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    rc, _, err = run(capsys, "inspect", "--model", "resnet18", *SMALL)
    assert rc == 0 and "trace" in err and "stages" in err
