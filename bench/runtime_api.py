"""A loopback Lambda Runtime API for one function process, with its measurements.

`Function(name, argv, env).start()` spawns the process with AWS_LAMBDA_RUNTIME_API pointing here;
`invoke(event)` hands one event to the next `/next` poll and waits for its response or error. Measured:
init (spawn -> first /next poll), each invocation's latency (event handed out -> response posted) and
CPU (the process's own accounting, /proc/<pid>/task/*/schedstat, ns), and peak RSS (VmHWM) at stop.
"""

import json
import os
import queue
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PREFIX = "/2018-06-01/runtime"


def cpu_ns(pid):
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                pass
    except FileNotFoundError:
        pass
    return total


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


@dataclass
class Result:
    response: object
    error: bool
    latency_ms: float
    cpu_ms: float


class _Invocation:
    def __init__(self, event, timeout_s):
        self.id = str(uuid.uuid4())
        self.body = json.dumps(event).encode()
        self.timeout_s = timeout_s
        self.done = threading.Event()
        self.t0 = self.cpu0 = 0
        self.result = None


class Function:
    def __init__(self, name, argv, env, log_path, cwd=None, timeout_s=900):
        self.name, self.argv, self.env, self.log_path, self.timeout_s = name, argv, env, log_path, timeout_s
        self.cwd = cwd
        self.pending = queue.Queue()
        self.active = {}
        self.first_poll = threading.Event()
        self.init_ms = None
        self.init_error = None
        self.proc = None
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def start(self):
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{self.server.server_port}",
            "AWS_LAMBDA_FUNCTION_NAME": self.name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
            "AWS_LAMBDA_LOG_FORMAT": "JSON",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": "bench",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_SESSION_TOKEN": "test",
            "LAMBDA_TASK_ROOT": self.cwd or os.getcwd(),
            "TZ": ":UTC",
            **self.env,
        }
        self.log = open(self.log_path, "ab")
        self.t_spawn = time.perf_counter()
        self.proc = subprocess.Popen(self.argv, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.cwd)
        return self

    def wait_ready(self, timeout_s=60):
        deadline = time.monotonic() + timeout_s
        while not self.first_poll.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline or self.init_error:
                raise RuntimeError(f"{self.name} did not reach its first /next poll "
                                   f"(exit {self.proc.returncode}, init error {self.init_error}); see {self.log_path}")
        return self.init_ms

    def invoke(self, event):
        inv = _Invocation(event, self.timeout_s)
        self.pending.put(inv)
        while not inv.done.wait(0.5):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}) during an invocation; see {self.log_path}")
        return inv.result

    def stop(self):
        """Stops the process; returns its peak RSS in KiB."""
        rss = peak_rss_kib(self.proc.pid) if self.proc.poll() is None else 0
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.server.shutdown()
        self.server.server_close()
        self.log.close()
        return rss

    def _finish(self, inv_id, body, error):
        t1 = time.perf_counter()
        inv = self.active.pop(inv_id, None)
        if inv is None:
            return False
        cpu1 = cpu_ns(self.proc.pid)
        try:
            response = json.loads(body) if body else None
        except ValueError:
            response = body.decode(errors="replace")
        inv.result = Result(response, error, (t1 - inv.t0) * 1e3, (cpu1 - inv.cpu0) / 1e6)
        inv.done.set()
        return True

    def _handler(self):
        fn = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def send(self, status, body=b"", headers=()):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path != f"{PREFIX}/invocation/next":
                    return self.send(404, b'{"errorType":"NotFound"}')
                if not fn.first_poll.is_set():
                    fn.init_ms = (time.perf_counter() - fn.t_spawn) * 1e3
                    fn.first_poll.set()
                inv = fn.pending.get()
                deadline_ms = int(time.time() * 1000 + inv.timeout_s * 1000)
                fn.active[inv.id] = inv
                inv.cpu0 = cpu_ns(fn.proc.pid)
                inv.t0 = time.perf_counter()
                self.send(200, inv.body, [
                    ("Lambda-Runtime-Aws-Request-Id", inv.id),
                    ("Lambda-Runtime-Deadline-Ms", str(deadline_ms)),
                    ("Lambda-Runtime-Invoked-Function-Arn",
                     f"arn:aws:lambda:us-east-1:000000000000:function:{fn.name}"),
                    ("Lambda-Runtime-Trace-Id", f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Sampled=0"),
                ])

            def read_body(self):
                if "chunked" not in self.headers.get("Transfer-Encoding", ""):
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = b""
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    body += self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()
                return body

            def do_POST(self):
                body = self.read_body()
                parts = self.path[len(PREFIX):].strip("/").split("/")
                if parts == ["init", "error"]:
                    fn.init_error = body.decode(errors="replace") or "init error"
                    return self.send(202, b'{"status":"OK"}')
                if len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
                    if fn._finish(parts[1], body, parts[2] == "error"):
                        return self.send(202, b'{"status":"OK"}')
                    return self.send(400, b'{"errorType":"InvalidRequestID"}')
                self.send(404, b'{"errorType":"NotFound"}')

        return Handler
