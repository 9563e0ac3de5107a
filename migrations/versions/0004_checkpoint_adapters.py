"""checkpoint adapters: a job's user-visible epoch checkpoints are Adapter rows (servable like models)

Revision ID: 0004_checkpoint_adapters
Revises: 0003_pause
Create Date: 2026-12-01 20:15:00

Only columns are added (no constraint is dropped), so the migration runs the same on SQLite and Postgres:
the final model keeps its unique `job_id`; a checkpoint row has `job_id` NULL and names its job in
`checkpoint_job_id` (several per job), with its `step` and `metrics`.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_checkpoint_adapters"
down_revision: str | None = "0003_pause"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("adapters") as batch_op:
        batch_op.add_column(sa.Column("checkpoint_job_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("step", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("metrics", sa.JSON(), nullable=True))
        batch_op.create_foreign_key(
            "fk_adapters_checkpoint_job_id",
            "fine_tuning_jobs",
            ["checkpoint_job_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch_op.create_index("ix_adapters_checkpoint_job_id", ["checkpoint_job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("adapters") as batch_op:
        batch_op.drop_index("ix_adapters_checkpoint_job_id")
        batch_op.drop_constraint("fk_adapters_checkpoint_job_id", type_="foreignkey")
        batch_op.drop_column("metrics")
        batch_op.drop_column("step")
        batch_op.drop_column("checkpoint_job_id")
