"""Journal 2026-12-06, "Corrections": builds `provenance.json`, which names for each top-level artifact of this folder
the record its script wrote, that script's commit, command and library versions, and every run folder it read with
the copy of that run kept here (issue "Corrections", requirement 7: every number traces to a run).

The scripts ran from temporary worktrees, so the folders they record (`/tmp/wt_*/out/...`) are gone; a run read is
matched to the copy kept under this folder by its run.json's commit and command, which name one run.

    .venv/bin/python out/journal/2026-12-06-corrections/provenance.py
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
# record a script wrote -> the artifacts of that run of the script
RECORDS = {
    "runs_read.json": ["preference.csv", "preference_at_kl.csv"],
    "geometry_runs_read.json": ["geometry.csv"],
    "headroom_run.json": ["headroom.csv"],
    "seed_rules_runs_read.json": ["seed_rules.csv"],
    "families_runs_read.json": ["families_at_kl.csv"],
    "delora_reads_runs_read.json": ["delora_reads.csv", "delora_reads_seeds.csv", "delora_rules.csv"],
    "runs_read_ia3.json": ["preference_ia3.csv", "preference_at_kl_ia3.csv"],
    "runs_read_families.json": ["preference_families.csv", "preference_at_kl_families.csv"],
    "runs_read_ia3_shuffled.json": ["preference_ia3_shuffled.csv", "preference_at_kl_ia3_shuffled.csv"],
    "geometry_families_runs_read.json": ["geometry_families.csv"],
    "subadditivity_runs_read.json": ["subadditivity.csv"],
}


def kept_runs() -> dict[tuple[str, str], str]:
    """(commit, command) of every run folder kept here -> its path relative to this folder."""
    out = {}
    for record in sorted(HERE.glob("*/**/run.json")):
        run = json.loads(record.read_text())
        out[(run.get("git_commit"), run.get("command"))] = str(record.parent.relative_to(HERE))
    return out


def main() -> None:
    kept = kept_runs()
    artifacts = {}
    for name, made in RECORDS.items():
        path = HERE / name
        if not path.exists():
            continue
        record = json.loads(path.read_text())
        tree = record.get("tree") or {"commit": record.get("git_commit"), "dirty": record.get("dirty")}
        # records written before script_record kept the command: rebuilt from the script's name and argv
        script = f"{HERE.relative_to(ROOT)}/{record['script']}"
        command = record.get("command") or shlex.join([".venv/bin/python", script, *record.get("argv", [])])
        reads = [{"folder": run["folder"], "kept_as": kept.get((run.get("commit"), run.get("command")))}
                 if "folder" in run else {"folder": run["evaluations"], "kept_as": run["evaluations"]}
                 for run in record.get("runs") or []]
        for artifact in made:
            if not (HERE / artifact).exists():
                raise SystemExit(f"{name} names {artifact}, which is not in {HERE}")
            artifacts[artifact] = {"record": name, "commit": tree.get("commit"), "dirty": tree.get("dirty"),
                                   "command": command, "versions": record.get("versions"),
                                   "runs_read": reads}
    unnamed = sorted(p.name for p in HERE.glob("*.csv") if p.name not in artifacts)
    if unnamed:
        raise SystemExit(f"no record names {unnamed}: add them to RECORDS")
    about = ("Each top-level artifact of this folder and the run that made it (commit, command, versions), read from "
             "the record its script wrote (named in `record`); each run folder it read, with `kept_as`, the copy of "
             "that run kept here (matched by commit and command; null: not kept). The runner's run folders (lora/, "
             "shuffled/, families/*/, delora_ablation/*/) hold their own run.json. Built by provenance.py; see "
             "PROVENANCE.md.")
    (HERE / "provenance.json").write_text(json.dumps({"about": about, "artifacts": artifacts}, indent=2) + "\n")


if __name__ == "__main__":
    main()
