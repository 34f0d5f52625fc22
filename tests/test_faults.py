"""The fault matrix: what a month unattended brings, one fault per test, end to end.

PRS runs as a subprocess against the fake cluster over HTTPS; each fault is injected at the
HTTP level (tests/fakecluster.py `fail`) or in the cluster's state, and each test asserts the
outcome an admin should see: the exit code, one line naming what and why, nothing half-done
(the run lock released, no migration started twice), and the next run working.
Faults covered elsewhere: lost quorum, API outage in the daemon (test_e2e), failing and
refused migrations, a backup lock, SIGTERM, SIGHUP with a broken config (test_e2e,
test_memory), overdue and orphaned migrations (test_trouble), state file trouble
(test_memory), a second instance (test_instances).
"""

import json
import subprocess
import sys

import pytest

from prsmodule import EXECUTABLE, prs

pytest.importorskip("fakepve")
import test_e2e  # noqa: E402
from fakecluster import DROP, HANG  # noqa: E402


def errors(stderr):
    return [line for line in stderr.splitlines() if " ERROR " in line]


def no_traceback(result):
    return "Traceback" not in result.stderr + result.stdout


def test_an_api_error_once_fails_the_run_in_one_line_and_the_next_run_works(cluster, run):
    c = cluster("demo.json")
    c.fail("GET", r"^/cluster/resources", 500, "got timeout", times=1)
    first = run(c, "--once")
    assert first.returncode == prs.EXIT_API and no_traceback(first)
    [line] = errors(first.stderr)
    assert "GET /cluster/resources: HTTP 500 got timeout" in line
    assert not c.migrations and c.pool_comment("prs-lock") is None, "nothing done, the lock released"
    second = run(c, "--once")
    assert second.returncode == 0 and c.migrations, second.stderr[-2000:]


def _with_timeout(run, c, seconds):
    conf = run.conf(c)
    with open(conf) as handle:
        text = handle.read().replace("timeout = 30\n", "timeout = %d\n" % seconds)
    with open(conf, "w") as handle:
        handle.write(text)
    return conf


def test_a_request_hanging_past_the_timeout_is_given_up_and_asked_again(cluster, run):
    c = cluster("demo.json")
    conf = _with_timeout(run, c, 2)
    c.fail("GET", r"^/cluster/resources", HANG, "6", times=1)
    result = subprocess.run([sys.executable, EXECUTABLE, "-c", conf, "--once", "--json"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    [warning] = [x for x in result.stderr.splitlines() if "timeout" in x]
    assert "GET /cluster/resources: %s unreachable (no answer within timeout = 2 s); trying the other " \
        "API hosts" % c.host in warning
    assert json.loads(result.stdout)["migrations"] and c.migrations


def test_a_hanging_migration_request_is_not_sent_twice(cluster, run):
    """A write whose answer never comes may have been done: PRS reports it and never repeats
    it blindly; the next run finds the cluster as it is."""
    c = cluster("demo.json")
    conf = _with_timeout(run, c, 2)
    c.fail("POST", r"/qemu/\d+/migrate$", HANG, "4", times=1)
    result = subprocess.run([sys.executable, EXECUTABLE, "-c", conf, "--once", "--json"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == prs.EXIT_MIGRATION and no_traceback(result), result.stderr[-2000:]
    first = json.loads(result.stdout)["migrations"][0]
    assert first["status"] == "failed"
    assert "unreachable (no answer within timeout = 2 s)" in first["status_reason"]
    posts = [r for r in c.requests if r[0] == "POST" and r[1].endswith("/qemu/%d/migrate" % first["vmid"])]
    assert len(posts) == 1
    again = subprocess.run([sys.executable, EXECUTABLE, "-c", conf, "--once"], capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    moved = [m["vmid"] for m in c.migrations]
    assert len(moved) == len(set(moved)), "no guest migrated twice"


def test_a_dropped_connection_is_asked_again_for_a_read(cluster, run):
    c = cluster("demo.json")
    c.fail("GET", r"^/cluster/resources", DROP, "", times=1)
    result = run(c, "--once", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    [warning] = [x for x in result.stderr.splitlines() if "trying the other API hosts" in x]
    assert "GET /cluster/resources" in warning and "unreachable" in warning
    assert result.doc["migrations"] and c.migrations


def test_a_dropped_connection_on_a_migration_request_fails_that_migration_only(cluster, run):
    c = cluster("demo.json")
    c.fail("POST", r"/qemu/\d+/migrate$", DROP, "", times=1)
    result = run(c, "--once", "--json")
    assert result.returncode == prs.EXIT_MIGRATION and no_traceback(result), result.stderr[-2000:]
    first = result.doc["migrations"][0]
    assert first["status"] == "failed" and "unreachable" in first["status_reason"]
    assert [x for x in errors(result.stderr) if "failed: " in x and "(%d)" % first["vmid"] in x]
    assert c.pool_comment("prs-lock") is None


def test_a_revoked_ticket_is_replaced_mid_run(cluster, run):
    c = cluster("demo.json", time_scale=0.05)
    proc = test_e2e.one_shot_until_first_migration(c, run.conf(c, "max_migrations = 3\n"))
    try:
        c.revoke_tickets()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    doc = json.loads(out)
    assert doc["migrations"] and all(m["status"] == "done" for m in doc["migrations"])
    assert len([r for r in c.requests if r == ("POST", "/access/ticket")]) >= 2


def test_a_target_going_offline_mid_run_receives_nothing(cluster, run):
    c = cluster("demo.json", time_scale=0.05)
    plan = run(c, "--dry-run", "--json").doc["migrations"]
    later = {m["target"] for m in plan[1:]} - {plan[0]["target"], plan[0]["source"]}
    assert later, "the plan sends guests to a node the first migration does not touch"
    gone = sorted(later)[0]
    proc = test_e2e.one_shot_until_first_migration(c, run.conf(c, "max_migrations = %d\n" % len(plan)))
    try:
        c.set_node_offline(gone)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert no_traceback(subprocess.CompletedProcess([], 0, out, err))
    doc = json.loads(out)
    assert not [m for m in c.migrations if m["target"] == gone]
    skipped = [m for m in doc["migrations"] if m["target"] == gone]
    assert skipped and all(m["status"] == "skipped" and "offline" in m["status_reason"] for m in skipped)
    assert proc.returncode == 0, err[-2000:]


def test_a_guest_locked_by_a_backup_after_planning_is_skipped_not_failed(cluster, run):
    c = cluster("demo.json", time_scale=0.05)
    plan = run(c, "--dry-run", "--json").doc["migrations"]
    assert len(plan) >= 2
    victim = plan[1]["vmid"]
    proc = test_e2e.one_shot_until_first_migration(c, run.conf(c, "max_migrations = %d\n" % len(plan)))
    try:
        c.lock(victim, "backup")
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    [entry] = [m for m in json.loads(out)["migrations"] if m["vmid"] == victim]
    assert entry["status"] == "skipped" and entry["status_reason"] == "the guest is locked (backup)"
    assert victim not in {m["vmid"] for m in c.migrations}
    # Transient: once the backup is done, the next run may move it (no lasting memory).
    c.unlock(victim)
    again = run(c, "--dry-run", "--json")
    assert "not retried" not in again.stderr + again.stdout


def test_a_ticket_that_expired_while_the_daemon_waited_is_replaced(cluster, run, tmp_path):
    """The daemon logs in afresh for every run: a ticket that expired during the wait
    (2 hours on Proxmox; 2 s here) costs nothing."""
    c = cluster("demo.json")
    c.ticket_ttl = 2
    c.lose_quorum()                    # the first run fails; the daemon waits retry_minutes (6 s)
    conf = run.conf(c, "[balancing]\n[service]\ndaemon = 1\nretry_minutes = 0.1\n")
    with test_e2e.daemon(conf, tmp_path) as (proc, notify):
        assert notify.read_until("STATUS=next run"), notify.messages
        c.restore_quorum()
        assert notify.read_until("migrations, spread", timeout=120), notify.messages
        assert proc.poll() is None
        test_e2e.stop(proc)
    err = proc.stderr.read()
    assert c.migrations and "Traceback" not in err
    assert len([r for r in c.requests if r == ("POST", "/access/ticket")]) >= 2


def test_an_api_without_pools_task_list_or_version_still_gets_balanced(cluster, run):
    """Not Proxmox as shipped (a proxy that filters paths, another implementation): the lock,
    the task list and the version line are extras; the run goes on without them, saying so."""
    c = cluster("demo.json")
    c.fail("POST", r"^/pools$", 501, "Method 'POST /pools' not implemented", times=None)
    c.fail("GET", r"^/cluster/tasks$", 404, "Not Found", times=None)
    c.fail("GET", r"^/version$", 501, "Method 'GET /version' not implemented", times=None)
    result = run(c, "--once", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = [x for x in result.stderr.splitlines() if "WARNING" in x]
    assert any("POST /pools with HTTP 501; running without the cluster-wide run lock" in x for x in warnings)
    assert any("GET /cluster/tasks: HTTP 404" in x for x in warnings)
    assert "Proxmox VE (version unknown)" in result.stderr
    assert result.doc["migrations"] and c.migrations
