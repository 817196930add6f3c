"""The log route as a fleet uses it, on a real server: long polls that answer when a change is
sealed, and replica positions carried by the log requests (no separate report)."""

from __future__ import annotations

import json
import threading
from typing import Any

from e2e.test_cli_support import Cli, module_grid_and_cli
from grid import wait_for
from officegrid.client import Client
from officegrid.sync.replication.remote import HttpRemote
from officegrid.sync.replication.replica import Replica

mgrid, cli = module_grid_and_cli("feed")


def create(cli: Cli, name: str, n: int) -> None:
    (cli.cwd / f"{name}.csv").write_text("id,name,city\n" + "".join(
        f"{i},Person {i},City{i % 7}\n" for i in range(1, n + 1)))
    assert cli.ok("data", "create", name, "--from", f"{name}.csv", "--key", "id", "--table",
                  "people").last_line == name


def replicas(cli: Cli, name: str) -> dict[str, dict[str, Any]]:
    st = json.loads(cli.ok("data", "status", name, "--json").stdout)[0]
    return {r["replica"]: r for r in st["replicas"]}


def test_long_poll_answers_with_the_change_made_while_it_waited(mgrid, cli) -> None:
    create(cli, "longpoll", 50)
    with Client(mgrid.server.url, mgrid.server.admin_token) as c:
        st = c.data_status("longpoll")
        # Nothing new: a short long poll ends empty.
        quiet = c.data_log("longpoll", st["epoch"], st["pos"], wait=0.3)
        assert quiet["entries"] == [] and quiet["head"] == st["pos"]
    changed = threading.Event()
    got: dict[str, Any] = {}

    def ask() -> None:
        with Client(mgrid.server.url, mgrid.server.admin_token) as c2:
            got["batch"] = c2.data_log("longpoll", st["epoch"], st["pos"], replica="lp",
                                       wait=25)
            got["after_change"] = changed.is_set()

    t = threading.Thread(target=ask)
    t.start()
    try:
        # The request has arrived (its position is on record) and is waiting: nothing changed.
        wait_for(lambda: "lp" in replicas(cli, "longpoll"), 20, what="the long poll to arrive")
        assert "batch" not in got
        changed.set()
        cli.ok("data", "sql", "longpoll", "UPDATE people SET city='Lyon' WHERE id='7'")
    finally:
        t.join(40)
    assert got["after_change"], "the long poll answered before the change was made"
    bodies = [json.loads(b) for b in got["batch"]["entries"]]
    assert [(b["o"], b["r"]["id"], b["r"]["city"]) for b in bodies] == [("U", 7, "Lyon")]


def test_positions_travel_with_log_requests(mgrid, cli, tmp_path) -> None:
    create(cli, "carried", 200)

    class NoReports(HttpRemote):
        def report(self, replica: str, epoch: str, pos: int) -> None:
            raise AssertionError("a separate position report was sent")

    with Client(mgrid.server.url, mgrid.server.admin_token) as c:
        rep = Replica(tmp_path / "r.sqlite", NoReports(c, "carried"), name="carrier")
        try:
            rep.catch_up()
            cli.ok("data", "sql", "carried", "UPDATE people SET city='Oslo' WHERE id < '5'")
            head = c.data_status("carried")["pos"]
            rep.catch_up()
            assert rep.position().pos == head
        finally:
            rep.close()
    r = replicas(cli, "carried")["carrier"]
    assert (r["pos"], r["lag"]) == (head, 0)


def test_log_request_answers_while_the_store_refuses_positions(mgrid, cli) -> None:
    """Review finding: a store error while writing the positions a log request carries failed
    the request (500). The batch is answered, and the position is kept for a later write."""
    import sqlite3

    create(cli, "storefail", 20)
    store = sqlite3.connect(mgrid.server.data_dir / "officegrid.db", isolation_level=None)
    refuse = "BEGIN SELECT RAISE(ABORT, 'store refuses'); END"
    store.execute(f"CREATE TRIGGER h9_refuse_i BEFORE INSERT ON data_replicas {refuse}")
    store.execute(f"CREATE TRIGGER h9_refuse_u BEFORE UPDATE ON data_replicas {refuse}")
    log_file = mgrid.server.log

    def warned() -> bool:
        return "replica positions not recorded" in log_file.read_text(errors="replace")

    with Client(mgrid.server.url, mgrid.server.admin_token) as c:
        st = c.data_status("storefail")
        try:
            # Each request is answered (an ApiError 500 here fails the test) until the server
            # has tried, and failed, to write the position (it writes at most every second).
            def answered_and_failed() -> bool:
                batch = c.data_log("storefail", st["epoch"], st["pos"], replica="kept")
                assert batch["head"] == st["pos"] and batch["entries"] == []
                return warned()

            wait_for(answered_and_failed, 30, what="a failed write of positions")
            assert store.execute("SELECT count(*) FROM data_replicas WHERE replica='kept'"
                                 ).fetchone()[0] == 0
        finally:
            store.execute("DROP TRIGGER h9_refuse_i")
            store.execute("DROP TRIGGER h9_refuse_u")
            store.close()
        # Requests of another replica write the kept position along with theirs.
        wait_for(lambda: c.data_log("storefail", st["epoch"], st["pos"], replica="nudge")
                 is not None and "kept" in replicas(cli, "storefail"), 30,
                 what="the kept position to be written")
    assert replicas(cli, "storefail")["kept"]["pos"] == st["pos"]
