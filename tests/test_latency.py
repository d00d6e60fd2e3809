"""measure_latency: the structure of what it measures (never the timings), its backends, and bad input."""

import pytest
import torch
from torch import nn

import pyprune_fast as ppf
from pyprune_fast import cli
from pyprune_fast.export import require
from nets import NoOnnx

FAST = dict(min_time=0.02, min_runs=3, warmup=1)


def small_net():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 4))


class KeywordNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x, scale):
        return self.fc(x) * scale


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(model, before, training):
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert all(m.training == training for m in model.modules())


@pytest.mark.parametrize("backend", ["eager", "onnxruntime", "compile"])
def test_backends_measure_and_leave_the_model(backend):
    model, x = small_net().train(), torch.randn(2, 3, 8, 8)
    before, threads = state(model), torch.get_num_threads()
    lat = ppf.measure_latency(model, x, backend=backend, batch_size=5, threads=1, **FAST)
    assert isinstance(lat, ppf.Latency)
    assert lat.median > 0 and lat.spread >= 0 and lat.runs >= FAST["min_runs"]
    assert (lat.backend, lat.device, lat.batch_size, lat.threads) == (backend, "cpu", 5, 1)
    assert (lat.compile_s is None) == (backend == "eager") and (lat.compile_s is None or lat.compile_s > 0)
    assert f"{backend} on cpu, batch 5, 1 thread;" in str(lat) and f"median of {lat.runs} runs" in str(lat)
    assert torch.get_num_threads() == threads
    assert_same(model, before, training=True)


def test_keyword_inputs_and_batch():
    inputs = {"x": torch.randn(3, 6), "scale": torch.tensor(2.0)}
    lat = ppf.measure_latency(KeywordNet(), inputs, batch_size=7, **FAST)
    assert lat.batch_size == 7 and lat.threads == torch.get_num_threads() and lat.compile_s is None
    assert ppf.measure_latency(KeywordNet(), inputs, **FAST).batch_size == 3  # as given


def test_more_runs_for_more_time():
    model, x = small_net(), torch.randn(1, 3, 8, 8)
    lat = ppf.measure_latency(model, x, min_time=0.0, min_runs=25, warmup=0)
    assert lat.runs >= 25


@pytest.mark.parametrize("kwargs, message", [
    (dict(backend="tensorrt"), "unknown backend 'tensorrt'; expected one of eager, compile, onnxruntime"),
    (dict(device="cuda:7" if torch.cuda.is_available() else "cuda"), "is not available"),
    (dict(device="no_such_device"), "'no_such_device' is not a device"),
    (dict(batch_size=0), "batch_size must be an int >= 1, got 0"),
    (dict(threads=1.5), "threads must be an int >= 1, got 1.5"),
    (dict(min_time=-1), "min_time must be a number of seconds >= 0, got -1"),
])
def test_bad_options_raise_and_leave_the_model(kwargs, message):
    model = small_net()
    before, threads = state(model), torch.get_num_threads()
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ppf.measure_latency(model, torch.randn(1, 3, 8, 8), **kwargs)
    assert torch.get_num_threads() == threads
    assert_same(model, before, training=True)


def test_bad_inputs():
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        ppf.measure_latency(lambda x: x, torch.randn(2))
    with pytest.raises(TypeError, match="example_inputs must be a tensor"):
        ppf.measure_latency(small_net(), 3.0)


def test_missing_package_names_pip():
    with pytest.raises(ImportError, match=r"measure_latency\(backend='x'\) needs the package 'pyprune_fast_absent_pkg', "
                                          r"which is not installed \(pip install pyprune_fast_absent_pkg\)"):
        require("pyprune_fast_absent_pkg", "measure_latency(backend='x')")
    assert require("onnxruntime", "test").InferenceSession  # the real one, when installed


@pytest.mark.needs_cuda
@pytest.mark.parametrize("backend", ["eager", "compile", "onnxruntime"])
def test_cuda(backend):
    """On a GPU: CUDA events (eager, compile); onnxruntime's CUDA provider, or a ValueError naming it."""
    model, x = small_net(), torch.randn(2, 3, 8, 8)
    try:
        lat = ppf.measure_latency(model, x, backend=backend, device="cuda", **FAST)
    except ValueError as e:
        assert backend == "onnxruntime" and "onnxruntime has no CUDA provider" in str(e)
        return
    assert lat.device.startswith("cuda:")
    assert lat.median > 0 and lat.runs >= FAST["min_runs"]
    assert next(model.parameters()).device.type == "cpu"  # measured on a copy


MEASURE = {"backend": "eager", **FAST}


def test_prune_measures_before_and_after(tmp_path):
    model, x = small_net(), torch.randn(1, 3, 8, 8)
    report = ppf.prune(model, x, "l1", ratio=0.5, measure=MEASURE, progress=False)
    before, after = report.latency_before, report.latency_after
    assert before.median > 0 and after.median > 0 and report.speedup == before.median / after.median
    assert (before.backend, before.device, before.threads) == (after.backend, after.device, after.threads)
    assert f"  latency {before.ms:7.3f} ms -> {after.ms:8.3f} ms  (speed-up {report.speedup:.2f}x; eager on cpu" \
        in str(report)
    report.plot(tmp_path / "widths.png")
    assert (tmp_path / "widths.png").stat().st_size > 10_000


def test_decide_measures_the_dense_model_and_commit_the_pruned_one():
    model, x = small_net(), torch.randn(1, 3, 8, 8)
    decision = ppf.decide(model, x, "l1", ratio=0.5, measure={**MEASURE, "batch_size": 3}, progress=False)
    assert decision.latency_before.batch_size == 3
    report = ppf.commit(decision, x, progress=False)
    assert report.latency_after.batch_size == 3 and report.speedup > 0


def test_no_measure_no_latency():
    report = ppf.prune(small_net(), torch.randn(1, 3, 8, 8), "l1", ratio=0.5, progress=False)
    assert report.latency_before is report.latency_after is report.speedup is None
    assert "latency" not in str(report)


@pytest.mark.parametrize("measure, message", [
    ("tensorrt", "prune: measure: unknown backend 'tensorrt'; expected one of eager, compile, onnxruntime"),
    ({"backend": "eager", "runs": 5}, "prune: measure must be None, a backend"),
    (3, "prune: measure must be None, a backend"),
    ({"device": "no_such_device", **FAST}, "'no_such_device' is not a device"),
])
def test_prune_with_a_bad_measure_changes_nothing(measure, message):
    model = small_net()
    before = state(model)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ppf.prune(model, torch.randn(1, 3, 8, 8), "l1", ratio=0.5, measure=measure, progress=False)
    assert_same(model, before, training=True)


def test_cli_measure(capsys):
    rc = cli.main(["prune", "--model", "torchvision:resnet18", "--input-shape", "1,3,32,32", "--ratio", "0.5",
                   "--measure", "eager"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "  latency " in out and "(speed-up " in out and "eager on cpu, batch 1," in out
    rc = cli.main(["prune", "--model", "torchvision:resnet18", "--ratio", "0.5", "--measure", "tensorrt"])
    assert rc == 2 and "argument --measure: invalid choice: 'tensorrt'" in capsys.readouterr().err


def test_onnxruntime_on_a_model_that_cannot_export():
    model = NoOnnx().train()
    before, threads = state(model), torch.get_num_threads()
    with pytest.raises(ValueError, match="NoOnnx cannot be exported to ONNX .*the op aten::kthvalue is not supported"):
        ppf.measure_latency(model, torch.randn(3, 8), backend="onnxruntime", threads=1, **FAST)
    assert torch.get_num_threads() == threads
    assert_same(model, before, training=True)


def test_one_run_is_enough_when_asked():
    lat = ppf.measure_latency(small_net(), torch.randn(1, 3, 8, 8), min_time=0.0, min_runs=1, warmup=0, max_time=0.0)
    assert lat.runs == 1 and lat.spread == 0.0
