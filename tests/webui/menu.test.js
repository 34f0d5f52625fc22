// The menu hook of webui/pve-prs-ui.js: Datacenter -> HA -> Rebalancing, added through the
// public insertNodes of a PVE.panel.Config stand-in (standin.js), and nothing else.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('./harness.js');

function withEnv(t, options) {
    const env = h.makeEnv(options);
    t.after(() => env.window.close());
    return env;
}

function prsWarnings(env) {
    // (the debug build of ExtJS also warns of a class defined twice: harmless, not ours)
    return env.warnings.filter((w) => /PRS UI add-on/.test(w));
}

test('8.x menu: Rebalancing is the last child of HA', (t) => {
    const env = withEnv(t, {});
    const dc = env.Ext.create('PVE.dc.Config', {});
    assert.deepEqual(h.treePaths(dc), ['summary', 'ha', 'ha/ha-groups', 'ha/ha-fencing', 'ha/prs-rebalancing']);
    const node = dc.store.getRoot().findChild('id', 'prs-rebalancing', true);
    assert.equal(node.get('text'), '«Rebalancing»'); // through gettext
    assert.equal(node.get('iconCls'), 'fa fa-balance-scale');
    assert.equal(dc.savedItems['prs-rebalancing'].xtype, 'prsRebalancingPanel');
    assert.equal(env.Ext.ClassManager.getByAlias('widget.prsRebalancingPanel'), env.Ext.ClassManager.get('PRS.panel.Rebalancing'));
    assert.deepEqual(prsWarnings(env), []);
    assert.deepEqual(env.errors, []);
});

test('9.x menu (ha-rules instead of ha-groups): same place', (t) => {
    const env = withEnv(t, { pve: { version: '9' } });
    const dc = env.Ext.create('PVE.dc.Config', {});
    assert.deepEqual(h.treePaths(dc), ['summary', 'ha', 'ha/ha-rules', 'ha/ha-fencing', 'ha/prs-rebalancing']);
    assert.deepEqual(prsWarnings(env), []);
});

test('without gettext the title is plain English', (t) => {
    const env = withEnv(t, { gettext: false });
    const dc = env.Ext.create('PVE.dc.Config', {});
    assert.equal(dc.store.getRoot().findChild('id', 'prs-rebalancing', true).get('text'), 'Rebalancing');
});

test('user without Sys.Audit (no HA item): nothing added, nothing thrown', (t) => {
    const env = withEnv(t, { caps: { vms: { 'VM.Migrate': 1 }, dc: {}, storage: {} } });
    const dc = env.Ext.create('PVE.dc.Config', {});
    assert.deepEqual(h.treePaths(dc), ['summary']);
    assert.equal(dc.savedItems['prs-rebalancing'], undefined);
    assert.deepEqual(prsWarnings(env), []);
    assert.deepEqual(env.errors, []);
});

test('a changed PVE menu (HA item renamed): nothing added, nothing thrown', (t) => {
    const env = withEnv(t, { pve: { haId: 'ha-status' } });
    const dc = env.Ext.create('PVE.dc.Config', {});
    assert.deepEqual(h.treePaths(dc), ['summary', 'ha-status', 'ha-status/ha-groups', 'ha-status/ha-fencing']);
    assert.deepEqual(prsWarnings(env), []);
});

test('no PVE.dc.Config class (e.g. mobile UI): the panel is still defined, no error', (t) => {
    const env = withEnv(t, { pve: 'panel-only' });
    const Ext = env.Ext;
    assert.ok(Ext.ClassManager.get('PRS.panel.Rebalancing'));
    assert.ok(env.window.PRS.ui.endpoint());
    assert.ok(!Ext.ClassManager.get('PVE.dc.Config')); // the override did not conjure it
    assert.equal(env.xhrs, 0, 'the Loader did not go looking for PVE.dc.Config');
    // and no override is left pending for a class that may come later with another shape
    // (ExtJS 7 may also make the Loader fetch it; 6.2 in jsdom just keeps it waiting)
    assert.ok(!('PRS.override.dc.Config' in (Ext.ClassManager.overrideMap || {})));
    assert.deepEqual(env.errors, []);
    // and with no PVE class at all
    const bare = withEnv(t, { pve: false });
    assert.ok(bare.Ext.ClassManager.get('PRS.panel.Rebalancing'));
    assert.equal(bare.xhrs, 0);
    assert.deepEqual(bare.errors, []);
});

test('loaded twice: one entry, no warning (savedItems check)', (t) => {
    const env = withEnv(t, { loads: 2 });
    const dc = env.Ext.create('PVE.dc.Config', {});
    assert.deepEqual(h.treePaths(dc), ['summary', 'ha', 'ha/ha-groups', 'ha/ha-fencing', 'ha/prs-rebalancing']);
    assert.deepEqual(prsWarnings(env), []);
});

test('the hook run again on the same panel adds no duplicate and throws nothing', (t) => {
    const env = withEnv(t, {});
    const dc = env.Ext.create('PVE.dc.Config', {});
    dc.addRebalancingItem();
    dc.addRebalancingItem();
    assert.deepEqual(h.treePaths(dc).filter((p) => /prs-rebalancing/.test(p)), ['ha/prs-rebalancing']);
    // two instances (the Datacenter view is rebuilt on every visit): one entry each
    const again = env.Ext.create('PVE.dc.Config', {});
    assert.deepEqual(h.treePaths(again), h.treePaths(dc));
    assert.deepEqual(prsWarnings(env), []);
});

test('a surprise inside the hook becomes a console warning, not a dead view', (t) => {
    const env = withEnv(t, { pve: { insertNodesThrows: true } });
    const dc = env.Ext.create('PVE.dc.Config', {});
    assert.deepEqual(h.treePaths(dc), ['summary', 'ha', 'ha/ha-groups', 'ha/ha-fencing']);
    assert.equal(prsWarnings(env).length, 1);
    assert.match(prsWarnings(env)[0], /PRS UI add-on disabled/);
});

test('deep link to the item: it is selected once inserted, HA expanded', (t) => {
    const env = withEnv(t, { state: { dctab: { value: 'prs-rebalancing' } } });
    const dc = env.Ext.create('PVE.dc.Config', {});
    const selected = dc.down('#menu').getSelection();
    assert.equal(selected && selected.getId(), 'prs-rebalancing');
    assert.equal(dc.store.getRoot().findChild('id', 'ha').isExpanded(), true);
    assert.equal(dc.activated[dc.activated.length - 1], 'prs-rebalancing');
});

test('no deep link: PVE keeps its own selection', (t) => {
    for (const state of [{}, { dctab: { value: 'ha-fencing' } }]) {
        const env = withEnv(t, { state });
        const dc = env.Ext.create('PVE.dc.Config', {});
        const want = state.dctab ? 'ha-fencing' : 'summary';
        assert.equal(dc.down('#menu').getSelection().getId(), want);
        assert.deepEqual(Array.from(dc.activated), [want]);
    }
});

test("the file has no 'use strict' directive", () => {
    assert.doesNotMatch(h.UI_SOURCE, /(^|[;{(]\s*)['"]use strict['"]/m);
});

test("a copy with 'use strict' prepended kills the Datacenter view (why the rule exists)", (t) => {
    const env = withEnv(t, { source: "'use strict';\n" + h.UI_SOURCE });
    assert.throws(() => env.Ext.create('PVE.dc.Config', {}), (e) => {
        assert.match(String(e), /TypeError.*(\$owner|apply)/);
        return true;
    });
});
