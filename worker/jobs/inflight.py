"""Which jobs have a message in the broker now, so the reconciler re-sends only the lost ones.

A message is in flight while it waits in a queue, or (Redis) was handed to a worker within the last
`recent` seconds and not yet acknowledged. A Redis restarted without persistence, or a worker killed
between taking a message and claiming its job, leaves a `queued` job with no message: nothing would
ever run it. Reading the broker is best effort: `None` means "could not tell", and the caller then
re-sends nothing (a re-sent duplicate would be harmless, the lease drops it, but costs a process).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any

from worker.jobs.queues import QUEUES, is_redis, is_sql, redis_lists

logger = logging.getLogger(__name__)

UNACKED, UNACKED_INDEX = "unacked", "unacked_index"
"""kombu's Redis keys of delivered, unacknowledged messages (a hash and its delivery-time index)."""


def jobs_in_flight(broker_url: str, recent: float) -> set[int] | None:
    """Ids of the jobs whose message is in the broker (see the module's docstring), or None."""
    try:
        if is_redis(broker_url):
            return _redis(broker_url, recent)
        if is_sql(broker_url):
            return _sql(broker_url)
    except Exception as exc:  # the broker is down or busy: the next pass looks again
        logger.warning("could not read the broker's queues: %s", (str(exc).splitlines() or [""])[0])
    return None


def _redis(broker_url: str, recent: float) -> set[int]:
    import redis

    client = redis.Redis.from_url(broker_url, socket_timeout=10)
    try:
        payloads: list[bytes] = []
        for queue in QUEUES:
            for key in redis_lists(queue):
                payloads.extend(client.lrange(key, 0, -1))
        tags = client.zrangebyscore(UNACKED_INDEX, time.time() - recent, "+inf")
        for raw in client.hmget(UNACKED, tags) if tags else []:
            if raw is not None:
                payloads.append(json.dumps(json.loads(raw)[0]).encode())  # [message, exchange, key]
    finally:
        client.close()
    return {job for job in map(_job_id, payloads) if job is not None}


def _sql(broker_url: str) -> set[int]:
    from sqlalchemy import create_engine, text

    engine = create_engine(broker_url.partition("+")[2], connect_args=_sqlite_args(broker_url))
    try:
        with engine.connect() as conn:
            tables = set(engine.dialect.get_table_names(conn))
            if "kombu_message" not in tables:
                return set()
            rows = conn.execute(text("SELECT payload FROM kombu_message WHERE visible")).scalars()
            return {job for job in map(_job_id, rows) if job is not None}
    finally:
        engine.dispose()


def _sqlite_args(broker_url: str) -> dict[str, Any]:
    return {"timeout": 30} if "sqlite" in broker_url else {}


def _job_id(payload: bytes | str) -> int | None:
    """The job id in one kombu message carrying `ft.run_job` (JSON body, base64 on the wire)."""
    try:
        message = json.loads(payload)
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return int(args[0]) if isinstance(args, list) and args else None
    except Exception:  # not an ft message (or not JSON): not ours to count
        return None
