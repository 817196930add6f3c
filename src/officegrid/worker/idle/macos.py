"""macOS: HIDIdleTime of the IOHIDSystem service, read through IOKit with ctypes.

HIDIdleTime is nanoseconds since the last HID event (keyboard, mouse, trackpad), counted by the
kernel for the whole machine, whoever's session is in front: a daemon reads the same value as
the console user, so this source also tells for the graphical sessions of other users (see
`officegrid.worker.idle.combine`). It is a CFNumber (SInt64); some macOS versions published it
as an 8-byte CFData holding the same value little-endian, so both are accepted.

The frameworks are opened once per process and the service handle and key string are kept by
the source, so a read is one IORegistryEntryCreateCFProperty, one CFNumberGetValue and one
CFRelease (no subprocess). Everything that touches IOKit is in `IOKitHid`; the rest (ns ->
seconds, which failure means which "cannot tell" reason) is plain Python, unit-tested on every
platform with the IOKit layer injected. Importing this module never fails off macOS.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from collections.abc import Callable
from typing import Protocol

from officegrid.worker.idle.base import IdleReading, cannot

NAME = "macos"
_IOKIT_PATH = "/System/Library/Frameworks/IOKit.framework/IOKit"
_CF_PATH = "/System/Library/Frameworks/CoreFoundation.framework/CoreFoundation"
_MAIN_PORT_DEFAULT = 0  # kIOMasterPortDefault / kIOMainPortDefault are MACH_PORT_NULL
_UTF8 = 0x08000100  # kCFStringEncodingUTF8
_SINT64 = 4  # kCFNumberSInt64Type


class HidError(Exception):
    """HIDIdleTime could not be read; the message is the "cannot tell" reason."""


def hid_idle_seconds(raw: int | bytes) -> float:
    """Seconds since the last HID event from the raw HIDIdleTime value.

    raw: the CFNumber's SInt64 value (nanoseconds), or the bytes of a CFData (little-endian
    unsigned nanoseconds, at most 8 bytes).
    Raises ValueError for a negative number, an empty or over-long blob.
    """
    if isinstance(raw, (bytes, bytearray)):
        if not 1 <= len(raw) <= 8:
            raise ValueError(f"HIDIdleTime data of {len(raw)} bytes (expected 1-8)")
        raw = int.from_bytes(raw, "little")
    if raw < 0:
        raise ValueError(f"negative HIDIdleTime {raw} ns")
    return raw / 1e9


class HidApi(Protocol):
    """The IOKit calls MacSource needs (IOKitHid on macOS; fakes in tests)."""

    def service(self) -> int:
        """The IOHIDSystem service handle; 0 if there is none."""

    def idle_value(self, service: int) -> int | bytes | None:
        """HIDIdleTime of `service`: int (CFNumber), bytes (CFData) or None (no property).

        Raises HidError when the property has another type or does not fit in 64 bits.
        """

    def release(self, service: int) -> None:
        """Release a handle returned by service()."""


_lock = threading.Lock()
_frameworks: tuple[ctypes.CDLL, ctypes.CDLL] | None = None


def _load_frameworks() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    """IOKit and CoreFoundation with their signatures declared, loaded once per process.

    Raises OSError off macOS or when a framework cannot be loaded.
    """
    global _frameworks
    with _lock:
        if _frameworks is not None:
            return _frameworks
        if sys.platform != "darwin":
            raise OSError(f"not macOS ({sys.platform})")
        iokit = ctypes.CDLL(_IOKIT_PATH)  # pragma: no cover - macOS only from here
        cf = ctypes.CDLL(_CF_PATH)  # pragma: no cover
        _declare(iokit, cf)  # pragma: no cover
        _frameworks = (iokit, cf)  # pragma: no cover
        return _frameworks  # pragma: no cover


def _declare(iokit: ctypes.CDLL, cf: ctypes.CDLL) -> None:  # pragma: no cover - macOS only
    """Argument and result types: without them ctypes would truncate pointers to int."""
    vp, u32 = ctypes.c_void_p, ctypes.c_uint32
    iokit.IOServiceMatching.argtypes = [ctypes.c_char_p]
    iokit.IOServiceMatching.restype = vp
    iokit.IOServiceGetMatchingService.argtypes = [u32, vp]  # consumes the matching dict
    iokit.IOServiceGetMatchingService.restype = u32
    iokit.IORegistryEntryCreateCFProperty.argtypes = [u32, vp, vp, u32]
    iokit.IORegistryEntryCreateCFProperty.restype = vp
    iokit.IOObjectRelease.argtypes = [u32]
    iokit.IOObjectRelease.restype = ctypes.c_int
    cf.CFStringCreateWithCString.argtypes = [vp, ctypes.c_char_p, u32]
    cf.CFStringCreateWithCString.restype = vp
    cf.CFGetTypeID.argtypes = [vp]
    cf.CFGetTypeID.restype = ctypes.c_ulong
    cf.CFNumberGetTypeID.argtypes = []
    cf.CFNumberGetTypeID.restype = ctypes.c_ulong
    cf.CFDataGetTypeID.argtypes = []
    cf.CFDataGetTypeID.restype = ctypes.c_ulong
    cf.CFNumberGetValue.argtypes = [vp, ctypes.c_long, vp]
    cf.CFNumberGetValue.restype = ctypes.c_ubyte
    cf.CFDataGetLength.argtypes = [vp]
    cf.CFDataGetLength.restype = ctypes.c_long
    cf.CFDataGetBytePtr.argtypes = [vp]
    cf.CFDataGetBytePtr.restype = vp
    cf.CFRelease.argtypes = [vp]
    cf.CFRelease.restype = None


class IOKitHid:  # pragma: no cover - needs macOS; MacSource's logic is tested with fakes
    """The ctypes calls into IOKit and CoreFoundation (HidApi). Raises OSError off macOS."""

    def __init__(self) -> None:
        self._iokit, self._cf = _load_frameworks()
        self._key = self._cf.CFStringCreateWithCString(None, b"HIDIdleTime", _UTF8)
        if not self._key:
            raise OSError("CFStringCreateWithCString failed")
        self._number_type = self._cf.CFNumberGetTypeID()
        self._data_type = self._cf.CFDataGetTypeID()

    def service(self) -> int:
        matching = self._iokit.IOServiceMatching(b"IOHIDSystem")
        if not matching:
            return 0
        return int(self._iokit.IOServiceGetMatchingService(_MAIN_PORT_DEFAULT, matching))

    def idle_value(self, service: int) -> int | bytes | None:
        prop = self._iokit.IORegistryEntryCreateCFProperty(service, self._key, None, 0)
        if not prop:
            return None
        try:
            type_id = self._cf.CFGetTypeID(prop)
            if type_id == self._number_type:
                value = ctypes.c_int64()
                if not self._cf.CFNumberGetValue(prop, _SINT64, ctypes.byref(value)):
                    raise HidError("HIDIdleTime does not fit in a 64-bit integer")
                return int(value.value)
            if type_id == self._data_type:
                size = int(self._cf.CFDataGetLength(prop))
                if size <= 0:
                    return b""  # hid_idle_seconds says why that is not a time
                return ctypes.string_at(self._cf.CFDataGetBytePtr(prop), size)
            raise HidError(f"HIDIdleTime has CoreFoundation type id {type_id}, "
                           "neither a number nor data")
        finally:
            self._cf.CFRelease(prop)

    def release(self, service: int) -> None:
        if service:
            self._iokit.IOObjectRelease(service)


class MacSource:
    """HIDIdleTime of IOHIDSystem, system wide (one kept service handle, no subprocess).

    api: builds the IOKit layer (default IOKitHid); called once, on the first read. An OSError
    from it (not macOS, framework missing) is that read's and every later read's reason.
    """

    name = NAME

    def __init__(self, api: Callable[[], HidApi] | None = None) -> None:
        self._factory: Callable[[], HidApi] = api or IOKitHid
        self._api: HidApi | None = None
        self._api_error: str | None = None
        self._service = 0
        self._lock = threading.Lock()

    def read(self) -> IdleReading:
        with self._lock:
            try:
                return self._read()
            except Exception as exc:  # noqa: BLE001 - a source never raises
                self._drop()
                return cannot(NAME, f"IOKit query failed: {exc}")

    def _read(self) -> IdleReading:
        if self._api is None:
            if self._api_error is not None:
                return cannot(NAME, self._api_error)
            try:
                self._api = self._factory()
            except OSError as exc:
                self._api_error = str(exc)  # a missing framework does not come back
                return cannot(NAME, self._api_error)
        if not self._service:
            self._service = self._api.service()
            if not self._service:
                return cannot(NAME, "no IOHIDSystem service in the I/O Registry")
        try:
            raw = self._api.idle_value(self._service)
        except HidError as exc:
            return cannot(NAME, str(exc))
        if raw is None:
            self._drop()  # look the service up again next time (it may have been replaced)
            return cannot(NAME, "IOHIDSystem has no HIDIdleTime property")
        try:
            seconds = hid_idle_seconds(raw)
        except ValueError as exc:
            return cannot(NAME, f"HIDIdleTime not understood: {exc}")
        return IdleReading(NAME, seconds, "IOHIDSystem HIDIdleTime (system wide)")

    def _drop(self) -> None:
        if self._service and self._api is not None:
            service, self._service = self._service, 0
            self._api.release(service)
        self._service = 0

    def close(self) -> None:
        with self._lock:
            self._drop()
