"""The one rule for cutting n items into contiguous parts, and GeSSL's tasks built on it.

``share(n, parts, i)``: part i of n items in order, ``n // parts`` items each and one more for the
first ``n % parts`` (``torch.tensor_split``'s sizes), so sizes differ by at most one and every part
exists. It cuts a global batch between processes (``gessl.distributed.Processes.shard``) and a
process's batch into GeSSL's tasks (``task_slices``). ``torch.chunk``, used before, cuts 36 images
into 8 tasks as 5,5,5,5,5,5,5,1 (a 1-image task fails in BatchNorm) and 9 into 6 as 5 pieces.

A task of t images: its first ``support_size(t, r) = round(t · r)`` images are the support set,
the rest the query set (``gessl.bilevel``). ``check_tasks`` refuses, up front, a cut that leaves
fewer than ``least`` images in some support or query set.
"""
from tasks.common.errors import UserError


def share(n, parts, index):
    """Part ``index`` of ``n`` items cut into ``parts`` contiguous parts (see the module docstring)."""
    size, extra = divmod(n, parts)
    start = index * size + min(index, extra)
    return slice(start, start + size + (index < extra))


def task_slices(n, tasks):
    """The ``tasks`` contiguous slices that cut a batch of ``n`` images into GeSSL's tasks."""
    return [share(n, tasks, i) for i in range(tasks)]


def support_size(task, ratio):
    """Images of a ``task``-image task in its support set: round(task · ratio); the rest are the query."""
    return round(task * ratio)


def smallest_set(n, tasks, ratio):
    """The fewest images in any support or query set when ``n`` images are cut into ``tasks`` tasks."""
    sizes = {s.stop - s.start for s in task_slices(n, tasks)}
    return min(min(support_size(t, ratio), t - support_size(t, ratio)) for t in sizes)


def check_tasks(n, tasks, ratio, what, least=2):
    """``UserError`` (one line naming ``what`` was cut) unless every support and query set holds ``least`` images."""
    if smallest_set(n, tasks, ratio) < least:
        sizes = sorted({s.stop - s.start for s in task_slices(n, tasks)})
        raise UserError(f"GeSSL cuts {what} into {tasks} tasks of {' or '.join(map(str, sizes))} images "
                        f"(--tasks-per-step {tasks}, --support-ratio {ratio}), leaving fewer than {least} "
                        f"images in a support or query set; use more images or fewer --tasks-per-step")
