"""scores.voter (the key that sent a piece of feedback: one vote per key, response and metric) and
revoked_sessions (dashboard sessions ended by sign-out, until they would have expired)

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("scores") as batch:
        batch.add_column(sa.Column("voter", sa.String(64), nullable=True))
    # NULL voters (every non-feedback score) never collide: the constraint binds feedback only
    op.create_index("uq_scores_vote", "scores", ["request_id", "name", "voter"], unique=True)
    op.create_table(
        "revoked_sessions",
        sa.Column("session_id", sa.String(64), primary_key=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
    )


def downgrade() -> None:
    op.drop_table("revoked_sessions")
    op.drop_index("uq_scores_vote", table_name="scores")
    with op.batch_alter_table("scores") as batch:
        batch.drop_column("voter")
