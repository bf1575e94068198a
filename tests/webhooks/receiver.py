"""A webhook receiver for tests/webhooks.rs and the fault suite.

Every delivery is verified with the reference `standardwebhooks` library from PyPI: an implementation
independent of jobkit's signer. The receiver answers by path:

  /ok             200
  /fail-twice     500 to the first two deliveries of an event id, then 200
  /gone           410
  /slow-once      the first delivery of an event id waits SLOW seconds (past the sender's timeout), then 200
  /throttle-once  429 with Retry-After: 1 to the first delivery of an event id, then 200
  /redirect       302 to /ok on this server (a sender must not follow it)
  /flaky          500 to one delivery in three (by count), else 200

GET /log answers every delivery received so far, as JSON. Usage: receiver.py SECRET [SLOW]; prints
"listening PORT" once ready. Binds 127.0.0.1 only.
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook

SECRET = sys.argv[1]
SLOW = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
WEBHOOK = Webhook(SECRET)
LOCK = threading.Lock()
LOG = []
SEEN = {}  # (path, event id) -> deliveries so far
COUNT = [0]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, headers=None, body=b""):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path != "/log":
            return self.answer(404)
        with LOCK:
            body = json.dumps(LOG).encode()
        self.answer(200, {"Content-Type": "application/json"}, body)

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        path = self.path.split("?")[0]
        try:
            WEBHOOK.verify(raw, headers)
            verified, error = True, None
        except Exception as e:  # noqa: BLE001 - every failure is recorded for the test to assert
            verified, error = False, repr(e)
        event_id = headers.get("webhook-id", "")
        with LOCK:
            n = SEEN.get((path, event_id), 0) + 1
            SEEN[(path, event_id)] = n
            COUNT[0] += 1
            count = COUNT[0]
        status, extra, delay = 200, {}, 0.0
        if path == "/fail-twice" and n <= 2:
            status = 500
        elif path == "/gone":
            status = 410
        elif path == "/slow-once" and n == 1:
            delay = SLOW
        elif path == "/throttle-once" and n == 1:
            status, extra = 429, {"Retry-After": "1"}
        elif path == "/redirect":
            status, extra = 302, {"Location": "http://127.0.0.1:%d/ok" % self.server.server_port}
        elif path == "/flaky" and count % 3 == 0:
            status = 500
        entry = {
            "path": path,
            "id": event_id,
            "timestamp": headers.get("webhook-timestamp"),
            "signature": headers.get("webhook-signature"),
            "content_type": headers.get("content-type"),
            "verified": verified,
            "error": error,
            "answered": status,
            "received_at": time.time(),
            "body": raw.decode("utf-8", "replace"),
        }
        with LOCK:
            LOG.append(entry)
        if delay:
            time.sleep(delay)
        try:
            self.answer(status, extra)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the sender gave up waiting: that is the point of /slow-once


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print("listening %d" % server.server_port, flush=True)
server.serve_forever()
