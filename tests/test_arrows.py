"""The arrows between the packages point one way (/work/shared/design.md, docs/bases.md): every module's
imports, read from its source with ``ast`` (at any depth: inside functions too), checked against
what its package may import; and the benchmarks use the public API (``docs/api.md``) and the command
lines only."""
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


# The command lines a benchmark may run in its own process, by their ``main(argv)``.
CLIS = {"train", "evaluate"}


def outside_the_api(source):
    """What ``source`` (a benchmark) takes from the project besides the public API: any ``gessl``
    submodule or name that ``gessl`` does not export (a CLI module only for its ``main``), and any
    private (``_``) name of a project module."""
    import gessl

    tree = ast.parse(source)
    bad, clis, modules = set(), set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] in PROJECT:
            for alias in node.names:
                if alias.name.startswith("_"):
                    bad.add(f"{node.module}.{alias.name}")
                elif node.module != "gessl" and node.module.startswith("gessl"):
                    bad.add(f"{node.module}.{alias.name}")
                elif node.module == "gessl" and alias.name in CLIS:
                    clis.add(alias.asname or alias.name)
                elif node.module == "gessl" and alias.name not in gessl.PUBLIC:
                    bad.add(f"gessl.{alias.name}")
                elif node.module != "gessl":
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "gessl":
                    bad.add(alias.name)
                elif alias.name.split(".")[0] in PROJECT:
                    modules.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id in clis and node.attr != "main":
                bad.add(f"gessl.{node.value.id}.{node.attr}")
            elif node.value.id in modules and node.attr.startswith("_"):
                bad.add(f"{node.value.id}.{node.attr}")
    return bad


def test_benchmarks_use_the_public_api_and_the_command_lines_only():
    paths = sorted((ROOT / "benchmarks").glob("*.py"))
    assert len(paths) > 3, "no benchmarks found"
    bad = {path.name: sorted(found) for path in paths if (found := outside_the_api(path.read_text()))}
    assert not bad, f"benchmarks reaching into the project's inside (docs/api.md): {bad}"


def test_the_benchmark_check_sees_each_way_past_the_api():
    assert outside_the_api("from gessl import GeSSL, train\ntrain.main([])\n") == set()
    assert outside_the_api("from gessl.inner_loop import take") == {"gessl.inner_loop.take"}
    assert outside_the_api("import gessl.device") == {"gessl.device"}
    assert outside_the_api("from gessl import Trainer") == {"gessl.Trainer"}
    assert outside_the_api("from gessl import train\ndef f():\n    return train.Trainer") == {"gessl.train.Trainer"}
    assert outside_the_api("from tasks.evaluation import fewshot\nfewshot._CACHE.clear()") == {"fewshot._CACHE"}
    assert outside_the_api("from tasks.evaluation.fewshot import _draw") == {"tasks.evaluation.fewshot._draw"}
