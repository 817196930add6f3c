"""The unit runner, run for real as the supervisor runs it (spawn_runner, pipes, files)."""

from __future__ import annotations

import ast
import json
import re
import shutil
import sys
import time
import uuid
from pathlib import Path

import pytest

from officegrid.worker import runner
from officegrid.worker.processes import (
    RUNNER_PATH,
    RunnerProcess,
    spawn_runner,
    sweep_leftovers,
)

JOBS = Path(__file__).parent / "jobs"
DEADLINE = 20.0  # seconds: generous upper bound for one unit; a passing test takes far less

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def start_unit(tmp_path):
    """Factory: write an attempt dir (input, spec) and spawn the runner on it."""
    prefix = f"ogtest-{uuid.uuid4().hex[:12]}:"
    started: list[RunnerProcess] = []

    def start(
        entry,
        records=(),
        *,
        release_dir=JOBS,
        python=sys.executable,
        env=None,
        input_text=None,
        **spec,
    ):
        attempt = tmp_path / f"attempt{len(started)}"
        attempt.mkdir()
        if input_text is None:
            input_text = "".join(json.dumps([k, r]) + "\n" for k, r in records)
        (attempt / "in.jsonl").write_text(input_text, encoding="utf-8")
        full = {
            "release_dir": str(release_dir),
            "entry": entry,
            "input": "in.jsonl",
            "output": "out.jsonl",
            "log": "job.log",
            "attempt_id": attempt.name,
            "unit_id": 11,
            "job_id": 7,
            "release_id": "rel-abc",
            "worker": "desk-1",
            "progress_interval": 0.0,
            "extra": {},
        }
        full.update(spec)
        (attempt / "spec.json").write_text(json.dumps(full), encoding="utf-8")
        rp = spawn_runner(
            python,
            attempt / "spec.json",
            attempt,
            attempt / "stderr.log",
            env,
            prefix + attempt.name,
        )
        started.append(rp)
        return rp, attempt

    yield start
    for rp in started:
        rp.close()
    sweep_leftovers(prefix)


def finish(rp: RunnerProcess, timeout: float = DEADLINE) -> tuple[list[dict], int | None]:
    """All control messages until the channel closes, then the exit code."""
    deadline = time.monotonic() + timeout
    messages = []
    while not rp.channel_closed:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"runner did not finish in {timeout}s; got {messages}"
        msg = rp.read_message(timeout=remaining)
        if msg is not None:
            messages.append(msg)
    return messages, rp.wait(max(1.0, deadline - time.monotonic()))


def output(attempt: Path) -> list[dict]:
    text = (attempt / "out.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def records(*modes, **fields):
    return [(i, {"n": i, "mode": mode, **fields}) for i, mode in enumerate(modes)]


def test_trivial_job_runs_to_done(start_unit):
    recs = [(i, {"n": i, "text": "Zürich"}) for i in range(5)]
    rp, attempt = start_unit("basic:process", recs)
    messages, rc = finish(rp)

    assert rc == 0
    assert messages[0] == {"type": "started", "pid": rp.pid}
    assert messages[-1] == {"type": "done", "done": 5, "errors": 0}
    progress = [m["done"] for m in messages[1:-1]]
    assert all(m["type"] == "progress" for m in messages[1:-1])  # nothing user-printed leaked
    assert progress and progress == sorted(progress) and progress[-1] <= 5
    assert output(attempt) == [
        {"k": i, "r": [{"n": i, "double": 2 * i, "text": "Zürich"}]} for i in range(5)
    ]
    assert "Zürich" in (attempt / "out.jsonl").read_text(encoding="utf-8")  # ensure_ascii=False
    stdout_log = (attempt / "stdout.log").read_text(encoding="utf-8")
    assert [f"print from user code: {i}" for i in range(5)] == stdout_log.splitlines()
    job_log = (attempt / "job.log").read_text(encoding="utf-8").splitlines()
    assert len(job_log) == 5
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO officegrid\.job: record 0", job_log[0]
    )


def test_ctx_attributes(start_unit):
    rp, attempt = start_unit("basic:process", records("ctx"), extra={"lang": "de"})
    _, rc = finish(rp)
    assert rc == 0
    assert output(attempt) == [
        {
            "k": 0,
            "r": [
                {
                    "release_id": "rel-abc",
                    "unit_id": 11,
                    "attempt_id": "attempt0",
                    "job_id": 7,
                    "worker": "desk-1",
                    "release_dir": str(JOBS),
                    "extra": {"lang": "de"},
                }
            ],
        }
    ]


def test_record_that_raises_is_pinned_and_the_unit_goes_on(start_unit):
    rp, attempt = start_unit("basic:process", records(None, "raise", None))
    messages, rc = finish(rp)
    assert rc == 0
    assert messages[-1] == {"type": "done", "done": 3, "errors": 1}
    out = output(attempt)
    assert [line["k"] for line in out] == [0, 1, 2]
    assert out[0]["r"] and out[2]["r"]
    error = out[1]["e"]
    assert error.startswith("Traceback (most recent call last):")
    assert "basic.py" in error and error.endswith("ValueError: bad record 1")
    assert "runner.py" not in error  # the runner's own frame is left out


def test_result_encoding_and_record_errors(start_unit):
    recs = records("convert", "set", "nan", "int", "list_of_int", "none", "two", None, "stdin")
    recs[7][1]["text"] = "lone \ud800 surrogate"
    rp, attempt = start_unit("basic:process", recs)
    messages, rc = finish(rp)
    assert rc == 0
    assert messages[-1] == {"type": "done", "done": 9, "errors": 4}
    out = {line["k"]: line for line in output(attempt)}
    assert out[0] == {
        "k": 0,
        "r": [{"day": "2024-03-01", "at": "2024-03-01T12:30:00", "price": "12.50"}],
    }
    assert "set" in out[1]["e"] and "'tags'" in out[1]["e"]
    assert "nan" in out[2]["e"] and "NaN" in out[2]["e"] and "'x'" in out[2]["e"]
    assert "int" in out[3]["e"] and "expected a dict, a list of dicts or None" in out[3]["e"]
    assert "row 1 is int" in out[4]["e"]
    assert out[5] == {"k": 5, "r": []}
    assert out[6] == {"k": 6, "r": [{"i": 1}, {"i": 2}]}
    assert out[7]["r"][0]["text"] == "lone \ud800 surrogate"  # round-trips as a JSON escape
    assert out[8] == {"k": 8, "r": [{"stdin": ""}]}  # user code cannot read the command pipe


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("no_such_module:process", "ModuleNotFoundError: No module named 'no_such_module'"),
        ("broken:process", "SyntaxError"),
        ("basic:no_such_function", "has no attribute 'no_such_function'"),
        ("basic:NOT_CALLABLE", "basic:NOT_CALLABLE is a int, not a function"),
        ("basic", "is not of the form 'module:function'"),
        ("json:dumps", "clashes with the already imported module"),
    ],
)
def test_import_error(start_unit, tmp_path, entry, expected):
    release = tmp_path / "release"
    release.mkdir()
    shutil.copy(JOBS / "basic.py", release / "basic.py")
    (release / "broken.py").write_text("def process(record, ctx:\n    return record\n")
    (release / "json.py").write_text("def dumps(record, ctx):\n    return record\n")
    rp, attempt = start_unit(entry, records(None), release_dir=release)
    messages, rc = finish(rp)
    assert rc == runner.EXIT_IMPORT_ERROR == 3
    assert [m["type"] for m in messages] == ["started", "import_error"]
    assert expected in messages[1]["error"]
    assert "Traceback" in messages[1]["error"] or "clashes" in expected


def test_batch_form_pins_a_failing_batch_on_its_record(start_unit):
    recs = [(i, {"n": i, "bad": i == 4}) for i in range(8)]
    rp, attempt = start_unit("batched:process", recs)
    messages, rc = finish(rp)
    assert rc == 0
    assert messages[-1] == {"type": "done", "done": 8, "errors": 1}
    out = output(attempt)
    assert [line["k"] for line in out] == list(range(8))
    assert "RuntimeError: bad record in batch: 4" in out[4]["e"]
    sizes = {line["k"]: line["r"][0]["size"] for line in out if "r" in line}
    assert sizes == {0: 3, 1: 3, 2: 3, 3: 1, 5: 1, 6: 2, 7: 2}
    assert (attempt / "stdout.log").read_text().splitlines() == [
        "batch of 3",
        "batch of 3",
        "batch of 1",
        "batch of 1",
        "batch of 1",
        "batch of 2",
    ]


def test_batch_form_wrong_length_is_pinned(start_unit):
    recs = [(f"key{i}", {"n": i, "short": i == 1}) for i in range(3)]
    rp, attempt = start_unit("batched:process", recs)
    messages, rc = finish(rp)
    assert rc == 0
    assert messages[-1] == {"type": "done", "done": 3, "errors": 1}
    out = output(attempt)
    assert [line["k"] for line in out] == ["key0", "key1", "key2"]
    assert "returned 0 results for a batch of 1 record" in out[1]["e"]
    assert out[0]["r"] == [{"n": 0, "size": 1}] and out[2]["r"] == [{"n": 2, "size": 1}]


def test_stop_request_mid_unit(start_unit):
    total = 300
    recs = [(i, {"n": i}) for i in range(total)]
    rp, attempt = start_unit("slow:process", recs, extra={"delay": 0.02}, progress_interval=0.05)
    deadline = time.monotonic() + DEADLINE
    while True:  # wait until the unit is under way
        msg = rp.read_message(timeout=max(0.0, deadline - time.monotonic()))
        assert msg is not None, "no progress"
        if msg["type"] == "progress" and msg["done"] >= 3:
            break
    assert rp.request_stop()
    messages, rc = finish(rp)
    assert rc == 0
    stopped = messages[-1]
    assert stopped["type"] == "stopped" and 3 <= stopped["done"] < total
    assert stopped["errors"] == 0
    out = output(attempt)
    assert len(out) == stopped["done"]
    assert [line["k"] for line in out] == list(range(stopped["done"]))
    assert not rp.request_stop()  # the runner is gone


def test_user_code_crash_gives_its_exit_code(start_unit):
    rp, attempt = start_unit("basic:process", records(None, "crash", None))
    messages, rc = finish(rp)
    assert rc == 7
    assert all(m["type"] in ("started", "progress") for m in messages)


def test_malformed_input_is_a_runner_failure(start_unit):
    rp, attempt = start_unit("basic:process", input_text='[0, {"n": 0}]\nnot json\n')
    messages, rc = finish(rp)
    assert rc == runner.EXIT_FAILURE == 1
    assert "in.jsonl:2: not valid JSON" in (attempt / "stderr.log").read_text()
    assert all(m["type"] in ("started", "progress") for m in messages)


def test_runner_uses_only_the_standard_library(start_unit, tmp_path):
    tree = ast.parse(RUNNER_PATH.read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported

    # And it runs under an interpreter where officegrid is not importable at all.
    system_python = shutil.which("python3", path="/usr/bin:/bin")
    if system_python is None:
        pytest.skip("no system python3 outside the virtualenv")
    env = {"PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1"}
    rp, attempt = start_unit("basic:process", records(None), python=system_python, env=env)
    messages, rc = finish(rp)
    assert rc == 0, (attempt / "stderr.log").read_text()
    assert messages[-1] == {"type": "done", "done": 1, "errors": 0}
