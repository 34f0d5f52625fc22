"""PRS across runs: what it remembers in its state file, end to end on the fake cluster.

A guest PRS moved is not moved back within the cool-down (ProxLB's users' ping-pong); a
migration that failed for a reason that will not go away is not tried again on every run
until the guest's configuration changes or a backoff has passed; a transient failure is; a
state file that is missing, corrupt or cannot be written never stops a run.
"""

import json
import resource
import subprocess
import sys

import pytest
from proxmoxer import ProxmoxAPI

from prsmodule import EXECUTABLE, prs

pytest.importorskip("fakepve")
from test_real_proxmox import nodes, vm  # noqa: E402




# pve1 carries 101 (12 GiB) and 102 (8 GiB, locked by a backup); moving 101 balances the
# two nodes (28 -> 9 points).
TWO = {"nodes": nodes("pve1", "pve2"),
       "guests": [vm(101, "pve1", 12), vm(102, "pve1", 8, lock="backup"), vm(103, "pve2", 2)]}


def moved(result):
    return {m["vmid"]: m["target"] for m in result.doc["migrations"] if m.get("status") == "done"}


def test_a_moved_guest_is_not_moved_back_within_the_cooldown(cluster, run, state_directory):
    c = cluster(TWO)
    first = run(c, "--once", "--json")
    assert first.returncode == 0, first.stderr
    assert moved(first) == {101: "pve2"}
    state = json.loads((state_directory / "state.json").read_text())
    assert state["version"] == 1 and state["guests"]["101"]["moved"] > 0
    # The load shifts: pve2 is now the hot node, and only moving 101 back would balance.
    c.set_usage(103, mem_gib=14, memhost_gib=14)
    second = run(c, "--once", "--json")
    assert second.returncode == 0, second.stderr
    assert 101 not in moved(second), "not back within the cool-down"
    assert "moved by PRS within cooldown_hours = 24" in second.stderr
    # A drain ignores the cool-down: pve2 must be emptied, 101 included.
    drain = run(c, "--drain", "pve2", "--json")
    assert drain.returncode == 0, drain.stderr
    assert c.placement()[101] == "pve1"
    # cooldown_hours = 0: no memory of moves stops a move.
    c.set_usage(103, mem_gib=2, memhost_gib=2)
    again = run(c, "--once", "--json", extra="cooldown_hours = 0\n")
    assert again.returncode == 0, again.stderr
    assert "within cooldown_hours" not in again.stderr


def test_a_doomed_migration_is_tried_once_then_held_until_the_guest_changes(cluster, run):
    # The task refuses 101 for a reason the next run would meet again (qemu-server
    # QemuMigrate `prepare`: a local device); PRS tries it once, then not on the next three
    # runs (it lists why), and tries again once its configuration changed (config digest).
    c = cluster(TWO)
    c.fail_task(101, "can't migrate VM which uses local devices: usb0")
    first = run(c, "--once", "--json")
    assert first.returncode == prs.EXIT_MIGRATION, first.stderr
    for _ in range(3):
        later = run(c, "--once", "--json")
        assert later.returncode == 0, later.stderr
        assert not [m for m in later.doc["migrations"] if m["vmid"] == 101]
        held = {b["vmid"]: b["reason"] for b in later.doc["blocked"]}
        assert "uses local devices: usb0" in held[101] and "not retried before" in held[101]
    assert len([t for t in c.tasks("qmigrate") if t["id"] == "101"]) == 1, "tried exactly once"
    # The admin removes the device: any config edit changes its digest.
    api = ProxmoxAPI(c.host, user=c.user, password=c.password, verify_ssl=c.cafile)
    api.nodes("pve1").qemu(101).config.put(description="usb0 removed")
    fixed = run(c, "--once", "--json")
    assert fixed.returncode == 0, fixed.stderr
    assert moved(fixed).get(101) == "pve2"


def test_a_refusal_of_one_target_keeps_only_that_target_away(cluster, run):
    c = cluster({"nodes": nodes("pve1", "pve2", "pve3"),
                 "guests": [vm(101, "pve1", 20), vm(102, "pve1", 8, lock="backup"), vm(103, "pve3", 6)]})
    c.fail_task(101, "can't migrate to 'pve2': missing mapped devices hostpci0")
    first = run(c, "--once", "--json")
    assert first.returncode == prs.EXIT_MIGRATION
    assert [m["target"] for m in first.doc["migrations"] if m["vmid"] == 101] == ["pve2"]
    second = run(c, "--once", "--json")
    assert second.returncode == 0, second.stderr
    assert [m["target"] for m in second.doc["migrations"] if m["vmid"] == 101] in ([], ["pve3"])


def test_a_transient_failure_is_retried_next_run(cluster, run):
    c = cluster(TWO)
    c.fail_task(101, "can't lock file '/var/lock/pve-manager/pve-migrate-101' - got timeout")
    first = run(c, "--once", "--json")
    assert first.returncode == prs.EXIT_MIGRATION
    second = run(c, "--once", "--json")
    assert second.returncode == 0, second.stderr
    assert moved(second) == {101: "pve2"}


def test_a_corrupt_state_file_means_start_fresh(cluster, run, state_directory):
    c = cluster(TWO)
    state_directory.mkdir()
    (state_directory / "state.json").write_text('{"version": 1, "guests": {"101": ')
    result = run(c, "--once", "--json")
    assert result.returncode == 0 and "Traceback" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if "state file" in line]
    assert len(warnings) == 1 and "starting fresh" in warnings[0]
    assert json.loads((state_directory / "state.json").read_text())["guests"]["101"]["moved"] > 0


def test_a_state_file_that_cannot_be_written_costs_the_memory_not_the_run(cluster, run, tmp_path):
    c = cluster(TWO)
    (tmp_path / "afile").write_text("")
    result = run(c, "--once", "--json", extra="[balancing]\n[service]\ndaemon = 0\nstate_file = %s\n"
                 % (tmp_path / "afile" / "state.json"))
    assert result.returncode == 0, result.stderr
    assert moved(result) == {101: "pve2"}
    assert "cannot write the state file" in result.stderr and "Traceback" not in result.stderr


def test_a_full_disk_costs_the_memory_not_the_run(cluster, run, state_directory):
    # RLIMIT_FSIZE 0: every file write fails (EFBIG), as on a full disk, whoever runs the test;
    # logs still reach the pipes.
    c = cluster(TWO)
    conf = run.conf(c)
    result = subprocess.run([sys.executable, EXECUTABLE, "-c", conf, "--once"], capture_output=True, text=True,
                            timeout=300, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0)))
    assert result.returncode == 0, result.stderr
    assert c.placement()[101] == "pve2"
    assert "cannot write the state file" in result.stderr and "Traceback" not in result.stderr
    assert not (state_directory / "state.json").exists()
    assert not list(state_directory.glob("*.tmp")), "no half-written file left"


def test_a_dry_run_remembers_nothing(cluster, run, state_directory):
    c = cluster(TWO)
    result = run(c, "--dry-run", "--json")
    assert result.returncode == 0 and result.doc["migrations"]
    assert not (state_directory / "state.json").exists()


def test_a_short_spike_moves_nothing_a_lasting_imbalance_does(cluster, run):
    # Balanced for the last hour (the fake's RRD history), then 103 jumps to 40 GiB: the
    # current spread is far above balanciness, the hour's averages are not.
    balanced = {"nodes": nodes("pve1", "pve2"),
                "guests": [vm(101, "pve1", 12), vm(102, "pve1", 2), vm(103, "pve2", 12), vm(104, "pve2", 2)]}
    c = cluster(balanced)
    c.set_usage(103, mem_gib=40, memhost_gib=40)
    spike = run(c, "--once", "--json")
    assert spike.returncode == 0, spike.stderr
    assert spike.doc["spread_before"] > 30 and spike.doc["migrations"] == []
    assert "short spike" in spike.doc["verdict"]
    assert len([p for m, p in c.requests if p.endswith("/rrddata")]) == 2, "one request per node"
    # The same imbalance for the whole hour is acted on.
    lasting = cluster(dict(balanced, guests=[vm(101, "pve1", 12), vm(102, "pve1", 2),
                                             vm(103, "pve2", 40), vm(104, "pve2", 2)]))
    result = run(lasting, "--once", "--json")
    assert result.returncode == 0, result.stderr
    assert result.doc["migrations"] and "spike" not in result.doc["verdict"]
