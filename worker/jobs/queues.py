"""The queues jobs are sent to and how ft's priorities map onto each broker (no Celery import here,
so the CLI can validate `--queue` / `--priority` without loading Celery)."""

from __future__ import annotations

QUEUES = ("cpu", "gpu")
"""`cpu` (conversion, small evaluations) and `gpu` (training, generation)."""
MAX_PRIORITY = 9
"""`--priority` runs from 0 (default) to 9; higher runs first where the broker supports it."""
SEP = ":"
"""Redis keeps one list per queue and priority level: `cpu`, `cpu:1`, ... `cpu:9` (0 is served first)."""


def is_redis(broker_url: str) -> bool:
    return broker_url.startswith(("redis://", "rediss://", "redis+socket://"))


def is_sql(broker_url: str) -> bool:
    return broker_url.startswith(("sqla+", "sqlalchemy+"))


def broker_priority(broker_url: str, priority: int) -> int | None:
    """ft's priority as the broker's: Redis serves 0 first (so it is inverted); SQL has none."""
    if is_redis(broker_url):
        return MAX_PRIORITY - priority
    if is_sql(broker_url):
        return None
    return priority


def redis_lists(queue: str) -> list[str]:
    """The Redis lists that hold `queue`'s waiting messages, one per broker priority level."""
    return [queue if level == 0 else f"{queue}{SEP}{level}" for level in range(MAX_PRIORITY + 1)]
