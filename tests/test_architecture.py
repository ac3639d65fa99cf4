"""The layout rules of docs/architecture.md, read from the code's own imports (ast), so a change that breaks them
fails here: the core at the bottom knows no kit, runner or experiment; kits know no runner or experiment; the
runner finds experiments by name only and does not pull in PEFT; no import cycles; no private names across modules.
"""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from lib.io import REPO_ROOT

LIB = REPO_ROOT / "lib"
CORE = {"io", "models", "interventions", "positions", "gates", "hooks", "trunk", "vectors", "generation", "extract",
        "evals", "choice_evals", "latent", "weights", "ablation", "export", "model_diff", "memory"}
RUNNING = {"config", "runner", "report", "experiments"}  # experiments: the package's lookup by stem


def _module_name(path) -> str:
    parts = path.relative_to(LIB).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _lib_module(dotted: str) -> bool:
    """Whether `dotted` (relative to lib) names a module or package of lib, not a name defined inside one."""
    path = LIB.joinpath(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _imports(source: str) -> list[tuple[str, list[str], bool]]:
    """(lib module imported, names taken from it, at module level?) for every import in `source`.

    `from lib.experiments import toy_sweep` imports the module `experiments.toy_sweep`, exactly as
    `import lib.experiments.toy_sweep` does; it was read as the package `experiments`, so one experiment importing
    another in that form passed the layout rules (issue "The weight wing and one way in", item 1)."""
    tree = ast.parse(source)
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lib":
            package = node.module.removeprefix("lib").removeprefix(".")
            dotted = {alias.name: f"{package}.{alias.name}" if package else alias.name for alias in node.names}
            found += [(module, [], id(node) in top) for module in dotted.values() if _lib_module(module)]
            names = [name for name, module in dotted.items() if not _lib_module(module)]
            if names:
                found.append((package, names, id(node) in top))
        elif isinstance(node, ast.Import):
            found += [(alias.name[4:], [], id(node) in top) for alias in node.names if alias.name.startswith("lib.")]
    return found


MODULES = {_module_name(path): _imports(path.read_text()) for path in sorted(LIB.rglob("*.py")) if path.parent != LIB
           or path.name != "__init__.py"}
MODULES.pop("kits", None)  # the kits package's __init__ holds only a docstring


def _layer(module: str) -> str:
    """core and running modules by name; everything in lib/kits/ is a kit, in lib/experiments/ an experiment."""
    if module.startswith("experiments."):
        return "experiment"
    if module.startswith("kits."):
        return "kit"
    for name, members in (("core", CORE), ("running", RUNNING)):
        if module in members:
            return name
    raise AssertionError(f"lib/{module.replace('.', '/')}.py has no place in the layout: a core module (add it to "
                         "CORE here and to docs/architecture.md), a kit (lib/kits/) or an experiment "
                         "(lib/experiments/)")


def test_every_module_has_a_place():
    for module in MODULES:
        _layer(module)


@pytest.mark.parametrize(("layer", "allowed"), [("core", {"core"}), ("kit", {"core", "kit"}),
                                                ("running", {"core", "kit", "running"})])
def test_lower_layers_never_import_upper_ones(layer, allowed):
    bad = [(module, imported) for module, imports in MODULES.items() if _layer(module) == layer
           for imported, _, _ in imports if _layer(imported) not in allowed]
    assert not bad, f"{layer} modules import from above their layer: {bad}"


def experiments_importing_experiments(modules: dict[str, list[tuple[str, list[str], bool]]]) -> list[tuple[str, str]]:
    """(experiment, experiment it imports) for every import from one experiment module of another."""
    return [(module, imported) for module, imports in modules.items() if module.startswith("experiments.")
            for imported, _, _ in imports if imported.startswith("experiments.")]


def test_experiments_do_not_import_each_other_and_nothing_imports_private_names():
    crossing = experiments_importing_experiments(MODULES)
    assert not crossing, f"experiments import other experiments (share through a kit instead): {crossing}"
    private = [(module, imported, name) for module, imports in MODULES.items() for imported, names, _ in imports
               for name in names if name.startswith("_")]
    assert not private, f"imports of another module's private names: {private}"


@pytest.mark.parametrize("source", ["from lib.experiments import toy_sweep",
                                    "from lib.experiments import toy_sweep as t", "import lib.experiments.toy_sweep",
                                    "from lib.experiments.toy_sweep import ToySweepConfig",
                                    "def later():\n    from lib.experiments import config_class, toy_sweep"])
def test_an_experiment_planted_in_another_is_caught_in_every_import_form(source):
    """Catches `_imports` reading `from lib.experiments import toy_sweep` as the package `experiments` again (the
    planted import passed the rule while `import lib.experiments.toy_sweep` was caught); the package's own names
    (`config_class`, the runner's lookup) stay names of the package."""
    imports = _imports(source)
    assert experiments_importing_experiments({"experiments.planted": imports, "experiments.toy_sweep": []}) == [
        ("experiments.planted", "experiments.toy_sweep")]
    assert _imports("from lib.experiments import config_class") == [("experiments", ["config_class"], True)]
    assert _imports("from lib import evals as e, weights") == [("evals", [], True), ("weights", [], True)]


def test_no_import_cycles_among_module_level_imports():
    graph = {module: {imported for imported, _, top in imports if top and imported in MODULES}
             for module, imports in MODULES.items()}
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for nxt in graph[module]:
            if state.get(nxt) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(path + [module, nxt])}")
            if nxt not in state:
                visit(nxt, path + [module])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [])


def test_runner_check_does_not_import_peft_or_an_unrelated_experiment():
    """What `./just check toy_sweep` loads: the runner, the config base and that one experiment, no PEFT."""
    code = ("import sys; from lib.runner import validate; validate('toy_sweep', {'scale': 2.0}); "
            "print(sorted(m for m in sys.modules if m == 'peft' or m.startswith('lib.experiments.')"
            " or m == 'lib.kits.adapters'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['lib.experiments.toy_sweep']", out.stdout + out.stderr
