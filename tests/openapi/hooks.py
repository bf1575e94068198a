"""Schemathesis hooks for tests/openapi/run.sh: openapi.yaml as `jobctl dev` serves it.

openapi.yaml describes the deployed API, API Gateway included. The run drives `jobctl dev`, which has no
gateway in front of the functions' code and only the built-in job kinds, so before loading the schema
this narrows it, and nothing else:

- `kind` is one of the built-ins (`echo`, `sleep`): a random kind would only ever meet `422 unknown_kind`
  and no job would exist for the stateful phase to read and cancel; and a submit's `input` follows its
  kind's input schema as `GET /kinds` of the server under test publishes it (submit checks inputs
  against the same types), so valid requests are accepted and inputs a kind cannot take are negative
  cases;
- `callback_url` is left out of generated submits: a generated host would be resolved and its events
  POSTed to whatever answers; tests/api.rs and tests/webhooks.rs cover callbacks; so is `run_at` (a
  generated time is past or beyond the retention; tests/waitpoints.rs covers it);
- the answers API Gateway gives itself (`GatewayError` bodies, `403`, its throttling `429`) cannot occur,
  so they are dropped, and `Retry-After` becomes required where the functions always send it
  (`429`, `503`): the run checks the functions' code, strictly;
- `/mcp` is dropped: JSON-RPC behind one path (its own suites drive it with MCP clients);
- a generated `cursor` is dropped from otherwise valid list requests (see `map_case`): cursors are signed,
  so only the server's own are valid; so is a well-formed generated `day` of `GET /usage` (only the 35
  days up to today are kept: a random date is `400 invalid_day`, as the contract says).
"""

import json
import os
import re
import urllib.request

import schemathesis

BUILTIN_KINDS = ["echo", "sleep"]
GATEWAY_ONLY_RESPONSES = {"#/components/responses/Forbidden", "#/components/responses/GatewayThrottled"}
GATEWAY_ERROR = "#/components/schemas/GatewayError"


@schemathesis.hook
def before_load_schema(context, raw_schema):
    components = raw_schema["components"]
    schemas = components["schemas"]
    schemas["Kind"] = {"type": "string", "enum": BUILTIN_KINDS}
    del schemas["SubmitRequest"]["properties"]["callback_url"]
    # A generated `run_at` is any time in any year: almost always past (now) or beyond the retention
    # (422); tests/waitpoints.rs covers delayed starts. `delay_seconds` stays (its range is the spec's).
    del schemas["SubmitRequest"]["properties"]["run_at"]
    # One variant per kind, each with its kind's input schema (a root schema: its `$schema` and
    # `title` are dropped; the built-ins have no `$defs`).
    request = schemas["SubmitRequest"]
    variants = []
    for kind in published_kinds():
        if kind["kind"] not in BUILTIN_KINDS:
            continue
        input_schema = {k: v for k, v in kind["input_schema"].items() if k not in ("$schema", "title")}
        assert "$defs" not in input_schema, kind
        variant = json.loads(json.dumps(request))
        variant["properties"]["kind"] = {"const": kind["kind"]}
        variant["properties"]["input"] = {**variant["properties"]["input"], **input_schema}
        variants.append(variant)
    assert sorted(v["properties"]["kind"]["const"] for v in variants) == BUILTIN_KINDS, variants
    schemas["SubmitRequest"] = {"oneOf": variants}

    for response in components["responses"].values():
        for media in response.get("content", {}).values():
            alternatives = media["schema"].get("oneOf")
            if alternatives:
                kept = [a for a in alternatives if a.get("$ref") != GATEWAY_ERROR]
                assert len(kept) == 1, kept
                media["schema"] = kept[0]
        retry_after = response.get("headers", {}).get("Retry-After")
        if retry_after is not None:
            response["headers"]["Retry-After"] = {
                "required": True,
                "schema": components["headers"]["RetryAfter"]["schema"],
            }

    # POST /mcp is JSON-RPC under one path: generated bodies only ever meet the transport's refusals.
    # tests/mcp.rs (rmcp's client) and cli/tests/dev.rs (the Python SDK's) drive it instead.
    del raw_schema["paths"]["/mcp"]

    for item in raw_schema["paths"].values():
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            for status in [s for s, r in responses.items() if r.get("$ref") in GATEWAY_ONLY_RESPONSES]:
                del responses[status]

    # No bearer token or signature in dev mode: jobctl dev plays the authorizer (X-User-Id, from run.sh).
    raw_schema["security"] = []


def published_kinds():
    """`GET /kinds` of the server under test (run.sh exports its URL)."""
    request = urllib.request.Request(
        os.environ["JOBKIT_OPENAPI_URL"] + "/kinds", headers={"X-User-Id": "schemathesis"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)["kinds"]


# A cursor is signed by the server (HMAC over the position, the caller and the filter), so a generated
# one, however well-formed per openapi.yaml, is rejected with `400 invalid_cursor`, as the contract says.
# For the positive-data check to mean something on `GET /jobs` (a job's `GET /jobs/{id}/steps`, a
# thread's `GET /threads/{id}`), a generated cursor that matches the pattern is dropped; the server's
# own cursors arrive through links, and cursors outside the pattern (the negative cases) are sent as
# generated.
CURSOR_PATTERNS = {
    "GET /jobs": re.compile(r"^[A-Za-z0-9_-]{1,256}$"),
    "GET /jobs/{id}/steps": re.compile(r"^[A-Za-z0-9_-]{1,512}$"),
    "GET /threads/{id}": re.compile(r"^[A-Za-z0-9_-]{1,512}$"),
}


# A day is valid only within the 35 days kept, which no static pattern says.
SERVER_ONLY = {
    "GET /usage": ("day", re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")),
    **{label: ("cursor", pattern) for label, pattern in CURSOR_PATTERNS.items()},
}


@schemathesis.hook
def map_case(context, case):
    found = context.operation and SERVER_ONLY.get(context.operation.label)
    if found is None:
        return case
    name, pattern = found
    query = case.query if isinstance(case.query, dict) else None
    value = query.get(name) if query else None
    if isinstance(value, str) and pattern.match(value):
        del query[name]
    return case
