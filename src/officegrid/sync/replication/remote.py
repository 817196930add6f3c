"""Where a replica gets its master's data: in-process (:class:`LocalRemote`) or over HTTP
(:class:`HttpRemote`, through ``officegrid.Client``). Both raise
:class:`~officegrid.sync.replication.errors.NeedsRepair` when the log cannot continue the
replica's position."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zstandard

from officegrid.sync.replication import codec
from officegrid.sync.replication.service import MasterService

READ_CHUNK = 1 << 20


def _wire_size(obj: Any) -> int:
    """Bytes this answer would take on the wire (zstd of its JSON, as the server sends it)."""
    return len(zstandard.ZstdCompressor(level=3).compress(codec.dumps(obj).encode()))


class LocalRemote:
    """A master file in this process (tests and tools)."""

    def __init__(self, service: MasterService) -> None:
        self.service = service
        self.bytes_received = 0

    def _count(self, obj: Any) -> Any:
        self.bytes_received += _wire_size(obj)
        return obj

    def status(self) -> dict[str, Any]:
        return self._count(self.service.status())

    # Positions travel by :meth:`report` (there is no server to note them from log calls).
    reports_in_log = False

    def log(self, epoch: str, after: int, max_entries: int = 1000, replica: str | None = None,
            wait: float = 0.0) -> dict[str, Any]:
        """A batch (see :meth:`MasterService.log`); ``replica`` and ``wait`` are ignored (an
        in-process master is not long-polled)."""
        return self._count(self.service.log(epoch, after, max_entries))

    def snapshot_info(self) -> dict[str, Any]:
        return self.service.snapshot_info()

    def snapshot_fetch(self, snap_id: str, offset: int) -> Iterator[bytes]:
        path: Path = self.service.snapshot_file(snap_id)
        with open(path, "rb") as f:
            f.seek(offset)
            while piece := f.read(READ_CHUNK):
                self.bytes_received += len(piece)
                yield piece

    def ranges(self, table: str, bucket_rows: int) -> list[list[Any]]:
        return self._count(self.service.ranges(table, bucket_rows))

    def row_hashes(self, table: str, ranges: list[list[Any]], size: int) -> list[dict]:
        return self._count(self.service.row_hashes(table, ranges, size))

    def rows(self, table: str, keys: list[list[Any]] | None = None,
             ranges: list[list[Any]] | None = None) -> dict[str, Any]:
        return self._count(self.service.rows(table, keys, ranges))

    def report(self, replica: str, epoch: str, pos: int) -> None:
        pass


class HttpRemote:
    """A data source on a job control server, through an ``officegrid.Client``."""

    def __init__(self, client: Any, name: str) -> None:
        self.client = client
        self.name = name

    @property
    def bytes_received(self) -> int:
        return self.client.bytes_received

    def status(self) -> dict[str, Any]:
        return self.client.data_status(self.name)

    # The log request names the replica and its position: no separate report write per batch.
    reports_in_log = True

    def log(self, epoch: str, after: int, max_entries: int = 1000, replica: str | None = None,
            wait: float = 0.0) -> dict[str, Any]:
        """A batch after ``after``; the server records ``(epoch, after)`` as ``replica``'s
        position and, with ``wait``, holds the request up to that many seconds until there is
        something new."""
        return self.client.data_log(self.name, epoch, after, max_entries, replica=replica,
                                    wait=wait)

    def snapshot_info(self) -> dict[str, Any]:
        return self.client.data_snapshot_info(self.name)

    def snapshot_fetch(self, snap_id: str, offset: int) -> Iterator[bytes]:
        return self.client.data_snapshot_stream(self.name, snap_id, offset)

    def ranges(self, table: str, bucket_rows: int) -> list[list[Any]]:
        return self.client.data_ranges(self.name, table, bucket_rows)

    def row_hashes(self, table: str, ranges: list[list[Any]], size: int) -> list[dict]:
        return self.client.data_row_hashes(self.name, table, ranges, size)

    def rows(self, table: str, keys: list[list[Any]] | None = None,
             ranges: list[list[Any]] | None = None) -> dict[str, Any]:
        return self.client.data_rows(self.name, table, keys, ranges)

    def report(self, replica: str, epoch: str, pos: int) -> None:
        self.client.data_report(self.name, replica, epoch, pos)
