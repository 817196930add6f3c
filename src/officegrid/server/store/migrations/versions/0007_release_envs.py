"""locked environments: a release's env hash, the env of a unit's result, failed env builds

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("releases") as batch_op:
        batch_op.add_column(sa.Column("env", sa.String(length=64), nullable=True))
    with op.batch_alter_table("units") as batch_op:
        batch_op.add_column(sa.Column("env", sa.String(length=64), nullable=True))
    op.create_table(
        "env_failures",
        sa.Column("release_id", sa.String(length=64), primary_key=True),
        sa.Column("worker_id", sa.Integer(), sa.ForeignKey("workers.id"), primary_key=True),
        sa.Column("env", sa.String(length=64), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("env_failures")
    with op.batch_alter_table("units") as batch_op:
        batch_op.drop_column("env")
    with op.batch_alter_table("releases") as batch_op:
        batch_op.drop_column("env")
