"""Submit: POST /jobs -> validate, idempotency (Powertools), per-user cap, PutItem, SendMessage, 202."""

import json
import os
import time
import uuid

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.exceptions import BadRequestError
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyValidationError
from botocore.exceptions import ClientError

from jobs import MAX_ATTEMPTS, MAX_IN_FLIGHT, QUEUE_URL, SQS, TABLE, counter_key, now_ms

logger = Logger()
app = APIGatewayHttpResolver()
persistence = DynamoDBPersistenceLayer(table_name=os.environ["IDEMPOTENCY_TABLE"])
idempotency = IdempotencyConfig(
    event_key_jmespath="[user, key]", payload_validation_jmespath="body", expires_after_seconds=86400
)
KINDS = {"echo", "sleep"}


class CapReached(Exception):
    pass


def take_slot(user):
    try:
        TABLE.update_item(
            Key=counter_key(user),
            UpdateExpression="ADD in_flight :one",
            ConditionExpression="attribute_not_exists(in_flight) OR in_flight < :cap",
            ExpressionAttributeValues={":one": 1, ":cap": MAX_IN_FLIGHT},
        )
    except ClientError as e:
        if e.response["Error"]["Code"] == "ConditionalCheckFailedException":
            raise CapReached() from e
        raise


def create_job(user, body, key=None):
    if MAX_IN_FLIGHT:
        take_slot(user)
    job_id = str(uuid.uuid4())
    now = now_ms()
    item = {
        "job_id": job_id, "user_id": user, "kind": body["kind"], "input": json.dumps(body["input"]),
        # The key of the stack's by_user_shard index (owner#n, n of 8), as jobkit writes it.
        "user_shard": f"{user}#{uuid.UUID(job_id).int % 8}",
        "status": "queued", "attempts": 0, "max_attempts": MAX_ATTEMPTS, "submitted_at": now,
        "updated_at": now, "expires_at": int(time.time()) + 7 * 86400,
    }
    if key:
        item["idempotency_key"] = key
    try:
        TABLE.put_item(Item=item)
        SQS.send_message(QueueUrl=QUEUE_URL, MessageBody=json.dumps({"job_id": job_id, "kind": body["kind"]}))
    except Exception:
        if MAX_IN_FLIGHT:
            TABLE.update_item(Key=counter_key(user), UpdateExpression="ADD in_flight :m",
                              ExpressionAttributeValues={":m": -1})
        raise
    return {"job_id": job_id, "status": "queued", "status_url": f"/jobs/{job_id}"}


@idempotent_function(data_keyword_argument="request", persistence_store=persistence, config=idempotency)
def create_job_once(request):
    return create_job(request["user"], request["body"], request["key"])


@app.post("/jobs")
def submit():
    user = app.current_event.request_context.authorizer.jwt_claim.get("sub")
    if not user:
        return Response(401, "application/json", json.dumps({"error": {"code": "unauthorized"}}))
    try:
        body = app.current_event.json_body
    except ValueError:
        raise BadRequestError("body is not JSON")
    if not isinstance(body, dict) or body.get("kind") not in KINDS or "input" not in body:
        raise BadRequestError("expected {kind, input} with a registered kind")
    key = app.current_event.headers.get("idempotency-key")
    try:
        if key:
            job = create_job_once(request={"user": user, "key": key, "body": body})
        else:
            job = create_job(user, body)
    except CapReached:
        return Response(429, "application/json", json.dumps({"error": {"code": "too_many_jobs"}}),
                        headers={"Retry-After": "5"})
    except IdempotencyValidationError:
        return Response(409, "application/json", json.dumps({"error": {"code": "idempotency_conflict"}}))
    return Response(202, "application/json", json.dumps(job), headers={"Location": job["status_url"]})


@logger.inject_lambda_context
def lambda_handler(event, context):
    idempotency.register_lambda_context(context)
    return app.resolve(event, context)
