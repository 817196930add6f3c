"""Safe file and directory names for releases, checked by the publisher and by every worker.

A release is materialized on Windows, Linux and macOS desktops, so a name must be usable on all
of them and must not be able to escape the release directory. :func:`check_name` judges one name,
:func:`check_siblings` the names of one directory together (names that one of the filesystems
would treat as the same file), and :func:`long_path_warning` flags paths that old Windows APIs
cannot open (a warning, not an error).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

#: Paths longer than this (in characters) get a warning: the classic Windows ``MAX_PATH``.
MAX_PATH = 260

#: Longest name in UTF-8 bytes (ext4, APFS and NTFS all stop at about 255).
MAX_NAME_BYTES = 255

# Device names Windows reserves in every directory, with or without an extension.
_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{dev}{n}" for dev in ("COM", "LPT") for n in "123456789\u00b9\u00b2\u00b3"]
)

# Characters Windows refuses in names (besides the control characters and the separators).
_WINDOWS_FORBIDDEN = frozenset('<>:"|?*')


class UnsafeName(ValueError):
    """A name (or a set of sibling names) that is not safe on every supported platform.

    Attributes:
        path: the offending path (relative, ``/``-separated) or name, as given by the caller.
        reason: what is wrong, in words.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"unsafe name {path!r}: {reason}")


def check_name(name: str, *, path: str | None = None) -> None:
    """Check that ``name`` is one safe path component.

    Refused: a non-string or empty name, ``.`` and ``..``, names containing ``/``, ``\\``, NUL or
    any other control character (Unicode category Cc), the characters ``< > : " | ? *`` (which
    Windows cannot store), Windows device names (``CON``, ``PRN``, ``AUX``, ``NUL``, ``COM1``-
    ``COM9``, ``LPT1``-``LPT9``, ``CONIN$``, ``CONOUT$``; in any case and also with an extension,
    e.g. ``con.txt``), names ending with a dot or a space, names not in Unicode NFC form, and
    names longer than :data:`MAX_NAME_BYTES` UTF-8 bytes.

    Args:
        name: one path component.
        path: the path to report in the error (defaults to ``name``).
    Raises:
        UnsafeName: with ``path`` and the reason.
    """
    where = name if path is None else path
    if not isinstance(name, str):
        raise UnsafeName(repr(where), "not a string")
    if not name:
        raise UnsafeName(where, "empty name")
    if name in (".", ".."):
        raise UnsafeName(where, f"{name!r} is not allowed")
    if "/" in name or "\\" in name:
        raise UnsafeName(where, "contains a path separator ('/' or '\\')")
    if "\x00" in name:
        raise UnsafeName(where, "contains a NUL character")
    for ch in name:
        if unicodedata.category(ch) == "Cc":
            raise UnsafeName(where, f"contains the control character U+{ord(ch):04X}")
        if ch in _WINDOWS_FORBIDDEN:
            raise UnsafeName(where, f"contains {ch!r}, which Windows does not allow in names")
    if name[-1] in ". ":
        raise UnsafeName(where, "ends with a dot or a space (Windows drops them)")
    stem = name.split(".", 1)[0].rstrip(" ")
    if stem.upper() in _RESERVED:
        raise UnsafeName(where, f"{stem!r} is a device name reserved on Windows")
    if not unicodedata.is_normalized("NFC", name):
        raise UnsafeName(where, "not in Unicode NFC form")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise UnsafeName(where, f"longer than {MAX_NAME_BYTES} bytes in UTF-8")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafeName(where, "contains a lone surrogate (not valid Unicode text)") from None


def fold_name(name: str) -> str:
    """Return the key under which two sibling names count as the same file.

    Names collide when they are equal after Unicode normalization and case folding (as on the
    default filesystems of Windows and macOS): ``fold_name(a) == fold_name(b)``.
    """
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", name).casefold())


def check_siblings(names: Iterable[str], *, where: str = "") -> None:
    """Check that no two of ``names`` (the entries of one directory) collide.

    Two names collide if they are equal, or equal after NFC/NFD normalization and case folding
    (``"A"`` and ``"a"``; ``"é"`` precomposed and decomposed), see :func:`fold_name`.

    Args:
        names: the entry names of one directory.
        where: that directory's relative path, used in the error (``""`` for the root).
    Raises:
        UnsafeName: naming the two colliding paths.
    """
    seen: dict[str, str] = {}
    for name in names:
        key = fold_name(name)
        other = seen.get(key)
        if other is not None:
            path = f"{where}/{name}" if where else name
            raise UnsafeName(
                path,
                f"collides with its sibling {other!r} on case-insensitive or "
                "normalizing filesystems",
            )
        seen[key] = name


def long_path_warning(path: str) -> str | None:
    """Return a warning if the relative ``path`` is longer than :data:`MAX_PATH` characters.

    Returns:
        the warning text, or ``None`` if the path is short enough.
    """
    if len(path) > MAX_PATH:
        return (
            f"path is {len(path)} characters long (more than {MAX_PATH}); Windows programs "
            f"without long-path support may fail to open it: {path}"
        )
    return None
