"""FRS relevance: LRP alpha=2 beta=1 against an explicit layer-by-layer reference, conservation, the class
weighting, torchvision models, and the FRS criterion."""

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import cpu_and_cuda
from pyprune_fast.graph import DependencyGraph
from pyprune_fast.methods import METHODS
from pyprune_fast.methods.frs import FRS
from pyprune_fast.methods.relevance import ALPHA, BETA, EPS, class_weighted, layer_relevance, layer_scores, relevance_scores


def small_net(bn: bool, bias: bool = True, act: type = nn.ReLU) -> nn.Sequential:
    """conv -> [BN] -> act -> conv (stride 2) -> [BN] -> act -> global avg pool -> flatten -> Linear."""
    layers = [("conv1", nn.Conv2d(3, 6, 3, padding=1, bias=bias)), ("bn1", nn.BatchNorm2d(6)), ("relu1", act()),
              ("conv2", nn.Conv2d(6, 16, 3, stride=2, padding=1, bias=bias)), ("bn2", nn.BatchNorm2d(16)),
              ("relu2", act(inplace=True)), ("pool", nn.AdaptiveAvgPool2d(1)), ("flat", nn.Flatten()),
              ("fc", nn.Linear(16, 4, bias=bias))]
    net = nn.Sequential(OrderedDict((n, m) for n, m in layers if bn or not n.startswith("bn")))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
            nn.init.normal_(m.weight)
            nn.init.normal_(m.bias, std=0.3)
    return net.double().eval()


def ref_alpha_beta(a, w, b, R, stride=1, padding=0):
    """Explicit alpha-beta rule: every contribution a_i * w_ji of every output position, split by sign."""
    N, _, H, W = a.shape
    cout, k = w.shape[0], w.shape[-1]
    patches = F.unfold(a, k, padding=padding, stride=stride)  # (N, Cin*k*k, L)
    z = w.reshape(cout, -1)[None, :, :, None] * patches[:, None]  # (N, Cout, Cin*k*k, L)
    zp = z.clamp(min=0).sum(2) + b.clamp(min=0)[None, :, None]
    zn = z.clamp(max=0).sum(2) + b.clamp(max=0)[None, :, None]
    R = R.reshape(N, cout, -1)
    parts = ALPHA * z.clamp(min=0) * (R / (zp + EPS))[:, :, None] - BETA * z.clamp(max=0) * (R / (zn - EPS))[:, :, None]
    return F.fold(parts.sum(1), (H, W), k, padding=padding, stride=stride)


def folded(net, conv, bn):
    """The conv's weight and bias with the BatchNorm after it folded in (or as they are)."""
    w = getattr(net, conv).weight.detach()
    b = getattr(net, conv).bias.detach() if getattr(net, conv).bias is not None else w.new_zeros(w.shape[0])
    if bn not in net._modules:
        return w, b
    m = getattr(net, bn)
    scale = m.weight.detach() / (m.running_var + m.eps).sqrt()
    return w * scale[:, None, None, None], (b - m.running_mean) * scale + m.bias.detach()


def reference_relevance(net, x, y, act=F.relu):
    """LRP alpha=2 beta=1 of `small_net`, layer by layer: relevance at conv1's and conv2's outputs (after BN);
    the activation passes relevance on unchanged."""
    w1, b1 = folded(net, "conv1", "bn1")
    w2, b2 = folded(net, "conv2", "bn2")
    fw, fb = net.fc.weight.detach(), net.fc.bias.detach() if net.fc.bias is not None else x.new_zeros(4)
    a1 = act(F.conv2d(x, w1, b1, padding=1))
    a2 = act(F.conv2d(a1, w2, b2, stride=2, padding=1))
    p = a2.mean((2, 3))
    logits = F.linear(p, fw, fb)
    R = F.one_hot(y, 4) * logits
    Rp = ref_alpha_beta(p[:, :, None, None], fw[:, :, None, None], fb, R).flatten(1)
    total = a2.sum((2, 3), keepdim=True)
    R2 = torch.where(total > 0, a2 / total, 0) * Rp[:, :, None, None]  # avg pool, z-rule; act passes it on
    R1 = ref_alpha_beta(a1, w2, b2, R2, stride=2, padding=1)
    return {"conv1": R1, "conv2": R2, "fc": R}


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("act", ["relu", "relu6"])
@pytest.mark.parametrize("bn", [False, True], ids=["no_bn", "bn"])
def test_matches_reference(bn, act, device):
    net = small_net(bn, act=nn.ReLU if act == "relu" else nn.ReLU6).to(device)
    x = 4 * torch.randn(5, 3, 8, 8, dtype=torch.float64, device=device)  # some values above 6
    y = torch.randint(0, 4, (5,), device=device)
    got = layer_relevance(net, x, y)
    want = reference_relevance(net, x, y, F.relu if act == "relu" else F.relu6)
    assert set(got) == {"conv1", "conv2", "fc"}
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-3), (torch.float32, 2e-3)])
def test_conservation_without_biases(dtype, rtol):
    net = small_net(bn=False, bias=False).to(dtype)
    x, y = torch.randn(6, 3, 8, 8, dtype=dtype), torch.randint(0, 4, (6,))
    got = layer_relevance(net, x, y)
    logit = net(x).gather(1, y[:, None]).squeeze(1).detach()
    for name in ("conv1", "conv2", "fc"):
        torch.testing.assert_close(got[name].flatten(1).sum(1), logit, rtol=rtol, atol=1e-6)


def test_class_weighting_and_normalisation():
    sums, counts = torch.randn(5, 7), torch.tensor([3.0, 0.0, 4.0, 2.0, 5.0])
    correct = torch.tensor([1.0, 0.0, 4.0, 0.0, 2.0])
    present = [c for c in range(5) if counts[c] > 0]
    max_acc = max(float(correct[c] / counts[c]) for c in present)
    want = torch.zeros(7)
    for c in present:
        acc = float(correct[c] / counts[c])
        weight = 1.0 if acc == 0 else 1 / (1 + torch.exp(torch.tensor(-1 / (acc / max_acc))))  # sigmoid(inf) = 1
        want += weight * sums[c] / counts[c] / len(present)
    want = want.abs() / want.abs().norm()
    torch.testing.assert_close(class_weighted(sums, counts, correct), want)


def test_layer_scores_aggregate_per_image_relevance():
    net = small_net(bn=True)
    batches = [(torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(0, 4, (4,))) for _ in range(3)]
    sums, counts, correct = torch.zeros(4, 6, dtype=torch.float64), torch.zeros(4), torch.zeros(4)
    for x, y in batches:
        rel = layer_relevance(net, x, y)["conv1"]
        pred = net(x).argmax(1)
        for i in range(len(y)):  # one image at a time, plainly
            sums[y[i]] += rel[i].mean((1, 2))
            counts[y[i]] += 1
            correct[y[i]] += float(pred[i] == y[i])
    got = layer_scores(net, batches)
    assert set(got) == {"conv1.weight", "conv2.weight", "fc.weight"}
    torch.testing.assert_close(got["conv1.weight"].double(), class_weighted(sums, counts, correct), rtol=1e-5, atol=1e-7)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_torchvision_models(arch):
    models = pytest.importorskip("torchvision.models")
    model = getattr(models, arch)(num_classes=10)
    model.train()
    batches = [(torch.randn(3, 3, 32, 32), torch.randint(0, 10, (3,))) for _ in range(2)]
    graph = DependencyGraph(model, batches[0][0])
    groups = graph.prunable_groups
    before = _state(model)
    layers = layer_scores(model, batches, trace=graph.trace)
    scores = relevance_scores(model, graph, groups, batches)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    convs = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert set(layers) == {f"{n}.weight" for n in convs}
    for name, s in layers.items():
        assert torch.isfinite(s).all(), name
        torch.testing.assert_close(s.norm(), torch.tensor(1.0), msg=name)
    assert len(scores) == len(groups)
    for g, s in zip(groups, scores):
        assert s.shape == (g.channels,) and s.dtype == torch.float32 and torch.isfinite(s).all()
        producers = [m.name for m in g.members if m.role == "producer" and m.dim == 0 and m.name in layers]
        torch.testing.assert_close(s, sum(layers[n] for n in producers))
    if arch == "resnet18":  # a residual group: the stem conv and both blocks' second convs
        g = graph.group_of(model.conv1)
        assert sum(m.name in layers and m.role == "producer" for m in g.members) == 3


def test_every_activation_of_the_graph_taxonomy_passes_relevance_on():
    """Softsign is an activation in the op taxonomy the graph, flops and relevance share: relevance passes it
    on unchanged (value a, gradient a / x) as it does ReLU6's, so conv1's relevance is conv2's alpha-beta rule applied to the softsign's output."""
    net = small_net(bn=False, act=lambda inplace=False: nn.Softsign()).double()
    x, y = torch.randn(3, 3, 8, 8, dtype=torch.float64), torch.randint(0, 4, (3,))
    got = layer_relevance(net, x, y)
    assert set(got) == {"conv1", "conv2", "fc"} and all(bool(r.isfinite().all()) for r in got.values())
    with torch.no_grad():
        a1 = F.softsign(F.conv2d(x, net.conv1.weight, net.conv1.bias, padding=1))
        want = ref_alpha_beta(a1, net.conv2.weight, net.conv2.bias, got["conv2"], stride=2, padding=1)
    torch.testing.assert_close(got["conv1"], want, rtol=1e-9, atol=1e-12)


def test_unsupported_layer_names_module_and_cleans_up():
    net = nn.Sequential(OrderedDict(fc=nn.Linear(8, 8), norm=nn.LayerNorm(8), head=nn.Linear(8, 3)))
    net.train()
    with pytest.raises(ValueError, match="norm.*layer_norm"):
        layer_relevance(net, torch.randn(4, 8), torch.randint(0, 3, (4,)))
    assert net.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_product_of_activations_is_refused():
    class Gate(nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(x)

    net = nn.Sequential(OrderedDict(fc=nn.Linear(8, 8), gate=Gate(), head=nn.Linear(8, 3)))
    with pytest.raises(ValueError, match="gate"):
        layer_relevance(net, torch.randn(4, 8), torch.randint(0, 3, (4,)))


def test_frs_criterion():
    net = small_net(bn=True).float()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(20, 3, 8, 8), torch.randint(0, 4, (20,))),
                                       batch_size=4)
    graph = DependencyGraph(net, torch.randn(1, 3, 8, 8), ignored_layers=[net.fc])
    groups = graph.prunable_groups
    frs = FRS(graph, groups, data=data, batches=2)
    assert FRS.name == "frs" and "frs" not in METHODS
    assert [s.shape for s in frs.scores] == [(g.channels,) for g in groups]
    want = relevance_scores(net, graph, groups, [b for _, b in zip(range(2), data)])
    for s, w in zip(frs.scores, want):
        torch.testing.assert_close(s, w)
    with pytest.raises(ValueError, match="needs data"):
        FRS(graph, groups)
