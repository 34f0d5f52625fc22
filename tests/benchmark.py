#!/usr/bin/env python3
"""The PRS benchmark: how balanced, how many migrations, how much it costs to decide.

Run it with `tests/bench` (it prepares the virtual environments); the options:

  --quick              fewer instances and scenarios (about 3 minutes instead of about 15)
  --json FILE          also write every figure as one JSON document
  --only PART[,PART]   optimum, proxlb, scale (default: all three)
  --proxlb-python PY   the interpreter of the venv holding proxlb==2.3.0 (tests/bench sets it)
  --seeds N            instances per method in part 1 (default 10, quick 4)
  --milp-time-limit S  seconds per MILP (default 30)
  --serial             run ProxLB's scenarios one after the other (default: concurrently)

Part 1, optimum: small generated clusters (3-6 nodes, 15-40 guests, tests/fakecluster.py's
  generator), read through PRS's own collector from the fake, planned by PRS's plan() and
  solved exactly by a MILP (scipy.optimize.milp / HiGHS): the fewest migrations that bring the
  spread to at most balanciness under PRS's hard limits. The MILP checks the limits on the
  final placement only, where PRS checks them before every single move: it is a relaxation,
  so its optimum is a lower bound for any plan PRS could make.
Part 2, ProxLB: PRS and ProxLB 2.3.0 each run one real rebalance on a fresh copy of the same
  fake cluster (tests/fakecluster.py serve, instant tasks), then plan a second run (dry run).
Part 3, scale: plan() alone on 64-node clusters with 1,000 to 10,000 guests.

Not a test: pytest does not collect it (no test_ prefix), and tests/run does not run it.
"""

import argparse
import concurrent.futures
import dataclasses
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(TESTS_DIR)
EXECUTABLE = os.path.join(REPO_DIR, 'proxmox-rebalancing-service')
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

GiB = 1024 ** 3
BALANCINESS = 10.0
METHODS = ('memory', 'cpu', 'disk')
USER, PASSWORD = 'root@pam', 'secret'
HA_DELAY = 0.1          # real seconds before the fake's HA stack acts on a queued move
PROXLB_VERSION = '2.3.0'


# =====================================================================================
# The fake cluster as a separate process
# =====================================================================================

class FakeProcess:
    """A fake cluster serving one scenario in its own process; state and reset over HTTPS."""

    def __init__(self, scenario, workdir):
        self.dir = tempfile.mkdtemp(prefix='fake-', dir=workdir)
        path = os.path.join(self.dir, 'scenario.json')
        with open(path, 'w') as fh:
            json.dump(scenario, fh)
        self.state_dir = os.path.join(self.dir, 'state')
        self.log = open(os.path.join(self.dir, 'fake.log'), 'w')
        fake = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fakecluster.py')
        self.proc = subprocess.Popen([sys.executable, fake, 'serve', path,
                                      '--state-dir', self.state_dir, '--ha-delay', str(HA_DELAY),
                                      '--time-scale', '0'], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        ready = os.path.join(self.state_dir, 'ready')
        while not os.path.exists(ready):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError('the fake cluster did not start; see %s' % self.log.name)
            time.sleep(0.05)
        with open(os.path.join(self.state_dir, 'url')) as fh:
            self.url = fh.read().strip()
        self.port = int(self.url.rsplit(':', 1)[1])
        self.cafile = os.path.join(self.state_dir, 'ca.crt')
        import requests
        self.http = requests.Session()

    def state(self):
        r = self.http.get(self.url + '/_fake/state', timeout=120, verify=self.cafile)
        r.raise_for_status()
        return r.json()

    def reset_requests(self):
        self.http.post(self.url + '/_fake/reset-requests', timeout=60, verify=self.cafile).raise_for_status()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def load_prs():
    import prsmodule
    return prsmodule.prs


# =====================================================================================
# Shared helpers
# =====================================================================================

def apply_moves(prs, nodes, guests, moves):
    """The cluster as the next run would read it after the moves: guests on their targets,
    node metrics (used mode) shifted by what each guest brings along."""
    nodes = dict(nodes)
    guests = dict(guests)
    for m in moves:
        g = guests[m.vmid]
        for name, sign in ((g.node, -1), (m.target, 1)):
            n = nodes[name]
            mem = g.mem if g.running else 0
            cpu = g.cpu if g.running else 0.0
            nodes[name] = dataclasses.replace(n, mem=n.mem + sign * mem, cpu=n.cpu + sign * cpu,
                                              disk=n.disk + sign * g.disk)
        guests[m.vmid] = dataclasses.replace(g, node=m.target)
    return nodes, guests


def fmt(value, spec='.1f', none='-'):
    if value is None:
        return none
    if isinstance(value, str):
        return value
    return format(value, spec)


def table(headers, rows, title=None):
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    if title:
        out.append(title)
    for k, row in enumerate(cells):
        out.append('  '.join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if k == 0:
            out.append('  '.join('-' * w for w in widths))
    return '\n'.join(out)


def say(text=''):
    print(text, flush=True)


# =====================================================================================
# Part 1: plan quality against the optimum
# =====================================================================================

def instance_state(prs, scenario):
    """Nodes and guests of a scenario exactly as PRS reads them: its collector with local
    disks, and Proxmox's migration precondition for every VM (blockers, forbidden nodes)."""
    from fakecluster import FakeCluster
    with FakeCluster(scenario, time_scale=0.0, ha_delay=HA_DELAY) as c:
        cfg = prs.Config(path='benchmark', api_hosts=(prs.ApiHost('127.0.0.1', c.port),), api_user=USER,
                         api_pass=PASSWORD, verify=c.cafile)
        api = prs.Api(cfg)
        api.connect()
        snap = prs.collect(api, need_disks=True)
        policy = prs.Policy()
        guests = {vmid: prs.precheck(api, g, snap.nodes, policy) for vmid, g in snap.guests.items()}
    return snap.nodes, guests


class Limits:
    """PRS's hard limits (_Load.room_for) as linear rows over one node's final placement."""

    def __init__(self, prs, nodes, guests, policy):
        self.st = prs._Load(nodes, guests, policy)
        keep = 1.0 - policy.reserve
        st = self.st
        # (name, per-guest coefficient, current node total, limit); GiB keeps HiGHS well scaled.
        self.rows = [
            ('configured memory', lambda g: g.maxmem / GiB if g.running else 0.0,
             lambda n: st.commit[n] / GiB, lambda n: st.maxmem[n] * keep / GiB),
            ('host memory', lambda g: g.mem / GiB if g.running else 0.0,
             lambda n: st.mem[n] / GiB, lambda n: st.maxmem[n] * keep / GiB),
            ('local disk', lambda g: g.disk / GiB,
             lambda n: st.disk[n] / GiB, lambda n: st.maxdisk[n] * keep / GiB),
            ('balanced resource', lambda g: self.scaled_load(prs, g, policy),
             lambda n: self.scaled(st.load[n], policy), lambda n: self.scaled(st.cap[n], policy) * keep),
        ]

    @staticmethod
    def scaled(x, policy):
        return x if policy.method == 'cpu' else x / GiB

    def scaled_load(self, prs, g, policy):
        return self.scaled(prs.guest_load(g, policy), policy)


def solve_optimum(prs, nodes, guests, policy, time_limit, minimise_spread=False):
    """Fewest migrations to spread <= balanciness under PRS's limits (or, with
    minimise_spread, the smallest spread reachable at all). Returns a dict."""
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp

    lim = Limits(prs, nodes, guests, policy)
    st = lim.st
    roles = {n: prs.node_role(nodes[n], policy) for n in nodes}
    balanced = [n for n in sorted(nodes) if roles[n] == '' and st.cap[n] > 0]
    targets = [n for n in sorted(nodes) if roles[n] == '']
    movable = [g for g in sorted(guests.values(), key=lambda g: g.vmid)
               if roles.get(g.node) == '' and not prs.immovable_reason(g, policy, nodes)]
    var = {}
    for g in movable:
        for n in targets:
            if n == g.node or n not in g.forbidden:
                var[(g.vmid, n)] = len(var)
    nx = len(var)
    iu_max, iu_min = nx, nx + 1
    nv = nx + 2
    rows, lo, hi = [], [], []

    def row():
        r = np.zeros(nv)
        rows.append(r)
        return r
    for g in movable:                                   # every movable guest on exactly one node
        r = row()
        for n in targets:
            if (g.vmid, n) in var:
                r[var[(g.vmid, n)]] = 1
        lo.append(1)
        hi.append(1)
    for n in targets:                                   # hard limits on the final placement
        for _, coef, total, limit in lim.rows:
            r = row()
            here = sum(coef(g) for g in movable if g.node == n)
            for g in movable:
                if (g.vmid, n) in var:
                    r[var[(g.vmid, n)]] = coef(g)
            # A node already past a limit may not grow there (PRS never picks it as a target).
            bound = max(limit(n), total(n)) - total(n) + here
            lo.append(-np.inf)
            hi.append(bound + 1e-9)
    usage_const = {}
    for n in balanced:                                  # u_min <= usage(n) <= u_max
        cap = st.cap[n]
        here = sum(prs.guest_load(g, policy) for g in movable if g.node == n)
        usage_const[n] = 100.0 * (st.load[n] - here) / cap
        coeffs = {var[(g.vmid, n)]: 100.0 * prs.guest_load(g, policy) / cap for g in movable
                  if (g.vmid, n) in var}
        for sign, iu in ((1, iu_max), (-1, iu_min)):
            r = row()
            for i, c in coeffs.items():
                r[i] = -sign * c
            r[iu] = sign
            lo.append(sign * usage_const[n])
            hi.append(np.inf)
    c = np.zeros(nv)
    if minimise_spread:
        c[iu_max], c[iu_min] = 1.0, -1.0
    else:
        r = row()                                       # u_max - u_min <= balanciness
        r[iu_max], r[iu_min] = 1, -1
        lo.append(-np.inf)
        hi.append(policy.balanciness)
        for g in movable:
            c[var[(g.vmid, g.node)]] = -1.0             # maximise guests left in place
    integrality = np.ones(nv)
    integrality[iu_max] = integrality[iu_min] = 0
    bounds = Bounds(np.r_[np.zeros(nx), -1e4, -1e4], np.r_[np.ones(nx), 1e4, 1e4])
    t0 = time.perf_counter()
    res = milp(c, constraints=LinearConstraint(np.array(rows), lo, hi), integrality=integrality,
               bounds=bounds, options={'time_limit': time_limit, 'disp': False})
    seconds = time.perf_counter() - t0
    out = {'seconds': round(seconds, 3), 'status': res.status, 'message': res.message,
           'proven': res.status == 0, 'feasible': res.x is not None}
    if res.x is None:
        return out
    place = {}
    for (vmid, n), i in var.items():
        if res.x[i] > 0.5:
            place[vmid] = n
    moved = [vmid for vmid, n in place.items() if n != guests[vmid].node]
    load = dict(st.load)
    for vmid in moved:
        g = guests[vmid]
        x = prs.guest_load(g, policy)
        load[g.node] -= x
        load[place[vmid]] += x
    usages = [100.0 * load[n] / st.cap[n] for n in balanced]
    out.update(migrations=len(moved), gib=sum(prs.move_cost(guests[v]) for v in moved) / GiB,
               spread=prs.spread_of(usages), moved=sorted(moved))
    return out


def check_limits(prs, nodes, guests, policy, moves):
    """PRS's final placement against the MILP's limits (a sanity check of the model)."""
    lim = Limits(prs, nodes, guests, policy)
    final = {g.vmid: g.node for g in guests.values()}
    for m in moves:
        final[m.vmid] = m.target
    bad = []
    for n in nodes:
        for name, coef, total, limit in lim.rows:
            after = total(n) + sum(coef(g) for g in guests.values() if final[g.vmid] == n) \
                - sum(coef(g) for g in guests.values() if g.node == n)
            if after > max(limit(n), total(n)) + 1e-6:
                bad.append('%s %s' % (n, name))
    return bad


def optimum_instances(method, count):
    """Seeds and sizes of the small instances of one method: the first `count` seeds whose
    cluster needs rebalancing (spread above balanciness); balanced ones are counted as skipped."""
    from fakecluster import generate_scenario
    options = {'disk': {'local_disk': 0.5}}.get(method, {})
    seed = 0
    while True:
        seed += 1
        nodes = 3 + seed % 4
        guests = 15 + (seed * 7) % 26
        yield seed, nodes, guests, generate_scenario(seed, nodes, guests, **options)


def part_optimum(prs, args):
    n_inst = args.seeds or (4 if args.quick else 10)
    results = []
    say('== Part 1: plan quality against the optimum (MILP, scipy %s / HiGHS) ==' % _scipy_version())
    say('   %d instances per method, 3-6 nodes, 15-40 guests, balanciness %g, node_reserve 10 %%, '
        'MILP time limit %g s' % (n_inst, BALANCINESS, args.milp_time_limit))
    for method in METHODS:
        policy = prs.Policy(method=method, balanciness=BALANCINESS)
        found = skipped = 0
        gen = optimum_instances(method, n_inst)
        while found < n_inst:
            seed, n_nodes, n_guests, scenario = next(gen)
            nodes, guests = instance_state(prs, scenario)
            t0 = time.perf_counter()
            p = prs.plan(nodes, guests, policy)
            plan_ms = (time.perf_counter() - t0) * 1000
            if p.spread_before <= BALANCINESS:
                skipped += 1
                continue
            found += 1
            nodes2, guests2 = apply_moves(prs, nodes, guests, p.moves)
            again = prs.plan(nodes2, guests2, policy)
            opt = solve_optimum(prs, nodes, guests, policy, args.milp_time_limit)
            if not opt['feasible'] and opt['status'] == 2:      # infeasible: how low can it go?
                best = solve_optimum(prs, nodes, guests, policy, args.milp_time_limit, minimise_spread=True)
                opt['best_spread'] = best.get('spread')
                opt['best_spread_proven'] = best.get('proven')
            prs_moves = len(p.moves)
            rec = {'method': method, 'seed': seed, 'nodes': n_nodes, 'guests': n_guests,
                   'spread_before': round(p.spread_before, 2),
                   'prs': {'migrations': prs_moves, 'gib': round(sum(m.cost for m in p.moves) / GiB, 2),
                           'spread': round(p.spread_after, 2), 'plan_ms': round(plan_ms, 2),
                           'second_run_moves': len(again.moves), 'verdict': p.verdict,
                           'limit_violations': check_limits(prs, nodes, guests, policy, p.moves)},
                   'optimum': {k: (round(v, 2) if isinstance(v, float) else v)
                               for k, v in opt.items() if k not in ('message', 'moved')}}
            if opt.get('feasible'):
                m = opt['migrations']
                rec['ratio'] = round(prs_moves / m, 3) if m else (1.0 if prs_moves == 0 else None)
            results.append(rec)
        say()
        rows = []
        for r in (x for x in results if x['method'] == method):
            o, q = r['optimum'], r['prs']
            if o.get('feasible'):
                opt_txt = '%d%s' % (o['migrations'], '' if o['proven'] else ' (not proven optimal)')
                ospread, ogib = fmt(o['spread']), fmt(o['gib'])
            else:
                opt_txt = 'cannot reach %g' % BALANCINESS if o['status'] == 2 else 'no answer (%s)' % o['status']
                ospread = fmt(o.get('best_spread')) + (' (best)' if o.get('best_spread') is not None else '')
                ogib = '-'
            ratio = r.get('ratio')
            rows.append(['%d' % r['seed'], '%dx%d' % (r['nodes'], r['guests']), fmt(r['spread_before']),
                         q['migrations'], opt_txt, fmt(ratio, '.2f') if ratio is not None else '-',
                         fmt(q['gib']), ogib, fmt(q['spread']), ospread, q['second_run_moves'],
                         fmt(o['seconds'], '.2f')])
        say(table(['seed', 'nodes x guests', 'spread before', 'PRS moves', 'optimum moves', 'ratio',
                   'PRS GiB', 'opt GiB', 'PRS spread', 'opt spread', '2nd run', 'MILP s'], rows,
                  title='-- method %s (%d balanced seeds skipped) --' % (method, skipped)))
    say()
    summary = optimum_summary(results)
    say(table(['method', 'instances', 'optimum reaches 10', 'PRS reaches it too', 'moves PRS/opt (sum)',
               'worst ratio', 'GiB PRS/opt', 'not proven'], [
        [m, s['instances'], s['optimum_reaches'], s['prs_reaches_where_optimum_does'],
         '%d/%d = %s' % (s['prs_moves'], s['opt_moves'], fmt(s['moves_ratio'], '.2f')),
         fmt(s['worst_ratio'], '.2f'), '%s/%s' % (fmt(s['prs_gib'], '.0f'), fmt(s['opt_gib'], '.0f')),
         s['not_proven']] for m, s in summary.items()],
              title='-- summary (moves and GiB over the instances where both reach balanciness) --'))
    for m in METHODS:
        if summary[m]['stopped_short']:
            say('   %s: PRS stops above balanciness where the optimum reaches it: %s'
                % (m, '; '.join(summary[m]['stopped_short'])))
    return {'instances': results, 'summary': summary}


def optimum_summary(results):
    out = {}
    for method in METHODS + ('all',):
        rs = [r for r in results if method in ('all', r['method'])]
        feas = [r for r in rs if r['optimum'].get('feasible')]
        # Migrations are compared where both reach balanciness: a plan that stops short
        # is counted against the spread target, not rewarded for moving less.
        both = [r for r in feas if r['prs']['spread'] <= BALANCINESS + 1e-9]
        ratios = [r['ratio'] for r in both if r.get('ratio') is not None]
        prs_moves = sum(r['prs']['migrations'] for r in both)
        opt_moves = sum(r['optimum']['migrations'] for r in both)
        out[method] = {
            'instances': len(rs), 'optimum_reaches': len(feas),
            'prs_reaches_where_optimum_does': sum(1 for r in feas if r['prs']['spread'] <= BALANCINESS + 1e-9),
            'prs_moves': prs_moves, 'opt_moves': opt_moves,
            'moves_ratio': round(prs_moves / opt_moves, 3) if opt_moves else None,
            'worst_ratio': max(ratios) if ratios else None,
            'within_1_2': sum(1 for x in ratios if x <= 1.2 + 1e-9),
            'compared': len(both),
            'prs_gib': round(sum(r['prs']['gib'] for r in both), 1),
            'opt_gib': round(sum(r['optimum']['gib'] for r in both), 1),
            'stopped_short': ['seed %d: %.1f (optimum %d moves to %.1f)' % (
                r['seed'], r['prs']['spread'], r['optimum']['migrations'], r['optimum']['spread'])
                for r in feas if r['prs']['spread'] > BALANCINESS + 1e-9],
            'not_proven': sum(1 for r in rs if r['optimum'].get('feasible') and not r['optimum']['proven']),
            'second_run_moves': sum(r['prs']['second_run_moves'] for r in rs),
            'limit_violations': sum(len(r['prs']['limit_violations']) for r in rs),
        }
    return out


def _scipy_version():
    try:
        import scipy
        return scipy.__version__
    except ImportError:
        return '?'


# =====================================================================================
# Part 2: side by side with ProxLB
# =====================================================================================

# ProxLB's entry point, wrapped to count (or, for the dry second run, skip) its fixed sleeps.
# Its decisions do not depend on them: they only pace its API calls and its task polling.
PROXLB_WRAPPER = r'''
import atexit, runpy, sys, time
mode = sys.argv.pop(1)
real_sleep, slept = time.sleep, [0.0, 0]
def sleep(seconds):
    slept[0] += seconds
    slept[1] += 1
    if mode != "skip":
        real_sleep(seconds)
time.sleep = sleep
atexit.register(lambda: sys.stderr.write("BENCH-SLEPT %f %d\n" % (slept[0], slept[1])))
sys.argv = ["proxlb"] + sys.argv[1:]
runpy.run_module("proxlb", run_name="__main__", alter_sys=True)
'''

MIGRATE_POST = re.compile(r'^POST /(?:nodes/[^/]+/(?:qemu|lxc)/\d+/migrate|cluster/ha/resources/[^/]+/'
                          r'(?:migrate|relocate))$')


def usage_of(state, method):
    """Node usage (percent) in the balanced resource, from the fake's own accounting."""
    out = {}
    for name, u in state['node_usage'].items():
        if not u['online'] or u.get('hastate') == 'maintenance':
            continue
        if method == 'memory':
            out[name] = 100.0 * u['mem'] / u['maxmem']
        elif method == 'cpu':
            out[name] = 100.0 * u['cpu_cores'] / u['maxcpu']
        elif u['local_disk_size']:
            out[name] = 100.0 * u['local_disk_used'] / u['local_disk_size']
    return out


def over_capacity(state):
    """Nodes past 100 % of their memory (in use, or configured for their running guests)
    or of their local storage."""
    bad = []
    for name, u in state['node_usage'].items():
        if u['mem'] > u['maxmem'] or u['assigned_mem'] > u['maxmem'] or \
                (u['local_disk_size'] and u['local_disk_used'] > u['local_disk_size']):
            bad.append(name)
    return bad


def copy_bytes(guest):
    """What migrating a guest copies: the RAM of a running guest and its local volumes."""
    running = guest['status'] == 'running'
    mem = (guest['memhost'] if guest['type'] == 'qemu' else guest['mem']) if running else 0
    return mem + sum(d['size'] for d in guest['disks'] if not d['shared'] and not d['cdrom'])


def outcome(before, after, method):
    migs = after['migrations']
    spread_b = usage_of(before, method)
    spread_a = usage_of(after, method)
    return {
        'started': sum(c for k, c in after['requests'].items() if MIGRATE_POST.match(k)),
        'done': len(migs),
        'gib': round(sum(copy_bytes(before['guests'][str(m['vmid'])]) for m in migs) / GiB, 1),
        'spread_before': round(max(spread_b.values()) - min(spread_b.values()), 2),
        'spread': round(max(spread_a.values()) - min(spread_a.values()), 2),
        'over_capacity_before': len(over_capacity(before)),
        'over_capacity': len(over_capacity(after)),
        'requests': after['requests_total'],
        'requests_by_endpoint': endpoint_counts(after['requests']),
    }


def endpoint_counts(requests):
    """Request counts with node names, VMIDs and UPIDs folded, so the table stays short."""
    out = {}
    for key, n in requests.items():
        key = re.sub(r'/nodes/[^/]+', '/nodes/{node}', key)
        key = re.sub(r'/(qemu|lxc)/\d+', r'/\1/{vmid}', key)
        key = re.sub(r'/tasks/UPID:[^/]+', '/tasks/{upid}', key)
        key = re.sub(r'/resources/[a-z]+:\d+', '/resources/{sid}', key)
        key = re.sub(r'/storage/[^/]+', '/storage/{storage}', key)
        out[key] = out.get(key, 0) + n
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def run_prs(fake, method, workdir, dry_run):
    conf = os.path.join(fake.dir, 'prs.conf')
    with open(conf, 'w') as fh:
        fh.write('[proxmox]\napi_host = 127.0.0.1:%d\napi_user = %s\napi_pass = %s\nca_file = %s\n'
                 '[balancing]\nmethod = %s\nbalanciness = %g\ncooldown_hours = 0\n'
                 '[service]\ndaemon = 0\nstate_file = %s\n'
                 % (fake.port, USER, PASSWORD, fake.cafile, method, BALANCINESS,
                    os.path.join(fake.dir, 'state.json')))
    os.chmod(conf, 0o600)
    cmd = [sys.executable, EXECUTABLE, '-c', conf, '--once', '--json'] + (['--dry-run'] if dry_run else [])
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    try:
        doc = json.loads(p.stdout)
    except ValueError:
        doc = None
    return {'rc': p.returncode, 'wall': wall, 'doc': doc, 'stderr': p.stderr[-2000:]}


def run_proxlb(fake, method, python, dry_run):
    conf = os.path.join(fake.dir, 'proxlb.yaml')
    # Same method, balanciness and credentials as PRS. ProxLB's config takes no CA path, so its
    # verification is left on and requests gets the fake's CA through REQUESTS_CA_BUNDLE.
    # timeout 60 is PRS's default (ProxLB's own is 1 s). balance_types VMs only: PRS leaves
    # running containers alone by default (a restart migration is downtime), and ProxLB 2.3.0
    # never sees an HA container's migration finish (it looks for a qmigrate task, a container
    # gets a vzmigrate), so it would poll it max_job_validation (1800) x 5 s = 2.5 hours.
    # max_job_validation 60 (5 minutes) bounds any such wait; instant tasks never need it.
    with open(conf, 'w') as fh:
        fh.write('proxmox_api:\n  hosts: ["127.0.0.1:%d"]\n  user: "%s"\n  pass: "%s"\n'
                 '  ssl_verification: true\n  timeout: 60\n'
                 'proxmox_cluster:\n  maintenance_nodes: []\n  ignore_nodes: []\n'
                 'balancing:\n  enable: true\n  method: %s\n  mode: used\n  balanciness: %d\n'
                 '  balance_types: ["vm"]\n  max_job_validation: 60\n'
                 'service:\n  daemon: false\n  log_level: INFO\n'
                 % (fake.port, USER, PASSWORD, method, int(BALANCINESS)))
    env = dict(os.environ, REQUESTS_CA_BUNDLE=fake.cafile)
    cmd = [python, '-c', PROXLB_WRAPPER, 'skip' if dry_run else 'count', '-c', conf] + (['-d', '-j'] if dry_run else [])
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=7200, env=env)
    wall = time.perf_counter() - t0
    slept = re.findall(r'BENCH-SLEPT ([\d.]+) (\d+)', p.stderr)
    out = {'rc': p.returncode, 'wall': wall, 'slept': float(slept[-1][0]) if slept else None,
           'sleeps': int(slept[-1][1]) if slept else None,
           'stderr': '\n'.join(line for line in p.stderr.splitlines()[-15:])}
    if dry_run:
        text = p.stdout
        start = text.find('{')
        try:
            data, _ = json.JSONDecoder().raw_decode(text[start:]) if start >= 0 else (None, 0)
        except ValueError:
            data = None
        out['planned'] = None if data is None else sum(
            1 for g in data.get('guests', {}).values()
            if g.get('node_target') != g.get('node_current') and not g.get('ignore'))
    return out


def proxlb_scenarios(quick):
    if quick:
        return [(4, 40, 11, 'memory'), (8, 120, 12, 'memory')]
    return [(4, 40, 11, 'memory'), (8, 200, 12, 'memory'), (8, 200, 12, 'cpu'), (8, 200, 12, 'disk'),
            (16, 500, 13, 'memory'), (32, 2000, 14, 'memory')]


def one_tool_run(tool, scenario, method, workdir, proxlb_python):
    with FakeProcess(scenario, workdir) as fake:
        before = fake.state()
        fake.reset_requests()
        if tool == 'prs':
            first = run_prs(fake, method, workdir, dry_run=False)
        else:
            first = run_proxlb(fake, method, proxlb_python, dry_run=False)
        after = fake.state()
        rec = outcome(before, after, method)
        rec.update(rc=first['rc'], wall=round(first['wall'], 2))
        if tool == 'proxlb':
            rec.update(slept=round(first['slept'], 1) if first['slept'] is not None else None,
                       sleeps=first['sleeps'])
        if first['rc'] not in (0, 4):
            rec['error'] = first['stderr'][-1500:]
        fake.reset_requests()
        if tool == 'prs':
            second = run_prs(fake, method, workdir, dry_run=True)
            rec['second_run_moves'] = len(second['doc']['migrations']) if second['doc'] else None
        else:
            second = run_proxlb(fake, method, proxlb_python, dry_run=True)
            rec['second_run_moves'] = second.get('planned')
        rec['second_run_requests'] = fake.state()['requests_total']
        if rec['second_run_moves'] is None:
            rec['second_run_error'] = second['stderr'][-1500:]
        return rec


def part_proxlb(args, workdir):
    from fakecluster import generate_scenario
    say('== Part 2: side by side with ProxLB %s on the same fake cluster ==' % PROXLB_VERSION)
    python = args.proxlb_python
    problem = None
    if not python or not os.path.exists(python):
        problem = 'no ProxLB interpreter (run the benchmark through tests/bench)'
    else:
        v = subprocess.run([python, '-c', 'import importlib.metadata as m; print(m.version("proxlb"))'],
                           capture_output=True, text=True)
        if v.returncode != 0 or v.stdout.strip() != PROXLB_VERSION:
            problem = 'proxlb %s not importable from %s: %s' % (PROXLB_VERSION, python,
                                                               (v.stdout + v.stderr).strip()[-300:])
    if problem:
        say('   ProxLB not run: ' + problem)
    say('   instant tasks (time_scale 0), HA stack delay %.1f s, balanciness %g, mode used; both tools '
        'with their defaults otherwise' % (HA_DELAY, BALANCINESS))
    scen = proxlb_scenarios(args.quick)
    runs = []
    jobs = []
    for nodes, guests, seed, method in scen:
        scenario = generate_scenario(seed, nodes, guests)
        label = '%dx%d seed %d' % (nodes, guests, seed)
        jobs.append((label, nodes, guests, seed, method, scenario))
    results = {}
    for label, nodes, guests, seed, method, scenario in jobs:     # PRS alone on the machine
        say('   PRS    %-20s %-6s ...' % (label, method))
        results[(label, method, 'prs')] = one_tool_run('prs', scenario, method, workdir, None)
    if not problem:
        workers = 1 if args.serial else min(len(jobs), 3)
        say('   ProxLB: %d scenario%s, %s (its wall time is mostly fixed sleeps) ...'
            % (len(jobs), '' if len(jobs) == 1 else 's', 'one at a time' if workers == 1 else
               '%d at a time' % workers))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            futs = {}
            # Largest first, so the longest run starts at once.
            for job in sorted(jobs, key=lambda j: -j[2]):
                label, nodes, guests, seed, method, scenario = job
                futs[pool.submit(one_tool_run, 'proxlb', scenario, method, workdir, python)] = (label, method)
            for fut in concurrent.futures.as_completed(futs):
                label, method = futs[fut]
                try:
                    results[(label, method, 'proxlb')] = fut.result()
                except Exception as exc:   # reported, never a made-up number
                    results[(label, method, 'proxlb')] = {'error': '%s: %s' % (type(exc).__name__, exc)}
                say('   ProxLB %-20s %-6s done' % (label, method))
    rows = []
    for label, nodes, guests, seed, method, scenario in jobs:
        for tool in ('prs', 'proxlb'):
            r = results.get((label, method, tool))
            if r is None:
                rows.append([label, method, tool, 'not run'] + [''] * 9)
                continue
            rec = dict(r, scenario=label, nodes=nodes, guests=guests, seed=seed, method=method, tool=tool)
            runs.append(rec)
            if 'started' not in r:
                rows.append([label, method, tool, 'failed: ' + r.get('error', '')[:60]] + [''] * 9)
                continue
            wall = fmt(r['wall'], '.1f')
            if tool == 'proxlb' and r.get('slept') is not None:
                wall += ' (%.0f slept)' % r['slept']
            rows.append([label, method, 'PRS' if tool == 'prs' else 'ProxLB', r['started'], r['done'],
                         fmt(r['gib']), '%s -> %s' % (fmt(r['spread_before']), fmt(r['spread'])),
                         '%d -> %d' % (r['over_capacity_before'], r['over_capacity']), r['requests'], wall,
                         fmt(r['second_run_moves'], 'd'), r['rc']])
    say()
    say(table(['scenario', 'method', 'tool', 'started', 'done', 'GiB moved', 'spread', 'over cap.',
               'API requests', 'wall s', '2nd run moves', 'rc'], rows))
    for r in runs:
        for key in ('error', 'second_run_error'):
            if r.get(key):
                say('   %s %s %s %s:\n%s' % (r['tool'], r['scenario'], r['method'], key,
                                             '\n'.join('     ' + x for x in r[key].splitlines()[-12:])))
    for r in runs:
        if r.get('requests_by_endpoint'):
            top = list(r['requests_by_endpoint'].items())[:6]
            say('   requests %-6s %-14s %-6s %s' % (r['tool'], r['scenario'], r['method'],
                                                   ', '.join('%s %d' % kv for kv in top)))
    comparison = compare_tools(runs)
    if comparison:
        say()
        say(table(['scenario', 'method', 'spread PRS/ProxLB', 'moves PRS/ProxLB', 'requests PRS/ProxLB'],
                  [[c['scenario'], c['method'], '%s/%s' % (fmt(c['spread_prs']), fmt(c['spread_proxlb'])),
                    '%d/%d = %s' % (c['moves_prs'], c['moves_proxlb'], fmt(c['moves_ratio'], '.2f')),
                    '%d/%d = %s' % (c['requests_prs'], c['requests_proxlb'], fmt(c['requests_ratio'], '.3f'))]
                   for c in comparison], title='-- PRS against ProxLB (targets: spread no worse, '
                                               'moves <= 0.5x, requests <= 0.1x) --'))
    notes = ['ProxLB sleeps 0.1 s before each per-guest and per-node API call and 5 s between task polls; '
             '"slept" is the sum of its time.sleep calls (counted by a wrapper, not changed). Its second '
             'run (dry run, -d -j) skips them: only its plan is read there.',
             'GiB moved = RAM of running guests + local volumes of the guests migrated, the same formula '
             'for both tools; spread = max - min node usage in the balanced resource as the fake '
             'accounts it; over cap. = nodes past 100 % of memory (used or configured) or local disk.']
    notes.append('ProxLB is configured with balance_types [vm] (PRS leaves running containers alone by '
                 'default): with [vm, ct] ProxLB 2.3.0 hangs on the first HA container it moves, polling for '
                 'a qmigrate task where Proxmox runs a vzmigrate (up to 1800 polls x 5 s).')
    if not args.serial and not problem:
        notes.append('ProxLB scenarios ran concurrently (each against its own fake), PRS runs one at a '
                     'time before them.')
    for n in notes:
        say('   note: ' + n)
    return {'runs': runs, 'comparison': comparison, 'problem': problem, 'notes': notes}


def compare_tools(runs):
    by = {(r['scenario'], r['method'], r['tool']): r for r in runs}
    out = []
    for (scenario, method, tool), r in by.items():
        q = by.get((scenario, method, 'proxlb'))
        if tool != 'prs' or q is None or 'started' not in q or 'started' not in r:
            continue
        out.append({'scenario': scenario, 'method': method, 'spread_prs': r['spread'], 'spread_proxlb': q['spread'],
                    'moves_prs': r['done'], 'moves_proxlb': q['done'],
                    'moves_ratio': round(r['done'] / q['done'], 3) if q['done'] else None,
                    'requests_prs': r['requests'], 'requests_proxlb': q['requests'],
                    'requests_ratio': round(r['requests'] / q['requests'], 4) if q['requests'] else None,
                    'spread_no_worse': r['spread'] <= q['spread'] + 1e-9,
                    'moves_at_most_half': q['done'] > 0 and r['done'] <= 0.5 * q['done'],
                    'requests_at_most_tenth': q['requests'] > 0 and r['requests'] <= 0.1 * q['requests']})
    return out


# =====================================================================================
# Part 3: scale
# =====================================================================================

NODE_SHAPES = ((16, 64), (24, 128), (32, 128), (32, 192), (48, 256), (64, 384), (64, 512))
MEM_SIZES = (0.5, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


def scale_cluster(prs, seed, n_nodes, n_guests):
    """A big cluster built directly as Node/Guest (the fake's generator, in bulk): mixed node
    sizes, long-tailed guest memory, skewed CPU, 15 % of guests with local disks, a quarter of
    the nodes overloaded, a few empty. Guest sizes are scaled so that running guests take at
    most half of the cluster's memory and CPU and local disks 40 % of local storage, and no
    node is filled past 85 % of memory or local storage: a balanced placement exists."""
    rng = random.Random(seed)
    shapes = [NODE_SHAPES[rng.randrange(len(NODE_SHAPES))] for _ in range(n_nodes)]
    maxdisk = [rng.choice((1000, 2000, 4000)) * GiB for _ in range(n_nodes)]
    raw = []
    for _ in range(n_guests):
        lxc = rng.random() < 0.15
        size = math.exp(rng.gauss(math.log(3.0), 1.0)) / (3 if lxc else 1)
        running = rng.random() >= 0.12
        vcpus = rng.choice((1, 2, 2, 2, 4, 4, 4, 8, 8, 16))
        raw.append({'lxc': lxc, 'mem': min(MEM_SIZES, key=lambda s: abs(s - size)) * GiB, 'running': running,
                    'vcpus': vcpus, 'cpu': min(1.0, rng.betavariate(0.7, 4.0)) * vcpus if running else 0.0,
                    'used': rng.uniform(0.3, 0.95),
                    'disk': rng.choice((8, 16, 32, 50, 64, 100)) * GiB if rng.random() < 0.15 else 0,
                    'template': not lxc and not running and rng.random() < 0.2,
                    'lock': 'backup' if rng.random() < 0.02 else ''})
    mem_f = min(1.0, 0.5 * sum(m for _, m in shapes) * GiB / sum(r['mem'] for r in raw if r['running']))
    cpu_f = min(1.0, 0.45 * sum(c for c, _ in shapes) / (sum(r['cpu'] for r in raw) or 1))
    disk_f = min(1.0, 0.4 * sum(maxdisk) / (sum(r['disk'] for r in raw) or 1))
    order = list(range(n_nodes))
    rng.shuffle(order)
    empty = set(order[:max(1, n_nodes // 16)])
    over = set(order[len(empty):len(empty) + n_nodes // 4])
    usable = [i for i in range(n_nodes) if i not in empty]
    weight = [6.0 if i in over else 1.0 for i in usable]
    commit = [0] * n_nodes
    node_mem = [int((1.5 + rng.random()) * GiB) for _ in range(n_nodes)]
    node_cpu = [rng.uniform(0.1, 0.6) for _ in range(n_nodes)]
    node_disk = [2 * GiB] * n_nodes
    guests = {}
    for k, r in enumerate(raw):
        maxmem = max(512 * 1024 ** 2, int(r['mem'] * mem_f) // 1024 ** 2 * 1024 ** 2)
        mem = int(maxmem * r['used']) if r['running'] else 0
        cpu = r['cpu'] * cpu_f
        disk = int(r['disk'] * disk_f) // GiB * GiB
        need = maxmem if r['running'] else 0

        def fits(i):
            return commit[i] + need <= 0.85 * shapes[i][1] * GiB and node_disk[i] + disk <= 0.85 * maxdisk[i]
        for _ in range(20):
            i = rng.choices(usable, weight)[0]
            if fits(i):
                break
        else:
            i = min(usable, key=lambda j: commit[j] / shapes[j][1] + node_disk[j] / maxdisk[j])
        commit[i] += need
        node_mem[i] += mem
        node_cpu[i] += cpu
        node_disk[i] += disk
        vmid = 100 + k
        guests[vmid] = prs.Guest(vmid=vmid, name='g%d' % vmid, kind='lxc' if r['lxc'] else 'qemu',
                                 node='pve%d' % (i + 1), running=r['running'], template=r['template'],
                                 lock=r['lock'], maxmem=maxmem, mem=mem, maxcpu=float(r['vcpus']), cpu=cpu,
                                 disk=disk)
    nodes = {}
    for i, (cpus, mem_gib) in enumerate(shapes):
        name = 'pve%d' % (i + 1)
        nodes[name] = prs.Node(name=name, maxcpu=float(cpus), cpu=node_cpu[i], maxmem=mem_gib * GiB,
                               mem=node_mem[i], maxdisk=maxdisk[i], disk=node_disk[i])
    return nodes, guests


def part_scale(prs, args):
    sizes = (1000, 2000, 5000, 10000)
    repeats = 3 if args.quick else 5
    methods = ('memory',) if args.quick else METHODS
    say('== Part 3: scale: plan() alone on 64 nodes (%s, %s) ==' % (platform.python_implementation(),
                                                                      platform.python_version()))
    say('   median of %d runs; peak MiB = tracemalloc peak of what plan() allocates (a separate run); '
        'input MiB = the Node/Guest objects it reads' % repeats)
    rows, recs = [], []
    for method in methods:
        policy = prs.Policy(method=method, balanciness=BALANCINESS)
        for n in sizes:
            tracemalloc.start()
            nodes, guests = scale_cluster(prs, 7, 64, n)
            input_mib = tracemalloc.get_traced_memory()[0] / 2 ** 20
            tracemalloc.stop()
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                p = prs.plan(nodes, guests, policy)
                times.append(time.perf_counter() - t0)
            tracemalloc.start()
            prs.plan(nodes, guests, policy)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            nodes2, guests2 = apply_moves(prs, nodes, guests, p.moves)
            again = prs.plan(nodes2, guests2, policy)
            rec = {'method': method, 'nodes': 64, 'guests': n, 'median_s': round(statistics.median(times), 4),
                   'min_s': round(min(times), 4), 'peak_mib': round(peak / 2 ** 20, 2),
                   'input_mib': round(input_mib, 1), 'moves': len(p.moves),
                   'spread_before': round(p.spread_before, 2), 'spread_after': round(p.spread_after, 2),
                   'second_run_moves': len(again.moves), 'reached': p.spread_after <= BALANCINESS + 1e-9,
                   'verdict': p.verdict}
            recs.append(rec)
        base = next(r for r in recs if r['method'] == method and r['guests'] == sizes[0])
        for r in (x for x in recs if x['method'] == method):
            r['growth_exponent'] = (round(math.log(r['median_s'] / base['median_s']) / math.log(r['guests'] /
                                                                                                base['guests']), 2)
                                    if r['guests'] != base['guests'] and base['median_s'] > 0 else None)
            rows.append([method, r['guests'], fmt(r['median_s'] * 1000, '.0f'), fmt(r['min_s'] * 1000, '.0f'),
                         fmt(r['peak_mib'], '.1f'), fmt(r['input_mib'], '.1f'),
                         r['moves'], '%s -> %s%s' % (fmt(r['spread_before']), fmt(r['spread_after']),
                                                     '' if r['reached'] else ' (stops above %g)' % BALANCINESS),
                         r['second_run_moves'], fmt(r['growth_exponent'], '.2f')])
    say(table(['method', 'guests', 'median ms', 'min ms', 'peak MiB', 'input MiB', 'moves', 'spread', '2nd run',
               'growth exp.'], rows))
    say('   growth exp. = log(t / t_1000) / log(n / 1000): 1.0 is linear')
    return {'runs': recs}


# =====================================================================================
# Targets and main
# =====================================================================================

def targets(report):
    out = []

    def add(name, ok, detail):
        out.append({'target': name, 'met': ok, 'detail': detail})
    opt = report.get('optimum')
    if opt:
        s = opt['summary']['all']
        worst = s['worst_ratio']
        add('migrations within 1.2x of the optimum (small instances)',
            worst is not None and worst <= 1.2 + 1e-9,
            'sum %d vs %d (%.2fx); worst instance %.2fx; %d/%d instances within 1.2x'
            % (s['prs_moves'], s['opt_moves'], s['moves_ratio'] or 0, worst or 0, s['within_1_2'],
               s['compared']))
        add('final spread <= balanciness wherever the optimum reaches it',
            s['prs_reaches_where_optimum_does'] == s['optimum_reaches'],
            '%d of %d instances; short: %s' % (
                s['prs_reaches_where_optimum_does'], s['optimum_reaches'],
                '; '.join('%s %s' % (m, x) for m in METHODS for x in opt['summary'][m]['stopped_short'])
                or 'none'))
    px = report.get('proxlb')
    if px and px['comparison']:
        cs = px['comparison']
        add('spread no worse than ProxLB', all(c['spread_no_worse'] for c in cs),
            '; '.join('%s %s: %s vs %s' % (c['scenario'], c['method'], fmt(c['spread_prs']),
                                           fmt(c['spread_proxlb'])) for c in cs))
        add('at most half of ProxLB\'s migrations', all(c['moves_at_most_half'] for c in cs),
            '; '.join('%s %s: %d vs %d' % (c['scenario'], c['method'], c['moves_prs'], c['moves_proxlb'])
                      for c in cs))
        add('at most a tenth of ProxLB\'s API requests', all(c['requests_at_most_tenth'] for c in cs),
            '; '.join('%s %s: %d vs %d' % (c['scenario'], c['method'], c['requests_prs'], c['requests_proxlb'])
                      for c in cs))
    elif px:
        add('side by side with ProxLB', False, px.get('problem') or 'no comparable run')
    sc = report.get('scale')
    if sc:
        big = [r for r in sc['runs'] if r['guests'] == 10000]
        add('planning 64 x 10,000 in under 1 s', all(r['median_s'] < 1.0 for r in big),
            ', '.join('%s %.0f ms' % (r['method'], r['median_s'] * 1000) for r in big))
        add('planning memory under 100 MB', all(r['peak_mib'] < 100 for r in sc['runs']),
            ', '.join('%s %.1f MiB' % (r['method'], r['peak_mib']) for r in big))
        short = [r for r in sc['runs'] if not r['reached']]
        add('scale plans reach balanciness (context for the timings)', not short,
            ', '.join('%s %d: %.1f' % (r['method'], r['guests'], r['spread_after']) for r in short) or 'all')
        add('near-linear growth 1,000 -> 10,000 guests', all(r['growth_exponent'] <= 1.3 for r in big),
            ', '.join('%s exponent %.2f' % (r['method'], r['growth_exponent']) for r in big))
    second = []
    if opt:
        second.append(('small instances', opt['summary']['all']['second_run_moves']))
    if px:
        second.append(('fake clusters', sum(r.get('second_run_moves') or 0 for r in px['runs'] if r['tool'] == 'prs')))
    if sc:
        second.append(('scale', sum(r['second_run_moves'] for r in sc['runs'])))
    if second:
        add('a second run plans zero moves (PRS)', all(n == 0 for _, n in second),
            ', '.join('%s: %d' % s for s in second))
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog='tests/bench', description=__doc__.split('\n\n')[0])
    ap.add_argument('--quick', action='store_true', help='fewer instances and scenarios (~3 minutes)')
    ap.add_argument('--json', metavar='FILE', help='write all figures as JSON to FILE')
    ap.add_argument('--only', default='optimum,proxlb,scale', help='comma list of optimum, proxlb, scale')
    ap.add_argument('--proxlb-python', help='python of the venv with proxlb==%s' % PROXLB_VERSION)
    ap.add_argument('--seeds', type=int, default=0, help='instances per method in part 1')
    ap.add_argument('--milp-time-limit', type=float, default=30.0, help='seconds per MILP')
    ap.add_argument('--serial', action='store_true', help='run ProxLB scenarios one at a time')
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.only.split(',') if p.strip()]
    unknown = set(parts) - {'optimum', 'proxlb', 'scale'}
    if unknown:
        ap.error('unknown part(s): %s' % ', '.join(sorted(unknown)))
    prs = load_prs()
    started = time.perf_counter()
    report = {'prs_version': prs.__version__, 'proxlb_version': PROXLB_VERSION, 'quick': args.quick,
              'machine': {'cpus': os.cpu_count(), 'python': platform.python_version(),
                          'platform': platform.platform()}, 'balanciness': BALANCINESS}
    workdir = tempfile.mkdtemp(prefix='prs-bench-')
    try:
        if 'optimum' in parts:
            report['optimum'] = part_optimum(prs, args)
            say()
        if 'scale' in parts:
            report['scale'] = part_scale(prs, args)
            say()
        if 'proxlb' in parts:
            report['proxlb'] = part_proxlb(args, workdir)
            say()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report['targets'] = targets(report)
    report['seconds'] = round(time.perf_counter() - started, 1)
    say(table(['target', 'met', 'figures'], [[t['target'], 'yes' if t['met'] else 'NO', t['detail']]
                                              for t in report['targets']], title='== Targets =='))
    say('benchmark took %.0f s' % report['seconds'])
    if args.json:
        with open(args.json, 'w') as fh:
            json.dump(report, fh, indent=1, default=str)
        say('JSON written to %s' % args.json)
    return 0


if __name__ == '__main__':
    sys.exit(main())
