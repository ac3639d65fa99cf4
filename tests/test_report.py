"""The report (lib/report.py) on a fake out/ tree: rows, escaping, sweeps, relative links that survive a copy,
cheap rebuilds. No model; each test names the one-line mutation of lib/report.py it catches."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import nbformat
import pytest

from lib.report import build, main

EVIL = "ValueError: bad <script>alert(1)</script> & more"


def tiny_png() -> bytes:
    """A valid 1x1 PNG from raw bytes (no matplotlib import)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = (1).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
            + chunk(b"IEND", b""))


def write_run(root: Path, notebook: str, slug: str, record: dict, results: dict | str | None = None) -> Path:
    folder = root / notebook / slug
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"notebook": notebook, **record}))
    if isinstance(results, dict):
        (folder / "results.json").write_text(json.dumps(results))
    elif isinstance(results, str):
        (folder / "results.json").write_text(results)  # broken on purpose
    return folder


def executed_notebook(path: Path, text: str) -> None:
    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print('hello')", execution_count=1)
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
    notebook.cells = [nbformat.v4.new_markdown_cell("# toy run"), cell]
    nbformat.write(notebook, path)


def summary(main: float, baseline: float, side: float) -> dict:
    return {"summary": {"main_metric": "readout", "main": main, "baseline": baseline,
                        "side_effect_metric": "off_readout_drift", "side_effect": side}}


RETIRED = "old run #1 (cluster)"  # a hand-named copy: links to it need percent-encoding
TOY_PARAMETERS = {"layer": 1, "scale": 1.0, "n_samples": 64, "seed": 0, "work": 0, "sleep_seconds": 0.0,
                  "fail_scale": None}


@pytest.fixture
def out(tmp_path) -> Path:
    """Two finished toy_sweep runs (different overrides; figures; an executed notebook), a failed one whose
    error holds markup, a running one without results.json, one from an older runner that recorded no
    overrides, a hand-named copy of a notebook this checkout does not know (broken results.json), a sweep."""
    root = tmp_path / "out"
    ok = {"status": "ok", "git_commit": "0123456789abcdef-dirty", "started": "2026-12-01T10:00:00", "seconds": 3.0}
    default = write_run(root, "toy_sweep", "default", {**ok, "overrides": {}, "parameters": TOY_PARAMETERS,
                                                       "command": "./just run toy_sweep", "diff": "git.diff"},
                        {**summary(0.75, 0.25, 0.125), "results": [{"prompt": "hi", "steered": "<b>loud</b>"}]})
    (default / "effect_curve.png").write_bytes(tiny_png())
    (default / "git.diff").write_text("+scale = 2\n")
    (default / "curve.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>')
    executed_notebook(default / "toy_sweep.ipynb", "unique-output-text-42\n")
    changed = write_run(root, "toy_sweep", "layer=2_scale=3.0",
                        {**ok, "overrides": {"layer": 2, "scale": 3.0},
                         "parameters": {**TOY_PARAMETERS, "layer": 2, "scale": 3.0}}, summary(10.5, 0.25, 2.0))
    (changed / "effect_curve.png").write_bytes(tiny_png())
    write_run(root, "toy_sweep", "scale=-1.0", {"status": "failed", "overrides": {"scale": -1.0}, "error": EVIL,
                                                "traceback": "Traceback (most recent call last):\n  deep <frame>"})
    write_run(root, "toy_sweep", "layer=3", {"status": "running", "overrides": {"layer": 3},
                                             "started": "2026-12-01T11:00:00"})
    write_run(root, "toy_sweep", "seed=5",
              {**ok, "parameters": {**TOY_PARAMETERS, "seed": 5, "out_dir": "/cluster/out/toy_sweep/seed=5"}},
              summary(2e-05, 0.25, 0.0))  # sorts first only when compared as a number
    write_run(root, "retired_nb", RETIRED, {**ok, "parameters": {"alpha": 2}}, "{not json")
    sweep = root / "toy_sweep" / "sweeps" / "layer=1,2_scale=1.0,3.0"
    sweep.mkdir(parents=True)
    (sweep / "summary.csv").write_text(
        "layer,scale,main_metric,main,baseline,run_dir,status\n"
        "1,1.0,readout,0.75,0.25,/cluster/home/me/out/toy_sweep/default,ok\n"
        "2,3.0,readout,10.5,0.25,/cluster/home/me/out/toy_sweep/layer=2_scale=3.0,ok\n")
    (sweep / "heatmap_delta.png").write_bytes(tiny_png())
    return root


class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None], parent: Node | None):
        self.tag, self.attrs, self.parent, self.children, self.parts = tag, attrs, parent, [], []

    @property
    def text(self) -> str:
        return "".join(p if isinstance(p, str) else p.text for p in self.parts)

    def find_all(self, tag: str) -> list[Node]:
        found = []
        for child in self.children:
            found += ([child] if child.tag == tag else []) + child.find_all(tag)
        return found


class Tree(HTMLParser):
    """A small DOM from html.parser (void elements closed at once), enough to walk tables and links."""

    VOID = {"meta", "img", "br", "hr", "link", "input", "source", "col", "wbr"}

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.root = self.current = Node("root", {}, None)
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.current)
        self.current.children.append(node)
        self.current.parts.append(node)
        if tag not in self.VOID:
            self.current = node

    def handle_endtag(self, tag):
        node = self.current
        while node.parent is not None and node.tag != tag:
            node = node.parent
        if node.parent is not None:
            self.current = node.parent

    def handle_data(self, data):
        self.current.parts.append(data)


def parse(path: Path) -> Node:
    return Tree(path.read_text(encoding="utf-8")).root


def runs_table(index: Path) -> tuple[list[str], dict[str, list[Node]]]:
    """Header names and {"<notebook>/<run label>": cells} of the index's runs table."""
    table = next(t for t in parse(index).find_all("table") if t.attrs.get("id") == "runs")
    header = [th.text for th in table.find_all("th")]
    rows = {}
    for tr in table.find_all("tbody")[0].find_all("tr"):
        cells = tr.find_all("td")
        rows[f'{cells[0].text}/{cells[header.index("run")].text}'] = cells
    return header, rows


def local_links(page: Path) -> list[str]:
    """Every href and src of a page that should be a relative file link (anchors, data: and web URLs left out;
    an absolute path or file: URL stays in, to fail)."""
    found = []
    for node in parse(page).find_all("a") + parse(page).find_all("img"):
        target = node.attrs.get("href") or node.attrs.get("src") or ""
        if target and not target.startswith(("#", "data:", "http:", "https:", "mailto:")):
            found.append(target)
    return found


def assert_links_resolve(page: Path, inside: Path) -> int:
    """Each relative link of `page` names an existing file or folder inside `inside`; returns how many."""
    links = local_links(page)
    for link in links:
        assert not link.startswith(("/", "file:")), f"{page.name}: {link} is not relative"
        target = (page.parent / unquote(link.split("#")[0])).resolve()
        assert target.exists(), f"{page.name}: {link} -> {target} does not exist"
        assert target.is_relative_to(inside.resolve()), f"{page.name}: {link} leaves {inside}"
    return len(links)


def all_pages(index: Path) -> list[Path]:
    return [index, *sorted((index.parent / "report").rglob("*.html"))]


def test_index_rows_overrides_metrics_and_status(out):
    """One row per run folder (catches: dropping the running one, which has run.json and no results), the
    overrides as key=value (catches: keys only), main beside baseline with its full value to sort on
    (catches: data-sort dropped from `cell`, main and baseline swapped), missing keys as a dash (catches:
    `s["main"]` for `s.get("main")`: KeyError on the running run)."""
    report = build(out)
    assert (report.runs, report.sweeps, report.failed) == (6, 1, 1)
    header, rows = runs_table(report.index)
    assert sorted(rows) == [f"retired_nb/{RETIRED}", "toy_sweep/default", "toy_sweep/layer=2_scale=3.0",
                            "toy_sweep/layer=3", "toy_sweep/scale=-1.0", "toy_sweep/seed=5"]
    assert header.index("baseline") == header.index("main") + 1

    changed = rows["toy_sweep/layer=2_scale=3.0"]
    assert "layer=2" in changed[header.index("differs from defaults")].text
    assert "scale=3.0" in changed[header.index("differs from defaults")].text
    assert changed[header.index("main")].text == "10.5"
    assert changed[header.index("main")].attrs["data-sort"] == "10.5"
    assert changed[header.index("baseline")].text == "0.25"
    assert changed[header.index("Δ")].attrs["data-sort"] == "10.25"
    assert changed[header.index("side effect")].text == "2"
    assert changed[header.index("commit")].text == "0123456 dirty"
    assert changed[header.index("status")].text == "finished"

    running = rows["toy_sweep/layer=3"]
    assert running[header.index("status")].text == "running"
    assert running[header.index("main")].text == running[header.index("baseline")].text == "–"
    assert "layer=3" in running[header.index("differs from defaults")].text


def test_failed_error_is_shown_escaped_on_the_row_and_whole_on_its_page(out):
    """Catches: any `esc(...)` dropped around the error (raw <script> in the page), the error left off the row
    (`if not run.error` inverted), or the traceback left off the run page."""
    report = build(out)
    header, rows = runs_table(report.index)
    status = rows["toy_sweep/scale=-1.0"][header.index("status")]
    assert status.text.startswith("failed") and EVIL in status.text
    for page in all_pages(report.index):
        raw = page.read_text(encoding="utf-8")
        assert "<script>alert" not in raw and "<b>loud</b>" not in raw, page
    run_page = out / "report" / "toy_sweep" / "scale=-1.0.html"
    text = parse(run_page).text
    assert EVIL in text and "deep <frame>" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in run_page.read_text()
    completions = parse(out / "report" / "toy_sweep" / "default.html").text
    assert "<b>loud</b>" in completions  # shown as text


def test_links_images_sweep_notebook_and_filter(out):
    """Every link and image is relative and resolves (catches: `quote` dropped from `href`, which cuts the
    link to "old run #1 (cluster)" at its "#"; `target` for `os.path.relpath(target, page_dir)`), the sweep's
    table, heatmap and run links (catches: the run_dir tail match reduced to an exact path match), the
    rendered notebook exists, is linked and loads nothing from a CDN (catches: one block of OFFLINE_TEMPLATE
    removed), the filter lists the notebooks (catches: an option left out)."""
    report = build(out)
    counted = sum(assert_links_resolve(page, out) for page in all_pages(report.index))
    assert counted > 20

    tree = parse(report.index)
    sweep = next(s for s in tree.find_all("section") if "sweep" in s.attrs.get("class", ""))
    assert sweep.attrs["data-notebook"] == "toy_sweep"
    header = [th.text for th in sweep.find_all("th")]
    assert header[:5] == ["layer", "scale", "main_metric", "main", "baseline"]
    sweep_rows = sweep.find_all("tbody")[0].find_all("tr")
    assert [[td.text for td in tr.find_all("td")][3] for tr in sweep_rows] == ["0.75", "10.5"]
    run_links = [a.attrs["href"] for a in sweep.find_all("a")]
    assert any(unquote(h).endswith("report/toy_sweep/layer=2_scale=3.0.html") for h in run_links)
    assert any(img.attrs["src"].endswith("heatmap_delta.png") for img in sweep.find_all("img"))

    run_page = out / "report" / "toy_sweep" / "default.html"
    rendered = out / "report" / "toy_sweep" / "default.notebook.html"
    assert rendered.exists() and "unique-output-text-42" in rendered.read_text()
    assert any(unquote(link) == "default.notebook.html" for link in local_links(run_page))
    # a dirty run links the diff it was run with and shows its command; a run without a diff links none
    assert any(unquote(link).endswith("toy_sweep/default/git.diff") for link in local_links(run_page))
    assert "./just run toy_sweep" in parse(run_page).text
    assert not any("git.diff" in link for link in local_links(out / "report" / "toy_sweep" / "layer=2_scale=3.0.html"))
    images = [img.attrs["src"] for img in parse(run_page).find_all("img")]
    assert sorted(unquote(s).rsplit("/", 1)[-1] for s in images) == ["curve.svg", "effect_curve.png"]
    for page in all_pages(report.index):
        raw = page.read_text(encoding="utf-8")
        assert "<script src" not in raw and "cdnjs" not in raw and "<link" not in raw, page

    select = next(s for s in tree.find_all("select") if s.attrs.get("id") == "notebook-filter")
    assert [o.attrs["value"] for o in select.find_all("option")] == ["", "retired_nb", "toy_sweep"]
    for row in next(t for t in tree.find_all("table") if t.attrs.get("id") == "runs").find_all("tr")[1:]:
        assert row.attrs["data-notebook"] in ("retired_nb", "toy_sweep")


def test_overrides_from_config_defaults_or_not_recorded(out):
    """A run.json without overrides is compared with ToySweepConfig's defaults (catches: `k != "out_dir"`
    dropped, or the comparison reduced to "not recorded"); an unknown notebook with a broken results.json still
    gets a row and a page (catches: the try/except around config_class removed, ValueError dropped from
    read_json's except)."""
    report = build(out)
    header, rows = runs_table(report.index)
    older = rows["toy_sweep/seed=5"][header.index("differs from defaults")].text
    assert "seed=5" in older and "layer" not in older and "out_dir" not in older and "(vs defaults)" in older
    retired = rows[f"retired_nb/{RETIRED}"]
    assert retired[header.index("differs from defaults")].text == "not recorded"
    assert retired[header.index("main")].text == "–"
    page = parse(out / "report" / "retired_nb" / f"{RETIRED}.html").text
    assert "results.json could not be read" in page and "alpha" in page


def test_rebuild_is_idempotent_and_renders_a_notebook_only_when_it_changed(out):
    """Catches: the mtime check removed (a second build renders again), the check made unconditional (a newer
    .ipynb is not rendered again), or anything time-dependent written into the pages."""
    first = build(out)
    assert first.rendered == 1
    rendered = out / "report" / "toy_sweep" / "default.notebook.html"
    pages = {p: p.read_bytes() for p in all_pages(first.index)}
    stamp = rendered.stat().st_mtime_ns
    second = build(out)
    assert second.rendered == 0 and rendered.stat().st_mtime_ns == stamp
    assert {p: p.read_bytes() for p in all_pages(second.index)} == pages
    ipynb = out / "toy_sweep" / "default" / "toy_sweep.ipynb"
    later = rendered.stat().st_mtime + 10
    os.utime(ipynb, (later, later))
    assert build(out).rendered == 1 and rendered.stat().st_mtime_ns > stamp


def test_a_copied_tree_keeps_working_built_or_rebuilt(out, tmp_path):
    """The built report copied elsewhere resolves inside the copy, and so does a rebuild there, without
    rendering again (catches: absolute paths in href/src, e.g. `target.as_uri()` or relpath dropped)."""
    build(out)
    copy = tmp_path / "elsewhere" / "out"
    shutil.copytree(out, copy)
    shutil.rmtree(out)  # nothing may point back to the original
    for page in all_pages(copy / "index.html"):
        assert_links_resolve(page, copy)
    again = build(copy)
    assert again.rendered == 0 and again.runs == 6
    for page in all_pages(again.index):
        assert_links_resolve(page, copy)


def test_cli_writes_elsewhere_and_says_what_it_wrote(out, tmp_path, capsys):
    """--output outside the out root still links into it (catches: links computed relative to out_root instead
    of the page's folder); the message names the file and counts (catches: a silent CLI)."""
    site = tmp_path / "site" / "index.html"
    assert main(["--out-root", str(out), "--output", str(site)]) == 0
    message = capsys.readouterr().out
    assert str(site) in message and "6 runs" in message and "1 sweeps" in message
    assert (tmp_path / "site" / "report" / "toy_sweep" / "default.html").exists()
    for page in all_pages(site):
        assert_links_resolve(page, tmp_path)
    assert main(["--out-root", str(tmp_path / "missing")]) == 2


@pytest.mark.skipif(not shutil.which("node"), reason="needs node to run the page's script")
def test_page_script_filters_and_sorts_numerically(out, tmp_path):
    """The inline script in a stub DOM under node: clicking `main` sorts 2e-05 < 0.75 < 10.5 with missing values
    last (catches: the Number comparison dropped, leaving localeCompare, which puts "2e-05" after "0.75"), and
    the filter hides other notebooks' rows (catches: the data-notebook comparison inverted)."""
    import re

    report = build(out)
    raw = report.index.read_text(encoding="utf-8")
    script = re.search(r"<script>(.*)</script>", raw, re.S).group(1)
    header, rows = runs_table(report.index)
    table = [{"notebook": cells[0].text, "cells": [{"sort": c.attrs.get("data-sort"), "text": c.text}
                                                  for c in cells]} for cells in rows.values()]
    harness = tmp_path / "harness.js"
    harness.write_text(STUB_DOM.replace("__ROWS__", json.dumps(table)).replace("__HEADER__", json.dumps(header))
                       .replace("__SCRIPT__", script))
    result = subprocess.run(["node", str(harness), str(header.index("main"))], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    mains = json.loads(lines[0])
    numbers = [float(m) for m in mains if m != "–"]
    assert numbers == [2e-05, 0.75, 10.5] and mains[-3:] == ["–"] * 3
    assert json.loads(lines[1]) == {"hidden": ["retired_nb"], "shown": 5}


STUB_DOM = r"""
// Just enough DOM for the report's script: one sortable table, the select, the counter, history.
var header = __HEADER__, data = __ROWS__;
function Cell(c) { this.c = c; this.textContent = c.text; }
Cell.prototype.hasAttribute = function (n) { return n === "data-sort" && this.c.sort != null; };
Cell.prototype.getAttribute = function () { return this.c.sort; };
function Row(r) { this.r = r; this.cells = r.cells.map(function (c) { return new Cell(c); }); this.tagName = "TR";
  this.hidden = false; }
Row.prototype.getAttribute = function () { return this.r.notebook; };
var body = { rows: data.map(function (r) { return new Row(r); }),
  appendChild: function (row) { this.rows.splice(this.rows.indexOf(row), 1); this.rows.push(row); } };
var ths = header.map(function () { return { attrs: {}, handlers: {},
  addEventListener: function (e, f) { this.handlers[e] = f; },
  getAttribute: function (n) { return this.attrs[n] === undefined ? null : this.attrs[n]; },
  setAttribute: function (n, v) { this.attrs[n] = v; }, removeAttribute: function (n) { delete this.attrs[n]; } }; });
var table = { tHead: { rows: [{ cells: ths }] }, tBodies: [body] };
var select = { value: "", options: [{ value: "" }, { value: "retired_nb" }, { value: "toy_sweep" }],
  handlers: {}, addEventListener: function (e, f) { this.handlers[e] = f; } };
var shown = { textContent: "" };
global.document = {
  querySelectorAll: function (q) { return q === "table.sortable" ? [table] : body.rows; },
  getElementById: function (id) { return id === "notebook-filter" ? select : shown; } };
global.location = { hash: "" };
global.history = { replaceState: function () {} };
__SCRIPT__
var column = Number(process.argv[2]);
ths[column].handlers.click();
console.log(JSON.stringify(body.rows.map(function (r) { return r.cells[column].textContent; })));
select.value = "toy_sweep"; select.handlers.change();
var hidden = body.rows.filter(function (r) { return r.hidden; }).map(function (r) { return r.r.notebook; });
console.log(JSON.stringify({ hidden: hidden, shown: Number(shown.textContent) }));
"""


def test_a_notebook_run_in_jupyterlab_is_listed_as_interactive(out):
    """A run folder with results.json but no run.json (the notebook ran in JupyterLab, not through the runner) is a
    row marked interactive, its parameters read from results.json (catches: scanning for run.json only, which
    hides every run made by hand; status taken from a missing record, "unknown")."""
    folder = out / "toy_sweep" / "by-hand"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"parameters": {**TOY_PARAMETERS, "layer": 3},
                                                     **summary(4.0, 1.0, 0.5)}))
    report = build(out)
    header, rows = runs_table(report.index)
    row = rows["toy_sweep/by-hand"]
    assert row[header.index("status")].text == "interactive"
    assert row[header.index("main")].text == "4"
    assert "layer=3" in row[header.index("differs from defaults")].text


def test_override_values_on_the_index_row_are_escaped(tmp_path):
    """An override value holding markup, a quote and an ampersand shows as text on the index row (catches: `esc`
    dropped around the values in `overrides_html`, which puts a live <script> on out/index.html)."""
    value = '<script>alert(1)</script> "q" & more'
    write_run(tmp_path / "out", "playground", "prompt=evil", {"status": "ok", "overrides": {"prompt": value}})
    report = build(tmp_path / "out")
    raw = report.index.read_text(encoding="utf-8")
    assert "<script>alert(1)</script>" not in raw and '"q"' not in raw
    assert "prompt=&lt;script&gt;alert(1)&lt;/script&gt; &quot;q&quot; &amp; more" in raw
    header, rows = runs_table(report.index)
    assert f"prompt={value}" in rows["playground/prompt=evil"][header.index("differs from defaults")].text


def _started_cells(report, label: str) -> tuple[Node, str]:
    """The index's `started` cell of a toy_sweep run and the `started` row of its run page."""
    header, rows = runs_table(report.index)
    page = parse(report.index.parent / "report" / "toy_sweep" / f"{label}.html")
    facts = {tr.find_all("th")[0].text: tr.find_all("td")[0].text for tr in page.find_all("table")[0].find_all("tr")}
    return rows[f"toy_sweep/{label}"][header.index("started")], facts["started"]


def test_started_comes_from_run_json_never_from_a_file_time(tmp_path):
    """A clone stamps every file with today: a run whose run.json says it started in 2020 shows 2020 on the index and
    its page, and a run.json without `started` (or no run.json, a run made by hand) shows "unknown", sorted as missing
    (catches: the fallback to run.json's or results.json's mtime, which showed journal runs as started at the clone's
    time; issue "The weight wing and one way in", item C1)."""
    import time

    root = tmp_path / "out"
    old = write_run(root, "toy_sweep", "old", {"status": "ok", "overrides": {}, "started": "2020-01-02T03:04:05"},
                    summary(1.0, 0.5, 0.1))
    none = write_run(root, "toy_sweep", "no-start", {"status": "ok", "overrides": {}}, summary(1.0, 0.5, 0.1))
    by_hand = root / "toy_sweep" / "by-hand"
    by_hand.mkdir()
    (by_hand / "results.json").write_text(json.dumps(summary(1.0, 0.5, 0.1)))
    now = time.time()
    for folder in (old, none, by_hand):
        for path in folder.iterdir():
            os.utime(path, (now, now))  # as fresh as a clone's files
    today = time.strftime("%Y-%m-%d", time.localtime(now))
    report = build(root)

    index_cell, page_value = _started_cells(report, "old")
    assert (index_cell.text, index_cell.attrs["data-sort"], page_value) == \
        ("2020-01-02 03:04", "2020-01-02 03:04:05", "2020-01-02 03:04:05")
    for label in ("no-start", "by-hand"):
        index_cell, page_value = _started_cells(report, label)
        assert (index_cell.text, index_cell.attrs["data-sort"], page_value) == ("unknown", "", "unknown"), label
    assert today not in report.index.read_text(encoding="utf-8")


def test_summaries_show_four_significant_digits_with_the_full_value_on_hover(tmp_path):
    """Run pages and the index show 3.039 for 3.039097785949707, keep the full value in the cell's title (and the
    sort key), round inside lists too, and escape what they show (catches: `exact=True` left on the run page's
    summary, the title dropped for a rounded value, `esc` dropped around the title; issue "The weight wing and one
    way in", item C4). A float that rounding does not change (2.0 shown as 2) gets no title."""
    root = tmp_path / "out"
    results = {"summary": {"main_metric": 'gap <b>"x"</b>', "main": 3.039097785949707, "baseline": 2.0,
                           "side_effect_metric": "kl", "side_effect": 0.000123456789,
                           "ci": [0.123456789, 0.987654321], 'label <i>"q"</i>': 0.3333333333333333,
                           "by_key": {'<b>k"</b>': 0.123456789}}}  # markup in a rounded value's title
    write_run(root, "toy_sweep", "digits", {"status": "ok", "overrides": {}}, results)
    report = build(root)

    header, rows = runs_table(report.index)
    row = rows["toy_sweep/digits"]
    main = row[header.index("main")]
    assert (main.text, main.attrs["title"], main.attrs["data-sort"]) == \
        ("3.039", "3.039097785949707", "3.039097785949707")
    assert row[header.index("baseline")].text == "2" and "title" not in row[header.index("baseline")].attrs
    side = row[header.index("side effect")]
    assert (side.text, side.attrs["title"]) == ("0.0001235", "side effect: kl = 0.000123456789")
    assert row[header.index("Δ")].attrs["title"] == "1.039097785949707"

    page_path = report.index.parent / "report" / "toy_sweep" / "digits.html"
    summary_table = parse(page_path).find_all("table")[1]
    shown = {tr.find_all("th")[0].text: tr.find_all("td")[0] for tr in summary_table.find_all("tr")}
    assert (shown["main"].text, shown["main"].attrs["title"]) == ("3.039", "3.039097785949707")
    assert (shown["ci"].text, shown["ci"].attrs["title"]) == ("[0.1235, 0.9877]", "[0.123456789, 0.987654321]")
    assert shown['label <i>"q"</i>'].text == "0.3333"
    assert (shown["by_key"].text, shown["by_key"].attrs["title"]) == \
        ('{"<b>k\\"</b>": 0.1235}', '{"<b>k\\"</b>": 0.123456789}')
    assert shown["main_metric"].text == 'gap <b>"x"</b>' and "title" not in shown["main_metric"].attrs
    assert "3.039097785949707</td>" not in page_path.read_text(encoding="utf-8")  # shown rounded, not in full
    for raw in (page_path.read_text(encoding="utf-8"), report.index.read_text(encoding="utf-8")):
        assert "<b>" not in raw and "<i>" not in raw and "&lt;b&gt;&quot;x&quot;&lt;/b&gt;" in raw
