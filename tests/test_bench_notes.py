"""The peers benchmark's closing note is computed from its own rows (it once blamed the stack beside a baseline
row that showed the stacks equal)."""

from __future__ import annotations

import importlib.util

import pytest

from lib.io import REPO_ROOT


@pytest.fixture(scope="module")
def closing_note():
    pytest.importorskip("peers.client")
    spec = importlib.util.spec_from_file_location("versus_peers", REPO_ROOT / "benchmarks" / "versus_peers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.closing_note


def _rows(stack: float, ours: float, theirs: float) -> list[dict]:
    return [{"row": "unsteered", "ratio": stack},
            {"row": "steered greedy generation, ...", "ratio": stack * ours / theirs, "fastest_peer": "repeng",
             "overhead": {"ours": ours, "repeng": theirs}}]


def test_closing_note_splits_the_gap_from_the_rows(closing_note):
    equal_stacks = closing_note(_rows(1.00, 1.04, 0.98))  # the 2026-12-01 numbers: the gap is ours
    assert "1.00x from the stacks" in equal_stacks and "1.06x from steering's own cost" in equal_stacks
    assert "the larger share is our steering's own cost" in equal_stacks
    assert "the larger share is the stack" in closing_note(_rows(1.10, 1.01, 1.00))
    assert "run-to-run noise" in closing_note(_rows(1.01, 1.005, 1.0))
    assert closing_note(_rows(0.9, 1.0, 1.0)).endswith("every row.")
