"""X11: XScreenSaverQueryInfo (libXss) idle time, plus screen saver and DPMS state.

The X server counts milliseconds since the last input event of any device; this is what
xprintidle and HTCondor's X11 idle detection read. One connection is opened and kept (a read is a
single round trip). If the X server goes away, Xlib would normally call exit(): an I/O error
handler and, with libX11 >= 1.7, an exit handler that returns keep the agent alive; the source
then reports "cannot tell" and reconnects on the next read.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

from officegrid.worker.idle.base import IdleReading, cannot

NAME = "x11"


class _XScreenSaverInfo(ctypes.Structure):
    _fields_ = [
        ("window", ctypes.c_ulong),
        ("state", ctypes.c_int),
        ("kind", ctypes.c_int),
        ("til_or_since", ctypes.c_ulong),
        ("idle", ctypes.c_ulong),
        ("eventMask", ctypes.c_ulong),
    ]


_SAVER_STATE = {0: "off", 1: "on", 3: "disabled"}  # ScreenSaverOff/On/Disabled
_DPMS_LEVEL = {0: "on", 1: "standby", 2: "suspend", 3: "off"}

_IOERR = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
_EXITH = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
_ERRH = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)

_libs_lock = threading.Lock()
_libs: tuple | None = None
_dead: set[int] = set()  # displays that had an I/O error


@_IOERR
def _on_io_error(dpy: int) -> int:
    _dead.add(dpy or 0)
    return 0


@_EXITH
def _on_exit(dpy: int, _data: int) -> None:
    # Returning instead of exiting: Xlib marks the display dead and later calls fail fast.
    _dead.add(dpy or 0)


@_ERRH
def _on_error(_dpy: int, _event: int) -> int:
    return 0  # protocol errors (e.g. a missing extension request) must not print or exit


def _load() -> tuple:
    """(libX11, libXss, libXext or None); raises OSError if libX11 or libXss is missing."""
    global _libs
    with _libs_lock:
        if _libs is not None:
            return _libs
        x11_name = ctypes.util.find_library("X11")
        xss_name = ctypes.util.find_library("Xss")
        if not x11_name:
            raise OSError("libX11 not found")
        if not xss_name:
            raise OSError("libXss (XScreenSaver extension library) not found")
        x11 = ctypes.CDLL(x11_name)
        xss = ctypes.CDLL(xss_name)
        ext_name = ctypes.util.find_library("Xext")
        ext = ctypes.CDLL(ext_name) if ext_name else None
        x11.XInitThreads()
        x11.XOpenDisplay.restype = ctypes.c_void_p
        x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
        x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
        x11.XDefaultRootWindow.restype = ctypes.c_ulong
        x11.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
        x11.XFree.argtypes = [ctypes.c_void_p]
        x11.XSetIOErrorHandler.argtypes = [_IOERR]
        x11.XSetIOErrorHandler.restype = ctypes.c_void_p
        x11.XSetErrorHandler.argtypes = [_ERRH]
        x11.XSetErrorHandler.restype = ctypes.c_void_p
        x11.XSetIOErrorHandler(_on_io_error)
        x11.XSetErrorHandler(_on_error)
        if hasattr(x11, "XSetIOErrorExitHandler"):
            x11.XSetIOErrorExitHandler.argtypes = [ctypes.c_void_p, _EXITH, ctypes.c_void_p]
        xss.XScreenSaverQueryExtension.argtypes = [ctypes.c_void_p,
                                                   ctypes.POINTER(ctypes.c_int),
                                                   ctypes.POINTER(ctypes.c_int)]
        xss.XScreenSaverAllocInfo.restype = ctypes.POINTER(_XScreenSaverInfo)
        xss.XScreenSaverQueryInfo.argtypes = [ctypes.c_void_p, ctypes.c_ulong,
                                              ctypes.POINTER(_XScreenSaverInfo)]
        if ext is not None:
            ext.DPMSQueryExtension.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int),
                                               ctypes.POINTER(ctypes.c_int)]
            ext.DPMSInfo.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_ushort),
                                     ctypes.POINTER(ctypes.c_ubyte)]
        _libs = (x11, xss, ext)
        return _libs


class X11Source:
    """Idle time of the X display `display` (default: $DISPLAY), over one kept connection."""

    name = NAME

    def __init__(self, display: str | None = None) -> None:
        self._display_name = display
        self._dpy: int | None = None
        self._info = None
        self._root = 0
        self._has_dpms = False
        self._lock = threading.Lock()  # one connection, used from one thread at a time

    def _open(self, name: str) -> str | None:
        """Connect; returns why not, or None on success."""
        try:
            x11, xss, ext = _load()
        except OSError as exc:
            return str(exc)
        dpy = x11.XOpenDisplay(name.encode())
        if not dpy:
            return f"cannot open display {name} (not running, or no access: XAUTHORITY)"
        if hasattr(x11, "XSetIOErrorExitHandler"):
            x11.XSetIOErrorExitHandler(dpy, _on_exit, None)
        ev, err = ctypes.c_int(), ctypes.c_int()
        if not xss.XScreenSaverQueryExtension(dpy, ctypes.byref(ev), ctypes.byref(err)):
            x11.XCloseDisplay(dpy)
            return f"XScreenSaver extension missing on display {name}"
        self._has_dpms = bool(ext is not None and ext.DPMSQueryExtension(
            dpy, ctypes.byref(ev), ctypes.byref(err)))
        self._dpy = dpy
        self._root = x11.XDefaultRootWindow(dpy)
        self._info = xss.XScreenSaverAllocInfo()
        return None

    def read(self) -> IdleReading:
        name = self._display_name or os.environ.get("DISPLAY")
        if not name:
            return cannot(NAME, "no DISPLAY")
        with self._lock:
            try:
                return self._read(name)
            except Exception as exc:  # noqa: BLE001 - a source never raises
                self._drop()
                return cannot(NAME, f"X11 query failed: {exc}")

    def _read(self, name: str) -> IdleReading:
        if self._dpy is None:
            why = self._open(name)
            if why:
                return cannot(NAME, why)
        x11, xss, ext = _load()
        ok = xss.XScreenSaverQueryInfo(self._dpy, self._root, self._info)
        if (self._dpy or 0) in _dead or not ok:
            self._drop()
            return cannot(NAME, f"lost the connection to display {name}")
        info = self._info.contents
        parts = [f"display {name}", f"screensaver {_SAVER_STATE.get(info.state, info.state)}"]
        if self._has_dpms and ext is not None:
            level, state = ctypes.c_ushort(), ctypes.c_ubyte()
            if ext.DPMSInfo(self._dpy, ctypes.byref(level), ctypes.byref(state)) and state.value:
                parts.append(f"dpms {_DPMS_LEVEL.get(level.value, level.value)}")
        # Under Wayland this is XWayland, which sees only the input of X11 clients: the reading
        # can show activity but not that the owner is away (Mutter/ScreenSaver can).
        wayland = bool(os.environ.get("WAYLAND_DISPLAY")) or \
            os.environ.get("XDG_SESSION_TYPE", "").lower() == "wayland"
        if wayland:
            parts.append("XWayland: partial, sees only X11 clients' input")
        return IdleReading(NAME, info.idle / 1000.0, ", ".join(parts), partial=wayland)

    def _drop(self) -> None:
        if self._dpy is not None:
            x11, _, _ = _load()
            if self._info is not None:
                x11.XFree(self._info)
            x11.XCloseDisplay(self._dpy)
            _dead.discard(self._dpy)
        self._dpy = None
        self._info = None

    def close(self) -> None:
        with self._lock:
            try:
                self._drop()
            except Exception:  # noqa: BLE001 - closing a dead connection must not raise
                self._dpy = None
