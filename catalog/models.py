"""The catalog's tables as typed SQLAlchemy 2.0 models.

Rows that describe content (datasets, templates, conversions, adapters) are immutable once
written: a change makes a new version or a new row. Jobs are the only rows that move, and only
through the functions in `catalog.jobs`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JOB_KINDS = ("convert", "train", "eval")
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED_STATUSES = ("succeeded", "failed", "cancelled")
ACTIVE_JOB = "status IN ('queued', 'running')"
"""SQL: a job not yet finished (the condition of the partial unique index on adapter names)."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive, in UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):  # noqa: ANN001
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the catalog; use catalog.models.utcnow()")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):  # noqa: ANN001
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class BaseModel(Base):
    """A base model: a transformers directory, an imported GGUF file, or a hub id."""

    __tablename__ = "base_models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    source: Mapped[str] = mapped_column(String(16))  # path | gguf | hub
    uri: Mapped[str] = mapped_column(Text)  # directory used to load it (store path for gguf)
    origin: Mapped[str | None] = mapped_column(Text)  # the GGUF file or hub id it came from
    revision: Mapped[str | None] = mapped_column(String(200))
    architecture: Mapped[str | None] = mapped_column(String(200))
    model_type: Mapped[str | None] = mapped_column(String(100))
    parameter_count: Mapped[int | None] = mapped_column(BigInteger)
    dtype: Mapped[str | None] = mapped_column(String(32))
    tokenizer_sha256: Mapped[str | None] = mapped_column(String(64))
    sha256: Mapped[str | None] = mapped_column(String(64))  # of the source file (gguf)
    trust_remote_code: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class PromptTemplate(Base):
    """A named, versioned, immutable prompt template."""

    __tablename__ = "prompt_templates"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # format | jinja | chat
    body: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    builtin: Mapped[bool] = mapped_column(Boolean, default=False)
    sha256: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


class Dataset(Base):
    """One immutable version of a registered dataset (canonical rows, split deterministically)."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[int] = mapped_column(Integer)
    source_format: Mapped[str] = mapped_column(String(32))
    source_path: Mapped[str] = mapped_column(Text)
    source_sha256: Mapped[str] = mapped_column(String(64))
    artifact_uri: Mapped[str] = mapped_column(Text)  # store-relative directory
    sha256: Mapped[str] = mapped_column(String(64))  # of the canonical content
    split_counts: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"train": 1441, "test": 50}
    split_spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # how the splits were made
    invalid_count: Mapped[int] = mapped_column(Integer, default=0)
    report: Mapped[list[Any]] = mapped_column(JSON, default=list)  # ["FILE:LINE: CODE: message", ...]
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def total_rows(self) -> int:
        return sum(int(v) for v in self.split_counts.values())


class Conversion(Base):
    """A tokenised, prompt-masked Arrow dataset, cached by what determines its content."""

    __tablename__ = "conversions"

    id: Mapped[int] = mapped_column(primary_key=True)
    cache_key: Mapped[str] = mapped_column(String(64), unique=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    template_id: Mapped[int] = mapped_column(ForeignKey("prompt_templates.id"))
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"))
    tokenizer_sha256: Mapped[str] = mapped_column(String(64))
    max_len: Mapped[int] = mapped_column(Integer)
    max_source_len: Mapped[int | None] = mapped_column(Integer)
    artifact_uri: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    stats: Mapped[dict[str, Any]] = mapped_column(JSON)  # per split: rows, tokens, truncated, dropped
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    dataset: Mapped[Dataset] = relationship()
    template: Mapped[PromptTemplate] = relationship()
    base_model: Mapped[BaseModel] = relationship()


class Job(Base):
    """A unit of queued work. The row, not Celery's result backend, is the truth about its state."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
        # The same user's same key is one job, however many submits race (catalog.jobs.submit_job).
        Index("uq_jobs_idempotency_key", "submitted_by", "idempotency_key", unique=True),
        # One queued or running train job per adapter name: four racing submits make one job.
        Index(
            "uq_jobs_active_adapter_name",
            "adapter_name",
            unique=True,
            sqlite_where=text(ACTIVE_JOB),
            postgresql_where=text(ACTIVE_JOB),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # convert | train | eval
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    spec_hash: Mapped[str] = mapped_column(String(64), index=True)
    submitted_by: Mapped[str] = mapped_column(String(200), index=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    queue: Mapped[str] = mapped_column(String(64), default="cpu")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # e.g. {"conversion_id": 3}
    error: Mapped[str | None] = mapped_column(Text)
    log_path: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    """`--idempotency-key`: a second submit with the same key (and user) answers this job."""
    adapter_name: Mapped[str | None] = mapped_column(String(200))
    """The adapter a train job will register (its spec's name); unique among active jobs."""
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Adapter(Base):
    """A trained artifact (PEFT adapter, frozen-block tensors, or a full model) with its lineage."""

    __tablename__ = "adapters"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    method: Mapped[str] = mapped_column(String(32), index=True)
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"))
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    template_id: Mapped[int] = mapped_column(ForeignKey("prompt_templates.id"))
    conversion_id: Mapped[int | None] = mapped_column(ForeignKey("conversions.id"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("adapters.id"))
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    artifact_uri: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    trainable_params: Mapped[int] = mapped_column(BigInteger)
    total_params: Mapped[int] = mapped_column(BigInteger)
    peak_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    train_seconds: Mapped[float | None] = mapped_column(Float)
    tokens_seen: Mapped[int | None] = mapped_column(BigInteger)
    final_loss: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    ft_version: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="ready")
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    base_model: Mapped[BaseModel] = relationship()
    dataset: Mapped[Dataset] = relationship()
    template: Mapped[PromptTemplate] = relationship()


class Evaluation(Base):
    """Metrics of one adapter (or of the untuned base, adapter_id NULL) on one dataset split."""

    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(primary_key=True)
    adapter_id: Mapped[int | None] = mapped_column(ForeignKey("adapters.id"), index=True)
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"))
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    split: Mapped[str] = mapped_column(String(64))
    template_id: Mapped[int] = mapped_column(ForeignKey("prompt_templates.id"))
    metric: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    generation: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # decoding settings
    sample_count: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Float)
    peak_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    predictions_uri: Mapped[str | None] = mapped_column(Text)
    predictions_sha256: Mapped[str | None] = mapped_column(String(64))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Worker(Base):
    """A running (or stopped) `ft worker`: where it runs, what it takes, its GPUs and their jobs.

    `gpus` is a list of {"index", "model", "class", "memory_bytes", "job_id"}: the job each GPU runs
    now, or null. Only the functions in `catalog.workers` (and `catalog.pool_view`, which prunes) write it."""

    __tablename__ = "workers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)  # the Celery hostname, ft-PID@HOST
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[list[Any]] = mapped_column(JSON)  # ["cpu", "gpu"]
    gpus: Mapped[list[Any]] = mapped_column(JSON, default=list)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)  # the heartbeat
    stopped_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
