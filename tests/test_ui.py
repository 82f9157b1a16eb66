"""The web app as a user meets it: ``ipfacediff ui`` started on a free localhost port and driven in a
real headless Chromium (Debian's, through Playwright; no browser download): upload the sample clip,
preview the keyframes, render, download the video and count its frames; then a new prompt previews
with the detection and encoding reused. Screenshots of each step are kept (``IPFACEDIFF_UI_SHOTS``
names a folder to copy them to, e.g. docs/images) and checked non-blank. In CI
(``IPFACEDIFF_REQUIRE_BROWSER=1``) a missing browser or Playwright fails the test."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_models


def _need(what: str, ok: bool) -> None:
    if ok:
        return
    if os.environ.get("IPFACEDIFF_REQUIRE_BROWSER"):
        pytest.fail(
            f"{what} is missing (make install installs ipfacediff[ui] and Playwright; CI installs Debian's chromium)"
        )
    pytest.skip(f"{what} is missing")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app_url(tmp_path):
    port = _free_port()
    env = {
        **os.environ,
        "IPFACEDIFF_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(tmp_path / "gradio"),
    }
    log = open(tmp_path / "ui.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ipfacediff", "ui", "--port", str(port), "--max-frames", "120"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(240):
            try:
                if urllib.request.urlopen(url, timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
            if proc.poll() is not None:
                pytest.fail(f"ipfacediff ui exited: {(tmp_path / 'ui.log').read_text()[-2000:]}")
        else:
            pytest.fail("ipfacediff ui did not answer in 120 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def _shot(page, folder: Path, name: str) -> Path:
    import cv2

    path = folder / f"ui-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    img = cv2.imread(str(path))
    assert img is not None and img.std() > 10 and len(np.unique(img.reshape(-1, 3)[::97], axis=0)) > 50, (
        f"{path} looks blank"
    )
    return path


@needs_models
def test_app_previews_renders_and_downloads_in_a_real_browser(app_url, sample_clip, tmp_path):
    _need("Gradio (ipfacediff[ui])", _importable("gradio"))
    _need("Playwright", _importable("playwright"))
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    _need("Debian's chromium", chromium is not None)
    import cv2
    from playwright.sync_api import sync_playwright

    from ipfacediff.runtime.video import open_frames, probe

    shots = tmp_path / "shots"
    shots.mkdir()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page.goto(app_url)
        page.wait_for_selector("#preview", timeout=60_000)
        page.click("#preview")  # a bad request (no clip yet): its one-line message in the page
        try:
            page.get_by_text("no clip: upload a video").first.wait_for(timeout=60_000)
        except Exception:
            raise AssertionError(
                f"no one-line error in the page: {page.locator('body').inner_text()[-1500:]}"
            ) from None
        _shot(page, shots, "0-error")
        page.locator(".toast-close").first.click()  # dismissed, so the later screenshots show no stale notice
        page.get_by_text("no clip: upload a video").first.wait_for(state="hidden", timeout=10_000)
        page.locator("#clip input[type=file]").set_input_files(str(sample_clip))
        page.wait_for_selector("#clip >> text=astronaut.mp4", timeout=30_000)
        page.locator("#backbone input").fill("tiny")
        page.keyboard.press("Enter")
        page.wait_for_selector("#backbone-note >> text=Random weights", timeout=30_000)
        page.locator("#steps input").fill("3")
        page.locator("#max-frames input").fill("16")
        _shot(page, shots, "1-upload")

        page.click("#preview")  # detection, keyframes, keyframe edit only
        page.wait_for_selector("#preview-image img", timeout=300_000)
        page.wait_for_selector("#status >> text=Keyframes [0, 8] of 16 frames", timeout=60_000)
        _shot(page, shots, "2-preview")
        said = [page.locator("#status").inner_text().splitlines()[0]]

        page.click("#render")  # the rest, reusing the preview's stages
        page.wait_for_selector("#status >> text=16/16 frames edited", timeout=300_000)
        status = page.locator("#status").inner_text()
        assert "reused from the cache: detect, encode, keyframe_edit" in status, status
        assert "self-check: leave-one-out PSNR keyframe 0 from [8]" in status, status  # as the CLI says it
        _shot(page, shots, "3-render")
        said.append(status.splitlines()[0])
        link = page.locator('#result-files a[download="edited.mp4"]')
        with page.expect_download(timeout=60_000) as dl:
            link.click()
        video = tmp_path / "downloaded.mp4"
        dl.value.save_as(str(video))
        assert probe(video).n_frames == 16

        page.locator("#prompt textarea, #prompt input").first.fill(
            "blonde hair"
        )  # a new prompt: nothing detected or encoded again
        page.click("#preview")
        page.wait_for_function(
            "() => { const t = document.querySelector('#status').innerText;"
            " return t.startsWith('Keyframes') && t.includes('Reused from the cache: detect, encode'); }",
            timeout=300_000,
        )
        _shot(page, shots, "4-new-prompt")
        said.append(page.locator("#status").inner_text().splitlines()[0])

        # the Propagate tab's round trip: pick a frame, download it, edit it "elsewhere", drop it back
        page.get_by_role("tab", name="Propagate").click()
        page.locator("#p-clip input[type=file]").set_input_files(str(sample_clip))
        page.wait_for_selector("#p-frame-image img", timeout=60_000)
        slider = page.locator("#p-frame input[type=number]")
        slider.fill("8")
        slider.press("Enter")
        page.click("#p-add")
        page.wait_for_function("() => document.querySelector('#p-at textarea, #p-at input').value === '0, 8'")
        page.locator("#p-at textarea, #p-at input").first.fill("8")  # only frame 8 after all
        page.click("#p-export")
        link = page.locator('#p-frames a[download="00008.png"]')
        link.wait_for(timeout=60_000)
        _shot(page, shots, "5-frames")
        with page.expect_download(timeout=60_000) as dl:
            link.click()
        key = tmp_path / "keys" / "00008.png"
        key.parent.mkdir()
        dl.value.save_as(str(key))
        frame = cv2.cvtColor(cv2.imread(str(key)), cv2.COLOR_BGR2RGB)
        with open_frames(sample_clip) as src:
            assert np.array_equal(frame, src.get([8])[0])  # the full-size frame, as propagate reads it
        frame[100:120, 90:170] = (20, 20, 20)  # the edit made elsewhere: a dark band across the mouth
        cv2.imwrite(str(key), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        page.locator("#p-keys input[type=file]").set_input_files(str(key))
        page.wait_for_selector("#p-keys >> text=00008", timeout=30_000)
        page.click("#propagate")
        page.wait_for_selector("#p-status >> text=1 keyframes ([8]) carried to 24 frames", timeout=300_000)
        assert "one more edited keyframe would help most at frame" in page.locator("#p-status").inner_text()
        _shot(page, shots, "6-propagate")
        said.append(page.locator("#p-status").inner_text().splitlines()[0])
        result = page.locator('#p-file a[download="propagated.mp4"]')
        with page.expect_download(timeout=60_000) as dl:
            result.click()
        carried = tmp_path / "propagated.mp4"
        dl.value.save_as(str(carried))

        def darkest(f):  # the darkest band-sized (70 x 16) window over the lower face
            return cv2.blur(f.astype(np.float32).mean(-1), (70, 16))[80:160, 60:200].min()

        with open_frames(carried) as out, open_frames(sample_clip) as src:
            assert len(out) == 24
            near = [8, 9, 10, 11, 12]  # measured: 19-20 grey levels carried, 43-48 in the source
            got, was = [darkest(f) for f in out.get(near)], [darkest(f) for f in src.get(near)]
        assert all(g < w - 15 for g, w in zip(got, was)), (got, was)  # the band, on its frame and carried on
        (shots / "ui-status.txt").write_text("\n".join(said) + "\n")  # what the page said, timings included

        browser.close()
    keep = os.environ.get("IPFACEDIFF_UI_SHOTS")
    if keep:
        for f in shots.iterdir():
            shutil.copy(f, Path(keep) / f.name)


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_ui_without_gradio_is_one_line_exit_2(monkeypatch):
    """Without the extra the command says how to get it (one line, exit 2)."""
    from conftest import run_main

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio raises ImportError
    r = run_main("ui", "--port", "1")
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "pip install 'ipfacediff[ui]'" in lines[0], r.stderr
