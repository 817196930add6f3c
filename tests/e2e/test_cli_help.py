"""`officegrid --help` and every command's `--help` exit 0 and describe the command."""

from __future__ import annotations

import pytest

from .test_cli_support import Cli

# (command words, text the help must show: its own flags or sub-commands)
COMMANDS = [
    ([], ["server", "worker", "release", "submit", "status", "results", "cancel", "retry",
          "logs", "workers", "drain", "token", "demo"]),
    (["server"], ["--data-dir", "--db", "--host", "--port"]),
    (["worker"], ["--server", "--token", "--work-dir", "--slots"]),
    (["release"], ["create", "promote", "list", "pull"]),
    (["release", "create"], ["DIRECTORY", "--channel", "--json"]),
    (["release", "promote"], ["SRC", "DST"]),
    (["release", "list"], ["--json"]),
    (["release", "pull"], ["CHANNEL", "--to"]),
    (["token"], ["create", "revoke", "list"]),
    (["token", "create"], ["--enroll", "--worker", "--uses"]),
    (["token", "revoke"], ["NAME"]),
    (["token", "list"], ["--json"]),
    (["workers"], ["--json"]),
    (["drain"], ["WORKER", "--undo"]),
    (["submit"], ["--entry", "--input", "--channel", "--unit-size", "--key", "--max-bad-rows",
                  "--encoding", "--delimiter", "--retries", "--wait"]),
    (["status"], ["JOB", "--wait"]),
    (["results"], ["JOB", "--out", "--errors", "--to-sql", "--table"]),
    (["cancel"], ["JOB"]),
    (["retry"], ["JOB"]),
    (["logs"], ["TARGET", "--job"]),
    (["demo"], ["--records", "--workers"]),
]


@pytest.mark.parametrize(("words", "shows"), COMMANDS,
                         ids=[" ".join(w) or "officegrid" for w, _ in COMMANDS])
def test_help_exits_0(tmp_path, words, shows):
    # No server is needed (and none is reachable at this URL): help must not touch the network.
    cli = Cli("http://127.0.0.1:9", None, tmp_path)
    res = cli(*words, "--help", timeout=30)
    assert res.returncode == 0, res
    assert res.stderr == "", res
    assert "Usage:" in res.stdout, res
    for text in shows:  # argument names are shown in lower case by this typer version
        assert text.lower() in res.stdout.lower(), f"{text!r} missing from help\n{res}"


DEFAULTS = [
    (("server",), "8765"),
    (("server",), "officegrid-data"),
    (("submit",), "[default: 3]"),
    (("submit",), "input position"),
    (("status",), "http://127.0.0.1:8765"),
    (("worker",), "[default: 1]"),
]


@pytest.mark.parametrize(("words", "default"), DEFAULTS,
                         ids=[f"{' '.join(w)}:{d}" for w, d in DEFAULTS])
def test_help_shows_documented_defaults(tmp_path, words, default):
    # A wide terminal, so that the text is not wrapped inside rich's option table.
    res = Cli("http://127.0.0.1:9", None, tmp_path)(*words, "--help", env={"COLUMNS": "250"},
                                                    timeout=30)
    assert res.returncode == 0, res
    assert default in res.out, res


def test_version(tmp_path):
    from officegrid import __version__

    res = Cli("http://127.0.0.1:9", None, tmp_path)("--version", timeout=30)
    assert res.returncode == 0 and res.stdout.strip() == f"officegrid {__version__}", res
