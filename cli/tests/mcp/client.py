"""The official Python MCP client (PyPI `mcp`) against `jobctl dev`'s `POST /mcp`, as an IDE assistant
would use it: list the tools, submit a job, poll get_job to its result, and submit a kind that does not
exist. Prints what it saw as one JSON document; cli/tests/dev.rs checks it.

Usage: python client.py http://127.0.0.1:PORT/mcp
"""

import asyncio
import json
import sys
import time

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client


def structured(result):
    """A tool result as data: its structured content, else its text parsed as JSON."""
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(result.content[0].text)


async def main(url):
    # A deployed API wants `Authorization: Bearer <token>` here; jobctl dev plays the authorizer.
    http = httpx2.AsyncClient(headers={"Authorization": "Bearer dev-token"}, timeout=30)
    async with http, streamable_http_client(url, http_client=http) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = (await session.list_tools()).tools
            submit = next(t for t in tools if t.name == "submit_job")
            accepted = await session.call_tool(
                "submit_job", {"kind": "sleep", "input": {"ms": 300}, "idempotency_key": "py-1"}
            )
            job_id = structured(accepted)["job_id"]
            deadline = time.monotonic() + 30
            while True:
                job = structured(await session.call_tool("get_job", {"job_id": job_id}))
                if job["status"] in ("completed", "failed", "cancelled", "dead_letter"):
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"the job did not finish: {job}")
                await asyncio.sleep(0.2)
            refused = await session.call_tool("submit_job", {"kind": "nope", "input": {}})
            print(
                json.dumps(
                    {
                        "tools": [t.name for t in tools],
                        "kinds": submit.input_schema["properties"]["kind"]["enum"],
                        "accepted": structured(accepted),
                        "job": job,
                        "refused": {"isError": refused.is_error, "body": structured(refused)},
                    }
                )
            )


asyncio.run(main(sys.argv[1]))
