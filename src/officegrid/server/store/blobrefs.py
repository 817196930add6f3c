"""Which blobs the store references (for garbage collection of the blob directory)."""

from __future__ import annotations

from sqlalchemy import Connection, select, union

from officegrid.server.store.schema import attempts, release_blobs, units


def referenced(conn: Connection) -> set[str]:
    """Every blob hash referenced by a unit (input, result), an attempt (logs) or a release."""
    q = union(
        select(units.c.input_blob.label("h")),
        select(units.c.result_blob).where(units.c.result_blob.is_not(None)),
        select(attempts.c.log_blob).where(attempts.c.log_blob.is_not(None)),
        select(release_blobs.c.blob),
    )
    return {r[0] for r in conn.execute(q)}
