"""job admission: the resource class a job runs on and its estimated peak memory

Revision ID: 0008_job_admission
Revises: 0007_job_integrations
Create Date: 2026-12-02 05:20:00

`resource_class` names the class whose Celery queue runs the job (NULL: "default", as every job before
this revision); `estimated_memory_bytes` is the peak memory estimated at creation (NULL: not estimated).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_job_admission"
down_revision: str | None = "0007_job_integrations"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch_op:
        batch_op.add_column(sa.Column("resource_class", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("estimated_memory_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch_op:
        batch_op.drop_column("estimated_memory_bytes")
        batch_op.drop_column("resource_class")
