import argparse
import os
import subprocess
import sys
from pathlib import Path

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


def test_python_dash_m_refuses_in_one_line(tmp_path):
    """The real process: status 2, one line on stderr, nothing written, for an --out into a missing folder."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-m", "pyprune_fast", "prune", "--model", "resnet18", "--ratio", "0.5",
                          "--out", str(tmp_path / "missing" / "pruned.pt")], capture_output=True, text=True, env=env)
    assert res.returncode == 2 and res.stdout == "" and list(tmp_path.iterdir()) == []
    assert res.stderr == f"pyprune-fast prune: error: argument --out: {tmp_path / 'missing' / 'pruned.pt'}: " \
                         f"the folder {tmp_path / 'missing'} does not exist\n"


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
def test_prune_save_and_load(capsys, tmp_path, method, amount, tv_model):
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
        kept = ppf.profile(model, torch.randn(1, 3, 64, 64)).macs / ppf.profile(tv_model("resnet18"), torch.randn(1, 3, 64, 64)).macs
        assert 0.4 < kept <= 0.5


def test_inspect_lists_groups_and_macs(capsys):
    rc, out, err = run(capsys, "inspect", "--model", "resnet18", *SMALL)
    assert rc == 0, err
    assert "13 groups, 12 prunable" in out
    assert "layer1.0.conv1" in out and "locked: fc is in ignored_layers" in out  # the classifier, found by default
    assert "MMACs" in out and "total:" in out and err == ""


@pytest.mark.parametrize("flags, shown", [((), "64 dims of each of 6 heads of linear blocks.0.attn.qkv  prunable"),
                                          (("--heads", "whole", "--prune-embedding"),
                                           "6 heads of linear blocks.0.attn.qkv  prunable")])
def test_inspect_shows_the_graph_prune_would_use(capsys, flags, shown):
    rc, out, err = run(capsys, "inspect", "--model", "test_heads:tiny_vit", "--input-shape", "2,3,32,32", *flags)
    assert rc == 0 and shown in out, err
    assert ("embedding width of a transformer" in out) == (not flags)


def test_inspect_a_model_without_channels(capsys):
    rc, out, err = run(capsys, "inspect", "--model", "torch.nn:Identity", "--input-shape", "2,3")
    assert rc == 0 and out.startswith("0 groups, 0 prunable\ngroup channels  origin  state\n"), err


def test_module_function_form(capsys, tmp_path):
    path = tmp_path / "m.pt"
    rc, out, err = run(capsys, "prune", "--model", "torchvision.models:mobilenet_v2", "--input-shape", "1,3,32,32",
                       "--ratio", "0.3", "--out", str(path))
    assert rc == 0, err
    model = ppf.load_pruned(torchvision.models.mobilenet_v2, path)
    assert model.features[0][0].out_channels == 32 - 10  # round(0.3 x 32) removed
    assert cli.classifier_name(model, torch.randn(1, 3, 32, 32)) == "classifier.1"


@pytest.mark.parametrize("embedding", [False, True])
def test_prune_embedding_heads_and_keep_outputs(capsys, tmp_path, embedding):
    """--prune-embedding prunes a ViT's residual stream too; --heads whole removes heads rather than narrowing
    them; --keep-outputs names the outputs kept."""
    from test_heads import tiny_vit

    path = tmp_path / "vit.pt"
    rc, out, err = run(capsys, "prune", "--model", "test_heads:tiny_vit", "--input-shape", "2,3,32,32", "--ratio",
                       "0.5", "--keep-outputs", "0", *(["--prune-embedding", "--heads", "whole"] if embedding else []),
                       "--out", str(path))
    assert rc == 0, err
    model = ppf.load_pruned(tiny_vit, path)
    attn = model.blocks[0].attn
    assert model.patch_embed.proj.out_channels == (192 if embedding else 384)
    assert (attn.num_heads, attn.head_dim) == ((3, 64) if embedding else (6, 32))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def assert_refused(rc, out, err, tmp_path=None):
    """Exit status 2, one line on stderr naming the command, no traceback, nothing on stdout or in tmp_path."""
    assert rc == 2, err
    assert err.startswith("pyprune-fast") and "error: " in err and err.count("\n") == 1, err
    assert "Traceback" not in err and out == ""
    if tmp_path is not None:
        assert sorted(p.name for p in tmp_path.iterdir()) == ["given"], "something was written"


@pytest.fixture
def outdir(tmp_path):
    """A folder holding only `given/` (input files of a test); anything else in it was written by the CLI."""
    (tmp_path / "given").mkdir()
    return tmp_path


@pytest.mark.parametrize("argv", [
    ["prune", "--model", "no_such_model", "--ratio", "0.5"],
    ["prune", "--model", "no_such_package.mod:fn", "--ratio", "0.5"],
    ["prune", "--model", "torchvision.models:no_such_fn", "--ratio", "0.5"],
    ["prune", "--model", "torch:pi", "--ratio", "0.5"],
    ["prune", "--model", "os:getcwd", "--ratio", "0.5"],  # returns no nn.Module
    ["prune", "--model", "json:loads", "--ratio", "0.5"],  # raises when called
    ["prune", "--model", "resnet18", *SMALL, "--ratio", "1.5"],
    ["prune", "--model", "resnet18", *SMALL, "--ratio", "nan"],
    ["prune", "--model", "resnet18", *SMALL, "--global-ratio", "-0.1"],
    ["prune", "--model", "resnet18", *SMALL, "--target-flops", "0"],
    ["prune", "--model", "resnet18", *SMALL, "--method", "cup", "--threshold", "-1"],
    ["prune", "--model", "resnet18", *SMALL, "--method", "l1", "--threshold", "0.5"],
    ["prune", "--model", "resnet18", *SMALL, "--ratio", "0.5", "--round-to", "0"],
    ["prune", "--model", "resnet18", *SMALL, "--ratio", "0.5", "--min-channels", "0"],
    ["prune", "--model", "resnet18", *SMALL, "--ratio", "0.5", "--min-channels", "two"],
    ["prune", "--model", "resnet18", *SMALL, "--ratio", "0.5", "--keep-outputs", "first"],
    ["prune", "--model", "resnet18", *SMALL, "--ratio", "0.5", "--keep-outputs", "3"],  # it returns one tensor
    ["prune", "--model", "resnet18", "--ratio", "0.5", "--bogus"],
    ["prune", "--model", "resnet18", "--ratio", "0.5", "--global-ratio", "0.5"],
    ["prune", "--model", "resnet18"],
    ["prune", "--ratio", "0.5"],
    ["prune", "--model", "resnet18", "--ratio", "half"],
    ["prune", "--model", "resnet18", "--ratio", "0.5", "--method", "no_such_method"],
    ["inspect", "--model", "resnet18", "--input-shape", "1,3,x"],
    ["inspect", "--model", "resnet18", "--input-shape", "1,3,0,64"],
    ["inspect", "--model", "resnet18", "--input-shape", "1,3,-64,64"],
    ["inspect", "--model", "resnet18", "--input-shape", ""],
    ["inspect", "--model", "resnet18", *SMALL, "--ignore", "layer9"],
    ["inspect", "--model", "resnet18", *SMALL, "--ignore", "fc.weight"],  # a parameter, not a module
    ["inspect", "--model", "resnet18", *SMALL, "--ignore", ""],  # would be the whole model
    ["inspect", "--model", "resnet18", "--device", "tpu"],
    ["inspect", "--model", "resnet18", "--device", "meta"],
    ["inspect", "--model", "resnet18", "--device", "cuda:4096"],
    ["inspect", "--model", "resnet18", "--seed", "-1"],
    ["inspect", "--model", "resnet18", "--seed", str(2**64)],
    ["bench", "no_such_bench"],
    ["no_such_command"],
    [],
])
def test_bad_input_is_one_line_and_status_2(capsys, outdir, argv):
    out_args = ["--out", str(outdir / "pruned.pt")] if argv[:1] == ["prune"] else []
    assert_refused(*run(capsys, *argv, *out_args), outdir)


@pytest.mark.parametrize("name", ["pruned.pt", "plot.png"])
def test_out_and_plot_paths_are_checked_before_any_work(capsys, outdir, name):
    """Each bad path, given to --out or --plot while the other is fine: refused before the model is built."""
    flag, other = ("--out", ["--plot", str(outdir / "plot.png")]) if name == "pruned.pt" else ("--plot", ["--out", str(outdir / "pruned.pt")])
    for bad in [outdir / "no_such_folder" / name, outdir / "given", str(outdir / "new_folder") + os.sep,
                Path("/sys") / name]:  # /sys takes no new file, not even from root
        assert_refused(*run(capsys, "prune", "--model", "resnet18", "--ratio", "0.5", flag, str(bad), *other), outdir)
    (outdir / "given" / "file").write_bytes(b"")
    rc, out, err = run(capsys, "prune", "--model", "resnet18", "--ratio", "0.5", flag,
                       str(outdir / "given" / "file" / name), *other)
    assert_refused(rc, out, err, outdir)
    assert "is a file, not a folder" in err
    assert (outdir / "given" / "file").read_bytes() == b""


@pytest.mark.parametrize("plot", ["plot", "plot.txt", "plot.pt"])
def test_plot_needs_a_picture_type(capsys, outdir, plot):
    rc, out, err = run(capsys, "prune", "--model", "resnet18", "--ratio", "0.5", "--plot", str(outdir / plot),
                       "--out", str(outdir / "pruned.pt"))
    assert_refused(rc, out, err, outdir)
    assert ".png" in err and "svg" in err


def test_plot_without_matplotlib_is_refused_before_the_prune(capsys, monkeypatch, outdir):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # what Python does for a package that is not installed
    rc, out, err = run(capsys, "prune", "--model", "resnet18", *SMALL, "--ratio", "0.5",
                       "--out", str(outdir / "pruned.pt"), "--plot", str(outdir / "plot.png"))
    assert_refused(rc, out, err, outdir)
    assert "--plot" in err and "pip install matplotlib" in err


def test_torchvision_model_without_torchvision(capsys, monkeypatch, outdir):
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        monkeypatch.setitem(sys.modules, name, None)
    rc, out, err = run(capsys, "prune", "--model", "resnet18", "--ratio", "0.5", "--out", str(outdir / "pruned.pt"))
    assert_refused(rc, out, err, outdir)
    assert "pip install torchvision" in err


def test_a_module_that_fails_to_import(capsys, monkeypatch, outdir):
    (outdir / "given" / "broken_models.py").write_text("raise RuntimeError('needs a GPU cluster')\n")
    monkeypatch.syspath_prepend(str(outdir / "given"))
    rc, out, err = run(capsys, "inspect", "--model", "broken_models:net")
    assert_refused(rc, out, err, outdir)
    assert "broken_models" in err and "RuntimeError: needs a GPU cluster" in err


@pytest.mark.parametrize("shape", ["1,3,64", "1,64,64,64", "1,3,64,64,1", "3"])
def test_input_the_model_fails_on(capsys, outdir, shape):
    for argv in (["inspect"], ["prune", "--ratio", "0.5", "--out", str(outdir / "pruned.pt")]):
        rc, out, err = run(capsys, *argv, "--model", "resnet18", "--input-shape", shape)
        assert_refused(rc, out, err, outdir)
        assert f"--model resnet18 fails on a random input of --input-shape {shape}: RuntimeError" in err


def test_out_may_not_be_the_plot_or_the_weights(capsys, outdir, tv_model):
    weights = outdir / "given" / "w.pt"
    torch.save(tv_model("resnet18").state_dict(), weights)
    before = weights.read_bytes()
    for argv in (["--out", str(outdir / "same.png"), "--plot", str(outdir / "same.png")],
                 ["--weights", str(weights), "--out", str(weights)],
                 ["--weights", str(weights), "--plot", str(outdir / "given" / ".." / "given" / "w.pt.png"),
                  "--out", str(outdir / "given" / ".." / "given" / "w.pt")]):
        assert_refused(*run(capsys, "prune", "--model", "resnet18", *SMALL, "--ratio", "0.5", *argv), outdir)
    assert weights.read_bytes() == before


@pytest.fixture
def trained_resnet18(tv_model):
    """A resnet18 state dict unlike the CLI's seeded random init: layer1.0.conv1's filters 32-63 are
    100x the others, so L1 must keep exactly those in its group."""
    torch.manual_seed(123)
    state = tv_model("resnet18").state_dict()
    state["layer1.0.conv1.weight"][32:] *= 100
    return state


@pytest.mark.parametrize("form", ["state_dict", "checkpoint", "ddp", "model_key", "compiled"])
def test_weights_are_loaded_before_pruning(capsys, tmp_path, form, trained_resnet18):
    state = trained_resnet18
    payload = {
        "state_dict": state,
        "checkpoint": {"epoch": 90, "state_dict": state, "best_acc1": 69.8},
        "ddp": {"model": {"module." + k: v for k, v in state.items()}, "optimizer": {"state": {}}},
        "model_key": {"model_state_dict": state, "epoch": 3},
        "compiled": {"_orig_mod." + k: v for k, v in state.items()},
    }[form]
    torch.save(payload, tmp_path / "trained.pt")
    pruned = {}
    for name, weights in (("trained", ["--weights", str(tmp_path / "trained.pt")]), ("random", [])):
        rc, out, err = run(capsys, "prune", "--model", "resnet18", *SMALL, "--ratio", "0.5", *weights,
                           "--out", str(tmp_path / f"{name}_pruned.pt"))
        assert rc == 0, err
        pruned[name] = ppf.load_pruned(torchvision.models.resnet18, tmp_path / f"{name}_pruned.pt")
    stem = pruned["trained"].conv1.weight  # its rows are rows of the checkpoint's: which ones were kept?
    kept = [next(i for i, r in enumerate(state["conv1.weight"]) if torch.equal(r, row)) for row in stem]
    conv = pruned["trained"].layer1[0].conv1.weight
    assert torch.equal(conv, state["layer1.0.conv1.weight"][32:, kept])  # the 32 filters the weights make largest
    assert torch.equal(pruned["trained"].layer1[0].bn1.weight, state["layer1.0.bn1.weight"][32:])
    assert conv.shape == pruned["random"].layer1[0].conv1.weight.shape
    assert not torch.equal(conv, pruned["random"].layer1[0].conv1.weight)


def test_weights_and_inspect(capsys, tmp_path, trained_resnet18):
    torch.save({"state_dict": trained_resnet18}, tmp_path / "trained.pt")
    rc, out, err = run(capsys, "inspect", "--model", "resnet18", *SMALL, "--weights", str(tmp_path / "trained.pt"))
    assert rc == 0 and "13 groups, 12 prunable" in out, err


def save(path, payload):
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("case", ["missing", "folder", "text", "pickled_module", "no_state_dict", "empty",
                                  "other_model", "other_classes", "pruned", "tensor"])
def test_bad_weights_are_refused_before_pruning(capsys, outdir, case, tv_model):
    given = outdir / "given"
    resnet = tv_model("resnet18")
    if case == "missing":
        path, words = given / "no_such.pt", "does not exist"
    elif case == "folder":
        path, words = given, "is a folder"
    elif case == "text":
        (given / "w.txt").write_text("weights: trained\n")
        path, words = given / "w.txt", "not a checkpoint written by torch.save"
    elif case == "pickled_module":
        path, words = save(given / "w.pt", resnet), "pickled torchvision.models.resnet.ResNet"
    elif case == "no_state_dict":
        path, words = save(given / "w.pt", {"epoch": 3, "lr": 0.1}), "keys epoch, lr, not a state dict"
    elif case == "empty":
        path, words = save(given / "w.pt", {}), "not a state dict"
    elif case == "other_model":
        path = save(given / "w.pt", tv_model("resnet34").state_dict())
        words = "does not fit the model: unexpected: layer1.2.conv1.weight, layer1.2.bn1.weight, layer1.2.bn1.bias and"
    elif case == "other_classes":
        path = save(given / "w.pt", tv_model("resnet18", num_classes=10).state_dict())
        words = "shapes (checkpoint vs model): fc.weight (10, 512) vs (1000, 512), fc.bias (10,) vs (1000,)"
    elif case == "pruned":
        ppf.prune(resnet, torch.randn(1, 3, 32, 32), "l1", ratio=0.5)
        ppf.save_pruned(resnet, given / "w.pt")
        path, words = given / "w.pt", "ppf.load_pruned"
    else:
        path, words = save(given / "w.pt", torch.ones(3)), "holds a Tensor"
    rc, out, err = run(capsys, "prune", "--model", "resnet18", *SMALL, "--ratio", "0.5", "--weights", str(path),
                       "--out", str(outdir / "pruned.pt"))
    assert_refused(rc, out, err, outdir)
    assert words in err


def test_weights_from_before_num_batches_tracked(capsys, tmp_path, trained_resnet18):
    """Keys torch itself lets a state dict leave out (batch norm's counter, added in torch 0.4.1) are fine."""
    state = {k: v for k, v in trained_resnet18.items() if not k.endswith("num_batches_tracked")}
    rc, out, err = run(capsys, "inspect", "--model", "resnet18", *SMALL, "--weights", str(save(tmp_path / "w.pt", state)))
    assert rc == 0, err


def test_missing_keys_are_named(capsys, tmp_path, tv_model):
    state = tv_model("resnet18").state_dict()
    for k in ("layer2.0.downsample.0.weight", "fc.bias"):
        del state[k]
    rc, out, err = run(capsys, "inspect", "--model", "resnet18", "--weights", str(save(tmp_path / "w.pt", state)))
    assert_refused(rc, out, err)
    assert "missing: layer2.0.downsample.0.weight, fc.bias" in err and "unexpected" not in err


@pytest.mark.skipif(torch.cuda.is_available() and ppf.build_info()["with_cuda"], reason="CUDA works here")
def test_cuda_device_where_it_cannot_run(capsys, outdir):
    """Without CUDA kernels in the build, or without a GPU, --device cuda is refused before the model is built."""
    rc, out, err = run(capsys, "prune", "--model", "resnet18", "--ratio", "0.5", "--device", "cuda",
                       "--out", str(outdir / "pruned.pt"))
    assert_refused(rc, out, err, outdir)
    assert ("no CUDA GPU is visible" if ppf.build_info()["with_cuda"] else "has no CUDA kernels") in err


def test_version(capsys):
    rc, out, err = run(capsys, "--version")
    kernels = "yes" if ppf.build_info()["with_cuda"] else "no"
    assert rc == 0 and out == f"pyprune-fast {ppf.__version__} (torch {torch.__version__}, CUDA kernels: {kernels})\n"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-m", "pyprune_fast", "--version"], capture_output=True, text=True, env=env)
    assert res.returncode == 0 and res.stdout == out


def test_bench_outside_a_source_checkout(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "__file__", str(tmp_path / "site-packages" / "pyprune_fast" / "cli.py"))
    rc, _, err = run(capsys, "bench", "ops")
    assert rc == 2 and "source checkout" in err and err.count("\n") == 1


def test_bench_passes_arguments_through(capfd):
    assert cli.main(["bench", "ops", "--help"]) == 0
    assert "usage: bench_ops.py" in capfd.readouterr().out


def test_progress_shows_stages_once_slow_on_a_terminal(capsys, monkeypatch, tmp_path):
    from pyprune_fast import progress

    monkeypatch.delenv(progress.ENV, raising=False)
    argv = ["prune", "--model", "resnet18", *SMALL, "--ratio", "0.5", "--out", str(tmp_path / "p.pt")]
    rc, _, err = run(capsys, *argv)
    assert rc == 0 and err == ""  # not a terminal
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    rc, _, err = run(capsys, *argv)
    assert rc == 0 and all(f"pyprune-fast: {s}" in err for s in ("build resnet18", "prune l1", "save")), err
    assert "trace" not in err  # one bar: the library's own (trace, scores, ...) is off under the command's
    monkeypatch.setenv(progress.ENV, "0")
    assert run(capsys, *argv)[2] == ""
    monkeypatch.setenv(progress.ENV, "sometimes")
    assert_refused(*run(capsys, *argv))
