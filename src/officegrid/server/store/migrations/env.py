"""Alembic environment: runs on the connection the store hands in (see engine.Database.migrate)."""

from alembic import context
from sqlalchemy import create_engine

from officegrid.server.store.schema import metadata

config = context.config
connection = config.attributes.get("connection")

if connection is None:  # `alembic` run by hand (e.g. to autogenerate a revision)
    connection = create_engine(config.get_main_option("sqlalchemy.url")).connect()

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
