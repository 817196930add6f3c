"""an index that serves claims in sequence order without sorting the queue

Revision ID: 0005
Revises: 0004
"""
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("units") as batch_op:
        batch_op.drop_index("ix_units_job_state")
        batch_op.create_index("ix_units_job_state_seq", ["job_id", "state", "seq"])


def downgrade() -> None:
    with op.batch_alter_table("units") as batch_op:
        batch_op.drop_index("ix_units_job_state_seq")
        batch_op.create_index("ix_units_job_state", ["job_id", "state"])
