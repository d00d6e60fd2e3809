"""The report's picture and the progress bar of prune/decide/commit."""

import struct
import sys
import threading
import time

import pytest
import torch

import pyprune_fast as ppf
from pyprune_fast import progress
from pyprune_fast.plotting import check_plot_path, short_names
from nets import TinyResNet

STAGES = ("trace", "scores / clustering", "allocation", "choosing channels", "surgery", "recount")


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])  # width, height from the IHDR chunk


def tiny_prune(**kw):
    torch.manual_seed(0)
    model = TinyResNet()
    return model, ppf.prune(model, torch.randn(1, 1, 8, 8), "l1", ratio=0.5, ignored_layers=[model.fc], **kw)


def test_plot_writes_a_png_with_a_row_per_group(tmp_path, tv_model):
    small = tv_model("resnet18")
    big = tv_model("resnet50")
    x = torch.randn(1, 3, 32, 32)
    sizes = []
    for model, name in ((small, "r18.png"), (big, "r50.png")):
        report = ppf.prune(model, x, "l1", global_ratio=0.4, ignored_layers=[model.fc])
        report.plot(tmp_path / name)
        sizes.append(png_size(tmp_path / name))
        assert (tmp_path / name).stat().st_size > 10_000
    assert sizes[1][1] > sizes[0][1]  # more groups, taller picture


def test_group_labels():
    labels, prefix = short_names(["conv2d layer1.0.conv1", "conv2d conv1", "linear fc"])
    assert labels == ["layer1.0.conv1", "conv1", "fc"] and prefix == ""
    labels, prefix = short_names(["attention heads encoder.layers.encoder_layer_0.self_attention",
                                  "linear encoder.layers.encoder_layer_1.mlp.0"])
    assert labels == ["encoder_layer_0.self_attention heads", "encoder_layer_1.mlp.0"]
    assert prefix == "encoder.layers."
    labels, _ = short_names(["64 dims of each of 6 heads of linear blocks.0.attn.qkv", "6 heads of linear blocks.1.attn.qkv"])
    assert labels == ["0.attn.qkv head dims", "1.attn.qkv heads"]
    (long,), _ = short_names(["conv2d " + "a" * 30 + ".b" * 20])
    assert long.startswith("\u2026") and long.endswith(".b.b") and len(long) == 40


@pytest.mark.parametrize("name, error, words", [
    ("missing/widths.png", ValueError, "does not exist"),
    (".", ValueError, "is a folder"),
    ("widths.docx", ValueError, "cannot write a '.docx' image"),
])
def test_plot_refuses_a_bad_path_before_drawing(tmp_path, name, error, words):
    _, report = tiny_prune()
    path = tmp_path / name
    with pytest.raises(error, match=words):
        report.plot(path)
    with pytest.raises(error, match=words):
        check_plot_path(path)  # the same check, for callers that want it before pruning
    assert list(tmp_path.iterdir()) == []


def test_plot_path_type():
    with pytest.raises(TypeError, match="str or os.PathLike"):
        check_plot_path(3)


def test_progress_true_shows_every_stage(capsys):
    tiny_prune(progress=True)
    err = capsys.readouterr().err
    assert all(f"prune l1: {s}" in err for s in STAGES), err


def test_progress_auto_is_silent_off_a_terminal_and_for_quick_calls(capsys, monkeypatch):
    tiny_prune()
    assert capsys.readouterr().err == ""  # not a terminal
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    tiny_prune()
    assert capsys.readouterr().err == ""  # a terminal, but done long before DELAY_S
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    tiny_prune()
    assert "prune l1: recount" in capsys.readouterr().err


def test_progress_false_and_the_environment(capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    tiny_prune(progress=False)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("PYPRUNE_FAST_PROGRESS", "0")
    tiny_prune()
    assert capsys.readouterr().err == ""
    tiny_prune(progress=True)  # the argument wins over the environment
    assert "prune l1: trace" in capsys.readouterr().err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    monkeypatch.setenv("PYPRUNE_FAST_PROGRESS", "1")
    tiny_prune()
    assert "prune l1: trace" in capsys.readouterr().err


def test_bad_progress_values_modify_nothing(monkeypatch):
    torch.manual_seed(0)
    model = TinyResNet()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(TypeError, match="progress must be None, True or False, got 'yes'"):
        ppf.prune(model, x, "l1", ratio=0.5, progress="yes")
    monkeypatch.setenv("PYPRUNE_FAST_PROGRESS", "yes")
    with pytest.raises(ValueError, match="PYPRUNE_FAST_PROGRESS must be 0"):
        ppf.prune(model, x, "l1", ratio=0.5)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_a_long_stage_shows_the_bar_while_it_runs(capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.setattr(progress, "DELAY_S", 0.2)
    with progress.Stages(["first", "second"], None, "job") as stages:
        stages.start("first")  # before the delay: nothing drawn yet
        assert capsys.readouterr().err == ""
        seen, deadline = "", time.monotonic() + 10
        while "job: first" not in seen and time.monotonic() < deadline:
            time.sleep(0.1)
            seen += capsys.readouterr().err
        assert "job: first" in seen  # drawn during the stage, with no call from it


def test_decide_and_commit_show_their_stages_and_close_on_error(capsys):
    torch.manual_seed(0)
    model = TinyResNet()
    x = torch.randn(1, 1, 8, 8)
    decision = ppf.decide(model, x, "l1", ratio=0.5, ignored_layers=[model.fc], progress=True)
    ppf.commit(decision, x, progress=True)
    err = capsys.readouterr().err
    assert all(f"decide l1: {s}" in err for s in STAGES[:4]) and all(f"commit l1: {s}" in err for s in STAGES[4:])
    with pytest.raises(ValueError, match="cannot be reached"):
        ppf.prune(model, x, "l1", target_flops=0.001, progress=True)
    assert not [t for t in threading.enumerate() if t.name == "pyprune_fast-progress"]
