"""Batch-form job used by the runner tests (batch_size 3)."""


def process(records, ctx):
    print("batch of", len(records))
    if any(r.get("bad") for r in records):
        raise RuntimeError("bad record in batch: " + ",".join(str(r["n"]) for r in records))
    if any(r.get("short") for r in records):
        # One result too few: the runner must re-run record by record.
        return [{"n": r["n"]} for r in records if not r.get("short")]
    return [{"n": r["n"], "size": len(records)} for r in records]


process.batch_size = 3
