"""job integrations: the Weights & Biases run a job logs to

Revision ID: 0007_job_integrations
Revises: 0006_base_models
Create Date: 2026-12-01 23:00:00

`integrations` holds OpenAI's `integrations` list as the API accepted it (NULL: none).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_job_integrations"
down_revision: str | None = "0006_base_models"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch_op:
        batch_op.add_column(sa.Column("integrations", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch_op:
        batch_op.drop_column("integrations")
