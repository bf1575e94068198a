"""Screenshots of the console for the README and docs/console/ (light and dark, wide and narrow).

    "$(bash infra/browser.sh python)" tools/console_screenshots.py [path/to/jobctl]

Starts `jobctl dev` (default: target/debug/jobctl; build it first with `cargo build -p jobctl`) on a free
port, submits a few jobs so every page has something to show, and writes docs/console/*.png with
Debian's chromium (as the browser tests do). Re-run it after changing the console's look.
"""

import json
import os
import http.server
import re
import threading
import subprocess
import sys
import time
import urllib.request

from playwright.sync_api import sync_playwright

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "docs", "console")
CHROMIUM = os.environ.get("JOBKIT_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def post(base, path, body):
    req = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req) as resp:
        return json.load(resp)


class Model(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if "outage" in json.dumps(body["messages"]):
            self.send_response(503)
            self.end_headers()
            return
        answered = any(m["role"] == "tool" for m in body["messages"])
        message = (
            {"role": "assistant", "content": "6 times 7 is 42."}
            if answered
            else {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": '{"expression":"6*7"}'}}]}
        )
        out = json.dumps({"choices": [{"message": message}], "usage": {"prompt_tokens": 31, "completion_tokens": 7}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def stub_model():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Model)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


def main() -> None:
    jobctl = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "debug", "jobctl")
    # A stub model (one calculator call, then the answer; a 503 for messages about an outage), and one
    # attempt per job: the outage's job dies at once and the operators page has a dead letter to show.
    model = stub_model()
    dev = subprocess.Popen(
        [jobctl, "dev", "--addr", "127.0.0.1:0", "--model-url", model],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RUST_LOG": "warn", "JOBKIT_MAX_ATTEMPTS": "1"},
    )
    try:
        base = None
        for line in dev.stderr:
            m = re.search(r"API on (http://\S+)", line)
            if m:
                base = m.group(1)
                break
        assert base, "jobctl dev printed no banner"
        for body in [
            {"kind": "echo", "input": {"prompt": "summarise the quarterly report", "lang": "en"}},
            {"kind": "sleep", "input": {"ms": 1200}},
            {"kind": "echo", "input": {"note": "<script>alert('shown as text')</script>"}},
            {"kind": "agent", "input": {"agent": "demo", "message": "an outage: the model is down"}},
        ]:
            post(base, "/jobs", body)
        agent = post(base, "/jobs", {"kind": "agent", "input": {"agent": "demo", "message": "what is 6 times 7?"}})["job_id"]
        cancelled = post(base, "/jobs", {"kind": "sleep", "input": {"ms": 10000}})["job_id"]
        req = urllib.request.Request(f"{base}/jobs/{cancelled}", method="DELETE")
        urllib.request.urlopen(req).read()
        os.makedirs(OUT, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            for scheme in ["light", "dark"]:
                # A job that runs (at most 10 s) while its pages are taken.
                running = post(base, "/jobs", {"kind": "sleep", "input": {"ms": 10000}})["job_id"]
                page = browser.new_page(viewport={"width": 1180, "height": 720}, color_scheme=scheme)
                page.goto(f"{base}/")
                page.wait_for_selector(f"tr[data-job='{running}'] .s-running")
                page.wait_for_function("() => Number(document.querySelector('tbody [role=progressbar]')?.getAttribute('aria-valuenow')) > 0")
                page.screenshot(path=f"{OUT}/jobs-{scheme}.png")
                page.goto(f"{base}/#/jobs/{running}")
                page.wait_for_selector("#progress-text:not(:empty)")
                page.screenshot(path=f"{OUT}/job-{scheme}.png", full_page=True)
                page.goto(f"{base}/#/submit?kind=sleep")
                page.wait_for_selector("#f-ms")
                page.screenshot(path=f"{OUT}/submit-{scheme}.png")
                page.goto(f"{base}/#/ops")
                page.wait_for_selector("tr[data-job] button.redrive")
                page.wait_for_selector("svg.chart")
                page.screenshot(path=f"{OUT}/ops-{scheme}.png", full_page=True)
                page.close()
            for scheme in ["light", "dark"]:
                page = browser.new_page(viewport={"width": 1180, "height": 720}, color_scheme=scheme)
                page.goto(f"{base}/#/jobs/{agent}")
                page.wait_for_selector("li[data-step]")
                page.locator("li[data-step] details").first.evaluate("d => d.open = true")
                page.screenshot(path=f"{OUT}/agent-{scheme}.png", full_page=True)
                page.close()
            narrow = browser.new_page(viewport={"width": 380, "height": 720}, color_scheme="dark")
            narrow.goto(f"{base}/")
            narrow.wait_for_selector("tbody tr")
            narrow.screenshot(path=f"{OUT}/jobs-narrow-dark.png")
            browser.close()
    finally:
        dev.kill()
        dev.wait()
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
