"""The one rule for cutting n items into contiguous parts.

``share(n, parts, i)``: part i of n items in order, ``n // parts`` items each and one more for the
first ``n % parts`` (``torch.tensor_split``'s sizes), so sizes differ by at most one and every part
exists. It cuts a global batch between processes (``gessl.distributed``), a process's batch into
GeSSL's tasks (``gessl.shares``) and a batch into UMTRA's tasks (``baselines.umtra``).
``torch.chunk`` cuts 36 images into 8 parts as 5,5,5,5,5,5,5,1 (a 1-image task fails in
BatchNorm) and 9 into 6 as 5 pieces.
"""


def share(n, parts, index):
    """Part ``index`` of ``n`` items cut into ``parts`` contiguous parts (see the module docstring)."""
    size, extra = divmod(n, parts)
    start = index * size + min(index, extra)
    return slice(start, start + size + (index < extra))


def task_slices(n, tasks):
    """The ``tasks`` contiguous slices that cut a batch of ``n`` images into ``tasks`` parts."""
    return [share(n, tasks, i) for i in range(tasks)]
