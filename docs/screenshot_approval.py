"""Take the README's screenshot of the approval form from a running sandbox.

Not part of the product: a documentation helper. Needs the `playwright` package (any
virtualenv; no browser download: it drives the system Chromium) and a sandbox paused
at the approval gate:

    .venv/bin/python -m sandbox            # terminal 1: prints the paused run's URL
    python docs/screenshot_approval.py URL docs/approval-form.png
"""

from __future__ import annotations

import sys

from playwright.sync_api import sync_playwright


def main(url: str, out: str) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url, wait_until="networkidle")
        page.get_by_role("button", name="Resume").first.click()
        page.wait_for_timeout(2500)  # the form renders the markdown description
        page.screenshot(path=out, full_page=False)
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
