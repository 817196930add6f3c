"""remember the agent run a session was taken over from (clone detection)

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
    with op.batch_alter_table("workers") as batch_op:
        batch_op.add_column(sa.Column("previous_instance", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("banned_instance", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch_op:
        batch_op.drop_column("banned_instance")
        batch_op.drop_column("previous_instance")
