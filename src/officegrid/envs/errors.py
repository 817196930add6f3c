"""Short summaries of an installer's output, for a job's reason (``status``).

A failed build's error holds the installer's output tail (thousands of characters). A job's
reason gets the lines that say what failed: pip's ``ERROR:`` lines, uv's ``error:`` / ``Caused
by:`` lines, and after a hash mismatch the lines that name the package and the expected and
actual hashes (pip prints them right after "THESE PACKAGES DO NOT MATCH THE HASHES", uv after
"Hash mismatch"), so the reason says which wheel differs, not only that one does.
"""

from __future__ import annotations

import re

_CAUSE = ("error", "cause", "caused by")
_HASH_HEADER = re.compile(r"DO NOT MATCH THE HASHES|hash mismatch", re.IGNORECASE)
_KEEP = re.compile(r"not in the wheelhouse", re.IGNORECASE)
_HASH_DETAIL_LINES = 8  # lines kept after a hash-mismatch header (package, expected, got...)


def _shorten(line: str) -> str:
    # pip's hash error is one long line whose first sentence says it all.
    if _HASH_HEADER.search(line) and line.upper().startswith("ERROR: THESE PACKAGES"):
        return line.split(". ", 1)[0].rstrip(".") + "."
    return line


def summarize(error: str, max_lines: int = 10) -> str:
    """The lines of ``error`` (an installer's output, or a message holding it) that say what
    failed, whitespace-collapsed and joined with `` | ``; "" for an empty ``error``.

    Kept, in order: error and cause lines, lines saying a requirement is not in the wheelhouse,
    and up to 8 lines after a hash-mismatch header (the package, ``Expected sha256 ...``, ``Got
    ...``); else the first two lines. The last line is added when it is not kept already (it
    often names the file or hash).
    """
    lines = [" ".join(ln.split()) for ln in error.strip().splitlines() if ln.strip()]
    picked: list[str] = []
    detail = 0  # lines still to keep after a hash-mismatch header
    for ln in lines:
        low = ln.lower()
        if low.startswith(_CAUSE) or _KEEP.search(ln):
            picked.append(_shorten(ln))
            detail = _HASH_DETAIL_LINES if _HASH_HEADER.search(ln) else 0
        elif detail:
            if low.startswith(("warning", "note:", "hint:")):
                detail = 0
                continue
            picked.append(ln)
            detail -= 1
    picked = picked or lines[:2]
    picked = picked[:max_lines]
    picked += [ln for ln in lines[-1:] if _shorten(ln) not in picked and ln not in picked]
    seen: set[str] = set()
    return " | ".join(ln for ln in picked if not (ln in seen or seen.add(ln)))
