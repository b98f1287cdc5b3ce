"""usage_records: the request's `user` field, for cost per end user

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("user", sa.String(256), nullable=True))
    op.create_index("ix_usage_tenant_user_time", "usage_records", ["tenant_id", "user", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_usage_tenant_user_time", "usage_records")
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("user")
