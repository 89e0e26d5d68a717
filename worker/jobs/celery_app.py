"""The Celery app, built by a factory from Settings (sending "run job N" is worker.jobs.messages).

The catalog is the truth about a job; the broker only carries its id. Messages are JSON, acked
late (after the job ran) and re-delivered if the process running them dies; each worker process
takes one job at a time. The broker is kombu's SQLAlchemy transport on `$FT_HOME/broker.db` by
default (no server needed) or `redis://...` for a team (`FT_BROKER_VISIBILITY_TIMEOUT` sets how long
Redis waits for an acknowledgement before handing a message out again). Priorities (0-9, higher
runs first) are passed to brokers that support them (Redis); the SQLite broker ignores them.

`ft worker` builds the app with `make_celery(Settings.from_env())`. For `celery -A worker.jobs.celery_app
worker`, this module also answers `app` (built from the environment on first use).
"""

from __future__ import annotations

import functools
from typing import Any

from celery import Celery
from kombu import Queue

from catalog.settings import Settings
from worker.jobs.queues import MAX_PRIORITY, QUEUES, SEP, is_redis, is_sql


def make_celery(settings: Settings) -> Celery:
    """A Celery app for the broker in `settings`; the ft task and worker steps are attached to it."""
    app = Celery("ft", broker=settings.broker_url, include=["worker.jobs.tasks"], set_as_current=False)
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
        # A spawned child imports the project before it says it is up; on a loaded machine that takes
        # longer than Celery's 4 s, and a child killed while starting costs its job a redelivery.
        worker_proc_alive_timeout=60,
        worker_send_task_events=False,
        worker_redirect_stdouts=False,  # a handler's prints go to the worker's stderr as they are
        task_send_sent_event=False,
        # Only Redis (and AMQP) carry the broadcast messages of remote control; the SQL broker does not.
        worker_enable_remote_control=redis,
        task_default_queue="cpu",
        task_queues=[Queue(q, routing_key=q, max_priority=MAX_PRIORITY) for q in QUEUES],
        task_create_missing_queues=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options=_transport_options(settings),
    )
    app.conf.ft_settings = settings  # travels with the app to the pool's processes

    from worker.jobs.reconciler import ReconcilerStep  # the step sends through worker.jobs.messages

    app.steps["worker"].add(ReconcilerStep)
    return app


def _transport_options(settings: Settings) -> dict[str, Any]:
    broker_url = settings.broker_url
    if is_redis(broker_url):
        # One Redis list per priority level, served highest first. A message delivered but not
        # acknowledged within the visibility timeout is handed out again (a job running longer than
        # it gets a second copy, which its lease drops).
        return {
            "priority_steps": list(range(MAX_PRIORITY + 1)),
            "sep": SEP,
            "queue_order_strategy": "priority",
            "visibility_timeout": settings.broker_visibility_timeout,
            # kombu looks for overdue messages only every interval x throttle seconds (100 s by
            # default): a short visibility timeout would otherwise act only that much later.
            "unacked_restore_interval": max(1, min(10, settings.broker_visibility_timeout // 4)),
            "unacked_restore_throttle": 1,
        }
    if is_sql(broker_url) and "+sqlite" in broker_url:
        # The CLI and every worker write to the one file: wait for its lock instead of failing.
        return {"connect_args": {"timeout": 30}}
    return {}


@functools.cache
def _app_from_env() -> Celery:
    return make_celery(Settings.from_env())


def __getattr__(name: str) -> Any:
    """`celery -A worker.jobs.celery_app worker` looks up `app` here; build it only when asked."""
    if name in ("app", "celery"):
        return _app_from_env()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
