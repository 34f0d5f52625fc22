// How webui/pve-prs-ui.js reaches the PRS endpoint: only window.fetch, credentials 'omit',
// the ticket in X-PRS-PVE-Ticket, https://<page host>:<data-prs-port or 8016>/prs/v1/...;
// never Ext.Ajax, the toolkit's API2Request or a raw XMLHttpRequest, never the CSRF token.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('./harness.js');
const fx = require('./fixtures.js');

function routes(method, path) {
    if (path === '/prs/v1/status') return h.ok(200, fx.status());
    if (path === '/prs/v1/preview') return h.ok(200, { plan: fx.plan() });
    if (path === '/prs/v1/rebalance') return h.ok(202, { action: fx.action('running', ['pending', 'pending']) });
    return h.ok(202, { action: fx.action('running', ['pending', 'pending'], { kind: 'maintenance', node: 'pve3' }) });
}

function envFor(t, options = {}) {
    const env = h.makeEnv({ routes, ...options });
    t.after(() => env.window.close());
    return env;
}

function assertClean(env, call) {
    assert.equal(call.init.credentials, 'omit');
    assert.equal(call.init.headers['X-PRS-PVE-Ticket'], h.TICKET);
    assert.equal(call.init.headers['Content-Type'], 'application/json');
    assert.deepEqual(Object.keys(call.init.headers).sort(), ['Content-Type', 'X-PRS-PVE-Ticket']);
    assert.ok(!JSON.stringify(call).includes(h.CSRF), 'no CSRF token anywhere in the request');
    assert.ok(!/csrf/i.test(JSON.stringify(call.init.headers)));
}

test('every request of a full session goes through fetch, with the ticket and no cookies', async (t) => {
    const env = envFor(t);
    const panel = env.Ext.create('PRS.panel.Rebalancing', { pollInterval: 10 });
    t.after(() => panel.destroy());
    const wins = [];
    panel.showWindow = (w) => wins.push(w);
    await h.until(() => panel.status);
    await panel.preview('rebalance');
    await wins[0].onExecute();
    await h.until(() => env.calls.length >= 4); // the poll after the start
    panel.down('#node').setValue('pve3');
    await panel.preview('maintenance', 'pve3');
    await wins[1].onExecute();
    const seen = env.calls.map((c) => `${c.init.method} ${c.url}`);
    const base = `https://${h.HOST}:8016/prs/v1/`;
    assert.deepEqual(seen.slice(0, 6), [
        `GET ${base}status`, `POST ${base}preview`, `POST ${base}rebalance`,
        `GET ${base}status`, `POST ${base}preview`, `POST ${base}maintenance`,
    ]);
    env.calls.forEach((call) => assertClean(env, call));
    assert.equal(env.ajaxCalls.length, 0, 'Ext.Ajax.request never used');
    assert.equal(env.api2Calls.length, 0, 'Proxmox.Utils.API2Request never used');
    assert.equal(env.xhrs, 0, 'no XMLHttpRequest');
});

test('the ticket is the PVEAuthCookie value, unescaped', (t) => {
    const env = envFor(t);
    assert.match(env.window.document.cookie, /PVEAuthCookie=PVE%3Aops@pve%3A65F0A1B2%3A%3A/); // stored escaped
    assert.equal(env.window.PRS.ui.ticket(), h.TICKET);
});

test('the port comes from data-prs-port of the script element, if numeric', async (t) => {
    const env = envFor(t, { port: '9443' });
    const script = env.window.document.querySelector('script[src*="pve-prs-ui.js"]');
    assert.equal(env.window.PRS.ui.endpoint(), `https://${h.HOST}:9443/prs/v1/`);
    const cases = [[null, 8016], ['9443', 9443], ['abc', 8016], ['99999', 8016], ['', 8016], ['0', 8016], ['8443 ', 8016]];
    for (const [port, want] of cases) {
        if (port === null) script.removeAttribute('data-prs-port');
        else script.setAttribute('data-prs-port', port);
        env.calls.length = 0;
        await env.window.PRS.ui.request('GET', 'status');
        assert.equal(env.calls[0].url, `https://${h.HOST}:${want}/prs/v1/status`, `data-prs-port=${port}`);
    }
});

test('request(): JSON body, error answers and unreachable endpoint', async (t) => {
    let answer = h.ok(200, { plan: { verdict: 'ok' } });
    const env = envFor(t, { routes: () => answer });
    const ui = env.window.PRS.ui;
    const data = await ui.request('POST', 'preview', { action: 'maintenance', node: 'pve3' });
    assert.equal(data.plan.verdict, 'ok');
    assert.equal(env.calls[0].init.body, '{"action":"maintenance","node":"pve3"}');
    assert.equal(env.calls[0].init.method, 'POST');

    answer = h.ok(409, { error: 'an action is already running' });
    await assert.rejects(ui.request('POST', 'rebalance', {}), (e) => e.status === 409 && /already running/.test(e.message) && !e.unreachable);
    answer = { ok: false, status: 502, text: () => Promise.resolve('<html>Bad gateway</html>') };
    await assert.rejects(ui.request('GET', 'status'), (e) => e.status === 502 && e.message === 'HTTP 502');
    answer = Promise.reject(new TypeError('Failed to fetch'));
    answer.catch(() => {});
    await assert.rejects(ui.request('GET', 'status'), (e) => e.unreachable === true);
    assert.match(ui.unreachableHtml(), new RegExp(`href="https://${h.HOST}:8016/"`));
});

test('no fetch in the browser counts as unreachable, not as a crash', async (t) => {
    const env = envFor(t);
    env.window.fetch = undefined;
    await assert.rejects(env.window.PRS.ui.request('GET', 'status'), (e) => e.unreachable === true);
    assert.equal(env.ajaxCalls.length + env.xhrs, 0);
});

test('pure helpers: rows of a plan and of an action', (t) => {
    const env = envFor(t);
    const ui = env.window.PRS.ui;
    const rows = JSON.parse(JSON.stringify(ui.planRows(fx.plan())));
    assert.deepEqual(rows[1], { guest: '202 (db)', type: 'lxc', source: 'pve1', target: 'pve2', size: '2.5 GiB', reason: 'spread' });
    assert.deepEqual(JSON.parse(JSON.stringify(ui.keptRows(fx.plan(), 'blocked'))), [{ guest: '404 (usb)', node: 'pve1', reason: 'USB passthrough <b>x</b>' }]);
    const act = JSON.parse(JSON.stringify(ui.actionRows(fx.action('running', ['done', 'failed']))));
    assert.deepEqual(act.map((r) => r.status), ['done', 'failed']);
    assert.equal(ui.planRows(null).length, 0);
    assert.equal(ui.isRunning(fx.action('running', [])), true);
    assert.equal(ui.isRunning(fx.action('done', [])), false);
    assert.equal(ui.canMigrate(), true);
});
