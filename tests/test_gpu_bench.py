"""benchmarks/gpu.py runs end to end (on CPU, a tiny saved model) and writes its table: the script users run on a
GPU is exercised here, so it cannot rot between GPU runs."""

from __future__ import annotations

import importlib.util
import json
import math
import re

from lib.io import REPO_ROOT


def test_gpu_bench_quick_run_writes_its_rows(tiny_folder, tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_bench", REPO_ROOT / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main(["--model", str(tiny_folder), "--quick", "--out", str(tmp_path)])
    assert [re.sub(r" \[.*", "", row["row"].split(":")[0].split(",")[0]) for row in rows] == [
        "steered / unsteered generation", "K=2 layer sweep", "K=2 coefficient sweep"]
    for row in rows:
        assert math.isfinite(row["ratio"]) and row["tokens_per_s"] > 0
    written = json.loads((tmp_path / "gpu.json").read_text())
    assert len(written["rows"]) == 3 and "| comparison |" in (tmp_path / "gpu.md").read_text()
