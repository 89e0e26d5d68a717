"""Sending the one message ft sends, "run job N", and telling a user when the broker cannot take it.

The catalog is the truth about a job; the message carries only its id, so a lost message loses no
work (the reconciler sends it again) and a duplicate runs nothing twice (the lease drops it).
"""

from __future__ import annotations

import time

from celery import Celery
from sqlalchemy.engine import make_url

from catalog.db import Catalog
from catalog.errors import ServiceUnavailable
from catalog.jobs import claim_job, finish_job
from catalog.models import Job
from worker.jobs.queues import broker_priority, is_sql

TASK_NAME = "ft.run_job"
SEND_TIMEOUT_S = 10.0


def redact(url: str) -> str:
    """The broker URL without its password, for messages."""
    scheme, sep, rest = url.partition("+") if is_sql(url) else ("", "", url)
    try:
        shown = make_url(rest).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy-style URL (e.g. redis+socket://)
        shown = rest
    return f"{scheme}{sep}{shown}"


def check_broker(app: Celery, timeout: float = SEND_TIMEOUT_S) -> None:
    """Raise ServiceUnavailable (one line) unless the broker answers."""
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=timeout)
            conn.default_channel  # noqa: B018  # the SQL transport only opens its database here
    except Exception as exc:
        raise ServiceUnavailable(_unreachable(app.conf.broker_url, exc)) from exc


def declare_queues(app: Celery, queues: list[str], attempts: int = 5) -> None:
    """Make sure `queues` exist on an SQL broker before anything is sent to or read from them.

    kombu's SQL transport creates a queue's row by a look then an insert, guarded by a lock of its own
    process only: a worker starting while `ft submit` sends its first message (both on a new broker
    database) can both insert, and the loser fails with `UNIQUE constraint failed: kombu_queue.name`.
    Creating kombu's tables on a new database races the same way. The winner's row (or table) is there
    by then, so declaring again after a rollback finds it. Redis needs none.
    """
    if not is_sql(app.conf.broker_url):
        return
    from kombu import Queue
    from sqlalchemy.exc import IntegrityError, OperationalError

    for name in queues:
        for attempt in range(attempts):
            try:
                with app.connection_for_write() as conn:
                    channel = conn.default_channel  # its first use creates kombu's tables: a race too
                    try:
                        Queue(name, routing_key=name)(channel).declare()
                    except (IntegrityError, OperationalError):
                        channel.session.rollback()
                        raise
                break
            except (IntegrityError, OperationalError) as exc:  # the other process won; look again
                if attempt == attempts - 1:
                    raise ServiceUnavailable(_unreachable(app.conf.broker_url, exc)) from exc
                time.sleep(0.05 * (attempt + 1))
            except Exception as exc:
                raise ServiceUnavailable(_unreachable(app.conf.broker_url, exc)) from exc


def send_job(app: Celery, job_id: int, *, queue: str, priority: int) -> None:
    """Send the message "run job `job_id`" to `queue`. Raises ServiceUnavailable if it cannot."""
    declare_queues(app, [queue])
    try:
        app.send_task(
            TASK_NAME,
            args=[job_id],
            queue=queue,
            routing_key=queue,
            priority=broker_priority(app.conf.broker_url, priority),
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1},
        )
    except Exception as exc:
        raise ServiceUnavailable(_unreachable(app.conf.broker_url, exc)) from exc


def send_or_fail(app: Celery, catalog: Catalog, job: Job) -> None:
    """Send the message for a job that is already committed as `queued`; if the broker cannot take
    it, mark the job failed with the reason (so it does not wait forever) and re-raise."""
    try:
        send_job(app, job.id, queue=job.queue, priority=job.priority)
    except ServiceUnavailable as exc:
        _fail_unsent(catalog, job.id, str(exc))
        raise


def purge_consumed(broker_url: str) -> int:
    """Delete the messages an SQL broker has handed out; returns how many. kombu's SQL transport only
    marks a delivered message invisible and never deletes it, so `kombu_message` would grow by one row
    per job forever. An invisible row is never delivered again (a message whose job died unacked is
    re-sent by the reconciler, not restored from its row), so removing it loses nothing. Redis deletes
    its own: nothing to do there."""
    if not is_sql(broker_url):
        return 0
    from sqlalchemy import create_engine, inspect, text

    url = broker_url.partition("+")[2]
    engine = create_engine(url, connect_args={"timeout": 30} if "sqlite" in url else {})
    try:
        if "kombu_message" not in inspect(engine).get_table_names():
            return 0
        with engine.begin() as conn:
            return conn.execute(text("DELETE FROM kombu_message WHERE NOT visible")).rowcount
    finally:
        engine.dispose()


def _fail_unsent(catalog: Catalog, job_id: int, error: str) -> None:
    owner = "ft-submit"  # claims the queued job only to finish it through the state machine
    if claim_job(catalog, job_id, owner, lease_seconds=60) is not None:
        with catalog.session() as s:
            finish_job(s, job_id, owner, "failed", error=f"not sent to the broker: {error}")


def _unreachable(url: str, exc: BaseException) -> str:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if "authentication" in reason.lower() or "password" in reason.lower() or "NOAUTH" in reason:
        return (
            f"the broker at {redact(url)} refused ft's credentials ({reason.rstrip('.')}); "
            "put its password in FT_BROKER_URL, e.g. redis://:PASSWORD@host:6379/0"
        )
    return f"cannot reach the broker at {redact(url)} ({reason}); start redis or fix FT_BROKER_URL"
