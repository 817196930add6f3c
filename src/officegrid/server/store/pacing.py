"""Site-wide transfer slots: at most N bulk transfers at once across all server processes.

A slot is a row; taking one is "delete expired rows, count, insert if below the cap" in one
write transaction (serialized by BEGIN IMMEDIATE on SQLite and by a transaction-scoped advisory
lock on PostgreSQL). Slots carry an expiry so a crashed process cannot leak them forever; the
process sending a transfer renews its slot's expiry while the transfer runs (:func:`renew`), so
a transfer slower than the expiry keeps its slot.
"""

from __future__ import annotations

from sqlalchemy import Connection, delete, func, insert, select, text, update

from officegrid.server.store.schema import transfer_slots

PG_SLOTS_LOCK = 0x51075


def acquire(conn: Connection, cap: int, holder: str, now: float, ttl: float) -> tuple[int, int]:
    """Take a slot if fewer than ``cap`` are held; return (slot id or 0, slots now held)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_SLOTS_LOCK})
    conn.execute(delete(transfer_slots).where(transfer_slots.c.expires_at < now))
    held = conn.execute(select(func.count()).select_from(transfer_slots)).scalar_one()
    if held >= cap:
        return 0, held
    slot = conn.execute(insert(transfer_slots).values(holder=holder, expires_at=now + ttl)
                        ).inserted_primary_key[0]
    return slot, held + 1


def renew(conn: Connection, slot: int, expires_at: float) -> bool:
    """Move slot ``slot``'s expiry to ``expires_at`` (server clock, seconds since the epoch).

    Returns False if the slot is gone (it expired and another process's :func:`acquire` swept
    it): its transfer then runs uncounted, and the caller should say so."""
    return conn.execute(update(transfer_slots).where(transfer_slots.c.id == slot)
                        .values(expires_at=expires_at)).rowcount > 0


def release(conn: Connection, slot: int) -> None:
    """Give slot ``slot`` back (nothing if it is already gone)."""
    conn.execute(delete(transfer_slots).where(transfer_slots.c.id == slot))


def held(conn: Connection, now: float) -> int:
    """Slots held site-wide at ``now`` (server clock, seconds): expired ones are not counted."""
    return conn.execute(select(func.count()).select_from(transfer_slots)
                        .where(transfer_slots.c.expires_at >= now)).scalar_one()
