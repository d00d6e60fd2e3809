import functools

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import pyprune_fast as ppf
from helpers import run, trained
from nets import BranchNet, FlattenNet, Tied
from pyprune_fast import surgery
from pyprune_fast.graph.spaces import Segment
from pyprune_fast.testing import dead_channels_are_exact, kill_channels


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def prune_third(model, x, exact_only=True):
    """Kill a third of the channels of every (exact) prunable group, then remove them."""
    g = ppf.DependencyGraph(model, x)
    chosen = {}
    for grp in g.prunable_groups:
        if exact_only and not dead_channels_are_exact(g, grp):
            continue
        chosen[grp.index] = torch.randperm(grp.channels)[: grp.channels // 3]
        kill_channels(g, grp, chosen[grp.index])
    before = run(model, x)
    plan = ppf.Plan(g)
    for i, channels in chosen.items():
        plan.remove(g.groups[i], channels)
    ppf.apply(plan)
    return before, run(model, x), len(chosen)


def test_empty_plan_is_bitwise_identity(tv_model):
    model = tv_model("resnet18").eval()
    x = torch.randn(2, 3, 64, 64)
    before = run(model, x)
    g = ppf.DependencyGraph(model, x)
    plan = ppf.Plan(g)
    plan.remove(g.prunable_groups[0], [])
    ppf.apply(plan)
    assert torch.equal(run(model, x), before)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "densenet121", "efficientnet_b0", "googlenet"])
def test_dead_channels_removed_without_changing_outputs(name, tv_model):
    kwargs = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    model = tv_model(name, **kwargs)
    before, after, groups = prune_third(model, torch.randn(2, 3, 64, 64))
    assert groups > 5
    assert rel_err(after, before) < 1e-5


def test_dead_channels_linear_after_flatten_and_concat():
    for model, x in ((FlattenNet(), torch.randn(3, 3, 8, 8)), (BranchNet(), torch.randn(2, 3, 6, 6))):
        before, after, groups = prune_third(model, x)
        assert groups >= 1 and rel_err(after, before) < 1e-5
    assert model.se1.out_channels == 2


def test_dead_channels_vit_mlp_and_heads():
    from torchvision.models import VisionTransformer

    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128)
    nn.init.normal_(model.heads.head.weight)  # torchvision starts it at zero
    before, after, groups = prune_third(model, torch.randn(2, 3, 32, 32))
    assert groups == 4  # the MLP hidden layer and the heads of each block
    assert model.encoder.layers[0].mlp[0].out_features == 128 - 42
    assert model.encoder.layers[0].self_attention.num_heads == 3
    assert rel_err(after, before) < 1e-5


def test_merge_identical_channels_by_addition():
    model = FlattenNet().eval()
    x = torch.randn(4, 3, 8, 8)
    g = ppf.DependencyGraph(model, x)
    grp = g.group_of(model.conv1)
    assignment = torch.tensor([0, 1, 0, 2, 1, 3, 3, 0])
    keep = torch.tensor([2, 1, 3, 6])
    with torch.no_grad():  # make every channel of a cluster identical: conv row, bias, BN parameters and statistics
        for c, k in enumerate(keep[assignment].tolist()):
            for t in (model.conv1.weight, model.conv1.bias, model.bn1.weight, model.bn1.bias,
                      model.bn1.running_mean, model.bn1.running_var):
                t[c] = t[k]
    before = run(model, x)
    ppf.apply(ppf.Plan(g).merge(grp, assignment, keep))
    assert model.conv1.out_channels == 4 and model.conv2.in_channels == 4
    torch.testing.assert_close(run(model, x), before, rtol=1e-5, atol=1e-5)


def test_merge_in_a_residual_group(tv_model):
    model = tv_model("resnet18").eval()
    x = torch.randn(2, 3, 64, 64)
    g = ppf.DependencyGraph(model, x)
    grp = g.group_of(model.layer1[0].conv1)
    assignment = torch.arange(64) % 40
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for m in grp.members:
            if m.role == "producer":
                t = {**params, **buffers}[m.name]
                t.narrow(m.dim, 40, 24).copy_(t.narrow(m.dim, 0, 24))
    before = run(model, x)
    ppf.apply(ppf.Plan(g).merge(grp, assignment))
    assert model.layer1[0].conv1.out_channels == 40
    torch.testing.assert_close(run(model, x), before, rtol=1e-4, atol=1e-4)


class Boom(RuntimeError):
    pass


def snapshot(model, optimizer):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    opt = {id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()} for p, s in optimizer.state.items()}
    attrs = [(m.in_channels, m.out_channels) for m in model.modules() if isinstance(m, nn.Conv2d)]
    return state, opt, attrs


def assert_same(model, optimizer, snap):
    state, opt, attrs = snap
    now = model.state_dict()
    assert now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)
    for p, s in optimizer.state.items():
        assert all(torch.equal(v, opt[id(p)][k]) if torch.is_tensor(v) else v == opt[id(p)][k] for k, v in s.items())
    assert attrs == [(m.in_channels, m.out_channels) for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("phase", ["build", "swap"])
def test_failure_half_way_leaves_model_and_optimizer_untouched(monkeypatch, phase, tv_model):
    model = tv_model("resnet18")
    x = torch.randn(2, 3, 32, 32)
    optimizer = trained(model, x, torch.optim.Adam)
    g = ppf.DependencyGraph(model, x)
    plan = ppf.Plan(g)
    for grp in g.prunable_groups:
        plan.remove(grp, [0, 1])
    snap = snapshot(model, optimizer)
    calls = {"n": 0}
    if phase == "build":
        real = ppf.ops.gather_channels

        def failing(*a, **k):
            calls["n"] += 1
            if calls["n"] == 3:
                raise Boom("injected")
            return real(*a, **k)

        monkeypatch.setattr(surgery.ops, "gather_channels", failing)
    else:
        real = surgery._Swap.setattr

        def failing(self, *a):
            calls["n"] += 1
            if calls["n"] == 40:
                raise Boom("injected")
            return real(self, *a)

        monkeypatch.setattr(surgery._Swap, "setattr", failing)
    with pytest.raises(Boom):
        ppf.apply(plan, optimizer)
    assert calls["n"] >= 3
    assert_same(model, optimizer, snap)


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.Adam])
def test_optimizer_state_is_sliced_and_training_goes_on(opt_cls, tv_model):
    model = tv_model("resnet18")
    x = torch.randn(2, 3, 32, 32)
    optimizer = trained(model, x, opt_cls, **({"momentum": 0.9} if opt_cls is torch.optim.SGD else {}))
    w = model.layer1[0].conv1.weight
    key = "momentum_buffer" if opt_cls is torch.optim.SGD else "exp_avg"
    before = optimizer.state[w][key].clone()
    g = ppf.DependencyGraph(model, x)
    ppf.apply(ppf.Plan(g).remove(g.group_of(model.layer1[0].conv1), [1, 3]), optimizer)
    kept = [c for c in range(64) if c not in (1, 3)]
    assert w is model.layer1[0].conv1.weight and w.shape[0] == 62 and w.requires_grad
    assert torch.equal(optimizer.state[w][key], before[kept])
    optimizer.zero_grad()
    model(x).sum().backward()
    optimizer.step()  # shapes of parameters, gradients and state agree


def test_save_load_and_compile_pruned_model(tmp_path, tv_model):
    model = tv_model("resnet18")
    x = torch.randn(2, 3, 32, 32)
    ppf.prune(model, x, ratio=0.4)
    y = run(model, x)
    ppf.save_pruned(model, tmp_path / "m.pt")
    rebuilt = ppf.load_pruned(functools.partial(tv_model, "resnet18"), tmp_path / "m.pt")
    assert torch.equal(run(rebuilt, x), y)
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    again = ppf.load_pruned(functools.partial(tv_model, "resnet18"), tmp_path / "m.pt")
    again.load_state_dict(torch.load(tmp_path / "sd.pt"))
    assert torch.equal(run(again, x), y)
    compiled = torch.compile(rebuilt, backend="aot_eager")
    torch.testing.assert_close(compiled(x), y)
    with pytest.raises(ValueError, match="has no"):
        ppf.load_pruned(lambda: nn.Linear(2, 2), tmp_path / "m.pt")


def test_prune_ratio_and_global_ratio(tv_model):
    model = tv_model("mobilenet_v2")
    x = torch.randn(1, 3, 64, 64)
    report = ppf.prune(model, x, "l2", global_ratio=0.5)
    assert report.macs_after < report.macs_before and report.params_after < report.params_before
    assert all(after >= 1 for _, _, after in report.widths)
    assert run(model, x).shape == (1, 1000)
    assert "MACs" in str(report)
    model = tv_model("resnet18")
    report = ppf.prune(model, torch.randn(1, 3, 32, 32), ratio=0.5, ignored_layers=[model.conv1])
    assert model.conv1.out_channels == 64 and model.layer1[0].conv1.out_channels == 32


def test_bad_input_modifies_nothing(tv_model):
    model = tv_model("resnet18")
    x = torch.randn(1, 3, 32, 32)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for kwargs in ({"ratio": 1.0}, {"ratio": -0.1}, {"global_ratio": 1.5}, {}, {"ratio": 0.1, "global_ratio": 0.1}):
        with pytest.raises(ValueError):
            ppf.prune(model, x, **kwargs)
    with pytest.raises(ValueError, match="unknown method 'l3'"):
        ppf.prune(model, x, "l3", ratio=0.5)
    g = ppf.DependencyGraph(model, x)
    grp = g.group_of(model.layer1[0].conv1)
    with pytest.raises(ValueError, match="removing all 64 channels"):
        ppf.Plan(g).remove(grp, range(64))
    with pytest.raises(ValueError, match="channel 64 is out of range"):
        ppf.Plan(g).remove(grp, [0, 64])
    with pytest.raises(ValueError, match="repeat"):
        ppf.Plan(g).remove(grp, [3, 3])
    with pytest.raises(ValueError, match="cannot be pruned: the model's output"):
        ppf.Plan(g).remove(g.group_of(model.fc), [0])
    with pytest.raises(ValueError, match="keep must name"):
        ppf.Plan(g).merge(grp, torch.arange(64) % 2, keep=[1, 0])
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_stale_graph_and_changed_model_are_refused(tv_model):
    model = tv_model("resnet18")
    x = torch.randn(1, 3, 32, 32)
    g = ppf.DependencyGraph(model, x)
    plan = ppf.Plan(g).remove(g.group_of(model.layer1[0].conv1), [0])
    ppf.apply(plan)
    with pytest.raises(ValueError, match="used by apply"):
        ppf.apply(plan)
    g2 = ppf.DependencyGraph(model, x)
    plan2 = ppf.Plan(g2).remove(g2.group_of(model.layer1[0].conv1), [0])
    model.layer1[0].conv1.weight.data = model.layer1[0].conv1.weight.data[:10]
    with pytest.raises(ValueError, match="changed since the DependencyGraph was built"):
        ppf.apply(plan2)


def test_dtype_device_and_requires_grad_kept():
    model = FlattenNet().double()
    model.conv1.weight.requires_grad_(False)
    g = ppf.DependencyGraph(model, torch.randn(1, 3, 8, 8, dtype=torch.float64))
    ppf.apply(ppf.Plan(g).remove(g.group_of(model.conv1), [0, 5]))
    assert model.conv1.weight.dtype == torch.float64 and not model.conv1.weight.requires_grad
    assert model.bn1.num_features == 6 and model.bn1.running_mean.shape == (6,)
    assert run(model, torch.randn(1, 3, 8, 8, dtype=torch.float64)).shape == (1, 3)


def test_training_goes_on_while_an_old_graph_is_alive(tv_model):
    """A `loss` still in scope holds the parameters' gradient accumulators at their old shapes."""
    model = tv_model("resnet18")
    x = torch.randn(2, 3, 32, 32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss = model(x).sum()
    loss.backward()
    optimizer.step()
    ppf.prune(model, x[:1], "l1", ratio=0.5, optimizer=optimizer)
    loss = model(x).sum()
    loss.backward()
    optimizer.step()
    assert model.fc.weight.grad.shape == model.fc.weight.shape == (1000, 256)


def test_plan_round_trips_through_plain_lists_onto_a_twin_model(tv_model):
    """What DDP ranks exchange: a plan as lists, rebuilt on another copy of the model."""
    torch.manual_seed(0)
    a, b = tv_model("resnet18"), tv_model("resnet18")
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 32, 32)
    ga = ppf.DependencyGraph(a, x)
    g1, g2 = ga.prunable_groups[:2]
    plan = ppf.Plan(ga).remove(g1, [0, 3, 5]).merge(g2, torch.arange(g2.channels) // 2)
    data = plan.to_dict()
    assert data[g1.index]["assignment"] is None and len(data[g1.index]["keep"]) == g1.channels - 3
    twin = ppf.Plan.from_dict(ppf.DependencyGraph(b, x), data)
    ppf.apply(plan)
    ppf.apply(twin)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError, match="is not one of this graph's"):
        ppf.Plan.from_dict(ppf.DependencyGraph(b, x), {10_000: data[g1.index]})


class FixedFlatten(nn.Module):
    """A flatten to a width fixed in the code (LeNet-5's `x.view(-1, 16 * 5 * 5)`)."""

    def __init__(self, width: int):
        super().__init__()
        self.width = width

    def forward(self, x):
        return x.view(-1, self.width)


def _wrong_flatten_rule(ctx, node):
    """A user's rule that is wrong: it says the flatten follows the channels (the run check is the net)."""
    x, out = node.args[2], node.outputs[0]
    block = out.shape[1] // x.shape[1]
    ctx.set(out, {1: tuple(Segment(s.space, s.length, s.block * block) for s in ctx.of(x).dims[1])})


ppf.register_rule(FixedFlatten, _wrong_flatten_rule)


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(16 * 5 * 5, 120), nn.Linear(120, 84), nn.Linear(84, 10)
        self.flatten = FixedFlatten(16 * 5 * 5)

    def forward(self, x):
        x = nn.functional.max_pool2d(self.conv1(x).relu(), 2)
        x = nn.functional.max_pool2d(self.conv2(x).relu(), 2)
        return self.fc3(self.fc2(self.fc1(self.flatten(x)).relu()).relu())


def test_a_width_fixed_in_the_code_locks_its_channels():
    class Literal(LeNet):
        def forward(self, x):
            x = nn.functional.max_pool2d(self.conv2(nn.functional.max_pool2d(self.conv1(x).relu(), 2)).relu(), 2)
            return self.fc1(x.view(-1, 16 * 5 * 5))

    g = ppf.DependencyGraph(Literal(), torch.randn(1, 1, 32, 32))
    assert "view is given the size 400 for the channels of conv2d conv2, a number fixed" in g.group_of(g.model.conv2).reason


@pytest.mark.parametrize("batch, words", [(1, r"FixedFlatten in flatten: .*invalid for input of size 200"),
                                          (2, r"linear in fc1: .*\[1, 400\] X \[200, 120\]")])
def test_hard_coded_width_is_refused_with_model_and_optimizer_untouched(batch, words):
    torch.manual_seed(0)
    model = LeNet()
    x = torch.randn(batch, 1, 32, 32)
    optimizer = trained(model, x, torch.optim.SGD, momentum=0.9)
    g = ppf.DependencyGraph(model, x)
    snap = snapshot(model, optimizer)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    flags = [m.training for m in model.modules()]
    with pytest.raises(ValueError, match=words):
        ppf.apply(ppf.Plan(g).remove(g.group_of(model.conv2), list(range(8))), optimizer)
    assert_same(model, optimizer, snap)
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters())
    assert flags == [m.training for m in model.modules()] and not g.stale
    assert (model.fc1.in_features, model.conv2.out_channels) == (400, 16)
    model(x).sum().backward()  # still runs
    ppf.apply(ppf.Plan(g).remove(g.group_of(model.fc1), [0, 5]), optimizer)  # other layers still prune
    assert model(x).shape == (batch, 10) and model.fc1.out_features == 118



@pytest.mark.parametrize("key, entry, error, words", [
    ("0", None, TypeError, "group key '0' is a str"),
    (0.0, None, TypeError, "group key 0.0 is a float"),
    (True, None, TypeError, "group key True is a bool"),
    (-1, None, ValueError, "group -1 is not one of"),
    (0, [0, 1], TypeError, "the entry of group 0 is a list"),
    (0, {"keep": [0, 1], "stride": 2}, ValueError, "unknown key 'stride'"),
    (0, {"assignment": None}, ValueError, "has no 'keep'"),
    (0, {"keep": [0.0, 1.0]}, TypeError, "group 0 'keep': .*float"),
    (0, {"keep": ["a"]}, TypeError, "group 0 'keep': .*ints"),
    (0, {"keep": [0, 2 ** 70]}, TypeError, "group 0 'keep': .*ints"),
    (0, {"keep": [0, 0]}, ValueError, "group 0 'keep': .*repeat"),
    (0, {"keep": [0, 10_000]}, ValueError, "group 0 'keep': channel 10000 is out of range"),
    (0, {"keep": []}, ValueError, "group 0 'keep': .*at least one must stay"),
    (0, {"keep": None}, TypeError, "group 0 'keep': .*NoneType"),
    (0, {"keep": [0], "merge_keep": [0]}, ValueError, "group 0 'keep': 'merge_keep' without 'assignment'"),
    (0, {"keep": [0], "assignment": [0, 10 ** 12] + [0] * 62}, ValueError, "group 0 'assignment': cluster ids"),
    (0, {"keep": [0, 1], "assignment": [0] * 63 + [1], "merge_keep": [0, 5]}, ValueError, "group 0 'assignment': keep must name"),
    (0, {"keep": [0, 2], "assignment": [0] * 63 + [1], "merge_keep": None}, ValueError, "group 0 'assignment': 'keep' is not"),
])
def test_plan_from_dict_refuses_bad_keys_and_values(key, entry, error, words):
    g = _resnet_graph()
    assert g.groups[0].prunable and g.groups[0].channels == 64
    with pytest.raises(error, match=words):
        ppf.Plan.from_dict(g, {key: {"keep": [0, 1], "assignment": None, "merge_keep": None} if entry is None else entry})


@settings(max_examples=40, deadline=None)
@given(key=st.one_of(st.integers(-3, 40), st.text(max_size=3), st.floats(0, 5), st.none()),
       keep=st.lists(st.one_of(st.integers(-2, 70), st.floats(0, 3), st.text(max_size=1)), max_size=70))
def test_plan_from_dict_gives_a_plan_or_a_clear_error(key, keep):
    g = _resnet_graph()
    try:
        plan = ppf.Plan.from_dict(g, {key: {"keep": keep, "assignment": None, "merge_keep": None}})
    except (TypeError, ValueError) as e:
        assert str(e).startswith("Plan.from_dict:")
        return
    entry = plan.entries[key]
    assert entry.keep.tolist() == sorted(keep) and len(set(keep)) == len(keep)


@functools.cache
def _resnet_graph():
    """One resnet18 graph for the Plan.from_dict tests (which only read it)."""
    return ppf.DependencyGraph(torchvision.models.resnet18(), torch.randn(1, 3, 32, 32))


class Tokens(nn.Module):
    """Integer inputs: stand-ins of the model's float dtype cannot run it, so they must not refuse a plan."""

    def __init__(self):
        super().__init__()
        self.emb, self.fc1, self.fc2 = nn.Embedding(10, 8), nn.Linear(8, 16), nn.Linear(16, 3)

    def forward(self, ids):
        return self.fc2(self.fc1(self.emb(ids)).relu())


def test_models_whose_inputs_are_not_float_still_prune():
    model = Tokens()
    ids = torch.tensor([[1, 2, 3]])
    g = ppf.DependencyGraph(model, ids)
    ppf.apply(ppf.Plan(g).remove(g.group_of(model.fc1), [0, 1, 2]))
    assert model.fc1.out_features == 13 and model(ids).shape == (1, 3, 3)


def test_the_check_runs_no_hook_on_meta_tensors_and_leaves_flags_alone():
    model = LeNet()
    x = torch.randn(1, 1, 32, 32)
    seen = []
    g = ppf.DependencyGraph(model, x)
    model.fc1.register_forward_hook(lambda m, i, o: seen.append(o.device.type))
    model.train()
    model.conv1.eval()
    ppf.apply(ppf.Plan(g).remove(g.group_of(model.fc1), [0, 5]))
    assert "meta" not in seen and model.training and not model.conv1.training and model.conv2.training
    assert model(x).shape == (1, 10) and seen[-1] == "cpu"


def test_a_model_with_hooks_is_checked_for_real():
    """Hooks must not see meta tensors, so the check runs the pruned model for real, and still refuses."""
    model = LeNet()
    x = torch.randn(1, 1, 32, 32)
    seen = []
    model.fc2.register_forward_hook(lambda m, i, o: seen.append(o.device.type))
    g = ppf.DependencyGraph(model, x)
    with pytest.raises(ValueError, match="would not run.*FixedFlatten in flatten"):
        ppf.apply(ppf.Plan(g).remove(g.group_of(model.conv2), [0, 1]))
    assert model.conv2.out_channels == 16 and "meta" not in seen


def test_a_detector_traced_for_real_prunes_and_runs(tv_model):
    """A detector's outputs (boxes) depend on the data: the real check asks only that it runs."""
    model = tv_model("fasterrcnn_mobilenet_v3_large_320_fpn", weights_backbone=None).eval()
    images = [torch.rand(3, 128, 128)]
    report = ppf.prune(model, (images,), method="l1", ratio=0.3)
    assert report.macs_after < report.macs_before
    with torch.no_grad():
        out = model(images)
    assert set(out[0]) >= {"boxes", "labels", "scores"}


def test_prune_refuses_lenet_and_leaves_it_untouched():
    model = LeNet()
    x = torch.randn(1, 1, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="would not run.*FixedFlatten in flatten"):
        ppf.prune(model, x, ratio=0.5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()) and model.conv2.out_channels == 16
    report = ppf.prune(model, x, ratio=0.5, ignored_layers=[model.conv2, model.fc3])
    assert model(x).shape == (1, 10) and model.conv2.out_channels == 16 and model.fc1.out_features == 60, report


class NestedOutputs(nn.Module):
    """Outputs in a dict and a tuple; one of them reshapes to a hard-coded width (it runs, with a new shape)."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc, self.flatten = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 2), FixedFlatten(8 * 4 * 4)

    def forward(self, x):
        y = self.conv(x)
        return {"logits": self.fc(y.mean((2, 3))), "parts": (y.sum(1), self.flatten(y).sum(1))}


def test_an_output_that_changes_shape_is_refused():
    model = NestedOutputs()
    x = torch.randn(2, 3, 4, 4)
    g = ppf.DependencyGraph(model, x)
    with pytest.raises(ValueError, match=r"shapes \[\(2, 2\), \(2, 4, 4\), \(1,\)\], not \[\(2, 2\), \(2, 4, 4\), \(2,\)\]"):
        ppf.apply(ppf.Plan(g).remove(g.group_of(model.conv), [0, 1, 2, 3]))
    assert model.conv.weight.shape[0] == 8 and model(x)["parts"][1].shape == (2,)


def test_a_tied_parameter_or_buffer_changes_in_every_module_holding_it():
    model = Tied().eval()
    x = torch.randn(2, 3, 6, 6)
    g = ppf.DependencyGraph(model, x)
    convs, fcs = g.group_of(model.a), g.group_of(model.fc_a)
    assert convs.prunable and fcs.prunable and convs is not fcs
    kill_channels(g, convs, torch.tensor([1, 5]))
    kill_channels(g, fcs, torch.tensor([0, 3]))
    before = run(model, x)
    ppf.apply(ppf.Plan(g).remove(convs, [1, 5]).remove(fcs, [0, 3]))
    assert model.a.weight is model.b.weight and model.a.weight.shape == (6, 3, 3, 3)
    assert model.a.out_channels == model.b.out_channels == 6
    assert model.bn_b.running_mean is model.bn_a.running_mean and model.bn_b.running_var is model.bn_a.running_var
    assert model.bn_a.running_mean.shape == model.bn_a.running_var.shape == (6,)
    assert model.bn_a.num_features == model.bn_b.num_features == 6
    assert model.fc_a.weight is model.fc_b.weight and model.fc_a.weight.shape == (4, 6)
    for fc in (model.fc_a, model.fc_b):
        assert (fc.out_features, fc.in_features) == (4, 6)
    torch.testing.assert_close(run(model, x), before, rtol=1e-5, atol=1e-6)
    model.train()
    model(x).sum().backward()  # also in training mode (batch statistics, running statistics updated)
    assert model.bn_b.running_mean.shape == (6,)


def test_a_tied_model_is_pruned_by_prune():
    model = Tied()
    x = torch.randn(2, 3, 6, 6)
    ppf.prune(model, x, "l1", ratio=0.5)
    assert model.a.weight is model.b.weight and model.a.out_channels == model.b.out_channels == 4
    assert model.bn_b.running_mean is model.bn_a.running_mean and model.bn_b.num_features == 4
    assert model.fc_b.out_features == model.fc_a.out_features == 3 and run(model, x).shape == (2, 2)


class TiedDepthwise(nn.Module):
    """Two depthwise convs with one weight: the graph records the depthwise conv under its first name."""

    def __init__(self):
        super().__init__()
        self.stem, self.head = nn.Conv2d(3, 8, 1), nn.Linear(8, 2)
        self.dw_a = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.dw_b = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.dw_b.weight = self.dw_a.weight

    def forward(self, x):
        y = self.stem(x)
        return self.head((self.dw_a(y) + self.dw_b(2 * y)).mean((2, 3)))


def test_tied_depthwise_convs_keep_one_group_per_channel():
    model = TiedDepthwise().eval()
    x = torch.randn(2, 3, 5, 5)
    g = ppf.DependencyGraph(model, x)
    ppf.apply(ppf.Plan(g).remove(g.group_of(model.stem), [0, 7]))
    for conv in (model.dw_a, model.dw_b):
        assert (conv.in_channels, conv.out_channels, conv.groups) == (6, 6, 6)
    assert run(model, x).shape == (2, 2)


def test_apply_refuses_inference_mode_and_changes_nothing():
    model = Tied()
    x = torch.randn(2, 3, 6, 6)
    g = ppf.DependencyGraph(model, x)
    plan = ppf.Plan(g).remove(g.group_of(model.a), [0])
    with torch.inference_mode(), pytest.raises(ValueError, match="apply: called inside torch.inference_mode"):
        ppf.apply(plan)
    assert model.a.weight.shape == (8, 3, 3, 3) and not g.stale
    ppf.apply(plan)
    assert not model.a.weight.is_inference() and model.a.out_channels == model.b.out_channels == 7


@pytest.mark.parametrize("cls", [nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d])
def test_widths_of_a_transposed_conv_follow_its_weight(cls):
    """A transposed conv's weight is (in_channels, out_channels / groups, *kernel)."""
    conv = cls(6, 4, 2, groups=2)
    assert surgery.sync_module_attributes(conv, "up") == {"in_channels": 6, "groups": 2, "out_channels": 4}
    conv.weight.data = conv.weight.data[:4]
    assert surgery.sync_module_attributes(conv, "up") == {"in_channels": 4, "groups": 2, "out_channels": 4}


def test_tensor_caches_of_pruned_modules_are_emptied():
    """Hugging Face's LeViT caches its attention biases, indexed for the input, by device in eval mode: after
    pruning its heads the cache must not serve the unpruned biases (the model would no longer run)."""
    transformers = pytest.importorskip("transformers")
    model = transformers.LevitForImageClassification(transformers.LevitConfig(num_labels=10)).eval()
    x = torch.randn(1, 3, 224, 224)
    model(x)  # fills the caches
    ppf.prune(model, x, ratio=0.3, prune_embedding=True)
    attn = model.levit.encoder.stages[0].layers[0].module
    assert attn.attention_biases.shape[0] < 4 and attn.attention_bias_cache == {}
    assert model(x).logits.shape == (1, 10)
