"""Counting proxy in front of the AWS emulator (loopback only).

Every function under test uses it as AWS_ENDPOINT_URL. It forwards each request unchanged (except one
thing, below) and counts calls per service and operation, and DynamoDB read and write units per the
on-demand billing rules:

- a write costs ceil(max(item size before, after) / 1 KB) WRU; each item of a TransactWriteItems twice;
  a conditional write that fails costs 1 WRU (a cancelled transaction 2 per item);
- every global secondary index is billed again for a write that puts the item in, takes it out, moves
  it (a key change: delete + put), or changes an attribute the index projects; the index item's size;
- reads cost ceil(size / 4 KB) RRU, half that when eventually consistent, twice in TransactGetItems;
  a Scan is billed for every item it reads (its ScannedCount), not only those its filter returns: at the
  mean size of the items the proxy knows in that table.

Item sizes follow DynamoDB's rules (name bytes + value bytes; numbers (digits + 1) / 2 + 1 bytes; 3 bytes
per list/map plus 1 per element) -- an approximation, not AWS's exact accounting. The proxy knows each
item's before-image because every write to the (fresh) tables goes through it; after-images come from the
request (Put), from the response (UpdateItem: the proxy asks for ALL_NEW when the caller asked for nothing
and strips it from the answer) or, for updates inside transactions, from one consistent BatchGetItem
straight to the emulator (not counted). Index definitions come from DescribeTable (not counted).
The proxy also asks for ReturnConsumedCapacity=INDEXES (stripped from the answer) and keeps what the
emulator reports (ministack computes it) beside its own figures, as a cross-check.

Requests carrying the header `X-Bench-Caller: poller` (the harness playing Lambda's SQS poller) are
counted apart. GET /_bench/stats returns the counts, POST /_bench/reset clears them.

    python proxy.py --port 4611 --upstream http://127.0.0.1:4610
"""

import argparse
import http.client
import json
import math
import re
import sys
import threading
import time
import urllib.parse
import zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WRITE_OPS = {"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem", "BatchExecuteStatement"}
CAPACITY_OPS = WRITE_OPS | {"GetItem", "BatchGetItem", "TransactGetItems", "Query", "Scan"}
HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length", "accept-encoding"}


def value_size(v):
    (t, x), = v.items()
    if t == "S":
        return len(x.encode())
    if t == "N":
        digits = x.lstrip("-").replace(".", "").lstrip("0").rstrip("0") or "0"
        return (len(digits) + 1) // 2 + 1
    if t == "B":
        return len(x) * 3 // 4
    if t in ("BOOL", "NULL"):
        return 1
    if t in ("SS", "BS"):
        return sum(len(m.encode()) for m in x)
    if t == "NS":
        return sum(value_size({"N": m}) for m in x)
    if t == "L":
        return 3 + sum(1 + value_size(e) for e in x)
    if t == "M":
        return 3 + sum(1 + len(k.encode()) + value_size(e) for k, e in x.items())
    raise ValueError(t)


def item_size(item):
    return sum(len(k.encode()) + value_size(v) for k, v in item.items()) if item else 0


def units(size, unit):
    return max(1, math.ceil(size / unit))


class Table:
    def __init__(self, desc):
        self.keys = [k["AttributeName"] for k in desc["KeySchema"]]
        self.indexes = []
        for gsi in desc.get("GlobalSecondaryIndexes", []):
            p = gsi["Projection"]
            self.indexes.append((
                gsi["IndexName"],
                [k["AttributeName"] for k in gsi["KeySchema"]],
                p["ProjectionType"],
                set(p.get("NonKeyAttributes", [])),
            ))

    def key(self, item):
        return json.dumps([item.get(k) for k in self.keys], sort_keys=True)

    def index_wru(self, before, after):
        total = 0
        for _, ikeys, ptype, extra in self.indexes:
            def proj(item):
                if not item or not all(k in item for k in ikeys):
                    return None
                if ptype == "ALL":
                    return item
                keep = set(self.keys) | set(ikeys) | (extra if ptype == "INCLUDE" else set())
                return {k: v for k, v in item.items() if k in keep}
            b, a = proj(before), proj(after)
            if b is None and a is None:
                continue
            if b is None or a is None:
                total += units(item_size(a or b), 1024)
            elif any(b[k] != a[k] for k in ikeys):
                total += units(item_size(b), 1024) + units(item_size(a), 1024)
            elif a != b:
                total += units(max(item_size(a), item_size(b)), 1024)
        return total


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.calls = Counter()          # "caller service Operation" -> n
            self.wru = Counter()            # "Operation" -> table + index WRU
            self.index_wru = Counter()      # "Operation" -> the index part
            self.rru = Counter()
            self.failed_writes = Counter()  # conditional writes / transactions that failed
            self.emulator_wru = Counter()   # what the emulator reports as ConsumedCapacity, if it does
            self.emulator_index_wru = Counter()
            self.emulator_rru = Counter()

    def as_json(self):
        with self.lock:
            return {k: dict(getattr(self, k)) for k in ("calls", "wru", "index_wru", "rru", "failed_writes",
                                                    "emulator_wru", "emulator_index_wru", "emulator_rru")}


class Upstream:
    """One keep-alive connection per thread to the emulator."""

    def __init__(self, url):
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname, u.port
        self.local = threading.local()

    def request(self, method, path, body, headers):
        for attempt in (0, 1):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
            try:
                conn.request(method, path, body=body, headers=headers)
                r = conn.getresponse()
                return r.status, r.getheaders(), r.read()
            except (http.client.HTTPException, OSError):
                conn.close()
                self.local.conn = None
                if attempt:
                    raise

    def dynamodb(self, op, payload):
        status, _, body = self.request("POST", "/", json.dumps(payload).encode(), {
            "Content-Type": "application/x-amz-json-1.0",
            "X-Amz-Target": f"DynamoDB_20120810.{op}",
            "Authorization": "AWS4-HMAC-SHA256 Credential=test/20250101/us-east-1/dynamodb/aws4_request",
        })
        return json.loads(body) if status == 200 else None


def partiql_update(statement):
    """(table, key) of a parameterised `UPDATE "table" ... WHERE k = ? [AND k2 = ?]` statement."""
    text = statement["Statement"]
    m = re.match(r'\s*UPDATE\s+"([^"]+)"', text, re.I)
    where = re.search(r"\bWHERE\b", text, re.I)
    if not m or not where:
        raise ValueError(f"proxy: only parameterised UPDATE statements are billed: {text}")
    params = statement.get("Parameters", [])
    key, before_where = {}, text[:where.start()].count("?")
    for i, name in enumerate(re.findall(r'"?(\w+)"?\s*=\s*\?', text[where.end():])):
        key[name] = params[before_where + i]
    return m.group(1), key


class Dynamo:
    """Write- and read-unit accounting for the DynamoDB JSON protocol."""

    def __init__(self, upstream, stats):
        self.up, self.stats = upstream, stats
        self.tables = {}
        self.items = {}  # (table, key) -> last known item
        self.pending = {}  # (table, key) -> Event set once a transaction's read-back recorded the item
        self.lock = threading.Lock()

    def table(self, name):
        t = self.tables.get(name)
        if t is None:
            desc = self.up.dynamodb("DescribeTable", {"TableName": name})
            t = self.tables[name] = Table(desc["Table"])
        return t

    def before(self, name, key):
        with self.lock:
            return self.items.get((name, self.table(name).key(key)))

    def remember(self, name, key, item):
        with self.lock:
            self.items[(name, self.table(name).key(key))] = item

    def write_cost(self, name, before, after, factor):
        t = self.table(name)
        table = factor * units(max(item_size(before), item_size(after)), 1024)
        return table, t.index_wru(before, after)

    def add_write(self, op, table, index):
        with self.stats.lock:
            self.stats.wru[op] += table + index
            self.stats.index_wru[op] += index

    def add_read(self, op, size, consistent, factor=1):
        with self.stats.lock:
            self.stats.rru[op] += factor * units(size, 4096) * (1 if consistent else 0.5)

    def fail(self, op, wru):
        with self.stats.lock:
            self.stats.wru[op] += wru
            self.stats.failed_writes[op] += 1

    def handle(self, op, req, forward):
        """Forwards `req` (`forward(bytes or None) -> (status, headers, body)`) and accounts for it.

        Returns the response and a callable to run after it is sent: the read-back of items updated in a
        transaction happens then, off the caller's latency. Later writes to those items wait for it.
        """
        strip_values = strip_capacity = False
        if op == "UpdateItem" and req.get("ReturnValues", "NONE") == "NONE":
            req["ReturnValues"], strip_values = "ALL_NEW", True
        if op in CAPACITY_OPS and req.get("ReturnConsumedCapacity", "NONE") == "NONE":
            req["ReturnConsumedCapacity"], strip_capacity = "INDEXES", True
        for key in self.touched(op, req):
            event = self.pending.get(key)
            if event:
                event.wait(10)
        status, headers, body = forward(json.dumps(req).encode() if strip_values or strip_capacity else None)
        try:
            resp = json.loads(body) if body else {}
        except ValueError:
            resp = {}
        err = str(resp.get("__type", "")) if status != 200 else ""
        after_reply = getattr(self, "on_" + op, lambda *a: None)(req, resp, err)
        self.emulator_capacity(op, resp.get("ConsumedCapacity"))
        if status == 200 and (strip_values or strip_capacity):
            if strip_values:
                resp.pop("Attributes", None)
            if strip_capacity:
                resp.pop("ConsumedCapacity", None)
            body = json.dumps(resp).encode()
        return status, headers, body, after_reply

    def emulator_capacity(self, op, cc):
        """The emulator's own ConsumedCapacity, kept beside the proxy's model as a cross-check."""
        if not cc:
            return
        total = index = 0.0
        for c in cc if isinstance(cc, list) else [cc]:
            total += c.get("CapacityUnits", 0)
            index += sum(g.get("CapacityUnits", 0) for g in c.get("GlobalSecondaryIndexes", {}).values())
        with self.stats.lock:
            (self.stats.emulator_wru if op in WRITE_OPS else self.stats.emulator_rru)[op] += total
            if op in WRITE_OPS:
                self.stats.emulator_index_wru[op] += index

    def touched(self, op, req):
        if op in ("PutItem", "UpdateItem", "DeleteItem"):
            name = req["TableName"]
            return [(name, self.table(name).key(req.get("Key") or req["Item"]))]
        if op == "TransactWriteItems":
            out = []
            for entry in req["TransactItems"]:
                (_, a), = entry.items()
                out.append((a["TableName"], self.table(a["TableName"]).key(a.get("Key") or a.get("Item"))))
            return out
        return []

    def on_PutItem(self, req, resp, err):
        self.single("PutItem", req["TableName"], req["Item"], err, lambda: req["Item"])

    def on_DeleteItem(self, req, resp, err):
        self.single("DeleteItem", req["TableName"], req["Key"], err, lambda: None)

    def on_UpdateItem(self, req, resp, err):
        if req.get("ReturnValues") == "ALL_NEW":
            after = lambda: resp.get("Attributes")
        else:
            after = lambda: self.read_back(req["TableName"], [req["Key"]])[0]
        self.single("UpdateItem", req["TableName"], req["Key"], err, after)

    def single(self, op, name, key, err, after):
        if err:
            if "ConditionalCheckFailed" in err:
                self.fail(op, 1)
            return
        before = self.before(name, key)
        new = after()
        self.remember(name, key, new)
        self.add_write(op, *self.write_cost(name, before, new, 1))

    def on_TransactWriteItems(self, req, resp, err):
        acts = []
        for entry in req["TransactItems"]:
            (kind, a), = entry.items()
            acts.append((kind, a["TableName"], a.get("Key") or a.get("Item"), a.get("Item")))
        if err:
            if "TransactionCanceled" in err:
                self.fail("TransactWriteItems", 2 * len(acts))
            return None
        befores = [self.before(name, key) for _, name, key, _ in acts]
        updated = [(name, key) for kind, name, key, _ in acts if kind == "Update"]
        events = [threading.Event() for _ in updated]
        with self.lock:
            for (name, key), event in zip(updated, events):
                self.pending[(name, self.table(name).key(key))] = event

        def account():
            try:
                fresh = iter(self.read_back_many(updated))
                table_wru = index_wru = 0
                for (kind, name, key, item), before in zip(acts, befores):
                    after = {"Put": item, "Delete": None, "ConditionCheck": before}.get(kind)
                    if kind == "Update":
                        after = next(fresh)
                    if kind != "ConditionCheck":
                        self.remember(name, key, after)
                    t, i = self.write_cost(name, before, after, 2)
                    table_wru, index_wru = table_wru + t, index_wru + i
                self.add_write("TransactWriteItems", table_wru, index_wru)
            finally:
                with self.lock:
                    for (name, key), event in zip(updated, events):
                        self.pending.pop((name, self.table(name).key(key)), None)
                        event.set()
        return account

    def on_BatchWriteItem(self, req, resp, err):
        if err:
            return
        for name, reqs in req["RequestItems"].items():
            for r in reqs:
                if "PutRequest" in r:
                    item = r["PutRequest"]["Item"]
                    before, key, after = None, item, item
                else:
                    key, after = r["DeleteRequest"]["Key"], None
                before = self.before(name, key)
                self.remember(name, key, after)
                self.add_write("BatchWriteItem", *self.write_cost(name, before, after, 1))

    def on_BatchExecuteStatement(self, req, resp, err):
        """PartiQL writes, each billed as the single-item write it is (UPDATE statements keyed by their
        WHERE clause's `key = ?` parameters); a statement whose condition failed costs 1 WRU."""
        if err:
            return
        stmts = [partiql_update(s) for s in req["Statements"]]
        errors = [a.get("Error", {}).get("Code", "") for a in resp.get("Responses", [])]
        fresh = iter(self.read_back_many([st for st, e in zip(stmts, errors) if not e]))
        for (name, key), e in zip(stmts, errors):  # `single` reads an after-image only for those that landed
            self.single("BatchExecuteStatement", name, key, e, lambda: next(fresh))

    def read_back(self, name, keys):
        return self.read_back_many([(name, k) for k in keys])

    def read_back_many(self, pairs):
        if not pairs:
            return []
        request = {}
        for name, key in pairs:
            request.setdefault(name, {"Keys": [], "ConsistentRead": True})["Keys"].append(key)
        got = (self.up.dynamodb("BatchGetItem", {"RequestItems": request}) or {}).get("Responses", {})
        found = {}
        for name, items in got.items():
            for item in items:
                found[(name, self.table(name).key(item))] = item
        return [found.get((name, self.table(name).key(key))) for name, key in pairs]

    def known_size(self, name, key, returned):
        with self.lock:
            full = self.items.get((name, self.table(name).key(key)))
        return item_size(full) if full else item_size(returned)

    def on_GetItem(self, req, resp, err):
        if not err:
            size = self.known_size(req["TableName"], req["Key"], resp.get("Item"))
            self.add_read("GetItem", size, req.get("ConsistentRead", False))

    def on_BatchGetItem(self, req, resp, err):
        for name, spec in ({} if err else req["RequestItems"]).items():
            for key in spec["Keys"]:
                self.add_read("BatchGetItem", self.known_size(name, key, None), spec.get("ConsistentRead", False))

    def on_TransactGetItems(self, req, resp, err):
        for entry in ([] if err else req["TransactItems"]):
            g = entry["Get"]
            self.add_read("TransactGetItems", self.known_size(g["TableName"], g["Key"], None), True, 2)

    def on_Query(self, req, resp, err, op="Query"):
        if not err:
            size = sum(item_size(i) for i in resp.get("Items", []))
            self.add_read(op, size, req.get("ConsistentRead", False))

    def on_Scan(self, req, resp, err):
        if err:
            return
        name = req["TableName"]
        with self.lock:
            sizes = [item_size(i) for (t, _), i in self.items.items() if t == name and i]
        returned = sum(item_size(i) for i in resp.get("Items", []))
        scanned = resp.get("ScannedCount", len(resp.get("Items", [])))
        size = max(returned, scanned * sum(sizes) / len(sizes)) if sizes else returned
        self.add_read("Scan", size, req.get("ConsistentRead", False))


def make_handler(upstream, stats, dynamo):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args):
            pass

        def reply(self, status, headers, body):
            self.send_response(status)
            for k, v in headers:
                if k.lower() == "x-amz-crc32":  # the body may have been rewritten
                    v = str(zlib.crc32(body))
                if k.lower() not in HOP:
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/_bench/stats":
                return self.reply(200, [("Content-Type", "application/json")], json.dumps(stats.as_json()).encode())
            self.forward()

        def do_POST(self):
            if self.path == "/_bench/reset":
                stats.reset()
                return self.reply(200, [], b"{}")
            self.forward()

        do_PUT = do_DELETE = do_HEAD = do_GET

        def forward(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
            started = time.monotonic()
            caller = self.headers.get("X-Bench-Caller", "function")
            service, op = classify(self.headers, self.path, body)
            with stats.lock:
                stats.calls[f"{caller} {service} {op}"] += 1

            def send(new_body=None):
                b = body if new_body is None else new_body
                return upstream.request(self.command, self.path, b, {**headers, "Content-Length": str(len(b))})

            after_reply = None
            if service == "dynamodb" and body:
                status, rheaders, rbody, after_reply = dynamo.handle(op, json.loads(body), send)
            else:
                status, rheaders, rbody = send()
            try:
                self.reply(status, rheaders, rbody)
            except (BrokenPipeError, ConnectionResetError):
                print(f"proxy: {caller} hung up before the answer to {service} {op} "
                      f"({time.monotonic() - started:.1f} s)", file=sys.stderr, flush=True)
                self.close_connection = True
            if after_reply:
                self.wfile.flush()
                after_reply()

    return Handler


def classify(headers, path, body):
    target = headers.get("X-Amz-Target", "")
    if target.startswith("DynamoDB_"):
        return "dynamodb", target.split(".", 1)[1]
    if target.startswith("AmazonSQS."):
        return "sqs", target.split(".", 1)[1]
    if target:
        return target.split(".", 1)[0], target.split(".", 1)[-1]
    form = urllib.parse.parse_qs(body.decode(errors="replace")) if body else {}
    form.update(urllib.parse.parse_qs(urllib.parse.urlsplit(path).query))
    if "Action" in form:
        return "sqs", form["Action"][0]
    return "other", path.split("?")[0]


def serve(port, upstream_url):
    stats = Stats()
    up = Upstream(upstream_url)
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(up, stats, Dynamo(up, stats)))
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True)
    a = p.parse_args()
    serve(a.port, a.upstream)
