"""jobs: idempotency keys and one active train job per adapter name

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ACTIVE_JOB = "status IN ('queued', 'running')"


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("adapter_name", sa.String(length=200), nullable=True))
    # Train jobs already queued or running claim their adapter's name, as new ones will (the oldest
    # one, where earlier versions let several share a name).
    jobs = sa.table(
        "jobs",
        *(sa.column(c) for c in ("id", "kind", "status", "adapter_name")),
        sa.column("spec", sa.JSON),
    )
    bind = op.get_bind()
    active = bind.execute(
        sa.select(jobs.c.id, jobs.c.spec)
        .where(jobs.c.kind == "train", jobs.c.status.in_(("queued", "running")))
        .order_by(jobs.c.id)
    ).all()
    taken: set[str] = set()
    for job_id, spec in active:
        name = (spec or {}).get("name")
        if isinstance(name, str) and name not in taken:
            taken.add(name)
            bind.execute(sa.update(jobs).where(jobs.c.id == job_id).values(adapter_name=name))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("uq_jobs_idempotency_key", ["submitted_by", "idempotency_key"], unique=True)
        batch_op.create_index(
            "uq_jobs_active_adapter_name",
            ["adapter_name"],
            unique=True,
            sqlite_where=sa.text(ACTIVE_JOB),
            postgresql_where=sa.text(ACTIVE_JOB),
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("uq_jobs_active_adapter_name")
        batch_op.drop_index("uq_jobs_idempotency_key")
        batch_op.drop_column("adapter_name")
        batch_op.drop_column("idempotency_key")
