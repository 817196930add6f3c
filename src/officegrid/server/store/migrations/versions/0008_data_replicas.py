"""where each replica of a data source stands (data status)

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
        "data_replicas",
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("replica", sa.String(length=200), nullable=False),
        sa.Column("epoch", sa.String(length=32), nullable=False),
        sa.Column("pos", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("source", "replica"),
    )


def downgrade() -> None:
    op.drop_table("data_replicas")
