"""The channels a prune keeps do not depend on which SIMD kernels torch runs, nor on its thread count.

Every decision (Ward labels, k-means labels, the MACs bisection of every allocation, CUP and ASCP
widths, CUP-SS's landing) is computed in a fresh process with torch's CPU kernels forced to each ISA
level (ATEN_CPU_CAPABILITY=default, avx2, avx512, and MKL and oneDNN to the same) and with several
threads; all must agree with the
scalar, single-thread run. Levels this CPU lacks are skipped by name (torch would silently fall back
to a lower one). Run as a script, this file prints the decisions as JSON.
"""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

# what torch needs of the CPU for each level (aten/src/ATen/native/DispatchStub.cpp, cpuinfo)
NEEDS = {"avx2": {"avx2", "fma"}, "avx512": {"avx512f", "avx512bw", "avx512vl", "avx512dq"}}
# the same level for the libraries torch calls (BLAS, oneDNN), which dispatch on their own
LIBRARIES = {"default": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"},
             "avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
             "avx512": {"MKL_ENABLE_INSTRUCTIONS": "AVX512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}}


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}


def decisions(threads: int) -> dict:
    """Every width and label decided from seeded inputs with `threads` threads, as plain lists."""
    import torch
    import torchvision

    import pyprune_fast as ppf
    from nets import TinyResNet

    torch.set_num_threads(threads)
    out = {"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
    g = torch.Generator().manual_seed(0)
    points = [torch.randn(n, d, generator=g) for n, d in ((40, 9), (64, 27), (100, 3), (7, 50))]
    out["ward"] = [x.tolist() for x in ppf.cluster.ward(points, n_clusters=[5, 9, 12, 3])]
    out["ward_float32"] = [x.tolist() for x in ppf.cluster.ward([p.float() for p in points], threshold=4.0)]
    for backend in ("native", "torch"):
        fits = ppf.cluster.kmeans([p.float() for p in points], [5, 9, 12, 3], niter=20, seed=3, backend=backend)
        out[f"kmeans_{backend}"] = [f.labels.tolist() for f in fits]

    torch.manual_seed(0)
    tiny, resnet = TinyResNet(), torchvision.models.resnet18(num_classes=10)
    tiny_x, resnet_x = torch.randn(1, 1, 8, 8), torch.randn(1, 3, 32, 32)
    cases = {"tiny": (tiny, tiny_x, [tiny.fc]), "resnet18": (resnet, resnet_x, [])}
    options = [("l1", {"target_flops": 0.5}), ("fpgm", {"target_flops": 0.4}), ("kcp", {"target_flops": 0.6}),
               ("l2", {"global_ratio": 0.3}), ("cup", {"target_flops": 0.5}), ("cup", {"global_ratio": 0.4}),
               ("cup", {"threshold": 0.5}), ("ascp", {"target_flops": 0.5}), ("bn_scale", {"target_flops": 0.5, "round_to": 4})]
    for name, (model, x, ignored) in cases.items():
        for method, opts in options:
            d = ppf.decide(model, x, method, ignored_layers=ignored, **opts)
            out[f"{name} {method} {opts}"] = d.widths.tolist()
        out[f"{name} channels"] = [g.channels for g in d.groups]
    pruner = ppf.CUPSS(tiny, tiny_x, slope=0.1, offset=0.3, target_flops=0.45, ignored_layers=[tiny.fc])
    for epoch in range(6):  # no training: the same weights in every process
        pruner.step(epoch)
    out["cupss"] = [list(w) for w in pruner.report().widths] + [pruner.done]
    return out


def run(capability: Optional[str], threads: int) -> dict:
    """decisions() in a fresh process with torch's kernels forced to `capability` (None: this CPU's
    best), `threads` threads, and this process's import path (so the same pyprune_fast)."""
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", *LIBRARIES["default"])}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    if capability is not None:
        env.update(ATEN_CPU_CAPABILITY=capability, **LIBRARIES[capability])
    done = subprocess.run([sys.executable, __file__, str(threads)], env=env, cwd=Path(__file__).parent, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def scalar():
    out = run("default", 1)
    assert (out["capability"], out["threads"]) == ("DEFAULT", 1)
    return out


def level(name):
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    missing = sorted(NEEDS[name] - cpu_flags())
    reason = "not an x86 CPU" if not x86 else f"this CPU lacks {', '.join(missing)} (no {name} kernels to force)"
    return pytest.param(name, marks=pytest.mark.skipif(not x86 or bool(missing), reason=reason))


@pytest.mark.parametrize("capability", [level("avx2"), level("avx512")])
def test_decisions_are_the_same_with_every_simd_level(scalar, capability):
    out = run(capability, 1)
    assert out.pop("capability") == capability.upper()  # the level was really forced
    expected = {k: v for k, v in scalar.items() if k != "capability"}
    assert out == expected, sorted(k for k in out if out[k] != expected.get(k))


def test_decisions_are_the_same_with_several_threads(scalar):
    out = run(None, 4)
    assert out.pop("threads") == 4
    expected = {k: v for k, v in scalar.items() if k not in ("capability", "threads")}
    out.pop("capability")
    assert out == expected, sorted(k for k in out if out[k] != expected.get(k))


def test_the_decisions_prune_something(scalar):
    """The comparison above is not vacuous: every decision keeps fewer channels than the model has."""
    assert any(len(set(labels)) < len(labels) for labels in scalar["ward"] + scalar["kmeans_native"])
    for key, widths in scalar.items():
        if key.startswith(("tiny ", "resnet18 ")) and not key.endswith(" channels"):
            channels = scalar[key.split()[0] + " channels"]
            assert len(widths) == len(channels) and sum(widths) < sum(channels), key
    assert scalar["cupss"][-1] is True and any(a < b for _, b, a in scalar["cupss"][:-1])


if __name__ == "__main__":
    print(json.dumps(decisions(int(sys.argv[1]))))
