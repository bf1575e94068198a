"""Drives the console of `jobctl dev` in headless Chromium (cli/tests/dev/console.rs runs it with
infra/browser.sh's python).

    console.py SCENARIO BASE_URL [ARG…]

Runs one scenario and prints what the page showed as one JSON document, with every console message and
uncaught error of the page (`console`, `errors`); the Rust test asserts on it. Debian's chromium, launched
by path (as cors.py does): Playwright's own browser download is never used.
"""

import json
import os
import sys
import tempfile
import time
import urllib.request

from playwright.sync_api import sync_playwright

CHROMIUM = os.environ.get("JOBKIT_CHROMIUM", "/usr/bin/chromium")
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
# Long enough for a slow, shared machine; every wait polls the page (never a fixed sleep).
TIMEOUT_MS = 30_000


def submit(base, kind, job_input):
    """Submits over the API, as another client would (the page must notice by itself)."""
    req = urllib.request.Request(
        f"{base}/jobs",
        data=json.dumps({"kind": kind, "input": job_input}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req) as resp:
        return json.load(resp)["job_id"]


def status_of(page):
    return page.locator("h1 .badge").inner_text()


def submit_from_the_page(page, base, out):
    """Lists jobs, submits an `echo` from the form, sees it complete live, then back on the list."""
    resp = page.goto(f"{base}/")
    out["csp"] = resp.headers.get("content-security-policy")
    out["content_type"] = resp.headers.get("content-type")
    page.wait_for_selector("#live:not(:empty)")
    page.click("nav >> text=Submit")
    page.wait_for_selector("#submit-kind option[value=echo]", state="attached")
    page.select_option("#submit-kind", "echo")
    page.fill("#raw-input", '{"hello": "console"}')
    page.click("#submit")
    page.wait_for_url("**/#/jobs/*")
    out["job_id"] = page.url.rsplit("/", 1)[1]
    page.wait_for_selector("h1 .s-completed")
    out["status"] = status_of(page)
    out["result"] = page.locator("#result").inner_text()
    # Another client submits: the list shows it without a reload.
    page.click("nav >> text=Jobs")
    page.wait_for_selector(f"tr[data-job='{out['job_id']}']")
    other = submit(base, "echo", {"from": "elsewhere"})
    page.wait_for_selector(f"tr[data-job='{other}'] .s-completed")
    out["rows"] = page.locator("tbody tr").count()
    out["first_row"] = page.locator("tbody tr").first.get_attribute("data-job")
    out["other"] = other
    # A form built from the kind's schema: sleep's `ms` is a number field.
    page.goto(f"{base}/#/submit?kind=sleep")
    page.wait_for_selector("#f-ms")
    page.fill("#f-ms", "10")
    page.click("#submit")
    page.wait_for_selector("h1 .s-completed")
    out["sleep_input"] = page.locator("#input").inner_text()
    # An error from the API is shown as it came.
    page.goto(f"{base}/#/submit?kind=sleep")
    page.wait_for_selector("#f-ms")
    page.check("#raw-toggle")
    page.fill("#raw-input", '{"ms": "soon"}')
    page.click("#submit")
    out["submit_error"] = page.locator(".error").inner_text()
    # Filters: status and kind, both by the API (a kind's jobs past the first page are found too).
    page.goto(f"{base}/")
    page.wait_for_selector("tbody tr")
    listed = []
    page.on("request", lambda r: listed.append(r.url) if "/jobs?" in r.url else None)
    page.select_option("#status", "completed")
    page.select_option("#kind", "sleep")
    page.wait_for_function(
        "() => [...document.querySelectorAll('tbody tr')].every(r => r.cells[1].textContent === 'sleep')"
    )
    out["filtered"] = page.locator("tbody tr td:nth-child(2)").all_inner_texts()
    out["filter_url"] = page.url
    out["kind_asked"] = any("kind=sleep" in u and "status=completed" in u for u in listed)


def follow_and_cancel_by_keyboard(page, base, out):
    """A running sleep: from the list with the keyboard (j, Enter), its progress moves live, then
    Tab to Cancel and Enter: the job ends cancelled on the page."""
    job = submit(base, "sleep", {"ms": 10000})  # the most sleep takes
    page.goto(f"{base}/")
    page.wait_for_selector(f"tr[data-job='{job}'] .s-running")
    page.keyboard.press("j")
    out["focused_row"] = page.evaluate("document.activeElement.textContent")
    page.keyboard.press("Enter")
    page.wait_for_selector("h1 .s-running")
    bar = page.locator("h1 ~ div [role=progressbar]")
    first = int(bar.get_attribute("aria-valuenow"))
    page.wait_for_function(
        "n => Number(document.querySelector('[role=progressbar]').getAttribute('aria-valuenow')) > n",
        arg=first,
    )
    out["progress"] = [first, int(bar.get_attribute("aria-valuenow"))]
    out["progress_text"] = page.locator("#progress-text").inner_text()
    # Focus is on the heading after navigation; the next stop is Cancel.
    for _ in range(5):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "cancel":
            break
    out["focused_action"] = page.evaluate("document.activeElement.id")
    page.keyboard.press("Enter")
    page.wait_for_selector("h1 .s-cancelled")
    out["status"] = status_of(page)
    out["job_id"] = job


def markup_in_job_data_is_text(page, base, out):
    """A job whose input holds markup and script shows it as text; nothing of it runs or renders."""
    evil = {
        "html": "<script>window.__pwned = 1</script>",
        "img": '<img src=x onerror="window.__pwned = 2">',
        "<b>key</b>": "</pre><svg onload=alert(1)>",
    }
    job = submit(base, "echo", evil)
    page.goto(f"{base}/#/jobs/{job}")
    page.wait_for_selector("h1 .s-completed")
    out["input_text"] = page.locator("#input").inner_text()
    out["result_text"] = page.locator("#result").inner_text()
    out["pwned"] = page.evaluate("window.__pwned ?? null")
    out["injected_elements"] = page.evaluate(
        "document.querySelectorAll('main script, main img, main svg:not(.chart), main b').length"
    )
    out["job_id"] = job


def get_json(base, path):
    with urllib.request.urlopen(f"{base}{path}") as resp:
        return json.load(resp)


def redrive_from_the_dlq_page(page, base, out):
    """An agent job whose model is unreachable dies on its only attempt (the test's `jobctl dev` says
    so); the operators page lists it with its last error and redrives it after a confirmation."""
    job = submit(base, "agent", {"agent": "demo", "message": "hello"})
    out["job_id"] = job
    page.goto(f"{base}/#/ops")
    row = page.locator(f"tr[data-job='{job}']")
    row.wait_for()
    out["row_text"] = row.inner_text()
    out["queues"] = page.locator("[data-queue]").count()
    before = get_json(base, f"/jobs/{job}")["updated_at"]
    row.locator("button.redrive").click()
    page.locator("#confirm-yes").click()
    page.wait_for_selector("[role=status]")
    out["redrive_message"] = page.locator("[role=status]").inner_text()
    deadline = time.monotonic() + 20
    while get_json(base, f"/jobs/{job}")["updated_at"] == before:
        assert time.monotonic() < deadline, "the redriven job never changed"
        time.sleep(0.1)
    out["requeued"] = True


def agent_timeline(page, base, out):
    """An agent job (on the test's stub model) completes; its page shows the model turns and the tool
    call as steps, with the call's input and the token usage."""
    job = submit(base, "agent", {"agent": "demo", "message": "what is 6 times 7?"})
    page.goto(f"{base}/#/jobs/{job}")
    page.wait_for_selector("h1 .s-completed")
    page.wait_for_selector("li[data-step]")
    steps = page.locator("li[data-step]")
    out["steps"] = [steps.nth(i).get_attribute("data-step") for i in range(steps.count())]
    # text_content: folded (closed) JSON counts too.
    out["timeline"] = page.locator("ol.timeline").text_content()


def parked_for_approval(page, base):
    """Submits a `demo` agent job (the test's stub model asks for `send_note`), opens its page and waits
    there for the approval waitpoint; the waitpoint's section. A marker on the window tells later that
    the page was never reloaded."""
    job = submit(base, "agent", {"agent": "demo", "message": "send me a note"})
    page.goto(f"{base}/#/jobs/{job}")
    section = page.locator("section[aria-label=Waitpoint]")
    section.wait_for()
    page.evaluate("window.__same_page = true")
    return job, section


def approve_and_reject_a_tool_call(page, base, out):
    """An agent's `send_note` call parks for approval: its page shows the waitpoint with the tool and its
    input; Approve resumes it, and the page shows it completed with the note, live. A second job:
    Reject with a reason; it completes, and the timeline and result show the tool's error with it."""
    job, section = parked_for_approval(page, base)
    out["approved_job"] = job
    out["waitpoint_status"] = status_of(page)
    # text_content: folded (closed) JSON counts too.
    out["waitpoint"] = section.text_content()
    page.click("#approve")
    page.wait_for_selector("h1 .s-completed")
    out["approved_status"] = status_of(page)
    out["approved_result"] = page.locator("#result").text_content()
    out["approved_live"] = page.evaluate("window.__same_page ?? false")
    out["waitpoint_gone"] = page.locator("section[aria-label=Waitpoint]").count() == 0

    job, section = parked_for_approval(page, base)
    out["rejected_job"] = job
    page.fill("#reason", "not today, thanks")
    page.click("#reject")
    page.wait_for_selector("h1 .s-completed")
    out["rejected_status"] = status_of(page)
    out["rejected_result"] = page.locator("#result").text_content()
    # The steps are read again once the job is done; the tool call's step holds the refusal.
    page.wait_for_selector("li[data-step='tool-1-0']")
    out["rejected_timeline"] = page.locator("ol.timeline").text_content()
    out["rejected_live"] = page.evaluate("window.__same_page ?? false")


def usage_after_an_agent_job(page, base, out):
    """An agent job (on the test's stub model) completes; its page shows its tokens by model, and its
    link opens today's usage: the tokens by model, the daily budget and what is left of it."""
    job = submit(base, "agent", {"agent": "demo", "message": "what is 6 times 7?"})
    page.goto(f"{base}/#/jobs/{job}")
    page.wait_for_selector("h1 .s-completed")
    out["job_tokens"] = page.locator("#job-tokens").text_content()
    page.click("#job-tokens a")
    row = page.locator("#usage-models tr[data-model]")
    row.first.wait_for()
    out["usage_url"] = page.url
    out["models"] = [row.nth(i).text_content() for i in range(row.count())]
    out["model"] = row.first.get_attribute("data-model")
    out["total"] = page.locator("#usage-total .big").text_content()
    out["limit"] = page.locator("#usage-limit .big").text_content()
    out["remaining"] = page.locator("#usage-remaining .big").text_content()
    out["nav"] = page.locator("[data-nav=usage][aria-current=page]").count()


SCENARIOS = {
    "usage": usage_after_an_agent_job,
    "approval": approve_and_reject_a_tool_call,
    "agent": agent_timeline,
    "dlq": redrive_from_the_dlq_page,
    "submit": submit_from_the_page,
    "cancel": follow_and_cancel_by_keyboard,
    "markup": markup_in_job_data_is_text,
}


def main() -> None:
    scenario, base = sys.argv[1:3]
    out = {"console": [], "errors": []}
    with tempfile.TemporaryDirectory(prefix="jobkit-chromium-") as profile, sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=ARGS
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.on("console", lambda m: out["console"].append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: out["errors"].append(str(e)))
            SCENARIOS[scenario](page, base, out)
        except Exception as e:  # the test prints it with what was seen so far
            out["failed"] = f"{type(e).__name__}: {e}"
        finally:
            browser.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
