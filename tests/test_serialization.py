"""load_pruned on tampered files: a clear ValueError/TypeError naming the key, and the model left as built."""

import copy
import io
import re

import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torch import nn
from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2

import pyprune_fast as ppf
from pyprune_fast.nn.widths import kind_of


@pytest.fixture(scope="module")
def saved(tv_model):
    """A pruned resnet18's file contents, and one unpruned resnet18 that every build_fn hands out."""
    torch.manual_seed(0)
    model = tv_model("resnet18")
    ppf.prune(model, torch.randn(1, 3, 32, 32), ratio=0.4)
    buf = io.BytesIO()
    ppf.save_pruned(model, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True), tv_model("resnet18")


@pytest.fixture(scope="module")
def light(saved):
    """`saved` with every tensor a broadcast zero (one element stored): quick to write per tampered case."""
    payload, model = saved
    return dict(payload, state_dict={k: v.new_zeros(()).expand(v.shape) for k, v in payload["state_dict"].items()}), model


def fingerprint(model):
    """Every leaf module's attributes and class, and every tensor's identity, shape and version counter
    (which any in-place write, load_state_dict's copies included, advances)."""
    return ([(n, type(m), dict(vars(m))) for n, m in model.named_modules() if not list(m.children())],
            [(k, id(t), t.shape, t._version) for k, t in model.state_dict(keep_vars=True).items()])


@pytest.fixture
def untouched(saved):
    """The model every build_fn hands out is as built after the test."""
    before = fingerprint(saved[1])
    yield
    assert fingerprint(saved[1]) == before


def refused(saved, payload, words, error=ValueError):
    """load_pruned of `payload` (build_fn: the shared model) raises `error` matching `words`."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    buf.seek(0)
    with pytest.raises(error, match=words):
        ppf.load_pruned(lambda: saved[1], buf)


def with_attr(payload, module, attr, value):
    out = dict(payload, attrs=copy.deepcopy(payload["attrs"]))
    out["attrs"][module][attr] = value
    return out


def test_a_saved_file_loads_and_runs(saved):
    payload, _ = saved
    buf = io.BytesIO()
    torch.save(payload, buf)
    buf.seek(0)
    model = ppf.load_pruned(torchvision.models.resnet18, buf)
    assert model.layer1[0].conv1.out_channels == payload["attrs"]["layer1.0.conv1"]["out_channels"] < 64
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


@pytest.mark.parametrize("module, attr, value", [
    ("conv1", "stride", (1, 1)), ("bn1", "eps", 1.0), ("fc", "forward", None), ("layer1.0.conv1", "padding", (0, 0)),
    ("layer1.0.bn1", "momentum", 0.5), ("layer1.0.bn1", "pruned_heads", True), ("fc", "__class__", "Linear"),
])
def test_attributes_that_are_not_widths_are_refused(light, untouched, module, attr, value):
    refused(light, with_attr(light[0], module, attr, value), rf"attrs\['{module}'\]\['{attr}'\] is neither a width of a .* nor an int attribute")


@pytest.mark.parametrize("module", ["conv1", "layer2.0.downsample.0", "layer3.1.bn2", "fc"])
def test_every_width_refuses_bad_values(light, untouched, module):
    """Each width of each module type: out of range, wrong type, or in range but not what the shapes say."""
    payload, model = light
    for attr, value in payload["attrs"][module].items():
        orig = getattr(model.get_submodule(module), attr)
        bads = [orig + 1, 0, float(value), str(value), True, None]
        if value != orig:  # in range, but not what the pruned tensors' shapes imply
            bads.append(orig)
        for bad in bads:
            refused(light, with_attr(payload, module, attr, bad), rf"attrs\['{module}'\]\['{attr}'\]")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_width_inconsistent_with_the_shapes_is_refused(light, untouched, data):
    payload, _ = light
    module = data.draw(st.sampled_from(sorted(payload["attrs"])))
    attr = data.draw(st.sampled_from(sorted(payload["attrs"][module])))
    value = payload["attrs"][module][attr]
    bad = data.draw(st.integers(-2, 4096).filter(lambda v: v != value))
    refused(light, with_attr(payload, module, attr, bad), rf"attrs\['{module}'\]\['{attr}'\]")


def test_unknown_modules_keys_and_formats_are_refused(light, untouched):
    payload, _ = light
    refused(light, dict(payload, attrs={**payload["attrs"], "layer9": {"out_channels": 3}}), "module 'layer9'")
    for key in ("format", "shapes", "attrs", "state_dict"):
        rest = {k: v for k, v in payload.items() if k != key}
        refused(light, rest, "not written by save_pruned" if key == "format" else f"has no '{key}'")
    refused(light, dict(payload, format="pyprune_fast.pruned/2"), "format 'pyprune_fast.pruned/2'")
    refused(light, dict(payload, extra=1), "unknown key 'extra'")
    refused(light, [payload], "not written by save_pruned")
    refused(light, dict(payload, attrs=[1]), "attrs must be a dict")
    refused(light, dict(payload, attrs={"fc": 3}), r"attrs\['fc'\] must be a dict")
    refused(light, dict(payload, attrs={"fc": {"out_features": 1000, "pruned_heads": True}}), "is neither a width")


def test_shapes_and_tensors_that_do_not_fit_are_refused(light, untouched):
    payload, model = light
    name = "layer2.0.conv1.weight"
    shape = payload["shapes"][name]

    def shapes(value):
        return dict(payload, shapes={**payload["shapes"], name: value})

    def state(value):
        return dict(payload, state_dict={**payload["state_dict"], name: value})

    big = (shape[0] + 200, *shape[1:])
    for bad in (big, (0, *shape[1:]), shape[:3], (float(shape[0]), *shape[1:]), "x", (True, *shape[1:])):
        refused(light, shapes(bad), rf"shapes\['{name}'\]")
    refused(light, state(torch.zeros(3)), rf"state_dict\['{name}'\] is \(3,\)")
    refused(light, state([1.0]), rf"state_dict\['{name}'\] is list")
    refused(light, state(torch.zeros(shape, dtype=torch.int64)), rf"state_dict\['{name}'\] is torch.int64")
    refused(light, dict(payload, state_dict={k: v for k, v in payload["state_dict"].items() if k != name}),
            f"state_dict has no {name}")
    refused(light, dict(payload, shapes={k: v for k, v in payload["shapes"].items() if k != name}),
            f"shapes has no {name}")
    refused(light, dict(payload, state_dict={**payload["state_dict"], "fc.extra": torch.zeros(1)}), "has no fc.extra")
    # consistent shapes and widths, but a width the tensors cannot have: more channels than the next layer reads
    tampered = shapes(tuple(model.get_submodule("layer2.0.conv1").weight.shape))
    refused(light, tampered, rf"state_dict\['{name}'\] is")


def test_a_damaged_archive_is_a_value_error(saved, tmp_path):
    payload, _ = saved
    torch.save(payload, tmp_path / "m.pt")
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot read"):
        ppf.load_pruned(torchvision.models.resnet18, tmp_path / "cut.pt")
    with pytest.raises(FileNotFoundError):
        ppf.load_pruned(torchvision.models.resnet18, tmp_path / "missing.pt")


@pytest.mark.parametrize("module", [
    nn.Conv2d(4, 6, 3), nn.ConvTranspose2d(4, 6, 3, groups=2), nn.Linear(3, 2), nn.BatchNorm2d(3), nn.GroupNorm(2, 4),
    nn.LayerNorm([4, 5]), nn.MultiheadAttention(8, 2), ShiftedWindowAttention(16, [2, 2], [1, 1], 4),
    ShiftedWindowAttentionV2(16, [2, 2], [1, 1], 4), nn.ReLU()], ids=lambda m: type(m).__name__)
def test_every_width_apply_sets_is_saved_and_accepted(module):
    """One table: what apply sets from a module's tensors is exactly what save_pruned writes."""
    kind = kind_of(module)
    assert set(kind.sync(module, True)) - {"__class__"} == set(kind.widths)
    assert (kind.heads is not None) == isinstance(module, (nn.MultiheadAttention, ShiftedWindowAttention))


class SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(12, 3)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


@pytest.mark.parametrize("build, x, weight, words", [
    (SelfAttention, torch.randn(3, 1, 12), "attn.in_proj_weight", "has 25 rows, not a multiple of 3 x 4"),
    (lambda: nn.Sequential(ShiftedWindowAttention(16, [2, 2], [1, 1], 4)), torch.randn(1, 4, 4, 16), "0.qkv.weight",
     "has 37 rows, not a multiple of 3 x 3 heads"),
    (lambda: nn.Sequential(ShiftedWindowAttentionV2(16, [2, 2], [1, 1], 4)), torch.randn(1, 4, 4, 16), "0.qkv.weight",
     "has 37 rows, not a multiple of 3 x 3 heads"),
], ids=["MultiheadAttention", "ShiftedWindowAttention", "ShiftedWindowAttentionV2"])
def test_attention_rows_that_are_not_whole_heads_are_refused(build, x, weight, words, tmp_path):
    """A file whose q/k/v rows are not whole heads (one row too many) is refused, naming the tensor; whole
    heads load."""
    torch.manual_seed(0)
    model = build().eval()
    g = ppf.DependencyGraph(model, x)
    (heads,) = [grp for grp in g.prunable_groups if "heads" in grp.origin]
    ppf.apply(ppf.Plan(g).remove(heads, [1]))
    ppf.save_pruned(model, tmp_path / "m.pt")
    rebuilt = ppf.load_pruned(build, tmp_path / "m.pt").eval()
    assert type(rebuilt.get_submodule(weight.split(".")[0])) is type(model.get_submodule(weight.split(".")[0]))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    rows, cols = payload["shapes"][weight]
    payload["shapes"][weight], payload["state_dict"][weight] = (rows + 1, cols), torch.zeros(rows + 1, cols)
    refused((None, build()), payload, rf"{re.escape(weight)} {words}")
