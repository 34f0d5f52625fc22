"""One active PRS instance per cluster: the run lock (a resource pool) and the task-list check.

Every test runs PRS as a subprocess against the fake cluster over HTTPS; the lock's pool is
real fake-cluster state (fakepve's /pools, pve-manager PVE/API2/Pool.pm semantics).
"""

import os
import subprocess
import sys
import time

import pytest
from proxmoxer import ProxmoxAPI

from prsmodule import EXECUTABLE, prs

pytest.importorskip("fakepve")
from fakecluster import generate_scenario  # noqa: E402
from test_e2e import daemon, spread, stop, usage  # noqa: E402

POOL = "prs-lock"


def lease(holder, until):
    """A lock comment as another PRS instance writes it."""
    return "proxmox-rebalancing-service run lock, taken by %s (lease: id=%s until=%d)" % (
        holder, holder, until)


def overlaps(tasks):
    """The largest number of these tasks that ran at the same moment (monotonic stamps)."""
    edges = sorted([(t["_began"], 1) for t in tasks] + [(t["_ended"], -1) for t in tasks if "_ended" in t])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def instance(conf, tmp_path, name):
    """A PRS daemon with a state directory of its own, as on its own node."""
    return daemon(conf, tmp_path, name, env={"STATE_DIRECTORY": str(tmp_path / name)})


def test_two_daemons_on_one_cluster_take_turns(cluster, run, tmp_path):
    c = cluster(generate_scenario(9, nodes=6, guests=60, ha=0, local_disk=0), time_scale=0.05)
    extra = "parallel_migrations = 2\n[service]\ndaemon = 1\nretry_minutes = 0.1\n"
    conf = run.conf(c, "[balancing]\n" + extra)
    with instance(conf, tmp_path, "a") as a, instance(conf, tmp_path, "b") as b:
        procs = [a[0], b[0]]
        # Both ran; the one that found the lock held skipped, and ran again 6 s later.
        deadline = time.monotonic() + 120
        while sum(m.startswith("STATUS=next run") for _, n in (a, b) for m in n.messages) < 3 and \
                time.monotonic() < deadline:
            for _, notify in (a, b):
                notify.read_until("never", timeout=0.2)
        assert all(p.poll() is None for p in procs), "both daemons are alive"
        for p in procs:
            stop(p)
    logs = [p.stderr.read() for p in procs]
    statuses = [[m for m in n.messages if m.startswith("STATUS=next run")] for _, n in (a, b)]
    skipped = [i for i in (0, 1) if any("skipped: another PRS instance" in s for s in statuses[i])]
    assert len(skipped) == 1 and len(statuses[skipped[0]]) == 2, statuses
    assert "last run: 0 migrations" in statuses[skipped[0]][1], "its own run found the cluster balanced"
    assert "another PRS instance" in logs[skipped[0]] and "holds the run lock" in logs[skipped[0]]
    migrations = c.tasks("qmigrate")
    assert len(migrations) >= 4, "the cluster needed several migrations"
    vmids = [t["id"] for t in migrations]
    assert len(vmids) == len(set(vmids)), "no guest migrated twice (no overlap, no move back)"
    assert overlaps(migrations) <= 2, "never more parallel migrations than configured"
    assert all(t["exitstatus"] == "OK" for t in migrations)
    assert spread(usage(c).values()) <= 10.0 + 1.0
    assert c.pool_comment(POOL) is None, "the lock is released when a run ends"


def test_a_one_shot_run_waits_while_another_instance_holds_the_lock(cluster, run):
    c = cluster("demo.json")
    c.set_pool(POOL, lease("pve9-4242-abcdef", time.time() + 3600))
    conf = run.conf(c)
    proc = subprocess.Popen([sys.executable, EXECUTABLE, "-c", conf, "--once"], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(3)
        assert proc.poll() is None and not c.migrations, "it waits and migrates nothing meanwhile"
        c.drop_pool(POOL)              # the other instance's run ends
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert "another PRS instance (pve9-4242-abcdef) is rebalancing this cluster" in err
    assert "waiting until it is done" in err and err.count("waiting until") == 1
    assert c.migrations and c.pool_comment(POOL) is None


def test_a_daemon_skips_its_run_while_another_instance_holds_the_lock(cluster, run, tmp_path):
    c = cluster("demo.json")
    c.set_pool(POOL, lease("pve9-4242-abcdef", time.time() + 3600))
    with instance(run.conf(c, daemon=1), tmp_path, "d") as (proc, notify):
        assert notify.read_until("STATUS=next run"), notify.messages
        stop(proc)
    err = proc.stderr.read()
    assert "skipping this run: another PRS instance (pve9-4242-abcdef)" in err
    assert "next try in 15 minutes" in err
    assert not c.migrations and c.pool_comment(POOL).startswith("proxmox-rebalancing-service run lock")


def test_a_lock_left_by_a_dead_instance_is_taken_over_after_its_lease(cluster, run):
    c = cluster("demo.json")
    c.set_pool(POOL, lease("pve9-4242-abcdef", time.time() - 120))
    result = run(c, "--once")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "run lock (pool prs-lock) of PRS instance pve9-4242-abcdef expired 2 min ago" in result.stderr
    assert c.migrations and c.pool_comment(POOL) is None


def test_a_pool_of_that_name_that_is_no_prs_lock_stops_the_run(cluster, run):
    c = cluster("demo.json")
    c.set_pool(POOL, "the finance team's VMs")
    result = run(c, "--once")
    assert result.returncode == prs.EXIT_API
    [line] = [x for x in result.stderr.splitlines() if "cluster_lock" in x]
    assert "the pool prs-lock exists and is not PRS's run lock" in line and "finance" in line
    assert not c.migrations and c.pool_comment(POOL) == "the finance team's VMs"


def test_without_the_pool_privilege_prs_warns_and_runs_without_the_lock(cluster, run):
    c = cluster("demo.json")
    c.add_user("prs@pve", "pw-for-prs")
    c.grant("prs@pve", "/", "Sys.Audit", "VM.Audit", "VM.Migrate", "Datastore.Audit")
    result = run(c, "--once", proxmox="api_user = prs@pve\napi_pass = pw-for-prs\n")
    assert result.returncode == 0, result.stderr[-2000:]
    [line] = [x for x in result.stderr.splitlines() if "cluster_lock" in x]
    assert "WARNING" in line and "grant Pool.Allocate and Pool.Audit on /pool (not /pool/prs-lock" in line
    assert c.migrations and c.pool_comment(POOL) is None


def test_cluster_lock_off_sends_no_pool_request(cluster, run):
    c = cluster("demo.json")
    result = run(c, "--once", extra="[balancing]\n[service]\ndaemon = 0\ncluster_lock = off\n")
    assert result.returncode == 0, result.stderr[-2000:]
    assert c.migrations and not [r for r in c.requests if "/pools" in r[1]]


def test_migrations_started_with_prs_credentials_hold_a_run_until_they_end(cluster, run):
    """An instance died with its lock (now expired) while its migration goes on in Proxmox:
    the next run waits for that migration instead of planning on a cluster in flux."""
    c = cluster("demo.json", time_scale=0.05)
    c.set_pool(POOL, lease("pve9-4242-abcdef", time.time() - 60))
    api = ProxmoxAPI(c.host, user=c.user, password=c.password, verify_ssl=c.cafile)
    upid = api.nodes("pve1").qemu(102).migrate.post(target="pve4", online=1)     # 32 GiB: seconds
    result = run(c, "--once", extra="max_migrations = 1\n")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 migration started with PRS's credentials (root@pam) still runs: guest 102 on pve1" \
        in result.stderr
    migrations = c.tasks("qmigrate")
    [theirs] = [t for t in migrations if t["upid"] == upid]
    assert len(migrations) > 1 and all(t["_began"] >= theirs["_ended"] for t in migrations if t is not theirs)


def test_the_cool_down_holds_across_instances(cluster, run, tmp_path):
    """An instance with its own (empty) state file still leaves alone what another moved:
    Proxmox's task list shows the moves made with PRS's credentials."""
    c = cluster("demo.json")
    first = run(c, "--once", "--json")
    assert first.returncode == 0 and first.doc["migrations"], first.stderr[-2000:]
    moved = len(first.doc["migrations"])
    env = dict(os.environ, STATE_DIRECTORY=str(tmp_path / "other-instance"))
    second = run(c, "--once", "--dry-run", env=env)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "%d guest%s moved by PRS within cooldown_hours = 24 stay where they are" % (
        moved, "" if moved == 1 else "s") in second.stderr
    # A different user is a different PRS: its cool-down is its own.
    c.add_user("other@pve", "pw-other")
    c.grant("other@pve", "/", "Sys.Audit", "VM.Audit", "VM.Migrate", "Pool.Allocate", "Pool.Audit")
    third = run(c, "--once", "--dry-run", env=env, proxmox="api_user = other@pve\napi_pass = pw-other\n")
    assert third.returncode == 0 and "cooldown_hours" not in third.stderr, third.stderr[-2000:]


def test_the_readme_role_takes_the_lock_run_after_run(cluster, run):
    """Pool.Allocate on /pool, as the README grants it: Proxmox deletes a pool's own ACL
    entries with the pool, so a grant on /pool/prs-lock would last one run only."""
    c = cluster("demo.json")
    c.add_user("rebal@pve", "pw-rebal")
    c.grant("rebal@pve", "/", "Sys.Audit", "VM.Audit", "VM.Migrate", "Datastore.Audit", "Pool.Audit")
    c.grant("rebal@pve", "/pool", "Pool.Allocate", "Pool.Audit")
    for _ in range(2):
        result = run(c, "--once", proxmox="api_user = rebal@pve\napi_pass = pw-rebal\n")
        assert result.returncode == 0 and "cluster_lock" not in result.stderr, result.stderr[-2000:]
    created = [r for r in c.requests if r == ("POST", "/pools")]
    deleted = [r for r in c.requests if r == ("DELETE", "/pools/prs-lock")]
    assert len(created) == len(deleted) == 2 and c.pool_comment(POOL) is None
