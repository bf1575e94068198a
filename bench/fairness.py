"""Tenant fairness benchmark (`bash bench/run.sh --fairness`): owner A submits a backlog, then owner B a few
jobs; how long B's jobs wait in the queue (submit -> start), with fair queues on (every job message in its
owner's group, `MessageGroupId`) and off (`JOBKIT_FAIR_QUEUES=false`, the behaviour before).

Runs `jobctl dev` (the same API and worker core the functions run, the local event source playing Lambda's
SQS event source) on its embedded backend and on the emulator (`--endpoint-url --bootstrap`), one run per
backend and setting, and appends nothing anywhere: it prints a Markdown table for bench/BENCHMARKS.md.
"""

import argparse
import datetime
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base, method, path, user, body=None, timeout=30):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"x-user-id": user, "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def ms(iso):
    return datetime.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000


def pct(xs, p):
    """Nearest-rank percentile."""
    xs = sorted(xs)
    return xs[max(0, min(len(xs) - 1, int(-(-p * len(xs) // 100)) - 1))]


class Dev:
    """`jobctl dev` on a free loopback port, with `env` over the environment."""

    def __init__(self, args, env, endpoint=None, prefix=None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [args.jobctl, "dev", "--addr", f"127.0.0.1:{self.port}", "--user-header",
               "--concurrency", str(args.concurrency)]
        if endpoint:
            cmd += ["--endpoint-url", endpoint, "--bootstrap", "--prefix", prefix]
        full_env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                    "AWS_REGION": "us-east-1", "RUST_LOG": "warn", **env}
        full_env.pop("AWS_ENDPOINT_URL", None)
        self.log = open(os.path.join(args.logs, f"{prefix or 'embedded'}-{env['JOBKIT_FAIR_QUEUES']}.log"), "w")
        self.proc = subprocess.Popen(cmd, env=full_env, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jobctl dev exited ({self.proc.returncode}); see {self.log.name}")
            try:
                if call(self.base, "GET", "/_dev/stats", "bench", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("jobctl dev did not start")

    def stats(self):
        return call(self.base, "GET", "/_dev/stats", "bench")[1]["jobs"]

    def backlog(self):
        return sum(self.stats()[k] for k in ("waiting", "in_flight", "delayed"))

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def submit(dev, user, n, job_ms, pool):
    body = {"kind": "sleep", "input": {"ms": job_ms}}

    def one(_):
        status, b = call(dev.base, "POST", "/jobs", user, body)
        if status != 202:
            raise RuntimeError(f"submit as {user}: {status} {b}")
        return b["job_id"]
    return list(pool.map(one, range(n)))


def run(args, backend, fair):
    env = {"JOBKIT_FAIR_QUEUES": "true" if fair else "false",
           "JOBKIT_MAX_IN_FLIGHT_PER_USER": str(args.a_jobs + args.b_jobs)}
    prefix = f"fair{uuid.uuid4().hex[:6]}" if backend == "emulator" else None
    dev = Dev(args, env, args.emulator_url if backend == "emulator" else None, prefix)
    try:
        with ThreadPoolExecutor(args.clients) as pool:
            t0 = time.monotonic()
            a_ids = submit(dev, "tenant-a", args.a_jobs, args.job_ms, pool)
            a_submit_s = time.monotonic() - t0
            b_ids = submit(dev, "tenant-b", args.b_jobs, args.job_ms, pool)
            waiting_at_b = dev.stats()["waiting"]
            deadline = time.monotonic() + args.timeout
            while dev.backlog() and time.monotonic() < deadline:
                time.sleep(0.5)

            def view(item):
                user, job_id = item
                return call(dev.base, "GET", f"/jobs/{job_id}", user)[1]
            a_jobs = list(pool.map(view, [("tenant-a", i) for i in a_ids]))
            b_jobs = list(pool.map(view, [("tenant-b", i) for i in b_ids]))
    finally:
        dev.stop()
    not_done = [j for j in a_jobs + b_jobs if j.get("status") != "completed"]
    if not_done:
        raise RuntimeError(f"{backend}, fair={fair}: {len(not_done)} jobs not completed, e.g. {not_done[0]}")

    def waits(js):
        return [(ms(j["started_at"]) - ms(j["submitted_at"])) / 1000 for j in js]
    b_last_start = max(ms(j["started_at"]) for j in b_jobs)
    return {
        "backend": backend, "fair": fair,
        "b_p50": pct(waits(b_jobs), 50), "b_p99": pct(waits(b_jobs), 99),
        "a_p50": pct(waits(a_jobs), 50), "a_p99": pct(waits(a_jobs), 99),
        "waiting_at_b": waiting_at_b,
        "a_after_b": sum(1 for j in a_jobs if ms(j["started_at"]) > b_last_start),
        "a_submit_s": a_submit_s,
    }


def table(results, args):
    head = (f"| backend | fair queues | B's queue wait p50 s | B's p99 s | A's p50 s | A's p99 s | messages waiting "
            f"after B's submits | A's jobs started after B's last |\n|---|---|---|---|---|---|---|---|\n")
    rows = "".join(
        f"| {r['backend']} | {'on' if r['fair'] else 'off (`JOBKIT_FAIR_QUEUES=false`)'} | {r['b_p50']:.2f} | "
        f"{r['b_p99']:.2f} | {r['a_p50']:.2f} | {r['a_p99']:.2f} | {r['waiting_at_b']} | "
        f"{r['a_after_b']} of {args.a_jobs} |\n" for r in results)
    return head + rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--fairness", action="store_true")
    p.add_argument("--jobctl", required=True)
    p.add_argument("--emulator-url", required=True)
    p.add_argument("--a-jobs", type=int, default=1000)
    p.add_argument("--b-jobs", type=int, default=10)
    p.add_argument("--job-ms", type=int, default=500, help="each job's length (`sleep`)")
    p.add_argument("--concurrency", type=int, default=2, help="worker invocations (each a batch of 10)")
    p.add_argument("--clients", type=int, default=8, help="concurrent submitting connections")
    p.add_argument("--backends", default="embedded,emulator")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--command", default="bash bench/run.sh --fairness")
    args, _ = p.parse_known_args()
    args.logs = os.path.join(ROOT, "target", "bench", "logs", "fairness-" + uuid.uuid4().hex[:6])
    os.makedirs(args.logs, exist_ok=True)
    load = [os.getloadavg()[0]]
    results = []
    for backend in args.backends.split(","):
        for fair in (True, False):
            print(f"fairness: {backend}, fair queues {'on' if fair else 'off'} ...", file=sys.stderr, flush=True)
            results.append(run(args, backend, fair))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    load.append(os.getloadavg()[0])
    print(f"- date: {datetime.date.today().isoformat()}; machine: {os.cpu_count()} cores, "
          f"{platform.system()} {platform.release()}; 1-minute load average {load[0]:.1f} at the start, "
          f"{load[1]:.1f} at the end")
    print(f"- command: `{args.command}`")
    print(f"- workload: A submits {args.a_jobs} `sleep` jobs of {args.job_ms} ms ({args.clients} connections), then "
          f"B submits {args.b_jobs}; `jobctl dev --concurrency {args.concurrency}` (that many worker invocations, "
          f"batches of 10, all 10 run at once)")
    print()
    print(table(results, args))
    with open(os.path.join(args.logs, "results.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
