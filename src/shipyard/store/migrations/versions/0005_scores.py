"""scores: every evaluation of a request, whatever produced it

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scores",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(160), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("deployment", sa.String(200), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("numeric", sa.Float(), nullable=True),
        sa.Column("label", sa.String(200), nullable=True),
        sa.Column("boolean", sa.Boolean(), nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_scores_request_id", "scores", ["request_id"])
    op.create_index("ix_scores_created_at", "scores", ["created_at"])
    op.create_index("ix_scores_tenant_deployment_name_time", "scores",
                    ["tenant_id", "deployment", "name", "created_at"])


def downgrade() -> None:
    op.drop_table("scores")
