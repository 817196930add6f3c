"""Installing the worker as a system service plus a per-session idle reporter, per OS.

As HTCondor and BOINC do, the agent runs as a system service under a dedicated low-privilege
account (so it works at night with nobody logged in, and job code cannot read the owner's files),
and a small reporter started at each logon tells it about the session's input:

- Linux: a systemd system unit ``officegrid-worker.service`` (user ``officegrid``, created with
  useradd when missing; Nice=10, idle I/O class, KillMode=control-group, Restart=on-failure) and
  an XDG autostart entry for ``officegrid idle-reporter``;
- macOS: a LaunchDaemon (role account ``_officegrid``, nice 10, low-priority I/O) and a
  LaunchAgent for the reporter;
- Windows: a scheduled task at startup running as LOCAL SERVICE (below-normal priority, no
  time limit, restart on failure) and a Run key for the reporter.

:func:`plan_install` / :func:`plan_uninstall` only *describe* the files and commands (pure, unit
tested); :func:`apply` writes the files (under ``root`` instead of ``/`` if given) and runs the
commands (never with a ``root`` or in a dry run).

The join token goes into the service's config file only (0640 root:<service account>; on
Windows with its inherited rights removed), never onto a command line (unit, plist, task, Run
key, installer commands): every local user can read those (``ps``, ``systemctl show``).
"""

from __future__ import annotations

import os
import plistlib
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from xml.sax.saxutils import escape

SERVICE_USER = "officegrid"
MAC_USER = "_officegrid"
UNIT_NAME = "officegrid-worker.service"
MAC_DAEMON = "org.officegrid.worker"
MAC_AGENT = "org.officegrid.idle-reporter"
WIN_TASK = "officegrid worker"
WIN_RUN_VALUE = "officegrid-idle-reporter"
WIN_RUN_KEY = r"HKLM\Software\Microsoft\Windows\CurrentVersion\Run"
# The work dir: others may pass through it to sessions/ (where every user's reporter writes)
# but may not list it, and the service's umask (SERVICE_UMASK) keeps what the agent writes
# there (replicas, releases, results) unreadable to them.
WORK_DIR_MODE = 0o711
SERVICE_UMASK = 0o027


@dataclass(frozen=True)
class PlannedFile:
    """A file the installer writes: absolute target path, text, mode (None on Windows)."""

    path: PurePath
    content: str
    mode: int | None = 0o644


@dataclass
class Plan:
    """What an install or uninstall does: directories, files, removals, commands, notes."""

    os_name: str
    dirs: list[tuple[PurePath, int | None]] = field(default_factory=list)
    files: list[PlannedFile] = field(default_factory=list)
    remove: list[PurePath] = field(default_factory=list)
    before: list[list[str]] = field(default_factory=list)  # run before files are touched
    commands: list[list[str]] = field(default_factory=list)  # run after
    notes: list[str] = field(default_factory=list)

    def file(self, name: str) -> PlannedFile:
        """The planned file whose path ends with `name`; raises KeyError."""
        for f in self.files:
            if str(f.path).endswith(name):
                return f
        raise KeyError(name)


def os_name(platform: str = sys.platform) -> str:
    """"linux", "macos" or "windows" for a sys.platform value; raises ValueError otherwise."""
    if platform.startswith("linux"):
        return "linux"
    if platform == "darwin":
        return "macos"
    if platform == "win32":
        return "windows"
    raise ValueError(f"no service installer for platform {platform!r} (linux, macos, windows)")


def default_command(platform: str = sys.platform) -> list[str]:
    """How the service starts officegrid: this interpreter with ``-m officegrid``."""
    exe = sys.executable
    if platform == "win32":  # pythonw: no console window for the reporter either
        exe = str(Path(exe).with_name("pythonw.exe"))
    return [exe, "-m", "officegrid"]


def default_work_dir(os_kind: str) -> PurePath:
    """The installed service's work dir."""
    if os_kind == "windows":
        return PureWindowsPath(r"C:\ProgramData\officegrid\worker")
    if os_kind == "macos":
        return PurePosixPath("/Library/Application Support/officegrid/worker")
    return PurePosixPath("/var/lib/officegrid/worker")


def _config_text(server: str, enroll: str | None, policy: str) -> str:
    lines = ["# officegrid worker service (written by `officegrid worker install`)",
             "[worker]", f"server = {_toml_str(server)}"]
    if enroll:
        lines.append(f"enroll = {_toml_str(enroll)}  # join token, used at the first start")
    # One key per line: each example line is valid TOML once uncommented. Edits take effect
    # when the agent restarts (systemctl restart officegrid-worker).
    lines += ["", "[policy]", f"preset = {_toml_str(policy)}",
              "# start_idle = \"15m\"", "# continue_idle = \"5m\"", "# max_suspend = \"10m\"",
              "# max_cpu = 0.3", "# window = \"mon-fri 20:00-06:00\"",
              "# allow_battery = false", ""]
    return "\n".join(lines)


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ------------------------------------------------------------------------------------ Linux


def systemd_unit(command: list[str], work_dir: PurePath, config: PurePath,
                 user: str = SERVICE_USER) -> str:
    """The systemd system unit text of the worker agent. The policy preset lives in ``config``
    (``[policy] preset``), not on the command line: a flag would override the file's preset,
    which is the place the operator is invited to edit."""
    exec_start = shlex.join([*command, "worker", "--work-dir", str(work_dir)])
    under_home = any(str(command[0]).startswith(p) for p in ("/home/", "/root/"))
    hardening = [
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectSystem=full",
        # Job code must not read the owner's files. Kept off when officegrid itself lives in a
        # home directory (the service could not start); install it system-wide instead.
        "ProtectHome=yes" if not under_home else
        "# ProtectHome=yes  (off: officegrid is installed under a home directory)",
    ]
    return "\n".join([
        "[Unit]",
        "Description=officegrid worker agent (batch grid on idle desktops)",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"User={user}",
        f"Group={user}",
        f"Environment=OFFICEGRID_CONFIG={config}",
        f"ExecStart={exec_start}",
        f"UMask={SERVICE_UMASK:04o}",
        "# The owner comes first: the units run at nice 19 and idle I/O class (the runner",
        "# sets both); the agent itself only at nice 10 and the lowest best-effort I/O, so",
        "# that its owner monitor still suspends units promptly when the owner loads every",
        "# core or the disk (the idle I/O class can starve it for as long as the load lasts).",
        "Nice=10",
        "IOSchedulingClass=best-effort",
        "IOSchedulingPriority=7",
        "# Units are the agent's children: stop them all with it, and let it freeze its own",
        "# sub-cgroups to suspend a unit tree.",
        "KillMode=control-group",
        "Delegate=yes",
        "Restart=on-failure",
        "RestartSec=10",
        "TimeoutStopSec=30",
        *hardening,
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ])


def xdg_autostart(command: list[str], work_dir: PurePath) -> str:
    """The XDG autostart entry that starts the idle reporter in every graphical session."""
    # Desktop Entry Exec quoting: arguments with spaces in double quotes (freedesktop spec).
    exec_line = " ".join(f'"{a}"' if " " in a else a
                         for a in [*command, "idle-reporter", "--work-dir", str(work_dir)])
    return "\n".join([
        "[Desktop Entry]",
        "Type=Application",
        "Name=officegrid idle reporter",
        "Comment=Tells the officegrid worker when this session is in use",
        f"Exec={exec_line}",
        "Terminal=false",
        "NoDisplay=true",
        "X-GNOME-Autostart-enabled=true",
        "",
    ])


def _plan_linux(command: list[str], server: str, enroll: str | None, policy: str,
                work_dir: PurePath, user_exists: bool) -> Plan:
    p = Plan("linux")
    config = PurePosixPath("/etc/officegrid/officegrid.toml")
    unit = PurePosixPath("/etc/systemd/system") / UNIT_NAME
    autostart = PurePosixPath("/etc/xdg/autostart/officegrid-idle-reporter.desktop")
    if not user_exists:
        p.before.append(["useradd", "--system", "--user-group", "--home-dir",
                           str(work_dir.parent), "--shell", "/usr/sbin/nologin",
                           "--comment", "officegrid worker", SERVICE_USER])
    p.dirs += [(config.parent, 0o755), (work_dir.parent, 0o755), (work_dir, WORK_DIR_MODE),
               (work_dir / "sessions", 0o1777)]
    p.files += [PlannedFile(config, _config_text(server, enroll, policy), 0o640),
                PlannedFile(unit, systemd_unit(command, work_dir, config), 0o644),
                PlannedFile(autostart, xdg_autostart(command, work_dir), 0o644)]
    p.commands += [
        ["chown", f"root:{SERVICE_USER}", str(config)],
        # sessions/ is root's (also after an older install gave it away): the owner of a
        # sticky directory may delete or replace any file in it, and job code runs as the
        # service account.
        ["chown", f"{SERVICE_USER}:{SERVICE_USER}", str(work_dir.parent), str(work_dir)],
        ["chown", "root:root", str(work_dir / "sessions")],
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", UNIT_NAME],
    ]
    now = shlex.join([*command, "idle-reporter", "--work-dir", str(work_dir)])
    p.notes.append("the idle reporter starts at the next graphical logon (XDG autostart); "
                   f"start it now with: {now} &")
    if any(str(command[0]).startswith(x) for x in ("/home/", "/root/")):
        p.notes.append(f"officegrid runs from {command[0]}: the {SERVICE_USER} account must be "
                       "able to read it; a system-wide install (e.g. /opt) is safer")
    return p


# ------------------------------------------------------------------------------------ macOS


def launchd_daemon(command: list[str], work_dir: PurePath, config: PurePath) -> str:
    """The LaunchDaemon plist of the worker agent."""
    log_dir = PurePosixPath("/Library/Logs/officegrid")
    return plistlib.dumps({
        "Label": MAC_DAEMON,
        "ProgramArguments": [*command, "worker", "--work-dir", str(work_dir)],
        "UserName": MAC_USER,
        "Umask": SERVICE_UMASK,
        "EnvironmentVariables": {"OFFICEGRID_CONFIG": str(config)},
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        # Units get the background policy from the agent; the agent itself stays "Standard"
        # (Background throttles its timers) at nice 10 so it suspends units promptly.
        "ProcessType": "Standard",
        "LowPriorityIO": True,
        "Nice": 10,
        "StandardOutPath": str(log_dir / "worker.log"),
        "StandardErrorPath": str(log_dir / "worker.log"),
    }).decode()


def launchd_agent(command: list[str], work_dir: PurePath) -> str:
    """The LaunchAgent plist that runs the idle reporter in every user's session."""
    return plistlib.dumps({
        "Label": MAC_AGENT,
        "ProgramArguments": [*command, "idle-reporter", "--work-dir", str(work_dir)],
        "RunAtLoad": True,
        "KeepAlive": True,
        "LimitLoadToSessionType": "Aqua",
    }).decode()


def _plan_macos(command: list[str], server: str, enroll: str | None, policy: str,
                work_dir: PurePath, user_exists: bool) -> Plan:
    p = Plan("macos")
    config = PurePosixPath("/Library/Application Support/officegrid/officegrid.toml")
    daemon = PurePosixPath("/Library/LaunchDaemons") / f"{MAC_DAEMON}.plist"
    agent = PurePosixPath("/Library/LaunchAgents") / f"{MAC_AGENT}.plist"
    if not user_exists:
        # A role account (name starting with "_", hidden, no login) as macOS daemons use.
        p.before.append(["sysadminctl", "-addUser", MAC_USER, "-fullName", "officegrid worker",
                           "-shell", "/usr/bin/false", "-home", str(work_dir.parent),
                           "-roleAccount"])
    p.dirs += [(config.parent, 0o755), (work_dir, WORK_DIR_MODE),
               (work_dir / "sessions", 0o1777), (PurePosixPath("/Library/Logs/officegrid"), 0o755)]
    p.files += [PlannedFile(config, _config_text(server, enroll, policy), 0o640),
                PlannedFile(daemon, launchd_daemon(command, work_dir, config), 0o644),
                PlannedFile(agent, launchd_agent(command, work_dir), 0o644)]
    p.commands += [
        ["chown", f"root:{MAC_USER}", str(config)],
        ["chown", f"{MAC_USER}", str(work_dir), "/Library/Logs/officegrid"],
        ["chown", "root:wheel", str(work_dir / "sessions")],  # see _plan_linux
        ["launchctl", "bootstrap", "system", str(daemon)],
    ]
    p.notes.append("the idle reporter starts at the next logon (LaunchAgent)")
    return p


# ---------------------------------------------------------------------------------- Windows


def windows_task_xml(command: list[str], work_dir: PurePath, config: PurePath) -> str:
    """Task Scheduler XML: start at boot as LOCAL SERVICE, below normal priority, no limit."""
    args = subprocess.list2cmdline([*command[1:], "worker", "--work-dir", str(work_dir)])
    exe = command[0]
    return f"""<?xml version="1.0" encoding="UTF-16"?>
<Task version="1.2" xmlns="http://schemas.microsoft.com/windows/2004/02/mit/task">
  <RegistrationInfo>
    <Description>officegrid worker agent; config {escape(str(config))}</Description>
  </RegistrationInfo>
  <Triggers>
    <BootTrigger><Enabled>true</Enabled></BootTrigger>
  </Triggers>
  <Principals>
    <Principal id="Author">
      <UserId>S-1-5-19</UserId>
      <RunLevel>LeastPrivilege</RunLevel>
    </Principal>
  </Principals>
  <Settings>
    <MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>
    <DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries>
    <StopIfGoingOnBatteries>false</StopIfGoingOnBatteries>
    <ExecutionTimeLimit>PT0S</ExecutionTimeLimit>
    <Priority>7</Priority>
    <RestartOnFailure><Interval>PT1M</Interval><Count>999</Count></RestartOnFailure>
    <StartWhenAvailable>true</StartWhenAvailable>
  </Settings>
  <Actions Context="Author">
    <Exec>
      <Command>{escape(exe)}</Command>
      <Arguments>{escape(args)}</Arguments>
      <WorkingDirectory>{escape(str(work_dir))}</WorkingDirectory>
    </Exec>
  </Actions>
</Task>
"""


def _plan_windows(command: list[str], server: str, enroll: str | None, policy: str,
                  work_dir: PurePath) -> Plan:
    p = Plan("windows")
    base = work_dir.parent
    config = base / "officegrid.toml"
    task = base / "worker-task.xml"
    p.dirs += [(base, None), (work_dir, None), (work_dir / "sessions", None)]
    p.files += [PlannedFile(config, _config_text(server, enroll, policy), None),
                PlannedFile(task, windows_task_xml(command, work_dir, config), None)]
    reporter = subprocess.list2cmdline([*command, "idle-reporter", "--work-dir", str(work_dir)])
    p.commands += [
        # LOCAL SERVICE (S-1-5-19) owns the work dir. In sessions\ Users (S-1-5-32-545) may
        # only create files (this folder only, not inherited by the files), and each file's
        # creator (CREATOR OWNER, S-1-3-0) may change it: nobody can replace or delete
        # another user's report (Windows has no sticky bit; the reader cannot check owners).
        ["icacls", str(base), "/grant", "*S-1-5-19:(OI)(CI)M"],
        ["icacls", str(work_dir / "sessions"), "/grant", "*S-1-5-32-545:(RD,X,RA,REA,RC,WD)",
         "*S-1-3-0:(OI)(IO)M"],
        # The config holds the join token: ProgramData lets every user read what it holds, so
        # drop the inherited rights; only SYSTEM, Administrators and the service read it.
        ["icacls", str(config), "/inheritance:r", "/grant:r", "*S-1-5-18:F", "*S-1-5-32-544:F",
         "*S-1-5-19:R"],
        ["setx", "/M", "OFFICEGRID_CONFIG", str(config)],
        ["schtasks", "/Create", "/TN", WIN_TASK, "/XML", str(task), "/F"],
        ["reg", "add", WIN_RUN_KEY, "/v", WIN_RUN_VALUE, "/t", "REG_SZ", "/d", reporter, "/f"],
        ["schtasks", "/Run", "/TN", WIN_TASK],
    ]
    p.notes.append("the idle reporter starts at the next logon (Run key)")
    return p


# ------------------------------------------------------------------------------------ plans


def check_server_url(server: str) -> str:
    """`server` if the agent would accept it (http:// or https:// with a host).

    Raises ValueError naming the URL: the service would otherwise restart forever on it.
    """
    from urllib.parse import urlsplit

    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"server URL {server!r} must be http://HOST[:PORT] or "
                         "https://HOST[:PORT] (the agent refuses anything else)")
    return server


def unreachable(paths: list[Path], uid: int, gids: set[int]) -> list[str]:
    """Why an account (``uid``, groups ``gids``) cannot use `paths` (the interpreter, the
    officegrid package): each directory on the way, and the last entry, must be searchable or
    executable (x) for it. Owner, then group, then other bits decide, as the kernel does (ACLs are
    not read). Returns a line per problem (empty: all reachable); a path that does not exist
    is reported too.
    """
    problems: list[str] = []
    for target in paths:
        target = Path(target)
        chain = [*reversed(target.parents), target]
        for part in chain:
            try:
                st = os.stat(part)
            except OSError as exc:
                problems.append(f"{part}: {exc.strerror or exc}")
                break
            if st.st_uid == uid:
                bits = (st.st_mode >> 6) & 0o7
            elif st.st_gid in gids:
                bits = (st.st_mode >> 3) & 0o7
            else:
                bits = st.st_mode & 0o7
            if uid != 0 and not bits & 0o1:
                what = "searchable" if part.is_dir() else "executable"
                problems.append(f"{part} (mode {st.st_mode & 0o7777:04o}, uid {st.st_uid}: "
                                f"not {what} for it)")
                break
    return list(dict.fromkeys(problems))  # the interpreter and the package share parents


def preflight(os_kind: str, *, enroll: str | None, command: list[str],
              work_dir: PurePath, service_user: str | None,
              root: Path | None = None) -> list[str]:
    """Warnings about an install whose service could not start: the interpreter or the
    officegrid package out of the service account's reach (e.g. a venv under /root, 0700),
    no join token and no identity in the work dir. ``service_user``: the account's name if
    it exists (else it is created without groups: only "other" bits count). ``root``: the
    work dir is looked for under it (``--root``). Checks the files of this machine (so not
    for a plan of another OS)."""
    warnings: list[str] = []
    ident = _under(root, work_dir) / "identity.json"
    if not enroll and not ident.exists():
        warnings.append(f"no join token and no identity in {work_dir}: the service cannot "
                        "register with the server; give OFFICEGRID_ENROLL=TOKEN (or --enroll)")
    if os_kind in ("linux", "macos") and hasattr(os, "geteuid"):
        import officegrid

        uid, gids = -1, set()
        if service_user is not None:
            try:
                import grp
                import pwd

                pw = pwd.getpwnam(service_user)
                uid = pw.pw_uid
                gids = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall()
                                      if service_user in g.gr_mem}
            except KeyError:
                pass
        package = Path(officegrid.__file__).parent
        # A venv's python is a symlink: the interpreter it points to must be reachable too.
        python = Path(command[0])
        targets = [python, Path(os.path.realpath(python)), package]
        problems = unreachable(list(dict.fromkeys(targets)), uid, gids)
        account = service_user or (SERVICE_USER if os_kind == "linux" else MAC_USER)
        if os_kind == "linux":  # the unit has PrivateTmp=yes: /tmp is empty for the service
            for t in dict.fromkeys(targets):
                if Path(t).is_relative_to("/tmp") or Path(t).is_relative_to("/var/tmp"):
                    warnings.append(f"{t} is in /tmp or /var/tmp, which the service (with "
                                    "PrivateTmp=yes) does not see: install officegrid "
                                    "elsewhere (e.g. a venv in /opt/officegrid)")
        for problem in problems:
            warnings.append(f"the service account {account} cannot reach {problem}: the "
                            "service would fail to start; install officegrid where every "
                            "account can read it (e.g. a venv in /opt/officegrid)")
    return warnings


def plan_install(os_kind: str, server: str, *, enroll: str | None = None,
                 policy: str = "desktop", command: list[str] | None = None,
                 work_dir: PurePath | None = None, user_exists: bool = True) -> Plan:
    """Describe the install for `os_kind` ("linux", "macos", "windows").

    Raises ValueError for an unknown OS or policy preset, or a server URL the agent would
    refuse.
    """
    from officegrid.worker.policy import PRESETS

    check_server_url(server)
    if policy not in PRESETS:
        raise ValueError(f"unknown policy {policy!r} (known: {', '.join(PRESETS)})")
    cmd = command or default_command({"windows": "win32", "macos": "darwin"}.get(os_kind,
                                                                                  "linux"))
    wd = work_dir or default_work_dir(os_kind)
    if os_kind == "linux":
        return _plan_linux(cmd, server, enroll, policy, wd, user_exists)
    if os_kind == "macos":
        return _plan_macos(cmd, server, enroll, policy, wd, user_exists)
    if os_kind == "windows":
        return _plan_windows(cmd, server, enroll, policy, wd)
    raise ValueError(f"unknown OS {os_kind!r} (linux, macos, windows)")


def plan_uninstall(os_kind: str) -> Plan:
    """Describe the uninstall: stop and remove the service and reporter entries.

    The service account and the work dir (identity, caches) are kept; the notes say how to
    remove them. Raises ValueError for an unknown OS.
    """
    p = Plan(os_kind)
    wd = default_work_dir(os_kind)
    if os_kind == "linux":
        p.before += [["systemctl", "disable", "--now", UNIT_NAME]]
        p.remove += [PurePosixPath("/etc/systemd/system") / UNIT_NAME,
                     PurePosixPath("/etc/xdg/autostart/officegrid-idle-reporter.desktop")]
        p.commands += [["systemctl", "daemon-reload"]]
        p.notes.append(f"kept: user {SERVICE_USER}, /etc/officegrid and {wd.parent} "
                       f"(remove with: userdel {SERVICE_USER}; rm -r /etc/officegrid {wd.parent})")
    elif os_kind == "macos":
        daemon = PurePosixPath("/Library/LaunchDaemons") / f"{MAC_DAEMON}.plist"
        p.before += [["launchctl", "bootout", f"system/{MAC_DAEMON}"]]
        p.remove += [daemon, PurePosixPath("/Library/LaunchAgents") / f"{MAC_AGENT}.plist"]
        p.notes.append(f"kept: account {MAC_USER} and {wd.parent}")
    elif os_kind == "windows":
        p.before += [["schtasks", "/End", "/TN", WIN_TASK],
                       ["schtasks", "/Delete", "/TN", WIN_TASK, "/F"],
                       ["reg", "delete", WIN_RUN_KEY, "/v", WIN_RUN_VALUE, "/f"]]
        p.remove += [wd.parent / "worker-task.xml"]
        p.notes.append(f"kept: {wd.parent} (identity, caches)")
    else:
        raise ValueError(f"unknown OS {os_kind!r} (linux, macos, windows)")
    return p


def _under(root: Path | None, path: PurePath) -> Path:
    if root is None:
        return Path(path)
    rel = str(path).replace("\\", "/").split(":", 1)[-1].lstrip("/")
    return root / rel


def _write_private(target: Path, content: str, mode: int | None) -> None:
    """Write `content` to `target` so that it never has more than `mode` permissions, not even
    between writing and chmod (the config holds the join token). Replaces an existing file."""
    if mode is None or os.name == "nt":
        target.write_text(content)
        return
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                 mode & 0o700)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(content)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def apply(plan: Plan, *, root: Path | None = None, dry_run: bool = False,
          say: Callable[[str], None] = print,
          run: Callable[[list[str]], int] | None = None) -> int:
    """Carry out `plan`; returns 0, or the exit code of the first failing command.

    root: write files under this directory instead of / and run no commands (for tests and
    packaging). dry_run: only say what would be done. Raises OSError if a file cannot be written.
    """
    run = run or (lambda cmd: subprocess.run(cmd, check=False).returncode)
    would = "would " if dry_run else ""
    run_commands = root is None and not dry_run
    if run_commands and plan.os_name != "windows" and hasattr(os, "geteuid") \
            and os.geteuid() != 0:
        raise PermissionError("installing the service needs root (sudo); use --dry-run to "
                              "see what would be done, or --root DIR to write the files only")

    def _run(cmds: list[list[str]]) -> int:
        for cmd in cmds:
            shown = subprocess.list2cmdline(cmd) if plan.os_name == "windows" else shlex.join(cmd)
            if not run_commands:
                say(f"{'would run' if dry_run else 'skipped (--root)'}: {shown}")
                continue
            say(f"run: {shown}")
            code = run(cmd)
            if code:
                say(f"failed ({code}): {shown}")
                return code
        return 0

    code = _run(plan.before)
    if code:
        return code
    for d, mode in plan.dirs:
        target = _under(root, d)
        say(f"{would}create {target}/")
        if not dry_run:
            target.mkdir(parents=True, exist_ok=True)
            if mode is not None and os.name != "nt":
                os.chmod(target, mode)
    for f in plan.files:
        target = _under(root, f.path)
        say(f"{would}write {target}")
        if not dry_run:
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_private(target, f.content, f.mode)
    for r in plan.remove:
        target = _under(root, r)
        if target.exists() or dry_run:
            say(f"{would}remove {target}")
            if not dry_run:
                target.unlink()
    code = _run(plan.commands)
    for note in plan.notes:
        say(f"note: {note}")
    return code
