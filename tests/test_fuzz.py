"""benchmarks/fuzz.py on a few dozen random models (seeded from the test id, bounded in time): building
the graph changes nothing, a random plan is applied completely or refused with the model untouched,
the pruned model runs and reloads (save_pruned, load_pruned), and removing dead channels the graph
calls exact leaves outputs unchanged."""

import importlib.util
import json
import os
import sys
import zlib

import pytest
import torch
from torch import nn

_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks", "fuzz.py")
_spec = importlib.util.spec_from_file_location("pyprune_fast_fuzz", _PATH)
fuzz = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = fuzz  # dataclasses look their module up by name
_spec.loader.exec_module(fuzz)

MODELS, SECONDS = 80, 10.0


@pytest.fixture(scope="module")
def summary(request):
    seed = zlib.crc32(request.node.nodeid.encode()) % 1_000_000
    s = fuzz.run(seed, MODELS, time_limit=SECONDS)
    assert s.models >= 5, f"only {s.models} models in {SECONDS} s"
    return s


def _failures(summary, *kinds):
    found = [f for f in summary.failures if f["kind"] in kinds]
    return "\n".join(f"seed {f['seed']} ({f['kind']}, {f['stage']}): {f['model']}\n  {f['error']}" for f in found)


def test_fuzz_covers_the_pipeline(summary):
    assert summary.graphs == summary.models
    assert summary.plans_applied > 0 and summary.groups_pruned > 0 and summary.exact_checks > 0


def test_fuzz_no_crash(summary):
    assert summary.count("crash") == 0, _failures(summary, "crash")


def test_fuzz_no_silent_corruption(summary):
    kinds = ("silent corruption", "dirty refusal", "trace side effect")
    assert sum(map(summary.count, kinds)) == 0, _failures(summary, *kinds)


def test_fuzz_pruned_models_reload(summary):
    assert summary.count("reload failure") == 0, _failures(summary, "reload failure")


def test_fuzz_dead_channels_exact(summary):
    assert summary.count("exactness failure") == 0, _failures(summary, "exactness failure")


def test_fuzz_graph_right_where_apply_checks(summary):
    """No fuzz model fixes a width in its code: a plan refused because the pruned model would not run
    is a group the graph wrongly called prunable."""
    found = {k: min(summary.refusal_models[k]) for k in summary.refusals if fuzz.RUN_CHECK in k}
    assert not found, "\n".join(f"{k}\n  seed {seed}: {desc}" for k, (seed, desc) in found.items())


def test_same_seed_same_model():
    (m1, x1, d1), (m2, x2, d2) = fuzz.build(7), fuzz.build(7)
    assert d1 == d2 and torch.equal(x1, x2)
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert fuzz.build(8)[2] != d1


def test_checks_catch_what_they_look_for():
    model, x, _ = fuzz.build(3)
    s = fuzz.Summary()

    def dirty():
        with torch.no_grad():
            next(model.parameters()).add_(1)
        raise ValueError("refused")

    with pytest.raises(fuzz.Failure, match="dirty refusal"):
        fuzz._guarded("apply", model, s, dirty)
    with pytest.raises(fuzz.Failure, match="crash"):
        fuzz._guarded("apply", model, s, lambda: [][0])
    assert fuzz._guarded("apply", model, s, lambda: (_ for _ in ()).throw(ValueError("no 3 channels"))) is None
    assert list(s.refusals) == ["apply: ValueError: no N channels"]
    broken = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(5, 2, 1))
    with pytest.raises(fuzz.Failure, match="silent corruption"):
        fuzz._runs("apply", broken, x, torch.Size([2, 2, 8, 8]), fuzz.invariants(broken))
    tied = nn.Sequential(nn.BatchNorm2d(3), nn.BatchNorm2d(3)).eval()
    tied[1].running_mean = tied[0].running_mean
    before = fuzz.invariants(tied)
    tied[1].running_mean = tied[0].running_mean.clone()
    with pytest.raises(fuzz.Failure, match="tied slots no longer hold one tensor"):
        fuzz._runs("apply", tied, x, x.shape, before)
    tied[0].weight.requires_grad_(False)
    with pytest.raises(fuzz.Failure, match="requires_grad is now False"):
        fuzz._runs("apply", tied, x, x.shape, before)


def test_cli_writes_reproducible_failures(tmp_path, capsys):
    rc = fuzz.main(["--models", "2", "--seed", "11", "--out", str(tmp_path)])
    failures = json.loads((tmp_path / "failures.json").read_text())
    assert rc == (1 if failures else 0)
    assert all(f.keys() == {"seed", "model", "kind", "stage", "error"} and f["seed"] in (11, 12) for f in failures)
    out = capsys.readouterr().out
    assert "models" in out and "exactness checks done / failed" in out
