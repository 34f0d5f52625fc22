// PRS.panel.Rebalancing and PRS.window.Plan, created without rendering (jsdom cannot lay out
// ExtJS): buttons and privileges, status display, unreachable endpoint, plan preview and its
// HTML escaping, execution and status polling.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('./harness.js');
const fx = require('./fixtures.js');

const NO_MIGRATE = { vms: { 'VM.PowerMgmt': 1 }, dc: { 'Sys.Audit': 1 }, storage: {} };
const RAW_HTML = /<img|<script|<b>x/;

// One jsdom window per (caps, port) for the whole file (loading ExtJS costs ~0.3 s); each
// test gets a new panel over a fake endpoint, its own routes and an empty call list.
const envs = new Map();
test.after(() => envs.forEach((env) => env.window.close()));

function sharedEnv(options) {
    const key = JSON.stringify([options.caps, options.port]);
    if (!envs.has(key)) envs.set(key, h.makeEnv({ caps: options.caps, port: options.port }));
    return envs.get(key);
}

function setup(t, options = {}) {
    const state = { status: options.status || fx.status() };
    const env = sharedEnv(options);
    env.routes = options.routes || ((method, path, body) => {
        if (path === '/prs/v1/status') return h.ok(200, state.status);
        if (path === '/prs/v1/preview') return h.ok(200, { plan: fx.plan() });
        if (path === '/prs/v1/rebalance') return h.ok(202, { action: fx.action('running', ['pending', 'pending']) });
        if (path === '/prs/v1/maintenance') {
            return h.ok(202, { action: fx.action('running', ['pending', 'pending'], { kind: 'maintenance', node: body.node }) });
        }
        return h.ok(404, { error: 'no route' });
    });
    env.calls.length = 0;
    const panel = env.Ext.create('PRS.panel.Rebalancing', { pollInterval: options.pollInterval || 30 });
    const shown = [];
    panel.showWindow = (win) => shown.push(win);
    t.after(() => {
        if (!panel.destroyed) panel.destroy();
    });
    return { env, panel, shown, state };
}

function click(panel, itemId) {
    const button = panel.down(`#${itemId}`);
    assert.equal(button.isDisabled(), false, `${itemId} is enabled`);
    return button.handler.call(button, button);
}

const loaded = (env) => h.until(() => env.calls.length >= 1).then(() => h.settle());

test('with VM.Migrate: actions enabled (migrate-away once a node is picked), no hint', async (t) => {
    const { env, panel } = setup(t);
    assert.equal(panel.down('#rebalance').isDisabled(), true, 'disabled before the status came');
    await loaded(env);
    assert.equal(panel.down('#rebalance').isDisabled(), false);
    assert.equal(panel.down('#maintenance').isDisabled(), true);
    panel.down('#node').setValue('pve3');
    assert.equal(panel.down('#maintenance').isDisabled(), false);
    assert.equal(panel.down('#hint').isHidden(), true);
});

test('GuiCap without VM.Migrate: action buttons disabled, not hidden, with a hint', async (t) => {
    const { env, panel } = setup(t, { caps: NO_MIGRATE });
    await loaded(env);
    panel.down('#node').setValue('pve3');
    for (const id of ['rebalance', 'maintenance']) {
        assert.equal(panel.down(`#${id}`).isDisabled(), true, `${id} disabled`);
        assert.equal(panel.down(`#${id}`).isHidden(), false, `${id} visible`);
    }
    assert.equal(panel.down('#hint').isHidden(), false);
    assert.match(panel.down('#hint').html, /VM\.Migrate/);
});

test('endpoint says can_act false: buttons disabled, the hint names the user', async (t) => {
    const { env, panel } = setup(t, { status: fx.status({ can_act: false, user: 'view<er>@pve' }) });
    await loaded(env);
    panel.down('#node').setValue('pve3');
    assert.equal(panel.down('#rebalance').isDisabled(), true);
    assert.equal(panel.down('#maintenance').isDisabled(), true);
    assert.match(panel.down('#hint').html, /view&lt;er&gt;@pve/);
});

test('status: nodes grid, node picker, spread and last/next run, all escaped', async (t) => {
    const { env, panel } = setup(t);
    await loaded(env);
    const cells = h.renderedCells(panel.down('#nodes'));
    assert.deepEqual(cells.slice(0, 3), ['pve1', '71.2 %', 'balanced']);
    assert.deepEqual(Array.from(panel.pickStore.collect('node')), ['pve1', 'pve2', 'pve3']);
    const summary = panel.down('#summary').html;
    assert.match(summary, /23\.4/);
    assert.match(summary, /3 migrations &lt;img/);
    assert.match(summary, new RegExp(env.Ext.Date.format(new env.window.Date(1700086400 * 1000), 'Y-m-d H:i')));
    assert.doesNotMatch(summary, RAW_HTML);
    assert.equal(panel.down('#action').isHidden(), true, 'no action, no migrations grid');
});

test('unreachable endpoint: one line with the link to accept the certificate', async (t) => {
    for (const [port, want] of [[undefined, 8016], ['9443', 9443]]) {
        const { env, panel } = setup(t, { port, routes: () => Promise.reject(new TypeError('Failed to fetch')) });
        await loaded(env);
        const msg = panel.down('#message');
        assert.equal(msg.isHidden(), false);
        assert.match(msg.html, new RegExp(`<a href="https://${h.HOST}:${want}/"[^>]*>https://${h.HOST}:${want}/</a>`));
        assert.match(msg.html, /certificate/);
        assert.equal(panel.down('#rebalance').isDisabled(), true);
    }
});

test('an error answer is shown, escaped', async (t) => {
    const { env, panel } = setup(t, { routes: () => h.ok(401, { error: 'ops@pve lacks <Sys.Audit> on /' }) });
    await loaded(env);
    assert.match(panel.down('#message').html, /ops@pve lacks &lt;Sys.Audit&gt; on \//);
    assert.equal(panel.down('#rebalance').isDisabled(), true);
});

test('rebalance: preview shows the plan escaped, Execute starts it', async (t) => {
    const { env, panel, shown } = setup(t);
    await loaded(env);
    await click(panel, 'rebalance');
    const preview = env.calls[1];
    assert.equal(preview.url, `https://${h.HOST}:8016/prs/v1/preview`);
    assert.equal(preview.init.method, 'POST');
    assert.deepEqual(JSON.parse(preview.init.body), { action: 'rebalance' });
    assert.equal(shown.length, 1);
    const win = shown[0];
    const cells = h.renderedCells(win.down('#migrations'));
    assert.equal(cells.length, 12);
    assert.ok(cells.includes('101 (web&lt;img src=x onerror=&quot;alert(1)&quot;&gt;)'), cells.join(' | '));
    assert.ok(cells.includes('8 GiB') && cells.includes('2.5 GiB') && cells.includes('pve3'));
    const texts = [...cells, win.title, win.down('#summary').html, win.down('#kept').html];
    for (const text of texts) assert.doesNotMatch(text, RAW_HTML);
    assert.match(win.down('#summary').html, /balanced within 10 points &lt;img/);
    assert.match(win.down('#kept').html, /303 \(pinned&lt;img.*local disk &lt;img/s);
    assert.match(win.down('#kept').html, /USB passthrough &lt;b&gt;x/);
    assert.equal(win.down('#execute').isDisabled(), false);

    await win.onExecute();
    const run = env.calls[2];
    assert.equal(run.url, `https://${h.HOST}:8016/prs/v1/rebalance`);
    assert.deepEqual(JSON.parse(run.init.body), {});
    assert.equal(win.destroyed || win.isDestroyed, true, 'window closed');
    assert.equal(panel.down('#action').isHidden(), false);
    assert.equal(panel.down('#rebalance').isDisabled(), true, 'no second action while one runs');
    for (const text of [panel.down('#action').title, ...h.renderedCells(panel.down('#action'))]) {
        assert.doesNotMatch(text, RAW_HTML);
    }
});

test('plan window: Execute disabled without VM.Migrate, or with nothing to do', (t) => {
    const env = sharedEnv({});
    const make = (canExecute, plan) => env.Ext.create('PRS.window.Plan', {
        plan, kind: 'rebalance', canExecute, execute: () => Promise.resolve(),
    });
    assert.equal(make(false, fx.plan()).down('#execute').isDisabled(), true);
    assert.equal(make(true, fx.plan({ migrations: [] })).down('#execute').isDisabled(), true);
    assert.equal(make(true, fx.plan()).down('#execute').isDisabled(), false);
});

test('plan window: a failed execution stays open with the error, escaped', async (t) => {
    const env = sharedEnv({});
    const win = env.Ext.create('PRS.window.Plan', {
        plan: fx.plan(), kind: 'rebalance', canExecute: true,
        execute: () => Promise.reject(new Error('another PRS <instance> is running')),
    });
    await win.onExecute();
    assert.ok(!win.destroyed);
    assert.match(win.down('#message').html, /another PRS &lt;instance&gt; is running/);
    assert.equal(win.down('#execute').isDisabled(), false);
});

test('migrate away: preview for the picked node lists what stays, then POST maintenance', async (t) => {
    const { env, panel, shown } = setup(t);
    await loaded(env);
    panel.down('#node').setValue('pve3');
    await click(panel, 'maintenance');
    assert.deepEqual(JSON.parse(env.calls[1].init.body), { action: 'maintenance', node: 'pve3' });
    const win = shown[0];
    assert.match(win.down('#summary').html, /<b>pve3<\/b>/);
    assert.match(win.down('#kept').html, /Not moved.*303 \(pinned&lt;img[^<]*«on» pve3: local disk/s);
    await win.onExecute();
    assert.equal(env.calls[2].url, `https://${h.HOST}:8016/prs/v1/maintenance`);
    assert.deepEqual(JSON.parse(env.calls[2].init.body), { node: 'pve3' });
    assert.match(panel.down('#action').title, /pve3/);
});

test('while an action runs, status is polled and the migrations show their status', async (t) => {
    const { env, panel, state } = setup(t, { status: fx.status({ action: fx.action('running', ['done', 'running']) }) });
    await loaded(env);
    const statuses = () => panel.actionStore.collect('status');
    assert.deepEqual(Array.from(statuses()), ['done', 'running']);
    assert.equal(panel.down('#action').isHidden(), false);
    state.status = fx.status({ action: fx.action('done', ['done', 'failed'], { message: 'finished' }) });
    await h.until(() => statuses().includes('failed'));
    const cells = h.renderedCells(panel.down('#action'));
    assert.ok(cells.some((c) => /fa-check.*done/.test(c)), cells.join(' | '));
    assert.ok(cells.some((c) => /fa-times.*failed: timeout &lt;img/.test(c)), cells.join(' | '));
    for (const c of cells) assert.doesNotMatch(c, RAW_HTML);
    assert.match(panel.down('#action').title, /done, finished/);
    const count = env.calls.length;
    await h.settle(120);
    assert.equal(env.calls.length, count, 'nothing runs: polling stopped');
    assert.ok(env.calls.every((c) => c.init.method === 'GET'));
});

test('polling stops when the panel is destroyed', async (t) => {
    const { env, panel } = setup(t, { status: fx.status({ action: fx.action('running', ['running', 'pending']) }) });
    await h.until(() => env.calls.length >= 2); // it polls
    await h.settle(); // the answer is in: a timer waits for the next poll
    panel.destroy();
    const count = env.calls.length;
    await h.settle(120);
    assert.equal(env.calls.length, count, 'no request after destroy');
});

test('an answer arriving after destroy is dropped: no poll, no error', async (t) => {
    let release;
    const gate = new Promise((resolve) => { release = resolve; });
    const st = fx.status({ action: fx.action('running', ['running', 'pending']) });
    const { env, panel } = setup(t, { routes: () => gate.then(() => h.ok(200, st)) });
    await h.until(() => env.calls.length === 1);
    panel.destroy();
    release();
    await h.settle(120);
    assert.equal(env.calls.length, 1);
    assert.deepEqual(env.errors, []);
});

test('a running action is still followed through a short outage', async (t) => {
    let down = false;
    const st = fx.status({ action: fx.action('running', ['running', 'pending']) });
    const { env, panel } = setup(t, {
        routes: () => (down ? Promise.reject(new TypeError('Failed to fetch')) : h.ok(200, st)),
    });
    await loaded(env);
    down = true;
    await h.until(() => /certificate/.test(panel.down('#message').html || ''));
    const count = env.calls.length;
    down = false;
    await h.until(() => env.calls.length > count && panel.down('#message').isHidden());
});
