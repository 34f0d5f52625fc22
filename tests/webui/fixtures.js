// Answers of the PRS endpoint, shaped as /tmp/contract.md (v1) says, for the panel tests.
'use strict';

const EVIL = '<img src=x onerror="alert(1)">';

function status(over = {}) {
    return {
        user: 'ops@pve',
        can_act: true,
        version: '1.2.3',
        node: 'pve1',
        method: 'memory',
        balanciness: 10.0,
        spread: 23.4,
        nodes: [
            { node: 'pve1', usage: 71.2, role: 'balanced' },
            { node: 'pve2', usage: 47.8, role: 'balanced' },
            { node: 'pve3', usage: 12.0, role: 'ignored' },
        ],
        runs: {
            daemon: true,
            schedule_hours: 24.0,
            last: { started: 1700000000, ended: 1700000060, summary: `3 migrations ${EVIL}`, code: 0 },
            next: 1700086400,
        },
        action: null,
        ...over,
    };
}

function plan(over = {}) {
    return {
        version: '1.2.3',
        method: 'memory',
        mode: 'used',
        balanciness: 10.0,
        dry_run: true,
        nodes: [],
        spread_before: 23.4,
        spread_after: 4.1,
        verdict: `balanced within 10 points ${EVIL}`,
        migrations: [
            {
                vmid: 101, name: `web${EVIL}`, type: 'qemu', source: 'pve1', target: 'pve3', size: 8,
                size_unit: 'GiB', copy_gib: 0, running: true, ha: false, drain: false,
                reason: `pve1 is 35 points above pve3 <script>alert(2)</script>`,
            },
            {
                vmid: 202, name: 'db', type: 'lxc', source: 'pve1', target: 'pve2', size: 2.5,
                size_unit: 'GiB', copy_gib: 0, running: true, ha: true, drain: false, reason: 'spread',
            },
        ],
        not_moved: [{ vmid: 303, name: `pinned${EVIL}`, node: 'pve3', reason: `local disk ${EVIL}` }],
        blocked: [{ vmid: 404, name: 'usb', node: 'pve1', reason: 'USB passthrough <b>x</b>' }],
        ...over,
    };
}

function action(state, statuses, over = {}) {
    const migrations = plan().migrations.map((m, i) => ({
        vmid: m.vmid, name: m.name, source: m.source, target: m.target, reason: m.reason,
        status: statuses[i], status_reason: statuses[i] === 'failed' ? `timeout ${EVIL}` : '', seconds: 3.0,
    }));
    return {
        id: 1, kind: 'rebalance', node: null, user: 'ops@pve', state, started: 1700000100,
        ended: state === 'running' ? null : 1700000200, message: `working ${EVIL}`, plan: plan(), migrations,
        ...over,
    };
}

module.exports = { EVIL, status, plan, action };
