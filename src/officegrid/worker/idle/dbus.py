"""A kept D-Bus connection for the idle sources (jeepney, pure Python).

One connection per bus, opened on first use and reopened after a failure; each call has a short
timeout so a hung bus can never stall the owner monitor for long.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any

CALL_TIMEOUT = 0.5  # seconds; a desktop bus answers in well under a millisecond
RECONNECT_AFTER = 30.0  # seconds between attempts to reach a bus that could not be reached
TIMEOUT_BACKOFF = 5.0  # seconds without calls after one timed out (a hung service or bus)


class BusError(Exception):
    """The bus cannot be reached, or the call failed; the message says why."""


class Bus:
    """Blocking method calls on the session or system bus, over one kept connection."""

    def __init__(self, which: str) -> None:
        if which not in ("SESSION", "SYSTEM"):
            raise ValueError(f"bus must be SESSION or SYSTEM, not {which!r}")
        self.which = which
        self._conn: Any = None
        self._lock = threading.Lock()
        # A failed connect (which may wait for its auth timeout) or a call that timed out is
        # not retried on every read: the owner monitor reads 5 times a second and must never
        # stall on a dead bus or a hung service. (monotonic time until which calls fail, why)
        self._failed: tuple[float, str] | None = None

    def _connect(self) -> Any:
        try:
            from jeepney.io.blocking import open_dbus_connection
        except ImportError as exc:  # pragma: no cover - jeepney is a dependency
            raise BusError("jeepney (D-Bus library) is not installed") from exc
        if self.which == "SESSION" and not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
            raise BusError("no session bus (DBUS_SESSION_BUS_ADDRESS unset)")
        try:
            return open_dbus_connection(bus=self.which)
        except Exception as exc:  # noqa: BLE001 - every failure means "cannot reach the bus"
            raise BusError(f"cannot connect to the {self.which.lower()} bus: {exc}") from exc

    def call(self, path: str, bus_name: str, interface: str, method: str,
             signature: str | None = None, body: tuple = ()) -> tuple:
        """Call `method` and return the reply body.

        Blocks at most CALL_TIMEOUT seconds (plus jeepney's 2 s authentication limit when it
        has to connect). Raises BusError on any failure: no bus (then no new connect for
        RECONNECT_AFTER seconds), an error reply, a timeout (then no call for TIMEOUT_BACKOFF
        seconds), a broken connection (reopened on the next call).
        """
        from jeepney import DBusAddress, new_method_call
        from jeepney.wrappers import DBusErrorResponse, unwrap_msg

        with self._lock:
            now = time.monotonic()
            if self._failed is not None and now < self._failed[0]:
                raise BusError(self._failed[1])
            if self._conn is None:
                try:
                    self._conn = self._connect()
                except BusError as exc:
                    self._failed = (time.monotonic() + RECONNECT_AFTER, str(exc))
                    raise
                self._failed = None
            addr = DBusAddress(path, bus_name=bus_name, interface=interface)
            msg = new_method_call(addr, method, signature, body)
            try:
                reply = self._conn.send_and_get_reply(msg, timeout=CALL_TIMEOUT)
                return unwrap_msg(reply)
            except DBusErrorResponse as exc:
                raise BusError(f"{bus_name} {method}: {exc.name}") from exc
            except TimeoutError as exc:  # a hung peer: do not wait on it again for a while
                self._close()
                why = (f"{bus_name} {method}: no answer within {CALL_TIMEOUT} s (not asked "
                       f"again for {TIMEOUT_BACKOFF:.0f} s)")
                self._failed = (time.monotonic() + TIMEOUT_BACKOFF, why)
                raise BusError(why) from exc
            except Exception as exc:  # noqa: BLE001 - broken connection: reopen next time
                self._close()
                raise BusError(f"{bus_name} {method}: {type(exc).__name__}: {exc}") from exc

    def get_all(self, path: str, bus_name: str, interface: str) -> dict[str, Any]:
        """All properties of `interface` at `path`, variants unwrapped; raises BusError."""
        (props,) = self.call(path, bus_name, "org.freedesktop.DBus.Properties", "GetAll", "s",
                             (interface,))
        return {k: v[1] for k, v in props.items()}

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # closing a broken connection
                self._conn.close()
        self._conn = None

    def close(self) -> None:
        with self._lock:
            self._close()
