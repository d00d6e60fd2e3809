"""pyprune_fast.threads: the PYPRUNE_FAST_THREADS setting, torch's thread count lowered for a call and
restored after (also after an error), and results that do not depend on the threads a call ran on."""

import pytest
import torch

from helpers import torch_threads
from pyprune_fast import cluster, ops, threads


@pytest.fixture
def two_threads():
    with torch_threads(2):
        yield


def test_settings(monkeypatch, two_threads):
    monkeypatch.setenv(threads.ENV, "torch")
    assert threads.threads_for_call() == 2
    monkeypatch.setenv(threads.ENV, "1")
    assert threads.threads_for_call() == 1
    monkeypatch.setenv(threads.ENV, "8")
    assert threads.threads_for_call() == 2  # never more than torch's
    monkeypatch.setenv(threads.ENV, "auto")
    assert 1 <= threads.threads_for_call() <= 2
    monkeypatch.delenv(threads.ENV)
    assert 1 <= threads.threads_for_call() <= 2
    assert 1 <= threads.idle_cpus()


@pytest.mark.parametrize("bad", ["0", "-2", "many", "1.5"])
def test_a_bad_setting_is_refused(monkeypatch, bad):
    monkeypatch.setenv(threads.ENV, bad)
    with pytest.raises(ValueError, match=f"PYPRUNE_FAST_THREADS must be 'auto', 'torch' or a positive integer, "
                                         f"got '{bad}'"):
        threads.threads_for_call()


def test_limited_lowers_and_restores(monkeypatch, two_threads):
    monkeypatch.setenv(threads.ENV, "1")
    with threads.limited() as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError):
        with threads.limited():
            raise RuntimeError("boom")
    assert torch.get_num_threads() == 2


def test_a_call_restores_torch_threads_also_after_an_error(monkeypatch, two_threads):
    monkeypatch.setenv(threads.ENV, "1")
    with pytest.raises(ValueError):
        ops.pairwise_distance([torch.randn(3, 2)], "bogus")
    assert torch.get_num_threads() == 2


def test_results_do_not_depend_on_the_threads(monkeypatch, two_threads):
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(n, d, generator=g) for n, d in [(300, 40), (64, 9), (128, 576), (17, 3), (256, 64)]]
    inits = [x[: max(1, x.shape[0] // 3)].clone() for x in xs]
    runs = {}
    for setting in ("torch", "1"):
        monkeypatch.setenv(threads.ENV, setting)
        runs[setting] = (ops.kmeans_lloyd(xs, inits, 10), ops.pairwise_distance(xs), cluster.ward(xs, n_clusters=4))
    (labels2, cents2, inertia2), dists2, ward2 = runs["torch"]
    (labels1, cents1, inertia1), dists1, ward1 = runs["1"]
    for a, b in zip(labels2 + cents2 + dists2 + ward2, labels1 + cents1 + dists1 + ward1):
        assert torch.equal(a, b)
    assert torch.equal(inertia2, inertia1)


def test_latency_is_measured_on_the_users_threads(monkeypatch, two_threads):
    """Inside a call that lowered torch's threads for pyprune_fast's own work, measure_latency still runs
    the model on the threads the user set."""
    import pyprune_fast as ppf

    monkeypatch.setenv(threads.ENV, "1")
    model, x = torch.nn.Linear(4, 4), torch.randn(2, 4)
    with threads.limited():
        assert torch.get_num_threads() == 1 and threads.user_threads() == 2
        assert ppf.measure_latency(model, x, min_time=0.01, min_runs=3).threads == 2
    assert torch.get_num_threads() == 2 and threads.user_threads() == 2
