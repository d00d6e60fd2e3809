"""prune(target_latency=): the structure of what it solves and reports, round_to="auto", bad input. Timings on a
shared machine are noise: no test asserts one (the bounds asserted hold for any measurement)."""

import functools
import json
import math

import pytest
import torch

import pyprune_fast as ppf
import pyprune_fast.latency_model
import pyprune_fast.pruning
import pyprune_fast.surgery
from pyprune_fast.cli import main
from pyprune_fast.latency_model import LatencyModel, auto_round_to
from pyprune_fast.methods import METHODS

FAST = dict(min_time=0.01, min_runs=3, warmup=1, threads=1)
X = torch.randn(1, 3, 32, 32)


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


@pytest.fixture
def applied(monkeypatch):
    """The models surgery changed, in order (user's and copies alike): spies that call the real apply/applied."""
    models = []

    def spy(real):
        def call(plan, *args, **kwargs):
            models.append(plan.graph.model)
            return real(plan, *args, **kwargs)
        return call

    for module, name in ((pyprune_fast.latency_model, "apply"), (pyprune_fast.pruning, "apply"),
                         (pyprune_fast.pruning, "applied")):
        monkeypatch.setattr(module, name, spy(getattr(pyprune_fast.surgery, name)))
    return models


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_solves_on_measured_copies_and_prunes_the_model_once(tv_model, method, applied, tmp_path):
    model = tv_model("resnet18")
    report = ppf.prune(model, X, method, target_latency=0.6, latency=dict(FAST, cache=tmp_path))
    assert sum(m is model for m in applied) == 1 and len(applied) >= 5  # 4 uniform copies, a candidate, the model
    assert applied[-1] is model
    words = report.allocation
    assert words.startswith("target_latency=0.6 (") and "measured" in words and "predicted" in words
    measured = float(words.split("latency ")[1].split(" measured")[0])
    assert 0 < measured < 10  # a fraction of the dense model's latency, whatever the load
    assert report.timings["latency model"] > 0 and report.macs_after < report.macs_before
    assert model.eval()(X).shape == (1, 1000)


def test_a_vit_solves_too(small_vit, applied):
    model = small_vit().eval()  # its trace holds a tensor attribute's getter, which cannot be deep-copied
    x = torch.randn(1, 3, 32, 32)
    report = ppf.prune(model, x, "l1", target_latency=0.9, prune_embedding=True, latency=dict(FAST, cache=False))
    assert "measured" in report.allocation and report.macs_after < report.macs_before
    assert sum(m is model for m in applied) == 1 and applied[-1] is model
    assert model(x).shape == (1, 10)


def test_the_uniform_points_are_cached_per_device_and_backend(tv_model, tmp_path):
    options = dict(FAST, cache=tmp_path)
    first = ppf.prune(tv_model("resnet18"), X, "l1", target_latency=0.5, latency=options)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].name.startswith("cpu") and "-eager-" in files[0].name
    points = json.loads(files[0].read_text())["points"]
    assert len(points) == 4 and all(0 < m <= 1 and s > 0 for m, s in points)
    second = ppf.prune(tv_model("resnet18"), X, "l2", target_latency=0.5, latency=options)
    assert "(cached)" not in first.allocation and "(cached)" in second.allocation
    assert len(list(tmp_path.iterdir())) == 1


def test_no_cache_writes_nothing(tv_model, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    ppf.prune(tv_model("resnet18"), X, "l1", target_latency=0.8, latency=dict(FAST, cache=False))
    assert not list(tmp_path.iterdir())


def test_an_unreachable_target_names_the_smallest_measured_and_changes_nothing(tv_model):
    model = tv_model("resnet18")
    before = state(model)
    with pytest.raises(ValueError, match=r"target_latency=1e-06 cannot be reached with method 'l1'.* smallest "
                                         r"reachable target_latency is 0\.\d+"):
        ppf.prune(model, X, "l1", target_latency=1e-6, latency=dict(FAST, cache=False))
    assert_unchanged(model, before)


@pytest.mark.parametrize("options, error, message", [
    (dict(target_latency=0), ValueError, r"target_latency must be in \(0, 1\], got 0"),
    (dict(target_latency=1.5), ValueError, r"target_latency must be in \(0, 1\], got 1\.5"),
    (dict(target_latency=math.nan), ValueError, r"target_latency must be in \(0, 1\]"),
    (dict(target_latency=True), ValueError, r"target_latency must be in \(0, 1\]"),
    (dict(target_latency=0.5, target_flops=0.5), ValueError, "give exactly one of"),
    (dict(target_latency=0.5, latency=dict(backend="tvm")), ValueError, "unknown latency backend 'tvm'"),
    (dict(target_latency=0.5, latency=dict(device="cuda:99")), ValueError, "'cuda:99' is not available"),
    (dict(target_latency=0.5, latency=dict(device="nonsense")), ValueError, "'nonsense' is not a device"),
    (dict(target_latency=0.5, latency=dict(speed=1)), ValueError, "unknown latency option 'speed'"),
    (dict(target_latency=0.5, latency=dict(tolerance=0)), ValueError, r"tolerance must be in \(0, 1\)"),
    (dict(target_latency=0.5, latency=dict(cache=3)), TypeError, "cache must be a folder"),
    (dict(target_latency=0.5, latency="eager"), TypeError, "latency must be a dict"),
    (dict(ratio=0.5, round_to="fast"), ValueError, r"round_to must be an int >= 1 or \"auto\", got 'fast'"),
])
def test_bad_input_is_named_before_any_work_and_changes_nothing(tv_model, options, error, message):
    model = tv_model("resnet18")
    before = state(model)
    with pytest.raises(error, match=message):
        ppf.prune(model, X, "l1", **options)
    assert_unchanged(model, before)


def test_target_latency_is_offered_wherever_target_flops_is():
    from pyprune_fast.pruning import _check_options

    assert all(_check_options(m, {"target_latency": 0.5})[1] == "target_latency" for m in METHODS)
    with pytest.raises(ValueError, match="unknown option 'latency_backend'"):
        _check_options("l1", {"target_latency": 0.5, "latency_backend": "eager"})


def test_round_to_auto_rounds_to_the_device_width(tv_model):
    model = tv_model("resnet18")
    step = auto_round_to(torch.device("cpu"))
    assert step in (4, 8, 16) and auto_round_to(torch.device("cuda")) == 8
    report = ppf.prune(model, X, "l1", ratio=0.37, round_to="auto")
    assert all(w.after % step == 0 or w.after == w.before for w in report.widths)
    assert any(w.after < w.before for w in report.widths)


def test_the_latency_model_interpolates_in_macs_and_stays_monotone():
    class Macs:
        total = 100.0

        def __call__(self, widths):
            return float(widths.sum())

    model = LatencyModel(Macs(), [(1.0, 1.0), (0.5, 0.7), (0.25, 0.4)])
    assert model(torch.tensor([75.0])) == pytest.approx(0.85)
    assert model(torch.tensor([10.0])) == pytest.approx(0.4 - 0.15 * 1.2)  # the last segment's slope
    model.add(0.5, 0.3)  # a measurement that contradicts (0.25, 0.4) replaces it
    assert model.points == [(0.5, 0.3), (1.0, 1.0)]


def test_cli_target_latency(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # the cache goes there
    monkeypatch.setattr(pyprune_fast.latency_model, "measure_latency", functools.partial(ppf.measure_latency, **FAST))
    assert main(["prune", "--model", "resnet18", "--input-shape", "1,3,32,32", "--target-latency", "0.7",
                 "--round-to", "auto"]) == 0
    assert "target_latency=0.7 (" in capsys.readouterr().out
    assert main(["prune", "--model", "resnet18", "--target-latency", "1.7"]) == 2
    assert "--target-latency must be in (0, 1]" in capsys.readouterr().err
    assert main(["prune", "--model", "resnet18", "--ratio", "0.5", "--round-to", "x"]) == 2
    assert "expected an integer or 'auto', got 'x'" in capsys.readouterr().err
