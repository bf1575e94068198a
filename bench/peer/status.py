"""Status: GET /jobs/{id} for the caller's own job."""

import json

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from aws_lambda_powertools.event_handler.exceptions import NotFoundError, UnauthorizedError

from jobs import TABLE

logger = Logger()
app = APIGatewayHttpResolver()
FIELDS = ("job_id", "kind", "status", "attempts", "max_attempts", "submitted_at", "started_at", "finished_at")


@app.get("/jobs/<job_id>")
def get_job(job_id):
    user = app.current_event.request_context.authorizer.jwt_claim.get("sub")
    if not user:
        raise UnauthorizedError("no caller")
    item = TABLE.get_item(Key={"job_id": job_id}).get("Item")
    if not item or item.get("user_id") != user:
        raise NotFoundError("no such job")
    view = {k: int(item[k]) if k in item and not isinstance(item[k], str) else item.get(k) for k in FIELDS}
    view["input"] = json.loads(item["input"])
    if "result" in item:
        view["result"] = json.loads(item["result"])
    return view


@logger.inject_lambda_context
def lambda_handler(event, context):
    return app.resolve(event, context)
