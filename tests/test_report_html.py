"""report.html: self-contained (figures as data: URIs, no script, nothing fetched), escaped, and
readable on a laptop and a phone, rendered in Debian's headless Chromium."""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest

from secure_ai_mnist import report

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_html_escapes_text_and_embeds_only_local_figures(tmp_path):
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    (tmp_path / "images").mkdir()
    fig.savefig(tmp_path / "images" / "a.png")
    plt.close(fig)
    (tmp_path.parent / "outside.png").write_bytes((tmp_path / "images" / "a.png").read_bytes())
    text = ("# T\n\n| a | b |\n|---|---|\n| <script>alert(1)</script> | x & y |\n\n![fig](images/a.png)\n\n"
            "![escape](../outside.png) <img src=x onerror=alert(1)>\n")
    page = report.build_html(text, tmp_path)
    assert "<script" not in page.lower() and "<img src=x" not in page  # raw HTML arrives as text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "x &amp; y" in page
    assert page.count('src="data:image/png;base64,') == 1, "one local figure embedded, the outside one refused"
    assert "missing figure: escape" in page and "<table>" in page


def chromium_or_skip() -> str:
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("REQUIRE_CHROMIUM"):
            pytest.fail("REQUIRE_CHROMIUM is set but Debian's chromium is not installed")
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    return path


@pytest.mark.parametrize("viewport", [{"width": 1366, "height": 900}, {"width": 390, "height": 844}],
                         ids=["laptop", "phone"])
def test_report_html_renders_in_headless_chromium(quick_run, viewport):
    from matplotlib import image as mpimg
    from playwright.sync_api import sync_playwright

    page_file = quick_run["out"] / report.HTML_FILENAME
    assert page_file.is_file()
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium_or_skip(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=viewport)
            requested = []
            page.on("request", lambda request: requested.append(request.url))
            page.goto(page_file.as_uri(), wait_until="load")
            widths = page.evaluate("Array.from(document.images, i => i.complete ? i.naturalWidth : 0)")
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            scripts = page.evaluate("document.scripts.length")
            shot = page.screenshot(full_page=False)
        finally:
            browser.close()
    assert len(widths) >= 8 and all(w > 0 for w in widths), widths
    assert all(url.startswith(("file:", "data:")) for url in requested), requested
    assert scripts == 0
    assert overflow <= 1, "the page must not scroll sideways (wide tables scroll inside themselves)"
    pixels = mpimg.imread(io.BytesIO(shot), format="png")
    assert pixels.shape[1] == viewport["width"] and float(np.std(pixels[..., :3])) > 0.05, "blank screenshot"
