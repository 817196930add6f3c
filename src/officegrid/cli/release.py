"""``officegrid release``: publish, promote, list and pull code releases."""

from __future__ import annotations

import getpass
import subprocess
import time
from pathlib import Path

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from officegrid import protocol as p
from officegrid.cli.common import (
    CaOpt,
    JsonOpt,
    ServerOpt,
    TokenOpt,
    client,
    emit,
    err,
    handle_errors,
    out,
    say,
    show,
)
from officegrid.client import Client

app = typer.Typer(rich_markup_mode=None, no_args_is_help=True,
                  help="Publish, promote, list and pull code releases.")


def _git_commit(directory: Path) -> str | None:
    try:
        res = subprocess.run(["git", "-C", str(directory), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


UPLOAD_BATCH_BYTES = 8 << 20  # compressed bytes per upload request
UPLOAD_BATCH_ITEMS = 512


def default_cache_dir() -> Path:
    """The user's shared chunk cache for `release pull` (content-addressed, safe to share)."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("officegrid", appauthor=False)) / "chunks"


def publish(c: Client, directory: Path, channel: str | None, message: str | None = None,
            author: str | None = None, show_progress: bool = True,
            sign: Path | None = None) -> dict:
    """Build the release tree of ``directory``, upload only the blobs the server lacks, and
    record the release (moving ``channel`` to it). Returns the release info plus
    ``bytes_uploaded`` and ``blobs_uploaded``.

    Raises:
        sync.tree.BuildError / sync.names.UnsafeName: a path cannot be published (named).
        ApiError: the server refused the release.
    """
    from officegrid.cas import compress, hash_bytes
    from officegrid.sync.statcache import StatCache
    from officegrid.sync.tree import BuildError, build_tree, read_chunk

    cache = StatCache(default_cache_dir().parent / "statcache.db")
    try:
        tree = build_tree(directory, stat_cache=cache)
    finally:
        cache.close()
    for w in tree.warnings:
        say(f"warning: {w}")
    hashes = list(tree.manifests) + list(tree.chunks)
    missing = c.missing_blobs(hashes)
    todo_bytes = sum(tree.chunks[h][2] for h in missing if h in tree.chunks)
    uploaded = 0
    batch: list[tuple[str, bytes]] = []
    batch_bytes = 0

    def flush() -> None:
        nonlocal batch, batch_bytes
        if batch:
            c.put_frames(batch)
        batch, batch_bytes = [], 0

    with Progress(TextColumn("uploading"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=err, disable=not show_progress or not missing, transient=True) as prog:
        task = prog.add_task("upload", total=todo_bytes)
        for h in missing:
            if h in tree.manifests:
                data = tree.manifests[h]
            else:
                path, offset, size = tree.chunks[h]
                data = read_chunk(path, offset, size)
                if hash_bytes(data) != h:
                    raise BuildError(path, "the file changed while the release was being built")
                prog.advance(task, len(data))
            frame = compress(data)
            batch.append((h, frame))
            batch_bytes += len(frame)
            uploaded += len(frame)
            if batch_bytes >= UPLOAD_BATCH_BYTES or len(batch) >= UPLOAD_BATCH_ITEMS:
                flush()
        flush()
    signature = signer = None
    if sign is not None:
        from officegrid.signing import load_private, sign_release

        signature, signer = sign_release(load_private(sign), tree.root_hash)
    info = c.create_release(p.ReleaseCreate(
        id=tree.root_hash, channel=channel, message=message,
        author=author or getpass.getuser(), git_commit=_git_commit(directory),
        file_count=tree.file_count, total_bytes=tree.total_bytes, signature=signature,
        signer=signer))
    info["bytes_uploaded"] = uploaded
    info["blobs_uploaded"] = len(missing)
    return info


@app.command("create")
@handle_errors
def create(directory: Path = typer.Argument(..., help="the code directory to publish"),
           channel: str = typer.Option("trunk", "--channel", "-c",
                                       help="channel to point at the new release"),
           message: str = typer.Option(None, "--message", "-m"),
           sign: Path = typer.Option(None, "--sign", help="private key file (`officegrid keys "
                                     "create`) to sign the release with"),
           server: str = ServerOpt, token: str = TokenOpt, ca: Path = CaOpt,
           as_json: bool = JsonOpt) -> None:
    """Publish DIR as a release (uploads only what the server lacks); prints the release id."""
    with client(server, token, ca) as c:
        info = publish(c, directory, channel, message, sign=sign)
    emit(info, as_json, info["id"],
         f"release {info['id'][:12]}: {info['file_count']} file(s), "
         f"{info['total_bytes']:,} bytes; uploaded {info['blobs_uploaded']} blob(s) "
         f"({info['bytes_uploaded']:,} bytes compressed); "
         f"channel {channel} -> {info['id'][:12]}")


@app.command("promote")
@handle_errors
def promote(src: str = typer.Argument(..., help="channel (or release id) to promote"),
            dst: str = typer.Argument(None, help="channel to move"),
            to: str = typer.Option(None, "--to", help="move SRC (a channel) to this release id "
                                   "instead (rollback)"),
            server: str = ServerOpt, token: str = TokenOpt, ca: Path = CaOpt,
            as_json: bool = JsonOpt) -> None:
    """Point channel DST at SRC's release (`promote trunk worker`), or SRC --to ID."""
    with client(server, token, ca) as c:
        if to:
            info = c.promote(src, release=to)
        elif dst:
            info = c.promote(dst, source=src)
        else:
            raise ValueError("give SRC DST, or CHANNEL --to RELEASE_ID")
    emit(info, as_json, info["release"], f"channel {info['name']} -> {info['release'][:12]}")


@app.command("list")
@handle_errors
def list_(server: str = ServerOpt, token: str = TokenOpt, ca: Path = CaOpt,
          as_json: bool = JsonOpt) -> None:
    """List releases, newest first, with the channels pointing at them."""
    import json

    with client(server, token, ca) as c:
        rows = c.releases()
    if as_json:
        out.print_json(json.dumps(rows))
        return
    t = Table("id", "channels", "created", "author", "files", "bytes", "git", "message")
    t.columns[0].no_wrap = True
    t.columns[1].no_wrap = True
    for r in rows:
        t.add_row(r["id"][:12], ",".join(r["channels"]),
                  time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created_at"])),
                  r["author"] or "", str(r["file_count"]), f"{r['total_bytes']:,}",
                  (r["git_commit"] or "")[:10], r["message"] or "")
    out.print(t)


@app.command("pull")
@handle_errors
def pull(channel: str = typer.Argument(..., help="channel or release id"),
         to: Path = typer.Option(..., "--to", help="directory to make equal to the release"),
         cache: Path = typer.Option(None, "--cache",
                                    help="chunk cache [default: the user cache dir]"),
         server: str = ServerOpt, token: str = TokenOpt, ca: Path = CaOpt) -> None:
    """Make DIR equal to a release, like `rsync -a --delete`; prints bytes received and time."""
    from officegrid.cas import ContentStore
    from officegrid.sync.materialize import pull_into
    from officegrid.worker.fetch import blob_fetcher

    start = time.monotonic()
    with client(server, token, ca) as c:
        rid = c.release(channel)["id"]
        store = ContentStore(cache or default_cache_dir(), durable=False)
        stats = pull_into(rid, to, cache=store, fetch=blob_fetcher(c))
        received = c.bytes_received
        total = c.release(rid)["total_bytes"]
    say(f"release {rid[:12]} -> {to}: {stats.files_written} files written, "
        f"{max(0, total - stats.bytes_fetched):,} of {total:,} bytes reused locally, "
        f"{stats.chunks_fetched} chunks + {stats.manifests_fetched} manifests fetched, "
        f"{received:,} bytes received, {time.monotonic() - start:.2f}s")
    out.print(rid)


@app.command("diff")
@handle_errors
def diff(a: str = typer.Argument(..., help="old release (id, prefix or channel)"),
         b: str = typer.Argument(..., help="new release (id, prefix or channel)"),
         server: str = ServerOpt, token: str = TokenOpt, ca: Path = CaOpt,
         as_json: bool = JsonOpt) -> None:
    """List files changed, added and removed from A to B, and the bytes a worker holding A
    would fetch for B (only directories whose hash differs are read)."""
    import json

    from officegrid.cas import ContentStore
    from officegrid.sync.manifest import diff as tree_diff
    from officegrid.worker.fetch import blob_fetcher

    with client(server, token, ca) as c:
        old, new = c.release(a)["id"], c.release(b)["id"]
        store = ContentStore(default_cache_dir())
        fetch = blob_fetcher(c)

        def get_manifest(digest: str) -> bytes:
            if not store.has(digest):
                for h, data in fetch([digest]):
                    if h == digest:
                        store.put(data)
            return store.read(digest)

        d = tree_diff(old, new, get_manifest)
    if as_json:
        out.print_json(json.dumps({"old": old, "new": new, "added": d.added,
                                   "removed": d.removed, "changed": d.changed,
                                   "bytes_to_fetch": d.bytes_to_fetch}))
        return
    for path in d.changed:
        show(f"M {path}")
    for path in d.added:
        show(f"A {path}")
    for path in d.removed:
        show(f"D {path}")
    say(f"{old[:12]} -> {new[:12]}: {len(d.changed)} changed, {len(d.added)} added, "
        f"{len(d.removed)} removed; a worker holding {old[:12]} fetches {d.bytes_to_fetch:,} "
        "bytes")
