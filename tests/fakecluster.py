#!/usr/bin/env python3
"""fakecluster: a fake Proxmox VE 9 cluster that PRS is tested against.

It builds on fakepve 0.5.0 (AGPL; used as an installed test dependency only, nothing of
it is copied here) and adds what a rebalancer needs and fakepve lacks: node capacity and
usage that follow the guests placed on each node, per-node storages, real migrations over
HTTP (preconditions, synchronous checks, qmigrate/vzmigrate tasks that move the guest or
fail with Proxmox's wording), the HA stack's deferred migrations, HA maintenance, ticket
renewal, strict 1/0 booleans, and a control API for tests.

Layout of this file:
  1. scenario files: load_scenario() (defaults + validation) and generate_scenario()
  2. ClusterPve: the FakePve subclass, i.e. the server side; runs on one asyncio loop
  3. FakeCluster: the test-facing wrapper that serves a ClusterPve on a background thread
     and marshals every control call onto that loop
  4. command line: `serve` (standalone, for the demo/benchmark/CI) and `generate`

Every behaviour here follows Proxmox's own source, and its comment names the repository, file
and function (qemu-server, pve-manager, pve-container, pve-ha-manager, pve-storage,
pve-guest-common, pve-access-control, pve-common, pve-http-server); error wording comes from
there and from fakepve's error catalogue. The scenario key "pve" picks the release it answers
as (8.0, 8.4, 9.0, 9.2). Where this fake simplifies, a comment says so.
"""

import argparse
import asyncio
import collections
import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.parse

from aiohttp import web

try:
    import fakepve
    from fakepve import schema as pve_schema
    from fakepve.lxc import FakeCt
    from fakepve.model import PveError, TaskError
    from fakepve.server import API, USER, FakePve
    from fakepve.server import ok as fakepve_ok
    from fakepve.server import params as fakepve_params
    from fakepve.server import error as pve_error_response
except ImportError as exc:  # pragma: no cover - a clear message beats a traceback
    raise SystemExit("fakecluster needs fakepve 0.5.0: pip install 'fakepve[crypto,pytest]==0.5.0' ({0})"
                     .format(exc)) from exc

# This module subclasses fakepve internals (handler names, record shapes); another version
# may differ silently, so refuse to run on one that was not checked.
FAKEPVE_VERSION = '0.5.0'
if getattr(fakepve, '__version__', None) != FAKEPVE_VERSION and not os.environ.get('FAKECLUSTER_ANY_FAKEPVE'):
    raise ImportError('fakecluster is written against fakepve {0}, found {1} (set FAKECLUSTER_ANY_FAKEPVE=1 to '
                      'try anyway)'.format(FAKEPVE_VERSION, getattr(fakepve, '__version__', '?')))

__all__ = ['FakeCluster', 'ClusterPve', 'load_scenario', 'generate_scenario', 'SCENARIO_DIR']

log = logging.getLogger('fakecluster')

GiB = 1024 ** 3
MiB = 1024 ** 2
SCENARIO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'scenarios')

PVE_REPOID = 'c4fd3b2a'
# The Proxmox VE releases the fake can answer as (scenario key "pve", default 9.2), with the
# pve-manager version /version reports. Where an answer differs between releases the code
# asks ClusterPve.since(release) and names the source of the difference.
RELEASES = {'8.0': '8.0.4', '8.4': '8.4.1', '9.0': '9.0.10', '9.2': '9.2.3'}
DEFAULT_RELEASE = '9.2'
AUTH_REFUSED = web.RequestKey('auth_refused', str) if hasattr(web, 'RequestKey') else 'auth_refused'
# Not HTTP statuses: fault kinds for FakeCluster.fail (see there).
HANG = -1
DROP = -2

# Migration timing in PVE seconds (multiplied by time_scale for wall time). Rough figures of
# a 10 GbE migration network: RAM copied at ~1 GiB/s, local disks mirrored at ~0.5 GiB/s.
MIGRATION_BASE_SECS = 2.0
MIGRATION_SECS_PER_MEM_GIB = 1.0
MIGRATION_SECS_PER_DISK_GIB = 2.0
CT_SHUTDOWN_SECS = 4.0
SSH_TIMEOUT_SECS = 3.0  # how long the ssh probe to an offline target takes to give up

# Content a storage type holds by default (storage.cfg `content`).
DEFAULT_CONTENT = {'lvmthin': 'images,rootdir', 'lvm': 'images,rootdir', 'zfspool': 'images,rootdir',
                   'rbd': 'images,rootdir', 'dir': 'images,rootdir,iso,vztmpl,backup,snippets',
                   'nfs': 'images,rootdir,iso,backup', 'cifs': 'images,iso,backup', 'cephfs': 'iso,vztmpl,backup',
                   'zfs': 'images', 'iscsi': 'images'}
# storage.cfg options a type requires; values only make /storage look real.
TYPE_OPTIONS = {'lvmthin': {'vgname': 'pve', 'thinpool': 'data'}, 'lvm': {'vgname': 'vmdata'},
                'zfspool': {'pool': 'rpool/data', 'sparse': 1}, 'rbd': {'pool': 'vm-pool', 'krbd': 0},
                'dir': {'path': '/var/lib/vz'}, 'nfs': {'server': '192.0.2.200', 'export': '/export/pve',
                                                        'path': '/mnt/pve/nfs'},
                'cifs': {'server': '192.0.2.201', 'share': 'pve', 'path': '/mnt/pve/cifs'},
                'cephfs': {'path': '/mnt/pve/cephfs'}}
SHARED_TYPES = ('rbd', 'nfs', 'cifs', 'cephfs', 'iscsi', 'zfs')
# Used bytes a storage reports before any guest volume (metadata, ISOs, ...).
STORAGE_BASE_USED = 2 * GiB
# Where a request's wire record waits for its answer (aiohttp wants typed request keys).
WIRE = web.RequestKey('wire', dict) if hasattr(web, 'RequestKey') else 'wire'

QEMU_DRIVE = re.compile(r'^(?:(?:ide|sata|scsi|virtio)\d+|efidisk0|tpmstate0|unused\d+)$')
LXC_MOUNT = re.compile(r'^(?:rootfs|mp\d+)$')


class ScenarioError(ValueError):
    """A scenario that cannot describe a cluster (unknown node, duplicate vmid, ...)."""


# =====================================================================================
# 1. Scenarios
# =====================================================================================

def _gib(value):
    return int(round(float(value) * GiB))


def _size_text(size_gib):
    """A size= value as PVE writes it: whole GiB as '32G', otherwise MiB."""
    mib = int(round(float(size_gib) * 1024))
    return '{0}G'.format(mib // 1024) if mib % 1024 == 0 else '{0}M'.format(mib)


def _size_bytes(text):
    """Bytes of a size= value ('32G', '512M', '1T', bare number = bytes as PVE stores them)."""
    m = re.fullmatch(r'(\d+(?:\.\d+)?)([KMGT]?)', str(text).strip())
    if not m:
        return 0
    unit = {'': 1, 'K': 1024, 'M': MiB, 'G': GiB, 'T': 1024 * GiB}[m.group(2)]
    return int(float(m.group(1)) * unit)


def load_scenario(source):
    """A scenario (path to a JSON file, or a dict) with every default filled in and checked.

    Returns a new dict; the input is not modified. Raises ScenarioError on inconsistencies,
    so a typo in a scenario fails loudly instead of producing a silently different cluster.
    """
    if isinstance(source, (str, os.PathLike)):
        path = str(source)
        if not os.path.exists(path) and os.path.exists(os.path.join(SCENARIO_DIR, path)):
            path = os.path.join(SCENARIO_DIR, path)
        with open(path, encoding='utf-8') as fh:
            raw = json.load(fh)
    else:
        raw = copy.deepcopy(source)
    if not isinstance(raw, dict) or not raw.get('nodes'):
        raise ScenarioError('a scenario needs a non-empty "nodes" list')
    if str(raw.get('pve', DEFAULT_RELEASE)) not in RELEASES:
        raise ScenarioError('pve must be one of {0}'.format(', '.join(RELEASES)))
    out = {'cluster_name': raw.get('cluster_name', 'prs-test'), 'pve': str(raw.get('pve', DEFAULT_RELEASE)),
           # Seconds between two pvestatd broadcasts of a node's metrics (PVE: 10); 0 = every
           # read sees the current state (fast tests). See ClusterPve.metrics.
           'metrics_period': float(raw.get('metrics_period', 0)),
           # HA rules as GET /cluster/ha/rules lists them (PVE 9): served as given.
           'ha_rules': [dict(r) for r in raw.get('ha_rules', [])],
           'crs': dict({'ha': 'basic', 'ha-rebalance-on-start': 0, 'ha-auto-rebalance': 0}, **raw.get('crs', {})),
           # Cluster PCI resource mappings (/cluster/mapping/pci): id -> {nodes: [...], live: bool}
           # (live = the mapping is marked live-migration-capable).
           'pci_mappings': {k: {'nodes': list(v.get('nodes', [])), 'live': bool(v.get('live'))}
                            for k, v in raw.get('pci_mappings', {}).items()}}
    # Omitted shared_storages: a Ceph pool, as most clusters a balancer runs on have one.
    # An explicit [] means no shared storage at all.
    shared = raw.get('shared_storages')
    if shared is None:
        shared = [{'storage': 'ceph', 'type': 'rbd', 'size_gib': 10000}]
    out['shared_storages'] = []
    for st in shared:
        st = dict(st)
        st.setdefault('type', 'rbd')
        st.setdefault('size_gib', 10000)
        st.setdefault('content', DEFAULT_CONTENT.get(st['type'], 'images,rootdir'))
        st.setdefault('nodes', None)  # None = all nodes; else restricted (storage.cfg nodes=)
        if 'storage' not in st:
            raise ScenarioError('shared storage without a "storage" name: {0}'.format(st))
        out['shared_storages'].append(st)
    shared_names = {st['storage'] for st in out['shared_storages']}

    nodes, node_storage_types = [], {}
    for n in raw['nodes']:
        n = dict(n)
        if 'name' not in n:
            raise ScenarioError('node without a name: {0}'.format(n))
        n.setdefault('maxcpu', 16)
        n.setdefault('maxmem_gib', 64)
        n.setdefault('status', 'online')
        if n['status'] not in ('online', 'offline'):
            raise ScenarioError("node {0}: status must be 'online' or 'offline'".format(n['name']))
        n.setdefault('hastate', None)
        if n['hastate'] not in (None, 'online', 'maintenance'):
            raise ScenarioError("node {0}: hastate must be 'online' or 'maintenance'".format(n['name']))
        n.setdefault('base_mem_gib', round(1.5 + 0.01 * n['maxmem_gib'], 2))
        n.setdefault('base_cpu_cores', 0.3)
        n.setdefault('rootfs_gib', 100)
        n.setdefault('rootfs_used_gib', 9)
        storages = n.get('storages')
        if storages is None:
            storages = [{'storage': 'local-lvm', 'type': 'lvmthin', 'size_gib': 1000}]
        n['storages'] = []
        for st in storages:
            st = dict(st)
            st.setdefault('type', 'lvmthin')
            st.setdefault('size_gib', 1000)
            st.setdefault('content', DEFAULT_CONTENT.get(st['type'], 'images,rootdir'))
            if st['storage'] in shared_names:
                raise ScenarioError('storage {0} is both shared and local to {1}'.format(st['storage'], n['name']))
            known = node_storage_types.setdefault(st['storage'], st['type'])
            if known != st['type']:
                # storage.cfg is cluster-wide: one id has one type everywhere.
                raise ScenarioError('storage {0} has type {1} on one node and {2} on {3}'.format(
                    st['storage'], known, st['type'], n['name']))
            n['storages'].append(st)
        nodes.append(n)
    names = [n['name'] for n in nodes]
    if len(set(names)) != len(names):
        raise ScenarioError('duplicate node names: {0}'.format(names))
    out['nodes'] = nodes
    for st in out['shared_storages']:
        for node in st['nodes'] or ():
            if node not in names:
                raise ScenarioError('shared storage {0} names unknown node {1}'.format(st['storage'], node))

    def storage_on(storage, node):
        if storage in shared_names:
            st = next(s for s in out['shared_storages'] if s['storage'] == storage)
            return not st['nodes'] or node in st['nodes']
        if storage == 'local':
            return True
        return any(s['storage'] == storage for s in next(x for x in nodes if x['name'] == node)['storages'])

    guests, vmids = [], set()
    default_disk_storage = (out['shared_storages'][0]['storage'] if out['shared_storages'] else None)
    for g in raw.get('guests', []):
        g = dict(g)
        if 'vmid' not in g or int(g['vmid']) < 100:
            raise ScenarioError('guest needs a vmid >= 100: {0}'.format(g))
        g['vmid'] = int(g['vmid'])
        if g['vmid'] in vmids:
            raise ScenarioError('duplicate vmid {0}'.format(g['vmid']))
        vmids.add(g['vmid'])
        g.setdefault('type', 'qemu')
        if g['type'] not in ('qemu', 'lxc'):
            raise ScenarioError('guest {0}: type must be qemu or lxc'.format(g['vmid']))
        if g.get('node') not in names:
            raise ScenarioError('guest {0} is on unknown node {1!r}'.format(g['vmid'], g.get('node')))
        g.setdefault('name', ('vm' if g['type'] == 'qemu' else 'ct') + str(g['vmid']))
        g.setdefault('template', 0)
        g['template'] = 1 if g['template'] else 0
        g.setdefault('status', 'stopped' if g['template'] else 'running')
        if g['status'] not in ('running', 'stopped'):
            raise ScenarioError('guest {0}: status must be running or stopped'.format(g['vmid']))
        if g['template'] and g['status'] == 'running':
            raise ScenarioError('guest {0}: a template cannot run'.format(g['vmid']))
        g.setdefault('maxmem_gib', 4 if g['type'] == 'qemu' else 1)
        g.setdefault('mem_gib', round(g['maxmem_gib'] * 0.6, 3))
        g.setdefault('memhost_gib', g['mem_gib'])
        g.setdefault('maxcpu', 2 if g['type'] == 'qemu' else 1)
        g.setdefault('cpu', 0.1)
        g.setdefault('lock', None)
        g.setdefault('ha', False)
        g.setdefault('hostpci', False)
        g.setdefault('iso', None)
        g.setdefault('tags', '')
        g.setdefault('pool', None)
        g.setdefault('cloudinit', None)     # storage of a cloud-init drive (qemu)
        g.setdefault('snapshots', [])       # names of snapshots taken of the current disks (qemu)
        g.setdefault('replication', [])     # target nodes of storage replication jobs
        g.setdefault('mapped_pci', None)    # a PCI resource mapping id passed through (qemu)
        if g['mapped_pci'] and g['mapped_pci'] not in out['pci_mappings']:
            raise ScenarioError('guest {0}: no PCI mapping {1!r}'.format(g['vmid'], g['mapped_pci']))
        if g['type'] == 'lxc' and (g['hostpci'] or g['iso'] or g['cloudinit'] or g['snapshots']):
            raise ScenarioError('guest {0}: hostpci/iso/cloudinit/snapshots are qemu-only'.format(g['vmid']))
        for target in g['replication']:
            if target not in names or target == g['node']:
                raise ScenarioError('guest {0}: replication target {1!r} is not another node'.format(
                    g['vmid'], target))
        if g['cloudinit'] and not storage_on(g['cloudinit'], g['node']):
            raise ScenarioError('guest {0}: storage {1} does not exist on {2}'.format(
                g['vmid'], g['cloudinit'], g['node']))
        disks = g.get('disks')
        if disks is None:
            store = default_disk_storage or next((s['storage'] for s in
                                                  next(x for x in nodes if x['name'] == g['node'])['storages']), None)
            if store is None:
                raise ScenarioError('guest {0}: no storage for its default disk'.format(g['vmid']))
            disks = [{'key': 'scsi0' if g['type'] == 'qemu' else 'rootfs', 'storage': store,
                      'size_gib': 32 if g['type'] == 'qemu' else 8}]
        g['disks'] = []
        for i, d in enumerate(disks):
            d = dict(d)
            d.setdefault('key', ('scsi{0}'.format(i) if g['type'] == 'qemu' else ('rootfs' if i == 0 else
                                                                                'mp{0}'.format(i - 1))))
            d.setdefault('size_gib', 32)
            d.setdefault('used_gib', d['size_gib'])    # allocated; less on a thin pool
            if 'storage' not in d:
                raise ScenarioError('guest {0}: disk {1} needs a storage'.format(g['vmid'], d['key']))
            if not storage_on(d['storage'], g['node']):
                raise ScenarioError('guest {0}: storage {1} does not exist on {2}'.format(
                    g['vmid'], d['storage'], g['node']))
            pattern = QEMU_DRIVE if g['type'] == 'qemu' else LXC_MOUNT
            if not pattern.match(d['key']):
                raise ScenarioError('guest {0}: bad disk key {1}'.format(g['vmid'], d['key']))
            g['disks'].append(d)
        if g['type'] == 'lxc':
            rootfs = next((d for d in g['disks'] if d['key'] == 'rootfs'), None)
            if rootfs is None:
                raise ScenarioError('container {0} needs a rootfs disk'.format(g['vmid']))
            g.setdefault('disk_used_gib', round(rootfs['size_gib'] * 0.4, 2))
        guests.append(g)
    out['guests'] = guests
    return out


ROLE_NAMES = ('web', 'db', 'app', 'cache', 'ci', 'mon', 'mail', 'dns', 'files', 'vpn', 'build', 'k8s', 'proxy',
              'git', 'wiki', 'log', 'backup', 'erp', 'crm', 'mq')
NODE_SHAPES = ((16, 64), (24, 128), (32, 128), (32, 192), (48, 256), (64, 384), (64, 512))
MEM_SIZES = (0.5, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
CPU_SIZES = (1, 2, 2, 2, 4, 4, 4, 8, 8, 16)


def generate_scenario(seed, nodes=4, guests=20, **options):
    """A random but realistic cluster, the same for the same arguments.

    options (fractions are of all guests unless noted):
      lxc=0.15 ha=0.1 local_disk=0.15 template=0.03 stopped=0.12 locked=0.02 hostpci=0.01 iso=0.01
      empty_nodes=1 overloaded_nodes=max(1, nodes // 4) offline_nodes=0 maintenance_nodes=0
      mem_utilisation=0.5  (running guests' maxmem as a share of all nodes' memory, at most)
      node_fill=0.9        (no node gets more running maxmem than this share of its memory)
    Memory is long-tailed (0.5-64 GiB), CPU load skewed (most guests idle, a few busy).
    Running guests always fit: their maxmem is at most mem_utilisation of the total, and the
    placement never fills a node beyond node_fill, so a balanced placement exists.
    """
    opt = {'lxc': 0.15, 'ha': 0.1, 'local_disk': 0.15, 'template': 0.03, 'stopped': 0.12, 'locked': 0.02,
           'hostpci': 0.01, 'iso': 0.01, 'empty_nodes': 1 if nodes > 2 else 0,
           'overloaded_nodes': max(1, nodes // 4), 'offline_nodes': 0, 'maintenance_nodes': 0,
           'mem_utilisation': 0.5, 'node_fill': 0.9}
    unknown = set(options) - set(opt)
    if unknown:
        raise TypeError('unknown options: {0}'.format(sorted(unknown)))
    opt.update(options)
    if nodes < 1:
        raise ValueError('need at least one node')
    rng = random.Random(seed)

    node_list = []
    for i in range(nodes):
        cpus, mem = NODE_SHAPES[rng.randrange(len(NODE_SHAPES))]
        node_list.append({'name': 'pve{0}'.format(i + 1), 'maxcpu': cpus, 'maxmem_gib': mem,
                          'base_mem_gib': round(1.5 + 0.01 * mem + rng.uniform(0, 1), 2),
                          'base_cpu_cores': round(rng.uniform(0.1, 0.6), 2),
                          'storages': [{'storage': 'local-lvm', 'type': 'lvmthin',
                                        'size_gib': rng.choice((500, 1000, 2000))}]})
    order = list(range(nodes))
    rng.shuffle(order)
    n_empty = min(int(opt['empty_nodes']), nodes - 1)
    n_over = min(int(opt['overloaded_nodes']), nodes - n_empty)
    empty = set(order[:n_empty])
    over = set(order[n_empty:n_empty + n_over])
    rest = order[n_empty + n_over:]
    # Offline/maintenance nodes are picked among the remaining ones so the shape stays.
    for k in range(min(int(opt['offline_nodes']), len(rest))):
        node_list[rest[k]]['status'] = 'offline'
    for k in range(int(opt['offline_nodes']), min(int(opt['offline_nodes']) + int(opt['maintenance_nodes']),
                                                  len(rest))):
        node_list[rest[k]]['hastate'] = 'maintenance'
    usable = [i for i in range(nodes) if i not in empty and node_list[i].get('status', 'online') == 'online'
              and node_list[i].get('hastate') != 'maintenance'] or [i for i in range(nodes) if i not in empty]
    max_node_mem = max(n['maxmem_gib'] for n in node_list)

    guest_list = []
    for k in range(guests):
        vmid = 100 + k
        kind = 'lxc' if rng.random() < opt['lxc'] else 'qemu'
        raw = math.exp(rng.gauss(math.log(3.0), 1.0))
        if kind == 'lxc':
            raw /= 3
        mem = min(MEM_SIZES, key=lambda s: abs(s - raw))
        mem = min(mem, max_node_mem / 4)
        cpus = min(CPU_SIZES[rng.randrange(len(CPU_SIZES))], min(n['maxcpu'] for n in node_list))
        template = kind == 'qemu' and rng.random() < opt['template']
        stopped = template or rng.random() < opt['stopped']
        used = rng.uniform(0.3, 0.95)
        g = {'vmid': vmid, 'name': '{0}{1}'.format(ROLE_NAMES[rng.randrange(len(ROLE_NAMES))], k + 1),
             'type': kind, 'status': 'stopped' if stopped else 'running', 'maxmem_gib': mem,
             'mem_gib': round(mem * used, 3), 'memhost_gib': round(min(mem * 1.05, mem * used * rng.uniform(1.0, 1.15)),
                                                                 3),
             'maxcpu': cpus, 'cpu': round(min(1.0, rng.betavariate(0.7, 4.0)), 3), 'template': 1 if template else 0}
        if kind == 'lxc':
            g['maxcpu'] = min(cpus, 4)
        local = rng.random() < opt['local_disk']
        ha = not template and not local and rng.random() < opt['ha']
        size = rng.choice((8, 16, 32, 32, 50, 64, 100, 200)) if kind == 'qemu' else rng.choice((4, 8, 8, 16, 32))
        g['disks'] = [{'key': 'scsi0' if kind == 'qemu' else 'rootfs', 'storage': 'local-lvm' if local else 'ceph',
                       'size_gib': size}]
        if ha:
            g['ha'] = True
        if not template and rng.random() < opt['locked']:
            g['lock'] = rng.choice(('backup', 'snapshot'))
        if kind == 'qemu' and not template and not ha and rng.random() < opt['hostpci']:
            g['hostpci'] = True
        if kind == 'qemu' and not template and not ha and rng.random() < opt['iso']:
            g['iso'] = 'local:iso/debian-13.1.0-amd64-netinst.iso'
        guest_list.append(g)

    # Keep running demand within budget: shrink the biggest running guests until it fits.
    total = sum(node_list[i]['maxmem_gib'] for i in range(nodes))
    usable_cap = sum(node_list[i]['maxmem_gib'] for i in usable)
    budget = min(opt['mem_utilisation'] * total, 0.8 * opt['node_fill'] * usable_cap)
    running = [g for g in guest_list if g['status'] == 'running']
    while running and sum(g['maxmem_gib'] for g in running) > budget:
        big = max(running, key=lambda g: (g['maxmem_gib'], -g['vmid']))
        if big['maxmem_gib'] <= 0.5:
            big['status'] = 'stopped'
            running.remove(big)
            continue
        ratio = big['mem_gib'] / big['maxmem_gib']
        big['maxmem_gib'] = max(0.5, big['maxmem_gib'] / 2)
        big['mem_gib'] = round(big['maxmem_gib'] * ratio, 3)
        big['memhost_gib'] = round(min(big['maxmem_gib'] * 1.05, big['mem_gib'] * 1.05), 3)

    # Skewed placement: overloaded nodes attract guests, empty nodes get none; a node never
    # takes more running maxmem than node_fill of its memory.
    load = {i: node_list[i]['base_mem_gib'] for i in range(nodes)}
    weight = {i: (6.0 if i in over else 1.0) for i in usable}
    for g in sorted(guest_list, key=lambda g: (-g['maxmem_gib'], g['vmid'])):
        need = g['maxmem_gib'] if g['status'] == 'running' else 0
        fits = [i for i in usable if load[i] + need <= opt['node_fill'] * node_list[i]['maxmem_gib']]
        if not fits:
            fits = [max(usable, key=lambda i: (node_list[i]['maxmem_gib'] - load[i], -i))]
        pick = rng.choices(fits, weights=[weight[i] for i in fits])[0]
        load[pick] += need
        g['node'] = node_list[pick]['name']
    guest_list.sort(key=lambda g: g['vmid'])
    return {'cluster_name': 'gen-{0}'.format(seed), 'nodes': node_list,
            'shared_storages': [{'storage': 'ceph', 'type': 'rbd', 'size_gib': 20000}], 'guests': guest_list}


# =====================================================================================
# 2. The server side: a FakePve that behaves like a PVE 9 cluster for a rebalancer
# =====================================================================================

class MigrationAborted(Exception):
    """Raised inside a migration task: the task log gets PVE's `migration aborted` lines."""

    def __init__(self, reason, exitstatus='migration aborted'):
        super().__init__(reason)
        self.reason = reason
        self.exitstatus = exitstatus


class TaskFailed(Exception):
    """A task ends with this exit status (the log lines were already written)."""


def _flag(value):
    """A validated PVE boolean (1/0, or a JSON true/false) as a Python bool."""
    return str(value).lower() in ('1', 'true')


def _duration(secs):
    secs = int(round(secs))
    return '{0:02d}:{1:02d}:{2:02d}'.format(secs // 3600, secs // 60 % 60, secs % 60)


def _render_bytes(value):
    """pve-common src/PVE/Format.pm `render_bytes` with precision 1."""
    units, unit = ('B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'), 0
    if value > 1023:
        unit = int(math.log(value) / math.log(1024))
        value /= 1024 ** unit
    return '{0:.1f} {1}'.format(value, units[unit])


def _render_duration(secs):
    """pve-common src/PVE/Format.pm `render_duration` (up to days)."""
    rest, text = int(round(secs)), []
    for unit, length in (('d', 86400), ('h', 3600), ('m', 60), ('s', 1)):
        if rest // length:
            text.append('{0}{1}'.format(rest // length, unit))
            rest %= length
    return ' '.join(text) or '0s'


def _stamp():
    return time.strftime('%Y-%m-%d %H:%M:%S')


class ClusterPve(FakePve):
    """The fake cluster's server. All state lives here and is touched only on its event loop.

    Nodes are fakepve's `self.nodes` entries ({'online': bool}) extended with capacity keys;
    guests are fakepve's FakeVm / FakeCt objects extended with a `usage` dict and HA
    bookkeeping, so fakepve's own endpoints (config, status, start/stop, tasks) keep working
    and see the same guests.
    """

    def __init__(self, scenario, user='root@pam', password='secret', host='127.0.0.1', port=0):
        super().__init__(user=user, password=password, host=host, port=port)
        self.scenario = load_scenario(scenario)
        self.release_version = self.scenario['pve']
        self.version = RELEASES[self.release_version]
        self.metrics_period = self.scenario['metrics_period']
        self.samples = {}             # pvestatd's last broadcast: node -> sample (see metrics)
        self.replication = []         # storage replication jobs: dicts guest, jobnum, target, ...
        self.cluster_name = self.scenario['cluster_name']
        self.crs = dict(self.scenario['crs'])
        # fakepve keeps 10,000 requests; benchmarks count more than that.
        self.max_requests = 1000000
        # Real seconds the HA stack takes to act on a queued migration (PVE: ~10 s CRM round);
        # deliberately not scaled by time_scale, because the point is that it is deferred.
        self.ha_delay_real = 1.0
        self.started_at = time.time()
        self.migrations = []          # completed real migrations (see _record_migration)
        self.crm_log = []             # what the HA manager decided, for tests to read
        self.verifications = []       # verify-mode checks of POST /access/ticket (see _ticket)
        self.request_counts = collections.Counter()
        self.wire = []                # every /api2/json request with its answer (_wire_entry)
        self.usage_log = []           # (time, {node: figures}) at every change (note_usage)
        self.crm_timestamp = int(time.time())   # the CRM master's last round (_crm_clock)
        self.ha_refuse = set()        # VMIDs whose next HA move the CRM ignores (refuse_ha)
        self.path_failures = []       # injected HTTP errors: dicts with method, regex, status, message, times
        self.task_failures = collections.defaultdict(collections.deque)  # vmid -> (message, exitstatus)
        self._background = set()      # running asyncio tasks we spawned
        self._timers = set()          # pending loop.call_later handles (HA rounds)
        self._build()
        self.note_usage()

    # ------------------------------------------------------------------ building

    def _build(self):
        sc = self.scenario
        self.nodes = {}
        for n in sc['nodes']:
            self.nodes[n['name']] = {
                'online': n['status'] == 'online', 'hastate': n['hastate'], 'maxcpu': int(n['maxcpu']),
                'maxmem': _gib(n['maxmem_gib']), 'base_mem': _gib(n['base_mem_gib']),
                'base_cpu': float(n['base_cpu_cores']), 'rootfs': _gib(n['rootfs_gib']),
                'rootfs_used': _gib(n['rootfs_used_gib'])}
        # storage.cfg: one entry per storage id; local ones restricted to the nodes declaring
        # them (nodes=), which is how PVE knows a node lacks a storage.
        self.storages = {}
        self.storage_size = {}  # (node, storage) -> bytes; shared storages use node None
        names = sorted(self.nodes)
        declares_local = any(st['storage'] == 'local' for n in sc['nodes'] for st in n['storages'])
        if not declares_local:
            self.storages['local'] = {'type': 'dir', 'content': 'iso,vztmpl,backup', 'path': '/var/lib/vz',
                                      'active': 1, 'files': set()}
            for n in names:
                self.storage_size[(n, 'local')] = self.nodes[n]['rootfs']
        for n in sc['nodes']:
            for st in n['storages']:
                entry = self.storages.setdefault(st['storage'], dict(
                    {'type': st['type'], 'content': st['content'], 'active': 1, 'files': set(), 'nodes': ''},
                    **TYPE_OPTIONS.get(st['type'], {})))
                entry['nodes'] = ','.join(sorted(filter(None, entry['nodes'].split(',') + [n['name']])))
                self.storage_size[(n['name'], st['storage'])] = _gib(st['size_gib'])
        for st in sc['shared_storages']:
            entry = dict({'type': st['type'], 'content': st['content'], 'active': 1, 'files': set(), 'shared': 1},
                         **TYPE_OPTIONS.get(st['type'], {}))
            if st['nodes']:
                entry['nodes'] = ','.join(sorted(st['nodes']))
            self.storages[st['storage']] = entry
            self.storage_size[(None, st['storage'])] = _gib(st['size_gib'])
        for g in sc['guests']:
            self._add_guest(g)
            for target in g['replication']:
                self.replication.append({'guest': g['vmid'], 'jobnum': len([
                    j for j in self.replication if j['guest'] == g['vmid']]), 'target': target})

    def since(self, release):
        """True if the fake answers as this Proxmox VE release or a newer one."""
        return tuple(map(int, self.release_version.split('.'))) >= tuple(map(int, release.split('.')))

    def _add_guest(self, g):
        vmid = g['vmid']
        config = {'memory': int(round(g['maxmem_gib'] * 1024))}
        boot = []
        for n, d in enumerate(g['disks']):
            config[d['key']] = self._volume_text(g, d, n)
            if not d['key'].startswith('unused') and g['type'] == 'qemu':
                boot.append(d['key'])
        if g['type'] == 'qemu':
            config.update(cores=int(g['maxcpu']), sockets=1, ostype='l26', scsihw='virtio-scsi-single',
                          cpu='x86-64-v2-AES', agent='1',
                          net0='virtio=BC:24:11:{0:02X}:{1:02X}:{2:02X},bridge=vmbr0'.format(
                              vmid // 65536 % 256, vmid // 256 % 256, vmid % 256))
            if g['iso']:
                config['ide2'] = '{0},media=cdrom'.format(g['iso'])
                boot.append('ide2')
            if g['hostpci']:
                config['hostpci0'] = '0000:81:00.0,pcie=1'
            if g['mapped_pci']:
                config['hostpci1'] = 'mapping={0},pcie=1'.format(g['mapped_pci'])
            if g['cloudinit']:
                # How qemu-server names a cloud-init drive (src/PVE/QemuServer/Cloudinit.pm).
                config['ide0'] = '{0}:vm-{1}-cloudinit,media=cdrom'.format(g['cloudinit'], vmid)
            config['boot'] = 'order=' + ';'.join(boot + ['net0'])
            if g['tags']:
                config['tags'] = g['tags']
            guest = self.add_vm(vmid, g['name'], node=g['node'], status=g['status'], config=config,
                                template=bool(g['template']), lock=g['lock'], pool=g['pool'])
            if g['template']:
                guest.config['template'] = 1
            for n, name in enumerate(g['snapshots']):
                # A snapshot keeps the drives as they were: the same volumes (qemu-server
                # src/PVE/QemuConfig.pm `__snapshot_save_vmstate` is not modelled: no vmstate).
                snap = {k: v for k, v in config.items() if QEMU_DRIVE.match(k) or k == 'memory'}
                guest.snapshots[name] = dict(snap, snaptime=int(time.time()) - 86400 * (n + 1),
                                             description='', parent=g['snapshots'][n - 1] if n else None)
            if g['lock']:
                guest.config['lock'] = g['lock']
        else:
            config.update(cores=int(g['maxcpu']), hostname=g['name'], swap=512, ostype='debian', arch='amd64',
                          unprivileged=1,
                          net0='name=eth0,bridge=vmbr0,hwaddr=BC:24:11:{0:02X}:{1:02X}:{2:02X},ip=dhcp,type=veth'
                          .format(vmid // 65536 % 256, vmid // 256 % 256, vmid % 256))
            if g['tags']:
                config['tags'] = g['tags']
            guest = self.add_ct(vmid, g['name'], node=g['node'], status=g['status'], config=config,
                                template=bool(g['template']), lock=g['lock'], pool=g['pool'])
        guest.usage = {'cpu': float(g['cpu']), 'mem': _gib(g['mem_gib']), 'memhost': _gib(g['memhost_gib']),
                       'disk': _gib(g.get('disk_used_gib', 0))}
        # Bytes a thin pool really holds for each volume (by config key); a full copy elsewhere.
        guest.allocated = {d['key']: _gib(d['used_gib']) for d in g['disks']}
        if guest.status == 'running':
            # Guests have been up for a while (hours, by vmid) rather than since the fake started.
            guest.started_at = time.time() - 3600 * (1 + vmid % 240)
        guest.maintenance_node = None
        guest.ha_target = None
        if g['ha']:
            guest.ha_state = 'started' if g['status'] == 'running' else 'stopped'
        return guest

    def _volume_text(self, g, d, n):
        """The config value of a disk: volid plus size, named the way the storage type names it."""
        kind = self.storages[d['storage']]['type']
        vmid = g['vmid']
        if kind in ('dir', 'nfs', 'cifs') and g['type'] == 'qemu':
            name = '{0}/vm-{0}-disk-{1}.qcow2'.format(vmid, n)
        elif kind in ('dir', 'zfspool') and g['type'] == 'lxc':
            name = '{0}/subvol-{0}-disk-{1}.raw'.format(vmid, n) if kind == 'dir' else 'subvol-{0}-disk-{1}'.format(
                vmid, n)
        elif kind == 'lvm' and d.get('format') == 'qcow2':
            name = 'vm-{0}-disk-{1}.qcow2'.format(vmid, n)    # snapshot-as-volume-chain (PVE 9)
        else:
            name = 'vm-{0}-disk-{1}'.format(vmid, n)
        text = '{0}:{1},size={2}'.format(d['storage'], name, _size_text(d['size_gib']))
        if g['type'] == 'qemu':
            text += ',iothread=1'
        return text

    # ------------------------------------------------------------------ model helpers

    def all_guests(self):
        return sorted(self.vms + self.cts, key=lambda g: g.vmid)

    @staticmethod
    def kind(g):
        return 'lxc' if isinstance(g, FakeCt) else 'qemu'

    def node_online(self, node):
        return self.nodes.get(node, {}).get('online', False)

    def ha_in_use(self):
        return any(g.ha_managed for g in self.all_guests()) or any(n.get('hastate') for n in self.nodes.values())

    def node_hastate(self, node, ha_in_use=None):
        if not (self.ha_in_use() if ha_in_use is None else ha_in_use):
            return None
        if not self.node_online(node):
            return 'unknown'
        return self.nodes[node].get('hastate') or 'online'

    def node_ip(self, node):
        return '192.0.2.{0}'.format(10 + sorted(self.nodes).index(node) + 1)

    def is_shared(self, storage):
        return bool(self.storages.get(storage, {}).get('shared'))

    def storage_on(self, storage, node):
        return storage in self.storages and self._storage_enabled(storage, node)

    @staticmethod
    def guest_maxmem(g):
        return int(str(g.config.get('memory', 512)).split('=')[-1]) * MiB

    def guest_maxcpu(self, g):
        if self.kind(g) == 'lxc':
            return int(g.config.get('cores') or g.config.get('cpulimit') or self.nodes[g.node]['maxcpu'])
        return int(g.config.get('vcpus') or int(g.config.get('cores', 1)) * int(g.config.get('sockets', 1)))

    def volumes(self, g):
        """Every storage-backed volume of a guest: dicts key, volid, storage, size, cdrom, shared."""
        pattern = LXC_MOUNT if self.kind(g) == 'lxc' else QEMU_DRIVE
        out = []
        for key in sorted(g.config, key=lambda k: (re.sub(r'\d+$', '', k), int(re.sub(r'^\D+', '', k) or 0))):
            if not pattern.match(key):
                continue
            parts = str(g.config[key]).split(',')
            volid = parts[0]
            props = dict(p.split('=', 1) for p in parts[1:] if '=' in p)
            if self.kind(g) == 'lxc' and volid.startswith('volume='):
                volid = volid[len('volume='):]
            if ':' not in volid:  # none, cdrom (host drive), bind mounts
                continue
            storage = volid.split(':', 1)[0]
            size = _size_bytes(props.get('size', '0'))
            out.append({'key': key, 'volid': volid, 'storage': storage, 'size': size,
                        'used': min(size, getattr(g, 'allocated', {}).get(key, size)),
                        'size_given': 'size' in props, 'cdrom': props.get('media') == 'cdrom',
                        # qemu-server QemuMigrate `scan_local_volumes` tells a cloud-init drive
                        # by its volume name
                        'cloudinit': bool(re.search(r'vm-\d+-cloudinit', volid)),
                        'shared': self.is_shared(storage)})
        return out

    def local_volumes(self, g):
        return [v for v in self.volumes(g) if not v['shared']]

    def local_resources(self, g):
        """qemu-server `check_local_resources` (src/PVE/QemuMigrate/Helpers.pm): device keys; a
        mapped hostpci only up to 8.3.8, and since 8.3.9 only while running on a mapping not
        marked live-migration-capable."""
        if self.kind(g) == 'lxc':
            return []
        out = []
        for k in g.config:
            mapping = self.pci_mapping(g, k)
            if mapping is not None:
                if not self.since('8.4') or (self.guest_running(g) and not mapping['live']):
                    out.append(k)
            elif re.match(r'^(?:hostpci|usb|parallel)\d+$', k) or (re.match(r'^serial\d+$', k)
                                                                  and g.config[k] != 'socket'):
                out.append(k)
        return sorted(out)

    def pci_mapping(self, g, key):
        """The cluster PCI mapping a hostpciN uses (`mapping=<id>`), or None."""
        m = re.match(r'^hostpci\d+$', key) and re.match(r'^mapping=([^,]+)', str(g.config.get(key, '')))
        return dict(self.scenario['pci_mappings'][m.group(1)], name=m.group(1)) if m else None

    def mapped_keys(self, g):
        return sorted(k for k in g.config if self.pci_mapping(g, k) is not None)

    def boot_disk_size(self, g, volumes=None):
        vols = {v['key']: v for v in (self.volumes(g) if volumes is None else volumes) if not v['cdrom']}
        order = str(g.config.get('boot', ''))
        if order.startswith('order='):
            for key in order[len('order='):].split(';'):
                if key in vols:
                    return vols[key]['size']
        return vols[sorted(vols)[0]]['size'] if vols else 0

    def guest_running(self, g):
        return g.status == 'running'

    def guest_demand(self, g):
        """(host memory bytes, host cores) a guest takes from its node while it runs."""
        if not self.guest_running(g):
            return 0, 0.0
        mem = g.usage['memhost'] if self.kind(g) == 'qemu' else g.usage['mem']
        return mem, g.usage['cpu'] * self.guest_maxcpu(g)

    def usage_snapshot(self):
        """Everything the usage views need, in one pass over the guests.

        Usage is always derived from where the guests are now (never stored), so it follows a
        migration the moment the guest's node changes; one pass keeps /cluster/resources cheap
        for thousands of guests.
        """
        guests = self.all_guests()
        vols = {g.vmid: self.volumes(g) for g in guests}
        acc = {n: {'mem': s['base_mem'], 'cores': s['base_cpu'], 'assigned': 0, 'local': 0, 'guests': [],
                   'running': []} for n, s in self.nodes.items()}
        used = collections.Counter()  # (node, storage) for local storages, (None, storage) for shared ones
        for g in guests:
            a = acc[g.node]
            a['guests'].append(g.vmid)
            mem, cores = self.guest_demand(g)
            a['mem'] += mem
            a['cores'] += cores
            if self.guest_running(g):
                a['assigned'] += self.guest_maxmem(g)
                a['running'].append(g.vmid)
            for v in vols[g.vmid]:
                if v['cdrom']:
                    continue
                # A thin pool (lvmthin, zfspool) holds only what was written (`used`); the
                # content listing still reports the virtual size (pve-storage LvmThinPlugin,
                # ZFSPoolPlugin `list_images`).
                used[(None, v['storage']) if v['shared'] else (g.node, v['storage'])] += v['used']
                if not v['shared']:
                    a['local'] += v['used']
        return {'guests': guests, 'vols': vols, 'nodes': acc, 'used': used, 'ha_in_use': self.ha_in_use()}

    def node_usage(self, node, snap=None):
        """Raw usage of a node (bytes, host cores); only running guests count for mem/cpu."""
        snap = snap or self.usage_snapshot()
        n, a = self.nodes[node], snap['nodes'][node]
        local_size = sum(size for (nd, st), size in self.storage_size.items() if nd == node
                         and st in self.storages and re.search(r'images|rootdir', self.storages[st]['content']))
        return {'mem': a['mem'], 'maxmem': n['maxmem'], 'cpu_cores': round(a['cores'], 4), 'maxcpu': n['maxcpu'],
                'assigned_mem': a['assigned'], 'local_disk_used': a['local'], 'local_disk_size': local_size,
                'guests': list(a['guests']), 'running': list(a['running']), 'online': n['online'],
                'hastate': self.node_hastate(node, snap['ha_in_use'])}

    def all_node_usage(self):
        snap = self.usage_snapshot()
        return {n: self.node_usage(n, snap) for n in sorted(self.nodes)}

    def storage_used(self, node, storage, snap=None):
        """Used bytes of a storage as seen from a node: its volumes (local: only that node's guests)."""
        snap = snap or self.usage_snapshot()
        used = snap['used'][(None, storage) if self.is_shared(storage) else (node, storage)]
        if storage == 'local' and (node, 'local') in self.storage_size and self.storages['local']['type'] == 'dir':
            return used + self.nodes[node]['rootfs_used']  # the root filesystem holds 'local'
        return used + STORAGE_BASE_USED

    def storage_total(self, node, storage):
        return self.storage_size.get((None, storage), self.storage_size.get((node, storage), 0))

    def guest_view(self, g):
        """A plain-dict view of a guest for tests and the /_fake/state endpoint."""
        return {'vmid': g.vmid, 'name': g.name, 'type': self.kind(g), 'node': g.node, 'status': g.status,
                'lock': g.lock, 'template': 1 if g.template else 0, 'ha': g.ha_managed, 'hastate': g.ha_state,
                'maxmem': self.guest_maxmem(g), 'maxcpu': self.guest_maxcpu(g), 'cpu': g.usage['cpu'],
                'mem': g.usage['mem'], 'memhost': g.usage['memhost'],
                'disks': [dict(v) for v in self.volumes(g)], 'local_resources': self.local_resources(g),
                'tags': g.config.get('tags', '')}

    def placement(self):
        return {g.vmid: g.node for g in self.all_guests()}

    def find_guest(self, vmid):
        g = self.guest(int(vmid))
        if g is None:
            raise KeyError('no guest {0}'.format(vmid))
        return g

    # ------------------------------------------------------------------ background work

    def spawn(self, coro):
        """Run coro in the background, keeping a reference so it is neither lost nor collected."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)

        def done(t):
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error('background task failed', exc_info=t.exception())
        task.add_done_callback(done)
        return task

    def later(self, delay, coro_fn):
        """Start coro_fn() after delay real seconds."""
        loop = asyncio.get_running_loop()
        handle = None

        def fire():
            self._timers.discard(handle)
            self.spawn(coro_fn())
        handle = loop.call_later(max(0.0, delay), fire)
        self._timers.add(handle)

    def busy(self):
        """True while a task runs or the HA stack still has something queued."""
        return bool(self._timers) or bool(self._background) or any(
            t.get('status') == 'running' for t in self.tasks.values())

    async def start(self, certfile, keyfile):
        await super().start(certfile, keyfile)
        if self.metrics_period:
            self._broadcasts = asyncio.ensure_future(self._pvestatd())
        self._crm = asyncio.ensure_future(self._crm_clock())

    async def stop(self):
        for loop_task in (getattr(self, '_broadcasts', None), getattr(self, '_crm', None)):
            if loop_task is not None:
                loop_task.cancel()
                await asyncio.gather(loop_task, return_exceptions=True)
        for handle in list(self._timers):
            handle.cancel()
        self._timers.clear()
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await super().stop()

    # ------------------------------------------------------------------ metrics (pvestatd)
    #
    # On a real node pvestatd collects node and guest metrics every 10 s and broadcasts them
    # (pve-manager PVE/Service/pvestatd.pm `update_node_status`, `update_qemu_status`,
    # `update_lxc_status`); /cluster/resources serves the last broadcast (pve-manager
    # PVE/API2/Cluster.pm `resources`, PVE/API2Tools.pm `extract_node_stats`), while a guest's
    # `node` comes from pmxcfs and changes the moment its config moves. So right after a
    # migration the guest shows on its new node with the figures its old node sent, and both
    # nodes show their usage from before. The first field of every broadcast is the uptime,
    # which is how a client can tell a new broadcast from the last one. With metrics_period 0
    # every read sees the current state.

    def _live_node(self, name, snap):
        n, use = self.nodes[name], self.node_usage(name, snap)
        return {'cpu': round(min(1.0, use['cpu_cores'] / n['maxcpu']), 4), 'mem': min(use['mem'], n['maxmem']),
                'uptime': int(time.time() - self.started_at) + 864000}

    def _live_guest(self, g):
        running = self.node_online(g.node) and self.guest_running(g)
        qemu = self.kind(g) == 'qemu'
        return {'cpu': round(g.usage['cpu'], 4) if running else 0, 'mem': g.usage['mem'] if running else 0,
                'memhost': g.usage['memhost'] if running and qemu else 0,
                'disk': 0 if qemu else (g.usage['disk'] if running else 0),
                'uptime': int(time.time() - (g.started_at or time.time())) if running else 0}

    def node_metrics(self, name, snap):
        return self.samples.get(('node', name)) if self.metrics_period and ('node', name) in self.samples \
            else self._live_node(name, snap)

    def guest_metrics(self, g):
        return self.samples.get(('guest', g.vmid)) if self.metrics_period and ('guest', g.vmid) in self.samples \
            else self._live_guest(g)

    def broadcast(self, node):
        """One pvestatd cycle of a node: its own figures and those of the guests it runs."""
        if not self.node_online(node):
            return
        self.samples[('node', node)] = self._live_node(node, self.usage_snapshot())
        for g in self.all_guests():
            if g.node == node:
                self.samples[('guest', g.vmid)] = self._live_guest(g)

    async def _crm_clock(self):
        """The CRM master's rounds (pve-ha-manager src/PVE/HA/Manager.pm `manage`, one about
        every 10 s; here every ha_delay_real seconds): manager_status carries the time of the
        last one. Queued commands are handled by queue_ha_move's own round."""
        while True:
            if self.quorate:
                self.crm_timestamp = int(time.time())
            await asyncio.sleep(max(self.ha_delay_real, 0.05))

    async def _pvestatd(self):
        """Every node broadcasts once per metrics_period, the nodes spread over the period."""
        names = sorted(self.nodes)
        for name in names:
            self.broadcast(name)
        tick = self.metrics_period / len(names)
        k = 0
        while True:
            await asyncio.sleep(tick)
            self.broadcast(names[k % len(names)])
            k += 1

    # ------------------------------------------------------------------ tasks

    async def run_task(self, node, ttype, tid, user, body, guest=None):
        """Start a worker task; returns its UPID.

        Unlike fakepve's task(), body(log, upid) writes its own log lines (PVE's migration logs are
        timestamped and end in specific lines) and raises TaskFailed(exitstatus). The record
        has fakepve's shape, so its task status/log/list endpoints serve it unchanged.
        """
        upid, pid, start = self._upid(node, ttype, tid, user)
        record = {'upid': upid, 'node': node, 'pid': pid, 'pstart': pid * 7, 'starttime': start, 'type': ttype,
                  'id': str(tid), 'user': user, 'status': 'running', 'log': [],
                  '_began': time.monotonic()}  # for tests: exact overlaps (never served)
        self.tasks[upid] = record
        self.tasklog.append(record)

        def write(line, stamp=True):
            record['log'].append('{0} {1}'.format(_stamp(), line) if stamp else line)

        async def run():
            status = 'OK'
            try:
                if guest is not None:
                    # The per-guest flock (pve-guest-common src/PVE/GuestHelpers.pm
                    # `guest_migration_lock`, 10 s): a second migration waits, then times out.
                    await self.acquire(guest, upid)
                try:
                    await body(write, upid)
                finally:
                    if guest is not None:
                        self.release(guest, upid)
            except TaskFailed as e:
                status = str(e)
            except TaskError as e:
                status = str(e)
                write(status, stamp=False)
            except asyncio.CancelledError:
                status = 'interrupted by signal'
            except Exception as e:  # noqa: BLE001 - a bug in the fake must still end the task
                log.exception('task %s failed unexpectedly', upid)
                status = 'fakecluster internal error: {0}'.format(e)
            record['status'] = 'stopped'
            record['exitstatus'] = status
            record['endtime'] = int(time.time())
            record['_ended'] = time.monotonic()
            record['log'].append('TASK OK' if status == 'OK' else 'TASK ERROR: ' + status)

        if self.time_scale:
            self.spawn(run())
        else:
            await run()
        return upid

    # ------------------------------------------------------------------ migrations

    def _record_migration(self, g, source, target, kind, params, upid, secs):
        self.migrations.append({'vmid': g.vmid, 'type': self.kind(g), 'source': source, 'target': target,
                                'kind': kind, 'params': dict(params), 'upid': upid, 'duration': secs,
                                'time': time.time()})

    async def _live_copy(self, g, secs, write):
        """A live migration's progress lines, one per PVE second, as qemu-server writes them:
        first each local disk's mirror, printed without a timestamp by src/PVE/QemuServer/
        BlockJob.pm `qemu_drive_mirror_monitor` ("drive-scsi0: transferred 1.0 GiB of 32.0 GiB
        (3.12%) in 5s"), then the RAM, logged by src/PVE/QemuMigrate.pm `phase2` while
        query-migrate reports it active ("migration active, transferred 1.2 GiB of 8.0 GiB
        VM-state, 1.0 GiB/s"); sizes by pve-common src/PVE/Format.pm `render_bytes` (precision
        1), durations by its `render_duration`."""
        await self.pause(MIGRATION_BASE_SECS)
        for v in (v for v in self.local_volumes(g) if not v['cdrom']):
            total, rate = max(v['size'], 1), GiB / MIGRATION_SECS_PER_DISK_GIB
            drive = 'drive-' + v['key']
            for t in range(1, int(math.ceil(total / rate)) + 1):
                await self.pause(1)
                done = min(total, rate * t)
                write('{0}: transferred {1} of {2} ({3:.2f}%) in {4}'.format(
                    drive, _render_bytes(done), _render_bytes(total), done * 100.0 / total, _render_duration(t)),
                    stamp=False)
            write('{0}: transferred {1} of {1} (100.00%) in {2}, ready'.format(
                drive, _render_bytes(total), _render_duration(int(math.ceil(total / rate)))), stamp=False)
        if self.local_volumes(g):
            write("all 'mirror' jobs are ready", stamp=False)
        used, total = g.usage['memhost'], self.guest_maxmem(g)
        rate = GiB / MIGRATION_SECS_PER_MEM_GIB
        for t in range(1, int(math.ceil(used / rate)) + 1):
            await self.pause(1)
            write('migration active, transferred {0} of {1} VM-state, {2}/s'.format(
                _render_bytes(min(used, rate * t)), _render_bytes(total), _render_bytes(rate)))

    def _migration_secs(self, g, running, copy_local):
        secs = MIGRATION_BASE_SECS
        if running and self.kind(g) == 'qemu':
            secs += MIGRATION_SECS_PER_MEM_GIB * g.usage['memhost'] / GiB
        if copy_local:
            secs += MIGRATION_SECS_PER_DISK_GIB * sum(v['size'] for v in self.local_volumes(g) if not v['cdrom']) / GiB
        if running and self.kind(g) == 'lxc':
            secs += 2 * CT_SHUTDOWN_SECS
        return secs

    @staticmethod
    def _storage_map(text, volumes):
        """targetstorage / target-storage: '1' = identity; 'sid' = all to sid; 'a:b,c:d[,default]' = map."""
        if text in (None, '', '1'):
            return {}
        mapping, default = {}, None
        for part in str(text).split(','):
            if ':' in part:
                src, dst = part.split(':', 1)
                mapping[src] = dst
            else:
                default = part
        return {v['storage']: mapping.get(v['storage'], default or v['storage']) for v in volumes if not v['shared']}

    def _move_guest(self, g, target, storage_map):
        """The guest now lives on target; its local volumes are on the same-named (or mapped) storage.
        Its replication job to the target now points back at the source (pve-guest-common
        src/PVE/ReplicationConfig.pm `switch_replication_job_target_nolock`)."""
        for v in self.local_volumes(g):
            dst = storage_map.get(v['storage'])
            if dst and dst != v['storage']:
                g.config[v['key']] = g.config[v['key']].replace(v['storage'] + ':', dst + ':', 1)
        for job in self.replication:
            if job['guest'] == g.vmid:
                if job['target'] == target:
                    job['target'] = g.node
                job['source'] = target
        g.node = target
        self.note_usage()

    def _take_task_failure(self, g):
        queue = self.task_failures.get(g.vmid)
        return queue.popleft() if queue else None

    async def start_migration(self, g, target, params, user, kind, on_done=None):
        """Start the real migration task (qmigrate / vzmigrate) of a guest; returns the UPID.

        kind: 'qmigrate'/'vzmigrate' for a direct request, 'ha' when the HA stack (LRM) runs it.
        on_done(ok) is called when the task ends.
        """
        qemu = self.kind(g) == 'qemu'
        source = g.node
        running = self.guest_running(g)
        vt = 'VM' if qemu else 'CT'
        online = _flag(params.get('online', 0))
        restart = _flag(params.get('restart', 0))
        local_disks_ok = _flag(params.get('with-local-disks', 0))
        force = _flag(params.get('force', 0))
        smap = self._storage_map(params.get('targetstorage' if qemu else 'target-storage'), self.volumes(g))

        async def body(write, upid):
            elapsed = 0.0
            ok = False
            try:
                write("starting migration of {0} {1} to node '{2}' ({3})".format(vt, g.vmid, target,
                                                                               self.node_ip(target)))
                injected = self._take_task_failure(g)
                if injected:
                    raise MigrationAborted(*injected)
                if g.lock and g.lock != 'migrate':
                    raise MigrationAborted('{0} is locked ({1})'.format(vt, g.lock))
                if not self.node_online(target):
                    await self.pause(SSH_TIMEOUT_SECS)
                    elapsed += SSH_TIMEOUT_SECS
                    write('ssh: connect to host {0} port 22: No route to host'.format(self.node_ip(target)))
                    raise MigrationAborted("Can't connect to destination address using public key")
                if qemu:
                    self._qemu_prepare(g, running, force, local_disks_ok, smap, target, write)
                else:
                    if running and online:
                        raise MigrationAborted('lxc live migration is currently not implemented')
                    if running and not restart:
                        raise MigrationAborted('running container can only be migrated in restart mode')
                    for v in self.volumes(g):
                        dst = smap.get(v['storage'], v['storage'])
                        if not v['shared'] and not self.storage_on(dst, target):
                            raise MigrationAborted("storage '{0}' is not available on node '{1}'".format(
                                dst, target))
                secs = self._migration_secs(g, running, bool(self.local_volumes(g)))
                g.lock = 'migrate'
                if qemu:
                    g.config['lock'] = 'migrate'
                try:
                    if not qemu and running:
                        write('shutdown CT {0}'.format(g.vmid))
                        g.status = 'stopped'
                    for v in self.local_volumes(g):
                        if not v['cdrom']:
                            write("found local disk '{0}' (attached)".format(v['volid']))
                    if qemu and running:
                        write('starting VM {0} on remote node \'{1}\''.format(g.vmid, target))
                        if self.local_volumes(g):
                            write('starting storage migration')
                        write('starting online/live migration on unix:/run/qemu-server/{0}.migrate'.format(g.vmid))
                    elif self.local_volumes(g):
                        write('copying local disk images')
                    if qemu and running:
                        await self._live_copy(g, secs, write)
                    else:
                        await self.pause(secs)
                    elapsed += secs
                    self._move_guest(g, target, smap)
                    if qemu and running:
                        write('migration status: completed')
                        write('migration finished; resuming VM on target node')
                    if not qemu and running:
                        write('start container on target node')
                        g.status = 'running'
                        g.started_at = time.time()
                    write('start final cleanup')
                finally:
                    if g.lock == 'migrate':
                        g.lock = None
                        if qemu:
                            g.config.pop('lock', None)
                    if not qemu and running and g.status != 'running':
                        # A restart-mode move that fails starts the CT on the source again
                        # (pve-container src/PVE/LXC/Migrate.pm `final_cleanup`).
                        g.status = 'running'
                self._record_migration(g, source, target, kind, params, upid, secs)
                write('migration finished successfully (duration {0})'.format(_duration(elapsed)))
                ok = True
            except MigrationAborted as e:
                write('ERROR: migration aborted (duration {0}): {1}'.format(_duration(elapsed), e.reason))
                raise TaskFailed(e.exitstatus or e.reason) from None
            finally:
                if on_done is not None:
                    on_done(ok)

        return await self.run_task(source, 'qmigrate' if qemu else 'vzmigrate', g.vmid,
                                   'root@pam' if kind == 'ha' else user, body, guest=g)

    def _qemu_prepare(self, g, running, force, local_disks_ok, smap, target, write):
        """The checks qemu-server's src/PVE/QemuMigrate.pm `prepare` and `scan_local_volumes`
        make inside the task. A volume's problem is logged as a warning line (no ERROR:
        prefix, pve-guest-common AbstractMigrate `log`), and the scan then dies with
        "Problem found while scanning volumes - can't migrate VM - check log"."""
        mapped = self.mapped_keys(g)
        devices = [k for k in self.local_resources(g) if k not in mapped]
        if devices:
            if running or not force:
                raise MigrationAborted("can't migrate VM which uses local devices: {0}".format(', '.join(devices)))
            write('migrating VM which uses local devices')
        if mapped:
            # QemuMigrate `prepare` (messages of qemu-server >= 8.3.9, and before)
            absent = [k for k in mapped if target not in self.pci_mapping(g, k)['nodes']]
            if absent:
                raise MigrationAborted("can't migrate to '{0}': missing mapped devices {1}".format(
                    target, ', '.join(absent)))
            if running and not self.since('8.4'):
                raise MigrationAborted("can't migrate running VM which uses mapped devices: {0}".format(
                    ', '.join(mapped)))
            stuck = ['{0}:{1}'.format(k, self.pci_mapping(g, k)['name']) for k in mapped
                     if not self.pci_mapping(g, k)['live']]
            if running and stuck:
                raise MigrationAborted("can't live migrate running VM which uses following mapped devices: "
                                       + ', '.join(stuck))
            write('migrating VM which uses mapped local devices')
        errors = {}
        replicated = any(j['guest'] == g.vmid and j['target'] == target for j in self.replication)
        for v in self.local_volumes(g):
            dst = smap.get(v['storage'], v['storage'])
            if not self.storage_on(dst, target):      # target_storage_check_available
                raise MigrationAborted("storage '{0}' is not available on node '{1}'".format(dst, target))
            if v['cdrom']:
                if not v['cloudinit']:                # a cloud-init drive is 'generated' on the target
                    errors[v['volid']] = 'local cdrom image'
                continue
            if any(v['volid'] == str(snap.get(v['key'], '')).split(',')[0] for snap in g.snapshots.values()):
                if running and not replicated:
                    errors[v['volid']] = 'online storage migration not possible if non-replicated snapshot exists'
                    continue
                if self.storages[v['storage']]['type'] not in ('zfspool', 'btrfs') \
                        and not v['volid'].endswith('.qcow2'):
                    errors[v['volid']] = 'non-migratable snapshot exists'
                    continue
            if running and not local_disks_ok:
                errors[v['volid']] = "can't live migrate attached local disks without with-local-disks option"
        for v in self.local_volumes(g):
            if v['cloudinit']:
                write("found generated disk '{0}' (in current VM config)".format(v['volid']))
        for volid in sorted(errors):
            write("can't migrate local disk '{0}': {1}".format(volid, errors[volid]))
        if errors:
            raise MigrationAborted("Problem found while scanning volumes - can't migrate VM - check log")

    # ------------------------------------------------------------------ HA stack

    def ha_sid(self, g):
        return '{0}:{1}'.format('vm' if self.kind(g) == 'qemu' else 'ct', g.vmid)

    def queue_ha_move(self, g, target, reason='migrate', maintenance_node=None, partners=True):
        """Queue a CRM command; the CRM acts on it after ha_delay_real seconds, like its next round.
        Since PVE 9 the CRM refuses a target that a negative resource-affinity partner occupies
        or (9.2) that the node-affinity rule does not allow, and moves positive partners along
        (pve-ha-manager src/PVE/HA/Manager.pm `update_crm_commands`, `queue_resource_motion`)."""
        sid = self.ha_sid(g)
        self.crm_log.append('{0}: got crm command: {1} {2} {3}'.format(_stamp(), reason, sid, target))
        blockers = self._ha_blockers(g, target) if target in self.nodes else []
        if blockers:
            self.crm_log.append("{0}: crm command '{1} {2} {3}' - {4} '{5}' blocks it".format(
                _stamp(), reason, sid, target, blockers[0]['cause'], blockers[0]['sid']))
            return
        if partners:
            for other in self._ha_partners(g, 'positive'):
                partner = self._ha_guest(other)
                if partner.node == g.node:
                    self.crm_log.append('{0}: also migrate resource {1} to node {2}'.format(_stamp(), other, target))
                    self.queue_ha_move(partner, target, reason, maintenance_node, partners=False)

        async def crm_round():
            if not self.quorate:
                # No quorum, no CRM master: the command waits.
                self.later(self.ha_delay_real, crm_round)
                return
            if not g.ha_managed:
                return
            if g.vmid in self.ha_refuse:
                self.ha_refuse.discard(g.vmid)
                self.crm_log.append("{0}: ignore crm command - service '{1}' may not run on '{2}'".format(
                    _stamp(), sid, target))
                return
            if target not in self.nodes or not self.node_online(target) or self.nodes[target].get(
                    'hastate') == 'maintenance':
                self.crm_log.append("{0}: ignore crm command - node '{1}' is not online".format(_stamp(), target))
                return
            if g.node == target:
                self.crm_log.append("{0}: ignore crm command - service '{1}' is already on node '{2}'".format(
                    _stamp(), sid, target))
                return
            if g.ha_state in ('migrate', 'relocate'):
                self.crm_log.append("{0}: ignore crm command - service '{1}' is busy".format(_stamp(), sid))
                return
            source = g.node
            if maintenance_node:
                g.maintenance_node = maintenance_node
            if not self.guest_running(g):
                # A stopped service is moved by the CRM itself: config only, no worker task
                # (pve-ha-manager src/PVE/HA/Manager.pm `next_state_migrate_relocate`).
                self.crm_log.append("{0}: migrate service '{1}' to node '{2}' (stopped)".format(_stamp(), sid, target))
                self._move_guest(g, target, {})
                self._record_migration(g, source, target, 'ha', {'target': target}, None, 0)
                return
            g.ha_state = 'migrate'
            g.ha_target = target
            self.crm_log.append("{0}: service '{1}': state changed from 'started' to 'migrate' (node = {2}, "
                                "target = {3})".format(_stamp(), sid, source, target))

            async def lrm_run():
                # The LRM of the source node runs the real migration as root@pam (pve-ha-manager
                # src/PVE/HA/Resources/PVEVM.pm `migrate`: online, force, with-local-disks), with the
                # parameters the HA resource agent passes.
                params = ({'target': target, 'online': 1, 'force': 1, 'with-local-disks': 1}
                          if self.kind(g) == 'qemu' else {'target': target, 'restart': 1})

                def done(ok):
                    g.ha_state = 'started'
                    g.ha_target = None
                    self.crm_log.append("{0}: service '{1}': state changed from 'migrate' to 'started' (node = {2})"
                                        .format(_stamp(), sid, g.node))
                    if not ok:
                        self.crm_log.append("{0}: service '{1}' - migration failed (exit code 1)".format(_stamp(), sid))
                if not self.node_online(g.node):
                    done(False)
                    return
                await self.start_migration(g, target, params, 'root@pam', 'ha', on_done=done)
            self.later(self.ha_delay_real / 2, lrm_run)

        self.later(self.ha_delay_real, crm_round)

    def set_ha_maintenance(self, node, on=True):
        """ha-manager crm-command node-maintenance enable|disable: HA guests leave (and come back)."""
        if node not in self.nodes:
            raise KeyError('no node {0}'.format(node))
        self.nodes[node]['hastate'] = 'maintenance' if on else 'online'
        if on:
            for g in self.all_guests():
                if g.ha_managed and g.node == node:
                    target = self._ha_pick_node(exclude=node)
                    if target:
                        self.queue_ha_move(g, target, maintenance_node=node)
        else:
            for g in self.all_guests():
                if g.ha_managed and g.maintenance_node == node:
                    g.maintenance_node = None
                    self.queue_ha_move(g, node)

    def _ha_pick_node(self, exclude):
        """The CRS 'basic' choice: the usable node with the fewest HA services (pve-ha-manager
        src/PVE/HA/Manager.pm `select_service_node`, simplified: no priorities)."""
        counts = {n: 0 for n in self.nodes if n != exclude and self.node_online(n)
                  and self.nodes[n].get('hastate') != 'maintenance'}
        for g in self.all_guests():
            if g.ha_managed and g.node in counts:
                counts[g.node] += 1
        return min(sorted(counts), key=lambda n: counts[n]) if counts else None

    # ------------------------------------------------------------------ auth & validation

    def check_password(self, user, password):
        # A still-valid ticket given as the password renews it (pve-access-control
        # src/PVE/API2/AccessControl.pm `create_ticket` -> AccessControl.pm `verify_ticket`).
        session = self.tickets.get(password)
        if session is not None:
            return session['user'] == user and session['expires'] >= time.time()
        return super().check_password(user, password)

    def check_permissions(self, user, perms, values, declared=None):
        # pve-access-control src/PVE/RPCEnvironment.pm `check_api2_permissions`: `user => 'all'`
        # admits every authenticated user before any `check`, which then only says what the
        # method itself filters (GET /cluster/options, say); fakepve 0.5.0 applies the check.
        if user is not None and perms and perms.get('user') == 'all':
            return None
        return super().check_permissions(user, perms, values, declared)

    async def _ticket(self, request):
        """POST /access/ticket. With `path` and `privs` it is Proxmox's verify mode, which
        fakepve 0.5.0 ignores (it would hand out a fresh ticket to anyone presenting a live
        one): pve-access-control src/PVE/API2/AccessControl.pm `create_ticket` calls
        `verify_auth`, which accepts a valid ticket only if its user is `username` (else it
        falls back to a password check), then requires every privilege of `privs` on
        `path` ($rpcenv->check, inherited ACLs count). Success answers {username, cap} and
        no ticket; any failure is a bare 401 "authentication failure" (no hint, against
        user enumeration). The schema makes `path` and `privs` require each other."""
        p = await fakepve_params(request)
        path, privs = p.get('path'), p.get('privs')
        if not path and not privs:
            return await super()._ticket(request)
        if not (path and privs):
            missing = 'privs' if path else 'path'
            raise PveError(400, 'Parameter verification failed.',
                           {missing: "property is missing and it is not optional"})
        user = str(p.get('username', ''))
        if p.get('realm'):
            user += '@' + str(p['realm'])
        password = str(p.get('password', ''))
        self.verifications.append({'username': user, 'path': path, 'privs': privs})
        # a live ticket of this very user, else the user's password (authenticate_user)
        session = self.tickets.get(password)
        if session is not None:
            known = session['user'] == user and session['expires'] >= time.time()
        else:
            known = FakePve.check_password(self, user, password)
        wanted = [x for x in re.split(r'[,;\s]+', str(privs)) if x]
        if not (known and wanted and all(self.allowed(user, path, x) for x in wanted)):
            raise PveError(401, 'authentication failure')
        data = {'username': user, 'cap': {}}
        if self.allowed(user, '/', 'Sys.Audit'):
            data['clustername'] = self.cluster_name
        return fakepve_ok(data)

    @staticmethod
    def _strict_boolean_errors(info, values):
        """fakepve 0.5.0 accepts true/yes/on for boolean parameters; Proxmox only 1 or 0
        (pve-common src/PVE/JSONSchema.pm `check_type`)."""
        props = ((info or {}).get('parameters') or {}).get('properties', {})
        errs = {}
        for name, val in values.items():
            sch = props.get(name) or props.get(re.sub(r'\d+$', '', name) + '[n]')
            if sch and sch.get('type') == 'boolean' and not isinstance(val, (bool, list)) and str(val) not in ('0',
                                                                                                               '1'):
                errs[name] = "type check ('boolean') failed - got '{0}'".format(val)
        return errs

    async def answer(self, request, match, params, user, call=None):
        info = match.methods.get(request.method) if match is not None else None
        errs = self._strict_boolean_errors(info, params)
        if errs:
            _, others = pve_schema.validate(info.get('parameters'), dict(params, **match.params))
            others.update(errs)
            raise PveError(400, 'Parameter verification failed.', others)
        return await super().answer(request, match, params, user, call)

    def _verify(self, request, values, drop=()):
        info = self.resolve(request, API).methods[request.method]
        errs = self._strict_boolean_errors(info, {k: v for k, v in values.items() if k not in drop})
        if errs:
            raise PveError(400, 'Parameter verification failed.', errs)
        return super()._verify(request, values, drop)

    # ------------------------------------------------------------------ request plumbing

    @staticmethod
    def api_path(path):
        for prefix in ('/api2/json', '/api2/extjs'):
            if path.startswith(prefix + '/'):
                return path[len(prefix):]
        return path

    def _record(self, request, body):
        super()._record(request, body)
        self.request_counts[(request.method, self.api_path(request.path))] += 1
        if request.path.startswith('/api2/json/'):
            request[WIRE] = self._wire_entry(request, body)
            self.wire.append(request[WIRE])

    SECRET_PARAMS = ('password', 'new-password', 'value')

    def _wire_entry(self, request, body):
        """A request as the conformance test checks it against Proxmox's schema: method,
        path, every parameter as the sent string, how it authenticated, whether it carried
        the CSRF header; the answer's status and data are added once it is sent."""
        sent = list(request.query.items())
        if body and request.content_type == 'application/x-www-form-urlencoded':
            sent += urllib.parse.parse_qsl(body.decode('utf-8', 'replace'), keep_blank_values=True)
        elif body and request.content_type == 'application/json':
            with contextlib.suppress(ValueError, AttributeError):
                sent += [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in json.loads(body).items()]
        auth = request.headers.get('Authorization', '')
        return {'method': request.method, 'path': urllib.parse.unquote(self.api_path(request.path)),
                'params': {k: ('***' if k in self.SECRET_PARAMS else v) for k, v in sent},
                'auth': 'token' if auth.startswith('PVEAPIToken=') else
                        'ticket' if request.cookies.get('PVEAuthCookie') else 'none',
                'csrf': 'CSRFPreventionToken' in request.headers, 'status': None, 'data': None}

    @web.middleware
    async def _middleware(self, request, handler):
        # The control endpoint lives outside /api2 and skips PVE's authentication; it is
        # reachable only from loopback (the fake only listens there anyway).
        if request.path.startswith('/_fake/'):
            if request.remote not in ('127.0.0.1', '::1'):
                return web.json_response({'error': 'loopback only'}, status=403)
            return await handler(request)
        response = await super()._middleware(request, handler)
        entry = request.get(WIRE)
        if entry is not None:
            entry['status'] = response.status
            if response.status == 200 and isinstance(getattr(response, 'body', None), bytes):
                with contextlib.suppress(ValueError):
                    entry['data'] = json.loads(response.body).get('data')
        return response

    # Methods a release does not have: pve-http-server answers 501 "Method '<M> <path>' not
    # implemented" (src/PVE/APIServer/AnyEvent.pm). HA rules came with pve-ha-manager 5.0 and
    # the container migrate precondition with pve-container 6.0.8, both PVE 9.0.
    NEW_IN = (('GET', re.compile(r'^/cluster/ha/rules(?:/|$)'), '9.0'),
              ('GET', re.compile(r'^/nodes/[^/]+/lxc/\d+/migrate$'), '9.0'))
    # Parameters a release does not know: pve-common src/PVE/JSONSchema.pm `validate` refuses
    # them with 400 (additionalProperties 0). with-conntrack-state came with qemu-server 9.0.
    NEW_PARAMS = (('POST', re.compile(r'^/nodes/[^/]+/qemu/\d+/migrate$'), 'with-conntrack-state', '9.0'),)

    async def _answer(self, request, handler, generic, path_node):
        path = self.api_path(request.path)
        for method, pattern, release in self.NEW_IN:
            if request.method == method and pattern.match(path) and not self.since(release):
                return pve_error_response(501, "Method '{0} {1}' not implemented".format(method, path))
        if request.method in {m for m, _, _, _ in self.NEW_PARAMS}:
            from fakepve.server import params as read_params
            sent = await read_params(request)
            for method, pattern, name, release in self.NEW_PARAMS:
                if method == request.method and pattern.match(path) and name in sent and not self.since(release):
                    return pve_error_response(400, 'Parameter verification failed.', {
                        name: 'property is not defined in schema and the schema does not allow additional '
                              'properties'})
        for rule in list(self.path_failures):
            if rule['method'] in (request.method, '*') and re.search(rule['regex'], path):
                if rule['times'] is not None:
                    rule['times'] -= 1
                    if rule['times'] <= 0:
                        self.path_failures.remove(rule)
                if rule['status'] == HANG:
                    # A node or proxy that stops answering: the client's timeout has to end it.
                    await asyncio.sleep(float(rule['message']))
                    break
                if rule['status'] == DROP:
                    # The connection breaks before an answer (a restarted pveproxy, a network cut).
                    request.transport.close()
                    return web.Response(status=500)
                if rule['status'] >= 595:
                    # pveproxy's forwarding errors: empty body, the socket error as reason.
                    return web.Response(status=rule['status'], reason=rule['message'])
                return pve_error_response(rule['status'], rule['message'])
        return await super()._answer(request, handler, generic, path_node)

    def _authenticate(self, request):
        """fakepve's check; a refusal is marked for _login_required."""
        try:
            return super()._authenticate(request)
        except PveError as e:
            request[AUTH_REFUSED] = e.message
            raise

    @web.middleware
    async def _login_required(self, request, handler):
        """pve-http-server src/PVE/APIServer/AnyEvent.pm `handle_request`: a request that
        `auth_handler` refuses (no ticket, a bad ticket or token, a missing CSRF token) is
        answered after a 3 s delay (scaled by time_scale here) with 401, the reason as
        the status line and no body, since JSON has no login formatter (only
        Formatter/HTML.pm registers one). A wrong password at POST /access/ticket is the
        API method's own 401 (JSON, as fakepve gives it)."""
        response = await handler(request)
        refused = request.get(AUTH_REFUSED)
        if refused is None or response.status != 401:
            return response
        await asyncio.sleep(3.0 * self.time_scale)
        return web.Response(status=401, reason=refused.strip().splitlines()[0])

    def _build_app(self):
        app = super()._build_app()
        app.middlewares.insert(0, self._login_required)
        app.router.add_get('/_fake/state', self._fake_state)
        app.router.add_post('/_fake/reset-requests', self._fake_reset)
        app.router.add_post('/_fake/control', self._fake_control)
        return app

    # ------------------------------------------------------------------ routes

    def _routes_prs(self):
        """Stateful routes (see fakepve.routing): registered before fakepve's catch-all."""
        qm = '/nodes/{node}/qemu/{vmid}'
        return [('GET', qm + '/migrate', self._qm_migrate_check), ('POST', qm + '/migrate', self._qm_migrate),
                ('GET', '/cluster/options', self._cluster_options),
                ('GET', '/cluster/tasks', self._cluster_tasks),
                ('GET', '/cluster/ha/resources', self._ha_resources),
                ('GET', '/cluster/ha/rules', self._ha_rules),
                ('GET', '/cluster/ha/resources/{sid}', self._ha_resource),
                ('POST', '/cluster/ha/resources/{sid}/migrate', self._ha_resource_migrate),
                ('POST', '/cluster/ha/resources/{sid}/relocate', self._ha_resource_migrate),
                ('GET', '/cluster/ha/status/current', self._ha_status_current),
                ('GET', '/cluster/ha/status/manager_status', self._ha_manager_status),
                ('GET', '/nodes/{node}/status', self._node_status),
                ('GET', '/nodes/{node}/rrddata', self._node_rrddata),
                ('GET', qm + '/rrddata', self._qm_rrddata),
                ('GET', '/nodes/{node}/lxc/{vmid}/rrddata', self._lxc_rrddata),
                ('GET', '/nodes/{node}/version', self._node_version),
                ('GET', '/cluster/replication', self._replication_jobs)]

    async def _cluster_status(self, request):
        # pve-manager PVE/API2/Cluster.pm `get_status`: the cluster entry has type, id, nodes,
        # version, name and quorate, no `online` (fakepve adds a count of online nodes).
        response = await super()._cluster_status(request)
        body = json.loads(response.body)
        body['data'][0].pop('online', None)
        return web.json_response(body)

    async def _permissions(self, v, user):
        """GET /access/permissions with a path answers {path: effective privileges there},
        inherited ones included, or {} (pve-access-control src/PVE/API2/AccessControl.pm
        `permissions`); fakepve lists the ACL entries instead. Without a path: fakepve's."""
        if v.get('path') is None:
            return await super()._permissions(v, user)
        from fakepve import shapes
        who, path = v.get('userid') or user, v['path']
        held = {priv: 1 for priv in sorted(shapes.PRIVILEGES) if self.allowed(who, path, priv)}
        return {path: held} if held else {}

    async def _replication_jobs(self, v, user):
        """GET /cluster/replication: replication.cfg as pve-manager PVE/API2/ReplicationConfig.pm
        `index` lists it, filtered by VM.Audit, sorted by id; `schedule` only when set,
        `source` once pvesr has run (pve-guest-common src/PVE/ReplicationConfig.pm)."""
        out = []
        for job in self.replication:
            if not self.allowed(user, '/vms/{0}'.format(job['guest']), 'VM.Audit'):
                continue
            g = self.guest(job['guest'])
            out.append({'id': '{0}-{1}'.format(job['guest'], job['jobnum']), 'type': 'local', 'guest': job['guest'],
                        'jobnum': job['jobnum'], 'target': job['target'], 'source': job.get('source', g.node)})
        return sorted(out, key=lambda j: j['id'])

    # --- version, nodes, resources ---

    async def _version(self, request):
        return web.json_response({'data': {'version': self.version, 'release': self.release_version,
                                           'repoid': PVE_REPOID}})

    async def _node_version(self, v, user):
        return {'version': self.version, 'release': self.release_version, 'repoid': PVE_REPOID}

    def _node_item(self, name, user, snap):
        """A node as /cluster/resources and /nodes show it."""
        online = self.node_online(name)
        item = {'id': 'node/' + name, 'type': 'node', 'node': name, 'status': 'online' if online else 'offline',
                'level': ''}
        if online and self.allowed(user, '/nodes/' + name, 'Sys.Audit'):
            n, m = self.nodes[name], self.node_metrics(name, snap)
            # no `host-arch`: pvestatd sends it only for nodes that are not x86_64 (PVE 9.2)
            item.update(cpu=m['cpu'], maxcpu=n['maxcpu'], mem=m['mem'], maxmem=n['maxmem'], disk=n['rootfs_used'],
                        maxdisk=n['rootfs'], uptime=m['uptime'], **{'cgroup-mode': 2})
        # A node's HA state is in /cluster/resources since pve-manager 8.3 (PVE 8.4 here).
        hastate = self.node_hastate(name, snap['ha_in_use']) if self.since('8.4') else None
        if hastate:
            item['hastate'] = hastate
        return item

    def _guest_item(self, g, snap):
        vols = snap['vols'][g.vmid]
        qemu = self.kind(g) == 'qemu'
        online = self.node_online(g.node)
        m = self.guest_metrics(g)
        item = {'id': g.guest, 'type': self.kind(g), 'vmid': g.vmid, 'name': g.name, 'node': g.node,
                'status': g.status if online else 'unknown', 'template': 1 if g.template else 0,
                'maxcpu': self.guest_maxcpu(g), 'maxmem': self.guest_maxmem(g),
                'cpu': m['cpu'], 'mem': m['mem'], 'disk': m['disk'],
                'maxdisk': self.boot_disk_size(g, vols) if qemu else next(
                    (v['size'] for v in vols if v['key'] == 'rootfs'), 0),
                'uptime': m['uptime'], 'netin': 0, 'netout': 0, 'diskread': 0, 'diskwrite': 0}
        # `memhost` (the host's view of a guest's memory) exists since qemu-server 9.0.11
        # (src/PVE/QemuServer.pm `vmstatus`); PVE 9 containers report 0. On PVE 8 a VM's `mem`
        # is the balloon driver's guest-internal figure: the node's `mem` holds more.
        if self.since('9.0'):
            item['memhost'] = m['memhost']
        if g.lock:
            item['lock'] = g.lock
        if g.config.get('tags'):
            item['tags'] = g.config['tags']
        if g.pool:
            item['pool'] = g.pool
        if g.ha_managed:
            item['hastate'] = g.ha_state
        return item

    def _storage_item(self, node, name, snap):
        store = self.storages[name]
        if not self._storage_enabled(name, node):
            return None
        item = {'id': 'storage/{0}/{1}'.format(node, name), 'type': 'storage', 'node': node, 'storage': name,
                'plugintype': store['type'], 'content': store.get('content', ''),
                'shared': 1 if store.get('shared') else 0,
                'status': 'available' if self.node_online(node) and store.get('active', 1) else 'unknown'}
        if item['status'] == 'available':
            item.update(disk=self.storage_used(node, name, snap), maxdisk=self.storage_total(node, name))
        return item

    async def _resources(self, request):
        kind = request.query.get('type')
        if kind not in (None, 'vm', 'storage', 'node', 'sdn'):
            raise PveError(400, 'Parameter verification failed.',
                           {'type': "value '{0}' does not have a value in the enumeration 'vm, storage, node, sdn'"
                            .format(kind)})
        user = request[USER]
        snap = self.usage_snapshot()
        data = []
        if kind in (None, 'vm'):
            data += [self._guest_item(g, snap) for g in snap['guests']
                     if self.allowed(user, '/vms/{0}'.format(g.vmid), 'VM.Audit')]
        if kind in (None, 'node'):
            data += [self._node_item(n, user, snap) for n in sorted(self.nodes)]
        if kind in (None, 'storage'):
            for node in sorted(self.nodes):
                data += [item for item in (self._storage_item(node, s, snap) for s in sorted(self.storages)) if item]
        if kind is None:
            data += [{'id': '/pool/' + p, 'type': 'pool', 'pool': p} for p in sorted(self.pools)]
        if kind in (None, 'sdn'):
            data += [{'id': 'sdn/{0}/localnetwork'.format(n), 'type': 'sdn', 'sdn': 'localnetwork', 'node': n,
                      'status': 'ok' if self.node_online(n) else 'unknown'} for n in sorted(self.nodes)]
        return web.json_response({'data': data})

    async def _nodes(self, request):
        data = []
        snap = self.usage_snapshot()
        for n in sorted(self.nodes):
            item = self._node_item(n, request[USER], snap)
            item.pop('hastate', None)
            item['ssl_fingerprint'] = 'AA:' * 31 + 'AA'
            data.append(item)
        return web.json_response({'data': data})

    def _vm_usage(self, vm):
        # fakepve's VM list and status/current build on this; give them the same numbers.
        data = super()._vm_usage(vm)
        running = self.guest_running(vm) and self.node_online(vm.node)
        data.update(cpu=round(vm.usage['cpu'], 4) if running else 0, mem=vm.usage['mem'] if running else 0,
                    memhost=vm.usage['memhost'] if running else 0, maxdisk=self.boot_disk_size(vm),
                    maxcpu=self.guest_maxcpu(vm))
        if not self.since('9.0'):
            data.pop('memhost')
        return data

    def _status(self, ct):
        data = super()._status(ct)
        running = self.guest_running(ct)
        data.update(cpu=round(ct.usage['cpu'], 4) if running else 0, mem=ct.usage['mem'] if running else 0,
                    disk=ct.usage['disk'] if running else 0, cpus=self.guest_maxcpu(ct))
        return data

    def _status_item(self, name, node, formats=False):
        # /nodes/{node}/storage: the same per-node sizes as /cluster/resources.
        item = super()._status_item(name, node, formats)
        if item['active']:
            total, used = self.storage_total(node, name), self.storage_used(node, name)
            item.update(total=total, used=used, avail=max(0, total - used))
        return item

    async def _node_status(self, v, user):
        node = v['node']
        n, use = self.nodes[node], self.node_usage(node)
        mem = min(use['mem'], n['maxmem'])
        return {'cpu': round(min(1.0, use['cpu_cores'] / n['maxcpu']), 4), 'wait': 0.001,
                'cpuinfo': {'cpus': n['maxcpu'], 'cores': max(1, n['maxcpu'] // 2), 'sockets': 1,
                            'model': 'AMD EPYC 7443P 24-Core Processor', 'mhz': '2850.000', 'hvm': '1',
                            'user_hz': 100, 'flags': 'fpu vme de pse tsc msr pae mce cx8 apic sep mtrr sse sse2 svm'},
                'memory': dict({'total': n['maxmem'], 'used': mem, 'free': n['maxmem'] - mem},
                               # pve-manager PVE/API2/Nodes.pm `status`: `available` since PVE 9
                               **({'available': n['maxmem'] - mem} if self.since('9.0') else {})),
                'swap': {'total': 8 * GiB, 'used': 0, 'free': 8 * GiB},
                'rootfs': {'total': n['rootfs'], 'used': n['rootfs_used'], 'free': n['rootfs'] - n['rootfs_used'],
                           'avail': n['rootfs'] - n['rootfs_used']},
                'ksm': {'shared': 0}, 'uptime': int(time.time() - self.started_at) + 864000,
                'loadavg': ['{0:.2f}'.format(use['cpu_cores'])] * 3, 'idle': 0,
                'kversion': 'Linux 6.14.11-4-pve #1 SMP PREEMPT_DYNAMIC PMX 6.14.11-4 (2026-05-12T09:01Z)',
                'pveversion': 'pve-manager/{0}/{1}'.format(self.version, PVE_REPOID),
                'boot-info': {'mode': 'efi', 'secureboot': 0},
                'current-kernel': {'sysname': 'Linux', 'release': '6.14.11-4-pve', 'machine': 'x86_64',
                                   'version': '#1 SMP PREEMPT_DYNAMIC PMX 6.14.11-4'}}

    # RRD history (pve-cluster src/pmxcfs/status.c: AVERAGE over 60 s steps for `hour`; PVE 8 and
    # 9 alike keep 60 points of it). Node cpu and memory follow what happened since the fake
    # started (note_usage records every change; the cluster looked as at its start before that);
    # the other series and the longer timeframes are flat at today's figures.
    RRD_STEP = {'hour': 60, 'day': 1800, 'week': 10800, 'month': 43200, 'year': 604800, 'decade': 6048000}

    def _rrd(self, timeframe, point):
        step = self.RRD_STEP.get(timeframe, 60)
        now = int(time.time()) // step * step
        return [dict(point, time=now - step * (69 - i)) for i in range(70)]

    def note_usage(self):
        """Record every node's figures from now on: the step function rrddata averages."""
        snap = self.usage_snapshot()
        self.usage_log.append((time.time(), {n: self._live_node(n, snap) for n in self.nodes}))

    def _history(self, node, start, end):
        """Time-weighted mean (cpu, mem) of a node over [start, end)."""
        total = cpu = mem = 0.0
        for i, (t, figures) in enumerate(self.usage_log):
            a = max(start, t) if i else start
            b = min(end, self.usage_log[i + 1][0]) if i + 1 < len(self.usage_log) else end
            if b > a:
                total += b - a
                cpu += figures[node]['cpu'] * (b - a)
                mem += figures[node]['mem'] * (b - a)
        return (cpu / total, mem / total) if total else (0.0, 0.0)

    async def _node_rrddata(self, v, user):
        node = v['node']
        n, use = self.nodes[node], self.node_usage(node)
        mem = min(use['mem'], n['maxmem'])
        point = {'cpu': round(min(1.0, use['cpu_cores'] / n['maxcpu']), 4), 'maxcpu': n['maxcpu'], 'iowait': 0.001,
                 'loadavg': round(use['cpu_cores'], 2), 'memused': mem, 'memtotal': n['maxmem'],
                 'swapused': 0, 'swaptotal': 8 * GiB, 'rootused': n['rootfs_used'], 'roottotal': n['rootfs'],
                 'netin': 1000.0, 'netout': 1000.0}
        if self.since('9.0'):          # the PVE 9 node RRD format added these
            point.update(memavailable=n['maxmem'] - mem, arcsize=0)
        if v.get('timeframe') != 'hour':
            return self._rrd(v.get('timeframe'), point)
        end = int(time.time()) // 60 * 60   # complete minutes only: the newest bucket is not yet written
        out = []
        for k in range(60, 0, -1):
            cpu, used = self._history(node, end - 60 * k, end - 60 * (k - 1))
            out.append(dict(point, time=end - 60 * k, cpu=round(cpu, 4), memused=int(used),
                            **({'memavailable': n['maxmem'] - int(used)} if self.since('9.0') else {})))
        return out

    def _guest_rrd(self, g, timeframe):
        running = self.guest_running(g)
        point = {'cpu': round(g.usage['cpu'], 4) if running else 0, 'maxcpu': self.guest_maxcpu(g),
                 'mem': g.usage['mem'] if running else 0, 'maxmem': self.guest_maxmem(g),
                 'disk': 0 if self.kind(g) == 'qemu' else (g.usage['disk'] if running else 0),
                 'maxdisk': self.boot_disk_size(g), 'netin': 0.0, 'netout': 0.0, 'diskread': 0.0, 'diskwrite': 0.0}
        if self.kind(g) == 'qemu':
            point['memhost'] = g.usage['memhost'] if running else 0
        return self._rrd(timeframe, point)

    async def _qm_rrddata(self, v, user):
        return self._guest_rrd(self.find(v['node'], v['vmid']), v.get('timeframe'))

    async def _lxc_rrddata(self, v, user):
        return self._guest_rrd(self._find_ct(v['node'], v['vmid']), v.get('timeframe'))

    async def _cluster_options(self, v, user):
        """pve-manager PVE/API2/Cluster.pm `get_options`: datacenter.cfg for Sys.Audit on /
        (else only console and tag-style, none of which the fake sets), plus the read-only
        'allowed-tags' always (the web UI iterates it): pve-guest-common
        src/PVE/GuestHelpers.pm `get_allowed_tags` with the default user-tag-access 'free'
        gives the tags of every guest the user may audit (all of them with Sys.Modify on /)."""
        res = {}
        if self.allowed(user, '/', 'Sys.Audit'):
            res = {'crs': dict(self.crs), 'keyboard': 'en-us', 'migration': {'type': 'secure'},
                   'description': 'fakecluster {0}'.format(self.cluster_name)}
        privileged = self.allowed(user, '/', 'Sys.Modify')
        tags = set()
        for g in self.all_guests():
            if privileged or self.allowed(user, '/vms/{0}'.format(g.vmid), 'VM.Audit'):
                tags.update(t for t in re.split(r'[,;\s]+', g.config.get('tags', '')) if t)
        res['allowed-tags'] = sorted(tags)
        return res

    # --- tasks ---

    def _task_matches(self, t, p):
        if p.get('typefilter') and t['type'] != p['typefilter']:
            return False
        if p.get('vmid') is not None and t['id'] != str(p['vmid']):
            return False
        if p.get('userfilter') and p['userfilter'] not in t['user']:
            return False
        if p.get('since') is not None and t['starttime'] < int(p['since']):
            return False
        if p.get('until') is not None and t['starttime'] > int(p['until']):
            return False
        source = p.get('source') or 'archive'
        finished = t['status'] == 'stopped'
        if (source == 'archive' and not finished) or (source == 'active' and finished):
            return False
        return not (p.get('errors') and t.get('exitstatus', 'OK') == 'OK')

    async def _task_list(self, request):
        # fakepve ignores typefilter/source/since, which a balancer waiting on HA needs
        # (pve-manager PVE/API2/Tasks.pm `node_tasks`).
        from fakepve.server import params as read_params
        node = request.match_info['node']
        user = request[USER]
        p = self._verify(request, await read_params(request))
        audit = self.allowed(user, '/nodes/' + node, 'Sys.Audit')
        data = [self._task_view(t, True) for t in self.tasklog if t['node'] == node and self._task_matches(t, p)
                and (audit or self._task_owner(user, t))]
        data.sort(key=lambda t: -t['starttime'])
        start = p.get('start', 0)
        return web.json_response({'data': data[start:start + p.get('limit', 50)]})

    async def _task_log(self, request):
        # PVE 9 (pve-common dump_logfile_by_filehandle) reads to the end for limit=0; fakepve
        # returns nothing then.
        from fakepve.server import params as read_params
        p = self._verify(request, await read_params(request))
        lines = self._get_task(request)['log']
        start, limit = p.get('start', 0), p.get('limit', 50)
        numbered = [{'n': n + 1, 't': t} for n, t in enumerate(lines)][start:]
        return web.json_response({'data': numbered if limit == 0 else numbered[:limit]})

    def _task_view(self, task, listing=False):
        """fakepve's view, without the fake's own bookkeeping (keys starting with _)."""
        return {k: v for k, v in super()._task_view(task, listing).items() if not k.startswith('_')}

    async def _pool_read(self, v, user):
        """pve-manager PVE/API2/Pool.pm `read_pool`: since 8.1 (commit 4448f8d3, nested pools)
        the first item of `index`, with poolid; before that its own answer without it."""
        data = await super()._pool_read(v, user)
        if not self.since('8.1'):
            data.pop('poolid', None)
        return data

    async def _cluster_tasks(self, v, user):
        """What every node broadcasts: its running tasks and its 25 latest finished ones
        (pve-common src/PVE/RESTEnvironment.pm `active_workers`, MAX_FINISHED; pvestatd
        `update_status` broadcasts it, pve-cluster src/PVE/Cluster.pm `get_tasklist` joins
        the nodes' lists). pve-manager PVE/API2/Cluster.pm `tasks`: all tasks with Sys.Audit
        on /, else the caller's own (compared after the split); a token's task shows `user`
        and `tokenid` apart. Finished tasks have no pid or pstart (`active_workers` drops them)."""
        audit = self.allowed(user, '/', 'Sys.Audit')
        out = []
        for node in sorted(self.nodes):
            mine = [t for t in self.tasklog if t['node'] == node]
            running = [t for t in mine if t['status'] != 'stopped']
            finished = sorted((t for t in mine if t['status'] == 'stopped'), key=lambda t: -t['starttime'])
            for t in running + finished[:max(0, 25 - len(running))]:
                item = {k: t[k] for k in ('upid', 'node', 'starttime', 'type', 'id', 'user')}
                if t['status'] == 'stopped':
                    item.update(endtime=t.get('endtime'), status=t.get('exitstatus'))
                else:
                    item.update(pid=t['pid'])
                if '!' in item['user']:
                    item['user'], item['tokenid'] = item['user'].split('!', 1)
                if audit or item['user'] == user:
                    out.append(item)
        return out

    # --- qemu migrate ---

    def _find_qemu(self, node, vmid):
        return self.find(node, vmid)  # fakepve's, with PVE's "Configuration file ... does not exist"

    async def _qm_migrate_check(self, v, user):
        """GET .../qemu/{vmid}/migrate as qemu-server src/PVE/API2/Qemu.pm
        `migrate_vm_precondition` answers it, release by release."""
        g = self._find_qemu(v['node'], v['vmid'])
        self.need_quorum()
        self._check_lock(g)
        running = self.guest_running(g)
        data = {'running': 1 if running else 0, 'local_disks': self._local_disks(g),
                'local_resources': self.local_resources(g), 'mapped-resources': self.mapped_keys(g)}
        # qemu-server 8.0: the node lists only for a stopped VM; 8.3.9 (PVE 8.4) and later:
        # for every VM. Either way check_local_storage_availability (src/PVE/QemuServer.pm)
        # seeds {} for every cluster node, and the API copies each other node's entry into
        # not_allowed_nodes, empty where nothing blocks it; allowed_nodes are those left empty.
        if not running or self.since('8.4'):
            data['allowed_nodes'], data['not_allowed_nodes'] = self._migration_targets(g)
        if self.since('8.4'):
            data['mapped-resource-info'] = {
                k: dict({'name': self.pci_mapping(g, k)['name']},
                        **({'live-migration': 1} if self.pci_mapping(g, k)['live'] else {}))
                for k in self.mapped_keys(g)}
        if self.since('9.0'):
            data['has-dbus-vmstate'] = 1          # hard-coded: the API understands conntrack state
            if g.ha_managed:
                data['dependent-ha-resources'] = self._ha_partners(g, 'positive')
        return data

    def _migration_targets(self, g):
        allowed, not_allowed = [], {}
        vols = self.volumes(g)
        for node in sorted(self.nodes):
            if node == g.node:
                continue
            # storage.cfg `nodes=`/`disable` only: not whether the node is online or has room.
            entry = {}
            missing = sorted({vol['storage'] for vol in vols if not self.storage_on(vol['storage'], node)})
            if missing:
                entry['unavailable_storages'] = missing
            absent = [k for k in self.mapped_keys(g) if node not in self.pci_mapping(g, k)['nodes']]
            if absent:
                entry['unavailable-resources'] = absent
            blocking = self._ha_blockers(g, node) if self.since('9.0') else []
            if blocking:
                entry['blocking-ha-resources'] = blocking
            not_allowed[node] = entry
            if not entry:
                allowed.append(node)
        return allowed, not_allowed

    def _local_disks(self, g):
        """local_disks: the volumes not on shared storage with the attributes qemu-server's
        src/PVE/QemuServer.pm `foreach_volid` gives every volume (all of them 0/1 flags, so
        present even when 0): 8.0 has referenced_in_config, 8.3 replaced it with is_attached,
        9.1.4 added is_cloudinit. `size` only when the config has one; `drivename` for drives."""
        out = []
        snapshot_refs = {}
        for name, snap in g.snapshots.items():
            for key, value in snap.items():
                if QEMU_DRIVE.match(key):
                    snapshot_refs.setdefault(str(value).split(',')[0], {})[name] = 1
        for vol in self.volumes(g):
            if vol['shared']:
                continue
            unused = vol['key'].startswith('unused')
            entry = {'volid': vol['volid'], 'cdrom': 1 if vol['cdrom'] else 0, 'replicate': 1, 'shared': 0,
                     'is_unused': 1 if unused else 0, 'is_vmstate': 0,
                     'is_tpmstate': 1 if vol['key'] == 'tpmstate0' else 0}
            if self.since('8.4'):
                entry['is_attached'] = 0 if unused else 1
            else:
                entry['referenced_in_config'] = 1
            if self.since('9.2'):               # qemu-server 9.1.4
                entry['is_cloudinit'] = 1 if vol['cloudinit'] else 0
            if not unused:
                entry['drivename'] = vol['key']
            if vol['size_given']:
                entry['size'] = vol['size']
            if vol['volid'] in snapshot_refs:
                entry['referenced_in_snapshot'] = snapshot_refs[vol['volid']]
            out.append(entry)
        return out

    def _check_target(self, node, target):
        """The first synchronous checks of qemu and lxc migrate alike: target, quorum, node."""
        if target == node:
            raise PveError(400, 'Parameter verification failed.', {'target': 'target is local node.'})
        self.need_quorum()
        if target not in self.nodes:
            raise PveError(500, "no such cluster node '{0}'".format(target))

    async def _qm_migrate(self, v, user):
        # The order of PVE::API2::Qemu::migrate_vm's synchronous checks.
        node, target = v['node'], v['target']
        self._check_target(node, target)
        for opt in ('force', 'migration_type', 'migration_network'):
            if v.get(opt) is not None and user != 'root@pam':
                raise PveError(400, 'Parameter verification failed.', {opt: 'Only root may use this option.'})
        g = self._find_qemu(node, v['vmid'])
        self._check_lock(g)
        if self.guest_running(g) and not _flag(v.get('online', 0)):
            raise PveError(500, "can't migrate running VM without --online")
        jobs = [j for j in self.replication if j['guest'] == g.vmid]
        if self.guest_running(g) and jobs and not any(j['target'] == target for j in jobs) \
                and not _flag(v.get('force', 0)):
            # ReplicationConfig `check_for_existing_jobs` / `find_local_replication_job`:
            # disabled jobs count too.
            raise PveError(500, "Cannot live-migrate replicated VM to node '{0}' - not a replication target. "
                                "Use 'force' to override.".format(target))
        smap = self._storage_map(v.get('targetstorage'), self.volumes(g))
        for vol in self.volumes(g):
            dst = smap.get(vol['storage'], vol['storage'])
            if not self.storage_on(dst, target):
                raise PveError(500, "storage '{0}' is not available on node '{1}'".format(dst, target))
            if dst != vol['storage'] and 'images' not in self.storages[dst]['content']:
                raise PveError(500, "storage '{0}' does not support vm images".format(dst))
        params = {k: val for k, val in v.items() if k not in ('node', 'vmid')}
        if g.ha_managed:
            return await self._hamigrate(g, target, user)
        return await self.start_migration(g, target, params, user, 'qmigrate')

    async def _hamigrate(self, g, target, user):
        """The hamigrate worker: runs `ha-manager migrate` (queues a CRM command) and ends OK at
        once (qemu-server src/PVE/API2/Qemu.pm / pve-container src/PVE/API2/LXC.pm `migrate_vm`)."""
        vt = 'VM' if self.kind(g) == 'qemu' else 'CT'

        async def body(write, upid):
            write('Requesting HA migration for {0} {1} to node {2}'.format(vt, g.vmid, target), stamp=False)
            self.queue_ha_move(g, target)
        return await self.run_task(g.node, 'hamigrate', g.vmid, user, body)

    # --- lxc migrate (fakepve's own routes call these by name) ---

    async def _lxc_migrate_check(self, user, v):
        ct = self._find_ct(v['node'], v['vmid'])
        self.need_quorum()
        self._ct_check_lock(ct)
        # pve-container src/PVE/API2/LXC.pm `migrate_vm_precondition` (PVE 9): only HA blockers;
        # unlike qemu, a node without blockers is not a key of not-allowed-nodes.
        data = {'running': 1 if self.guest_running(ct) else 0, 'allowed-nodes': [], 'not-allowed-nodes': {}}
        for node in sorted(self.nodes):
            if node == ct.node:
                continue
            blocking = self._ha_blockers(ct, node)
            if blocking:
                data['not-allowed-nodes'][node] = {'blocking-ha-resources': blocking}
            else:
                data['allowed-nodes'].append(node)
        if ct.ha_managed:
            data['dependent-ha-resources'] = self._ha_partners(ct, 'positive')
        return data

    async def _lxc_migrate(self, user, v):
        node, target = v['node'], v['target']
        self._check_target(node, target)
        ct = self._find_ct(node, v['vmid'])
        self._ct_check_lock(ct)
        if self.guest_running(ct) and not _flag(v.get('online', 0)) and not _flag(v.get('restart', 0)):
            raise PveError(500, "can't migrate running container without --online or --restart")
        params = {k: val for k, val in v.items() if k not in ('node', 'vmid')}
        if ct.ha_managed:
            return await self._hamigrate(ct, target, user)
        return await self.start_migration(ct, target, params, user, 'vzmigrate')

    # --- HA views ---

    def _ha_guests(self):
        return [g for g in self.all_guests() if g.ha_managed]

    def _ha_config(self, g):
        # GET /cluster/ha/resources returns resources.cfg as written, defaults not filled in
        # (pve-ha-manager src/PVE/API2/HA/Resources.pm `index`): `ha-manager add` writes
        # type and state.
        return {'sid': self.ha_sid(g), 'type': 'vm' if self.kind(g) == 'qemu' else 'ct',
                'state': 'started' if g.ha_state != 'stopped' else 'stopped',
                'digest': hashlib.sha1(self.ha_sid(g).encode()).hexdigest()}

    def _affinity_rules(self, g, affinity):
        """Enabled resource-affinity rules (PVE 9) with this guest and the wanted affinity."""
        sid = self.ha_sid(g)
        for rule in self.scenario['ha_rules']:
            members = [m.strip() for m in str(rule.get('resources', '')).split(',') if m.strip()]
            if rule.get('type') == 'resource-affinity' and rule.get('affinity') == affinity \
                    and not rule.get('disable') and sid in members:
                yield [m for m in members if m != sid]

    def _ha_guest(self, sid):
        m = re.fullmatch(r'(vm|ct):(\d+)', sid)
        g = self.guest(int(m.group(2))) if m else None
        return g if g is not None and g.ha_managed else None

    def _ha_partners(self, g, affinity):
        """pve-ha-manager src/PVE/HA/Config.pm `get_resource_motion_info`: the HA-managed
        partners of a rule, sorted (ResourceAffinity `get_affinitive_resources`)."""
        if not self.since('9.0'):
            return []
        return sorted({sid for members in self._affinity_rules(g, affinity) for sid in members
                       if self._ha_guest(sid) is not None})

    def _ha_blockers(self, g, node):
        """{sid, cause} that keep an HA guest off a node (pve-ha-manager Config.pm/Helpers.pm
        `get_resource_motion_info`): only for nodes whose HA state is online; a negative
        partner on that node, not mid-migration; and since PVE 9.2 (pve-ha-manager after
        5.2.0) a node its node-affinity rule does not allow, or with failback not among the
        rule's highest-priority nodes."""
        if not g.ha_managed or self.node_hastate(node) != 'online':
            return []
        out = []
        for sid in self._ha_partners(g, 'negative'):
            other = self._ha_guest(sid)
            if other.node == node and other.ha_target is None:
                out.append({'sid': sid, 'cause': 'resource-affinity'})
        if self.since('9.2'):
            allowed = self._node_affinity_nodes(g)
            if allowed is not None and node not in allowed:
                out.append({'sid': self.ha_sid(g), 'cause': 'node-affinity'})
        return out

    def _node_affinity_nodes(self, g):
        """Nodes an enabled node-affinity rule keeps the guest on (failback defaults to 1:
        the highest-priority nodes), or None without a rule."""
        sid = self.ha_sid(g)
        for rule in self.scenario['ha_rules']:
            if rule.get('type') != 'node-affinity' or rule.get('disable') or sid not in [
                    m.strip() for m in str(rule.get('resources', '')).split(',')]:
                continue
            prio = {}
            for item in str(rule.get('nodes', '')).split(','):
                name, _, level = item.strip().partition(':')
                prio[name] = int(level or 0)
            top = max(prio.values(), default=0)
            return {n for n, p in prio.items() if p == top}
        return None

    def _ha_lookup(self, sid):
        m = re.fullmatch(r'(?:(vm|ct):)?(\d+)', str(sid))
        g = self.guest(int(m.group(2))) if m else None
        if g is None or not g.ha_managed:
            raise PveError(500, "no such resource '{0}'".format(sid))
        return g

    async def _ha_resources(self, v, user):
        kind = v.get('type')
        return [self._ha_config(g) for g in self._ha_guests()
                if kind is None or self._ha_config(g)['type'] == kind]

    async def _content_list(self, v, user):
        """fakepve lists a storage's volumes from every guest's config whatever the node;
        on PVE a local storage on node X holds only the volumes of X's guests."""
        items = await super()._content_list(v, user)
        if self.is_shared(v['storage']):
            return items
        here = {g.vmid for g in self.all_guests() if g.node == v['node']}
        items = [i for i in items if i.get('vmid') is None or int(i['vmid']) in here]
        if self.since('9.2') and self.storages[v['storage']]['type'] == 'lvm':
            # pve-storage >= 9.1.5 LVMPlugin `list_images`: a qcow2 volume on (thick) LVM whose
            # LV is not active reports `approximate-size` instead of `size` (fix #6819).
            for item in items:
                if item['volid'].endswith('.qcow2'):
                    item['approximate-size'] = item.pop('size')
        return items

    async def _ha_rules(self, v, user):
        kind = v.get('type')
        return [dict(r, order=i + 1) for i, r in enumerate(self.scenario['ha_rules'])
                if kind is None or r.get('type') == kind]

    async def _ha_resource(self, v, user):
        return self._ha_config(self._ha_lookup(v['sid']))

    async def _ha_resource_migrate(self, v, user):
        g = self._ha_lookup(v['sid'])
        self.need_quorum()
        if v['node'] not in self.nodes:
            raise PveError(500, "no such cluster node '{0}'".format(v['node']))
        self.queue_ha_move(g, v['node'])
        return {'sid': self.ha_sid(g), 'requested-node': v['node'], 'comigrated-resources': [],
                'blocking-resources': []}

    def _master(self):
        return next((n for n in sorted(self.nodes) if self.node_online(n)), sorted(self.nodes)[0])

    async def _ha_status_current(self, v, user):
        now = int(time.time())
        when = time.strftime('%a %b %d %H:%M:%S %Y', time.localtime(now))
        master = self._master()
        data = [{'id': 'quorum', 'type': 'quorum', 'node': master, 'quorate': 1 if self.quorate else 0,
                 'status': 'OK' if self.quorate else 'No quorum on node {0}!'.format(master)}]
        if not self.ha_in_use():
            return data
        data.append({'id': 'master', 'type': 'master', 'node': master, 'timestamp': now,
                     'status': '{0} (active, {1})'.format(master, when)})
        data.append({'id': 'fencing', 'type': 'fencing', 'node': master, 'armed-state': 'armed',
                     'resource_mode': 'freeze', 'status': 'armed (CRM watchdog active)'})
        for n in sorted(self.nodes):
            if not self.node_online(n):
                text = '{0} (old timestamp - dead?, {1})'.format(n, when)
            elif self.nodes[n].get('hastate') == 'maintenance':
                text = '{0} (maintenance mode, watchdog active, {1})'.format(n, when)
            else:
                text = '{0} ({1}, {2})'.format(n, 'active' if any(g.node == n for g in self._ha_guests())
                                               else 'idle', when)
            data.append({'id': 'lrm:' + n, 'type': 'lrm', 'node': n, 'timestamp': now, 'status': text})
        for g in self._ha_guests():
            cfg = self._ha_config(g)
            entry = dict(cfg, id='service:' + cfg['sid'], type='service', node=g.node, crm_state=g.ha_state,
                         state=g.ha_state, request_state=cfg['state'],
                         status='{0} ({1}, {2})'.format(cfg['sid'], g.node, g.ha_state))
            entry.pop('digest', None)
            if g.ha_target:
                entry['target'] = g.ha_target
            data.append(entry)
        return data

    async def _ha_manager_status(self, v, user):
        now = self.crm_timestamp
        master = self._master()
        node_status = {n: ('unknown' if not self.node_online(n) else self.nodes[n].get('hastate') or 'online')
                       for n in sorted(self.nodes)}
        services = {}
        for g in self._ha_guests():
            s = {'node': g.node, 'state': g.ha_state, 'running': 1 if self.guest_running(g) else 0,
                 'uid': '{0:022x}'.format(g.vmid)}
            if g.ha_target:
                s['target'] = g.ha_target
            if g.maintenance_node:
                s['maintenance_node'] = g.maintenance_node
            services[self.ha_sid(g)] = s
        lrm = {n: ({'mode': 'maintenance', 'state': 'maintenance'} if node_status[n] == 'maintenance'
                   else {'mode': 'active', 'state': 'active' if any(g.node == n for g in self._ha_guests())
                         else 'wait_for_agent_lock'}) for n in sorted(self.nodes) if self.node_online(n)}
        for state in lrm.values():
            state.update(timestamp=now, results={})
        return {'manager_status': {'master_node': master, 'timestamp': now, 'node_status': node_status,
                                   'node_request': {n: {'maintenance': 1} for n, s in node_status.items()
                                                    if s == 'maintenance'},
                                   'service_status': services},
                'quorum': {'node': master, 'quorate': 1 if self.quorate else 0}, 'lrm_status': lrm}

    # ------------------------------------------------------------------ control (loop side)

    def add_path_failure(self, method, regex, status, message, times=1):
        re.compile(regex)
        self.path_failures.append({'method': method.upper(), 'regex': regex, 'status': int(status),
                                   'message': message, 'times': times})

    def add_task_failure(self, vmid, message, exitstatus='migration aborted'):
        self.find_guest(vmid)
        self.task_failures[int(vmid)].append((message, exitstatus))

    def set_node_state(self, node, online):
        if node not in self.nodes:
            raise KeyError('no node {0}'.format(node))
        self.nodes[node]['online'] = bool(online)
        self.note_usage()

    def set_lock(self, vmid, lock):
        g = self.find_guest(vmid)
        g.lock = lock or None
        if self.kind(g) == 'qemu':
            if lock:
                g.config['lock'] = lock
            else:
                g.config.pop('lock', None)

    def reset_requests(self):
        self.requests.clear()
        self.request_counts.clear()
        self.wire.clear()

    def state(self):
        return {'url': self.url, 'quorate': self.quorate, 'busy': self.busy(),
                'placement': {str(k): v for k, v in self.placement().items()},
                'node_usage': self.all_node_usage(),
                'guests': {str(g.vmid): self.guest_view(g) for g in self.all_guests()},
                'requests': {'{0} {1}'.format(m, p): c for (m, p), c in sorted(self.request_counts.items())},
                'requests_total': sum(self.request_counts.values()),
                'migrations': self.migrations, 'crm_log': self.crm_log[-200:], 'crs': self.crs}

    CONTROL_ACTIONS = ('set_node_offline', 'set_node_online', 'lose_quorum', 'restore_quorum', 'lock', 'unlock',
                       'set_ha_maintenance', 'fail', 'fail_task', 'set_crs', 'revoke_tickets', 'set_time_scale')

    def control(self, action, args=(), kwargs=None):
        """One control action by name (used by /_fake/control; FakeCluster has the same names)."""
        kwargs = kwargs or {}
        if action not in self.CONTROL_ACTIONS:
            raise KeyError('unknown action {0!r}; known: {1}'.format(action, ', '.join(self.CONTROL_ACTIONS)))
        table = {'set_node_offline': lambda node: self.set_node_state(node, False),
                 'set_node_online': lambda node: self.set_node_state(node, True),
                 'lose_quorum': self.lose_quorum, 'restore_quorum': self.regain_quorum,
                 'lock': self.set_lock, 'unlock': lambda vmid: self.set_lock(vmid, None),
                 'set_ha_maintenance': self.set_ha_maintenance, 'fail': self.add_path_failure,
                 'fail_task': self.add_task_failure, 'set_crs': lambda **kw: self.crs.update(kw),
                 'revoke_tickets': self.revoke_tickets,
                 'set_time_scale': lambda scale: setattr(self, 'time_scale', float(scale))}
        return table[action](*args, **kwargs)

    async def _fake_state(self, request):
        return web.json_response(self.state())

    async def _fake_reset(self, request):
        self.reset_requests()
        return web.json_response({'ok': 1})

    async def _fake_control(self, request):
        try:
            body = await request.json()
            result = self.control(body['action'], body.get('args', []), body.get('kwargs', {}))
        except (KeyError, TypeError, ValueError) as e:
            return web.json_response({'error': str(e)}, status=400)
        return web.json_response({'ok': 1, 'result': result})


# =====================================================================================
# 3. The test-facing wrapper
# =====================================================================================

class FakeCluster(object):
    """A ClusterPve served over TLS on 127.0.0.1 from a background thread.

        c = FakeCluster('small.json', time_scale=0.0); c.start(); ...; c.stop()
    or `with FakeCluster(...) as c:`. Every method is safe to call from the test thread:
    state is only read or changed on the server's loop.
    """

    def __init__(self, scenario, time_scale=0.0, ha_delay=1.0, user='root@pam', password='secret', port=0,
                 certdir=None):
        self.pve = ClusterPve(scenario, user=user, password=password, host='127.0.0.1', port=port)
        self.pve.time_scale = float(time_scale)
        self.pve.ha_delay_real = float(ha_delay)
        self.cafile = None
        self._certdir = certdir
        self._tmp = None
        self._loop = None
        self._thread = None

    # --- lifecycle ---

    def start(self):
        from fakepve.certs import make_cert
        if self._loop is not None:
            raise RuntimeError('already started')
        directory = self._certdir or tempfile.mkdtemp(prefix='fakecluster-')
        if not self._certdir:
            self._tmp = directory
        os.makedirs(directory, exist_ok=True)
        certfile, keyfile, _ = make_cert(directory, name='fakecluster', hosts=('127.0.0.1',))
        self.cafile = certfile
        self.keyfile = keyfile        # the web UI endpoint's tests serve the same pair, as PRS on a node does
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run():
            asyncio.set_event_loop(self._loop)
            self._loop.call_soon(ready.set)
            self._loop.run_forever()
        self._thread = threading.Thread(target=run, name='fakecluster', daemon=True)
        self._thread.start()
        ready.wait(10)
        try:
            self._run(self.pve.start(certfile, keyfile))
        except BaseException:
            self._halt()
            raise
        return self

    def stop(self):
        if self._loop is None:
            return
        try:
            self._run(self.pve.stop())
        finally:
            self._halt()
            if self._tmp:
                shutil.rmtree(self._tmp, ignore_errors=True)
                self._tmp = None

    def _halt(self):
        loop, self._loop = self._loop, None
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            loop.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _run(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _call(self, fn, *args, **kwargs):
        """fn(*args) on the server loop (directly if not started, or already on the loop)."""
        if self._loop is None or threading.current_thread() is self._thread:
            return fn(*args, **kwargs)

        async def run():
            return fn(*args, **kwargs)
        return self._run(run())

    # --- addresses and credentials ---

    @property
    def port(self):
        return self.pve.port

    @property
    def host(self):
        return '127.0.0.1:{0}'.format(self.pve.port)

    @property
    def url(self):
        return 'https://' + self.host

    @property
    def user(self):
        return self.pve.user

    @property
    def password(self):
        return self.pve.password

    def add_token(self, user, tokenid, secret):
        """An API token user@realm!tokenid with this secret (privsep is not modelled: full rights)."""
        self._call(self.pve.apitokens.__setitem__, '{0}!{1}'.format(user, tokenid), secret)

    def grant(self, user, path, *privs):
        """An ACL entry: user holds privs on path and below (once any grant exists, users
        without one hold nothing; root@pam holds everything)."""
        self._call(self.pve.grant, user, path, *privs)

    def add_user(self, user, password):
        self._call(self.pve.users.__setitem__, user, password)

    def verifications(self):
        """The verify-mode checks POST /access/ticket answered so far (ClusterPve._ticket)."""
        return self._call(lambda: list(self.pve.verifications))

    @property
    def ticket_ttl(self):
        return self.pve.ticket_ttl

    @ticket_ttl.setter
    def ticket_ttl(self, secs):
        # Applies to tickets issued from now on.
        self._call(setattr, self.pve, 'ticket_ttl', secs)

    def revoke_tickets(self):
        self._call(self.pve.revoke_tickets)

    @property
    def time_scale(self):
        return self.pve.time_scale

    @time_scale.setter
    def time_scale(self, value):
        self._call(setattr, self.pve, 'time_scale', float(value))

    @property
    def ha_delay(self):
        return self.pve.ha_delay_real

    @ha_delay.setter
    def ha_delay(self, value):
        self._call(setattr, self.pve, 'ha_delay_real', float(value))

    # --- inspection ---

    def placement(self):
        """{vmid: node} of every guest."""
        return self._call(self.pve.placement)

    def node_usage(self):
        """{node: {mem, maxmem, cpu_cores, maxcpu, assigned_mem, local_disk_used, local_disk_size, guests,
        running, online, hastate}}; bytes and host cores; only running guests count for mem/cpu."""
        return self._call(self.pve.all_node_usage)

    def guest(self, vmid):
        return self._call(lambda: self.pve.guest_view(self.pve.find_guest(vmid)))

    def guests(self):
        return self._call(lambda: {g.vmid: self.pve.guest_view(g) for g in self.pve.all_guests()})

    @property
    def requests(self):
        """(method, path) of every API request served, oldest first; path without /api2/json."""
        return self._call(lambda: [(m, self.pve.api_path(p)) for m, p, _ in self.pve.requests])

    @property
    def wire(self):
        """Every /api2/json request as sent and answered: dicts method, path, params, auth
        ('token', 'ticket', 'none'), csrf, status, data (see ClusterPve._wire_entry)."""
        return self._call(lambda: copy.deepcopy(self.pve.wire))

    def request_counts(self):
        """{(method, path): count}, unbounded (requests keeps the last 1,000,000)."""
        return self._call(lambda: dict(self.pve.request_counts))

    def reset_requests(self):
        self._call(self.pve.reset_requests)

    @property
    def migrations(self):
        """Completed real migrations: dicts vmid, type, source, target, kind (qmigrate|vzmigrate|ha), params,
        upid, duration (PVE seconds), time."""
        return self._call(lambda: copy.deepcopy(self.pve.migrations))

    def tasks(self, ttype=None):
        """Task records (upid, node, type, id, user, status, exitstatus, log), oldest first."""
        return self._call(lambda: [copy.deepcopy(t) for t in self.pve.tasklog if ttype in (None, t['type'])])

    def pool_comment(self, poolid):
        """The comment of a resource pool, "" without one, None if there is no such pool."""
        def read():
            if poolid not in self.pve.pools:
                return None
            return self.pve.pool_info.get(poolid, {}).get('comment') or ''
        return self._call(read)

    def set_pool(self, poolid, comment):
        """Create (or re-comment) a resource pool, as another client would."""
        def apply():
            self.pve.pools.setdefault(poolid, set())
            self.pve.pool_info.setdefault(poolid, {'comment': None, 'storage': set()})['comment'] = comment
        self._call(apply)

    def drop_pool(self, poolid):
        def apply():
            self.pve.pools.pop(poolid, None)
            self.pve.pool_info.pop(poolid, None)
        self._call(apply)

    def task_log(self, upid):
        return self._call(lambda: list(self.pve.tasks[upid]['log']))

    @property
    def crm_log(self):
        return self._call(lambda: list(self.pve.crm_log))

    def state(self):
        """What GET /_fake/state returns."""
        return self._call(self.pve.state)

    def busy(self):
        return self._call(self.pve.busy)

    def wait_idle(self, timeout=10.0):
        """Wait until no task runs and no HA move is queued; returns False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.busy():
                return True
            time.sleep(0.02)
        return False

    def wait_for(self, predicate, timeout=10.0, interval=0.02):
        """Poll predicate(self) until it is true; returns its last value."""
        deadline = time.monotonic() + timeout
        value = predicate(self)
        while not value and time.monotonic() < deadline:
            time.sleep(interval)
            value = predicate(self)
        return value

    # --- faults and scenario changes ---

    def fail(self, method, path_regex, status, message, times=1):
        """Answer requests (method or '*', path regex searched in the path without /api2/json) with an
        HTTP error; times=None fails every one. 595-599 get an empty body, as pveproxy sends.
        status HANG: answer only after `message` seconds; DROP: close the connection unanswered."""
        self._call(self.pve.add_path_failure, method, path_regex, status, message, times)

    def fail_task(self, vmid, message, exitstatus='migration aborted'):
        """The next migration task of vmid fails: log 'ERROR: migration aborted (...): message',
        exit status `exitstatus` (PVE's 'migration aborted'; None = the message itself)."""
        self._call(self.pve.add_task_failure, vmid, message, exitstatus)

    def set_node_offline(self, node):
        self._call(self.pve.set_node_state, node, False)

    def set_node_online(self, node):
        self._call(self.pve.set_node_state, node, True)

    def lose_quorum(self):
        self._call(self.pve.lose_quorum)

    def restore_quorum(self):
        self._call(self.pve.regain_quorum)

    def lock(self, vmid, lock='backup'):
        self._call(self.pve.set_lock, vmid, lock)

    def unlock(self, vmid):
        self._call(self.pve.set_lock, vmid, None)

    def refuse_ha(self, vmid):
        """The CRM ignores the next HA migration of this guest (as for a rule it breaks)."""
        self._call(self.pve.ha_refuse.add, int(vmid))

    def set_ha_maintenance(self, node, on=True):
        """Enable (or disable) HA maintenance: HA guests are moved away (back) by the HA stack."""
        if self._loop is None:
            raise RuntimeError('start() the cluster first: maintenance schedules HA moves')
        self._call(self.pve.set_ha_maintenance, node, on)

    def set_crs(self, **options):
        """Datacenter crs options, e.g. set_crs(**{'ha-auto-rebalance': 1})."""
        self._call(self.pve.crs.update, options)

    def set_status(self, vmid, status):
        """Start ('running') or stop ('stopped') a guest the way qm start/stop would."""
        def apply():
            g = self.pve.find_guest(vmid)
            g.status = status
            g.started_at = time.time() if status == 'running' else None
            self.pve.note_usage()
        self._call(apply)

    def set_usage(self, vmid, **usage):
        """Change a guest's usage: cpu (fraction of its vCPUs), mem_gib, memhost_gib, disk_gib."""
        def apply():
            g = self.pve.find_guest(vmid)
            for key, value in usage.items():
                if key == 'cpu':
                    g.usage['cpu'] = float(value)
                elif key in ('mem_gib', 'memhost_gib', 'disk_gib'):
                    g.usage[key[:-4] if key != 'disk_gib' else 'disk'] = _gib(value)
                else:
                    raise KeyError(key)
            self.pve.note_usage()
        self._call(apply)


# =====================================================================================
# 4. Command line
# =====================================================================================

def _serve(args):
    state_dir = os.path.abspath(args.state_dir)
    os.makedirs(state_dir, exist_ok=True)
    for name in ('ready', 'url'):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(state_dir, name))
    cluster = FakeCluster(args.scenario, time_scale=args.time_scale, ha_delay=args.ha_delay, port=args.port,
                          user=args.user, password=args.password, certdir=os.path.join(state_dir, 'pki'))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    cluster.start()
    try:
        shutil.copyfile(cluster.cafile, os.path.join(state_dir, 'ca.crt'))
        with open(os.path.join(state_dir, 'url.tmp'), 'w') as fh:
            fh.write(cluster.url + '\n')
        os.replace(os.path.join(state_dir, 'url.tmp'), os.path.join(state_dir, 'url'))
        with open(os.path.join(state_dir, 'ready'), 'w') as fh:
            fh.write('{0}\n'.format(os.getpid()))
        print('fakecluster serving {0} ({1}) state in {2}'.format(cluster.url, args.scenario, state_dir),
              file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(state_dir, 'ready'))
        cluster.stop()
    return 0


def _generate(args):
    options = {}
    for item in args.set or ():
        key, _, value = item.partition('=')
        options[key.replace('-', '_')] = json.loads(value)
    json.dump(generate_scenario(args.seed, args.nodes, args.guests, **options), sys.stdout, indent=1)
    sys.stdout.write('\n')
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog='fakecluster', description='A fake Proxmox VE 9 cluster for PRS tests.')
    sub = parser.add_subparsers(dest='command', required=True)
    serve = sub.add_parser('serve', help='serve a scenario until SIGTERM/SIGINT')
    serve.add_argument('scenario', help='scenario JSON file (or a name under tests/scenarios/)')
    serve.add_argument('--state-dir', required=True, help='writes url, ca.crt, then ready')
    serve.add_argument('--time-scale', type=float, default=0.0, help='real seconds per PVE second (0 = instant)')
    serve.add_argument('--ha-delay', type=float, default=1.0, help='real seconds before the HA stack acts')
    serve.add_argument('--port', type=int, default=0, help='0 = a free port')
    serve.add_argument('--user', default='root@pam')
    serve.add_argument('--password', default='secret')
    gen = sub.add_parser('generate', help='print a generated scenario')
    gen.add_argument('--seed', type=int, required=True)
    gen.add_argument('--nodes', type=int, default=4)
    gen.add_argument('--guests', type=int, default=20)
    gen.add_argument('--set', action='append', metavar='OPTION=JSON', help='generator option, e.g. ha=0.2')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='fakecluster: %(levelname)s %(message)s')
    return _serve(args) if args.command == 'serve' else _generate(args)


if __name__ == '__main__':
    sys.exit(main())
