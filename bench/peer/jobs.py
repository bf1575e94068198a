"""What the peer's three functions share: configuration, the AWS clients, the job record."""

import os
import time

import boto3

TABLE = boto3.resource("dynamodb").Table(os.environ["JOBS_TABLE"])
SQS = boto3.client("sqs")
QUEUE_URL = os.environ["QUEUE_URL"]
MAX_IN_FLIGHT = int(os.environ.get("MAX_IN_FLIGHT_PER_USER", "100"))  # 0 = no cap
MAX_ATTEMPTS = 5
TERMINAL = {"completed", "failed", "dead_letter", "cancelled"}


def now_ms():
    return int(time.time() * 1000)


def counter_key(user):
    """The per-user in-flight counter: an item of its own, outside the by_user index."""
    return {"job_id": f"user#{user}"}
