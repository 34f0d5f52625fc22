"""The executor when migrations run long or crowd a node, end to end on the fake cluster."""

import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from prsmodule import EXECUTABLE, prs

pytest.importorskip("fakepve")
import test_e2e  # noqa: E402
from fakecluster import generate_scenario, load_scenario  # noqa: E402



MOVE = re.compile(r"(migrating|done:|failed:) \S+ \((\d+)\) ([^\s:]+) -> ([^\s:]+)")


def node_peaks(stderr):
    """Most migrations each node sent or received at once, from PRS's start/finish lines."""
    busy, peak = {}, {}
    for line in stderr.splitlines():
        m = MOVE.search(line)
        if not m:
            continue
        step = 1 if m.group(1) == "migrating" else -1
        for node in (m.group(3), m.group(4)):
            busy[node] = busy.get(node, 0) + step
            peak[node] = max(peak.get(node, 0), busy[node])
    return peak


def test_one_migration_per_node_at_a_time_by_default(cluster, run):
    c = cluster(generate_scenario(9, nodes=6, guests=60, ha=0, local_disk=0), time_scale=0.01)
    result = run(c, "--once", "--json", extra="parallel_migrations = 4\n")
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(result.doc["migrations"]) >= 3
    peaks = node_peaks(result.stderr)
    assert max(peaks.values()) == 1, peaks
    wider = cluster(generate_scenario(9, nodes=6, guests=60, ha=0, local_disk=0), time_scale=0.01)
    again = run(wider, "--once", "--json", extra="parallel_migrations = 4\nparallel_per_node = 3\n")
    assert again.returncode == 0, again.stderr[-2000:]
    assert max(node_peaks(again.stderr).values()) > 1, "the limit is the option, not a constant"


def test_a_migration_past_its_timeout_keeps_its_slot_until_proxmox_ends_it(cluster, run):
    # db-main (62 GiB) takes about 6.4 s at time scale 0.1; migration_timeout is 3 s. PRS
    # reports it failed at its deadline, but Proxmox still copies it: the next migration must
    # not start before that task has ended (parallel_migrations = 1).
    scenario = load_scenario("demo.json")
    c = cluster(scenario, time_scale=0.1)
    result = run(c, "--once", "--json",
                 extra="[balancing]\nmax_migrations = 2\n[service]\ndaemon = 0\nmigration_timeout = 0.05\n")
    assert result.returncode == prs.EXIT_MIGRATION, result.stderr[-2000:]
    first, *rest = result.doc["migrations"]
    assert first["status"] == "failed" and "the task still runs" in first["status_reason"]
    tasks = sorted(c.tasks("qmigrate"), key=lambda t: t["starttime"])
    assert tasks[0]["id"] == str(first["vmid"]) and tasks[0]["exitstatus"] == "OK"
    assert len(tasks) == 2
    assert tasks[1]["starttime"] >= tasks[0]["endtime"], "no second migration while the first ran"


def test_an_ha_migration_the_ha_manager_refuses_fails_within_two_crm_rounds(cluster, run):
    # The hamigrate task only queues the request and ends OK; the CRM then ignores it (a rule
    # it breaks). PRS must not wait HA_SETTLE (15 minutes) to say so: two CRM rounds after the
    # request (manager_status timestamp) with the guest still `started` on its source suffice.
    scenario = {"nodes": [{"name": n, "maxcpu": 16, "maxmem_gib": 64, "base_mem_gib": 1} for n in ("pve1", "pve2")],
                "guests": [{"vmid": 101, "node": "pve1", "maxmem_gib": 24, "mem_gib": 20, "memhost_gib": 20,
                            "ha": True}, {"vmid": 102, "node": "pve1", "maxmem_gib": 4, "lock": "backup"}]}
    c = cluster(scenario, ha_delay=0.3)
    c.refuse_ha(101)
    started = time.monotonic()
    result = run(c, "--once", "--json")
    assert time.monotonic() - started < 30
    assert result.returncode == prs.EXIT_MIGRATION, result.stderr[-2000:]
    [m] = result.doc["migrations"]
    assert m["status"] == "failed" and "did not take up the request" in m["status_reason"]
    assert c.placement()[101] == "pve1"


def test_check_names_every_host_the_cluster_and_what_is_missing(cluster, run, tmp_path):
    c = cluster("small.json")
    ok = run(c, "--check")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "%s: connected as root@pam" % c.host in ok.stdout
    assert "Proxmox VE 9.2.3, cluster small: quorate, 3 nodes (3 online)" in ok.stdout
    assert ok.stdout.strip().endswith(": OK") and not c.migrations
    # A dead first host and a user without VM.Migrate: both named, exit 3, no secret shown.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = "127.0.0.1:%d" % s.getsockname()[1]
    c.add_user("watcher@pve", "s3cr3t-pw")
    c.grant("watcher@pve", "/", "Sys.Audit", "VM.Audit")
    conf = run.conf(c, proxmox="api_user = watcher@pve\napi_pass = s3cr3t-pw\n")
    text = open(conf).read().replace("api_host = %s" % c.host, "api_host = %s, %s" % (dead, c.host))
    with open(conf, "w") as fh:
        fh.write(text)
    bad = subprocess.run([sys.executable, EXECUTABLE, "-c", conf, "--check"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == prs.EXIT_API, bad.stdout + bad.stderr
    problems = [line for line in bad.stdout.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 4, bad.stdout
    assert dead in problems[0] and "unreachable" in problems[0]
    assert "watcher@pve lacks VM.Migrate on /vms" in problems[1]
    assert "lacks Pool.Allocate on /pool/prs-lock" in problems[2] and "Pool.Audit" in problems[3]
    # The run lock's pool granted (and cluster_lock named): only the migration privilege is missing.
    c.grant("watcher@pve", "/pool/rebalancer", "Pool.Allocate", "Pool.Audit")
    with open(conf, "a") as fh:
        fh.write("cluster_lock = rebalancer\n")      # the file ends in its [service] section
    bad = subprocess.run([sys.executable, EXECUTABLE, "-c", conf, "--check"], capture_output=True, text=True,
                         timeout=120)
    problems = [line for line in bad.stdout.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 2 and "VM.Migrate" in problems[1], bad.stdout + bad.stderr
    assert "s3cr3t-pw" not in bad.stdout + bad.stderr


def test_a_config_with_a_secret_readable_by_others_is_warned_about(cluster, run):
    c = cluster("small.json")
    conf = run.conf(c)
    os.chmod(conf, 0o644)
    result = subprocess.run([sys.executable, EXECUTABLE, "-c", conf, "--dry-run"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0
    warnings = [line for line in result.stderr.splitlines() if "chmod 600" in line]
    assert len(warnings) == 1 and "readable by others (mode 0644)" in warnings[0]


def test_a_source_node_dying_mid_migration_is_settled_at_once(cluster, run):
    # The task runs on the source node; once it is down, pveproxy answers 595 for its task
    # status. PRS reads /cluster/resources, sees the node offline and says so, instead of
    # polling until migration_timeout (2 hours by default).
    c = cluster("demo.json", time_scale=0.2)            # db-main (62 GiB) takes about 13 s
    proc = test_e2e.one_shot_until_first_migration(c, run.conf(c))
    try:
        c.set_node_offline("pve1")
        died = time.monotonic()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.monotonic() - died < 30
    assert proc.returncode == prs.EXIT_MIGRATION, err[-2000:]
    first = json.loads(out)["migrations"][0]
    assert first["status"] == "failed" and "source node pve1 went offline" in first["status_reason"]
