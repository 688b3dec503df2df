"""The one rule that cuts a batch into GeSSL's tasks (and a global batch between processes)."""
import json
import math

import pytest

from gessl import train
from gessl.distributed import Processes
from gessl.shares import check_tasks, smallest_set, support_size, task_slices
from tasks.common.errors import UserError


@pytest.mark.parametrize("n, tasks, sizes", [
    (36, 8, [5, 5, 5, 5, 4, 4, 4, 4]),  # torch.chunk: 5,5,5,5,5,5,5,1
    (9, 6, [2, 2, 2, 1, 1, 1]),         # torch.chunk: five pieces
    (128, 1, [128]),
    (16, 4, [4, 4, 4, 4]),
])
def test_tasks_are_contiguous_in_order_and_differ_by_at_most_one(n, tasks, sizes):
    slices = task_slices(n, tasks)
    assert [s.stop - s.start for s in slices] == sizes
    assert [i for s in slices for i in range(n)[s]] == list(range(n))


def test_processes_share_a_batch_by_the_same_rule():
    assert [Processes(rank=r, world=3).shard(10) for r in range(3)] == task_slices(10, 3)


def test_support_is_the_rounded_share_and_the_smallest_set_counts_every_task_size():
    assert [support_size(t, 0.5) for t in (4, 5, 6)] == [2, 2, 3]  # round half to even: 2.5 -> 2
    assert smallest_set(36, 8, 0.5) == 2  # tasks of 4 (2 + 2) and 5 (2 + 3)
    assert smallest_set(28, 8, 0.5) == 1  # tasks of 3 (2 + 1)
    check_tasks(36, 8, 0.5, "--batch-size 36")
    with pytest.raises(UserError, match=r"into 8 tasks of 3 or 4 images .* fewer than 2 images"):
        check_tasks(28, 8, 0.5, "--batch-size 28")


def test_batch_36_in_8_tasks_trains_with_finite_losses(glyph_root, tmp_path):
    # torch.chunk cut a 1-image task here: an empty support set (inner loss NaN) or, for a method
    # that normalises one view at a time, a BatchNorm over 1 value per channel
    train.main(["--batch-size", "36", "--tasks-per-step", "8", "--max-steps", "1", "--log-every", "1",
                "--eval-episodes", "0", "--out", str(tmp_path / "run")])
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert all(math.isfinite(record[k]) for k in ("loss", "sigma_kl", "query_loss", "inner_loss_0"))
