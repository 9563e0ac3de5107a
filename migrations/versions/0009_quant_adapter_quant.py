"""adapter base quantization: how the base model's linears were held when the adapter trained

Revision ID: 0009_quant_adapter_quant
Revises: 0008_job_admission
Create Date: 2026-12-02 13:20:00

`base_quantization` is "none" (every adapter before this revision), "int8" or "nf4"; serving loads the
adapter onto a resident base quantized the same way.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_quant_adapter_quant"
down_revision: str | None = "0008_job_admission"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("adapters") as batch_op:
        batch_op.add_column(
            sa.Column("base_quantization", sa.String(length=16), nullable=False, server_default="none")
        )


def downgrade() -> None:
    with op.batch_alter_table("adapters") as batch_op:
        batch_op.drop_column("base_quantization")
