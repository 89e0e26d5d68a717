"""The Celery app, built by a factory from Settings, and the one message ft sends: "run job N".

The catalog is the truth about a job; the broker only carries its id. Messages are JSON, acked
late (after the job ran) and re-delivered if the process running them dies; each worker process
takes one job at a time. The broker is kombu's SQLAlchemy transport on `$FT_HOME/broker.db` by
default (no server needed) or `redis://...` for a team. Priorities (0-9, higher runs first) are
passed to brokers that support them (Redis); the SQLite broker ignores them.

`ft worker` builds the app with `make_celery(Settings.from_env())`. For `celery -A worker.celery_app
worker`, this module also answers `app` (built from the environment on first use).
"""

from __future__ import annotations

import functools
from typing import Any

from celery import Celery
from kombu import Queue
from sqlalchemy.engine import make_url

from catalog.db import Catalog
from catalog.errors import ServiceUnavailable
from catalog.jobs import claim_job, finish_job
from catalog.models import Job
from catalog.settings import Settings
from worker.queues import MAX_PRIORITY, QUEUES, broker_priority, is_redis, is_sql

TASK_NAME = "ft.run_job"
SEND_TIMEOUT_S = 10.0


def make_celery(settings: Settings) -> Celery:
    """A Celery app for the broker in `settings`; the ft task and worker steps are attached to it."""
    app = Celery("ft", broker=settings.broker_url, include=["worker.tasks"], set_as_current=False)
    redis = is_redis(settings.broker_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        event_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_max_tasks_per_child=1,
        # Each job gets a fresh interpreter, not a fork of the worker: nothing (a CUDA context, a
        # lock held by one of the parent's threads, an open database) is inherited from the parent.
        worker_pool_start_method="spawn",
        worker_send_task_events=False,
        worker_redirect_stdouts=False,  # a handler's prints go to the worker's stderr as they are
        task_send_sent_event=False,
        # Only Redis (and AMQP) carry the broadcast messages of remote control; the SQL broker does not.
        worker_enable_remote_control=redis,
        task_default_queue="cpu",
        task_queues=[Queue(q, routing_key=q, max_priority=MAX_PRIORITY) for q in QUEUES],
        task_create_missing_queues=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options=_transport_options(settings.broker_url),
    )
    app.conf.ft_settings = settings  # travels with the app to the pool's processes

    from worker.reconciler import ReconcilerStep

    app.steps["worker"].add(ReconcilerStep)
    return app


def _transport_options(broker_url: str) -> dict[str, Any]:
    if is_redis(broker_url):
        # One Redis list per priority level, served highest first.
        return {
            "priority_steps": list(range(MAX_PRIORITY + 1)),
            "sep": ":",
            "queue_order_strategy": "priority",
        }
    if is_sql(broker_url) and "+sqlite" in broker_url:
        # The CLI and every worker write to the one file: wait for its lock instead of failing.
        return {"connect_args": {"timeout": 30}}
    return {}


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


def send_job(app: Celery, job_id: int, *, queue: str, priority: int) -> None:
    """Send the message "run job `job_id`" to `queue`. Raises ServiceUnavailable if it cannot."""
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


def _fail_unsent(catalog: Catalog, job_id: int, error: str) -> None:
    owner = "ft-submit"  # claims the queued job only to finish it through the state machine
    if claim_job(catalog, job_id, owner, lease_seconds=60) is not None:
        with catalog.session() as s:
            finish_job(s, job_id, owner, "failed", error=f"not sent to the broker: {error}")


def _unreachable(url: str, exc: BaseException) -> str:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"cannot reach the broker at {redact(url)} ({reason}); start redis or fix FT_BROKER_URL"


@functools.cache
def _app_from_env() -> Celery:
    return make_celery(Settings.from_env())


def __getattr__(name: str) -> Any:
    """`celery -A worker.celery_app worker` looks up `app` here; build it only when asked."""
    if name in ("app", "celery"):
        return _app_from_env()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
