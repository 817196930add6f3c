"""Service install (worker/service.py, `officegrid worker install | uninstall`): the generated
systemd unit, XDG autostart entry, launchd plists, Windows task and commands, written under a
--root or only printed with --dry-run (never touching this machine's system)."""

from __future__ import annotations

import configparser
import os
import plistlib
import shutil
import subprocess
import sys
import tempfile
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath, PureWindowsPath

import pytest

from officegrid.worker import service

CMD = ["/opt/officegrid/bin/python", "-m", "officegrid"]
NS = {"t": "http://schemas.microsoft.com/windows/2004/02/mit/task"}


def _ini(text: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(interpolation=None, strict=False)
    cp.optionxform = str  # keys are case-sensitive in systemd and desktop files
    cp.read_string(text)
    return cp


def test_linux_plan_systemd_unit() -> None:
    plan = service.plan_install("linux", "https://grid.example:8765", enroll="J0IN",
                                command=CMD, user_exists=False)
    unit = _ini(plan.file("officegrid-worker.service").content)
    svc = unit["Service"]
    assert svc["User"] == "officegrid" and svc["Group"] == "officegrid"
    # The preset is in the config file, which the operator edits (a flag would override it).
    assert svc["ExecStart"] == ("/opt/officegrid/bin/python -m officegrid worker --work-dir "
                                "/var/lib/officegrid/worker")
    config = plan.file("officegrid.toml").content
    assert '[policy]\npreset = "desktop"' in config
    assert svc["KillMode"] == "control-group" and svc["Restart"] == "on-failure"
    assert svc["IOSchedulingClass"] == "best-effort" and svc["IOSchedulingPriority"] == "7"
    assert int(svc["Nice"]) > 0 and svc["UMask"] == "0027"
    assert svc["ProtectHome"] == "yes"
    assert svc["Environment"] == "OFFICEGRID_CONFIG=/etc/officegrid/officegrid.toml"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    # The account is created first, and only when missing.
    assert plan.before[0][0] == "useradd" and plan.before[0][-1] == "officegrid"
    assert not service.plan_install("linux", "http://x", command=CMD, user_exists=True).before
    assert ["systemctl", "enable", "--now", "officegrid-worker.service"] in plan.commands


def test_linux_plan_config_autostart_and_sessions_dir() -> None:
    plan = service.plan_install("linux", "https://grid.example:8765", enroll='a"b',
                                policy="desktop-or-night", command=CMD)
    cfg = tomllib.loads(plan.file("officegrid.toml").content)
    assert cfg["worker"] == {"server": "https://grid.example:8765", "enroll": 'a"b'}
    assert cfg["policy"] == {"preset": "desktop-or-night"}
    assert plan.file("officegrid.toml").mode == 0o640  # the join token is not world-readable
    entry = _ini(plan.file("officegrid-idle-reporter.desktop").content)["Desktop Entry"]
    assert entry["Type"] == "Application" and entry["NoDisplay"] == "true"
    assert entry["Exec"] == ("/opt/officegrid/bin/python -m officegrid idle-reporter "
                             "--work-dir /var/lib/officegrid/worker")
    assert (PurePosixPath("/var/lib/officegrid/worker/sessions"), 0o1777) in plan.dirs


def test_home_install_warns_and_keeps_home_visible() -> None:
    plan = service.plan_install("linux", "http://x", command=["/home/al/.venv/bin/python", "-m",
                                                       "officegrid"])
    assert "# ProtectHome=yes" in plan.file(".service").content
    assert any("/home/al/.venv/bin/python" in n for n in plan.notes)


def test_bad_os_and_policy_refused() -> None:
    with pytest.raises(ValueError, match="unknown policy 'sometimes'"):
        service.plan_install("linux", "http://x", policy="sometimes")
    with pytest.raises(ValueError, match="unknown OS 'beos'"):
        service.plan_install("beos", "http://x")
    with pytest.raises(ValueError, match="no service installer"):
        service.os_name("sunos5")


def test_macos_plists() -> None:
    plan = service.plan_install("macos", "https://g:1", command=CMD, user_exists=False)
    daemon = plistlib.loads(plan.file("org.officegrid.worker.plist").content.encode())
    assert daemon["Label"] == "org.officegrid.worker" and daemon["UserName"] == "_officegrid"
    assert daemon["ProgramArguments"][:4] == [*CMD, "worker"]
    assert "--policy" not in daemon["ProgramArguments"]
    assert daemon["KeepAlive"] == {"SuccessfulExit": False} and daemon["LowPriorityIO"]
    agent = plistlib.loads(plan.file("org.officegrid.idle-reporter.plist").content.encode())
    assert agent["ProgramArguments"][3] == "idle-reporter" and agent["RunAtLoad"]
    assert str(plan.file("org.officegrid.idle-reporter.plist").path).startswith(
        "/Library/LaunchAgents/")
    assert plan.before[0][:3] == ["sysadminctl", "-addUser", "_officegrid"]
    assert ["launchctl", "bootstrap", "system",
            "/Library/LaunchDaemons/org.officegrid.worker.plist"] in plan.commands


def test_windows_task_and_run_key() -> None:
    exe = r"C:\Program Files\Python311\pythonw.exe"
    plan = service.plan_install("windows", "https://g:1", command=[exe, "-m", "officegrid"])
    task = ET.fromstring(plan.file("worker-task.xml").content.split("\n", 1)[1])
    assert task.find("t:Principals/t:Principal/t:UserId", NS).text == "S-1-5-19"  # LOCAL SERVICE
    assert task.find("t:Triggers/t:BootTrigger", NS) is not None
    assert task.find("t:Settings/t:ExecutionTimeLimit", NS).text == "PT0S"  # never stopped
    assert task.find("t:Settings/t:Priority", NS).text == "7"
    assert task.find("t:Actions/t:Exec/t:Command", NS).text == exe
    args = task.find("t:Actions/t:Exec/t:Arguments", NS).text
    assert args == r"-m officegrid worker --work-dir C:\ProgramData\officegrid\worker"
    reg = next(c for c in plan.commands if c[0] == "reg")
    assert reg[2] == service.WIN_RUN_KEY and reg[4] == "officegrid-idle-reporter"
    assert reg[8] == (f'"{exe}" -m officegrid idle-reporter --work-dir '
                      r"C:\ProgramData\officegrid\worker")
    assert ["schtasks", "/Create", "/TN", "officegrid worker", "/XML",
            r"C:\ProgramData\officegrid\worker-task.xml", "/F"] in plan.commands
    assert plan.file("worker-task.xml").path == PureWindowsPath(
        r"C:\ProgramData\officegrid\worker-task.xml")


def test_apply_under_root_writes_files_and_runs_nothing(tmp_path: Path) -> None:
    ran: list[list[str]] = []
    said: list[str] = []
    plan = service.plan_install("linux", "http://g:1", command=CMD, user_exists=False)
    code = service.apply(plan, root=tmp_path, say=said.append,
                         run=lambda c: ran.append(c) or 0)
    assert code == 0 and ran == []
    unit = tmp_path / "etc/systemd/system/officegrid-worker.service"
    assert unit.read_text() == plan.file(".service").content
    assert (tmp_path / "var/lib/officegrid/worker/sessions").stat().st_mode & 0o7777 == 0o1777
    assert (tmp_path / "etc/officegrid/officegrid.toml").stat().st_mode & 0o777 == 0o640
    assert any(s.startswith("skipped (--root): useradd") for s in said)
    # Uninstall removes the service and autostart files, keeps config and work dir.
    code = service.apply(service.plan_uninstall("linux"), root=tmp_path, say=said.append,
                         run=lambda c: ran.append(c) or 0)
    assert code == 0 and ran == [] and not unit.exists()
    assert not (tmp_path / "etc/xdg/autostart/officegrid-idle-reporter.desktop").exists()
    assert (tmp_path / "etc/officegrid/officegrid.toml").exists()


def test_apply_runs_commands_in_order_and_stops_at_a_failure(tmp_path: Path,
                                                             monkeypatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    ran: list[list[str]] = []
    monkeypatch.setattr(service, "_under", lambda root, p: tmp_path / str(p).lstrip("/"))
    plan = service.plan_install("linux", "http://g:1", command=CMD, user_exists=False)
    code = service.apply(plan, say=lambda s: None,
                         run=lambda c: ran.append(c) or (3 if c[0] == "systemctl" else 0))
    assert code == 3
    assert ran[0][0] == "useradd" and ran[-1] == ["systemctl", "daemon-reload"]
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(PermissionError, match="needs root"):
        service.apply(plan, run=lambda c: 0)


def test_dry_run_touches_nothing(tmp_path: Path) -> None:
    said: list[str] = []
    plan = service.plan_install("windows", "http://g:1", command=CMD)
    assert service.apply(plan, root=tmp_path, dry_run=True, say=said.append) == 0
    assert list(tmp_path.iterdir()) == []
    assert any(s.startswith("would run: schtasks /Create") for s in said)
    assert any("would write" in s and "worker-task.xml" in s for s in said)


def test_cli_install_and_uninstall_under_root(tmp_path: Path) -> None:
    env = dict(os.environ, OFFICEGRID_CONFIG=os.devnull)
    root = tmp_path / "root"
    out = subprocess.run([sys.executable, "-m", "officegrid", "worker", "install", "--server",
                          "http://127.0.0.1:8765", "--root", str(root)],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (root / "etc/systemd/system/officegrid-worker.service").exists()
    dry = subprocess.run([sys.executable, "-m", "officegrid", "worker", "install", "--server",
                          "http://x", "--dry-run", "--os", "macos"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "would run: launchctl bootstrap system" in dry.stdout
    bad = subprocess.run([sys.executable, "-m", "officegrid", "worker", "install", "--server",
                          "http://x", "--policy", "sometimes", "--dry-run"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "unknown policy 'sometimes'" in bad.stderr
    out = subprocess.run([sys.executable, "-m", "officegrid", "worker", "uninstall", "--root",
                          str(root)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert not (root / "etc/systemd/system/officegrid-worker.service").exists()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    plan = service.plan_install("linux", "http://g:1", command=[sys.executable, "-m",
                                                                "officegrid"])
    unit = tmp_path / service.UNIT_NAME
    unit.write_text(plan.file(".service").content)
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                         text=True, timeout=120)
    problems = [ln for ln in (out.stdout + out.stderr).splitlines()
                if service.UNIT_NAME in ln and "sysinit.target" not in ln]
    assert out.returncode == 0 and problems == [], out.stdout + out.stderr


# ------------------------------------------------------------------------------ review R2


def _as_user(uid: int, fn) -> int:
    """Run fn() in a forked child as `uid` (the interpreter may not be readable to it)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.setgid(uid)
            os.setuid(uid)
            code = fn()
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_a_local_user_can_write_a_report_into_an_installed_work_dir() -> None:
    """The reporter runs as the desktop's user: it must get through the work dir to sessions/
    (a 0750 work dir shut every reporter out, so no session was ever reported), but must not
    list the work dir, and job code (the service account) must not be able to delete another
    user's report (it could if the service account owned the sticky sessions dir)."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="og-r2-"))
    try:
        os.chmod(base, 0o755)
        plan = service.plan_install("linux", "http://g:1", command=CMD)
        assert service.apply(plan, root=base, say=lambda s: None) == 0
        wd = base / "var/lib/officegrid/worker"
        sessions = str(PurePosixPath("/var/lib/officegrid/worker/sessions"))
        chowned = [c for c in plan.commands if c[0] == "chown" and sessions in c]
        assert chowned == [["chown", "root:root", sessions]]
        import time

        from officegrid.worker.idle.reporter import Report, write_report

        def reporter() -> int:
            write_report(wd / "sessions", Report(os.getuid(), "s", time.time(), 1.0, False,
                                                 None, ""))
            try:
                os.listdir(wd)
            except PermissionError:
                return 0
            return 3

        assert _as_user(65534, reporter) == 0
        assert (wd / "sessions/65534-s.json").stat().st_uid == 65534

        def job_code() -> int:  # runs as the service account, not root
            try:
                os.unlink(wd / "sessions/65534-s.json")
            except PermissionError:
                return 0
            return 3

        assert _as_user(65533, job_code) == 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_config_with_the_join_token_is_never_world_readable(tmp_path: Path,
                                                            monkeypatch) -> None:
    """The file is created with its final mode: it is not readable by others between
    write_text (umask) and chmod, when a local user could open it and keep the join token."""
    plan = service.plan_install("linux", "http://g:1", enroll="J0IN", command=CMD)
    monkeypatch.setattr(os, "chmod", lambda *a, **k: None)  # see the mode it was created with
    old = os.umask(0)
    try:
        service.apply(plan, root=tmp_path, say=lambda s: None)
    finally:
        os.umask(old)
    cfg = tmp_path / "etc/officegrid/officegrid.toml"
    assert "J0IN" in cfg.read_text()
    assert cfg.stat().st_mode & 0o077 == 0, oct(cfg.stat().st_mode)
    assert not list(cfg.parent.glob(".*.tmp"))


def test_windows_users_cannot_change_each_others_reports() -> None:
    plan = service.plan_install("windows", "http://g:1", command=CMD)
    grant = next(c for c in plan.commands if c[0] == "icacls" and c[1].endswith("sessions"))
    users = next(g for g in grant if g.startswith("*S-1-5-32-545:"))
    assert "M" not in users.split(":", 1)[1] and "(OI)" not in users  # create only
    assert "*S-1-3-0:(OI)(IO)M" in grant  # each creator changes only their own files


def test_macos_daemon_umask_and_work_dir_reachable() -> None:
    plan = service.plan_install("macos", "https://g:1", command=CMD)
    daemon = plistlib.loads(plan.file("org.officegrid.worker.plist").content.encode())
    assert daemon["Umask"] == 0o027
    wd = dict(plan.dirs)[PurePosixPath("/Library/Application Support/officegrid/worker")]
    assert wd & 0o001  # reporters pass through to sessions/


# ------------------------------------------------------------------------------ H4: the join token


@pytest.mark.parametrize("kind", ["linux", "macos", "windows"])
def test_the_join_token_is_only_in_the_private_config_file(kind: str) -> None:
    """Never on a command line (a unit's ExecStart, a plist's ProgramArguments, the task's
    arguments, the Run key, the commands the installer runs): every user sees those in ps,
    in `systemctl show` or in the task list. Only in the config file, which others cannot
    read."""
    secret = "oge_S3CRET-join-token"
    plan = service.plan_install(kind, "https://g:1", enroll=secret, command=CMD,
                                user_exists=False)
    (config,) = [f for f in plan.files if secret in f.content]
    assert config.path.name == "officegrid.toml"
    assert not any(secret in " ".join(c) for c in plan.before + plan.commands)
    if kind == "windows":
        # ProgramData is readable by Users: inherited rights are dropped on the config.
        acl = next(c for c in plan.commands if c[:2] == ["icacls", str(config.path)])
        assert "/inheritance:r" in acl and "/grant:r" in acl
        assert not any(g.startswith(("*S-1-5-32-545", "*S-1-1-0")) for g in acl)  # Users, Everyone
    else:
        assert config.mode == 0o640
        group = service.SERVICE_USER if kind == "linux" else service.MAC_USER
        assert ["chown", f"root:{group}", str(config.path)] in plan.commands


def test_help_points_to_the_enroll_environment_variable() -> None:
    for args in (["worker", "--help"], ["worker", "install", "--help"]):
        out = subprocess.run([sys.executable, "-m", "officegrid", *args], capture_output=True,
                             text=True, timeout=60, env=dict(os.environ, COLUMNS="200"))
        assert out.returncode == 0, out.stderr
        text = " ".join(out.stdout.split())
        assert "prefer the OFFICEGRID_ENROLL variable: a flag is visible to every user in ps" \
            in text, args


def test_a_server_url_the_agent_would_refuse_is_refused_at_install() -> None:
    for bad in ("ftp://x", "x:8765", "http://", "127.0.0.1:8765"):
        with pytest.raises(ValueError, match="must be http://HOST"):
            service.plan_install("linux", bad)
    assert service.plan_install("linux", "https://grid.example:8443").os_name == "linux"


def test_cli_dry_run_refuses_a_bad_url_and_warns_without_a_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OFFICEGRID_ENROLL"}
    env["OFFICEGRID_CONFIG"] = os.devnull
    bad = subprocess.run([sys.executable, "-m", "officegrid", "worker", "install", "--server",
                          "ftp://x", "--dry-run"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode != 0 and "ftp://x" in bad.stderr and "would" not in bad.stdout
    root = tmp_path / "root"
    out = subprocess.run([sys.executable, "-m", "officegrid", "worker", "install", "--server",
                          "http://127.0.0.1:8765", "--root", str(root)],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "warning: no join token and no identity" in out.stderr


def test_preflight_warns_of_a_missing_token_unless_an_identity_exists(tmp_path: Path) -> None:
    wd = PurePosixPath("/var/lib/officegrid/worker")
    cmd = [sys.executable, "-m", "officegrid"]
    warnings = service.preflight("windows", enroll=None, command=cmd, work_dir=wd,
                                 service_user=None, root=tmp_path)
    assert len(warnings) == 1 and "no join token" in warnings[0]
    assert service.preflight("windows", enroll="ogj_x", command=cmd, work_dir=wd,
                             service_user=None, root=tmp_path) == []
    ident = tmp_path / "var/lib/officegrid/worker/identity.json"
    ident.parent.mkdir(parents=True)
    ident.write_text("{}")
    assert service.preflight("windows", enroll=None, command=cmd, work_dir=wd,
                             service_user=None, root=tmp_path) == []


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX permissions")
def test_an_interpreter_the_service_account_cannot_reach_is_named() -> None:
    """issue 5 trial: a venv under /root (0700) gave a service that could not start."""
    base = Path(tempfile.mkdtemp(prefix="og-reach-"))  # in /tmp: pytest's own dir is 0700
    try:
        _check_reach(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _check_reach(tmp_path: Path) -> None:
    home = tmp_path / "home"
    exe = home / "venv/bin/python"
    exe.parent.mkdir(parents=True)
    exe.write_text("")
    os.chmod(exe, 0o755)
    os.chmod(tmp_path, 0o755)
    os.chmod(home, 0o700)
    other = 65534 if os.geteuid() != 65534 else 65533
    problems = service.unreachable([exe, exe.parent], other, set())
    assert problems == [f"{home} (mode 0700, uid {os.geteuid()}: not searchable for it)"]
    os.chmod(home, 0o750)  # the group may pass: a member of it reaches the interpreter
    assert service.unreachable([exe], other, {home.stat().st_gid}) == []
    assert service.unreachable([exe], other, set()) != []
    os.chmod(home, 0o755)
    assert service.unreachable([exe], other, set()) == []
    os.chmod(exe, 0o644)
    assert "not executable" in service.unreachable([exe], other, set())[0]
    cmd = [str(exe), "-m", "officegrid"]
    os.chmod(home, 0o700)
    warnings = service.preflight("linux", enroll="ogj_x", command=cmd,
                                 work_dir=PurePosixPath("/var/lib/officegrid/worker"),
                                 service_user=None, root=tmp_path)
    assert any(f"cannot reach {home}" in w for w in warnings)


def test_the_example_config_is_valid_toml_when_uncommented() -> None:
    """issue 5 trial: several example keys on one line were invalid TOML once uncommented."""
    from officegrid.worker.policy import PolicySettings

    text = service.plan_install("linux", "http://127.0.0.1:8765").file("officegrid.toml").content
    examples = [line for line in text.splitlines() if line.startswith("# ") and " = " in line]
    assert len(examples) >= 6
    uncommented = "\n".join(line[2:] if line in examples else line
                            for line in text.splitlines())
    data = tomllib.loads(uncommented)
    PolicySettings(**data["policy"])  # and every key is a real [policy] key
    assert set(data["policy"]) >= {"start_idle", "continue_idle", "max_suspend", "max_cpu",
                                   "window", "allow_battery"}


def test_a_symlinked_interpreter_and_tmp_are_checked() -> None:
    """issue 5 re-trial: a venv's python is a symlink into a 0700 home; a venv under /tmp is
    hidden from a service with PrivateTmp=yes."""
    base = Path(tempfile.mkdtemp(prefix="og-reach-"))
    try:
        home = base / "home"
        real = home / "pyenv/bin/python3"
        real.parent.mkdir(parents=True)
        real.write_text("")
        os.chmod(real, 0o755)
        os.chmod(base, 0o755)
        os.chmod(home, 0o700)
        venv = base / "venv/bin"
        venv.mkdir(parents=True)
        (venv / "python").symlink_to(real)
        warnings = service.preflight("linux", enroll="ogj_x",
                                     command=[str(venv / "python"), "-m", "officegrid"],
                                     work_dir=PurePosixPath("/var/lib/officegrid/worker"),
                                     service_user=None, root=base)
        assert any(f"cannot reach {home}" in w for w in warnings), warnings
        assert any("PrivateTmp=yes" in w for w in warnings), warnings
    finally:
        shutil.rmtree(base, ignore_errors=True)
