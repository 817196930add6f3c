"""Replicated data sources: a master SQLite file with a captured change log, and replicas.

One concept per module:

- :mod:`.codec`: exact, canonical encoding of SQLite values for the log and the wire.
- :mod:`.schema`: what a database's replicated tables look like, and how two schemas differ.
- :mod:`.capture`: the triggers that write the change log in the writer's own transaction.
- :mod:`.changelog`: positions, the hash chain (sealing), retention and epochs.
- :mod:`.master`: creating and changing a master; :func:`.master.poll` ties capture and log.
- :mod:`.snapshot`: a consistent, compressed, verified snapshot at a position; resumable fetch.
- :mod:`.apply`: a replica applies a verified batch of entries in one transaction.
- :mod:`.merkle`: anti-entropy by hashes of primary-key ranges; fetches only differing rows.
- :mod:`.replica`: the bootstrap -> tail -> repair state machine.
"""

from officegrid.sync.replication.errors import (
    ChainBroken,
    DataSourceError,
    ReplicaDiskFull,
)

__all__ = ["ChainBroken", "DataSourceError", "ReplicaDiskFull"]
