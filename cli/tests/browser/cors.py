"""Drives headless Chromium through cors.html (cli/tests/dev.rs runs it with infra/browser.sh's python).

    cors.py ALLOWED_PAGE_URL OTHER_PAGE_URL API_URL

Opens the page from an origin `jobctl dev --cors-origin` allows and has it submit and follow a job, then
the page from an origin it does not allow and has it try to list jobs; prints what both saw as one JSON
document. The test asserts on it. Debian's chromium, launched by path: Playwright's own browser
download is never used.
"""

import json
import os
import sys
import tempfile

from playwright.sync_api import sync_playwright

CHROMIUM = os.environ.get("JOBKIT_CHROMIUM", "/usr/bin/chromium")
# Headless, in a container as root, and quiet: nothing phones home or updates itself mid-test.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def main() -> None:
    allowed_page, other_page, api = sys.argv[1:4]
    console: list[str] = []
    # A fresh profile each run (the persistent context's user data dir): no cached preflight.
    with tempfile.TemporaryDirectory(prefix="jobkit-chromium-") as profile, sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=ARGS
        )
        try:
            page = browser.new_page()
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.goto(allowed_page)
            allowed = page.evaluate("api => submitAndFollow(api)", api)
            other = browser.new_page()
            other.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            other.goto(other_page)
            refused = other.evaluate("api => tryToList(api)", api)
        finally:
            browser.close()
    print(json.dumps({"allowed": allowed, "refused": refused, "console": console}))


if __name__ == "__main__":
    main()
