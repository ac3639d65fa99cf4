"""What a person at the desk sees: a notebook opened from its paired .py in JupyterLab and run there, the
playground's slider moved, and the report page of the runs, in a real headless Chromium (`./just test-browser`).

Skips, with the reason and the fix, when Playwright or a Chromium binary is missing: a skipped tier is reported
as skipped (`-rs`), never as a pass. (Fixtures live here, not in a conftest.py: the suite imports its root
conftest by name.)"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
except ImportError:  # the tier skips in the `browser` fixture; keep collection working
    PlaywrightTimeout = TimeoutError

from lib.io import REPO_ROOT

pytestmark = pytest.mark.browser
RUN_TIMEOUT_S = int(os.environ.get("STEERLAB_BROWSER_TIMEOUT", "600"))
SCREENSHOTS = REPO_ROOT / "out" / "browser"
CONTRASTIVE_QUICK = {"n_samples": 8, "n_eval": 4, "inference_n": 2, "max_tokens": 12, "curve_scales": [0.0, 4.0],
                     "batch_size": 8, "layer": 12, "scale": 6.0}


def chromium_path() -> str | None:
    """STEERLAB_CHROMIUM, else a system Chromium or Chrome on PATH (Debian: `apt-get install chromium`)."""
    chosen = os.environ.get("STEERLAB_CHROMIUM")
    if chosen:
        return chosen if Path(chosen).exists() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def with_parameters(source: str, values: dict[str, object]) -> str:
    """A notebook's percent-format source with its parameters cell's assignments replaced by `values` (the
    quick preset a person would type there); refuses names the cell does not have."""
    head, marker, rest = source.partition('# %% tags=["parameters"]\n')
    assert marker, "no parameters cell"
    cell, next_marker, tail = rest.partition("\n# %%")
    lines = cell.split("\n")
    for name, value in values.items():
        pattern = re.compile(rf"^{re.escape(name)} = ")
        hits = [i for i, line in enumerate(lines) if pattern.match(line)]
        assert hits, f"the parameters cell has no {name!r}"
        lines[hits[0]] = f"{name} = {value!r}"
    return head + marker + "\n".join(lines) + next_marker + tail


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Lab:
    url: str
    token: str
    notebooks: Path
    out: Path

    def page_url(self, path: str = "") -> str:
        return f"{self.url}/lab{path}?token={self.token}"


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed: ./just test-browser installs it (pip extra [browser])")
    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium: `apt-get install chromium` (Debian/Ubuntu), or set STEERLAB_CHROMIUM to a "
                    "Chrome/Chromium binary; the browser tier did not run")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True,
                                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="session")
def lab(tmp_path_factory, browser) -> Iterator[Lab]:
    """`./just lab` on a free loopback port with a token, serving copies of two notebooks whose parameters cells
    hold quick presets and write under a temporary out folder."""
    root = tmp_path_factory.mktemp("desk")
    notebooks, out = root / "nbs", root / "out"
    notebooks.mkdir()
    contrastive = (REPO_ROOT / "nbs" / "contrastive_steering.py").read_text()
    (notebooks / "contrastive_steering.py").write_text(with_parameters(contrastive, {
        **CONTRASTIVE_QUICK, "out_dir": str(out / "contrastive_steering" / "browser")}))
    playground = (REPO_ROOT / "nbs" / "playground.py").read_text()
    (notebooks / "playground.py").write_text(with_parameters(playground, {
        "vector": "", "layers": [12], "coefficient": 0.0,  # "": the notebook builds the demo's vector itself
        "coefficients": [], "max_new_tokens": 12, "out_dir": str(out / "playground" / "browser")}))
    port, token = free_port(), "steerlab-browser-test"
    env = {**os.environ, "STEERLAB_NOTEBOOK_DIR": str(notebooks), "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
           "JUPYTERLAB_WORKSPACES_DIR": str(root / "workspaces")}
    log = open(root / "lab.log", "w")  # noqa: SIM115 (closed in finally)
    process = subprocess.Popen(
        [str(REPO_ROOT / "just"), "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         f"--IdentityProvider.token={token}"],
        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"./just lab did not start: {(root / 'lab.log').read_text()[-2000:]}") from None
                time.sleep(1)
        yield Lab(url, token, notebooks, out)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def assert_not_blank(path: Path) -> None:
    """A screenshot with real content: many colours and a spread of brightness (a blank or single-colour page
    has neither)."""
    from PIL import Image, ImageStat

    image = Image.open(path).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, f"{path} looks blank ({len(colours or [])} colours)"
    assert max(ImageStat.Stat(image.convert("L")).stddev) > 10, f"{path} has almost no contrast"


def open_notebook(page, lab, name: str) -> None:
    """Double-click the paired .py in the file browser, as a person does; it opens as a notebook."""
    page.goto(lab.page_url())
    item = page.locator(".jp-DirListing-item", has_text=name)
    item.wait_for(timeout=60_000)
    item.dblclick()
    page.locator(".jp-NotebookPanel:visible .jp-Cell").first.wait_for(timeout=60_000)
    # a text notebook opened the first time asks which kernel to start: take the proposed one, as a person would
    select = page.locator(".jp-Dialog .jp-mod-accept", has_text="Select")
    try:
        select.wait_for(timeout=15_000)
        select.click()
    except PlaywrightTimeout:
        pass
    news = page.locator(".jp-toast-button", has_text=re.compile(r"^No$"))
    if news.count():
        news.first.click()
    page.locator("#jp-main-statusbar").get_by_text(re.compile(r"\bIdle\b")).first.wait_for(timeout=120_000)


def run_all(page) -> None:
    """Run > Run All Cells, then wait until every code cell has an execution count and none is queued."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        # text_contents: cells scrolled out of view are not rendered (inner text "") but keep their prompt text
        prompts = page.locator(".jp-NotebookPanel:visible .jp-CodeCell .jp-InputPrompt").all_text_contents()
        if prompts and all(re.search(r"\[\d+\]", text) for text in prompts):
            return
        if any("Traceback" in text for text in page.locator(".jp-OutputArea-output").all_inner_texts()):
            break
        time.sleep(2)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "failed_run_all.png"))
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    prompts = page.locator(".jp-NotebookPanel:visible .jp-CodeCell .jp-InputPrompt").all_inner_texts()
    raise AssertionError(f"the notebook did not finish (prompts {prompts}; screenshot out/browser/failed_run_all.png):"
                         f" {errors.all_inner_texts()[-3:]}")


def no_error_outputs(page, lab, stem: str) -> None:
    """No traceback on the page, and none in the saved notebook (jupytext writes the paired .ipynb on save)."""
    texts = page.locator(".jp-NotebookPanel:visible .jp-OutputArea-output").all_inner_texts()
    assert not [t for t in texts if "Traceback" in t or "Error:" in t.split("\n")[0]], texts
    page.keyboard.press("Control+s")
    saved = lab.notebooks / f"{stem}.ipynb"
    deadline = time.monotonic() + 30
    while not saved.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    cells = json.loads(saved.read_text())["cells"]
    errors = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert not errors, errors


@pytest.fixture(scope="module")
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 950})
    opened = context.new_page()
    yield opened
    context.close()


def test_contrastive_notebook_runs_in_jupyterlab(lab, page):
    open_notebook(page, lab, "contrastive_steering.py")
    run_all(page)
    no_error_outputs(page, lab, "contrastive_steering")
    tables = page.locator(".jp-NotebookPanel:visible .jp-RenderedHTMLCommon table")
    headers = [" ".join(t.locator("thead").all_inner_texts()) for t in tables.all()]
    generations = [h for h in headers if "steered" in h and "unsteered" in h]
    assert generations, f"no generations table with steered and unsteered columns: {headers}"
    images = page.locator(".jp-NotebookPanel:visible .jp-RenderedImage img")
    assert images.count() >= 1
    widths = images.evaluate_all("imgs => imgs.map(i => i.naturalWidth)")
    assert max(widths) > 300, widths  # the effect curve, drawn
    table = tables.filter(has_text="unsteered").first
    table.scroll_into_view_if_needed()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / "lab_contrastive_steering.png"
    page.screenshot(path=str(shot))
    assert_not_blank(shot)
    assert (lab.out / "contrastive_steering" / "browser" / "effect_curve.png").exists()


def test_playground_slider_changes_the_steered_text(lab, page):
    open_notebook(page, lab, "playground.py")
    run_all(page)
    no_error_outputs(page, lab, "playground")
    widget = page.locator(".jp-NotebookPanel:visible .steerlab-playground").first
    widget.scroll_into_view_if_needed()
    unsteered = widget.locator(".steerlab-output .steerlab-unsteered").first
    unsteered.wait_for(timeout=120_000)
    reference = unsteered.inner_text()
    assert widget.locator(".steerlab-output .steerlab-steered").count() == 0  # coefficient 0: nothing steered yet
    readout = widget.locator(".steerlab-coefficient .widget-readout")
    readout.click()
    page.keyboard.press("Control+a")
    page.keyboard.type("8")
    page.keyboard.press("Enter")
    steered = widget.locator(".steerlab-output .steerlab-steered").first
    steered.wait_for(timeout=180_000)  # the widget recomputed: a steered column at the slider's new value
    deadline = time.monotonic() + 60
    while "running" in widget.locator(".steerlab-status").inner_text().lower() and time.monotonic() < deadline:
        time.sleep(1)
    assert steered.get_attribute("data-coefficient") == "8"
    after = steered.inner_text()
    assert after and after != reference, (reference, after)
    assert widget.locator(".steerlab-output .steerlab-unsteered").first.inner_text() == reference
    shot = SCREENSHOTS / "lab_playground.png"
    page.screenshot(path=str(shot))
    assert_not_blank(shot)


def test_report_page_lists_the_runs_with_their_figures(lab, page):
    from lib.report import main as report

    output = lab.out / "index.html"
    report(["--out-root", str(lab.out), "--output", str(output)])
    page.goto(output.as_uri())
    rows = page.locator("table tbody tr")
    texts = rows.all_inner_texts()
    assert any("contrastive_steering" in t for t in texts) and any("playground" in t for t in texts), texts
    page.locator("a", has_text="browser").first.click()
    page.wait_for_load_state()
    images = page.locator("img")
    assert images.count() >= 1
    widths = images.evaluate_all("imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
    assert min(widths) > 0, f"an image did not load: {widths}"
    shot = SCREENSHOTS / "report_run.png"
    page.screenshot(path=str(shot), full_page=False)
    assert_not_blank(shot)
    page.goto(output.as_uri())
    shot = SCREENSHOTS / "report_index.png"
    page.screenshot(path=str(shot))
    assert_not_blank(shot)
    assert REPO_ROOT.exists()
