"""Windows: is a session report file owned by the user whose session it claims?

On POSIX read_reports (officegrid.worker.idle.reporter) drops a report file not owned by the
uid it names. Windows reports carry no uid (every one says 0): a report names its session as
``<user>-<session id>`` (reporter.session_id, sessions_windows.session_name), and without a
check any local user could write a report for another user's session (say "idle for hours"
while that user types). Here the file's owner SID (GetNamedSecurityInfoW,
OWNER_SECURITY_INFORMATION) is turned into an account name (LookupAccountSidW) and compared,
case-insensitively as Windows does, with the user the session names. Files owned by LocalSystem
or BUILTIN\\Administrators are accepted too (the root case on POSIX: a file made by an
elevated admin is owned by the Administrators group, and such a user could do anything anyway).

Checking by path after the file was read is sound: the check fails closed, and passing it would
take a file owned by the claimed user with someone else's text in it, which that user's own
ACLs forbid (the reporter replaces its file atomically; other users cannot write or delete it).
Names are compared without the domain (the report has none): a local account and a domain
account of the same name are not told apart.

The logic is plain Python over :class:`SecurityApi`; the ctypes calls are in
:class:`Win32SecurityApi`. Verified by unit tests only, not on a real Windows machine.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from dataclasses import dataclass
from typing import Protocol

TRUSTED_SIDS = {"S-1-5-18": "LocalSystem", "S-1-5-32-544": "BUILTIN\\Administrators"}
"""Owners whose files may report any session (string SIDs)."""

SE_FILE_OBJECT = 1
OWNER_SECURITY_INFORMATION = 0x00000001


@dataclass(frozen=True)
class Account:
    """A file owner: string SID (``S-1-5-21-...``), account name and domain ("" if unknown)."""

    sid: str
    name: str
    domain: str = ""


def claimed_user(session: str) -> str | None:
    """The user a Windows session name ``<user>-<session id>`` claims, or None if the name is
    not of that form (user names may themselves contain "-": the id is after the last one)."""
    user, sep, number = session.rpartition("-")
    if not sep or not user or not number.isdigit():
        return None
    return user


def file_owned_by(path: str, user: str, api: SecurityApi | None = None) -> bool:
    """True if file ``path`` is owned by account ``user`` (case-insensitive) or by LocalSystem /
    Administrators; False when the owner cannot be read. Used for owners' pause files, whose
    name is the user. Never raises."""
    return report_owner_ok(path, f"{user}-0", api)


def owner_may_report(owner: Account, session: str) -> bool:
    """True if a report file owned by ``owner`` may speak for ``session``: the owner is the
    user the session names (case-insensitive), or LocalSystem / Administrators."""
    if owner.sid.upper() in TRUSTED_SIDS:
        return True
    user = claimed_user(session)
    return bool(user) and bool(owner.name) and owner.name.casefold() == user.casefold()


class SecurityApi(Protocol):
    """What :func:`report_owner_ok` needs from Windows."""

    def file_owner(self, path: str) -> Account:
        """The owner of file ``path``; raises OSError if it cannot be read."""


class Win32SecurityApi:  # pragma: no cover - needs Windows; the logic above is tested
    """advapi32 GetNamedSecurityInfoW / ConvertSidToStringSidW / LookupAccountSidW.

    Raises OSError off Windows.
    """

    def __init__(self) -> None:
        if sys.platform != "win32":
            raise OSError(f"file owner SIDs need Windows (this is {sys.platform})")
        vp, u32, i32 = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int
        a = ctypes.WinDLL("advapi32", use_last_error=True)  # type: ignore[attr-defined]
        k = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
        pvp = ctypes.POINTER(vp)
        a.GetNamedSecurityInfoW.argtypes = [ctypes.c_wchar_p, i32, u32, pvp, pvp, pvp, pvp, pvp]
        a.GetNamedSecurityInfoW.restype = u32  # a Win32 error code, 0 = success
        a.ConvertSidToStringSidW.argtypes = [vp, ctypes.POINTER(ctypes.c_wchar_p)]
        a.ConvertSidToStringSidW.restype = i32
        a.LookupAccountSidW.argtypes = [ctypes.c_wchar_p, vp, ctypes.c_wchar_p,
                                        ctypes.POINTER(u32), ctypes.c_wchar_p,
                                        ctypes.POINTER(u32), ctypes.POINTER(i32)]
        a.LookupAccountSidW.restype = i32
        k.LocalFree.argtypes = [vp]
        k.LocalFree.restype = vp
        self._a, self._k = a, k

    def file_owner(self, path: str) -> Account:
        owner, sd = ctypes.c_void_p(), ctypes.c_void_p()
        err = self._a.GetNamedSecurityInfoW(path, SE_FILE_OBJECT, OWNER_SECURITY_INFORMATION,
                                            ctypes.byref(owner), None, None, None,
                                            ctypes.byref(sd))
        if err:
            raise ctypes.WinError(err)  # type: ignore[attr-defined]
        try:
            if not owner.value:
                raise OSError(f"{path}: no owner")
            text = ctypes.c_wchar_p()
            if not self._a.ConvertSidToStringSidW(owner, ctypes.byref(text)):
                raise ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined]
            try:
                sid = text.value or ""
            finally:
                self._k.LocalFree(ctypes.cast(text, ctypes.c_void_p))
            name = ctypes.create_unicode_buffer(256)
            domain = ctypes.create_unicode_buffer(256)
            n_name, n_domain = ctypes.c_uint32(256), ctypes.c_uint32(256)
            use = ctypes.c_int()
            if not self._a.LookupAccountSidW(None, owner, name, ctypes.byref(n_name), domain,
                                             ctypes.byref(n_domain), ctypes.byref(use)):
                # An orphaned SID (deleted account) has no name: it matches nobody.
                return Account(sid, "", "")
            return Account(sid, name.value, domain.value)
        finally:
            self._k.LocalFree(sd)


_api: SecurityApi | None = None
_api_lock = threading.Lock()


def _default_api() -> SecurityApi:
    global _api
    with _api_lock:
        if _api is None:
            _api = Win32SecurityApi()
        return _api


def report_owner_ok(path: str, session: str, api: SecurityApi | None = None) -> bool:
    """True if the report file ``path`` is owned by the user ``session`` names (or by
    LocalSystem / Administrators). False when the owner cannot be read: a report nobody can
    vouch for is ignored, never trusted. Never raises.
    ``api``: default :class:`Win32SecurityApi`."""
    try:
        owner = (api if api is not None else _default_api()).file_owner(path)
    except OSError:
        return False
    return owner_may_report(owner, session)
