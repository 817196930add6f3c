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
from officegrid.envs.lock import Lock

app = typer.Typer(rich_markup_mode=None, no_args_is_help=True,
                  help="Publish, promote, list and pull code releases.")


def _git_commit(directory: Path) -> str | None:
    """HEAD of the git checkout holding ``directory``, with ``-dirty`` appended when files
    under ``directory`` differ from it (modified, staged, deleted or untracked, as `git status
    --porcelain` lists them); None outside a checkout."""
    def git(*args: str) -> subprocess.CompletedProcess | None:
        try:
            return subprocess.run(["git", "-C", str(directory), *args], capture_output=True,
                                  text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None

    head = git("rev-parse", "HEAD")
    if head is None or head.returncode != 0:
        return None
    commit = head.stdout.strip()
    status = git("status", "--porcelain", "--", ".")
    if status is None or status.returncode != 0 or status.stdout.strip():
        commit += "-dirty"  # uncommitted edits (or a status we could not read)
    return commit


UPLOAD_BATCH_BYTES = 8 << 20  # compressed bytes per upload request
UPLOAD_BATCH_ITEMS = 512


def default_cache_dir() -> Path:
    """The user's shared chunk cache for `release pull` (content-addressed, safe to share)."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("officegrid", appauthor=False)) / "chunks"


def publish(c: Client, directory: Path, channel: str | None, message: str | None = None,
            author: str | None = None, show_progress: bool = True,
            sign: Path | None = None, wheelhouse: Path | None = None,
            python: str | None = None) -> dict:
    """Build the release tree of ``directory``, upload only the blobs the server lacks, and
    record the release (moving ``channel`` to it). Returns the release info plus
    ``bytes_uploaded`` and ``blobs_uploaded``.

    Dependencies (``requirements.txt`` or ``pyproject.toml``) are locked with hashes into
    ``.officegrid/lock.txt`` for interpreter ``python`` (default: this one); with
    ``wheelhouse`` only that directory is used and its wheels ship in ``.officegrid/wheels/``
    (see :mod:`officegrid.envs.lock`). The user's directory is not written to.

    Raises:
        sync.tree.BuildError / sync.names.UnsafeName: a path cannot be published (named).
        envs.lock.LockError: the dependencies cannot be locked (names the requirement).
        ApiError: the server refused the release.
    """
    import tempfile

    from officegrid.envs.lock import resolve

    lock = resolve(directory, wheelhouse=wheelhouse, python=python)
    if lock is None and wheelhouse is not None:
        raise ValueError(f"--wheelhouse given but {directory} has no requirements.txt or "
                         "pyproject.toml dependencies")
    with tempfile.TemporaryDirectory(prefix="og-publish-") as staging:
        return _publish(c, directory, channel, message, author, show_progress, sign, lock,
                        Path(staging))


def _publish(c: Client, directory: Path, channel: str | None, message: str | None,
             author: str | None, show_progress: bool, sign: Path | None,
             lock: Lock | None, staging: Path) -> dict:
    from officegrid.cas import compress, hash_bytes
    from officegrid.sync.statcache import StatCache
    from officegrid.sync.tree import BuildError, build_tree, read_chunk

    cache = StatCache(default_cache_dir().parent / "statcache.db")
    try:
        tree = build_tree(directory, stat_cache=cache)
    finally:
        cache.close()
    if lock is not None and not lock.user_lock:
        from officegrid.envs.ship import add_lock

        add_lock(tree, lock, staging)
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
        signer=signer, env=lock.env if lock else None))
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
           wheelhouse: Path = typer.Option(None, "--wheelhouse", help="resolve dependencies "
                                           "against this directory of wheels only and ship "
                                           "them in the release (workers need no index)"),
           python: str = typer.Option(None, "--python", help="interpreter the workers run "
                                      "(dependencies are resolved for it) [default: this one]"),
           server: str = ServerOpt, token: str = TokenOpt, ca: Path = CaOpt,
           as_json: bool = JsonOpt) -> None:
    """Publish DIR as a release (uploads only what the server lacks); prints the release id.

    Dependencies in DIR/requirements.txt (or pyproject.toml [project].dependencies) are locked
    with hashes into .officegrid/lock.txt inside the release; workers install exactly that lock.
    Publishing content that is already a release only moves the channel: the release keeps
    the message, author and git commit it was first published with.
    """
    p.check_channel_name(channel)
    with client(server, token, ca) as c:
        info = publish(c, directory, channel, message, sign=sign, wheelhouse=wheelhouse,
                       python=python)
    if info.get("existed"):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(info["created_at"]))
        first = f"published {when}" + (f" by {info['author']}" if info.get("author") else "")
        first += (f" with message {info['message']!r}" if info.get("message")
                  else " without a message")
        if info.get("git_commit"):
            first += f", git {info['git_commit']}"
        if sign is not None:
            first += f", signed by key {info.get('signer')}"
        say(f"release {info['id'][:12]} already exists ({first}): nothing changed except the "
            "channel" + (" (and the signature, if it had none)" if sign is not None else "")
            + "; the first message, author and git commit are kept")
    emit(info, as_json, info["id"],
         f"release {info['id'][:12]}: {info['file_count']} file(s), "
         f"{info['total_bytes']:,} bytes; uploaded {info['blobs_uploaded']} blob(s) "
         f"({info['bytes_uploaded']:,} bytes compressed); "
         + (f"environment {info['env'][:12]}; " if info.get("env") else "")
         + f"channel {channel} -> {info['id'][:12]}")


@app.command("promote")
@handle_errors
def promote(src: str = typer.Argument(..., help="channel (or release id) to promote"),
            dst: str = typer.Argument(None, help="channel to move"),
            to: str = typer.Option(None, "--to", help="move SRC (a channel) to this release id "
                                   "instead (rollback)"),
            server: str = ServerOpt, token: str = TokenOpt, ca: Path = CaOpt,
            as_json: bool = JsonOpt) -> None:
    """Point channel DST at SRC's release (`promote trunk worker`), or SRC --to ID."""
    usage = "give SRC DST, or CHANNEL --to RELEASE_ID"
    if to is not None and dst is not None:
        raise ValueError(f"{usage}, not both (got DST {dst!r} and --to {to!r})")
    if to is None and dst is None:
        raise ValueError(usage)
    if to is not None:  # SRC is the channel to move
        p.check_channel_name(src)
        p.check_release_ref(to)
    else:
        p.check_release_ref(src)
        p.check_channel_name(dst)
    with client(server, token, ca) as c:
        info = c.promote(src, release=to) if to is not None else c.promote(dst, source=src)
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
         max_bandwidth: str = typer.Option(None, "--max-bandwidth",
                                           help="cap on the download rate, e.g. 2MB/s"),
         server: str = ServerOpt, token: str = TokenOpt, ca: Path = CaOpt) -> None:
    """Make DIR equal to a release, like `rsync -a --delete`; prints bytes received and time."""
    from officegrid.cas import ContentStore
    from officegrid.sync.bandwidth import TokenBucket, parse_rate
    from officegrid.sync.materialize import pull_into
    from officegrid.worker.fetch import blob_fetcher

    p.check_release_ref(channel)
    bucket = None
    if max_bandwidth is not None:
        try:
            bucket = TokenBucket(parse_rate(max_bandwidth))
        except ValueError as exc:
            raise ValueError(f"--max-bandwidth: {exc}") from None
    start = time.monotonic()
    with client(server, token, ca) as c:
        c.bandwidth = bucket
        rid = c.release(channel)["id"]
        store = ContentStore(cache or default_cache_dir(), durable=False)
        stats = pull_into(rid, to, cache=store, fetch=blob_fetcher(c, store))
        received = c.bytes_received
        total = c.release(rid)["total_bytes"]
    say(f"release {rid[:12]} -> {to}: {stats.files_written} files written, "
        f"{stats.removed} removed (files or directories not in the release), "
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

    p.check_release_ref(a)
    p.check_release_ref(b)
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
        f"{len(d.removed)} removed; a worker holding {old[:12]} fetches at most "
        f"{d.bytes_to_fetch:,} bytes of file content (new chunks before compression and delta "
        "encoding; manifests not counted)")
