"""GeSSL's tasks: a process's batch cut by ``baselines.shares.task_slices`` (the project's one
cutting rule: contiguous parts whose sizes differ by at most one).

A task of t images: its first ``support_size(t, r) = round(t · r)`` images are the support set,
the rest the query set (``gessl.bilevel``). ``check_tasks`` refuses, up front, a cut that leaves
fewer than ``least`` images in some support or query set.
"""
from baselines.shares import task_slices
from tasks.common.errors import UserError


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
