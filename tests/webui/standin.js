// A small stand-in for the two pve-manager classes the PRS add-on hooks into, written for
// these tests (not copied from Proxmox). It reproduces what the hook relies on, as the real
// code does it in pve-manager www/manager6/panel/ConfigPanel.js (PVE.panel.Config) and
// www/manager6/dc/Config.js (PVE.dc.Config), on the stable-8 (8.4) and master (9.x) branches.
//
// source(options) returns browser code to inject after ExtJS. options:
//   version: '8' (HA children ha-groups, ha-fencing; default) or '9' (ha-rules, ha-fencing)
//   haId: the id of the HA item (default 'ha'; another value models a changed PVE menu)
//   panelOnly: define PVE.panel.Config only, no PVE.dc.Config (e.g. the mobile UI)
//   insertNodesThrows: insertNodes throws once PVE's own items are in (a PVE change we do not know)
'use strict'; // Node side only: the injected browser code below has no strict directive

function source(options = {}) {
    const haChild = options.version === '9' ? 'ha-rules' : 'ha-groups';
    const haId = options.haId || 'ha';
    const panel = `
Ext.define('PVE.panel.Config', {
    extend: 'Ext.panel.Panel',
    layout: 'card',
    // ConfigPanel.js activateCard(): adds me.savedItems[id] as the card and saves the state;
    // here it only records which card the menu selection asked for.
    activateCard: function (id) { this.activated.push(id); },
    initComponent: function () {
        var me = this;
        me.activated = [];
        me.sp = Ext.state.Manager.getProvider();          // initComponent(): me.sp, then the
        var state = me.hstateid && me.sp.get(me.hstateid); // saved tab from me.hstateid
        me.dockedItems = [{ xtype: 'toolbar', dock: 'left', items: { xtype: 'treelist', itemId: 'menu' } }];
        me.items = me.items || [];
        me.savedItems = {};                                // initComponent(): savedItems, a
        me.store = Ext.create('Ext.data.TreeStore', { root: { expanded: true } }); // TreeStore,
        me.insertNodes(me.items);                          // insertNodes(me.items), all before
        delete me.items;                                   // the parent's initComponent
        me.callParent();
        var root = me.store.getRoot();                     // then: select the saved tab if it
        var sel = (state && state.value && root.findChild('id', state.value, true)) || root.firstChild;
        for (var n = sel; n && n !== root; n = n.parentNode) { n.expand(); } // exists, else the
        var menu = me.down('#menu');                       // first item, expanding its parents
        menu.on('selectionchange', function (list, s) { if (s) { me.activateCard(s.getId()); } });
        menu.setStore(me.store);
        menu.setSelection(sel);
        if (${!!options.insertNodesThrows}) { me.insertNodes = function () { throw new Error('changed'); }; }
    },
    // ConfigPanel.js insertNodes(items): a TreeModel node per item, id = itemId; 'groups' walked
    // from the root (shift()ing the array); a missing group leaves the node where the walk
    // stopped; an itemId already in savedItems, or already a child there, throws a string.
    insertNodes: function (items) {
        var me = this;
        items.forEach(function (item) {
            var node = Ext.create('Ext.data.TreeModel', {
                id: item.itemId, text: item.title, iconCls: item.iconCls, leaf: true, expanded: item.expandedOnInit,
            });
            item.header = false;
            if (me.savedItems[item.itemId] !== undefined) { throw 'itemId already exists, please use another'; }
            me.savedItems[item.itemId] = item;
            var parent = me.store.getRoot();
            while (Ext.isArray(item.groups) && item.groups.length > 0) {
                var child = parent.findChild('id', item.groups.shift());
                if (child === null) { break; }
                parent = child;
            }
            if (parent.findChild('id', item.itemId) !== null) { throw 'id already exists'; }
            parent.appendChild(node);
        });
    },
});
`;
    // dc/Config.js initComponent(): reads GuiCap; the HA item and its children only with
    // Sys.Audit on / (the real one has ~30 items; Summary also needs Sys.Audit there).
    const dc = `
Ext.define('PVE.dc.Config', {
    extend: 'PVE.panel.Config',
    alias: 'widget.PVE.dc.Config',
    initComponent: function () {
        var me = this;
        var caps = Ext.state.Manager.get('GuiCap');
        Ext.apply(me, { title: 'Datacenter', hstateid: 'dctab' });
        me.items = [{ title: 'Summary', xtype: 'component', iconCls: 'fa fa-book', itemId: 'summary' }];
        if (caps.dc['Sys.Audit']) {
            me.items.push(
                { xtype: 'component', title: 'HA', iconCls: 'fa fa-heartbeat', itemId: '${haId}' },
                { xtype: 'component', title: 'HA child', groups: ['${haId}'], itemId: '${haChild}' },
                { xtype: 'component', title: 'Fencing', groups: ['${haId}'], itemId: 'ha-fencing' },
            );
        }
        me.callParent();
    },
});
`;
    return options.panelOnly ? panel : panel + dc;
}

module.exports = { source };
