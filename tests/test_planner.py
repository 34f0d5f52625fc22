"""The planning core, by property over random clusters (hypothesis) and by example."""

import dataclasses
import itertools
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prsmodule import prs

GIB = prs.GIB
Node, Guest, Policy = prs.Node, prs.Guest, prs.Policy


def cluster(node_specs, guests, base_mem=2 * GIB):
    """Nodes whose metrics are what their running guests use, plus a base."""
    nodes = {}
    for name, spec in node_specs.items():
        on = [g for g in guests.values() if g.node == name]
        nodes[name] = Node(
            name, online=spec.get("online", True), maxcpu=spec.get("maxcpu", 32),
            cpu=0.5 + sum(g.cpu for g in on if g.running),
            maxmem=spec.get("maxmem", 128 * GIB),
            mem=base_mem + sum(g.mem for g in on if g.running),
            maxdisk=spec.get("maxdisk", 2000 * GIB), disk=sum(g.disk for g in on),
            ha_maintenance=spec.get("ha_maintenance", False))
    return nodes


def apply(nodes, guests, plan):
    """The cluster after the plan, with node metrics following the guests."""
    moved = dict(guests)
    for m in plan.moves:
        moved[m.vmid] = dataclasses.replace(moved[m.vmid], node=m.target)
    specs = {n.name: {"online": n.online, "maxcpu": n.maxcpu, "maxmem": n.maxmem,
                      "maxdisk": n.maxdisk, "ha_maintenance": n.ha_maintenance} for n in nodes.values()}
    return cluster(specs, moved), moved


@st.composite
def clusters(draw):
    n = draw(st.integers(2, 7))
    specs = {}
    for i in range(n):
        specs["pve%d" % (i + 1)] = {
            "maxmem": draw(st.sampled_from([32, 64, 128, 256])) * GIB,
            "maxcpu": draw(st.sampled_from([8, 16, 32, 64])),
            "maxdisk": draw(st.sampled_from([500, 1000, 4000])) * GIB,
            "online": draw(st.booleans()) if i == n - 1 and n > 2 else True,
        }
    names = sorted(specs)
    guests = {}
    for i in range(draw(st.integers(0, 40))):
        vmid = 100 + i
        maxmem = draw(st.sampled_from([0.5, 1, 2, 4, 8, 16, 32])) * GIB
        running = draw(st.booleans()) or draw(st.booleans())
        guests[vmid] = Guest(
            vmid, "g%d" % (vmid % 7),  # names repeat on purpose: guests are keyed by VMID
            draw(st.sampled_from(["qemu", "qemu", "qemu", "lxc"])),
            draw(st.sampled_from(names[: max(1, len(names) // 2)] + names)),
            running=running, maxmem=int(maxmem),
            mem=int(maxmem * draw(st.floats(0.1, 1.0))) if running else 0,
            maxcpu=draw(st.sampled_from([1, 2, 4, 8])),
            cpu=draw(st.floats(0, 4)) if running else 0.0,
            disk=draw(st.sampled_from([0, 0, 10, 50, 200])) * GIB,
            template=draw(st.integers(0, 15)) == 0, lock="backup" if draw(st.integers(0, 15)) == 0 else "",
            ha=draw(st.integers(0, 6)) == 0, hastate="started")
    policy = Policy(
        method=draw(st.sampled_from(prs.METHODS)), mode=draw(st.sampled_from(prs.MODES)),
        balanciness=draw(st.sampled_from([5.0, 10.0, 20.0])),
        reserve=draw(st.sampled_from([0.0, 0.1])),
        ignore_nodes=frozenset(draw(st.lists(st.sampled_from(names), max_size=1))),
        ignore_vms=frozenset(draw(st.lists(st.sampled_from(["100", "101", "g3"]), max_size=2))),
        migrate_containers=draw(st.booleans()), max_migrations=draw(st.sampled_from([0, 0, 3])))
    return cluster(specs, guests), guests, policy


def usage(nodes, guests, policy):
    load = prs._Load(nodes, guests, policy)
    return {n: load.usage(n) for n in nodes}, load


def balanced_names(nodes, policy):
    return [n for n in nodes if prs.node_role(nodes[n], policy) == "" and
            prs.node_capacity(nodes[n], policy) > 0]


PROPS = settings(max_examples=int(os.environ.get("PRS_EXAMPLES", "150")), deadline=None, derandomize=not os.environ.get("PRS_EXAMPLES"),
                suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(clusters())
def test_moves_are_safe_and_allowed(data):
    nodes, guests, policy = data
    plan = prs.plan(nodes, guests, policy)
    seen = set()
    for m in plan.moves:
        g = guests[m.vmid]
        assert m.vmid not in seen, "a guest moves at most once"
        seen.add(m.vmid)
        assert m.source == g.node and m.target != m.source
        assert prs.immovable_reason(g, policy, nodes) == "", "only movable guests move"
        assert prs.node_role(nodes[m.target], policy) == "", "never onto ignored/offline/drained nodes"
    if policy.max_migrations:
        assert len(plan.moves) <= policy.max_migrations
    # Replay the plan move by move: every target stays within capacity minus reserve in
    # each resource the moved guest adds to.
    keep = 1 - policy.reserve
    current_nodes, current_guests = nodes, guests
    for i, m in enumerate(plan.moves):
        g = guests[m.vmid]
        step = dataclasses.replace(plan, moves=plan.moves[i:i + 1])
        current_nodes, current_guests = apply(current_nodes, current_guests, step)
        _, load = usage(current_nodes, current_guests, policy)
        n = current_nodes[m.target]
        if g.running:
            assert load.commit[m.target] <= n.maxmem * keep + 1, "configured memory fits"
            assert n.mem <= n.maxmem * keep + 1, "used memory fits"
        if g.disk:
            assert n.disk <= n.maxdisk * keep + 1, "local disks fit"
        if prs.guest_load(g, policy):
            assert load.load[m.target] <= load.cap[m.target] * keep + 1e-6


@PROPS
@given(clusters())
def test_balance_improves_and_stops_at_the_threshold(data):
    nodes, guests, policy = data
    plan = prs.plan(nodes, guests, policy)
    names = balanced_names(nodes, policy)
    before, _ = usage(nodes, guests, policy)
    after_nodes, after_guests = apply(nodes, guests, plan)
    after, _ = usage(after_nodes, after_guests, policy)
    spread_before = prs.spread_of(before[n] for n in names)
    spread_after = prs.spread_of(after[n] for n in names)
    assert spread_after <= spread_before + 1e-6, "the spread never grows"
    assert spread_after == pytest.approx(plan.spread_after, abs=1e-6), "the plan predicts the result"
    if spread_before <= policy.balanciness:
        assert plan.moves == (), "no migration when nothing needs it"
    if spread_after > policy.balanciness and names and len(names) > 1:
        assert any(why in plan.verdict for why in ("no further move", "max_migrations",
                                                   "the lowest the search found")), plan.verdict


def safe_spread(nodes, guests, policy, moves, names):
    """The spread after the moves in this order, or None if one of them finds no room on
    its target when it runs (or its guest is not where the move starts)."""
    load, placed = prs._Load(nodes, guests, policy), dict(guests)
    for m in moves:
        g = placed[m.vmid]
        if g.node != m.source or load.room_for(g, m.target):
            return None
        load.apply(g, m.target)
        placed[m.vmid] = dataclasses.replace(g, node=m.target)
    return prs.spread_of(load.usage(n) for n in names)


@PROPS
@given(clusters())
def test_a_plan_improves_the_balance_by_more_than_noise(data):
    # Moves may make room for each other (a chain), so a single move need not improve
    # the balance; the plan as a whole must, by at least MIN_GAIN, and move a guest once.
    nodes, guests, policy = data
    plan = prs.plan(nodes, guests, policy)
    for m in plan.moves:                 # a guest moves once, or twice with a stop-over
        legs = [n for n in plan.moves if n.vmid == m.vmid]
        assert len(legs) == 1 or len(legs) == 2 and legs[0].reason.startswith("stop-over"), plan.moves
    if not plan.moves or any(m.drain for m in plan.moves):
        return
    assert plan.spread_after <= plan.spread_before - prs.MIN_GAIN + 1e-9


@PROPS
@given(clusters())
def test_idempotent_and_deterministic(data):
    nodes, guests, policy = data
    plan = prs.plan(nodes, guests, policy)
    assert prs.plan(nodes, guests, policy) == plan
    after_nodes, after_guests = apply(nodes, guests, plan)
    unlimited = dataclasses.replace(policy, max_migrations=0)
    if policy.max_migrations:
        return
    again = prs.plan(after_nodes, after_guests, unlimited)
    if plan.spread_after <= policy.balanciness:
        assert again.moves == ()
    elif again.moves:
        # Out of reach, a later run may still find a better end state (the search is not
        # exhaustive), but only a real one: never migrations at the same spread (churn).
        assert again.spread_after <= plan.spread_after - prs.MIN_GAIN + 1e-9


@PROPS
@given(clusters(), st.data())
def test_drain_empties_the_node_or_says_why(data, draw):
    nodes, guests, policy = data
    online = [n for n in sorted(nodes) if nodes[n].online and n not in policy.ignore_nodes]
    if len(online) < 2:
        return
    victim = draw.draw(st.sampled_from(online))
    policy = dataclasses.replace(policy, drain_nodes=frozenset([victim]), max_migrations=0)
    plan = prs.plan(nodes, guests, policy)
    on_victim = {g.vmid for g in guests.values() if g.node == victim}
    leaving = {m.vmid for m in plan.moves if m.source == victim}
    reported = {s.vmid for s in plan.stuck}
    assert leaving | reported == on_victim and not leaving & reported
    assert all(m.target != victim for m in plan.moves), "nothing moves onto a drained node"
    assert all(s.reason for s in plan.stuck)
    assert all(m.source == victim for m in plan.moves if m.drain)
    assert all(m.source != victim for m in plan.moves if not m.drain)


def simple(loads, size=None, maxmem=100 * GIB):
    """Nodes n0.. with equal capacity holding guests of the given sizes (GiB of memory)."""
    guests, vmid = {}, 100
    for i, sizes in enumerate(loads):
        for s in sizes:
            guests[vmid] = Guest(vmid, "vm%d" % vmid, "qemu", "n%d" % i, maxmem=int(s * GIB),
                                 mem=int(s * GIB), maxcpu=1, cpu=0.1)
            vmid += 1
    specs = {"n%d" % i: {"maxmem": maxmem} for i in range(len(loads))}
    return cluster(specs, guests, base_mem=0), guests


def test_already_balanced_says_why():
    nodes, guests = simple([[30], [34], [26]])
    plan = prs.plan(nodes, guests, Policy(reserve=0))
    assert plan.moves == () and plan.verdict == "spread 8.0 points <= balanciness 10: nothing to do"


def test_one_hot_node_fewest_moves():
    # 90 / 50 / 50 / 50 / 50: three 10 GiB moves reach 60 60 60 50 60; 4 moves would be wasteful.
    nodes, guests = simple([[10] * 9, [10] * 5, [10] * 5, [10] * 5, [10] * 5])
    plan = prs.plan(nodes, guests, Policy(reserve=0))
    assert len(plan.moves) == 3 and plan.spread_after <= 10


def test_one_empty_node_fewest_moves():
    # 60 60 60 60 0 (12 GiB guests): four moves of one guest each reach 48 48 48 48 48.
    nodes, guests = simple([[12] * 5, [12] * 5, [12] * 5, [12] * 5, []])
    plan = prs.plan(nodes, guests, Policy(reserve=0))
    assert len(plan.moves) == 4 and plan.spread_after <= 10
    assert {m.target for m in plan.moves} == {"n4"}


def test_prefers_the_move_that_copies_least():
    # Either the 20 GiB guest with no local disk or the one with a 500 GiB local disk fixes it.
    nodes, guests = simple([[20, 20, 20], []])
    guests[101] = dataclasses.replace(guests[101], disk=500 * GIB)
    nodes = cluster({"n0": {"maxmem": 100 * GIB}, "n1": {"maxmem": 100 * GIB}}, guests, base_mem=0)
    plan = prs.plan(nodes, guests, Policy(reserve=0))
    assert [m.vmid for m in plan.moves] == [100]


def test_capacity_is_never_exceeded_even_to_balance():
    # The empty node is small: the 40 GiB guest would overload it, so nothing moves.
    guests = {100: Guest(100, "big", "qemu", "n0", maxmem=40 * GIB, mem=40 * GIB),
              101: Guest(101, "big2", "qemu", "n0", maxmem=40 * GIB, mem=40 * GIB)}
    nodes = cluster({"n0": {"maxmem": 100 * GIB}, "n1": {"maxmem": 40 * GIB}}, guests, base_mem=0)
    plan = prs.plan(nodes, guests, Policy(reserve=0.1))
    assert plan.moves == () and "no further move" in plan.verdict


def test_cpu_units_are_cores_not_fractions():
    node = prs.parse_node({"node": "a", "status": "online", "cpu": 0.25, "maxcpu": 64,
                           "mem": 1, "maxmem": 2})
    guest = prs.parse_guest({"vmid": 101, "type": "qemu", "node": "a", "status": "running",
                             "cpu": 0.5, "maxcpu": 8, "mem": 1 * GIB, "memhost": 3 * GIB,
                             "maxmem": 4 * GIB, "disk": 0})
    assert node.cpu == 16.0 and guest.cpu == 4.0
    assert guest.mem == 3 * GIB, "memory is the host's view (memhost), not the balloon's"
    assert guest.disk == 0


def test_drain_places_large_first_onto_the_emptiest():
    nodes, guests = simple([[30, 10], [40], [20]])
    plan = prs.plan(nodes, guests, Policy(reserve=0, drain_nodes=frozenset(["n0"])))
    assert [(m.vmid, m.target) for m in plan.moves[:2]] == [(100, "n2"), (101, "n2")] or \
        [(m.vmid, m.target) for m in plan.moves[:2]] == [(100, "n2"), (101, "n1")]
    assert plan.moves[0].drain and plan.stuck == ()
    assert [n.role for n in plan.nodes] == ["drained", "", ""]


def test_drain_reports_what_does_not_fit():
    nodes, guests = simple([[60, 30], [50], [40]])
    plan = prs.plan(nodes, guests, Policy(reserve=0.1, drain_nodes=frozenset(["n0"])))
    assert [m.vmid for m in plan.moves] == [101]
    assert [(s.vmid, s.reason[:20]) for s in plan.stuck] == [(100, "no node has room (n1")]


def test_ha_rule_syntax():
    assert prs._node_priorities("pve1:2, pve2:1,pve3") == {"pve1": 2, "pve2": 1, "pve3": 0}
    assert prs._keep_on({"a": 2, "b": 2, "c": 1}, failback=True, strict=False) == {"a", "b"}
    assert prs._keep_on({"a": 2, "c": 1}, failback=False, strict=True) == {"a", "c"}
    assert prs._keep_on({"a": 2, "c": 1}, failback=False, strict=False) is None


def test_forbidden_targets_are_avoided():
    nodes, guests = simple([[30, 30], [], []])
    guests[100] = dataclasses.replace(guests[100], forbidden=frozenset(["n1"]))
    guests[101] = dataclasses.replace(guests[101], forbidden=frozenset(["n1", "n2"]))
    plan = prs.plan(nodes, guests, Policy(reserve=0))
    assert [(m.vmid, m.target) for m in plan.moves] == [(100, "n2")]


def test_cpu_is_averaged_over_samples():
    first = [{"id": "node/a", "type": "node", "cpu": 0.9}, {"id": "qemu/101", "type": "qemu", "cpu": 1.0},
             {"id": "storage/a/local", "type": "storage"}]
    second = [{"id": "node/a", "type": "node", "cpu": 0.1}, {"id": "qemu/101", "type": "qemu", "cpu": 0.0},
              {"id": "storage/a/local", "type": "storage"}, {"id": "qemu/102", "type": "qemu", "cpu": 0.3}]
    out = {i["id"]: i for i in prs.average_cpu([first, second])}
    assert out["node/a"]["cpu"] == pytest.approx(0.5) and out["qemu/101"]["cpu"] == pytest.approx(0.5)
    assert out["qemu/102"]["cpu"] == pytest.approx(0.3) and "cpu" not in out["storage/a/local"]


def test_a_finished_plan_is_polished_to_fewer_migrations(monkeypatch, cluster):
    # The fake's generated cluster seed 4 (3 nodes, 17 guests), read as PRS reads it: the
    # greedy search sends the 13.9 GiB guest to the emptiest node and then needs a third
    # move; sending the 15.3 GiB one there and the other to the third node takes two.
    fakecluster = pytest.importorskip("fakecluster")
    c = cluster(fakecluster.generate_scenario(4, 3, 17))
    cfg = prs.Config(path="-", api_hosts=(prs.ApiHost("127.0.0.1", c.port),), api_user=c.user,
                     api_pass=c.password, verify=c.cafile)
    api = prs.Api(cfg)
    api.connect()
    snap = prs.collect(api, need_disks=False)
    policy = Policy()
    plan = prs.plan(snap.nodes, snap.guests, policy)
    assert plan.spread_after <= 10 and len(plan.moves) == 2
    greedy = Policy(search_steps=0)
    assert len(prs.plan(snap.nodes, snap.guests, greedy).moves) == 2
    monkeypatch.setattr(prs, "POLISH_BUDGET", 0)
    assert len(prs.plan(snap.nodes, snap.guests, greedy).moves) == 3


@PROPS
@given(clusters())
def test_no_migration_of_a_finished_plan_can_be_left_out(data):
    nodes, guests, policy = data
    policy = dataclasses.replace(policy, max_migrations=0)
    plan = prs.plan(nodes, guests, policy)
    names = [n for n in sorted(nodes) if prs.node_role(nodes[n], policy) == "" and
             prs.node_capacity(nodes[n], policy) > 0]
    if plan.spread_after > policy.balanciness or not plan.moves:
        return
    for i in range(len(plan.moves)):
        rest = list(plan.moves[:i] + plan.moves[i + 1:])
        spread = safe_spread(nodes, guests, policy, rest, names)
        assert spread is None or spread > policy.balanciness, "migration %d was not needed" % i


# --------------------------------------------------------------------------------------
# Swaps, chains and stop-overs (the end-state search), checked against every placement
# --------------------------------------------------------------------------------------

def memory_cluster(spec):
    """{node: (GiB, [(vmid, GiB), ...])}: VMs that use all their memory, nodes with nothing else."""
    guests = {vmid: Guest(vmid, "vm%d" % vmid, "qemu", node, maxmem=gib * GIB, mem=gib * GIB, maxcpu=1, cpu=0.1)
              for node, (_, vms) in spec.items() for vmid, gib in vms}
    nodes = {node: Node(node, maxcpu=32, cpu=1, maxmem=size * GIB, mem=sum(g for _, g in vms) * GIB,
                        maxdisk=1000 * GIB) for node, (size, vms) in spec.items()}
    return nodes, guests


def fewest_safe_migrations(nodes, guests, policy):
    """By brute force over every placement: the fewest migrations of a plan without
    stop-overs that reaches balanciness with every step finding room on its target (some
    order of the moves, checked over all subsets), or None if there is none."""
    names = balanced_names(nodes, policy)
    movable = sorted(guests.values(), key=lambda g: g.vmid)
    best = None
    for combo in itertools.product(names, repeat=len(movable)):
        targets = {g.vmid: t for g, t in zip(movable, combo, strict=True) if t != g.node}
        if best is not None and len(targets) >= best:
            continue
        load = prs._Load(nodes, guests, policy)
        for vmid, t in targets.items():
            load.apply(guests[vmid], t)
        if prs.spread_of(load.usage(n) for n in names) > policy.balanciness:
            continue
        if safe_order_exists(nodes, guests, policy, targets):
            best = len(targets)
    return best


def safe_order_exists(nodes, guests, policy, targets):
    moves = sorted(targets.items())
    seen, todo = {0}, [0]
    while todo:
        done = todo.pop()
        if done == (1 << len(moves)) - 1:
            return True
        load, placed = prs._Load(nodes, guests, policy), dict(guests)
        for i, (vmid, t) in enumerate(moves):
            if done >> i & 1:
                load.apply(placed[vmid], t)
                placed[vmid] = dataclasses.replace(placed[vmid], node=t)
        for i, (vmid, t) in enumerate(moves):
            if not done >> i & 1 and done | 1 << i not in seen and not load.room_for(placed[vmid], t):
                seen.add(done | 1 << i)
                todo.append(done | 1 << i)
    return False


def test_a_big_guest_moves_where_smaller_ones_make_room():
    # pve1's 48 GiB VM is most of its load; the balanced end state has it on pve2, and
    # pve2's 16 GiB VM on pve1 -- which has room for it only once the 48 GiB VM has left.
    nodes, guests = memory_cluster({"pve1": (96, [(100, 24), (101, 48)]), "pve2": (128, [(102, 16), (103, 2)]),
                                    "pve3": (96, [(104, 24), (105, 24), (106, 4)])})
    policy = Policy()
    greedy = prs.plan(nodes, guests, dataclasses.replace(policy, search_steps=0))
    assert greedy.spread_after > 10, "one improving move at a time cannot get there"
    plan = prs.plan(nodes, guests, policy)
    assert plan.spread_after <= 10
    assert len(plan.moves) == fewest_safe_migrations(nodes, guests, policy) == 3
    assert safe_spread(nodes, guests, policy, plan.moves, balanced_names(nodes, policy)) is not None
    into_pve1 = next(m for m in plan.moves if m.target == "pve1")
    assert into_pve1.reason.endswith("room on pve1 made by moving vm101 (101) off it first"), into_pve1.reason


def test_a_stop_over_where_it_is_cheaper_than_any_plan_without(monkeypatch):
    # pve1 is full and holds one big VM; pve2 must send its 32 GiB VM to pve1 and take the
    # big one, but neither fits first: the 32 GiB VM waits on pve3 until pve1 has room.
    spec = {"pve1": (64, [(100, 8), (101, 48)]), "pve2": (96, [(102, 16), (103, 32), (104, 2)]),
            "pve3": (128, [(105, 24), (106, 48)])}
    nodes, guests = memory_cluster(spec)
    policy = Policy()
    plan = prs.plan(nodes, guests, policy)
    assert plan.spread_after <= 10
    assert len(plan.moves) < fewest_safe_migrations(nodes, guests, policy), "cheaper than any plan without"
    assert safe_spread(nodes, guests, policy, plan.moves, balanced_names(nodes, policy)) is not None
    twice = [m for m in plan.moves if sum(n.vmid == m.vmid for n in plan.moves) == 2]
    assert len(twice) == 2 and twice[0].reason.startswith("stop-over on %s on its way to %s" % (
        twice[0].target, twice[1].target)), [m.reason for m in plan.moves]
    assert twice[1].source == twice[0].target and twice[1].reason.endswith("on from its stop-over")
    monkeypatch.setattr(prs, "SEARCH_HOPS", 0)
    without = prs.plan(nodes, guests, policy)
    assert without.spread_after > 10 or len(without.moves) > len(plan.moves)


def test_no_stop_over_where_a_plan_without_one_is_as_short():
    nodes, guests = memory_cluster({"pve1": (128, [(100, 48), (101, 2), (102, 8), (103, 32)]),
                                    "pve2": (64, [(104, 48)]), "pve3": (128, [(105, 16), (106, 32), (107, 24)])})
    policy = Policy()
    plan = prs.plan(nodes, guests, policy)
    assert plan.spread_after <= 10
    assert len({m.vmid for m in plan.moves}) == len(plan.moves), [m.reason for m in plan.moves]
    assert len(plan.moves) == fewest_safe_migrations(nodes, guests, policy)
