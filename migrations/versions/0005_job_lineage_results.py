"""job lineage and results: the adapter a job continues from, and its result files

Revision ID: 0005_job_lineage_results
Revises: 0004_checkpoint_adapters
Create Date: 2026-12-01 22:00:00

`parent_model` is the fine-tuned model (or checkpoint) id a continued job starts from (NULL for a job
on a base model; `model` then stays the base model either way). `result_files` lists the ids of the
`fine-tune-results` files a finished job wrote (its step_metrics.csv).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_job_lineage_results"
down_revision: str | None = "0004_checkpoint_adapters"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch_op:
        batch_op.add_column(sa.Column("parent_model", sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column("result_files", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch_op:
        batch_op.drop_column("result_files")
        batch_op.drop_column("parent_model")
