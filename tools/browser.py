"""Drive the demo page in a real headless browser: upload an image, wait for k results, take a screenshot.

Used by the browser test and by bench/demo_screenshot.py (the README's picture). It runs Debian's
Chromium (apt packages chromium and chromium-driver) through Playwright's client library: Playwright's
own browser download (`playwright install`) is never used.
"""
from __future__ import annotations

import shutil
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    """Debian's Chromium; a clear error when it is missing (the Makefile installs it with apt-get)."""
    path = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if not path:
        raise FileNotFoundError(f"{CHROMIUM} not found: apt-get install -y chromium chromium-driver (`make install` "
                                f"does it when run as root)")
    return path


def search_in_browser(url: str, image: str | Path, k: int, screenshot: str | Path | None = None,
                      timeout_ms: int = 60_000) -> dict:
    """Open the demo at `url`, set k, upload `image`; return the gallery captions and probe text once k show."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(url, timeout=timeout_ms)
            page.wait_for_selector("#query input[type=file]", state="attached", timeout=timeout_ms)
            number = page.locator("#k input[type=number]")
            number.fill(str(k))
            number.press("Enter")
            page.locator("#query input[type=file]").set_input_files(str(image))
            page.wait_for_function(  # k results, every one of them loaded and drawn
                f"[...document.querySelectorAll('#results img')].filter(i => i.complete && i.naturalWidth > 0)"
                f".length === {k}", timeout=timeout_ms)
            captions = [c.strip() for c in page.locator("#results .caption-label").all_inner_texts()]
            probe = page.locator("#probe").inner_text() if page.locator("#probe").count() else ""
            if screenshot:
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
            return {"images": page.locator("#results img").count(), "captions": captions, "probe": probe}
        finally:
            browser.close()
