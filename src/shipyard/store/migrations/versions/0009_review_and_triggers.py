"""review_items (the human review queue) and trigger_evaluations (the retraining triggers' audit,
append-only: the database itself refuses to update or delete a row)

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "review_items",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(160), nullable=False),
        sa.Column("response_id", sa.String(80), nullable=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("deployment", sa.String(200), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("messages", sa.JSON(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("labels", sa.JSON(), nullable=True),
        sa.Column("correction", sa.Text(), nullable=True),
        sa.Column("labelled_by", sa.String(64), nullable=True),
        sa.Column("labelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("request_id", name="uq_review_items_request"),
    )
    op.create_index("ix_review_items_tenant_status", "review_items", ["tenant_id", "status", "id"])
    op.create_table(
        "trigger_evaluations",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("trigger", sa.String(64), nullable=False),
        sa.Column("slot", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("condition", sa.Boolean(), nullable=True),
        sa.Column("met", sa.Boolean(), nullable=True),
        sa.Column("observed", sa.Float(), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("trigger", "slot", "kind", name="uq_trigger_evaluations_slot"),
    )
    op.create_index("ix_trigger_evaluations_trigger", "trigger_evaluations", ["trigger", "id"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE FUNCTION trigger_evaluations_append_only() RETURNS trigger AS $$ BEGIN "
                   "RAISE EXCEPTION 'trigger_evaluations is append-only'; END; $$ LANGUAGE plpgsql")
        op.execute("CREATE TRIGGER trigger_evaluations_append_only BEFORE UPDATE OR DELETE ON trigger_evaluations "
                   "FOR EACH ROW EXECUTE FUNCTION trigger_evaluations_append_only()")
    else:
        for event in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER trigger_evaluations_no_{event.lower()} BEFORE {event} ON trigger_evaluations "
                       "BEGIN SELECT RAISE(ABORT, 'trigger_evaluations is append-only'); END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS trigger_evaluations_append_only ON trigger_evaluations")
        op.execute("DROP FUNCTION IF EXISTS trigger_evaluations_append_only()")
    op.drop_index("ix_trigger_evaluations_trigger", table_name="trigger_evaluations")
    op.drop_table("trigger_evaluations")
    op.drop_index("ix_review_items_tenant_status", table_name="review_items")
    op.drop_table("review_items")
