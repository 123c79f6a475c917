"""The report page as a reader sees it: rendered by headless Chromium, every image loads and the numbers in
the DOM are summary.json's. Chromium is required under CI (``CI=true``: missing fails; locally: skipped)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from curation.report import build_report
from tests.curation.test_report import Cells, dataset_cell, synthetic_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")  # before the session's manifest fixtures: a missing browser fails first
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found:
        return found
    message = "chromium not found (apt-get install chromium)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def render(chromium: str, page: Path, *extra: str) -> str:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--virtual-time-budget=5000"]
    done = subprocess.run([chromium, *flags, *extra, page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120, cwd=page.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def images_state(dom: str) -> str:
    """What the page's own check wrote on <body> once every image had loaded or failed."""
    found = re.search(r'<body[^>]*\sdata-images-loaded="([^"]*)"', dom)
    return html.unescape(found.group(1)) if found else "script did not run"


@pytest.fixture(scope="module")
def run(tiny_manifest, tmp_path_factory) -> Path:
    return synthetic_run(tiny_manifest, tmp_path_factory.mktemp("page-run"))


def test_page_renders_with_its_images_and_numbers(chromium, run, tmp_path):
    page = build_report(run)
    dom = render(chromium, page, "--dump-dom")
    assert images_state(dom) == "all"
    parser = Cells()
    parser.feed(dom)
    summary = json.loads((run / "summary.json").read_text())
    for d in summary["datasets"]:
        for key in ("hours_in", "hours_kept", "kept_pct_hours", "clips", "clips_kept"):
            assert dataset_cell(parser.cells, d["dataset"], key) == pytest.approx(d[key], abs=0.006)
    reasons = {k[0][1]: v for k, v in parser.cells.items() if k[0][0] == "data-reason" and k[1] == "clips"}
    assert reasons == {k: float(v) for k, v in summary["reject_reasons"].items()}

    screenshot = tmp_path / "page.png"
    render(chromium, page, f"--screenshot={screenshot}", "--window-size=1200,2400")
    assert screenshot.stat().st_size > 20_000  # tables and figures, not a blank page


def test_a_broken_image_is_reported(chromium, run, tmp_path):
    """The check can fail: the same page with one figure missing says which."""
    copy = tmp_path / "report"
    shutil.copytree(build_report(run).parent, copy)
    (copy / "funnel.png").unlink()
    assert images_state(render(chromium, copy / "index.html", "--dump-dom")) == "broken: funnel.png"


def test_curate_publishes_the_report(megactor, prefect_api, videos_dir, tmp_path):
    """A curate run ends with the page beside its summary and a Markdown artifact linking it."""
    import urllib.request

    source = tmp_path / "input"
    source.mkdir()
    (source / "clip.mp4").symlink_to(videos_dir / "mimictalk_German_20s.mp4")
    output = tmp_path / "run"
    megactor("curate", "--input", str(source), "--output", str(output), "--executor", "local", "--no-sync",
             "--face-res-min", "150")
    page = output / "report" / "index.html"
    summary = json.loads((output / "summary.json").read_text())
    parser = Cells()
    parser.feed(page.read_text())
    (dataset,) = summary["datasets"]
    hours_in = dataset_cell(parser.cells, dataset["dataset"], "hours_in")
    assert hours_in == pytest.approx(dataset["hours_in"], abs=1e-4)
    # the server's REST API, read directly: a Prefect client in this process keeps the settings it first read
    request = urllib.request.Request(f"{prefect_api[0]}/artifacts/filter", method="POST",
                                     data=json.dumps({"artifacts": {"key": {"any_": ["curation-report"]}}}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        artifacts = json.loads(response.read())
    assert any(page.resolve().as_uri() in (a.get("data") or "") for a in artifacts)
