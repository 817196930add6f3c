"""`officegrid token create | revoke`, authentication errors, `workers` and `drain`."""

from __future__ import annotations

import contextlib
import json

import pytest

from conftest import Grid
from grid import WorkerProc, wait_for

from .test_cli_support import Cli, module_grid, write_tree


@pytest.fixture(scope="module")
def mgrid(tmp_path_factory):
    with module_grid(tmp_path_factory, "tokens") as g:
        yield g


@pytest.fixture
def cli(mgrid, tmp_path) -> Cli:
    return Cli(mgrid.server.url, mgrid.server.admin_token, tmp_path)


def start_worker(g, tmp_path, name: str, enroll: str) -> WorkerProc:
    w = WorkerProc(g.server.url, tmp_path / f"work-{name}", enroll=enroll,
                   extra_args=["--name", name])
    g.workers.append(w)  # killed with the grid
    return w.start()


def test_enroll_token_for_one_worker_then_revoke_it(mgrid, cli, tmp_path):
    res = cli.ok("token", "create", "--enroll", "--uses", "1")
    assert len(res.lines) == 1, res  # the secret alone on stdout
    token = res.last_line
    assert token.startswith("oge_") and len(token) > 20, res
    assert "1 uses" in res.err, res

    w = start_worker(mgrid, tmp_path, "desk-17", token)
    wait_for(lambda: "desk-17" in cli.ok("workers").stdout, 60, interval=0.2,
             what="desk-17 in `officegrid workers`")
    listed = json.loads(cli.ok("workers", "--json").stdout)
    assert [x["name"] for x in listed if x["name"] == "desk-17"] == ["desk-17"]

    # The join token had one use: a second machine cannot join with it.
    second = start_worker(mgrid, tmp_path, "desk-18", token)
    assert second.proc.wait(60) != 0
    assert "this join token has no uses left" in second.output()
    assert "desk-18" not in cli.ok("workers").stdout

    # Revoking the worker's token stops it with a message saying so.
    rv = cli.ok("token", "revoke", "desk-17")
    assert rv.out == "revoked 1 token(s) named 'desk-17'", rv
    wait_for(lambda: w.proc.poll() is not None, 60, what="the revoked worker to stop")
    assert w.proc.returncode == 3, w.output()
    assert "officegrid worker: token 'desk-17' was revoked" in w.output()


def test_revoke_unknown_name_is_an_error(cli):
    res = cli("token", "revoke", "nobody")
    assert res.returncode == 1, res
    assert "no token or worker named 'nobody'" in res.err, res


def test_token_create_json_and_kind_check(cli):
    res = cli.ok("token", "create", "--enroll", "--uses", "3", "--name", "lab", "--json")
    info = json.loads(res.stdout)
    assert info["kind"] == "enroll" and info["name"] == "lab" and info["uses_left"] == 3
    assert info["token"].startswith("oge_")
    both = cli("token", "create", "--enroll", "--admin")
    assert both.returncode == 1, both
    assert "choose exactly one of --enroll, --worker NAME, --admin" in both.err, both


def test_default_token_labels_are_unique(cli, mgrid):
    # Ten tokens in well under nine seconds: by pigeonhole two fall in the same second.
    labels = [mgrid.admin.create_token("enroll", uses=1)["name"] for _ in range(10)]
    rv = cli.ok("token", "revoke", labels[-1])
    assert len(set(labels)) == 10, labels
    assert rv.out == f"revoked 1 token(s) named {labels[-1]!r}", rv


def test_wrong_token_is_unknown(cli, mgrid):
    res = cli("status", token="oga_this-is-not-a-token")
    assert res.returncode == 1, res
    assert res.stdout == "", res
    assert "error: unknown token (wrong server, or a mistyped token) (HTTP 401)" in res.err, res
    flag = cli("status", "--token", "oga_also-wrong", token=None)
    assert flag.returncode == 1, flag
    assert "unknown token" in flag.err, flag
    # ... and nothing is created with it.
    (cli.cwd / "in.csv").write_text("id\n1\n")
    sub = cli("submit", "--entry", "m:f", "--input", "in.csv", token="oga_nope")
    assert sub.returncode == 1 and "unknown token" in sub.err, sub
    assert mgrid.admin.jobs() == []


def test_no_token_at_all_is_missing(cli):
    # No OFFICEGRID_TOKEN, no --token, and no ./officegrid-data/admin.token in the cwd.
    res = cli("workers", token=None)
    assert res.returncode == 1, res
    assert res.err.startswith("error: missing token: pass --token, set OFFICEGRID_TOKEN"), res


def test_enroll_token_cannot_administer(cli):
    enroll = cli.ok("token", "create", "--enroll").last_line
    res = cli("workers", token=enroll)
    assert res.returncode == 1, res
    assert "this needs the admin token (HTTP 403)" in res.err, res


@contextlib.contextmanager
def drained_solo(tmp_path, server_env: dict[str, str] | None = None):
    """A fresh server whose only worker, "solo", has been drained with the CLI and says so."""
    g = Grid(tmp_path, None)
    try:
        g.start(server_env)
        cli = Cli(g.server.url, g.server.admin_token, tmp_path)
        cli.publish(write_tree(tmp_path / "code", {"job.py": "def process(r, ctx):\n"
                                                             "    return {'ok': 1}\n"}), "worker")
        g.worker("solo")
        wait_for(lambda: "solo" in cli.ok("workers").stdout, 60, interval=0.2,
                 what="solo in `officegrid workers`")
        dr = cli.ok("drain", "solo")
        assert "solo" in dr.out, dr
        wait_for(lambda: g.admin.workers()[0]["state"] == "draining", 30,
                 what="solo to report that it is draining")
        yield g, cli
    finally:
        g.close()


def submit_6(cli: Cli) -> int:
    (cli.cwd / "in.csv").write_text("id,value\n" + "".join(f"r{i},{i}\n" for i in range(6)))
    return int(cli.ok("submit", "--entry", "job:process", "--input", "in.csv",
                      "--unit-size", "2").last_line)


def test_drain_makes_the_only_worker_take_no_more_units(tmp_path):
    # A short sideline retry-after, which the server also gives draining workers (see the xfail
    # below), so that `drain --undo` takes effect in about a second.
    with drained_solo(tmp_path, {"OFFICEGRID_SIDELINE_SECONDS": "1"}) as (g, cli):
        (me,) = json.loads(cli.ok("workers", "--json").stdout)
        assert me["name"] == "solo" and me["draining"] is True, me
        wide = cli.ok("workers", env={"COLUMNS": "200"})
        assert "draining" in wide.out and "draining (draining)" not in wide.out, wide

        job = submit_6(cli)
        created = g.admin.job(job)["created_at"]
        # Let the worker heartbeat several times (server clock) after the job exists: it must
        # not take a unit.
        wait_for(lambda: g.admin.workers()[0]["last_seen"] > created + 1.5, 30,
                 what="heartbeats after the submit")
        assert [u["state"] for u in g.admin.units(job)] == ["queued"] * 3
        assert g.admin.attempts(job_id=job) == []
        assert g.admin.job(job)["counts"]["queued"] == 3

        # Undo: the same worker now runs the job to the end.
        undo = cli.ok("drain", "solo", "--undo")
        assert "solo" in undo.out, undo
        st = cli("status", job, "--wait", timeout=120)
        assert st.returncode == 0, st
        assert {u["worker"] for u in g.admin.units(job)} == {"solo"}


def test_drain_undo_takes_effect_promptly(tmp_path):
    with drained_solo(tmp_path) as (g, cli):
        cli.ok("drain", "solo", "--undo")
        job = submit_6(cli)
        wait_for(lambda: g.admin.attempts(job_id=job), 6, what="solo to take a unit again")
