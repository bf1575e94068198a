"""The waiting workloads (`bash bench/run.sh --short --wait N`): what parking costs, counted by the same proxy.

- resume: N `sleep` jobs with `{"durable": true, "ms": 10000}` (an Idempotency-Key each, counted against the
  per-user cap, as in the main workload) park once; each is completed through the completion route
  (`POST /jobs/{id}/waitpoints/sleep`, served by the submit function) and runs to its end; the due task then
  checks the completed waitpoints (`REPAIR_AFTER` later, as it will on AWS); one status GET each.
- timer: N `sleep` jobs with `{"durable": true, "ms": 1000}` park; after a second the due task (the sweep
  function with `{"task": "due"}`) fires their timers, and they run to their end; one status GET each.

Per phase: DynamoDB write units (of which index), read units, DynamoDB calls, SQS requests (functions and the
event source's poller), per job. jobkit alone: the peer has no waitpoints. Writes target/bench/wait.md.
"""

import json
import os
import time
import uuid

from driver import ROOT, PRICES, Function, Stack, client, diff, drain, functions_for, http_event, ledger, \
    proxy_stats
from proxy import item_size

# shared/src/waitpoint.rs: the due task checks a completed waitpoint this long after its completion.
REPAIR_AFTER_S = 10

# DynamoDB Standard table class storage, us-east-1, per GB-month; and its per-item overhead.
STORAGE_GB_MONTH = 0.25
ITEM_OVERHEAD = 100


def totals(stats):
    """DynamoDB WRU, index WRU, RRU, DynamoDB calls, SQS requests (functions, poller) in a stats delta."""
    calls = stats["calls"]
    by = lambda pred: sum(v for k, v in calls.items() if pred(*k.split()))
    return {
        "wru": sum(stats["wru"].values()), "index_wru": sum(stats["index_wru"].values()),
        "rru": sum(stats["rru"].values()),
        "ddb": by(lambda caller, svc, op: svc == "dynamodb"),
        "sqs_fn": by(lambda caller, svc, op: svc == "sqs" and caller != "poller"),
        "sqs_poll": by(lambda caller, svc, op: svc == "sqs" and caller == "poller"),
    }


def submit_all(fns, n, ms, args):
    users = [f"user-{i}" for i in range(max(1, n // 10))]
    owner = {}
    for i in range(n):
        user = users[i % len(users)]
        body = {"kind": "sleep", "input": {"ms": ms, "durable": True}}
        r = fns["submit"].invoke(http_event("POST", "/jobs", "POST /jobs", user, body,
                                            {"idempotency-key": uuid.uuid4().hex}))
        resp = r.response if isinstance(r.response, dict) else {}
        if r.error or resp.get("statusCode") != 202:
            raise RuntimeError(f"submit {i}: {r.response}")
        owner[json.loads(resp["body"])["job_id"]] = user
    return owner


def due_task(fns):
    r = fns["sweep"].invoke({"task": "due"})
    if r.error or not isinstance(r.response, dict):
        raise RuntimeError(f"due task: {r.response}")
    return r.response


def statuses(fns, owner):
    for job_id, user in owner.items():
        r = fns["status"].invoke(http_event("GET", f"/jobs/{job_id}", "GET /jobs/{id}", user,
                                            path_params={"id": job_id}))
        if not isinstance(r.response, dict) or r.response.get("statusCode") != 200:
            raise RuntimeError(f"status {job_id}: {r.response}")


def sizes(stack, args, job_id):
    """Bytes of a parked job's item and of its waitpoint's (DynamoDB's size rules, as the proxy counts)."""
    ddb = client("dynamodb", args.emulator_url)
    table = stack.physical["JobsTable"]
    get = lambda key: ddb.get_item(TableName=table, Key={"job_id": {"S": key}}, ConsistentRead=True).get("Item")
    job, wp = get(job_id), get(f"wait#{job_id}#sleep")
    index_entry = {k: job[k] for k in ("job_id", "due_shard", "due_at")}
    return {"job": item_size(job), "waitpoint": item_size(wp), "index entry": item_size(index_entry)}


def scenario(name, args, logs):
    n = args.wait
    stack = Stack(args.proxy_url, f"b{args.run_id}-wait-{name}").create()
    fns = functions_for("jobkit", stack, args, logs)
    env = {**stack.function_env("SweepFunction"), "AWS_ENDPOINT_URL": args.proxy_url}
    fns["sweep"] = Function(f"jobkit-sweep-{name}", [os.path.join(args.bin_dir, "sweep")], env,
                            f"{logs}/jobkit-sweep-{name}.log", cwd=ROOT, timeout_s=stack.timeout("SweepFunction"))
    for f in fns.values():
        f.start().wait_ready()
    marks = []
    mark = lambda phase: marks.append((phase, proxy_stats(args.proxy_url)))
    proxy_stats(args.proxy_url, reset=True)
    mark("start")
    try:
        owner = submit_all(fns, n, 10_000 if name == "resume" else 1_000, args)
        mark("submit")
        drain(fns, stack, args)
        mark("run until parked")
        size = sizes(stack, args, next(iter(owner)))
        fired = None
        if name == "resume":
            for job_id, user in owner.items():
                r = fns["submit"].invoke(http_event(
                    "POST", f"/jobs/{job_id}/waitpoints/sleep", "POST /jobs/{id}/waitpoints/{name}", user,
                    {"approved": True}, path_params={"id": job_id, "name": "sleep"}))
                if not isinstance(r.response, dict) or r.response.get("statusCode") != 202:
                    raise RuntimeError(f"complete {job_id}: {r.response}")
            mark("complete (route)")
            drain(fns, stack, args)
            mark("run to the end")
            time.sleep(REPAIR_AFTER_S + 0.5)
            fired = due_task(fns)
            mark("due task: resume checks")
        else:
            time.sleep(1.5)
            fired = due_task(fns)
            mark("due task: timers")
            drain(fns, stack, args)
            mark("run to the end")
        statuses(fns, owner)
        mark("status")
    finally:
        for f in fns.values():
            f.stop()
    rows = [(phase, totals(diff(st, prev))) for (_, prev), (phase, st) in zip(marks, marks[1:])]
    return {"scenario": name, "rows": rows, "total": totals(diff(marks[-1][1], marks[0][1])), "due": fired,
            "sizes": size, "ledger": ledger(stack, list(owner), args)}


def table(result, n):
    lines = ["| phase | WRU/job (of which index) | RRU/job | DynamoDB calls/job | SQS requests/job (functions + poller) |",
             "|---|---|---|---|---|"]
    for phase, t in result["rows"] + [("**total**", result["total"])]:
        lines.append(f"| {phase} | {t['wru'] / n:.2f} ({t['index_wru'] / n:.2f}) | {t['rru'] / n:.2f} "
                     f"| {t['ddb'] / n:.2f} | {(t['sqs_fn'] + t['sqs_poll']) / n:.2f} "
                     f"({t['sqs_fn'] / n:.2f} + {t['sqs_poll'] / n:.2f}) |")
    t = result["total"]
    dollars = (t["wru"] * PRICES["wru"] + t["rru"] * PRICES["rru"]
               + (t["sqs_fn"] + t["sqs_poll"]) * PRICES["sqs"]) / n * 1e6
    lines.append(f"\nDynamoDB + SQS: ${dollars:.2f} per million jobs. Due task's answer: `{json.dumps(result['due'])}`. "
                 f"Ledger: {result['ledger']['completed_once']}/{result['ledger']['jobs']} completed once"
                 + (f" — {result['ledger']['problems']}" if result["ledger"]["problems"] else ""))
    return "\n".join(lines)


def main(args, logs):
    n = args.wait
    results = [scenario(name, args, logs) for name in ("resume", "timer")]
    s = results[0]["sizes"]
    parked = s["job"] + s["waitpoint"] + s["index entry"] + 3 * ITEM_OVERHEAD
    per_day = parked * 1e6 / 1e9 * STORAGE_GB_MONTH / 30.4
    doc = [f"command: `{args.command}`", ""]
    for r in results:
        doc += [f"### {r['scenario']} ({n} jobs)", "", table(r, n), ""]
    doc += [f"A parked job's storage: job item {s['job']} B, waitpoint item {s['waitpoint']} B, due-index entry "
            f"{s['index entry']} B, plus {ITEM_OVERHEAD} B of DynamoDB overhead each: {parked} B, "
            f"${per_day:.4f} per million waiting job-days at ${STORAGE_GB_MONTH}/GB-month."]
    text = "\n".join(doc)
    print(text)
    out = os.path.join(ROOT, "target", "bench", "wait.md")
    with open(out, "w") as f:
        f.write(text + "\n")
    print(f"\nwrote {os.path.relpath(out, ROOT)}")
    bad = [r for r in results if r["ledger"]["problems"]]
    if bad:
        raise SystemExit(f"FAIL: {[r['ledger']['problems'] for r in bad]}")
