"""Inputs and outputs as real models have them: example inputs as a tensor, a tuple, a dict of keyword
arguments or a list of images; outputs as dicts, lists, namedtuples and Hugging Face ModelOutputs, every
one of whose shapes pruning keeps; MACs of ops given their weight by keyword (timm)."""

from collections import namedtuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pyprune_fast as ppf
from pyprune_fast.graph import DependencyGraph, leaves, model_inputs, record


def shapes(out) -> list[tuple]:
    """The shape of every tensor in a model's output, however nested."""
    return [tuple(t.shape) for t in leaves(out) if isinstance(t, torch.Tensor)]


def run(model: nn.Module, example_inputs):
    args, kwargs = model_inputs(example_inputs)
    with torch.no_grad():
        return model.eval()(*args, **kwargs)


class Keywords(nn.Module):
    """Two keyword inputs, as a Hugging Face model takes them."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.gate = nn.Conv2d(1, 16, 1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, pixel_values, mask=None):
        return self.head(torch.relu(self.conv(pixel_values)) * self.gate(mask))


@pytest.mark.parametrize("as_kwargs", [False, True])
def test_keyword_inputs_prune(as_kwargs):
    model, x, mask = Keywords(), torch.randn(2, 3, 8, 8), torch.randn(2, 1, 8, 8)
    inputs = {"pixel_values": x, "mask": mask} if as_kwargs else (x, mask)
    want = run(model, inputs).shape
    assert ppf.profile(model, inputs).macs == ppf.profile(model, (x, mask)).macs
    report = ppf.prune(model, inputs, "l1", ratio=0.5, progress=False)
    assert report.macs_after < report.macs_before
    assert model.conv.out_channels == 8 and run(model, inputs).shape == want


def test_hugging_face_vit_takes_pixel_values_and_keeps_every_output():
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, intermediate_size=128,
                                    image_size=32, patch_size=8, num_labels=10)
    model = transformers.ViTForImageClassification(config).eval()
    inputs = {"pixel_values": torch.randn(2, 3, 32, 32), "output_hidden_states": True}
    out = run(model, inputs)
    assert isinstance(out, transformers.utils.ModelOutput) and out.hidden_states is not None
    assert [v.shape for v in record(model, inputs).outputs] == shapes(out)  # the logits and every hidden state
    report = ppf.prune(model, inputs, "l1", ratio=0.5, progress=False)
    assert report.macs_after < report.macs_before
    assert shapes(run(model, inputs)) == shapes(out)


Pair = namedtuple("Pair", "features logits")


class Nested(nn.Module):
    """Outputs in every container a model returns them in, some of them straight from a prunable conv."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.a, self.b = nn.Conv2d(3, 16, 3), nn.Conv2d(16, 8, 3)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        h = torch.relu(self.a(x))
        y = self.b(h)
        logits = self.fc(y.mean((2, 3)))
        if self.kind == "dict":
            return {"logits": logits, "features": y}
        if self.kind == "list":
            return [logits, y]
        if self.kind == "namedtuple":
            return Pair(y, logits)
        if self.kind == "model_output":
            from transformers.modeling_outputs import BaseModelOutputWithPooling
            return BaseModelOutputWithPooling(last_hidden_state=y, pooler_output=logits)
        return {"head": (logits, [y, {"hidden": h}]), "none": None}  # nested, with the hidden activation


@pytest.mark.parametrize("kind", ["dict", "list", "namedtuple", "model_output", "nested"])
def test_every_output_shape_is_kept(kind):
    if kind == "model_output":
        pytest.importorskip("transformers")
    model, x = Nested(kind), torch.randn(1, 3, 10, 10)
    want = shapes(run(model, x))
    graph = DependencyGraph(model, x)
    assert [v.shape for v in graph.trace.outputs] == want  # every leaf found
    report = ppf.prune(model, x, "l1", ratio=0.5, progress=False)
    assert shapes(run(model, x)) == want
    if kind == "nested":  # h is an output: its channels are the model's, locked
        assert model.a.out_channels == 16 and report.macs_after == report.macs_before
    else:
        assert model.a.out_channels == 8 and model.b.out_channels == 8


def test_detector_prunes_on_a_list_of_images(tv_model):
    """A torchvision detector takes one list of images: `([img1, img2],)`. Its box counts depend on the data
    (the pass runs for real): the run check compares the structure and channel sizes, not the counts."""
    model = tv_model("fasterrcnn_mobilenet_v3_large_320_fpn", weights_backbone=None, num_classes=5, min_size=96,
                     max_size=96).eval()
    images = [torch.rand(3, 96, 96), torch.rand(3, 64, 96)]
    before = run(model, (images,))
    report = ppf.prune(model, (images,), "l1", ratio=0.3, progress=False)
    assert report.macs_after < report.macs_before
    after = run(model, (images,))
    assert len(after) == 2 and all(a.keys() == b.keys() for a, b in zip(after, before))
    assert all(a["boxes"].shape[1:] == (4,) for a in after)


class Selects(nn.Module):
    """A data-dependent output (the positive logits): the meta pass guesses their count (`Trace.guessed`), the
    run check after apply runs for real, and their count changes with the pruned weights."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 3), nn.Conv2d(16, 4, 3)

    def forward(self, x):
        y = self.b(torch.relu(self.a(x)))
        return y, y[y > 0]


def test_data_dependent_output_sizes_are_not_compared():
    model, x = Selects(), torch.randn(1, 3, 8, 8)
    graph = DependencyGraph(model, x)
    assert graph.trace.guessed and graph.output_channel_dims == [frozenset({1}), frozenset()]
    ppf.prune(model, x, "l1", ratio=0.5, progress=False)
    assert model.a.out_channels == 8 and run(model, x)[0].shape == (1, 4, 4, 4)


class KeywordLinear(nn.Module):
    """F.linear with its weight and bias given by keyword, as timm's attention calls it."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(16, 48)

    def forward(self, x):
        return F.linear(input=x, weight=self.qkv.weight, bias=self.qkv.bias)


def test_macs_read_weights_given_by_keyword():
    assert ppf.profile(KeywordLinear(), torch.randn(2, 5, 16)).macs == 2 * 5 * 16 * 48


@pytest.mark.parametrize("name, size, tokens, options", [
    ("beit_base_patch16_224", 32, 5, {"depth": 2, "embed_dim": 64, "num_heads": 2}),  # 2 x 2 patches and a cls token
    ("eva02_tiny_patch14_224", 28, 5, {"depth": 2}),
    ("swinv2_cr_tiny_ns_224", 64, 16 * 16, {"depths": (1, 1, 1, 1), "embed_dim": 32, "num_heads": (1, 2, 4, 8),
                                            "window_size": (2, 2)}),
])
def test_macs_of_timm_models_with_keyword_weights(name, size, tokens, options):
    """Their attention calls F.linear(x, weight=..., bias=...): each token costs in x out MACs."""
    timm = pytest.importorskip("timm")
    model = timm.create_model(name, pretrained=False, img_size=size, **options)
    rows = {where: macs for where, op, macs in ppf.profile(model, torch.randn(1, 3, size, size)).rows}
    qkv_name, qkv = next((n, m) for n, m in model.named_modules() if n.endswith("attn.qkv"))  # the first block's
    assert rows[qkv_name] == tokens * qkv.in_features * qkv.out_features


def test_pvt_v2_prunes():
    timm = pytest.importorskip("timm")
    model, x = timm.create_model("pvt_v2_b0", pretrained=False).eval(), torch.randn(1, 3, 64, 64)
    want = run(model, x).shape
    ppf.prune(model, x, "l1", ratio=0.3, progress=False)
    assert run(model, x).shape == want


@pytest.mark.parametrize("bad", [{1, 2}, "x", None, 3, {0: torch.zeros(1)}])
def test_bad_input_types_are_refused(bad):
    model = Keywords()
    for call in (lambda: DependencyGraph(model, bad), lambda: ppf.prune(model, bad, "l1", ratio=0.5),
                 lambda: ppf.profile(model, bad)):
        with pytest.raises(TypeError, match="example_inputs"):
            call()


def test_model_inputs():
    x = torch.zeros(1)
    assert model_inputs(x) == ((x,), {})
    assert model_inputs([x, x]) == ((x, x), {})
    assert model_inputs(([x, x],)) == (([x, x],), {})
    assert model_inputs({"pixel_values": x}) == ((), {"pixel_values": x})
