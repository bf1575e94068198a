"""Benchmark driver: jobkit's three Lambda binaries against the Powertools peer (bench/peer/), same emulator,
same workload, alternating rounds. Plays API Gateway (HTTP API payload 2.0, JWT authorizer) and the SQS event
source mapping, runs every function under runtime_api.Function, counts AWS calls and DynamoDB units through
proxy.py, prices a million jobs and writes bench/BENCHMARKS.md. See bench/README.md.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid

import boto3
import yaml
from botocore.config import Config

from runtime_api import Function

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# us-east-1 list prices.
PRICES = {
    "wru": 0.625e-6,        # DynamoDB on-demand, per write request unit
    "rru": 0.125e-6,        # per read request unit
    "sqs": 0.40e-6,         # SQS standard, per request
    "lambda_req": 0.20e-6,  # Lambda arm64, per request
    "gb_s": 0.0000133334,   # Lambda arm64, per GB-second
    "http": 1.00e-6,        # API Gateway HTTP API, per request
}
MEMORY_GB = 128 / 1024


# ---------------------------------------------------------------- stack from template.yaml

class Tag:
    def __init__(self, tag, value):
        self.tag, self.value = tag, value


def _tagged(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return Tag(suffix, value)


class CfnLoader(yaml.SafeLoader):
    pass


CfnLoader.add_multi_constructor("!", _tagged)


class Stack:
    """The queues, table and secret template.yaml defines, created under a prefix; the functions' environment."""

    def __init__(self, endpoint, prefix, template=os.path.join(ROOT, "template.yaml")):
        with open(template) as f:
            self.t = yaml.load(f, Loader=CfnLoader)
        self.prefix, self.endpoint = prefix, endpoint
        self.sqs = client("sqs", endpoint)
        self.ddb = client("dynamodb", endpoint)
        self.physical, self.arns = {}, {}

    def condition(self, name):
        """A template condition, with every parameter at its default (the bench deploys the defaults)."""
        return self.truth(self.t["Conditions"][name])

    def truth(self, v):
        if isinstance(v, Tag):
            if v.tag == "Equals":
                a, b = (self.resolve(x) for x in v.value)
                return str(a) == str(b)
            if v.tag == "Not":
                return not self.truth(v.value[0])
            if v.tag == "And":
                return all(self.truth(x) for x in v.value)
            if v.tag == "Or":
                return any(self.truth(x) for x in v.value)
            if v.tag == "Condition":
                return self.condition(v.value)
        if isinstance(v, dict) and "Condition" in v:
            return self.condition(v["Condition"])
        raise ValueError(f"unsupported condition {v!r}")

    def deployed(self, resource):
        return "Condition" not in resource or self.condition(resource["Condition"])

    def resolve(self, v):
        if isinstance(v, Tag):
            if v.tag == "If":
                name, yes, no = v.value
                return self.resolve(yes if self.condition(name) else no)
            if v.tag == "Ref":
                if v.value in self.physical:
                    return self.physical[v.value]
                pseudo = {"AWS::StackName": self.prefix, "AWS::Region": "us-east-1", "AWS::Partition": "aws",
                          "AWS::AccountId": "000000000000"}
                if v.value in pseudo:
                    return pseudo[v.value]
                return str(self.t["Parameters"][v.value]["Default"])
            if v.tag == "GetAtt":
                name = v.value if isinstance(v.value, str) else ".".join(v.value)
                # Only queues, secrets and tables are created here: other resources' attributes (a
                # function URL, say) name nothing the three benched functions call.
                return self.arns.get(name.split(".")[0], "")
            if v.tag == "Join":
                sep, parts = v.value
                parts = self.resolve(parts)
                return sep.join(str(x) for x in (parts.split(",") if isinstance(parts, str) else parts))
            if v.tag == "FindInMap":
                m, a, b = (self.resolve(x) for x in v.value)
                return self.t["Mappings"][m][str(a)][b]
            raise ValueError(f"unsupported !{v.tag}")
        if isinstance(v, dict):
            return {k: self.resolve(x) for k, x in v.items()}
        if isinstance(v, list):
            return [self.resolve(x) for x in v]
        return v

    def create(self):
        res = self.t["Resources"]
        queues = [k for k, r in res.items() if r["Type"] == "AWS::SQS::Queue" and self.deployed(r)]
        queues.sort(key=lambda k: "RedrivePolicy" in res[k].get("Properties", {}))  # DLQs first
        for name in queues:
            props = self.resolve(res[name].get("Properties", {}))
            attrs = {k: json.dumps(v) if isinstance(v, dict) else str(v).lower() if isinstance(v, bool) else str(v)
                     for k, v in props.items() if k not in ("QueueName", "Tags")}
            url = self.sqs.create_queue(QueueName=f"{self.prefix}-{name}", Attributes=attrs)["QueueUrl"]
            self.physical[name] = url
            self.arns[name] = self.sqs.get_queue_attributes(
                QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        for name in (k for k, r in res.items() if r["Type"] == "AWS::SecretsManager::Secret" and self.deployed(r)):
            sm = client("secretsmanager", self.endpoint)
            arn = sm.create_secret(Name=f"{self.prefix}-{name}", SecretString=uuid.uuid4().hex * 2)["ARN"]
            self.physical[name] = self.arns[name] = arn
        for name in (k for k, r in res.items() if r["Type"] == "AWS::DynamoDB::Table" and self.deployed(r)):
            props = self.resolve(res[name]["Properties"])
            self.create_table(f"{self.prefix}-{name}", props)
            self.physical[name] = f"{self.prefix}-{name}"
        return self

    def create_table(self, table, props):
        kw = {k: props[k] for k in ("AttributeDefinitions", "KeySchema", "GlobalSecondaryIndexes") if k in props}
        self.ddb.create_table(TableName=table, BillingMode=props.get("BillingMode", "PAY_PER_REQUEST"), **kw)
        self.ddb.get_waiter("table_exists").wait(TableName=table, WaiterConfig={"Delay": 0.2})

    def timeout(self, logical_id):
        props = self.t["Resources"][logical_id]["Properties"]
        return int(self.resolve(props.get("Timeout", self.t.get("Globals", {}).get("Function", {}).get("Timeout", 3))))

    def function_env(self, logical_id):
        env = dict(self.t.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {}))
        env.update(self.t["Resources"][logical_id]["Properties"].get("Environment", {}).get("Variables", {}))
        return {k: str(self.resolve(v)) for k, v in env.items()}


def client(service, endpoint, caller=None):
    c = boto3.client(service, endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                     aws_secret_access_key="test", config=Config(retries={"max_attempts": 2}))
    if caller:
        c.meta.events.register("before-sign.*.*", lambda request, **_: request.headers.__setitem__(
            "X-Bench-Caller", caller))
    return c


# ---------------------------------------------------------------- events

def http_event(method, path, route, user, body=None, headers=None, path_params=None):
    now = time.time()
    return {
        "version": "2.0", "routeKey": route, "rawPath": path, "rawQueryString": "",
        "headers": {"host": "bench.execute-api.us-east-1.amazonaws.com", "user-agent": "bench",
                    "content-type": "application/json", **(headers or {})},
        "pathParameters": path_params,
        "requestContext": {
            "accountId": "000000000000", "apiId": "bench", "domainName": "bench.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "bench", "requestId": uuid.uuid4().hex, "routeKey": route, "stage": "$default",
            "authorizer": {"jwt": {"claims": {"sub": user, "iss": "https://issuer.bench"}, "scopes": None}},
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1",
                     "userAgent": "bench"},
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)), "timeEpoch": int(now * 1000),
        },
        "body": json.dumps(body) if body is not None else None,
        "isBase64Encoded": False,
    }


def sqs_event(messages, queue_arn):
    return {"Records": [{
        "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
        "attributes": m.get("Attributes", {}), "messageAttributes": {}, "md5OfBody": m["MD5OfBody"],
        "eventSource": "aws:sqs", "eventSourceARN": queue_arn, "awsRegion": "us-east-1",
    } for m in messages]}


# ---------------------------------------------------------------- one round

# Sides built from this repository: the work tree, and with --baseline the same functions of another commit.
JOBKIT_SIDES = ("jobkit", "baseline")


def functions_for(variant, stack, args, logs):
    if variant in JOBKIT_SIDES:
        bin_dir = args.baseline_bin_dir if variant == "baseline" else args.bin_dir
        names = {"submit": "SubmitFunction", "worker": "WorkerFunction", "status": "StatusFunction"}
        fns = {}
        for fn, logical in names.items():
            env = {**stack.function_env(logical), "AWS_ENDPOINT_URL": args.proxy_url,
                   "JOBKIT_MAX_IN_FLIGHT_PER_USER": str(args.cap)}
            fns[fn] = Function(f"{variant}-{fn}", [os.path.join(bin_dir, fn)], env, f"{logs}/{variant}-{fn}.log",
                               cwd=ROOT, timeout_s=stack.timeout(logical))
        return fns
    idem = f"{stack.prefix}-Idempotency"
    stack.ddb.create_table(TableName=idem, BillingMode="PAY_PER_REQUEST",
                           AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                           KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}])
    stack.ddb.get_waiter("table_exists").wait(TableName=idem, WaiterConfig={"Delay": 0.2})
    env = {"AWS_ENDPOINT_URL": args.proxy_url, "JOBS_TABLE": stack.physical["JobsTable"],
           "QUEUE_URL": stack.physical["JobsQueue"], "IDEMPOTENCY_TABLE": idem,
           "MAX_IN_FLIGHT_PER_USER": str(args.cap), "POWERTOOLS_SERVICE_NAME": "jobs"}
    return {fn: Function(f"peer-{fn}", [args.peer_python, "-m", "awslambdaric", f"{fn}.lambda_handler"],
                         env, f"{logs}/peer-{fn}.log", cwd=os.path.join(HERE, "peer"),
                         timeout_s=stack.timeout(f"{fn.title()}Function"))
            for fn in ("submit", "worker", "status")}


def proxy_stats(proxy_url, reset=False):
    path = "/_bench/reset" if reset else "/_bench/stats"
    req = urllib.request.Request(proxy_url + path, method="POST" if reset else "GET")
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


def diff(after, before):
    return {k: {op: v - before[k].get(op, 0) for op, v in after[k].items() if v != before[k].get(op, 0)}
            for k in after}


def run_round(variant, rnd, args, logs, workload_name="spread"):
    """One round of one side. `args` carries the workload (jobs, users, cap): the spread-out one, or a
    busy tenant's (see `busy_args`)."""
    prefix = f"b{args.run_id}-{rnd}-{variant}-{workload_name}"
    stack = Stack(args.proxy_url, prefix).create()
    fns = functions_for(variant, stack, args, logs)
    for f in fns.values():  # one after another: init is measured on an otherwise idle machine
        f.start().wait_ready()
    out = {"variant": variant, "round": rnd, "workload": workload_name, "jobs": args.jobs,
           "init_ms": {n: f.init_ms for n, f in fns.items()}}
    proxy_stats(args.proxy_url, reset=True)
    try:
        out.update(workload(fns, stack, args))
    finally:
        out["rss_mib"] = {n: f.stop() / 1024 for n, f in fns.items()}
    out["aws"] = proxy_stats(args.proxy_url)
    out["ledger"] = ledger(stack, out["job_ids"], args)
    return out


def workload(fns, stack, args):
    n = args.jobs
    users = [f"user-{i}" for i in range(args.users)]
    submit_ms, job_ids, owner = [], [], {}
    for i in range(n):
        user = users[i % len(users)]
        body = {"kind": "echo", "input": {"prompt": f"hello {i}", "n": i}}
        ev = http_event("POST", "/jobs", "POST /jobs", user, body, {"idempotency-key": uuid.uuid4().hex})
        r = fns["submit"].invoke(ev)
        resp = r.response if isinstance(r.response, dict) else {}
        if r.error or resp.get("statusCode") not in (200, 202):
            raise RuntimeError(f"submit {i}: {r.response}")
        job_id = json.loads(resp["body"])["job_id"]
        job_ids.append(job_id)
        owner[job_id] = user
        submit_ms.append(r.latency_ms)

    phases = {"submit": proxy_stats(args.proxy_url)}
    batches, worker_cpu, failures, poller_requests = drain(fns, stack, args)

    phases["worker"] = proxy_stats(args.proxy_url)
    status_ms, statuses = [], {}
    for job_id in job_ids:
        ev = http_event("GET", f"/jobs/{job_id}", "GET /jobs/{id}", owner[job_id], path_params={"id": job_id})
        r = fns["status"].invoke(ev)
        resp = r.response if isinstance(r.response, dict) else {}
        statuses[job_id] = json.loads(resp.get("body") or "{}").get("status") if resp.get("statusCode") == 200 \
            else f"http {resp.get('statusCode')}"
        status_ms.append(r.latency_ms)

    phases["status"] = proxy_stats(args.proxy_url)
    all_lat = submit_ms + status_ms + [ms for _, ms in batches]
    return {
        "phases": {"submit": phases["submit"], "worker": diff(phases["worker"], phases["submit"]),
                   "status": diff(phases["status"], phases["worker"])},
        "job_ids": job_ids, "statuses": statuses, "submit_ms": submit_ms, "status_ms": status_ms,
        "batches": batches, "worker_cpu_ms": worker_cpu, "batch_failures": failures,
        "poller_requests": poller_requests, "invocations": len(all_lat),
        "billed_ms": sum(max(1, int(ms + 0.999)) for ms in all_lat),
    }


def drain(fns, stack, args):
    """Plays the SQS event source until the jobs queue is empty: receive 10, invoke the worker, delete
    what it did not report failed. Returns (batches as (size, ms), worker CPU ms, failures, poller
    requests)."""
    queue_url, queue_arn = stack.physical["JobsQueue"], stack.arns["JobsQueue"]
    poller = client("sqs", args.proxy_url, caller="poller")
    direct = client("sqs", args.emulator_url)
    batches, worker_cpu, failures, poller_requests = [], 0.0, 0, 0
    deadline = time.monotonic() + args.worker_timeout
    while time.monotonic() < deadline:
        msgs = poller.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                      MessageSystemAttributeNames=["All"]).get("Messages", [])
        if not msgs:
            a = direct.get_queue_attributes(QueueUrl=queue_url, AttributeNames=[
                "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed"])["Attributes"]
            if not any(int(v) for v in a.values()):
                break
            time.sleep(0.2)
            continue
        poller_requests += 1
        r = fns["worker"].invoke(sqs_event(msgs, queue_arn))
        failed = {f["itemIdentifier"] for f in (r.response or {}).get("batchItemFailures", [])} \
            if not r.error and isinstance(r.response, dict) else {m["MessageId"] for m in msgs}
        failures += len(failed)
        batches.append((len(msgs), r.latency_ms))
        worker_cpu += r.cpu_ms
        done = [m for m in msgs if m["MessageId"] not in failed]
        if done:
            poller.delete_message_batch(QueueUrl=queue_url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)])
            poller_requests += 1
    return batches, worker_cpu, failures, poller_requests


def ledger(stack, job_ids, args):
    """Every job completed exactly once (one attempt), read straight from the emulator."""
    ddb = client("dynamodb", args.emulator_url)
    table = stack.physical["JobsTable"]
    problems, items = [], []
    for i in range(0, len(job_ids), 100):
        keys = [{"job_id": {"S": j}} for j in job_ids[i:i + 100]]
        while keys:
            got = ddb.batch_get_item(RequestItems={table: {"Keys": keys, "ConsistentRead": True}})
            items += got["Responses"][table]
            keys = got.get("UnprocessedKeys", {}).get(table, {}).get("Keys", [])
    found = {it["job_id"]["S"]: it for it in items}
    for j in job_ids:
        it = found.get(j)
        if it is None:
            problems.append(f"{j}: missing")
        elif it["status"]["S"] != "completed" or it["attempts"]["N"] != "1":
            problems.append(f"{j}: {it['status']['S']} after {it['attempts']['N']} attempts")
    return {"jobs": len(job_ids), "completed_once": len(job_ids) - len(problems), "problems": problems[:10]}


# ---------------------------------------------------------------- summary

def p50(xs):
    return statistics.median(xs) if xs else float("nan")


def metrics(r, n):
    aws = r["aws"]
    fn_calls = lambda svc: sum(v for k, v in aws["calls"].items() if k.split()[1] == svc and k.split()[0] != "poller")
    full = [ms for size, ms in r["batches"] if size == 10] or [ms for _, ms in r["batches"]]
    wru, rru = sum(aws["wru"].values()) / n, sum(aws["rru"].values()) / n
    sqs_fn, sqs_poll = fn_calls("sqs") / n, r["poller_requests"] / n
    cost = {
        "DynamoDB": (wru * PRICES["wru"] + rru * PRICES["rru"]) * 1e6,
        "SQS": (sqs_fn + sqs_poll) * PRICES["sqs"] * 1e6,
        "Lambda": (r["invocations"] / n * PRICES["lambda_req"]
                   + r["billed_ms"] / 1000 / n * MEMORY_GB * PRICES["gb_s"]) * 1e6,
        "HTTP API": 2 * PRICES["http"] * 1e6,
    }
    return {
        **{f"init {k} ms": v for k, v in r["init_ms"].items()},
        "submit p50 ms": p50(r["submit_ms"]),
        "worker batch of 10 p50 ms": p50(full),
        "status p50 ms": p50(r["status_ms"]),
        "worker CPU ms/job": r["worker_cpu_ms"] / n,
        **{f"peak RSS {k} MiB": v for k, v in r["rss_mib"].items()},
        "DynamoDB WRU/job": wru,
        "DynamoDB index WRU/job": sum(aws["index_wru"].values()) / n,
        "DynamoDB RRU/job": rru,
        "DynamoDB WRU/job, emulator's ConsumedCapacity": sum(aws["emulator_wru"].values()) / n,
        "DynamoDB RRU/job, emulator's ConsumedCapacity": sum(aws["emulator_rru"].values()) / n,
        "SQS requests/job (functions)": sqs_fn,
        "SQS requests/job (poller)": sqs_poll,
        "SQS requests/job": sqs_fn + sqs_poll,
        "DynamoDB calls/job": fn_calls("dynamodb") / n,
        **{f"$/M jobs {k}": v for k, v in cost.items()},
        "$ per million jobs": sum(cost.values()),
    }


def spread(values):
    """Median, and min–max when the rounds differ."""
    values = sorted(values)
    med = statistics.median(values)
    if values[0] == values[-1]:
        return med, ""
    return med, f"{fmt(values[0])}–{fmt(values[-1])}"


def fmt(v):
    return f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"


def per_op(rounds, n):
    """Calls and WRU per job by phase and operation (median over rounds)."""
    rows = {}
    for phase in ("submit", "worker", "status"):
        stats = [r["phases"][phase] for r in rounds]
        for k in sorted({k for st in stats for k in st["calls"]}):
            caller, svc, op = k.split()
            med = lambda kind, key: statistics.median(st[kind].get(key, 0) / n for st in stats)
            wru = (med("wru", op), med("index_wru", op)) if svc == "dynamodb" and caller != "poller" else None
            rru = med("rru", op) if svc == "dynamodb" and caller != "poller" else None
            rows[(phase, f"{svc} {op}" + (" (poller)" if caller == "poller" else ""))] = (med("calls", k), wru, rru)
    return rows


def variants(args):
    return ("jobkit", "peer") + (("baseline",) if args.baseline else ())


def busy_args(args, n):
    """The busy tenant's workload: one user submits `n` jobs under a cap of `n`. Every submit comes
    before the first job is drained, and a queued job holds its slot, so the owner's in-flight count
    climbs to `n` (the whole cap) before any finishes: the slot ledger's worst case."""
    return argparse.Namespace(**{**vars(args), "jobs": n, "users": 1, "cap": n})


def busy_report(results, args):
    """The busy-tenant table: one row per in-flight count, jobkit against the peer."""
    rows = ["| one user, jobs in flight (= cap) | jobkit WRU/job | of which index | peer WRU/job | jobkit / peer "
            "| jobkit RRU/job | jobkit DynamoDB calls/job | jobkit $/M jobs | peer $/M jobs |",
            "|---|---|---|---|---|---|---|---|---|"]
    for n in args.busy:
        m = {v: [metrics(r, n) for r in results if r["workload"] == f"busy-{n}" and r["variant"] == v]
             for v in ("jobkit", "peer")}
        if not m["jobkit"] or not m["peer"]:
            continue
        med = lambda side, key: statistics.median(x[key] for x in m[side])
        jw, pw = med("jobkit", "DynamoDB WRU/job"), med("peer", "DynamoDB WRU/job")
        rows.append(f"| {n} | {jw:.2f} | {med('jobkit', 'DynamoDB index WRU/job'):.2f} | {pw:.2f} | {jw / pw:.2f} "
                    f"| {med('jobkit', 'DynamoDB RRU/job'):.2f} | {med('jobkit', 'DynamoDB calls/job'):.2f} "
                    f"| {med('jobkit', '$ per million jobs'):.2f} | {med('peer', '$ per million jobs'):.2f} |")
    return "\n".join(rows)


def busy_section(table, args):
    if not table:
        return ""
    return f"""## A busy tenant

The typical production caller is one service identity with many jobs in flight. One user submits N `echo`
jobs (each with an `Idempotency-Key`) under a per-user cap of N, then the queue is drained: every job is
queued, so holds its slot, before the first finishes, and the in-flight count climbs to N. One round per
side and count. jobkit's slot ledger is split in pages of at most 24 members (each under 1 KB), so its
bill per job does not grow with N; the peer's counter item is constant-size too.

{table}

"""


def report(results, args, command):
    n = args.jobs
    sides = variants(args)
    busy = busy_report(results, args) if args.busy else ""
    results = [r for r in results if r["workload"] == "spread"]
    by = {v: [metrics(r, n) for r in results if r["variant"] == v] for v in sides}
    names = list(by["jobkit"][0].keys())
    head = "| per job (Idempotency-Key on, per-user cap %d) | jobkit | Powertools peer | jobkit / peer |" % args.cap
    if args.baseline:
        head += f" jobkit at {args.baseline_rev} | jobkit / jobkit at {args.baseline_rev} |"
    lines = [head, "|---" * head.count(" |") + "|"]
    cell = lambda m, s: f"{fmt(m)}" + (f" ({s})" if s else "")
    for name in names:
        (jm, js), (pm, ps) = spread([m[name] for m in by["jobkit"]]), spread([m[name] for m in by["peer"]])
        ratio = lambda other: f"{jm / other:.2f}" if other else "–"
        line = f"| {name} | {cell(jm, js)} | {cell(pm, ps)} | {ratio(pm)} |"
        if args.baseline:
            bm, bs = spread([m[name] for m in by["baseline"]])
            line += f" {cell(bm, bs)} | {ratio(bm)} |"
        lines.append(line)
    table = "\n".join(lines)

    ops = {v: per_op([r for r in results if r["variant"] == v], n) for v in sides}
    op_lines = ["| side | phase | call | calls/job | WRU/job (of which index) | RRU/job |", "|---|---|---|---|---|---|"]
    for v, rows in ops.items():
        for (phase, op), (calls, wru, rru) in rows.items():
            w = f"{wru[0]:.2f} ({wru[1]:.2f})" if wru and wru[0] else ""
            r = f"{rru:.2f}" if rru else ""
            op_lines.append(f"| {v} | {phase} | {op} | {calls:.2f} | {w} | {r} |")

    ledgers = [f"{r['variant']} round {r['round'] + 1}: {r['ledger']['completed_once']}/{r['ledger']['jobs']} completed once"
               + (f" — {r['ledger']['problems']}" if r["ledger"]["problems"] else "") for r in results]
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()
    rev = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True,
                         text=True).stdout.strip()
    baseline = (f"; the \"baseline\" side is the same functions built from commit `{args.baseline_rev}`, "
                "same profile, against the same template" if args.baseline else "")
    machine = f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, Python {platform.python_version()}"
    doc = f"""# Benchmarks

jobkit's three Lambda functions against the same functions written in Python with AWS Lambda Powertools
(`bench/peer/`), on the same local emulator, same workload, alternating rounds.

- date: {datetime.date.today().isoformat()}
- machine: {machine}; 1-minute load average {args.load[0]:.1f} at the start, {args.load[-1]:.1f} at the end
- command: `{command}`
- jobkit source: `{rev}` (the work tree the functions were built from){baseline}
- workload: {n} `echo` jobs per round, each with an `Idempotency-Key`, spread over {args.users} users, per-user
  in-flight cap {args.cap} on both sides; submit all, drain the queue through the worker, GET each job once;
  {args.rounds} round(s) per variant. Medians over rounds, with (min–max) when there are several.

{table}

Prices (us-east-1): DynamoDB on-demand $0.625 per million WRU and $0.125 per million RRU; SQS standard $0.40 per
million requests; Lambda arm64 $0.20 per million requests + $0.0000133334 per GB-s at 128 MB (billed duration =
measured invocation time, rounded up to 1 ms); HTTP API $1.00 per million requests (submit + one status poll
per job). SQS requests include the event source mapping's ReceiveMessage and DeleteMessageBatch (Lambda's
poller bills them too), listed apart as "poller".

Numbers from a shared 2-core machine are noisy: compare the ratios of one run, not figures across runs. Write
and read units and DynamoDB calls are deterministic for a given workload; a few SQS calls are timed (jobkit's
queue-depth read at most every 5 s per instance, visibility changes for jobs still running after a while), so
their count per job varies a little between rounds and shrinks with more jobs.

{busy_section(busy, args)}## Calls per job, by operation

{chr(10).join(op_lines)}

## Ledger

{chr(10).join("- " + l for l in ledgers)}

## How measured

- **Functions**: the release-like `bench` profile binaries (`target/bench/release/{{submit,worker,status}}`) and
  the peer under `python -m awslambdaric` (the real AWS runtime interface client), each one process behind a
  loopback Lambda Runtime API (`bench/runtime_api.py`) with the Lambda environment (128 MB, JSON logs).
- **init**: process spawn to its first `GET /runtime/invocation/next`. **Latency**: event handed out to
  response posted. **CPU**: the process's own accounting (`/proc/<pid>/task/*/schedstat`) across each
  invocation. **Peak RSS**: `VmHWM` before the process is stopped.
- **API Gateway** is played by the driver (HTTP API payload 2.0, `requestContext.authorizer.jwt.claims.sub`);
  the **SQS event source mapping** too: ReceiveMessage (10, all attributes) → invoke with an SQS event →
  DeleteMessageBatch of the records not in `batchItemFailures`. Queues and table are created from
  `template.yaml`'s own definitions, fresh per round; the peer gets an extra idempotency table.
- **AWS calls and units**: every function's `AWS_ENDPOINT_URL` is a counting proxy (`bench/proxy.py`) in front
  of ministack. Write units: ceil(max(item size before, after) / 1 KB), x2 per item of a transaction, 1 for a
  failed conditional write, plus each GSI write (item in/out of the index, key change = 2 writes, or a
  projected attribute changed; index writes at 1x also inside transactions). Read units: ceil(size / 4 KB), x0.5
  when eventually consistent. Item sizes are the proxy's own, from DynamoDB's size rules (an approximation:
  attribute names + values, numbers (digits+1)/2+1 bytes, 3 bytes + 1 per element for lists and maps), with
  each item's before-image remembered from the writes it saw. ministack also returns ConsumedCapacity (the
  proxy asks for it and strips it from the answer): its figures are the "emulator's ConsumedCapacity" rows, a
  cross-check; the cost uses the proxy's figures, which also count failed conditional writes.
"""
    return table, doc


# Sections of BENCHMARKS.md that other modes write (bench/wait.py's "Waiting", bench/sweep.py's "The
# sweep"): a run of the main workload keeps them.
KEPT_SECTIONS = ("## Waiting", "## The sweep")


def kept_sections(path):
    try:
        with open(path) as f:
            old = f.read()
    except FileNotFoundError:
        return ""
    kept = []
    for heading in KEPT_SECTIONS:
        start = old.find("\n" + heading)
        if start >= 0:
            end = old.find("\n## ", start + 1)
            kept.append(old[start:end if end >= 0 else len(old)].rstrip() + "\n")
    return "".join(kept)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--short", action="store_true")
    p.add_argument("--rounds", type=int)
    p.add_argument("--jobs", type=int)
    p.add_argument("--users", type=int, help="users the jobs are spread over (default jobs/10)")
    p.add_argument("--cap", type=int, default=100)
    p.add_argument("--busy", type=lambda v: [int(x) for x in v.split(",") if x], default=[],
                   help="also one round per side of a busy tenant per count: 1 user, N jobs, cap N (e.g. 100,1000,5000)")
    p.add_argument("--check", action="store_true")
    p.add_argument("--max-wru", type=float)
    p.add_argument("--max-sqs", type=float)
    p.add_argument("--bin-dir", required=True)
    p.add_argument("--peer-python", required=True)
    p.add_argument("--proxy-url", required=True)
    p.add_argument("--emulator-url", required=True)
    p.add_argument("--out", help="the report (default bench/BENCHMARKS.md; --short: target/bench/short.md)")
    p.add_argument("--command", default="bash bench/run.sh")
    p.add_argument("--worker-timeout", type=float, default=300)
    p.add_argument("--baseline", metavar="REV", help="also run the functions of commit REV (run.sh builds them)")
    p.add_argument("--baseline-bin-dir")
    p.add_argument("--only", choices=("jobkit", "peer", "baseline"), help="run one side (debugging; no report)")
    p.add_argument("--wait", type=int, metavar="N",
                   help="only the waiting workloads (bench/wait.py): N jobs that park and are completed, N sleep "
                        "timers fired by the due task; jobkit alone (the peer has no waitpoints)")
    p.add_argument("--sweep", type=int, metavar="N",
                   help="only the sweep's cost (bench/sweep.py): N jobs, a sweep run, N more, another run; with "
                        "--baseline-bin-dir, also for the functions there")
    args = p.parse_args()
    if args.baseline and (args.short or not args.baseline_bin_dir):
        p.error("--baseline compares timings: run it through run.sh, without --short")
    if args.baseline:
        args.baseline_bin_dir = os.path.abspath(args.baseline_bin_dir)
        args.baseline_rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", args.baseline],
                                           capture_output=True, text=True, check=True).stdout.strip()
    args.bin_dir, args.peer_python = os.path.abspath(args.bin_dir), os.path.abspath(args.peer_python)
    args.out = args.out or (os.path.join(ROOT, "target", "bench", "short.md") if args.short
                            else os.path.join(HERE, "BENCHMARKS.md"))
    args.rounds = args.rounds or (1 if args.short else 5)
    args.jobs = args.jobs or (50 if args.short else 200)
    args.users = args.users or max(1, args.jobs // 10)
    args.run_id = uuid.uuid4().hex[:6]
    logs = os.path.join(ROOT, "target", "bench", "logs", args.run_id)
    os.makedirs(logs, exist_ok=True)

    args.load = [os.getloadavg()[0]]
    if args.wait:
        import wait
        return wait.main(args, logs)
    if args.sweep:
        import sweep
        return sweep.main(args, logs)
    results = []
    sides = variants(args)
    for rnd in range(args.rounds):
        # Each side goes first, second, ... in turn: the machine's drift falls on all of them.
        for variant in sides[rnd % len(sides):] + sides[:rnd % len(sides)]:
            if args.only and variant != args.only:
                continue
            print(f"round {rnd + 1}/{args.rounds}: {variant} ...", file=sys.stderr, flush=True)
            results.append(run_round(variant, rnd, args, logs))
    for n in args.busy:
        wl = busy_args(args, n)
        for variant in sides:
            if args.only and variant != args.only:
                continue
            print(f"busy tenant, {n} in flight: {variant} ...", file=sys.stderr, flush=True)
            results.append(run_round(variant, 0, wl, logs, f"busy-{n}"))
            if args.only:  # a long run's rounds are not lost to a stop
                m = metrics(results[-1], n)
                print(json.dumps({"workload": f"busy-{n}", "ledger": results[-1]["ledger"], **m}), flush=True)
    args.load.append(os.getloadavg()[0])
    with open(os.path.join(logs, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    if args.only:
        for r in results:
            print(json.dumps(metrics(r, r["jobs"]), indent=1))
        return
    table, doc = report(results, args, args.command)
    print(table)
    if args.busy:
        print("\n" + busy_report(results, args))
    doc += kept_sections(args.out)
    with open(args.out, "w") as f:
        f.write(doc)
    print(f"\nwrote {os.path.relpath(args.out, ROOT)} (raw results and function logs: {os.path.relpath(logs, ROOT)})")

    ok = True
    for r in results:
        if r["ledger"]["problems"]:
            print(f"FAIL: {r['variant']} round {r['round']}: {r['ledger']['problems']}", file=sys.stderr)
            ok = False
    jobkit = [metrics(r, r["jobs"]) for r in results if r["variant"] == "jobkit"]
    for limit, key in ((args.max_wru, "DynamoDB WRU/job"), (args.max_sqs, "SQS requests/job")):
        worst = max(m[key] for m in jobkit)
        if limit is not None and worst > limit:
            print(f"FAIL: jobkit {key} = {worst:.2f} > {limit}", file=sys.stderr)
            ok = False
    if args.check and not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
