"""Queries on data source replicas: where each replica stands (for ``data status``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from officegrid.server.store.schema import data_replicas


def report(conn: Connection, source: str, replica: str, epoch: str, pos: int, now: float) -> None:
    """Record that ``replica`` of ``source`` is at ``(epoch, pos)`` (insert or update)."""
    values = {"source": source, "replica": replica, "epoch": epoch, "pos": pos,
              "updated_at": now}
    if conn.dialect.name in ("postgresql", "sqlite"):
        ins = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(
            data_replicas).values(**values)
        conn.execute(ins.on_conflict_do_update(
            index_elements=["source", "replica"],
            set_={"epoch": epoch, "pos": pos, "updated_at": now}))
        return
    n = conn.execute(update(data_replicas).where(
        (data_replicas.c.source == source) & (data_replicas.c.replica == replica)).values(
        epoch=epoch, pos=pos, updated_at=now)).rowcount
    if not n:
        conn.execute(data_replicas.insert().values(**values))


def report_many(conn: Connection, rows: list[tuple[str, str, str, int]], now: float) -> None:
    """Record several ``(source, replica, epoch, pos)`` positions (one transaction: the server
    batches the positions that replicas' log requests carry)."""
    for source, replica, epoch, pos in rows:
        report(conn, source, replica, epoch, pos, now)


def list_for(conn: Connection, source: str | None = None) -> list[dict[str, Any]]:
    """Replicas (of ``source``, or all), ordered by source then replica name."""
    q = select(data_replicas).order_by(data_replicas.c.source, data_replicas.c.replica)
    if source is not None:
        q = q.where(data_replicas.c.source == source)
    return [dict(r._mapping) for r in conn.execute(q)]


def forget_source(conn: Connection, source: str) -> int:
    """Drop the replica records of a source (when it is recreated)."""
    return conn.execute(delete(data_replicas).where(data_replicas.c.source == source)).rowcount
