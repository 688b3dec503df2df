"""Losses that compare samples gather across processes: two gloo processes under DDP, each with half
the batch, end with the loss and the gradients of one process on the whole batch."""
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from baselines.barlow import barlow_twins_loss
from baselines.distributed import gather, world_size
from baselines.simclr import nt_xent
from baselines.vicreg import vicreg_loss

LOSSES = {  # name -> loss of the two views' projections
    "simclr": lambda z1, z2: nt_xent(z1, z2, 0.5),
    "barlow": lambda z1, z2: barlow_twins_loss(z1, z2)[0],
    "vicreg": lambda z1, z2: vicreg_loss(z1, z2)[0],
}
BATCH, WORLD = 8, 2


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 6, generator=g), torch.randn(BATCH, 6, generator=g)


def _projector():
    torch.manual_seed(0)
    return nn.Linear(6, 5)


def _loss_and_grads(module, name, x1, x2):
    module.zero_grad()
    z1, z2 = module(torch.cat([x1, x2])).chunk(2)  # one forward, as the base methods do
    loss = LOSSES[name](z1, z2)
    loss.backward()
    inner = module.module if isinstance(module, DistributedDataParallel) else module
    return loss.detach(), [p.grad.clone() for p in inner.parameters()]


def _worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        ddp = DistributedDataParallel(_projector())
        x1, x2 = _data()
        mine = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        results = {name: _loss_and_grads(ddp, name, x1[mine], x2[mine]) for name in LOSSES}
        results["gathered"] = gather(torch.full((2,), float(rank)))
        results["world_size"] = world_size()
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one_process_on_the_whole_batch(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    x1, x2 = _data()
    single = _projector()
    assert world_size() == 1 and gather(x1) is x1
    for rank in range(WORLD):
        results = torch.load(tmp_path / f"rank{rank}.pt")
        assert results["world_size"] == WORLD
        assert torch.equal(results["gathered"], torch.tensor([0.0, 0.0, 1.0, 1.0]))  # rank order
        for name in LOSSES:
            loss, grads = _loss_and_grads(single, name, x1, x2)
            got_loss, got_grads = results[name]
            torch.testing.assert_close(got_loss, loss, msg=f"{name} loss on rank {rank}")
            for got, want in zip(got_grads, grads):
                torch.testing.assert_close(got, want, msg=f"{name} gradient on rank {rank}")
