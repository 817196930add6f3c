"""Server-side check of an uploaded release tree before it is recorded."""

from __future__ import annotations

from officegrid.cas import BlobError, ContentStore
from officegrid.sync.manifest import Entry, ManifestError, parse_manifest, tree_blobs


class ReleaseIncomplete(Exception):
    """Some manifest or file chunk of the release has not been uploaded."""


def release_blobs(blobs: ContentStore, root: str) -> set[str]:
    """Walk the release tree rooted at manifest ``root``; return every blob it references.

    Each manifest is parsed with the same strict validation the workers apply, so a malformed
    or unsafe tree is refused at publish time.

    Raises:
        ReleaseIncomplete: a manifest or chunk is missing (names the first, counts all).
        ValueError: a manifest is malformed or unsafe (ManifestError), naming its directory.
    """
    seen: set[str] = set()
    missing: list[str] = []

    def entries_of(digest: str, where: str) -> list[Entry] | None:
        try:
            data = blobs.read(digest)
        except BlobError:
            missing.append(f"manifest of {where}")
            return None
        try:
            return parse_manifest(data, where=where)
        except ManifestError as exc:
            raise ValueError(str(exc)) from exc

    for kind, digest, where in tree_blobs(root, entries_of):
        seen.add(digest)
        if kind == "chunk" and not blobs.has(digest):
            missing.append(where)
    if missing:
        raise ReleaseIncomplete(
            f"release {root[:12]} is incomplete: {len(missing)} blob(s) missing, "
            f"first: {missing[0]}"
        )
    return seen
