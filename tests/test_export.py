"""Pruned models leave PyTorch: ONNX (run in onnxruntime and compared), torch.export and torch.jit.script."""

import pytest
import torch

import pyprune_fast as ppf
from nets import NoOnnx

ort = pytest.importorskip("onnxruntime")

# onnxruntime's kernels sum in another order than PyTorch's: outputs agree to float32 rounding; the largest
# difference over the largest |y| (the output's scale) stays below this
TOLERANCE = 1e-4


def pruned(model, x):
    """`model` with random values where PyTorch's init leaves zeros (a ViT's head: its outputs would all be
    0 and every comparison pass), pruned by l1 at 0.3 (attention heads included), in eval mode."""
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.02)
    report = ppf.prune(model, x, "l1", ratio=0.3, progress=False)
    assert report.macs_after < report.macs_before
    return model.eval()


def heads_pruned(model):
    kinds = (ppf.nn.attention.PrunedMultiheadAttention, ppf.nn.swin.PrunedShiftedWindowAttention)
    return any(isinstance(m, kinds) for m in model.modules())


def max_diff(got, want):
    return float((torch.as_tensor(got) - want).abs().max() / want.abs().max())


MODELS = {  # name: (build, input)
    "resnet18": (lambda tv, vit: tv("resnet18", num_classes=10), (2, 3, 64, 64)),
    "mobilenet_v3_small": (lambda tv, vit: tv("mobilenet_v3_small", num_classes=10), (2, 3, 64, 64)),
    "vit": (lambda tv, vit: vit(2, 4, 64, 128), (2, 3, 32, 32)),
    "swin_t": (lambda tv, vit: tv("swin_t", num_classes=10), (1, 3, 64, 64)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_onnxruntime_matches_the_pruned_model(name, tv_model, small_vit, tmp_path):
    build, shape = MODELS[name]
    x = torch.randn(shape)
    model = pruned(build(tv_model, small_vit), x)
    assert heads_pruned(model) == (name in ("vit", "swin_t"))
    with torch.no_grad():
        want = model(x)
    path = ppf.export_onnx(model, x, tmp_path / f"{name}.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input0": x.numpy()})[0]
    assert want.abs().max() > 0 and max_diff(got, want) < TOLERANCE


def test_a_dense_vit_exports_too(small_vit, tmp_path):
    """nn.MultiheadAttention's fused eval path has no ONNX form: export_onnx runs without it (and puts the
    setting back)."""
    model, x = small_vit(2, 4, 64, 128).eval(), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.heads.head.weight.normal_(0, 0.02)
        want = model(x)
    path = ppf.export_onnx(model, x, tmp_path / "vit.onnx")
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input0": x.numpy()})[0]
    assert max_diff(got, want) < TOLERANCE and torch.backends.mha.get_fastpath_enabled()


def test_head_pruned_vit_scripts_and_exports(small_vit):
    x = torch.randn(2, 3, 32, 32)
    model = pruned(small_vit(2, 4, 64, 128), x)
    assert heads_pruned(model)
    with torch.no_grad():
        want = model(x)
        assert max_diff(torch.jit.script(model)(x), want) < TOLERANCE
        assert max_diff(torch.export.export(model, (x,)).module()(x), want) < TOLERANCE


def test_head_pruned_swin_scripts(tv_model):
    x = torch.randn(1, 3, 64, 64)
    model = pruned(tv_model("swin_v2_t", num_classes=10), x)
    assert any(isinstance(m, ppf.nn.swin.PrunedShiftedWindowAttentionV2) for m in model.modules())
    with torch.no_grad():
        assert max_diff(torch.jit.script(model)(x), model(x)) < TOLERANCE


def test_an_op_that_cannot_export_is_named_and_the_model_untouched(tmp_path):
    model = NoOnnx().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"export_onnx: NoOnnx cannot be exported to ONNX \(opset 17\): "
                                         r"the op aten::kthvalue is not supported"):
        ppf.export_onnx(model, torch.randn(3, 8), tmp_path / "spectrum.onnx")
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not (tmp_path / "spectrum.onnx").exists()


def test_bad_paths(tmp_path):
    with pytest.raises(ValueError, match="export_onnx: the folder .* does not exist"):
        ppf.export_onnx(NoOnnx(), torch.randn(3, 8), tmp_path / "no" / "m.onnx")
    with pytest.raises(TypeError, match="export_onnx: path must be a str or os.PathLike, got int"):
        ppf.export_onnx(NoOnnx(), torch.randn(3, 8), 3)
