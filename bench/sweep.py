"""The sweep's cost (`bash bench/run.sh --short --sweep N [--baseline-bin-dir DIR]`), counted by the same proxy.

N `echo` jobs (an Idempotency-Key each, counted against a per-user cap of 24: one ledger page per user) are
submitted and run to their end, then the sweep function runs once (the 5-minute schedule's event); three
times. The last run keeps N more finished jobs than the one before, with the same ledger pages: what a run
reads per job the table keeps is the difference over N. With `--baseline-bin-dir DIR` (functions built from
another commit, e.g. `cargo build -p jobkit-submit -p jobkit-worker -p jobkit-status -p jobkit-sweep` there),
the same for those, side by side.

Per phase: DynamoDB write units (of which index), read units, DynamoDB calls; the jobs' phases per job, the
sweep runs per run. Writes target/bench/sweep.md.
"""

import argparse
import json
import os
import uuid

from driver import ROOT, PRICES, Function, Stack, diff, drain, functions_for, http_event, ledger, proxy_stats
from wait import totals

# A job record is kept JobRetentionDays (7 by default) and the sweep runs every 5 minutes.
RUNS_PER_WEEK = 7 * 24 * 12


def submit_all(fns, n, args):
    users = [f"user-{i}" for i in range(max(1, n // 10))]
    ids = []
    for i in range(n):
        body = {"kind": "echo", "input": {"prompt": f"hello {i}", "n": i}}
        r = fns["submit"].invoke(http_event("POST", "/jobs", "POST /jobs", users[i % len(users)], body,
                                            {"idempotency-key": uuid.uuid4().hex}))
        resp = r.response if isinstance(r.response, dict) else {}
        if r.error or resp.get("statusCode") != 202:
            raise RuntimeError(f"submit {i}: {r.response}")
        ids.append(json.loads(resp["body"])["job_id"])
    return ids


def sweep_run(fns):
    r = fns["sweep"].invoke({"source": "aws.events", "detail-type": "Scheduled Event"})
    if r.error or not isinstance(r.response, dict):
        raise RuntimeError(f"sweep: {r.response}")
    return r.response


def scenario(side, bin_dir, args, logs):
    n = args.sweep
    stack = Stack(args.proxy_url, f"b{args.run_id}-sweep-{side}").create()
    fns = functions_for("jobkit", stack, argparse_copy(args, bin_dir=bin_dir, cap=24), logs)
    env = {**stack.function_env("SweepFunction"), "AWS_ENDPOINT_URL": args.proxy_url}
    fns["sweep"] = Function(f"{side}-sweep", [os.path.join(bin_dir, "sweep")], env,
                            f"{logs}/{side}-sweep.log", cwd=ROOT, timeout_s=stack.timeout("SweepFunction"))
    for f in fns.values():
        f.start().wait_ready()
    marks, reports, ids = [], [], []
    mark = lambda phase: marks.append((phase, proxy_stats(args.proxy_url)))
    proxy_stats(args.proxy_url, reset=True)
    mark("start")
    try:
        for kept in (n, 2 * n, 3 * n):
            ids += submit_all(fns, n, args)
            drain(fns, stack, args)
            mark(f"{n} jobs: submit and run")
            reports.append(sweep_run(fns))
            mark(f"a sweep run, {kept} finished jobs kept")
    finally:
        for f in fns.values():
            f.stop()
    rows = [(phase, totals(diff(st, prev))) for (_, prev), (phase, st) in zip(marks, marks[1:])]
    return {"side": side, "rows": rows, "reports": reports, "ledger": ledger(stack, ids, args)}


def argparse_copy(args, **changes):
    return argparse.Namespace(**{**vars(args), **changes})


def table(result, n):
    lines = ["| phase | WRU (of which index) | RRU | DynamoDB calls |", "|---|---|---|---|"]
    for phase, t in result["rows"]:
        per = n if phase.endswith("submit and run") else 1
        unit = " per job" if per > 1 else ""
        lines.append(f"| {phase}{unit} | {t['wru'] / per:.2f} ({t['index_wru'] / per:.2f}) | {t['rru'] / per:.2f} "
                     f"| {t['ddb'] / per:.2f} |")
    return "\n".join(lines)


def marginal(result, n):
    """RRU a sweep run reads per finished job kept: the last run's reads less the one before, over N."""
    runs = [t for phase, t in result["rows"] if phase.startswith("a sweep run")]
    return (runs[-1]["rru"] - runs[-2]["rru"]) / n


def main(args, logs):
    n = args.sweep
    sides = [("jobkit", args.bin_dir)]
    if args.baseline_bin_dir:
        sides.insert(0, ("baseline", os.path.abspath(args.baseline_bin_dir)))
    results = [scenario(side, bin_dir, args, logs) for side, bin_dir in sides]
    doc = [f"command: `{args.command}`", ""]
    for r in results:
        per_job = marginal(r, n)
        week = per_job * RUNS_PER_WEEK
        doc += [f"### {r['side']} ({n} jobs, three times)", "", table(r, n), "",
                f"A sweep run reads {per_job:.3f} RRU per finished job kept: {week:.1f} RRU per job over 7 days "
                f"of retention ({RUNS_PER_WEEK} runs), ${week * PRICES['rru'] * 1e6:.2f} per million jobs. "
                f"Sweep answers: `{json.dumps(r['reports'])}`. Ledger: {r['ledger']['completed_once']}/"
                f"{r['ledger']['jobs']} completed once"
                + (f" — {r['ledger']['problems']}" if r["ledger"]["problems"] else ""), ""]
    text = "\n".join(doc)
    print(text)
    out = os.path.join(ROOT, "target", "bench", "sweep.md")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write(text + "\n")
    print(f"\nwrote {os.path.relpath(out, ROOT)}")
    bad = [r for r in results if r["ledger"]["problems"]]
    if bad:
        raise SystemExit(f"FAIL: {[r['ledger']['problems'] for r in bad]}")
