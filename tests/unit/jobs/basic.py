"""Per-record job used by the runner tests: behaviour is chosen by the record's "mode" field."""

import datetime
import decimal
import os
import sys

NOT_CALLABLE = 42


def process(record, ctx):
    print("print from user code:", record.get("n"))
    ctx.log.info("record %s", record.get("n"))
    mode = record.get("mode")
    if mode == "raise":
        raise ValueError(f"bad record {record['n']}")
    if mode == "crash":
        os._exit(7)
    if mode == "ctx":
        return {
            "release_id": ctx.release_id,
            "unit_id": ctx.unit_id,
            "attempt_id": ctx.attempt_id,
            "job_id": ctx.job_id,
            "worker": ctx.worker,
            "release_dir": str(ctx.release_dir),
            "extra": ctx.extra,
        }
    if mode == "convert":
        return {
            "day": datetime.date(2024, 3, 1),
            "at": datetime.datetime(2024, 3, 1, 12, 30),
            "price": decimal.Decimal("12.50"),
        }
    if mode == "set":
        return [{"tags": {"a", "b"}}]
    if mode == "nan":
        return {"nested": {"x": float("nan")}}
    if mode == "int":
        return 5
    if mode == "list_of_int":
        return [{"ok": 1}, 2]
    if mode == "none":
        return None
    if mode == "stdin":
        return {"stdin": sys.stdin.read()}
    if mode == "two":
        return [{"i": 1}, {"i": 2}]
    return {"n": record["n"], "double": record["n"] * 2, "text": record.get("text")}
