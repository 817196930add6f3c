"""The unit runner: runs a job's function over one unit's records, as a child of the supervisor.

STANDARD LIBRARY ONLY. This file is executed by the *release's* Python (its own virtualenv, where
officegrid is not installed), so it must never import officegrid or any third-party module.

Invocation (cwd = the attempt directory)::

    python /abs/path/runner.py SPEC.json

SPEC.json (an object; relative paths are relative to the attempt directory)::

    release_dir        str    directory put first on sys.path; the entry module is imported from it
    entry              str    "module:function" (module may be dotted; function may be a dotted
                              attribute path such as "Class.method")
    input              str    unit input: UTF-8 JSON Lines, one ``[key, record]`` per line
                              (key int or str, record an object)
    output             str    unit output, JSON Lines, one line per input record, in input order
    log                str    the job log (``ctx.log`` writes here, with timestamps)
    attempt_id, release_id, worker: str;  unit_id, job_id: int     (passed to ``ctx``)
    progress_interval  float  seconds between progress messages (default 0.5; 0 = every record)
    extra              dict   passed to ``ctx.extra`` (default {})
    data               dict   data source name -> replica file (``ctx.data(name)``; default {});
                              each result row then carries ``_data``: {name: [epoch, position]}
                              (epoch: the source's full epoch id, as in ``data status``)

Output lines, JSON with ``ensure_ascii=False`` and compact separators::

    {"k": key, "r": [row, ...]}      function returned a dict (-> [dict]), a list of dicts, or None
    {"k": key, "e": "text"}          the call raised (traceback text), or its result cannot be
                                     encoded (the text names the offending value and where it is)

Encoding: datetime/date/time -> isoformat string, Decimal -> str. NaN/Infinity, any other type,
and a return value that is not dict / list of dicts / None make that record an error; the unit goes
on. The output file is flushed and fsynced before "done" or "stopped" is reported.

The function is called as ``fn(record, ctx)``. If it has an int attribute ``batch_size`` (see
``officegrid.batch``), it is called as ``fn(records, ctx)`` with lists of up to batch_size records
and must return a list of the same length (each element dict / list of dicts / None). If a batch
call raises or returns the wrong length, that batch is re-run one record at a time (``fn([record],
ctx)``) so that the error is pinned on the record that caused it. (The records are not copied:
a batch call that mutated its records before failing leaves them mutated for the re-run.)

``ctx`` has the attributes release_id, unit_id, attempt_id, job_id, worker, release_dir (Path),
log (logging.Logger "officegrid.job", INFO and up; the root logger also writes to the job log) and
extra (dict).

Standard streams. At start the runner duplicates fd 1 (the pipe read by the supervisor) to a
private, non-inheritable fd used only for control messages, and points fd 1 and ``sys.stdout`` at
``stdout.log`` in the attempt directory, so user prints (and C code writing to fd 1) never corrupt
the control channel. It likewise moves fd 0 (the supervisor's command pipe) to a private fd and
points fd 0 at /dev/null, so user code or a grandchild reading stdin cannot steal commands.
Because the private fds are not inherited, grandchildren never hold the control pipe open: EOF on
the supervisor's side means the runner itself has gone. stderr is left as the supervisor opened it.

Control messages (one JSON object per line on the control channel)::

    {"type": "started", "pid": int}                      first message
    {"type": "progress", "done": int, "errors": int}     at most every progress_interval seconds
    {"type": "import_error", "error": str}               then exit 3
    {"type": "done", "done": int, "errors": int}         then exit 0
    {"type": "stopped", "done": int, "errors": int}      then exit 0 (after a stop request; the
                                                         output holds exactly `done` lines)

"done" counts records written to the output, "errors" those of them that are errors.

Commands on stdin: the line ``stop`` asks the runner to stop after the current record (batch form:
the current batch) and report "stopped". EOF on stdin means the supervisor has died: the runner
SIGKILLs its whole process group (it is the group leader; the supervisor starts it in a new
session) so that no grandchild survives it. If it is not a group leader (run by hand) it kills only
itself. A thread watches stdin, so this works while user code is busy -- unless a C extension holds
the GIL for a long time; the supervisor's next start sweeps such leftovers. On Linux the runner
also sets PR_SET_PDEATHSIG to SIGCONT: a runner that was SIGSTOPped when its supervisor died is
continued, sees the EOF and kills its group (a SIGKILL death signal would kill only the runner and
leave stopped grandchildren behind).

SIGTERM keeps its default action (immediate death): a graceful end is asked for over stdin.

Exit codes: 0 done or stopped; 1 failure of the runner itself (bad spec, malformed input line,
output not writable...; traceback on stderr); 3 import error (module missing, syntax error, missing
attribute, not callable, bad batch_size). Any other code (or a negative one, a signal) comes from
user code (``os._exit``) or from being killed. After "done"/"stopped" the runner leaves with
``os._exit`` once its own files are flushed, so a non-daemon thread left by user code cannot keep a
finished unit alive (user ``atexit`` handlers do not run).

Overhead (measured on the development VM, CPython 3.11, x86-64): a trivial
``process(record, ctx): return record`` over 200,000 small records (5 fields) costs about
4.0 us/record end to end (read, decode, call, encode, write), the batch form (batch_size 500)
the same, plus about 35 ms of start-up. A bare loop doing only ``json`` decode + encode + file
I/O of the same lines takes 3.8 us/record, so the runner itself adds about 0.2 us/record.

Compatibility: written for Python 3.8+ (release environments may be older than officegrid's
own Python); tested on 3.11.
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import importlib
import itertools
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_IMPORT_ERROR = 3

STDOUT_LOG = "stdout.log"
DEFAULT_PROGRESS_INTERVAL = 0.5
MARKER_ENV = "OFFICEGRID_MARKER"  # set by the supervisor; unused here, documented for tracing

_PR_SET_PDEATHSIG = 1


class InputError(Exception):
    """The unit input file is malformed (a runner failure: exit 1)."""


class ImportFailure(Exception):
    """The entry point cannot be loaded (exit 3); the message is the text to report."""


# --------------------------------------------------------------------------------------------
# Encoding


def _json_default(obj):
    if isinstance(obj, (datetime.date, datetime.time)):  # datetime is a subclass of date
        return obj.isoformat()
    if isinstance(obj, decimal.Decimal):
        return str(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


_ENCODER = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_json_default
)
_encode = _ENCODER.encode
_CONTROL_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _locate_bad_value(obj, path: str, seen: set[int]) -> tuple[str, str] | None:
    """Find the first value the encoder refuses: ``(path, problem)`` or None. Error path only."""
    if obj is None or isinstance(obj, (str, bool, int)):
        return None
    if isinstance(obj, float):
        if math.isnan(obj) or math.isinf(obj):
            return path, f"{obj!r} (NaN and Infinity are not valid JSON)"
        return None
    if isinstance(obj, (datetime.date, datetime.time, decimal.Decimal)):
        return None
    if isinstance(obj, (dict, list, tuple)):
        if id(obj) in seen:
            return path, "a circular reference"
        seen.add(id(obj))
        if isinstance(obj, dict):
            for k, v in obj.items():
                where = f"{path}[{k!r}]"
                if not (k is None or isinstance(k, (str, int, float, bool))):
                    return where, f"a key of type {type(k).__name__}"
                found = _locate_bad_value(v, where, seen)
                if found:
                    return found
        else:
            for i, v in enumerate(obj):
                found = _locate_bad_value(v, f"{path}[{i}]", seen)
                if found:
                    return found
        seen.discard(id(obj))
        return None
    return path, f"a value of type {type(obj).__name__}"


def _encode_result(key, result) -> tuple[str, bool]:
    """Encode one record's result as an output line: ``(line, is_error)``."""
    if isinstance(result, dict):
        rows = [result]
    elif result is None:
        rows = []
    elif isinstance(result, list):
        rows = result
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                return _encode(
                    {
                        "k": key,
                        "e": (
                            f"result row {i} is {type(row).__name__}; "
                            "expected a dict, a list of dicts or None"
                        ),
                    }
                ), True
    else:
        return _encode(
            {
                "k": key,
                "e": (
                    f"result is {type(result).__name__}; expected a dict, a list of dicts or None"
                ),
            }
        ), True
    try:
        return _encode({"k": key, "r": rows}), False
    except (TypeError, ValueError, RecursionError) as exc:
        found = None
        with contextlib.suppress(RecursionError):
            found = _locate_bad_value(result, "result", set())
        if found:
            text = f"result cannot be encoded as JSON: {found[0]} is {found[1]}"
        else:
            text = f"result cannot be encoded as JSON: {exc}"
        return _encode({"k": key, "e": text}), True


def _format_exception(exc: BaseException) -> str:
    """Traceback text of an exception raised by user code, without the runner's own frame."""
    tb = exc.__traceback__
    if tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb)).rstrip("\n")


# --------------------------------------------------------------------------------------------
# Channels


class Control:
    """Writes control messages (one JSON object per line) to the private control fd."""

    def __init__(self, fd: int, on_broken) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self._on_broken = on_broken

    def send(self, msg: dict) -> None:
        data = (_CONTROL_ENCODER.encode(msg) + "\n").encode("utf-8")
        with self._lock:
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self._fd, view) :]
            except BrokenPipeError:
                # Nobody reads the control channel any more: the supervisor is gone.
                self._on_broken()


class Supervision:
    """Watches the supervisor's command pipe in a daemon thread.

    ``stop`` lines set :attr:`stop_requested`; EOF (or a read error) means the supervisor died and
    the process group is killed, unless the runner is already finishing.
    """

    def __init__(self, fd: int) -> None:
        self.stop_requested = threading.Event()
        self.finishing = False
        self._fd = fd
        self._thread = threading.Thread(target=self._watch, name="officegrid-stdin", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _watch(self) -> None:
        try:
            with open(self._fd, "rb", closefd=True) as pipe:
                for line in pipe:
                    if line.strip() == b"stop":
                        self.stop_requested.set()
        except (OSError, ValueError):
            pass
        if not self.finishing:
            die_with_supervisor()


def die_with_supervisor() -> None:
    """Kill the runner's whole process group (or only the runner if it leads none). No return."""
    try:
        if hasattr(os, "killpg") and os.getpgrp() == os.getpid():
            os.killpg(os.getpid(), signal.SIGKILL)
        elif hasattr(signal, "SIGKILL"):
            os.kill(os.getpid(), signal.SIGKILL)
    finally:
        os._exit(EXIT_FAILURE)


def _set_parent_death_signal() -> None:
    """Linux: be sent SIGCONT when the supervisor (the thread that forked us) dies.

    A SIGSTOPped runner cannot notice stdin EOF; SIGCONT wakes it so its stdin thread can kill the
    group. (SIGCONT is harmless otherwise, so the "thread exit counts as parent death" quirk of
    PR_SET_PDEATHSIG cannot kill a healthy unit.)
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGCONT), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def take_over_stdio() -> tuple[int, int]:
    """Move the supervisor's pipes to private fds; point fds 0/1 at /dev/null and stdout.log.

    Returns ``(command_fd, control_fd)``. Raises OSError if fd 0 or 1 is not open.
    """
    control_fd = os.dup(1)  # os.dup makes the copy non-inheritable
    command_fd = os.dup(0)
    log_fd = os.open(STDOUT_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.close(log_fd)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    os.close(null_fd)
    sys.stdout = open(  # noqa: SIM115 - lives as long as the process
        1, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1
    )
    sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
    return command_fd, control_fd


# --------------------------------------------------------------------------------------------
# Job code


class Context:
    """What the job function gets as ``ctx``. Job code may set its own attributes on it (for
    example a connection opened on the first record); it lives as long as the unit."""

    def __init__(self, spec: dict, log: logging.Logger) -> None:
        self.release_id = spec.get("release_id")
        self.unit_id = spec.get("unit_id")
        self.attempt_id = spec.get("attempt_id")
        self.job_id = spec.get("job_id")
        self.worker = spec.get("worker")
        self.release_dir = Path(spec["release_dir"])
        self.log = log
        self.extra = dict(spec.get("extra") or {})
        self._data_paths = dict(spec.get("data") or {})
        # data source name -> (read-only connection, [epoch, position])
        self._data: dict = {}

    def data(self, name: str):
        """A read-only ``sqlite3`` connection to the replica of data source ``name``.

        It holds one read transaction for the whole unit: every query sees the replica at the
        same position while changes keep arriving (each result row records it in ``_data``).

        Raises:
            KeyError: the job did not declare ``name`` (``submit --data NAME``).
        """
        if name not in self._data:
            if name not in self._data_paths:
                raise KeyError(f"data source {name!r} is not declared by this job (declared: "
                               f"{', '.join(sorted(self._data_paths)) or 'none'}); submit with "
                               f"--data {name}")
            self._data[name] = _open_replica(self._data_paths[name])
        return self._data[name][0]

    def data_positions(self) -> dict:
        """``{name: [epoch, position]}`` of the replicas this unit reads.

        The epoch (str, full id) is needed because a position alone is ambiguous: a replaced
        source, a destructive ``data sql`` or a restored master restart at the same numbers.
        """
        return {name: list(at) for name, (_, at) in self._data.items()}

    def __repr__(self) -> str:
        return (
            f"Context(job_id={self.job_id!r}, unit_id={self.unit_id!r}, "
            f"attempt_id={self.attempt_id!r}, release_id={self.release_id!r})"
        )


def _open_replica(path: str):
    """Open a replica read-only (``mode=ro``) in one read transaction.

    Returns ``(conn, [epoch, position])`` (epoch str, position int). Same as
    ``officegrid.sync.replication.reader.open_snapshot`` (this module is stdlib only).

    Raises:
        sqlite3.OperationalError: the file is missing or not a replica (no epoch/position).
    """
    import sqlite3
    from urllib.parse import quote

    conn = sqlite3.connect("file:" + quote(os.path.abspath(path)) + "?mode=ro", uri=True,
                           isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA query_only=ON")
    conn.execute("BEGIN")
    # The first read fixes the snapshot; the epoch and position read in it are the data's.
    meta = dict(conn.execute("SELECT k, v FROM _og_replica WHERE k IN ('epoch', 'pos')"))
    if "pos" not in meta or "epoch" not in meta:
        conn.close()
        raise sqlite3.OperationalError(f"{path}: not a replica (no epoch/position)")
    return conn, [meta["epoch"], int(meta["pos"])]


def _with_data(fn, positions: dict, batch: bool):
    """Wrap ``fn`` so each result row carries ``_data`` (``{name: [epoch, position]}`` read)."""

    def tag(result):
        if isinstance(result, dict):
            return {**result, "_data": positions}
        if isinstance(result, list):
            return [{**r, "_data": positions} if isinstance(r, dict) else r for r in result]
        return result

    if batch:
        def wrapped(records, ctx):
            out = fn(records, ctx)
            return [tag(r) for r in out] if isinstance(out, list) else out
    else:
        def wrapped(record, ctx):
            return tag(fn(record, ctx))
    for attr in ("batch_size",):
        if hasattr(fn, attr):
            setattr(wrapped, attr, getattr(fn, attr))
    return wrapped


def _make_logger(path: str) -> logging.Logger:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    log = logging.getLogger("officegrid.job")
    log.setLevel(logging.INFO)
    return log


def load_entry(release_dir: str, entry: str):
    """Import ``module:function`` from release_dir. Returns ``(function, batch_size or None)``.

    Raises ImportFailure with the traceback text for any problem.
    """
    try:
        module_name, sep, attr = entry.partition(":")
        if not sep or not module_name or not attr:
            raise ValueError(f"entry {entry!r} is not of the form 'module:function'")
        top = module_name.split(".")[0]
        clash = sys.modules.get(top)
        sys.path.insert(0, release_dir)
        importlib.invalidate_caches()
        obj = importlib.import_module(module_name)
        if clash is not None:
            origin = os.path.abspath(getattr(clash, "__file__", None) or "<built-in>")
            if not origin.startswith(os.path.join(os.path.abspath(release_dir), "")):
                raise ImportError(
                    f"module name {top!r} clashes with the already imported module at {origin}; "
                    "rename the job module"
                )
        for part in attr.split("."):
            obj = getattr(obj, part)
        if not callable(obj):
            raise TypeError(f"{entry} is a {type(obj).__name__}, not a function")
        batch_size = getattr(obj, "batch_size", None)
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise TypeError(f"{entry}.batch_size must be an int >= 1, got {batch_size!r}")
        return obj, batch_size
    except (Exception, SystemExit) as exc:
        raise ImportFailure(
            "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip("\n")
        ) from None


def read_input(path: str):
    """Yield ``(key, record)`` from a unit input file. Raises InputError naming file and line."""
    decode = json.JSONDecoder().decode
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                item = decode(line)
            except ValueError as exc:
                if not line.strip():
                    continue
                raise InputError(f"{path}:{lineno}: not valid JSON: {exc}") from None
            if (
                type(item) is not list
                or len(item) != 2
                or type(item[0]) not in (int, str)
                or not isinstance(item[1], dict)
            ):
                raise InputError(
                    f"{path}:{lineno}: expected [key, record] with an int or str key and an "
                    f"object record, got {line[:200]!r}"
                )
            yield item[0], item[1]


# --------------------------------------------------------------------------------------------
# The record loop


class Unit:
    """Runs the function over the records, writing output lines and progress messages."""

    def __init__(
        self, fn, ctx: Context, out, control: Control, supervision: Supervision, interval: float
    ) -> None:
        self.fn = fn
        self.ctx = ctx
        self.out = out
        self.control = control
        self.stop = supervision.stop_requested
        self.interval = max(0.0, interval)
        self.done = 0
        self.errors = 0
        self.stopped = False
        self._next_progress = time.monotonic() + self.interval

    def _progress(self) -> None:
        now = time.monotonic()
        if now >= self._next_progress:
            self.out.flush()
            self.control.send({"type": "progress", "done": self.done, "errors": self.errors})
            self._next_progress = now + self.interval

    def run_records(self, records) -> None:
        fn, ctx, write, stop = self.fn, self.ctx, self.out.write, self.stop
        encode, encode_result = _encode, _encode_result
        monotonic = time.monotonic
        for key, record in records:
            if stop.is_set():
                self.stopped = True
                return
            try:
                result = fn(record, ctx)
            except (Exception, SystemExit) as exc:
                write(encode({"k": key, "e": _format_exception(exc)}) + "\n")
                self.errors += 1
            else:
                line, failed = encode_result(key, result)
                write(line + "\n")
                if failed:
                    self.errors += 1
            self.done += 1
            if monotonic() >= self._next_progress:
                self._progress()

    def run_batches(self, records, size: int) -> None:
        fn, ctx, write, stop = self.fn, self.ctx, self.out.write, self.stop
        it = iter(records)
        while True:
            if stop.is_set():
                # Peek: a stop after the last record still means done.
                batch = list(itertools.islice(it, 1))
                if batch:
                    self.stopped = True
                return
            batch = list(itertools.islice(it, size))
            if not batch:
                return
            try:
                results = fn([record for _, record in batch], ctx)
                ok = isinstance(results, list) and len(results) == len(batch)
            except (Exception, SystemExit):
                ok = False
            if ok:
                for (key, _), result in zip(batch, results):  # noqa: B905 - lengths checked
                    line, failed = _encode_result(key, result)
                    write(line + "\n")
                    self.errors += failed
                self.done += len(batch)
            else:
                for i, (key, record) in enumerate(batch):
                    if i and stop.is_set():
                        self.stopped = True
                        return
                    self._run_one_of_batch(key, record)
                    self._progress()
            self._progress()

    def _run_one_of_batch(self, key, record) -> None:
        try:
            result = self.fn([record], self.ctx)
        except (Exception, SystemExit) as exc:
            line, failed = _encode({"k": key, "e": _format_exception(exc)}), True
        else:
            if isinstance(result, list) and len(result) == 1:
                line, failed = _encode_result(key, result[0])
            else:
                got = (
                    f"{len(result)} results"
                    if isinstance(result, list)
                    else (f"a {type(result).__name__}")
                )
                line, failed = (
                    _encode(
                        {
                            "k": key,
                            "e": (
                                f"batch function returned {got} for a batch of 1 record; "
                                "expected a list with one entry per record"
                            ),
                        }
                    ),
                    True,
                )
        self.out.write(line + "\n")
        self.done += 1
        self.errors += failed


# --------------------------------------------------------------------------------------------
# Main


def run(spec_path: str) -> int:
    """Run one unit as described by the spec file. Returns the exit code (see module doc)."""
    command_fd, control_fd = take_over_stdio()
    supervision = Supervision(command_fd)
    control = Control(control_fd, on_broken=die_with_supervisor)
    _set_parent_death_signal()
    control.send({"type": "started", "pid": os.getpid()})
    supervision.start()

    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    if not isinstance(spec, dict):
        raise ValueError(f"{spec_path}: the spec must be a JSON object")
    release_dir = os.path.abspath(spec["release_dir"])
    spec["release_dir"] = release_dir
    interval = float(spec.get("progress_interval", DEFAULT_PROGRESS_INTERVAL))

    log = _make_logger(spec["log"])
    ctx = Context(spec, log)

    # The script's own directory (officegrid/worker/) must not shadow job modules.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    try:
        fn, batch_size = load_entry(release_dir, spec["entry"])
    except ImportFailure as exc:
        supervision.finishing = True
        control.send({"type": "import_error", "error": str(exc)})
        return EXIT_IMPORT_ERROR

    # backslashreplace: a lone surrogate (legal in JSON input as "\\ud800") can only occur inside a
    # JSON string, where the escape it is replaced by is exactly its JSON spelling.
    # The unit's data: one read transaction per declared source, opened before the first record.
    for name in ctx._data_paths:
        ctx.data(name)
    if ctx.data_positions():
        fn = _with_data(fn, ctx.data_positions(), batch_size is not None)

    with open(
        spec["output"], "w", encoding="utf-8", errors="backslashreplace", buffering=1 << 16
    ) as out:
        unit = Unit(fn, ctx, out, control, supervision, interval)
        records = read_input(spec["input"])
        if batch_size is None:
            unit.run_records(records)
        else:
            unit.run_batches(records, batch_size)
        out.flush()
        os.fsync(out.fileno())
    supervision.finishing = True
    kind = "stopped" if unit.stopped else "done"
    control.send({"type": kind, "done": unit.done, "errors": unit.errors})
    return EXIT_OK


def _finish(code: int) -> None:
    """Flush what the runner owns and leave at once (see module doc: no waiting for threads)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
    # A user's logging handler failing must not change the exit code.
    with contextlib.suppress(Exception):
        logging.shutdown()
    os._exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``runner.py SPEC.json``. Never returns (exits with the codes in the doc)."""
    argv = sys.argv if argv is None else argv
    if len(argv) != 2:
        print("usage: runner.py SPEC.json", file=sys.stderr)
        _finish(EXIT_FAILURE)
    try:
        code = run(argv[1])
    except BaseException:  # any failure of the runner itself is exit 1
        traceback.print_exc()
        code = EXIT_FAILURE
    _finish(code)


if __name__ == "__main__":
    main()
