"""Every artifact folder under out/journal/ traces to a run record (issue "Corrections", requirement 7).

A folder holds the runner's run.json somewhere inside, or a PROVENANCE.md saying why there is none and which
journal entry cites it. Reads small text files only: no model, no notebook.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lib.io import REPO_ROOT

JOURNAL_DIR = REPO_ROOT / "out" / "journal"
JOURNAL = REPO_ROOT / "RESEARCH_JOURNAL.md"
FOLDERS = sorted(p for p in JOURNAL_DIR.iterdir() if p.is_dir()) if JOURNAL_DIR.is_dir() else []
RUN_RECORDS = sorted(JOURNAL_DIR.rglob("run.json")) if JOURNAL_DIR.is_dir() else []


def _headings() -> list[str]:
    """The journal's entry headings, `## <date> · <title>`, as whole lines."""
    return [line.strip() for line in JOURNAL.read_text(encoding="utf-8").splitlines() if line.startswith("## 20")]


def _line(text: str, prefix: str) -> str | None:
    return next((line for line in text.splitlines() if line.startswith(prefix)), None)


def test_journal_has_artifact_folders():
    """Catches the folder list going empty (out/journal moved or renamed), which would make every check below pass
    vacuously."""
    assert FOLDERS, f"no folders under {JOURNAL_DIR}"


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_folder_traces_to_a_run_record(folder: Path):
    """Catches an artifact folder copied into out/journal/ with nothing saying where it came from: no run.json
    inside, and no PROVENANCE.md giving the reason (`Run record: none. ...`) and the journal entry that cites it.
    Also catches a PROVENANCE.md whose `Cited by:` names a heading the journal does not have (a renamed or invented
    entry)."""
    if any(folder.rglob("run.json")):
        return
    provenance = folder / "PROVENANCE.md"
    assert provenance.is_file(), f"{folder.name}: no run.json inside and no PROVENANCE.md"
    text = provenance.read_text(encoding="utf-8")
    assert _line(text, "Run record: none."), f"{folder.name}/PROVENANCE.md: no line starting 'Run record: none.'"
    cited = _line(text, "Cited by:")
    assert cited, f"{folder.name}/PROVENANCE.md: no 'Cited by:' line"
    named = [heading for heading in _headings() if heading in cited]
    assert named, f"{folder.name}/PROVENANCE.md: 'Cited by:' names no heading of RESEARCH_JOURNAL.md: {cited}"
    assert cited.count("## ") == len(named), (
        f"{folder.name}/PROVENANCE.md: 'Cited by:' names a heading not in RESEARCH_JOURNAL.md: {cited}")


@pytest.mark.parametrize("record", RUN_RECORDS, ids=lambda p: str(p.relative_to(JOURNAL_DIR)))
def test_run_record_is_a_finished_run(record: Path):
    """Catches a run.json in the journal that is not a finished run's record: unreadable JSON, no git commit to
    check the code out at, or a status other than "ok" (a failed or interrupted run, or one still running when
    its files were copied) unless its folder's PROVENANCE.md says it was stopped and why."""
    data = json.loads(record.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{record}: not a JSON object"
    assert data.get("git_commit"), f"{record}: no git_commit"
    if data.get("status") == "ok":
        return
    # a run stopped on purpose stays citable only when its folder says so, beside the record
    folder = JOURNAL_DIR / record.relative_to(JOURNAL_DIR).parts[0]
    provenance = folder / "PROVENANCE.md"
    stopped = _line(provenance.read_text(encoding="utf-8"), "Run record: stopped.") if provenance.is_file() else None
    assert stopped, (f"{record}: status {data.get('status')!r}, not 'ok', and {folder.name}/PROVENANCE.md has no "
                     "'Run record: stopped.' line saying why")


def test_every_folder_is_cited_by_the_journal():
    """Catches an artifact folder that no journal entry mentions by name (orphaned, or its entry renamed the
    folder): each folder under out/journal/ exists to back a journal entry."""
    journal = JOURNAL.read_text(encoding="utf-8")
    uncited = [folder.name for folder in FOLDERS if folder.name not in journal]
    assert not uncited, f"folders under out/journal/ that RESEARCH_JOURNAL.md never names: {uncited}"
