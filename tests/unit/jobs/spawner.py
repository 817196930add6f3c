"""A job that starts grandchildren and then runs until killed.

Record 0 starts one grandchild in the runner's process group and one that escapes it like a
daemon (setsid in a new session, its parent gone), writes their pids to ctx.extra["pids_file"], then
sleeps. With ctx.extra["stubborn"], the runner and both grandchildren ignore SIGTERM; with
ctx.extra["graceful"], the runner handles SIGTERM by exiting with code 42.
"""

import json
import os
import signal
import subprocess
import sys
import time

SLEEPER = "import signal, time\n{ignore}\nprint('ready', flush=True)\nwhile True: time.sleep(60)\n"

LAUNCHER = """
import subprocess, sys
p = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=subprocess.PIPE,
                     start_new_session=True)
p.stdout.readline()
print(p.pid)
"""


def process(record, ctx):
    stubborn = bool(ctx.extra.get("stubborn"))
    ignore = "signal.signal(signal.SIGTERM, signal.SIG_IGN)" if stubborn else ""
    if stubborn:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if ctx.extra.get("graceful"):
        signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(42))
    code = SLEEPER.format(ignore=ignore)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    child.stdout.readline()  # wait until it runs (and ignores SIGTERM if asked)
    # A daemon-style escape: a launcher starts it in a new session and exits, so the escaped
    # process is neither in the runner's group nor among its descendants.
    launched = subprocess.run(
        [sys.executable, "-c", LAUNCHER, code], check=True, stdout=subprocess.PIPE, text=True
    )
    escaped_pid = int(launched.stdout)
    path = ctx.extra["pids_file"]
    with open(path + ".tmp", "w") as f:
        json.dump({"runner": os.getpid(), "child": child.pid, "escaped": escaped_pid}, f)
    os.replace(path + ".tmp", path)
    while True:
        time.sleep(60)
