"""Every request PRS sends is one Proxmox accepts, on every release PRS claims (8.0 to 9.2).

PRS runs the ways an admin runs it (one-shot rebalance with password and with an API token,
dry run of the disk and cpu methods, a drain) against the fake cluster answering as each
release. Every request is recorded on the wire (method, path, parameters as sent, ticket or
token, CSRF header) and checked against Proxmox's own API schema of every release
(../shared/pve-schema, see tests/pveschema.py); every answer the fake gave is checked against
the schema of the release it played, so the fake cannot drift into fields Proxmox does not have.
"""

import os
import re

import pytest

import pveschema
from prsmodule import prs

pytest.importorskip("fakepve")
from test_e2e import Runner  # noqa: E402

if not os.path.isdir(pveschema.SCHEMA_DIR):
    pytest.skip("Proxmox's API schemas are not beside the repository (../shared/pve-schema)",
                allow_module_level=True)

RELEASES = ("8.0", "8.4", "9.0", "9.2")
# A request PRS sends knowing an older release refuses it, with the fallback it then takes;
# each fallback is exercised by the runs on 8.x below (and asserted in test_fallbacks_ran).
NEWER_ONLY = {("GET", "/cluster/ha/rules"): ("9.0", "GET /cluster/ha/groups")}

# Answer fields real Proxmox sends that its schema does not declare, by endpoint template.
# Each is the source's doing, not the fake's (cited), so the check does not flag it.
SCHEMA_HOLES = {
    # pve-manager PVE/API2/Nodes.pm `index` builds items with PVE::API2Tools::extract_node_stats,
    # which adds id, type, disk, maxdisk and cgroup-mode; the schema lists fewer.
    ("GET", "/nodes"): {"id", "type", "disk", "maxdisk", "cgroup-mode"},
    # pve-ha-manager src/PVE/API2/HA/Resources.pm `index` returns resources.cfg sections; the
    # schema declares only sid. Status/current and manager_status are not described in full.
    ("GET", "/cluster/ha/resources"): {"type", "state", "digest", "group", "failback", "max_restart",
                                       "max_relocate", "comment"},
    ("GET", "/cluster/ha/groups"): {"nodes", "restricted", "nofailback", "type", "digest", "comment"},
    ("GET", "/cluster/ha/rules"): {"type", "resources", "nodes", "strict", "affinity", "disable", "order",
                                   "digest", "comment"},
    # qemu-server src/PVE/API2/Qemu.pm `migrate_vm_precondition`: local_disks entries carry
    # every flag of QemuServer.pm `foreach_volid` (the schema names four), not_allowed_nodes
    # entries `unavailable-resources` (PVE-API.md 2.10).
    ("GET", "/nodes/{node}/qemu/{vmid}/migrate"): {
        "drivename", "is_attached", "is_tpmstate", "is_vmstate", "replicate", "shared", "is_cloudinit",
        "referenced_in_snapshot", "referenced_in_pending", "referenced_in_config", "unavailable-resources"},
    # pve-manager PVE/API2/Cluster.pm `get_tasks`: the schema declares only upid.
    ("GET", "/cluster/tasks"): {"node", "pid", "pstart", "starttime", "type", "id", "user", "endtime",
                                "status", "saved", "tokenid"},
    # pve-manager PVE/API2/Pool.pm `read_pool` returns `index`'s first item since 8.1, with
    # poolid, which its own return schema does not declare.
    ("GET", "/pools/{poolid}"): {"poolid"},
    # POST /access/ticket: pve-access-control AccessControl.pm `create_ticket` adds `cap`.
    ("POST", "/access/ticket"): {"cap"},
    # pve-manager PVE/API2/Cluster.pm `resources` has returned these guest and storage fields
    # since before 8.0 (PVE/API2Tools.pm `extract_vm_stats`); the schema declares them from 9.0.
    ("GET", "/cluster/resources"): {"lock", "netin", "netout", "diskread", "diskwrite", "template",
                                    "shared", "sdn", "tags"},
    # pve-storage src/PVE/Storage/Plugin.pm `list_volumes` sets `content` on every volume.
    ("GET", "/nodes/{node}/storage/{storage}/content"): {"content"},
    # pve-manager PVE/API2/Tasks.pm `read_task_status` answers the decoded UPID (pstart
    # included; the 8.0 schema omits it) and, for a token's task, tokenid ($convert_token_task).
    ("GET", "/nodes/{node}/tasks/{upid}/status"): {"tokenid", "pstart"},
}


def scenario(release):
    """Four nodes, one hot: HA guests with a node-affinity rule, local disks, containers,
    a replicated VM, a cloud-init drive, a snapshot, a mapped PCI device, a template, a locked
    and a stopped VM."""
    def vm(vmid, node, gib, **kw):
        return dict({"vmid": vmid, "node": node, "maxmem_gib": gib, "mem_gib": gib * 0.8, "maxcpu": 4,
                     "cpu": 0.3}, **kw)
    local = [{"key": "scsi0", "storage": "local-lvm", "size_gib": 40, "used_gib": 12}]
    return {
        "pve": release,
        "nodes": [{"name": n, "maxcpu": 32, "maxmem_gib": 128, "base_mem_gib": 3} for n in
                  ("pve1", "pve2", "pve3", "pve4")],
        "guests": [vm(101, "pve1", 24, ha=True), vm(102, "pve1", 16, disks=local),
                   vm(103, "pve1", 16, replication=["pve2"], disks=local),
                   vm(104, "pve1", 12, cloudinit="local-lvm"), vm(105, "pve1", 8, snapshots=["pre-upgrade"],
                                                                disks=local),
                   vm(106, "pve1", 8, lock="backup"), vm(107, "pve1", 8, status="stopped"),
                   vm(108, "pve1", 2, template=1, status="stopped"),
                   vm(109, "pve2", 8), vm(110, "pve1", 10, iso="local:iso/debian.iso"),
                   vm(111, "pve1", 8, mapped_pci="gpu"),
                   {"vmid": 200, "type": "lxc", "node": "pve1", "maxmem_gib": 4, "mem_gib": 3, "maxcpu": 2,
                    "cpu": 0.2, "disks": [{"key": "rootfs", "storage": "local-lvm", "size_gib": 8}]}],
        "pci_mappings": {"gpu": {"nodes": ["pve1", "pve3"], "live": True}},
        "ha_rules": [{"rule": "keep", "type": "node-affinity", "resources": "vm:101",
                      "nodes": "pve1:2,pve2:2,pve3:2,pve4:1", "strict": 0}],
    }


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """{release: wire records} of every PRS run against a fake of that release."""
    from fakecluster import FakeCluster
    out = {}
    for release in RELEASES:
        run = Runner(tmp_path_factory.mktemp("conf" + release))
        wire = []
        for how in ("once", "token", "disk", "cpu", "drain"):
            with FakeCluster(scenario(release), time_scale=0.0, ha_delay=0.1) as c:
                result = _run(run, c, how)
                assert result.returncode in (0, prs.EXIT_DRAIN), (release, how, result.stderr)
                c.wait_idle()
                wire += c.wire
        out[release] = wire
    return out


def _run(run, c, how):
    if how == "token":
        c.add_token("root@pam", "prs", "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0")
        return run(c, "--once", proxmox="api_user = root@pam\napi_token_id = prs\n"
                                        "api_token_secret = 0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0\n")
    if how == "disk":
        return run(c, "--dry-run", "--json", extra="method = disk\n")
    if how == "cpu":
        return run(c, "--dry-run", extra="method = cpu\ncpu_samples = 1\n")
    if how == "drain":
        return run(c, "--drain", "pve1", extra="migrate_containers = 1\n")
    return run(c, "--once", "--json")


def _template(schema, rec):
    found = pveschema.match_path(schema, rec["path"])
    return found[0] if found else rec["path"]


@pytest.mark.parametrize("claimed", RELEASES)
def test_every_request_is_valid_on_every_release(recorded, claimed):
    schema = pveschema.load(claimed)
    bad = []
    for release, wire in recorded.items():
        for rec in wire:
            newer = NEWER_ONLY.get((rec["method"], _template(pveschema.load("9.2"), rec)))
            if newer and claimed < newer[0]:
                continue
            bad += ["%s (sent to %s): %s" % (rec["path"], release, p) for p in pveschema.check_request(schema, rec)]
    assert not bad, "\n".join(sorted(set(bad))[:20])


@pytest.mark.parametrize("release", RELEASES)
def test_requests_are_seen_and_described(recorded, release):
    """The runs did exercise PRS (migrations, prechecks, replication, permissions), and every
    endpoint PRS called is one the schema describes, so its parameters were checked."""
    schema = pveschema.load(release)
    sent = {(r["method"], _template(schema, r)) for r in recorded[release]}
    for needed in [("POST", "/nodes/{node}/qemu/{vmid}/migrate"), ("GET", "/nodes/{node}/qemu/{vmid}/migrate"),
                   ("POST", "/nodes/{node}/lxc/{vmid}/migrate"), ("GET", "/cluster/replication"),
                   ("GET", "/cluster/resources"), ("GET", "/nodes/{node}/tasks/{upid}/status")]:
        assert needed in sent, needed
    undescribed = [k for k in sent if not pveschema.described(schema, *k) and k[1] in schema["paths"]]
    assert not undescribed, undescribed


@pytest.mark.parametrize("release", RELEASES)
def test_fallbacks_ran(recorded, release):
    """A request only newer releases accept: on older ones it failed and PRS used its fallback."""
    schema = pveschema.load("9.2")
    for (method, template), (since, fallback) in NEWER_ONLY.items():
        sent = [r for r in recorded[release] if (r["method"], _template(schema, r)) == (method, template)]
        assert sent, "PRS asked for %s %s" % (method, template)
        if release < since:
            assert all(r["status"] == 501 for r in sent)
            assert any("%s %s" % (r["method"], r["path"]) == fallback for r in recorded[release])


@pytest.mark.parametrize("release", RELEASES)
def test_every_answer_field_is_declared(recorded, release):
    schema = pveschema.load(release)
    bad = set()
    for rec in recorded[release]:
        if rec["status"] != 200 or rec["data"] is None:
            continue
        holes = SCHEMA_HOLES.get((rec["method"], _template(schema, rec)), set())
        for problem in pveschema.check_response(schema, rec["method"], rec["path"], rec["data"]):
            # "GET /cluster/resources: [3].lock: not declared" -> "lock"
            where = problem.rsplit(": not declared", 1)[0].split(": ", 1)[-1]
            if problem.endswith(": not declared") and where.rsplit(".", 1)[-1].split("]")[-1] in holes:
                continue
            bad.add(re.sub(r"\[\d+\]", "[i]", problem))
    assert not bad, "\n".join(sorted(bad))
