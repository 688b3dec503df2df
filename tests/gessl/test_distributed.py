"""The helpers of ``Processes`` that share work: shards of any size and their gathering, on gloo processes."""
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gessl.distributed import Processes

WORLD = 2
WHOLE = torch.arange(6.0).view(3, 2)


def test_shards_are_contiguous_in_rank_order_and_cover_every_item():
    for world in (1, 2, 3):
        for n in (0, 2, 7, 12):
            shares = [Processes(rank, world).shard(n) for rank in range(world)]
            assert [list(range(n))[s] for s in shares] == [t.tolist() for t in torch.arange(n).tensor_split(world)]


def _gather_worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        processes = Processes(rank, WORLD)
        rows = WHOLE[processes.shard(len(WHOLE))]  # 2 and 1 rows
        few = WHOLE[:1][processes.shard(1)]  # 1 and no rows: an empty share knows no feature size
        values = torch.arange(5, dtype=torch.float64)[processes.shard(5)]
        torch.save([processes.gather_shares(x) for x in (rows, few if len(few) else torch.empty(0), values)],
                   f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gather_shares_puts_unequal_and_empty_shares_back_in_rank_order(tmp_path):
    # forked, the workers start at once with the modules already imported (torch threads: one, conftest.py)
    mp.start_processes(_gather_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, start_method="fork")
    for rank in range(WORLD):
        rows, few, values = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.equal(rows, WHOLE) and torch.equal(few, WHOLE[:1])
        assert torch.equal(values, torch.arange(5, dtype=torch.float64))
    alone = torch.ones(3)
    assert Processes().gather_shares(alone) is alone
