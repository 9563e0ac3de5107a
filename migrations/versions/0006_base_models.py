"""base models: the registry of what /v1/models offers and workers and serving load; admin API keys

Revision ID: 0006_base_models
Revises: 0005_job_lineage_results
Create Date: 2026-12-02 10:00:00

The catalog's models are seeded as rows at start (`lorasp_service.base_models.seed_catalog`, run by
`migrate()`), not here: a catalog entry added in a later release then gets its row without a migration.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_base_models"
down_revision: str | None = "0005_job_lineage_results"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "base_models",
        sa.Column("name", sa.String(length=256), primary_key=True),
        sa.Column("source", sa.String(length=1024), nullable=False),
        sa.Column("source_kind", sa.String(length=16), nullable=False),
        sa.Column("task", sa.String(length=16), nullable=False),
        sa.Column("description", sa.String(length=512), nullable=False),
        sa.Column("architecture", sa.String(length=128), nullable=True),
        sa.Column("parameter_count", sa.BigInteger(), nullable=True),
        sa.Column("bytes", sa.BigInteger(), nullable=True),
        sa.Column("dtype", sa.String(length=16), nullable=False),
        sa.Column("max_length", sa.Integer(), nullable=True),
        sa.Column("chat_template", sa.Text(), nullable=True),
        sa.Column("target_modules", sa.JSON(), nullable=True),
        sa.Column("label_names", sa.JSON(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("bytes_done", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("store_key", sa.String(length=512), nullable=True),
        sa.Column(
            "owner_tenant_id",
            sa.String(length=64),
            sa.ForeignKey("tenants.id", ondelete="CASCADE"),
            nullable=True,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_base_models_owner_tenant_id", "base_models", ["owner_tenant_id"])
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.add_column(sa.Column("is_admin", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.drop_column("is_admin")
    op.drop_index("ix_base_models_owner_tenant_id", table_name="base_models")
    op.drop_table("base_models")
