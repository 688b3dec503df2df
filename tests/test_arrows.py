"""The arrows between the packages point one way (/work/shared/design.md, docs/bases.md): every module's
imports, read from its source with ``ast`` (at any depth: inside functions too), checked against
what its package may import."""
import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {"gessl", "baselines", "tasks", "analysis", "benchmarks", "examples"}
# package -> the project packages it must not import
FORBIDDEN = {"baselines": PROJECT - {"baselines"}, "tasks": PROJECT - {"tasks"},
             "gessl": {"analysis", "benchmarks", "examples"}, "analysis": {"gessl", "baselines", "benchmarks"}}
# what a base method may import besides its own package and the standard library
BASELINES_THIRD_PARTY = {"torch", "learn2learn"}


def imported(source):
    """The top-level names of the modules ``source`` imports (absolute imports; relative ones stay inside)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def wrong_way(package, names):
    """The imports of a module of ``package`` that point the wrong way."""
    bad = names & FORBIDDEN.get(package, set())
    if package == "baselines":
        bad |= {n for n in names - {"baselines"} if n not in sys.stdlib_module_names
                and n not in BASELINES_THIRD_PARTY}
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_module_imports_the_wrong_way(package):
    paths = sorted((ROOT / package).rglob("*.py"))
    assert len(paths) > 3, f"no modules found under {package}/"  # a moved package would pass unread
    bad = {str(path.relative_to(ROOT)): sorted(found) for path in paths
           if (found := wrong_way(package, imported(path.read_text())))}
    assert not bad, f"imports against the arrows: {bad}"


def test_the_check_sees_a_wrong_way_arrow_at_any_depth():
    source = "import torch\nfrom baselines.base import SSLOutput\ndef f():\n    from tasks.data import glyphs\n"
    assert wrong_way("baselines", imported(source)) == {"tasks"}
    assert wrong_way("baselines", imported("import tqdm")) == {"tqdm"}
    assert wrong_way("tasks", imported("import gessl.train as t")) == {"gessl"}
    assert wrong_way("gessl", imported("from baselines import BASE_METHODS\nfrom tasks.common import io")) == set()
