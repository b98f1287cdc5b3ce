"""experiments (the admin API's experiments), experiment_events (their audit log), shadow_records
(the copies shadow experiments sent: never in usage_records, so never billed), and on
usage_records the response id (feedback names it) and the experiment arm that served; scores' tags

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "experiment_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("experiment", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(64), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("experiment", "version", name="uq_experiment_events_version"),
    )
    op.create_index("ix_experiment_events_experiment", "experiment_events", ["experiment", "created_at"])
    op.create_table(
        "shadow_records",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("experiment", sa.String(64), nullable=False),
        sa.Column("arm", sa.String(64), nullable=False),
        sa.Column("deployment", sa.String(200), nullable=False),
        sa.Column("request_id", sa.String(160), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_shadow_records_experiment_time", "shadow_records", ["experiment", "created_at"])
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("response_id", sa.String(80), nullable=True))
        batch.add_column(sa.Column("variant", sa.String(200), nullable=True))
        batch.add_column(sa.Column("episode", sa.String(200), nullable=True))
    op.create_index("ix_usage_response_id", "usage_records", ["response_id"])
    op.create_index("ix_usage_tenant_episode", "usage_records", ["tenant_id", "episode"])
    with op.batch_alter_table("scores") as batch:
        batch.add_column(sa.Column("tags", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scores") as batch:
        batch.drop_column("tags")
    op.drop_index("ix_usage_tenant_episode", "usage_records")
    op.drop_index("ix_usage_response_id", "usage_records")
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("episode")
        batch.drop_column("variant")
        batch.drop_column("response_id")
    op.drop_index("ix_shadow_records_experiment_time", "shadow_records")
    op.drop_table("shadow_records")
    op.drop_index("ix_experiment_events_experiment", "experiment_events")
    op.drop_table("experiment_events")
    op.drop_table("experiments")
