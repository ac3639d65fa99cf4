"""One page that reads every run: `out/index.html`, a static site over every run folder and sweep under out/.

    python -m lib.report [--out-root out] [--output out/index.html]

Runs pile up in `out/<notebook>/<run-slug>/` and sweeps in `out/<notebook>/sweeps/<grid>/`; opening one run.json
at a time does not compare them. The index has one row per run folder (a folder holding a `run.json`): its
notebook, the parameters that made it differ from the defaults, the main metric beside its unsteered baseline,
the side effect, status (a failed run's error), date and commit; a sortable table, filtered by notebook. Each run
gets a page (`report/<notebook>/<run-slug>.html` next to the index) with its summary, every parameter, its figures
and its executed notebook rendered to HTML; each sweep shows its summary.csv and heatmaps.

Why it is built this way:
- From the files alone (run.json, results.json, summary.csv, figures, the .ipynb): a folder copied from a
  cluster, or written by an older notebook, reads the same. Config defaults (lib.experiments.config_class) are
  read only for a run.json that did not record its overrides, and an unknown notebook falls back to what it
  recorded instead of failing.
- Static, offline and relocatable: inline CSS and JS, no CDN (the rendered notebooks drop nbconvert's CDN
  scripts too), every link and image relative, so a copied out/ opens from file:// in any browser.
- Everything read from files is HTML-escaped (parameters, errors, completions, CSV cells, file names); rendered
  notebooks go through nbconvert's HTML sanitizer.
- Re-running is cheap: a notebook is rendered again only when its .ipynb is newer than the HTML made from it.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import html
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any
from urllib.parse import quote

from lib.io import REPO_ROOT, atomic_write

REPORT_DIR = "report"  # run pages and rendered notebooks, next to the index
IMAGE_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg", ".gif", ".webp")
STATUS_NAMES = {"ok": "finished", "failed": "failed", "running": "running"}  # run.json's status -> shown
INTERACTIVE = "interactive"  # results.json without run.json: run in JupyterLab rather than by ./just run
MAIN_KEYS = ("main_metric", "main", "baseline", "side_effect_metric", "side_effect")  # what every summary holds
MISSING = "–"
UNKNOWN_START = "unknown"  # a run whose run.json records no start (made by hand, or by an older runner)
ROW_ERROR_CHARS = 160  # a failed run's error on its index row; the run page has all of it
TABLE_ROWS = 50  # rows of each results.json table shown on a run page (the executed notebook has them all)
CELL_CHARS = 400


@dataclass
class Run:
    """One run folder as the report reads it."""

    folder: Path
    rel: str  # the folder relative to the out root, posix: `<notebook>/<run-slug>` for a runner's run
    notebook: str
    record: dict[str, Any]
    summary: dict[str, Any]
    results: dict[str, Any]
    status: str  # finished, failed, running, or what run.json says
    error: str
    traceback: str
    overrides: dict[str, Any] | None  # None: neither recorded nor derivable from the config defaults
    overrides_from: str  # "recorded", "config defaults" or "unknown"
    problems: list[str] = field(default_factory=list)  # files that could not be read

    @property
    def label(self) -> str:
        """The run slug for a runner's `out/<notebook>/<slug>/`, else the folder relative to out/ (a copy)."""
        parts = self.rel.split("/")
        return parts[1] if len(parts) == 2 and parts[0] == self.notebook else self.rel

    @property
    def started(self) -> str:
        """When it started: run.json's `started` as YYYY-MM-DD HH:MM:SS, else "unknown". Never a file's modification
        time: a clone or a copy stamps every file with the time it was made, so a journal run cloned today showed as
        started today (issue "The weight wing and one way in", item C1)."""
        started = self.record.get("started")
        if isinstance(started, str) and started:
            return started.replace("T", " ")
        return UNKNOWN_START


@dataclass
class Sweep:
    """One sweep folder: its summary.csv rows and heatmaps."""

    folder: Path
    rel: str
    notebook: str
    columns: list[str]
    rows: list[dict[str, str]]
    images: list[Path]


@dataclass
class Report:
    """What `build` wrote: the index, and counts for the one-line message."""

    index: Path
    runs: int
    sweeps: int
    rendered: int  # notebooks rendered this time (the others were up to date)
    failed: int


# ----------------------------------------------------------------------------- reading the tree


def scan(out_root: Path, skip: Path) -> tuple[list[Path], list[Path]]:
    """Run folders (holding run.json; not searched further: what is inside belongs to the run) and sweep
    folders (holding a runner's summary.csv, recognised by its run_dir column) under `out_root`, skipping `skip`
    (the report's own folder) and hidden folders. Symlinked folders are followed (out/<notebook> may live on a
    scratch disk), each real folder once."""
    runs, sweeps, seen = [], [], set()
    for here, dirs, files in os.walk(out_root, followlinks=True):
        folder = Path(here)
        real = folder.resolve()
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        if "run.json" in files or "results.json" in files:  # results alone: a notebook run in JupyterLab
            runs.append(folder)
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (folder / d).resolve() != skip)
        if "summary.csv" in files and "run_dir" in _csv_header(folder / "summary.csv"):
            sweeps.append(folder)
    return sorted(runs), sorted(sweeps)


def _csv_header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def read_json(path: Path) -> tuple[Any, str]:
    """(data, "") or (None, why not): a half-copied or hand-edited file must not stop the report."""
    try:
        return json.loads(path.read_text(encoding="utf-8")), ""
    except FileNotFoundError:
        return None, ""
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return None, f"{path.name} could not be read: {type(error).__name__}: {error}"


def load_run(folder: Path, out_root: Path) -> Run:
    """A run folder's run.json and results.json, tolerating missing or broken files."""
    rel = folder.relative_to(out_root).as_posix()
    record, problem = read_json(folder / "run.json")
    problems = [problem] if problem else []
    if not isinstance(record, dict):
        record = {}
    results, problem = read_json(folder / "results.json")
    problems += [problem] if problem else []
    if not isinstance(results, dict):
        results = {}
    summary = results.get("summary") if isinstance(results.get("summary"), dict) else {}
    notebook = str(record.get("notebook") or rel.split("/")[0])
    raw_status = record.get("status")
    status = STATUS_NAMES.get(raw_status, str(raw_status) if raw_status else "unknown")
    if not (folder / "run.json").exists() and results:
        # run by hand (JupyterLab, a script): no runner record, so the parameters come from results.json
        status = INTERACTIVE
        parameters = results.get("parameters")
        record = {"notebook": notebook, **({"parameters": parameters} if isinstance(parameters, dict) else {})}
    if problems and not record:
        status = "unreadable"
    overrides, overrides_from = run_overrides(notebook, record)
    return Run(folder=folder, rel=rel, notebook=notebook, record=record, summary=summary, results=results,
               status=status, error=str(record.get("error") or ""), traceback=str(record.get("traceback") or ""),
               overrides=overrides, overrides_from=overrides_from, problems=problems)


def run_overrides(notebook: str, record: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The parameters that differ from the defaults: the recorded `overrides` (what named the run), else the
    recorded parameters compared with the notebook config's defaults, else unknown (an unknown notebook)."""
    if isinstance(record.get("overrides"), dict):
        return record["overrides"], "recorded"
    parameters = record.get("parameters")
    defaults = config_defaults(notebook)
    if not isinstance(parameters, dict) or defaults is None:
        return None, "unknown"
    return {k: v for k, v in parameters.items() if k != "out_dir" and (k not in defaults or v != defaults[k])}, \
        "config defaults"


@functools.cache
def config_defaults(notebook: str) -> dict[str, Any] | None:
    """The defaults of the notebook's config dataclass, as JSON would hold them (tuples become lists), or None
    when the notebook has no importable experiment module here (an older or foreign run). Only the dataclass
    fields are read: no config is built, so no checks or model lookups run."""
    if not notebook.isidentifier():
        return None
    from lib.experiments import config_class

    try:
        config_cls = config_class(notebook)
    except Exception:  # unknown notebook, or a module that no longer imports: the report still builds
        return None
    defaults = {}
    for item in dataclasses.fields(config_cls):
        if item.default is not dataclasses.MISSING:
            value = item.default
        elif item.default_factory is not dataclasses.MISSING:
            value = item.default_factory()
        else:
            continue
        defaults[item.name] = json.loads(json.dumps(value, default=str))
    return defaults


def load_sweep(folder: Path, out_root: Path) -> Sweep:
    """A sweep folder: summary.csv (the runner writes every run once, with status and error) and its images."""
    rel = folder.relative_to(out_root).as_posix()
    try:
        with open(folder / "summary.csv", newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = [{k: v or "" for k, v in row.items() if k is not None} for row in reader]
            columns = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error):
        rows, columns = [], []
    parts = rel.split("/")
    if len(parts) >= 3 and parts[-2] == "sweeps":  # the runner's out/<notebook>/sweeps/<grid>/
        notebook = parts[-3]
    elif rows and rows[0].get("run_dir"):  # elsewhere (a copy): the runs' folders name the notebook
        notebook = _path_parts(rows[0]["run_dir"])[-2:][0]
    else:
        notebook = parts[0]
    return Sweep(folder=folder, rel=rel, notebook=notebook, columns=columns, rows=rows, images=_images(folder))


def _path_parts(text: str) -> tuple[str, ...]:
    """Parts of a path written on any machine (summary.csv's run_dir is absolute where the sweep ran)."""
    return (PureWindowsPath(text) if "\\" in text else PurePosixPath(text)).parts


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def executed_notebook(run: Run) -> Path | None:
    """The executed notebook in the run folder: `<notebook>.ipynb` as papermill writes it, else the first one."""
    named = run.folder / f"{run.notebook}.ipynb"
    if named.is_file():
        return named
    return next(iter(sorted(run.folder.glob("*.ipynb"))), None)


# ----------------------------------------------------------------------------- rendering notebooks

# nbconvert's lab template loads require.js, MathJax, mermaid and the widget manager from a CDN; the report must
# open offline, so those blocks are emptied (outputs are inline HTML and base64 images and need none of them).
OFFLINE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
"""


@functools.cache
def _exporter() -> Any:
    import jinja2
    from nbconvert import HTMLExporter

    return HTMLExporter(extra_loaders=[jinja2.DictLoader({"steerlab_offline.html.j2": OFFLINE_TEMPLATE})],
                        template_file="steerlab_offline.html.j2", sanitize_html=True)


def render_notebook(ipynb: Path, target: Path) -> bool:
    """Render an executed notebook to standalone HTML at `target`, unless `target` is already at least as new
    as the notebook (the common re-run: nothing changed). Returns whether it rendered."""
    if target.exists() and target.stat().st_mtime_ns >= ipynb.stat().st_mtime_ns:
        return False
    import nbformat

    body, _ = _exporter().from_notebook_node(nbformat.read(ipynb, as_version=4))
    atomic_write(target, body.encode("utf-8"))
    return True


# ----------------------------------------------------------------------------- HTML pieces


def esc(value: Any) -> str:
    """Escape text for HTML content and attribute values alike."""
    return html.escape(str(value), quote=True)


def href(target: Path, page_dir: Path) -> str:
    """A relative, percent-encoded URL from a page's folder to `target`, so a copied tree keeps working."""
    return esc(quote(Path(os.path.relpath(target, page_dir)).as_posix()))


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def show(value: Any, exact: bool = False) -> str:
    """Plain text of a value from results or parameters (not escaped): 4 significant digits for floats, also inside
    lists and dicts, unless `exact`; compact JSON for lists and dicts; a dash for missing."""
    if value is None:
        return MISSING
    if isinstance(value, float):
        return repr(value) if exact else f"{value:.4g}"
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int):
        return str(value)
    return json.dumps(value if exact else _rounded(value), default=str, separators=(", ", ": "))


def _rounded(value: Any) -> Any:
    """`value` with every finite float cut to 4 significant digits, for showing a list or dict of results."""
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.4g}")
    if isinstance(value, list | tuple):
        return [_rounded(item) for item in value]
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    return value


def sort_key(value: Any) -> str:
    """What the table's JS sorts a cell by: the full number for numbers (so 10 sorts after 9), else empty."""
    return repr(float(value)) if is_number(value) and math.isfinite(value) else ""


def cell(value: Any, limit: int = 80, classes: str = "", title: str = "", exact: bool = False) -> str:
    """A table cell: escaped, clipped text, numbers sortable by value. The title holds the full text of a clipped
    cell and the full value of a rounded one (a summary's 3.039097785949707 shows as 3.039: issue "The weight wing
    and one way in", item C4), after the caller's `title` when there is one."""
    text = show(value, exact)
    full = show(value, exact=True)
    attributes = f' class="{classes}"' if classes else ""
    if is_number(value):
        attributes += f' data-sort="{sort_key(value)}"'
    if full != text and not (isinstance(value, float) and float(text) == value):  # 2.0 shown as 2 loses nothing
        title = f"{title} = {clip(full, 2000)}" if title else clip(full, 2000)
    if len(text) > limit or title:
        attributes += f' title="{esc(title or clip(text, 2000))}"'
    return f"<td{attributes}>{esc(clip(text, limit))}</td>"


def csv_cell(text: str, limit: int = 60) -> str:
    """A summary.csv cell: numbers shown to 4 significant digits (sorted by value), text escaped and clipped."""
    try:
        number = float(text)
    except ValueError:
        return cell(text, limit)
    if not math.isfinite(number):
        return cell(text, limit)
    shown = text if text.lstrip("-").isdigit() else f"{number:.4g}"
    title = f' title="{esc(text)}"' if shown != text else ""
    return f'<td data-sort="{number!r}"{title}>{esc(shown)}</td>'


def overrides_html(run: Run) -> str:
    if run.overrides is None:
        return '<span class="muted" title="run.json records no overrides and the notebook\'s config is not ' \
               'known here">not recorded</span>'
    if not run.overrides:
        return '<span class="muted">defaults</span>'
    items = " ".join(f"<code>{esc(key)}={esc(clip(show(value, exact=True), 60))}</code>"
                     for key, value in sorted(run.overrides.items()))
    note = ' <span class="muted" title="run.json records no overrides: compared with the config\'s current ' \
           'defaults">(vs defaults)</span>' if run.overrides_from == "config defaults" else ""
    return items + note


def status_html(run: Run, on_row: bool = False) -> str:
    """The status badge, and for a failed run its error (clipped on the index row, whole on the run page)."""
    badge = f'<span class="status status-{esc(run.status)}">{esc(run.status)}</span>'
    if run.status == "running":
        badge = ('<span class="status status-running" title="run.json says running: still going, or stopped '
                 'before it could record an end">running</span>')
    if not run.error:
        return badge
    flat = " ".join(run.error.split())
    if on_row:
        return f'{badge}<div class="error" title="{esc(clip(flat, 2000))}">{esc(clip(flat, ROW_ERROR_CHARS))}</div>'
    return f'{badge}<pre class="error">{esc(run.error)}</pre>'


def commit_html(commit: Any) -> str:
    if not commit:
        return f"<td>{MISSING}</td>"
    text = str(commit)
    short = text[:7] + (" dirty" if text.endswith("-dirty") else "")
    return f'<td title="{esc(text)}"><code>{esc(short)}</code></td>'


STYLE = """
:root { color-scheme: light dark; --muted: #777; --line: #8884; --bad: #c0392b; --warn: #b7791f; --good: #2f855a; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem; }
h1 { font-size: 1.4rem; margin: 0 0 .3rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
h3 { font-size: 1rem; margin: 1.2rem 0 .4rem; }
table { border-collapse: collapse; margin: .5rem 0; }
th, td { border-bottom: 1px solid var(--line); padding: .25rem .5rem; text-align: left; vertical-align: top; }
table.sortable th { cursor: pointer; user-select: none; white-space: nowrap; position: sticky; top: 0;
  background: Canvas; }
th[aria-sort=ascending]::after { content: " \\25B2"; } th[aria-sort=descending]::after { content: " \\25BC"; }
td[data-sort] { text-align: right; font-variant-numeric: tabular-nums; }
tr.run-failed td { background: #c0392b14; } tr.run-running td { background: #b7791f14; }
tr.changed th, tr.changed td { background: #b7791f22; } td.date { white-space: nowrap; }
code { font-size: .92em; } .muted { color: var(--muted); } .small { font-size: .85em; }
.status { font-weight: 600; } .status-finished { color: var(--good); } .status-failed { color: var(--bad); }
.status-running { color: var(--warn); }
.error { color: var(--bad); font-size: .85em; max-width: 32rem; white-space: pre-wrap; }
pre { white-space: pre-wrap; word-break: break-word; background: #8881; padding: .6rem; max-width: 100rem; }
td.text { white-space: pre-wrap; max-width: 40rem; }
figure { display: inline-block; margin: .5rem 1rem .5rem 0; vertical-align: top; }
figure img { max-width: min(100%, 720px); border: 1px solid var(--line); }
figcaption { font-size: .85em; color: var(--muted); }
.controls { margin: .8rem 0; }
"""

SCRIPT = """
(function () {
  function key(row, column) {
    var cell = row.cells[column];
    if (!cell) return "";
    return cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent.trim();
  }
  function blank(text) { return text === "" || text === "\\u2013"; }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var headers = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(headers, function (th, column) {
      th.addEventListener("click", function () {
        var ascending = th.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(headers, function (other) { other.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a, column), y = key(b, column);
          if (blank(x) || blank(y)) return blank(x) === blank(y) ? 0 : (blank(x) ? 1 : -1);  // missing last
          var nx = Number(x), ny = Number(y);
          var order = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y, undefined, {numeric: true});
          return ascending ? order : -order;
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
  });
  var select = document.getElementById("notebook-filter");
  if (!select) return;
  function apply() {
    var chosen = select.value, shown = 0;
    document.querySelectorAll("[data-notebook]").forEach(function (element) {
      element.hidden = chosen !== "" && element.getAttribute("data-notebook") !== chosen;
      if (!element.hidden && element.tagName === "TR") shown += 1;
    });
    document.getElementById("shown").textContent = shown;
    history.replaceState(null, "", chosen ? "#notebook=" + encodeURIComponent(chosen) : "#");
  }
  var wanted = decodeURIComponent((location.hash.match(/^#notebook=(.*)$/) || [])[1] || "");
  if (wanted && Array.prototype.some.call(select.options, function (o) { return o.value === wanted; })) {
    select.value = wanted;
  }
  select.addEventListener("change", apply);
  apply();
})();
"""


def page(title: str, body: str, script: bool = False) -> str:
    """A whole standalone page: inline style, inline script, nothing fetched."""
    tail = f"<script>{SCRIPT}</script>\n" if script else ""
    return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{esc(title)}</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n{body}\n{tail}</body>\n</html>\n")


# ----------------------------------------------------------------------------- the index


INDEX_COLUMNS = ("notebook", "run", "differs from defaults", "main metric", "main", "baseline", "Δ",
                 "side effect", "status", "started", "commit")


def index_row(run: Run, index_dir: Path, run_page: Path) -> str:
    s = run.summary
    main, baseline = s.get("main"), s.get("baseline")
    delta = main - baseline if is_number(main) and is_number(baseline) else None
    side_name = show(s["side_effect_metric"]) if s.get("side_effect_metric") is not None else ""
    metric = s.get("main_metric")
    started_sort = "" if run.started == UNKNOWN_START else run.started  # an unknown start sorts last, as missing
    cells = [
        f"<td>{esc(run.notebook)}</td>",
        f'<td><a href="{href(run_page, index_dir)}">{esc(run.label)}</a></td>',
        f'<td class="small">{overrides_html(run)}</td>',
        cell(metric, 48, "small") if metric is not None else f"<td>{MISSING}</td>",
        cell(main), cell(baseline), cell(delta),
        cell(s.get("side_effect"), title=f"side effect: {side_name}" if side_name else ""),
        f"<td>{status_html(run, on_row=True)}</td>",
        f'<td class="date" data-sort="{esc(started_sort)}">{esc(run.started[:16])}</td>',
        commit_html(run.record.get("git_commit")),
    ]
    return (f'<tr data-notebook="{esc(run.notebook)}" class="run-{esc(run.status)}">'
            + "".join(cells) + "</tr>")


def sweep_html(sweep: Sweep, index_dir: Path, pages: dict[str, Path]) -> str:
    """A sweep: its summary.csv as a sortable table (each run linked to its page when it is in the report) and
    its heatmaps."""
    columns = [c for c in sweep.columns if c != "run_dir"]
    head = "".join(f"<th>{esc(c)}</th>" for c in columns) + "<th>run</th>"
    rows = []
    for row in sweep.rows:
        cells = [csv_cell(row.get(c, "")) if c != "error" else cell(row.get(c, ""), 120, "error")
                 for c in columns]
        target = _sweep_run_page(row.get("run_dir", ""), pages)
        name = _path_parts(row.get("run_dir", ""))[-1:] or ("",)
        link = f'<a href="{href(target, index_dir)}">{esc(name[0])}</a>' if target else esc(name[0])
        rows.append("<tr>" + "".join(cells) + f"<td>{link}</td></tr>")
    images = "".join(f'<figure><a href="{href(p, index_dir)}"><img src="{href(p, index_dir)}" loading="lazy" '
                     f'alt="{esc(p.name)}"></a><figcaption>{esc(p.name)}</figcaption></figure>'
                     for p in sweep.images)
    csv_link = f'<a href="{href(sweep.folder / "summary.csv", index_dir)}">summary.csv</a>'
    table = (f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
             if rows else '<p class="muted">summary.csv has no rows.</p>')
    return (f'<section class="sweep" data-notebook="{esc(sweep.notebook)}">\n'
            f"<h3>{esc(sweep.notebook)}: <code>{esc(sweep.rel)}</code></h3>\n"
            f'<p class="small">{len(sweep.rows)} runs; {csv_link}</p>\n{table}\n<div>{images}</div>\n</section>')


def _sweep_run_page(run_dir: str, pages: dict[str, Path]) -> Path | None:
    """The page of a sweep row's run, matched on the tail of its run_dir (absolute where the sweep ran)."""
    parts = _path_parts(run_dir) if run_dir else ()
    for k in range(len(parts), 0, -1):
        found = pages.get("/".join(parts[-k:]))
        if found:
            return found
    return None


def index_html(runs: list[Run], sweeps: list[Sweep], index_dir: Path, pages: dict[str, Path]) -> str:
    notebooks = sorted({r.notebook for r in runs} | {s.notebook for s in sweeps})
    counts = {n: sum(r.notebook == n for r in runs) for n in notebooks}
    options = "".join(f'<option value="{esc(n)}">{esc(n)} ({counts[n]})</option>' for n in notebooks)
    by_status = {s: sum(r.status == s for r in runs) for s in sorted({r.status for r in runs})}
    status_line = ", ".join(f"{n} {esc(s)}" for s, n in by_status.items())
    head = "".join(f"<th>{esc(c)}</th>" for c in INDEX_COLUMNS)
    rows = "\n".join(index_row(r, index_dir, pages[r.rel]) for r in runs)
    table = (f'<table id="runs" class="sortable"><thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody></table>'
             if runs else '<p class="muted">No run folders (out/&lt;notebook&gt;/&lt;run&gt;/run.json) yet.</p>')
    sweep_part = "\n".join(sweep_html(s, index_dir, pages) for s in sweeps) or \
        '<p class="muted">No sweeps (out/&lt;notebook&gt;/sweeps/&lt;grid&gt;/summary.csv) yet.</p>'
    body = (f"<h1>steerlab runs</h1>\n"
            f'<p class="muted">{len(runs)} runs ({status_line or "none"}) and {len(sweeps)} sweeps, read from '
            f"run.json, results.json and summary.csv. Click a column to sort; Δ is main minus baseline.</p>\n"
            f'<div class="controls"><label>notebook <select id="notebook-filter"><option value="">all</option>'
            f'{options}</select></label> <span class="muted"><span id="shown">{len(runs)}</span> shown</span></div>\n'
            f"{table}\n<h2>Sweeps</h2>\n{sweep_part}")
    return page("steerlab runs", body, script=True)


# ----------------------------------------------------------------------------- a run's page


def run_page_html(run: Run, page_path: Path, index: Path, notebook_page: Path | None, render_note: str) -> str:
    here = page_path.parent
    record = run.record
    facts = [("notebook", esc(run.notebook)),
             ("folder", f'<a href="{href(run.folder, here)}/"><code>{esc(run.rel)}/</code></a>'),
             ("status", status_html(run)),
             ("started", esc(run.started)),
             ("seconds", esc(show(record.get("seconds")))),
             ("git commit", f"<code>{esc(record.get('git_commit') or MISSING)}</code>")]
    diff = run.folder / str(record.get("diff") or "git.diff")
    if diff.is_file():  # a dirty run: the difference from the commit is beside it
        facts.append(("uncommitted changes", f'<a href="{href(diff, here)}">{esc(diff.name)}</a>'))
    if record.get("command"):
        facts.append(("command", f"<code>{esc(record['command'])}</code>"))
    for key in ("executor", "worker", "versions"):
        if key in record:
            facts.append((key, f"<code>{esc(show(record[key]))}</code>"))
    ipynb = executed_notebook(run)
    if notebook_page is not None and ipynb is not None:
        facts.append(("executed notebook", f'<a href="{href(notebook_page, here)}">rendered</a> · '
                                           f'<a href="{href(ipynb, here)}">{esc(ipynb.name)}</a>'))
    elif ipynb is not None:
        facts.append(("executed notebook", f'<a href="{href(ipynb, here)}">{esc(ipynb.name)}</a> '
                                           f'<span class="error">{esc(render_note)}</span>'))
    parts = ["<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts) + "</table>"]
    if run.traceback:
        parts.append(f"<details><summary>traceback</summary><pre>{esc(run.traceback)}</pre></details>")
    for problem in run.problems:
        parts.append(f'<p class="error">{esc(problem)}</p>')

    parts.append("<h2>Summary</h2>")
    if run.summary:
        first = [k for k in MAIN_KEYS if k in run.summary] + [k for k in run.summary if k not in MAIN_KEYS]
        parts.append("<table>" + "".join(f"<tr><th>{esc(k)}</th>{cell(run.summary[k], 2000, 'text')}</tr>"
                                         for k in first) + "</table>")
    else:
        why = "results.json has no summary" if (run.folder / "results.json").exists() else "no results.json"
        parts.append(f'<p class="muted">{why}.</p>')

    parts.append("<h2>Parameters</h2>")
    parameters = record.get("parameters") if isinstance(record.get("parameters"), dict) else {}
    changed = run.overrides or {}
    names = list(parameters) + [k for k in changed if k not in parameters]
    if names:
        marked = ' class="changed"'
        rows = "".join(f'<tr{marked if k in changed else ""}><th>{esc(k)}</th>'
                       f"{cell(parameters.get(k, changed.get(k)), 2000, 'text', exact=True)}"
                       f"<td>{'differs from default' if k in changed else ''}</td></tr>" for k in names)
        parts.append(f'<p class="small muted">Highlighted: differs from the defaults ({esc(run.overrides_from)}).'
                     f"</p><table>{rows}</table>")
    else:
        parts.append('<p class="muted">run.json records no parameters.</p>')

    figures = _images(run.folder)
    if figures:
        parts.append("<h2>Figures</h2><div>" + "".join(
            f'<figure><a href="{href(p, here)}"><img src="{href(p, here)}" loading="lazy" alt="{esc(p.name)}"></a>'
            f"<figcaption>{esc(p.name)}</figcaption></figure>" for p in figures) + "</div>")

    tables = [(k, v) for k, v in run.results.items()
              if k != "summary" and isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
    if tables:
        parts.append("<h2>Results tables</h2>")
        for key, rows_ in tables:
            columns = list(dict.fromkeys(c for row in rows_[:TABLE_ROWS] for c in row))[:16]
            head = "".join(f"<th>{esc(c)}</th>" for c in columns)
            body = "".join("<tr>" + "".join(cell(row.get(c), CELL_CHARS, "text") for c in columns) + "</tr>"
                           for row in rows_[:TABLE_ROWS])
            more = f" (first {TABLE_ROWS} of {len(rows_)})" if len(rows_) > TABLE_ROWS else f" ({len(rows_)})"
            parts.append(f"<details><summary><code>{esc(key)}</code>{more}</summary>"
                         f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
                         f"</details>")

    files = sorted(run.folder.iterdir())
    parts.append("<h2>Files</h2><ul>" + "".join(
        f'<li><a href="{href(p, here)}{"/" if p.is_dir() else ""}">{esc(p.name)}{"/" if p.is_dir() else ""}</a>'
        f'{"" if p.is_dir() else " <span class=muted>" + _size(p.stat().st_size) + "</span>"}</li>'
        for p in files) + "</ul>")

    title = f"{run.notebook} / {run.label}"
    body = (f'<p><a href="{href(index, here)}">← all runs</a></p>\n<h1>{esc(title)}</h1>\n' + "\n".join(parts))
    return page(title, body, script=True)


def _size(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return ""


# ----------------------------------------------------------------------------- building


def build(out_root: Path | str | None = None, output: Path | str | None = None) -> Report:
    """Read every run and sweep under `out_root` (default out/) and write the index at `output` (default
    `<out_root>/index.html`), the run pages and the rendered notebooks under `report/` beside it."""
    out_root = Path(out_root or REPO_ROOT / "out").resolve()
    if not out_root.is_dir():
        raise FileNotFoundError(f"{out_root} is not a folder: run a notebook first (./just run ...)")
    index = Path(output).resolve() if output else out_root / "index.html"
    report_dir = index.parent / REPORT_DIR
    run_dirs, sweep_dirs = scan(out_root, report_dir.resolve())
    runs = sorted((load_run(d, out_root) for d in run_dirs), key=lambda r: (r.notebook, r.label))
    sweeps = [load_sweep(d, out_root) for d in sweep_dirs]
    pages = {run.rel: report_dir / f"{run.rel}.html" for run in runs}
    rendered = 0
    for run in runs:
        ipynb = executed_notebook(run)
        notebook_page, note = None, ""
        if ipynb is not None:
            target = report_dir / f"{run.rel}.notebook.html"
            try:
                rendered += render_notebook(ipynb, target)
                notebook_page = target
            except Exception as error:  # a half-written or foreign notebook: link the .ipynb, keep going
                note = f"(could not render: {type(error).__name__}: {clip(str(error), 300)})"
        atomic_write(pages[run.rel], run_page_html(run, pages[run.rel], index, notebook_page, note).encode("utf-8"))
    atomic_write(index, index_html(runs, sweeps, index.parent, pages).encode("utf-8"))
    return Report(index=index, runs=len(runs), sweeps=len(sweeps), rendered=rendered,
                  failed=sum(r.status == "failed" for r in runs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-root", default=str(REPO_ROOT / "out"), help="the tree of runs to read (default out/)")
    parser.add_argument("--output", default=None, help="the index to write (default <out-root>/index.html)")
    args = parser.parse_args(argv)
    try:
        report = build(args.out_root, args.output)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {report.index}: {report.runs} runs ({report.failed} failed), {report.sweeps} sweeps, "
          f"{report.rendered} notebooks rendered (others up to date); open it in a browser")
    return 0


if __name__ == "__main__":
    sys.exit(main())
