"""A job that takes ctx.extra["delay"] seconds per record."""

import time


def process(record, ctx):
    time.sleep(ctx.extra.get("delay", 0.01))
    return record
