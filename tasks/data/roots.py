"""Where the data live: the data-folder search path every data set and data CLI (``--data-root``) uses."""
import os
from pathlib import Path


def data_roots(root=None):
    """The data folders, in search order: ``root`` when given, else ``$GESSL_DATA``, else
    ``$XDG_CACHE_HOME/gessl``, else ``~/.cache/gessl``. ``root`` and ``$GESSL_DATA`` may name several
    folders separated by ``os.pathsep`` (``:``), like ``PATH``: real data sets are looked for in each
    (the first that has a set's files serves it), generated and fetched sets live in the first."""
    if root:
        text = str(root)
    elif os.environ.get("GESSL_DATA"):
        text = os.environ["GESSL_DATA"]
    elif os.environ.get("XDG_CACHE_HOME"):
        text = str(Path(os.environ["XDG_CACHE_HOME"]) / "gessl")
    else:
        text = os.path.expanduser("~/.cache/gessl")
    return [Path(part) for part in text.split(os.pathsep) if part] or [Path(text)]


def data_root(root=None):
    """The first data folder (``data_roots``): where generated sets are cached and fetched sets put."""
    return data_roots(root)[0]
