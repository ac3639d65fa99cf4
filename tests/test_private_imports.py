"""No test reaches into lib's private names (docs/architecture.md: "No module imports another's private (`_name`)
names; what is shared is public and documented"; issue "The weight wing and one way in", item B). A test that
imports `_collate` pins an internal helper instead of the behaviour; what a test needs is public, or the test goes
through the public route. Read from the tests' own source with `ast`, like tests/test_architecture.py reads lib."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from lib.io import REPO_ROOT

TESTS = REPO_ROOT / "tests"


def private(name: str) -> bool:
    """`_name` and `__name` are private; dunders (`__version__`, `__init__`) are not."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def is_lib_module(dotted: str) -> bool:
    """Whether `dotted` names a module or package of lib (not a class or function inside one)."""
    if dotted != "lib" and not dotted.startswith("lib."):
        return False
    try:
        return importlib.util.find_spec(dotted) is not None
    except (ImportError, ValueError):  # a parent is not a package: `dotted` names something inside a module
        return False


def violations(source: str, where: str = "<source>") -> list[str]:
    """Each place `source` takes a private name of lib: `from lib... import _name`, a private part in an imported
    lib path (`import lib._x`), or attribute access `<lib module>._name` on a name bound to a lib module
    (`import lib.config`, `import lib.runner as runner`, `from lib import config`)."""
    tree = ast.parse(source)
    found = []
    bound: dict[str, str] = {}  # local name -> the lib module it is bound to (`runner` -> `lib.runner`)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and (node.module == "lib" or
                                                                 node.module.startswith("lib.")):
            found += [f"{where}:{node.lineno}: from {node.module} import ..." for part in node.module.split(".")
                      if private(part)]
            for alias in node.names:
                if private(alias.name):
                    found.append(f"{where}:{node.lineno}: from {node.module} import {alias.name}")
                elif is_lib_module(f"{node.module}.{alias.name}"):
                    bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "lib" or alias.name.startswith("lib."):
                    found += [f"{where}:{node.lineno}: import {alias.name}" for part in alias.name.split(".")
                              if private(part)]
                    if alias.asname:  # `import lib.runner as runner` binds `runner`
                        bound[alias.asname] = alias.name
                    else:  # `import lib.config` binds `lib`; `lib.config` is reached by attribute
                        bound["lib"] = "lib"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not private(node.attr):
            continue
        dotted = _dotted(node.value)
        head, _, rest = (dotted or "").partition(".")
        if head in bound and is_lib_module(bound[head] + (f".{rest}" if rest else "")):
            found.append(f"{where}:{node.lineno}: {dotted}.{node.attr}")
    return found


def _dotted(node: ast.expr) -> str | None:
    """`a.b.c` for a chain of names and attributes, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return None if head is None else f"{head}.{node.attr}"
    return None


def test_no_test_takes_a_private_name_of_lib():
    files = sorted(TESTS.rglob("*.py"))
    assert len(files) > 40  # the walk reached the tests
    found = [v for path in files for v in violations(path.read_text(), str(path.relative_to(REPO_ROOT)))]
    assert not found, "tests take private names of lib (test through the public API, or make the name public " \
        "and documented):\n" + "\n".join(found)


def test_the_check_sees_each_way_in_and_lets_public_and_dunder_names_pass():
    """Each form the rule forbids is caught, and what it allows passes: public names, dunders, private attributes of
    objects that are not lib modules, and strings (monkeypatch targets are the runner's documented seams)."""
    caught = {
        "from lib.runner import _summary_row": 1,
        "from lib.kits.adapters import collate, _collate as c": 1,
        "import lib.config\nlib.config._layer_count({})": 1,
        "import lib.runner as runner\nrunner._execute": 1,
        "from lib import config\nconfig._one_line('x')": 1,
        "from lib.kits import adapters\nadapters._collate": 1,
        "import lib\nlib.hooks._Positions": 1,
        "def f():\n    from lib.runner import _write_summary\n    return 1": 1,
        "import lib._hidden": 1,
    }
    for source, count in caught.items():
        assert len(violations(source)) == count, source
    allowed = [
        "from lib.runner import summary_row, write_summary\nimport lib\nlib.__version__",
        "from lib.vectors import SteeringVector\nSteeringVector._combine",  # a class's member, not a module name
        "import lib.config\nlib.config.model_layer_count.cache_clear()",
        "from lib.kits.playground import Playground\np = Playground\np._controls",
        "monkeypatch.setattr('lib.runner._execute', None)\nmonkeypatch.setattr(runner, '_execute', None)",
        "import torch\ntorch._C",
    ]
    for source in allowed:
        assert violations(source) == [], source


def test_the_check_reads_files_as_they_are(tmp_path: Path):
    """The walk reads real files: a test file written with a private import is reported with its line."""
    path = tmp_path / "test_x.py"
    path.write_text('"""doc"""\n\nfrom lib.kits.adapters import _collate\n')
    assert violations(path.read_text(), "test_x.py") == ["test_x.py:3: from lib.kits.adapters import _collate"]
