"""Schemathesis hooks for tests/openapi/run.sh: openapi.yaml as `jobctl dev` serves it.

openapi.yaml describes the deployed API, API Gateway included. The run drives `jobctl dev`, which has no
gateway in front of the functions' code and only the built-in job kinds, so before loading the schema
this narrows it, and nothing else:

- `kind` is one of the built-ins (`echo`, `sleep`): a random kind would only ever meet `422 unknown_kind`
  and no job would exist for the stateful phase to read and cancel;
- `callback_url` is a loopback URL `jobctl dev` accepts: a random public https URL cannot be resolved
  without DNS, so it would only ever meet `400 invalid_callback_url`;
- the answers API Gateway gives itself (`GatewayError` bodies, `403`, its throttling `429`) cannot occur,
  so they are dropped, and `Retry-After` becomes required where the functions always send it
  (`429`, `503`): the run checks the functions' code, strictly;
- a generated `cursor` that matches openapi.yaml's pattern becomes a well-formed position (see `map_case`),
  since only the server's own cursors are valid.
"""

import base64
import hashlib
import re

import schemathesis

BUILTIN_KINDS = ["echo", "sleep"]
DEV_CALLBACK_URL = "http://127.0.0.1:9/jobkit-callback"
GATEWAY_ONLY_RESPONSES = {"#/components/responses/Forbidden", "#/components/responses/GatewayThrottled"}
GATEWAY_ERROR = "#/components/schemas/GatewayError"


@schemathesis.hook
def before_load_schema(context, raw_schema):
    components = raw_schema["components"]
    schemas = components["schemas"]
    schemas["Kind"] = {"type": "string", "enum": BUILTIN_KINDS}
    schemas["CallbackUrl"] = {"type": "string", "enum": [DEV_CALLBACK_URL]}

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

    for item in raw_schema["paths"].values():
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            for status in [s for s, r in responses.items() if r.get("$ref") in GATEWAY_ONLY_RESPONSES]:
                del responses[status]

    # No bearer token or signature in dev mode: jobctl dev plays the authorizer (X-User-Id, from run.sh).
    raw_schema["security"] = []


# A cursor is a position the server encoded (base64url of "<submitted_at millis>.<job id>"), so only the
# server's own cursors are valid: a generated one, however well-formed per openapi.yaml, is rejected with
# `400 invalid_cursor`, as the contract says. For the positive-data check to mean something on
# `GET /jobs`, a generated cursor that matches openapi.yaml's pattern is replaced with a well-formed
# position derived from it; cursors outside the pattern (the negative cases) are sent as generated.
CURSOR_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _position_from(text):
    digest = hashlib.sha256(text.encode()).digest()
    millis = int.from_bytes(digest[:6], "big") % (1 << 43)
    value = int.from_bytes(digest[6:22], "big") >> 2  # 126 bits: the first character stays in 0-7
    job_id = "".join(CROCKFORD[(value >> (5 * (25 - i))) & 31] for i in range(26))
    raw = f"{millis}.{job_id}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _is_position(cursor):
    """Whether the cursor already is one (a server's `next_cursor`, followed by a link)."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except ValueError:
        return False
    return re.fullmatch(r"[0-9]+\.[0-7][0-9A-HJKMNP-TV-Z]{25}", text) is not None


@schemathesis.hook
def map_case(context, case):
    if context.operation is None or context.operation.label != "GET /jobs":
        return case
    query = case.query if isinstance(case.query, dict) else None
    cursor = query.get("cursor") if query else None
    if isinstance(cursor, str) and CURSOR_PATTERN.match(cursor) and not _is_position(cursor):
        query["cursor"] = _position_from(cursor)
    return case
