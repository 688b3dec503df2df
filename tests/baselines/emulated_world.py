"""Several "processes" as threads of one process, for checking which quantities a loss gathers.

``run_as_ranks(monkeypatch, module, fn, world)`` runs ``fn(rank)`` for every rank in its own thread,
with ``module.gather`` replaced by an all-gather between the threads (every rank's tensor,
concatenated in rank order; forward values only, no gradient across ranks). Spawning real gloo
processes costs each a fresh ``import torch`` (many seconds on a busy CPU); the real ``gather`` is
checked that way once, in test_distributed.py.
"""
import threading

import torch


def run_as_ranks(monkeypatch, module, fn, world):
    """``[fn(0), ..., fn(world - 1)]``, run concurrently with ``module.gather`` emulating all_gather."""
    slots, results, errors = [None] * world, [None] * world, []
    barrier = threading.Barrier(world, timeout=30)
    local = threading.local()

    def gather(x):
        slots[local.rank] = x
        barrier.wait()
        out = torch.cat(slots)
        barrier.wait()  # nobody overwrites a slot before every rank has read them all
        return out

    def run(rank):
        local.rank = rank
        try:
            results[rank] = fn(rank)
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)
            barrier.abort()

    monkeypatch.setattr(module, "gather", gather)
    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results
