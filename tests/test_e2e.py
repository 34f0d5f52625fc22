"""PRS as a user runs it: the executable as a subprocess, over HTTPS with a verified
certificate, through proxmoxer (whichever version this venv has), against the fake
cluster of tests/fakecluster.py."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from prsmodule import EXECUTABLE, prs

pytest.importorskip("fakepve")
from fakecluster import generate_scenario  # noqa: E402


class Runner:
    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.count = 0

    def conf(self, c, extra="", proxmox=None, daemon=0):
        self.count += 1
        path = self.tmp_path / ("prs%d.conf" % self.count)
        proxmox = proxmox or "api_user = root@pam\napi_pass = secret\n"
        path.write_text("[proxmox]\napi_host = %s\n%sca_file = %s\ntimeout = 30\n%s\n[service]\ndaemon = %d\n"
                        % (c.host, proxmox, c.cafile, "" if "[balancing]" in extra else "[balancing]\n"
                           + extra, daemon) if "[balancing]" not in extra else
                        "[proxmox]\napi_host = %s\n%sca_file = %s\ntimeout = 30\n%s\n" % (
                            c.host, proxmox, c.cafile, extra))
        path.chmod(0o600)        # it holds a secret: PRS warns about a wider mode
        return str(path)

    def __call__(self, c, *args, extra="", proxmox=None, env=None, timeout=300):
        conf = self.conf(c, extra, proxmox)
        result = subprocess.run([sys.executable, EXECUTABLE, "-c", conf, *args], capture_output=True,
                                text=True, timeout=timeout, env=env)
        result.doc = json.loads(result.stdout) if "--json" in args and result.stdout.strip() else None
        return result



def one_shot_until_first_migration(c, conf):
    """PRS as a one-shot subprocess (--once --json); returns it once its first migration
    task runs on the fake cluster, for a test to interfere with the run."""
    proc = subprocess.Popen([sys.executable, EXECUTABLE, "-c", conf, "--once", "--json"], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not c.tasks("qmigrate") and time.monotonic() < deadline:
        time.sleep(0.02)
    return proc


@contextlib.contextmanager
def daemon(conf, tmp_path, name="notify", env=None):
    """PRS as the daemon, telling a Notify socket what it tells systemd: yields (process,
    notify); a process a test left running is killed afterwards."""
    notify = Notify(tmp_path / ("%s.sock" % name))
    env = dict(os.environ, NOTIFY_SOCKET=notify.path, **(env or {}))
    proc = subprocess.Popen([sys.executable, EXECUTABLE, "-c", conf], text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    try:
        yield proc, notify
    finally:
        if proc.poll() is None:
            proc.kill()


def stop(proc, within=20):
    """SIGTERM ends the daemon with exit code 0 within `within` seconds."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=within) == 0


def usage(c, nodes=None, key="mem", cap="maxmem"):
    """Node usage in percent as the fake cluster itself accounts it (online nodes)."""
    out = {}
    for name, u in c.node_usage().items():
        if u["online"] and (nodes is None or name in nodes) and u[cap]:
            out[name] = 100.0 * u[key] / u[cap]
    return out


def spread(values):
    values = list(values)
    return max(values) - min(values)


def assert_within_capacity(c, before=None):
    """No node over capacity, unless it already was at the start and PRS added nothing to it."""
    for name, u in c.node_usage().items():
        b = (before or {}).get(name, {})
        for used, size in (("mem", "maxmem"), ("assigned_mem", "maxmem"),
                           ("local_disk_used", "local_disk_size")):
            if used == "assigned_mem" and before is None:
                continue
            if u[used] > u[size]:
                assert b.get(used, 0) > b.get(size, 0) and u[used] <= b[used] + 1, \
                    "%s: %s over capacity" % (name, used)


def posts(c):
    return [p for m, p in c.requests if m == "POST" and p.endswith("/migrate")]


def test_rebalances_the_demo_cluster_and_a_second_run_plans_nothing(cluster, run):
    c = cluster("demo.json")
    before = usage(c)
    first = run(c, "--once", "--json")
    assert first.returncode == 0, first.stderr
    doc = first.doc
    assert doc["method"] == "memory" and doc["balanciness"] == 10
    assert doc["spread_before"] == pytest.approx(spread(before.values()), abs=0.5)
    assert doc["migrations"] and all(m["status"] == "done" for m in doc["migrations"])
    placement = c.placement()
    for m in doc["migrations"]:
        assert placement[m["vmid"]] == m["target"], "every reported migration really happened"
        assert m["type"] in ("qemu", "lxc") and m["size_unit"] == "GiB" and m["reason"]
    assert len(c.migrations) == len(doc["migrations"])
    after = usage(c)
    assert spread(after.values()) <= 10
    assert doc["measured"]["spread"] == pytest.approx(spread(after.values()), abs=0.1)
    assert_within_capacity(c)
    second = run(c, "--once", "--json")
    assert second.returncode == 0 and second.doc["migrations"] == []
    assert "nothing to do" in second.doc["verdict"]


def test_human_output_on_a_terminal_run(cluster, run):
    c = cluster("demo.json")
    result = run(c, "--once")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "before" in out and "after" in out and "spread" in out and "Summary:" in out
    assert out.count("%") >= 8 and "done, 0 failed" in out
    starts = [line for line in result.stderr.splitlines() if "migrating " in line]
    ends = [line for line in result.stderr.splitlines() if " done: " in line]
    assert len(starts) == len(ends) == len(c.migrations) > 0
    assert all(" s" in line for line in ends), "each finished migration reports its duration"


def test_dry_run_changes_nothing(cluster, run):
    c = cluster("demo.json")
    placement = c.placement()
    result = run(c, "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    assert result.doc["dry_run"] and result.doc["migrations"]
    assert "status" not in result.doc["migrations"][0]
    assert c.placement() == placement and posts(c) == [] and c.migrations == []


@pytest.mark.parametrize("seed,nodes,guests", [(1, 4, 60), (2, 8, 200), (3, 16, 500)])
def test_generated_clusters_end_balanced_and_safe(cluster, run, seed, nodes, guests):
    c = cluster(generate_scenario(seed, nodes=nodes, guests=guests))
    start = c.guests()
    start_usage = c.node_usage()
    ignored_node = "pve2"
    ignored_vms = sorted(v for v, g in start.items() if g["node"] != ignored_node)[:3]
    extra = "ignore_nodes = %s\nignore_vms = %s\n" % (ignored_node, ", ".join(map(str, ignored_vms)))
    result = run(c, "--once", "--json", extra=extra)
    assert result.returncode == 0, result.stderr[-2000:]
    doc = result.doc
    placement = c.placement()
    moved = {m["vmid"] for m in doc["migrations"]}
    assert all(m["status"] == "done" for m in doc["migrations"])
    for vmid, g in start.items():
        if vmid in moved:
            assert placement[vmid] != g["node"]
            assert not g["lock"] and not g["template"] and vmid not in ignored_vms
            assert g["node"] != ignored_node
        else:
            assert placement[vmid] == g["node"], "only planned guests move"
    assert all(placement[v] != ignored_node or start[v]["node"] == ignored_node for v in placement)
    assert_within_capacity(c, start_usage)
    balanced = [n for n, u in c.node_usage().items()
                if u["online"] and n != ignored_node and u.get("hastate") != "maintenance"]
    final = spread(usage(c, balanced).values())
    assert final == pytest.approx(doc["measured"]["spread"], abs=0.1)
    if "<= balanciness" in doc["verdict"]:
        assert final <= 10
    else:
        assert "no further move" in doc["verdict"]
    again = run(c, "--dry-run", "--json", extra=extra)
    assert again.returncode == 0 and again.doc["migrations"] == []


def test_cpu_and_disk_methods(cluster, run):
    for method, key, cap in (("cpu", "cpu_cores", "maxcpu"), ("disk", "local_disk_used", "local_disk_size")):
        c = cluster(generate_scenario(7, nodes=5, guests=80, local_disk=0.5))
        start = c.node_usage()
        result = run(c, "--once", "--json", extra="method = %s\nbalanciness = 15\ncpu_samples = 1\n" % method)
        assert result.returncode == 0, result.stderr[-2000:]
        doc = result.doc
        assert doc["method"] == method and all(m["status"] == "done" for m in doc["migrations"])
        assert doc["migrations"], "the generated cluster is unbalanced in %s" % method
        final = spread(usage(c, None, key, cap).values())
        assert final == pytest.approx(doc["measured"]["spread"], abs=0.5)
        if "<= balanciness" in doc["verdict"]:
            assert final <= 15
        assert_within_capacity(c, start)


def test_local_disks_are_live_migrated_with_the_right_parameters(cluster, run):
    c = cluster("drain.json")
    result = run(c, "--drain", "pve1", "--json", extra="migrate_containers = 1\n")
    assert result.returncode == 5, result.stderr
    by_vmid = {m["vmid"]: m for m in c.migrations}
    local = [g for g in c.guests().values() if g["name"] == "cache-local"][0]
    params = by_vmid[local["vmid"]]["params"]
    assert params.get("with-local-disks") in ("1", 1) and params.get("online") in ("1", 1)
    for m in c.migrations:   # booleans went out as 1, never True
        assert all(str(v) not in ("True", "False") for v in m["params"].values())


def test_drain_empties_the_node_except_what_cannot_move(cluster, run):
    c = cluster("drain.json")
    result = run(c, "--drain", "pve1", "--json", extra="migrate_containers = 1\n")
    doc = result.doc
    assert result.returncode == prs.EXIT_DRAIN, result.stderr
    left = [g for g in c.guests().values() if g["node"] == "pve1"]
    assert [g["name"] for g in left] == ["gpu-render"], "only the passthrough VM stays"
    assert [(s["name"], "local devices" in s["reason"]) for s in doc["drain_left"]] == [("gpu-render", True)]
    assert all(m["status"] == "done" for m in doc["migrations"])
    assert all(m["target"] != "pve1" for m in doc["migrations"])
    ha = [m for m in doc["migrations"] if m["ha"]]
    assert ha and all(c.placement()[m["vmid"]] == m["target"] for m in ha), "HA moves really arrived"
    assert_within_capacity(c)
    assert "gpu-render" in result.stderr or "gpu-render" in json.dumps(doc["not_moved"])


def test_drain_dry_run_moves_nothing_and_lists_what_stays(cluster, run):
    c = cluster("drain.json")
    placement = c.placement()
    result = run(c, "--drain", "pve1", "--dry-run")
    assert result.returncode == prs.EXIT_DRAIN
    assert "cannot leave pve1: gpu-render" in result.stdout
    assert "running container" in result.stdout, "a container without migrate_containers is reported"
    assert c.placement() == placement and posts(c) == []


def short_cluster():
    """Three 64 GiB nodes; pve1 holds three 24 GiB VMs, the others 30 GiB each: with a 10%
    reserve (57.6 GiB usable) pve2 and pve3 can take one of them each, not the third."""
    def vm(vmid, node, gib):
        return {"vmid": vmid, "name": "vm%d" % vmid, "node": node, "maxmem_gib": gib, "mem_gib": gib,
                "maxcpu": 2, "cpu": 0.1}
    return {"nodes": [{"name": n, "maxcpu": 16, "maxmem_gib": 64, "base_mem_gib": 1}
                      for n in ("pve1", "pve2", "pve3")],
            "guests": [vm(101, "pve1", 24), vm(102, "pve1", 24), vm(103, "pve1", 24),
                       vm(201, "pve2", 30), vm(301, "pve3", 30)]}


def test_drain_with_short_capacity_places_what_fits(cluster, run):
    c = cluster(short_cluster())
    result = run(c, "--drain", "pve1", "--json", extra="node_reserve = 10\n")
    doc = result.doc
    assert result.returncode == prs.EXIT_DRAIN, result.stderr[-2000:]
    assert len(doc["migrations"]) == 2 and all(m["status"] == "done" for m in doc["migrations"])
    assert {m["target"] for m in doc["migrations"]} == {"pve2", "pve3"}
    assert [s["vmid"] for s in doc["drain_left"]] == [103] or len(doc["drain_left"]) == 1
    assert "no node has room" in doc["drain_left"][0]["reason"]
    still = {g["vmid"] for g in c.guests().values() if g["node"] == "pve1"}
    assert still == {s["vmid"] for s in doc["drain_left"]}
    for name, u in c.node_usage().items():
        assert u["assigned_mem"] <= 0.9 * u["maxmem"] + 1, "the reserve holds on %s" % name
    assert "cannot leave pve1: vm" in result.stderr or doc["not_moved"]


def test_unknown_drain_node_is_a_usage_error(cluster, run):
    c = cluster("small.json")
    result = run(c, "--drain", "nope")
    assert result.returncode == prs.EXIT_CONFIG
    assert "--drain: the cluster has no node 'nope'" in result.stderr and "Traceback" not in result.stderr


def test_refused_migration_is_reported_and_the_others_still_run(cluster, run):
    c = cluster("demo.json")
    plan = run(c, "--dry-run", "--json").doc["migrations"]
    assert len(plan) >= 2
    c.fail_task(plan[0]["vmid"], "can't migrate VM which uses local devices: hostpci0")
    result = run(c, "--once", "--json")
    assert result.returncode == prs.EXIT_MIGRATION
    status = {m["vmid"]: m for m in result.doc["migrations"]}
    assert status[plan[0]["vmid"]]["status"] == "failed"
    assert "local devices" in status[plan[0]["vmid"]]["status_reason"]
    assert sum(1 for m in status.values() if m["status"] == "done") >= 1
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "failed:" in errors[0] and "Traceback" not in result.stderr


def test_locked_between_plan_and_execution_is_skipped(cluster, run):
    c = cluster("demo.json")
    plan = run(c, "--dry-run", "--json").doc["migrations"]
    # The POST itself is refused as Proxmox refuses it while a backup holds the lock.
    c.fail("POST", r"/qemu/%d/migrate$" % plan[0]["vmid"], 500, "VM is locked (backup)")
    result = run(c, "--once", "--json")
    first = [m for m in result.doc["migrations"] if m["vmid"] == plan[0]["vmid"]][0]
    assert first["status"] == "failed" and "VM is locked (backup)" in first["status_reason"]
    assert result.returncode == prs.EXIT_MIGRATION


def test_locked_and_offline_guests_are_never_touched(cluster, run):
    c = cluster("edge.json")
    start = c.guests()
    result = run(c, "--once", "--json", extra="balanciness = 5\n")
    # pve5 is in HA maintenance, so it is drained too; what cannot leave it makes the exit 5.
    assert result.returncode == prs.EXIT_DRAIN, result.stderr
    assert result.doc["drain_left"] and all(s["node"] == "pve5" for s in result.doc["drain_left"])
    assert all(m["status"] == "done" for m in result.doc["migrations"])
    for m in result.doc["migrations"]:
        g = start[m["vmid"]]
        assert not g["lock"] and not g["template"]
        assert c.node_usage()[m["target"]]["online"]
        assert c.node_usage()[m["target"]].get("hastate") != "maintenance"


@pytest.mark.parametrize("fault,expect", [
    ("quorum", "no quorum"), ("password", "authentication failed"), ("resources", "HTTP 500")])
def test_api_failures_exit_3_with_one_line(cluster, run, fault, expect):
    c = cluster("small.json")
    proxmox = None
    if fault == "quorum":
        c.lose_quorum()
    elif fault == "password":
        proxmox = "api_user = root@pam\napi_pass = wrong-password\n"
    else:
        c.fail("GET", r"^/cluster/resources", 500, "internal error", times=None)
    result = run(c, "--once", proxmox=proxmox)
    assert result.returncode == prs.EXIT_API
    lines = [x for x in result.stderr.strip().splitlines() if " INFO " not in x]
    assert len(lines) == 1 and expect in lines[0], result.stderr
    assert "wrong-password" not in result.stderr and posts(c) == []


def test_api_token_and_failover_to_the_second_host(cluster, run):
    c = cluster("demo.json")
    c.add_token("root@pam", "balancer", "5f0c3c0e-aaaa-bbbb-cccc-444444444444")
    with socket.socket() as sock:   # a port with nothing behind it: the first host is down
        sock.bind(("127.0.0.1", 0))
        dead = "127.0.0.1:%d" % sock.getsockname()[1]
    proxmox = "api_user = root@pam\napi_token_id = balancer\napi_token_secret = 5f0c3c0e-aaaa-bbbb-cccc-444444444444\n"
    conf = run.conf(c, "", proxmox).replace("", "")
    text = open(conf).read().replace("api_host = %s" % c.host, "api_host = %s, %s" % (dead, c.host))
    open(conf, "w").write(text)
    result = subprocess.run([sys.executable, EXECUTABLE, "-c", conf, "--once", "--json"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["migrations"]
    assert "5f0c3c0e-aaaa" not in result.stderr + result.stdout
    # The dead host is named, even though the second one answered.
    [warning] = [line for line in result.stderr.splitlines() if dead in line and "WARNING" in line]
    assert "WARNING" in warning and "API host %s: unreachable (connection refused); using %s" % (
        dead, c.host) in warning


def test_ticket_expiring_during_a_run_is_renewed(cluster, run):
    c = cluster("demo.json", time_scale=0.05)
    c.ticket_ttl = 2          # tickets die while migrations are still being waited on
    result = run(c, "--once", "--json")
    assert result.returncode == 0, result.stderr
    assert result.doc["migrations"] and all(m["status"] == "done" for m in result.doc["migrations"])


def test_metric_requests_do_not_grow_with_guests(cluster, run):
    counts = []
    for guests in (40, 400):
        c = cluster(generate_scenario(5, nodes=6, guests=guests, ha=0))
        result = run(c, "--dry-run", "--json", extra="balanciness = 100\n")
        assert result.returncode == 0 and result.doc["migrations"] == []
        counts.append(len(c.requests))
        assert result.doc["api_requests"] == len(c.requests) - 1, "every request but the login is counted"
    # login, /version, /cluster/tasks, /cluster/status, /cluster/resources,
    # /cluster/replication, /access/permissions
    assert counts[0] == counts[1] <= 7, counts


class Notify:
    """A NOTIFY_SOCKET that records what the service tells systemd."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages = []

    def read_until(self, text, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in m for m in self.messages):
                return True
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except socket.timeout:
                pass
        return False


def test_daemon_notifies_reloads_keeps_old_config_and_stops_at_once(cluster, run, tmp_path):
    c = cluster("demo.json")
    conf = run.conf(c, "", daemon=1)
    notify = Notify(tmp_path / "notify.sock")
    env = dict(os.environ, NOTIFY_SOCKET=notify.path, JOURNAL_STREAM="8:1234")
    proc = subprocess.Popen([sys.executable, EXECUTABLE, "-c", conf], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert notify.read_until("READY=1")
        assert notify.read_until("STATUS=next run"), notify.messages
        status = [m for m in notify.messages if m.startswith("STATUS=next run")][-1]
        assert "last run: " in status and "migrations" in status and "spread" in status
        assert c.migrations, "the first run happened at start"
        with open(conf, "a") as handle:
            handle.write("\n[bogus]\n")
        proc.send_signal(signal.SIGHUP)
        assert notify.read_until("RELOADING=1")
        time.sleep(0.5)
        assert proc.poll() is None, "a broken config on reload does not end the daemon"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        assert time.monotonic() - started < 5, "SIGTERM ends the wait at once"
        assert proc.returncode == 0
        assert notify.read_until("STOPPING=1")
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    lines = err.strip().splitlines()
    assert all(line[:3] in ("<3>", "<4>", "<6>", "<7>") for line in lines), "journald priority prefixes"
    refused = [line for line in lines if "reload refused" in line]
    assert len(refused) == 1 and refused[0].startswith("<3>") and "[bogus]" in refused[0]
    assert "secret" not in err.replace("api_token_secret", "")


def test_daemon_survives_an_api_outage(cluster, run, tmp_path):
    c = cluster("small.json")
    c.lose_quorum()
    with daemon(run.conf(c, "", daemon=1), tmp_path) as (proc, notify):
        assert notify.read_until("STATUS=next run"), notify.messages
        status = [m for m in notify.messages if m.startswith("STATUS=next run")][-1]
        assert "failed: cluster has no quorum" in status
        assert proc.poll() is None
        stop(proc, within=10)
    assert "next try in 15 minutes" in proc.stderr.read()


def test_ha_node_affinity_rules_are_respected(cluster, run):
    def vm(vmid, node, gib, **kw):
        return dict({"vmid": vmid, "name": "vm%d" % vmid, "node": node, "maxmem_gib": gib,
                     "mem_gib": gib, "maxcpu": 2, "cpu": 0.1}, **kw)
    scenario = {
        "nodes": [{"name": n, "maxcpu": 16, "maxmem_gib": 64, "base_mem_gib": 1} for n in ("pve1", "pve2", "pve3")],
        "guests": [vm(101, "pve1", 24, ha=True), vm(102, "pve1", 4), vm(103, "pve1", 4),
                   vm(201, "pve2", 20)],
        # With failback the HA manager keeps vm:101 on its top-priority nodes, pve1 and pve2:
        # moved to pve3 it would be moved straight back (ping-pong).
        "ha_rules": [{"rule": "db-here", "type": "node-affinity", "resources": "vm:101",
                      "nodes": "pve1:2,pve2:2,pve3:1", "strict": 0}]}
    c = cluster(scenario)
    result = run(c, "--once", "--json")
    assert result.returncode == 0, result.stderr
    moves = {m["vmid"]: m["target"] for m in result.doc["migrations"]}
    assert moves.get(101) in (None, "pve2"), "never to pve3, where HA would not keep it"
    assert c.placement()[101] in ("pve1", "pve2")


def test_a_run_that_ends_off_its_projection_plans_again(cluster, run):
    # Guests whose host footprint shrinks when they move (live migration does not copy
    # pages the guest never touched): the first round ends off its projection, so PRS
    # plans once more on what the cluster now reports, and a second run finds nothing.
    def vm(vmid, gib):
        return {"vmid": vmid, "name": "vm%d" % vmid, "node": "pve1", "maxmem_gib": 16, "mem_gib": gib,
                "memhost_gib": gib, "maxcpu": 2, "cpu": 0.1}
    scenario = {"nodes": [{"name": n, "maxcpu": 16, "maxmem_gib": 128, "base_mem_gib": 1}
                          for n in ("pve1", "pve2", "pve3")],
                "guests": [vm(100 + i, 4) for i in range(16)]}
    c = cluster(scenario)
    record = c.pve._record_migration

    def shrink(g, *args):
        g.usage["memhost"] = g.usage.get("memhost", 4 * 1024 ** 3) // 2
        return record(g, *args)
    c.pve._record_migration = shrink
    result = run(c, "--once", "--json", extra="node_reserve = 0\n")
    assert result.returncode == 0, result.stderr
    assert "Round 2:" in result.stderr
    final = spread(usage(c).values())
    assert final <= 10 and result.doc["measured"]["spread"] == pytest.approx(final, abs=0.1)
    again = run(c, "--dry-run", "--json")
    assert again.doc["migrations"] == []


def in_flight(stderr):
    """Most migrations PRS had running at once, from its own start/finish lines."""
    running = peak = 0
    for line in stderr.splitlines():
        if "migrating " in line:
            running += 1
            peak = max(peak, running)
        elif " done: " in line or " failed: " in line:
            running -= 1
    return peak


@pytest.mark.parametrize("parallel", [1, 2])
def test_parallel_migrations_limit(cluster, run, parallel):
    c = cluster(generate_scenario(9, nodes=6, guests=60, ha=0, local_disk=0), time_scale=0.01)
    result = run(c, "--once", "--json", extra="parallel_migrations = %d\nparallel_per_node = %d\n"
                 % (parallel, parallel))
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(result.doc["migrations"]) >= 3
    assert in_flight(result.stderr) == parallel
    assert all(m["status"] == "done" for m in result.doc["migrations"])


def test_bad_ca_file_is_one_line(cluster, run, tmp_path):
    c = cluster("small.json")
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    conf = run.conf(c)
    text = open(conf).read().replace("ca_file = %s" % c.cafile, "ca_file = %s" % bogus)
    open(conf, "w").write(text)
    result = subprocess.run([sys.executable, EXECUTABLE, "-c", conf, "--once"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == prs.EXIT_API
    lines = [x for x in result.stderr.strip().splitlines() if " INFO " not in x]
    assert len(lines) == 1 and "Traceback" not in result.stderr


def test_an_api_without_the_migration_precheck_still_balances(cluster, run):
    # PVE answers 501 for an endpoint it does not have; PRS then relies on the task's own checks.
    c = cluster("demo.json")
    c.fail("GET", r"/qemu/\d+/migrate$", 501, "Method 'GET /nodes/pve1/qemu/101/migrate' not implemented",
           times=None)
    result = run(c, "--once", "--json")
    assert result.returncode == 0, result.stderr
    assert result.doc["migrations"] and all(m["status"] == "done" for m in result.doc["migrations"])
    assert spread(usage(c).values()) <= 10


def test_sigterm_during_a_run_starts_no_new_migration(cluster, run):
    c = cluster("demo.json", time_scale=0.2)     # the first migration (62 GiB) takes seconds
    proc = one_shot_until_first_migration(c, run.conf(c))
    try:
        assert c.tasks("qmigrate"), "the first migration started"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == prs.EXIT_INTERRUPTED, err
    assert err.count("migrating ") == 1 and "Proxmox finishes it" in err
    doc = json.loads(out)
    assert [m["status"] for m in doc["migrations"]] == ["skipped"] * len(doc["migrations"])
    assert len(c.tasks("qmigrate")) == 1, "no new migration after SIGTERM"


def test_max_migrations_caps_the_whole_run_not_each_round(cluster, run):
    """A run re-plans when the cluster ends off the projection; max_migrations still counts
    every migration of the run (found when rounds each moved up to the limit)."""
    c = cluster("demo.json", time_scale=0.02)
    result = run(c, "--once", "--json", extra="max_migrations = 2\n")
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(result.doc["migrations"]) == 2 and len(c.migrations) == 2


def test_a_stop_over_runs_in_order_with_parallel_migrations(cluster, run):
    # tests/test_planner.py's stop-over cluster on the fake: pve1 is full, pve2 sends its
    # 32 GiB VM to pve1 by way of pve3 and takes pve1's 48 GiB VM. With three migrations
    # at a time allowed (also per node), each must still find room on its target when it
    # starts: a VM leaving a node holds its memory there until its migration ends, so
    # pve1's VM may enter pve2 only once the 32 GiB VM is gone, and the second leg waits.
    def vm(vmid, node, gib):
        return {"vmid": vmid, "name": "vm%d" % vmid, "node": node, "maxmem_gib": gib, "mem_gib": gib,
                "maxcpu": 1, "cpu": 0.1}
    spec = {"pve1": (64, [(100, 8), (101, 48)]), "pve2": (96, [(102, 16), (103, 32), (104, 2)]),
            "pve3": (128, [(105, 24), (106, 48)])}
    c = cluster({"nodes": [{"name": n, "maxcpu": 32, "maxmem_gib": size, "base_mem_gib": 0}
                           for n, (size, _) in spec.items()],
                 "guests": [vm(vmid, n, gib) for n, (_, vms) in spec.items() for vmid, gib in vms]},
                time_scale=0.05)
    result = run(c, "--once", "--json", extra="parallel_migrations = 3\nparallel_per_node = 3\nnode_reserve = 10\n")
    assert result.returncode == 0, result.stderr[-3000:]
    migrations = result.doc["migrations"]
    assert all(m["status"] == "done" for m in migrations), migrations
    legs = [m for m in migrations if sum(n["vmid"] == m["vmid"] for n in migrations) == 2]
    assert len(legs) == 2 and legs[0]["reason"].startswith("stop-over on"), migrations
    tasks = {(int(t["id"]), t["node"]): t for t in c.tasks("qmigrate")}
    first, second = tasks[(103, "pve2")], tasks[(103, "pve3")]
    assert second["_began"] >= first["_ended"], "the second leg waits for the first"
    assert tasks[(101, "pve1")]["_began"] >= first["_ended"], "no entry before the room is free"
    assert c.guests()[legs[0]["vmid"]]["node"] == legs[1]["target"]
    for name, u in c.node_usage().items():
        assert u["assigned_mem"] <= 0.9 * u["maxmem"] + 1, "the reserve holds on %s" % name
    assert "stop-over on" in result.stderr and "Traceback" not in result.stderr
