"""The FreeBSD rc.d script (packaging/freebsd/proxmox-rebalancing-service) and PRS run the
way it starts it.

There is no FreeBSD here: the script is sourced by a small sh harness whose stubs stand in
for rc.subr (load_rc_config reads an rc.conf of the test's making, run_rc_command runs the
start precmd as rc.subr would and prints what rc.subr would use), and PRS then runs with
exactly the arguments daemon(8) would give it, minus daemon(8) itself, against the fake
cluster, with no systemd in its environment (no NOTIFY_SOCKET, no JOURNAL_STREAM).

PRS_FREEBSD_RCD=path checks a copy of the rc.d script instead (PRS_EXECUTABLE, see
prsmodule.py, a copy of the program).
"""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prsmodule import EXECUTABLE

ROOT = Path(__file__).resolve().parent.parent
RCD = Path(os.environ.get("PRS_FREEBSD_RCD", ROOT / "packaging" / "freebsd" / "proxmox-rebalancing-service"))
RC_SUBR = ". /etc/rc.subr"
DEFAULT_CONFIG = "/usr/local/etc/proxmox-rebalancing-service/prs.conf"

# daemon(8)'s options (FreeBSD 14): flags, and those that take a value.
DAEMON_FLAGS = set("cfHrS")
DAEMON_VALUE_OPTIONS = set("pPtumosTlRC")

# Stand-ins for rc.subr. run_rc_command does what rc.subr's does before it starts the
# command: rc_flags from ${name}_flags, then the start precmd (for "start"); it prints
# the variables rc.subr would use and the command line it would run
# ("$command $rc_flags $command_args").
HARNESS = r"""
load_rc_config() {
    if [ -n "${PRS_TEST_RC_CONF:-}" ]; then . "$PRS_TEST_RC_CONF"; fi
}
checkyesno() {
    eval _v=\$$1
    case $_v in [Yy][Ee][Ss]|[Tt][Rr][Uu][Ee]|[Oo][Nn]|1) return 0 ;; *) return 1 ;; esac
}
warn() { echo "$name: WARNING: $*" >&2; }
err() { _c=$1; shift; echo "$name: ERROR: $*" >&2; exit "$_c"; }
run_rc_command() {
    eval rc_flags=\$${name}_flags
    if [ "$1" = start ] && [ -n "$start_precmd" ]; then
        $start_precmd || { echo "precmd failed" >&2; exit 3; }
    fi
    if checkyesno "$rcvar"; then enabled=YES; else enabled=NO; fi
    for v in name rcvar enabled prs_enable prs_config prs_executable prs_python pidfile \
             prs_supervisor_pidfile procname command_interpreter command command_args \
             required_files extra_commands sig_reload stop_cmd reload_precmd start_precmd \
             rc_flags STATE_DIRECTORY; do
        eval "printf '%s=%s\n' $v \"\${$v}\""
    done
    printf 'start_line=%s\n' "$command $rc_flags $command_args"
    printf 'exported_state_directory=%s\n' "$(sh -c 'printf %s "$STATE_DIRECTORY"')"
}
"""


def rcd_text():
    text = RCD.read_text(encoding="utf-8")
    assert text.count("\n" + RC_SUBR + "\n") == 1, "the script sources /etc/rc.subr once"
    return text


def rc_command(tmp_path, action="status", rc_conf=""):
    """Source the rc.d script in the harness; the variables it leaves for rc.subr."""
    script = tmp_path / "rcd-under-test"
    script.write_text(HARNESS + rcd_text().replace("\n" + RC_SUBR + "\n", "\n:\n"), encoding="utf-8")
    conf = tmp_path / "rc.conf"
    conf.write_text(rc_conf, encoding="utf-8")
    env = {k: v for k, v in os.environ.items()
           if k not in ("STATE_DIRECTORY", "NOTIFY_SOCKET", "JOURNAL_STREAM")}
    env["PRS_TEST_RC_CONF"] = str(conf)
    result = subprocess.run(["sh", str(script), action], capture_output=True, text=True, env=env, timeout=60)
    values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return result, values


def daemon_argv(start_line):
    """Split "daemon [options] program args" into (daemon options, program argv)."""
    words = shlex.split(start_line)
    assert words[0] == "/usr/sbin/daemon", words
    options, rest = {}, words[1:]
    while rest and rest[0].startswith("-") and len(rest[0]) > 1:
        word = rest.pop(0)
        letters = word[1:]
        while letters:
            letter, letters = letters[0], letters[1:]
            if letter in DAEMON_FLAGS:
                options[letter] = True
            elif letter in DAEMON_VALUE_OPTIONS:
                options[letter] = letters or rest.pop(0)
                letters = ""
            else:
                pytest.fail("daemon(8) has no option -%s (%s)" % (letter, start_line))
    return options, rest


def shebang_interpreter():
    with open(EXECUTABLE, encoding="utf-8") as handle:
        first = handle.readline().strip()
    assert first.startswith("#!/"), first
    return first[2:]


def test_rcd_script_is_valid_sh():
    result = subprocess.run(["sh", "-n", str(RCD)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert rcd_text().startswith("#!/bin/sh\n")


def test_rcd_script_passes_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run(["shellcheck", "--shell=sh", str(RCD)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rcd_defaults(tmp_path):
    result, v = rc_command(tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"[a-z][a-z0-9_]*", v["name"]), "an rc.d name is a shell identifier (no dashes)"
    header = re.search(r"^# PROVIDE: (\S+)$", rcd_text(), re.M)
    assert header and header.group(1) == v["name"]
    assert re.search(r"^# KEYWORD: .*\bshutdown\b", rcd_text(), re.M), "stopped at shutdown"
    assert v["rcvar"] == "prs_enable"
    assert v["prs_enable"] == "NO" and v["enabled"] == "NO", "not started unless enabled"
    assert v["prs_config"] == DEFAULT_CONFIG
    assert v["required_files"] == DEFAULT_CONFIG
    assert v["pidfile"].startswith("/var/run/") and v["pidfile"].endswith(".pid")
    assert v["prs_supervisor_pidfile"].startswith("/var/run/")
    assert v["prs_supervisor_pidfile"] != v["pidfile"]
    # rc.subr recognises PRS as "<interpreter> <program>" by these two.
    assert v["procname"] == v["prs_executable"] == "/usr/local/bin/proxmox-rebalancing-service"
    assert v["command_interpreter"] == v["prs_python"]
    assert v["prs_python"].startswith("/usr/local/bin/python3")
    assert "reload" in v["extra_commands"].split() and v["sig_reload"] == "HUP"
    assert v["stop_cmd"], "stop signals daemon(8), not PRS, or daemon(8) would restart PRS"

    options, program = daemon_argv(v["start_line"])
    assert options.get("S"), "log to syslog"
    assert options.get("T") == "proxmox-rebalancing-service", "syslog tag"
    assert options.get("f"), "stdin from /dev/null"
    assert options.get("p") == v["pidfile"], "child pidfile: PRS"
    assert options.get("P") == v["prs_supervisor_pidfile"], "supervisor pidfile: daemon(8)"
    assert options.get("r") or int(options.get("R", 0)) >= 1, "restarted should it die"
    assert program == [v["prs_executable"], "-c", DEFAULT_CONFIG]


def test_rcd_takes_rc_conf_settings(tmp_path):
    result, v = rc_command(tmp_path, rc_conf='prs_enable="YES"\nprs_config="/etc/prs/lab.conf"\n'
                                              'prs_args="-v"\nprs_syslog_tag="prs-lab"\n')
    assert result.returncode == 0, result.stderr
    assert v["enabled"] == "YES"
    options, program = daemon_argv(v["start_line"])
    assert options["T"] == "prs-lab"
    assert program == [v["prs_executable"], "-c", "/etc/prs/lab.conf", "-v"]


def _start_conf(tmp_path, config, **more):
    settings = {"prs_enable": "YES", "prs_config": config, "prs_executable": EXECUTABLE,
                "prs_python": shebang_interpreter(), "prs_state_dir": str(tmp_path / "db"), **more}
    return "".join("%s=%s\n" % (k, shlex.quote(str(val))) for k, val in settings.items())


def _need_shebang_python():
    # The start precmd runs the program by its shebang (#!/usr/bin/python3), for
    # --check-config only: the standard library is enough.
    if not os.access(shebang_interpreter(), os.X_OK):
        pytest.skip("%s (the program's shebang) is not installed" % shebang_interpreter())


def test_rcd_start_refuses_a_broken_config_and_a_wrong_interpreter(tmp_path):
    _need_shebang_python()
    broken = tmp_path / "broken.conf"
    broken.write_text("[proxmox]\napi_host = pve1\napi_user = root@pam\napi_pass = secret\n"
                      "[balancing]\nbalanciness = lots\n", encoding="utf-8")
    broken.chmod(0o600)
    result, v = rc_command(tmp_path, "start", _start_conf(tmp_path, broken))
    assert result.returncode == 3 and "precmd failed" in result.stderr, result.stdout + result.stderr
    assert "balanciness" in result.stderr, "PRS's own one-line reason is shown"
    assert "start_line" not in v

    # A valid configuration, but the program's #! is not prs_python: rc.subr would not
    # recognise the running service (status, reload), so it is not started.
    good = tmp_path / "good.conf"
    good.write_text(broken.read_text().replace("lots", "10"), encoding="utf-8")
    good.chmod(0o600)
    result, v = rc_command(tmp_path, "start", _start_conf(tmp_path, good))
    assert result.returncode == 0, result.stdout + result.stderr
    wrong = _start_conf(tmp_path, good, prs_python="/usr/local/bin/python3.9")
    result, v = rc_command(tmp_path, "start", wrong)
    assert result.returncode == 3 and "precmd failed" in result.stderr, result.stdout + result.stderr
    assert "want '#!/usr/local/bin/python3.9'" in result.stderr
    assert "start_line" not in v


def test_prs_runs_as_the_rcd_script_starts_it(cluster, run, tmp_path):
    """Start as rc.d would (minus daemon(8)): the first run rebalances, log lines are plain
    (syslog adds time and priority, no journald <N> prefixes), SIGHUP reloads and PRS stays,
    SIGTERM (passed on by daemon(8) on "service prs stop") ends it at once with status 0."""
    _need_shebang_python()
    c = cluster("demo.json")
    conf = run.conf(c, "", daemon=1)
    result, v = rc_command(tmp_path, "start", _start_conf(tmp_path, conf))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout, "the precmd's --check-config passed"
    options, program = daemon_argv(v["start_line"])
    assert program == [EXECUTABLE, "-c", conf]
    state_dir = Path(v["exported_state_directory"])
    assert state_dir == tmp_path / "db", "the precmd exports STATE_DIRECTORY to the command"

    # As on FreeBSD: no systemd variables; the program through its interpreter (this
    # venv's python for the shebang's, which lacks proxmoxer); stdin /dev/null (-f).
    env = {k: val for k, val in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")}
    env["STATE_DIRECTORY"] = str(state_dir)
    log_path = tmp_path / "syslog.txt"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([sys.executable, *program], env=env, stdin=subprocess.DEVNULL,
                                stdout=log_file, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (c.migrations and (state_dir / "state.json").exists()) and time.monotonic() < deadline:
            assert proc.poll() is None, "PRS ended: %s" % log_path.read_text()
            time.sleep(0.1)
        assert c.migrations, "the first run rebalanced: %s" % log_path.read_text()
        assert (state_dir / "state.json").exists(), "PRS remembers its run in prs_state_dir"

        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while "configuration reloaded" not in log_path.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, "SIGHUP ended PRS: %s" % log_path.read_text()
            time.sleep(0.1)
        assert "configuration reloaded" in log_path.read_text()
        time.sleep(0.3)
        assert proc.poll() is None, "PRS keeps running after a reload"

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, log_path.read_text()
        assert time.monotonic() - started < 5, "SIGTERM ends the wait at once"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = log_path.read_text().splitlines()
    assert lines, "PRS logged"
    prefixed = [line for line in lines if re.match(r"<\d>", line)]
    assert not prefixed, "journald priority prefixes outside systemd: %s" % prefixed[:3]
    plain = re.compile(r"\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) +\S")
    assert all(plain.match(line) for line in lines), [line for line in lines if not plain.match(line)][:3]
    assert any("started" in line for line in lines) and "stopping" in lines[-1]
    assert "secret" not in log_path.read_text().replace("api_token_secret", "")
