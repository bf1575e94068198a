"""Worker: an SQS batch (Powertools BatchProcessor, partial batch failures) -> claim, run, record."""

import json

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from botocore.exceptions import ClientError

from jobs import MAX_IN_FLIGHT, TABLE, TERMINAL, counter_key, now_ms

logger = Logger()
processor = BatchProcessor(event_type=EventType.SQS)
HANDLERS = {"echo": lambda payload: payload}


def claim(job_id):
    """Conditional UpdateItem: queued/retrying -> running. None if the job is already finished."""
    try:
        return TABLE.update_item(
            Key={"job_id": job_id},
            UpdateExpression="SET #s = :running, attempts = attempts + :one, started_at = :now, updated_at = :now",
            ConditionExpression="#s IN (:queued, :retrying)",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":running": "running", ":queued": "queued", ":retrying": "retrying",
                                       ":one": 1, ":now": now_ms()},
            ReturnValues="ALL_NEW",
        )["Attributes"]
    except ClientError as e:
        if e.response["Error"]["Code"] != "ConditionalCheckFailedException":
            raise
    current = TABLE.get_item(Key={"job_id": job_id}, ConsistentRead=True).get("Item")
    if current and current["status"] in TERMINAL:
        return None  # a duplicate delivery of a finished job
    raise RuntimeError(f"job {job_id} is not claimable ({current and current['status']})")


def record_handler(record: SQSRecord):
    job_id = json.loads(record.body)["job_id"]
    job = claim(job_id)
    if job is None:
        return
    result = HANDLERS[job["kind"]](json.loads(job["input"]))
    now = now_ms()
    TABLE.update_item(
        Key={"job_id": job_id},
        UpdateExpression="SET #s = :done, #r = :result, finished_at = :now, updated_at = :now",
        ConditionExpression="#s = :running",
        ExpressionAttributeNames={"#s": "status", "#r": "result"},
        ExpressionAttributeValues={":done": "completed", ":result": json.dumps(result), ":now": now,
                                   ":running": "running"},
    )
    if MAX_IN_FLIGHT:
        TABLE.update_item(Key=counter_key(job["user_id"]), UpdateExpression="ADD in_flight :m",
                          ExpressionAttributeValues={":m": -1})


@logger.inject_lambda_context
def lambda_handler(event, context):
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
