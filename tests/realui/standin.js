// Stand-in for webui/pve-prs-ui.js while that file does not exist: the hook of /work/shared/GUI.md
// section 3 with an empty panel, so the real-UI tests can check the menu item. No 'use strict'.
(function () {
    console.log('PRS UI stand-in loaded');
    Ext.define('PRS.panel.Rebalancing', {
        extend: 'Ext.panel.Panel',
        alias: 'widget.prsRebalancingPanel',
        html: '<div id="prs-standin">PRS web UI add-on stand-in (webui/pve-prs-ui.js missing)</div>',
    });
    if (!Ext.ClassManager.get('PVE.dc.Config')) {
        return;
    }
    Ext.define('PRS.override.dc.Config', {
        override: 'PVE.dc.Config',
        initComponent: function () {
            var me = this;
            me.callParent(arguments);
            try {
                var ha = me.store && me.store.getRoot().findChild('id', 'ha', true);
                if (!ha || typeof me.insertNodes !== 'function' || me.savedItems['prs-rebalancing']) {
                    return;
                }
                me.insertNodes([{
                    xtype: 'prsRebalancingPanel', title: gettext('Rebalancing'), groups: ['ha'],
                    iconCls: 'fa fa-balance-scale', itemId: 'prs-rebalancing',
                }]);
                var st = me.hstateid && me.sp && me.sp.get(me.hstateid);
                if (st && st.value === 'prs-rebalancing') {
                    ha.expand();
                    me.down('#menu').setSelection(ha.findChild('id', 'prs-rebalancing'));
                }
            } catch (e) {
                console.warn('PRS UI add-on disabled:', e);
            }
        },
    });
}());
