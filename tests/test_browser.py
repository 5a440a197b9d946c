"""End to end in a real browser: JupyterLab headless, Chromium via Playwright, upload a real face, see its label.

Needs Debian's chromium (``make setup`` installs it as root) and the ``playwright`` package; it
never downloads a browser. Skips with a reason where chromium is missing, except under
``GENDER_LIB_REQUIRE_BROWSER=1`` (set by ``.ci/run``), where that is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def _need_browser() -> None:
    if not CHROMIUM.exists():
        message = "Debian's chromium is not installed (apt-get install chromium; `make setup` does it as root)"
        if os.environ.get("GENDER_LIB_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def screenshots(tmp_path) -> Path:
    """Where the screenshots go: ``$GENDER_LIB_SCREENSHOTS`` to keep them and look, else this test's
    temporary folder (removed with it), so a test run writes nothing into the checkout."""
    folder = Path(os.environ.get("GENDER_LIB_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def jupyterlab(tmp_path):
    _need_browser()
    for name in ("05_visualize", "06_predict"):
        shutil.copy(ROOT / "notebooks" / f"{name}.ipynb", tmp_path / f"{name}.ipynb")
    port = _free_port()
    env = {**os.environ, "IPYTHONDIR": os.environ["IPYTHONDIR"], "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter_config")}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            "--allow-root",
            "--IdentityProvider.token=",
            "--ServerApp.password=",
            f"--ServerApp.root_dir={tmp_path}",
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/api", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("JupyterLab did not start within 90 s")
    yield url
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()


@pytest.mark.browser
def test_committed_face_grid_shows_as_an_image_in_jupyterlab(jupyterlab, screenshots):
    """Notebook 05 as committed: its 30-face grid is an <img> a person sees, not a '<Figure ...>' line."""
    from playwright.sync_api import sync_playwright

    screenshot = screenshots / "face_grid.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.goto(f"{jupyterlab}/lab/tree/05_visualize.ipynb")
            image = page.locator(".jp-OutputArea-output img").last
            image.wait_for(state="visible", timeout=90_000)
            image.scroll_into_view_if_needed()
            box = image.bounding_box()
            image.screenshot(path=str(screenshot))
            body = page.locator(".jp-Notebook").inner_text()
        finally:
            browser.close()
    assert box and box["width"] > 400 and box["height"] > 300
    assert "<Figure size" not in body and "<figure:" not in body
    assert screenshot.stat().st_size > 20_000


@pytest.mark.browser
def test_upload_widget_labels_a_real_face_in_jupyterlab(jupyterlab, sample_faces, screenshots):
    from playwright.sync_api import sync_playwright

    face = sorted(sample_faces.glob("4*_F/nm*.jpg"))[0]  # an adult woman from the embedded sample
    screenshot = screenshots / "upload_widget.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.goto(f"{jupyterlab}/lab/tree/06_predict.ipynb")
            page.get_by_text("| Idle").wait_for(timeout=90_000)  # kernel started
            page.locator(".jp-Notebook .jp-Cell").first.click()  # focus the notebook so its Run commands are enabled
            page.get_by_role("menuitem", name="Run", exact=True).click(timeout=60_000)
            page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All( Cells)?$")).click()
            upload = page.locator(".widget-upload")
            upload.wait_for(state="visible", timeout=180_000)
            with page.expect_file_chooser() as chooser:
                upload.click()
            chooser.value.set_files(str(face))
            result = page.locator(".gender-lib-result")
            result.wait_for(state="visible", timeout=120_000)
            text = result.inner_text()
            body = page.locator(".jp-Notebook").inner_text()
            result.scroll_into_view_if_needed()
            page.locator(".gender-lib-result >> xpath=../../..").screenshot(path=str(screenshot))
        except Exception:
            page.screenshot(path=str(screenshot.with_name("failure.png")))  # what the browser showed, for debugging
            raise
        finally:
            browser.close()
    # "female, " cannot be matched by "male, ": the label is checked exactly, with its probability.
    assert text.startswith(f"{face.name}: face 1: female, P(female) 0.") or text.startswith(f"{face.name}: face 1: female, P(female) 1.")
    assert "(threshold " in text and ", P(correct) 0." in text and ", age " in text and ", box " in text
    assert "static view of the notebook cannot run it" not in body  # live, the widget shows, not its static fallback
    assert screenshot.stat().st_size > 10_000
