"""Pruning under DistributedDataParallel: a real 2-process gloo group on the CPU."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

import pyprune_fast as ppf
from helpers import free_port
from nets import TinyResNet, digits


def worker(rank: int, world: int, port: int, out: str, schedule: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x_train, y_train, _, _ = digits(800)
        torch.manual_seed(0)  # same initial model on every rank
        model = TinyResNet()
        ddp = DDP(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        example = x_train[:1]
        if schedule == "cupss":
            pruner = ppf.CUPSS(ddp, example, slope=0.06, offset=0.18, target_flops=0.5, ignored_layers=[model.fc])
        else:
            pruner = ppf.ASCP(ddp, example, target_ratio=0.5, epochs=3, decay="cos", ignored_layers=[model.fc])
        shard = slice(rank, None, world)  # every rank its own half of the data
        xs, ys = x_train[shard], y_train[shard]
        for epoch in range(4):  # counted from 0, as the schedules count them
            for i in range(0, len(ys), 50):
                loss = torch.nn.functional.cross_entropy(ddp(xs[i:i + 50]), ys[i:i + 50]) + pruner.penalty()
                loss.backward()
                pruner.before_step()
                opt.step()
                opt.zero_grad()
            if pruner.step(epoch, opt):
                ddp = ppf.rewrap(ddp)  # the model's shapes changed: a new DDP wrapper around it
        pruner.finalize(opt) if schedule == "ascp" else pruner.finalize()
        # parameters (buffers differ legitimately: BatchNorm statistics of the last local batches)
        params = {n: p.detach() for n, p in model.named_parameters()}
        torch.save({"state": params, "events": pruner.events, "done": pruner.done}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run(tmp_path, schedule):
    mp.spawn(worker, args=(2, free_port(), str(tmp_path), schedule), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["state"].keys() == r1["state"].keys() and (r0["events"], r0["done"]) == (r1["events"], r1["done"])
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    return r0


def test_cupss_under_ddp_keeps_ranks_bitwise_identical(tmp_path):
    r0 = run(tmp_path, "cupss")
    assert len(r0["events"]) >= 2 and r0["done"] == ("landed" in r0["events"][-1]["what"])
    widths = sum(t.shape[0] for n, t in r0["state"].items() if t.dim() == 4)
    assert widths < sum(m.out_channels for m in TinyResNet().modules() if isinstance(m, torch.nn.Conv2d))


def test_ascp_under_ddp_keeps_ranks_bitwise_identical(tmp_path):
    r0 = run(tmp_path, "ascp")
    assert r0["state"]["stem.0.weight"].shape[0] == 8
