/*
 * pve-prs-ui.js: the PRS (Proxmox Rebalancing Service) add-on for the Proxmox VE web UI.
 *
 * pve-prs-ui-patch loads this file with one <script> line after pvemanagerlib.js in
 * /usr/share/pve-manager/index.html.tpl. It defines the panel PRS.panel.Rebalancing and,
 * through an ExtJS override of PVE.dc.Config, adds it as Datacenter -> HA -> Rebalancing.
 * The panel shows the spread and the per-node usage, the last and next PRS run, and offers
 * "Rebalance VM workloads" and "Migrate VM workloads away" (each previewed before it runs).
 * pveproxy serves this file without authentication: it must hold no secrets.
 *
 * Two rules keep it working (see the design notes, GUI.md sections 3 and 5):
 *  - No strict-mode directive anywhere in this file, and no build step that adds one.
 *    ExtJS's callParent() finds the overridden method through Function.caller, which strict
 *    mode hides; with it, opening the Datacenter view throws a TypeError and stays blank.
 *  - The PRS endpoint (another port of this node) is called only with window.fetch, with
 *    credentials 'omit' and the PVE ticket in the X-PRS-PVE-Ticket header. Never Ext.Ajax or
 *    Proxmox.Utils.API2Request: the widget toolkit adds the CSRFPreventionToken header to every
 *    Ext.Ajax request, which fails the cross-origin preflight and would leak the token.
 */
(function () {
    var DEFAULT_PORT = 8016;
    var API_PATH = '/prs/v1/';
    var ITEM_ID = 'prs-rebalancing';

    // ---- small pure helpers (exposed as PRS.ui for the unit tests) ----

    function gt(text) {
        return typeof gettext === 'function' ? gettext(text) : text;
    }

    function enc(value) {
        return Ext.htmlEncode(value === undefined || value === null ? '' : String(value));
    }

    // The port of the PRS endpoint: data-prs-port of the <script> element that loaded this
    // file, if it is a port number, else the default.
    function port() {
        var el = window.document.querySelector('script[src*="pve-prs-ui.js"]');
        var value = el && el.getAttribute('data-prs-port');
        if (value && /^[0-9]{1,5}$/.test(value) && Number(value) > 0 && Number(value) < 65536) {
            return Number(value);
        }
        return DEFAULT_PORT;
    }

    function origin() {
        return 'https://' + window.location.hostname + ':' + port() + '/';
    }

    function endpoint() {
        return 'https://' + window.location.hostname + ':' + port() + API_PATH;
    }

    function ticket() {
        return Ext.util.Cookies.get('PVEAuthCookie') || '';
    }

    function parseJson(text) {
        try {
            return JSON.parse(text);
        } catch (e) {
            return null;
        }
    }

    // One call of the PRS endpoint. Resolves to the decoded JSON body of a 2xx answer.
    // Rejects with an Error: .unreachable if no answer came (network, TLS, CORS), else
    // .status and the server's one-line "error" as the message.
    function request(method, path, body) {
        var options = {
            method: method,
            credentials: 'omit',
            headers: { 'X-PRS-PVE-Ticket': ticket(), 'Content-Type': 'application/json' },
        };
        if (body !== undefined) {
            options.body = JSON.stringify(body);
        }
        var unreachable = function (cause) {
            var err = new Error(gt('The PRS endpoint is unreachable'));
            err.unreachable = true;
            err.cause = cause;
            throw err;
        };
        if (typeof window.fetch !== 'function') {
            return Promise.reject(new Error('no fetch')).catch(unreachable);
        }
        return window.fetch(endpoint() + path, options).then(function (response) {
            return response.text().then(function (text) {
                var data = parseJson(text);
                if (response.ok) {
                    return data || {};
                }
                var err = new Error((data && data.error) || 'HTTP ' + response.status);
                err.status = response.status;
                throw err;
            });
        }, unreachable);
    }

    // The user may start actions: GuiCap (the privileges PVE sent at login) holds VM.Migrate.
    function canMigrate() {
        var caps = Ext.state.Manager.get('GuiCap');
        return !!(caps && caps.vms && caps.vms['VM.Migrate']);
    }

    function guest(item) {
        return item.name ? item.vmid + ' (' + item.name + ')' : String(item.vmid);
    }

    function formatTime(epoch) {
        if (epoch === null || epoch === undefined) {
            return '-';
        }
        return Ext.Date.format(new Date(epoch * 1000), 'Y-m-d H:i:s');
    }

    function formatSize(item) {
        if (item.size === null || item.size === undefined) {
            return '';
        }
        return Number(item.size).toFixed(1).replace(/\.0$/, '') + ' ' + (item.size_unit || '');
    }

    function formatPercent(value) {
        return typeof value === 'number' ? value.toFixed(1) + ' %' : '-';
    }

    function nodeRows(status) {
        return ((status && status.nodes) || []).map(function (n) {
            return { node: n.node, usage: n.usage, role: n.role };
        });
    }

    function planRows(plan) {
        return ((plan && plan.migrations) || []).map(function (m) {
            return {
                guest: guest(m),
                type: m.type,
                source: m.source,
                target: m.target,
                size: formatSize(m),
                reason: m.reason,
            };
        });
    }

    // Guests that stay: 'not_moved' (must stay on a drained node) and 'blocked' (Proxmox
    // refuses to migrate them), each with its reason.
    function keptRows(plan, list) {
        return ((plan && plan[list]) || []).map(function (k) {
            return { guest: guest(k), node: k.node, reason: k.reason };
        });
    }

    function actionRows(action) {
        return ((action && action.migrations) || []).map(function (m) {
            return {
                guest: guest(m),
                source: m.source,
                target: m.target,
                status: m.status,
                status_reason: m.status_reason,
                seconds: m.seconds,
                reason: m.reason,
            };
        });
    }

    function isRunning(action) {
        return !!action && action.state === 'running';
    }

    // ---- HTML fragments (every server-provided string goes through enc) ----

    function unreachableHtml() {
        var url = enc(origin());
        return '<i class="fa fa-exclamation-triangle warning"></i> ' +
            enc(gt('The PRS endpoint of this node does not answer.')) + ' ' +
            enc(gt('If it runs, open')) + ' <a href="' + url + '" target="_blank" rel="noopener">' +
            url + '</a> ' + enc(gt('once, accept its certificate, then reload.'));
    }

    function errorHtml(message) {
        return '<i class="fa fa-times critical"></i> ' + enc(message);
    }

    function runsHtml(runs) {
        runs = runs || {};
        var last = runs.last;
        var text = enc(gt('Last run')) + ': ';
        if (last) {
            text += enc(formatTime(last.ended || last.started));
            text += last.summary ? ', ' + enc(last.summary) : '';
            text += last.code ? ' (' + enc(gt('exit code')) + ' ' + enc(last.code) + ')' : '';
        } else {
            text += enc(gt('none'));
        }
        text += '. ' + enc(gt('Next run')) + ': ';
        if (!runs.daemon) {
            text += enc(gt('none (the PRS daemon is not running)'));
        } else {
            text += enc(runs.next ? formatTime(runs.next) : gt('not scheduled'));
        }
        return text + '.';
    }

    function summaryHtml(status) {
        var spread = typeof status.spread === 'number' ? status.spread.toFixed(1) : '?';
        return enc(gt('Spread')) + ': <b>' + enc(spread) + '</b> ' +
            enc(gt('percentage points')) + ' (' + enc(status.method) + ', ' +
            enc(gt('balanced at')) + ' ' + enc(status.balanciness) + '). ' +
            runsHtml(status.runs) + ' <span class="pmx-hint">PRS ' + enc(status.version) + ' ' +
            enc(gt('on')) + ' ' + enc(status.node) + '</span>';
    }

    function planSummaryHtml(plan, kind, node) {
        var head = kind === 'maintenance'
            ? enc(gt('Migrate VM workloads away from')) + ' <b>' + enc(node) + '</b>'
            : enc(gt('Rebalance VM workloads'));
        var spread = enc(gt('Spread')) + ' ' + enc(plan.spread_before) + ' &rarr; ' +
            enc(plan.spread_after) + ' ' + enc(gt('percentage points'));
        return head + ': ' + enc((plan.migrations || []).length) + ' ' + enc(gt('migrations')) +
            '. ' + spread + '.<br>' + enc(gt('Verdict')) + ': ' + enc(plan.verdict);
    }

    function keptHtml(plan) {
        var html = '';
        var lists = [
            ['not_moved', gt('Not moved (must stay)')],
            ['blocked', gt('Blocked (Proxmox refuses to migrate)')],
        ];
        lists.forEach(function (list) {
            var rows = keptRows(plan, list[0]);
            if (!rows.length) {
                return;
            }
            html += '<b>' + enc(list[1]) + '</b><ul>';
            rows.forEach(function (r) {
                html += '<li>' + enc(r.guest) + ' ' + enc(gt('on')) + ' ' + enc(r.node) +
                    ': ' + enc(r.reason) + '</li>';
            });
            html += '</ul>';
        });
        return html;
    }

    function statusCell(value, meta, record) {
        var icons = {
            pending: 'fa-clock-o',
            running: 'fa-spinner fa-pulse',
            done: 'fa-check good',
            failed: 'fa-times critical',
            skipped: 'fa-minus',
        };
        var html = '<i class="fa fa-fw ' + (icons[value] || 'fa-question') + '"></i> ' + enc(value);
        var why = record && record.get ? record.get('status_reason') : '';
        return why ? html + ': ' + enc(why) : html;
    }

    function cell(value) {
        return enc(value);
    }

    var ui = {
        DEFAULT_PORT: DEFAULT_PORT,
        ITEM_ID: ITEM_ID,
        gettext: gt,
        port: port,
        origin: origin,
        endpoint: endpoint,
        ticket: ticket,
        request: request,
        canMigrate: canMigrate,
        isRunning: isRunning,
        formatTime: formatTime,
        nodeRows: nodeRows,
        planRows: planRows,
        keptRows: keptRows,
        actionRows: actionRows,
        unreachableHtml: unreachableHtml,
        errorHtml: errorHtml,
        summaryHtml: summaryHtml,
        planSummaryHtml: planSummaryHtml,
        keptHtml: keptHtml,
        statusCell: statusCell,
        cell: cell,
    };
    Ext.ns('PRS');
    PRS.ui = ui;

    // ---- the plan preview window ----

    Ext.define('PRS.window.Plan', {
        extend: 'Ext.window.Window',
        alias: 'widget.prsPlanWindow',

        // config: plan, kind ('rebalance' | 'maintenance'), node, canExecute, execute (a
        // function returning a promise; the window closes when it resolves).
        modal: true,
        width: 900,
        height: 560,
        layout: { type: 'vbox', align: 'stretch' },
        bodyPadding: 5,

        initComponent: function () {
            var me = this;
            var plan = me.plan || {};
            var count = (plan.migrations || []).length;
            me.title = me.kind === 'maintenance'
                ? gt('Migrate VM workloads away') + ': ' + enc(me.node)
                : gt('Rebalance VM workloads');
            me.items = [
                { xtype: 'component', itemId: 'summary', html: planSummaryHtml(plan, me.kind, me.node), padding: '0 0 5 0' },
                me.migrationsGrid(plan),
                { xtype: 'component', itemId: 'kept', html: keptHtml(plan), scrollable: true, maxHeight: 160 },
                { xtype: 'component', itemId: 'message', hidden: true, padding: '5 0 0 0' },
            ];
            me.buttons = [
                {
                    text: gt('Execute'),
                    itemId: 'execute',
                    disabled: !me.canExecute || count === 0,
                    handler: function () { me.onExecute(); },
                },
                { text: gt('Cancel'), handler: function () { me.close(); } },
            ];
            me.callParent();
        },

        migrationsGrid: function (plan) {
            return {
                xtype: 'grid',
                itemId: 'migrations',
                flex: 1,
                store: Ext.create('Ext.data.Store', {
                    fields: ['guest', 'type', 'source', 'target', 'size', 'reason'],
                    data: planRows(plan),
                }),
                viewConfig: { deferEmptyText: false, emptyText: gt('No migration: nothing to do.') },
                columns: [
                    { header: gt('Guest'), dataIndex: 'guest', width: 170, renderer: cell },
                    { header: gt('Type'), dataIndex: 'type', width: 60, renderer: cell },
                    { header: gt('From'), dataIndex: 'source', width: 90, renderer: cell },
                    { header: gt('To'), dataIndex: 'target', width: 90, renderer: cell },
                    { header: gt('Size'), dataIndex: 'size', width: 80, renderer: cell },
                    { header: gt('Reason'), dataIndex: 'reason', flex: 1, renderer: cell },
                ],
            };
        },

        onExecute: function () {
            var me = this;
            me.down('#execute').setDisabled(true);
            return me.execute().then(function () {
                me.close();
            }, function (err) {
                var msg = me.down('#message');
                msg.update(err.unreachable ? unreachableHtml() : errorHtml(err.message));
                msg.setHidden(false);
                me.down('#execute').setDisabled(false);
            });
        },
    });

    // ---- the panel: Datacenter -> HA -> Rebalancing ----

    Ext.define('PRS.panel.Rebalancing', {
        extend: 'Ext.panel.Panel',
        alias: 'widget.prsRebalancingPanel',

        pollInterval: 3000, // ms between GET status while an action runs
        layout: { type: 'vbox', align: 'stretch' },
        border: false,

        initComponent: function () {
            var me = this;
            me.status = null;
            me.busy = false;
            me.nodeStore = Ext.create('Ext.data.Store', { fields: ['node', 'usage', 'role'] });
            me.pickStore = Ext.create('Ext.data.Store', { fields: ['node'] });
            me.actionStore = Ext.create('Ext.data.Store', {
                fields: ['guest', 'source', 'target', 'status', 'status_reason', 'seconds', 'reason'],
            });
            me.tbar = me.toolbarItems();
            me.items = [
                { xtype: 'component', itemId: 'message', padding: '5 10', hidden: true },
                { xtype: 'component', itemId: 'summary', padding: '5 10' },
                { xtype: 'component', itemId: 'hint', padding: '0 10 5 10', hidden: true },
                me.nodesGrid(),
                me.actionGrid(),
            ];
            me.callParent();
            me.on('destroy', me.stopPolling, me);
            me.updateButtons();
            me.reload();
        },

        toolbarItems: function () {
            var me = this;
            return [
                {
                    text: gt('Rebalance VM workloads'),
                    itemId: 'rebalance',
                    iconCls: 'fa fa-balance-scale',
                    disabled: true,
                    handler: function () { return me.preview('rebalance'); },
                },
                '-',
                {
                    xtype: 'combobox',
                    itemId: 'node',
                    fieldLabel: gt('Node'),
                    labelWidth: 40,
                    width: 200,
                    editable: false,
                    queryMode: 'local',
                    store: me.pickStore,
                    displayField: 'node',
                    valueField: 'node',
                    listConfig: { getInnerTpl: function (field) { return '{' + field + ':htmlEncode}'; } },
                    listeners: { change: function () { me.updateButtons(); } },
                },
                {
                    text: gt('Migrate VM workloads away'),
                    itemId: 'maintenance',
                    iconCls: 'fa fa-sign-out',
                    disabled: true,
                    handler: function () { return me.preview('maintenance', me.down('#node').getValue()); },
                },
                '->',
                { text: gt('Reload'), iconCls: 'fa fa-refresh', handler: function () { me.reload(); } },
            ];
        },

        nodesGrid: function () {
            var me = this;
            return {
                xtype: 'grid',
                itemId: 'nodes',
                title: gt('Nodes'),
                flex: 1,
                store: me.nodeStore,
                viewConfig: { deferEmptyText: false, emptyText: gt('No data') },
                columns: [
                    { header: gt('Node'), dataIndex: 'node', width: 150, renderer: cell },
                    { header: gt('Usage'), dataIndex: 'usage', width: 100, renderer: formatPercent },
                    { header: gt('Role'), dataIndex: 'role', flex: 1, renderer: cell },
                ],
            };
        },

        actionGrid: function () {
            var me = this;
            return {
                xtype: 'grid',
                itemId: 'action',
                title: gt('Migrations'),
                flex: 1,
                hidden: true,
                store: me.actionStore,
                viewConfig: { deferEmptyText: false, emptyText: gt('No migration yet') },
                columns: [
                    { header: gt('Guest'), dataIndex: 'guest', width: 170, renderer: cell },
                    { header: gt('From'), dataIndex: 'source', width: 90, renderer: cell },
                    { header: gt('To'), dataIndex: 'target', width: 90, renderer: cell },
                    { header: gt('Status'), dataIndex: 'status', flex: 1, renderer: statusCell },
                    { header: gt('Reason'), dataIndex: 'reason', flex: 1, renderer: cell },
                ],
            };
        },

        isGone: function () {
            return !!(this.destroyed || this.isDestroyed);
        },

        setMessage: function (html) {
            var msg = this.down('#message');
            msg.update(html || '');
            msg.setHidden(!html);
        },

        reload: function () {
            var me = this;
            return request('GET', 'status').then(function (status) {
                if (!me.isGone()) {
                    me.onStatus(status);
                }
            }, function (err) {
                if (!me.isGone()) {
                    me.onStatusError(err);
                }
            });
        },

        onStatus: function (status) {
            var me = this;
            me.status = status;
            me.setMessage('');
            me.down('#summary').update(summaryHtml(status));
            me.nodeStore.setData(nodeRows(status));
            me.pickStore.setData(nodeRows(status).map(function (n) { return { node: n.node }; }));
            me.showAction(status.action);
            me.updateButtons();
            if (isRunning(status.action)) {
                me.schedulePoll();
            }
        },

        onStatusError: function (err) {
            var me = this;
            me.setMessage(err.unreachable ? unreachableHtml() : errorHtml(err.message));
            if (me.status && isRunning(me.status.action)) {
                me.schedulePoll(); // keep following a running action through a short outage
            } else {
                me.status = null;
            }
            me.updateButtons();
        },

        showAction: function (action) {
            var me = this;
            var grid = me.down('#action');
            if (!action) {
                grid.setHidden(true);
                return;
            }
            var who = action.user ? ' (' + action.user + ')' : '';
            var what = action.kind === 'maintenance'
                ? gt('Migrate VM workloads away from') + ' ' + action.node
                : gt('Rebalance VM workloads');
            grid.setTitle(enc(what + who + ': ' + action.state +
                (action.message ? ', ' + action.message : '')));
            me.actionStore.setData(actionRows(action));
            grid.setHidden(false);
        },

        // Action buttons are disabled, never hidden: without VM.Migrate in GuiCap, when the
        // endpoint says the user may not act, before the status came, or while an action runs.
        updateButtons: function () {
            var me = this;
            var status = me.status;
            var running = !!status && isRunning(status.action);
            var why = '';
            if (!canMigrate()) {
                why = gt('Actions need the VM.Migrate privilege on /.');
            } else if (status && status.can_act === false) {
                why = gt('Actions need the VM.Migrate privilege on /.') + ' ' +
                    (status.user || '') + ' ' + gt('lacks it.');
            }
            var blocked = !!why || !status || !status.nodes || running || me.busy;
            me.down('#rebalance').setDisabled(blocked);
            me.down('#maintenance').setDisabled(blocked || !me.down('#node').getValue());
            var hint = me.down('#hint');
            hint.update(why ? '<i class="fa fa-info-circle"></i> ' + enc(why) : '');
            hint.setHidden(!why);
        },

        preview: function (kind, node) {
            var me = this;
            var body = kind === 'maintenance' ? { action: kind, node: node } : { action: kind };
            me.busy = true;
            me.updateButtons();
            return request('POST', 'preview', body).then(function (answer) {
                me.busy = false;
                if (me.isGone()) {
                    return null;
                }
                me.updateButtons();
                return me.openPlan(answer.plan || {}, kind, node);
            }, function (err) {
                me.busy = false;
                if (!me.isGone()) {
                    me.updateButtons();
                    me.setMessage(err.unreachable ? unreachableHtml() : errorHtml(err.message));
                }
            });
        },

        openPlan: function (plan, kind, node) {
            var me = this;
            var win = Ext.create('PRS.window.Plan', {
                plan: plan,
                kind: kind,
                node: node,
                canExecute: canMigrate() && !!me.status && me.status.can_act !== false,
                execute: function () { return me.execute(kind, node); },
            });
            me.showWindow(win);
            return win;
        },

        showWindow: function (win) {
            win.show();
        },

        execute: function (kind, node) {
            var me = this;
            var call = kind === 'maintenance'
                ? request('POST', 'maintenance', { node: node })
                : request('POST', 'rebalance', {});
            return call.then(function (answer) {
                if (me.isGone()) {
                    return;
                }
                me.status = me.status || {};
                me.status.action = answer.action;
                me.showAction(answer.action);
                me.updateButtons();
                me.schedulePoll();
            });
        },

        schedulePoll: function () {
            var me = this;
            me.stopPolling();
            if (me.isGone()) {
                return;
            }
            me.pollTimer = window.setTimeout(function () {
                me.pollTimer = null;
                me.reload();
            }, me.pollInterval);
        },

        stopPolling: function () {
            if (this.pollTimer) {
                window.clearTimeout(this.pollTimer);
                this.pollTimer = null;
            }
        },
    });

    // ---- the menu entry ----

    // Only where the Datacenter view exists: overriding a missing class would make the Loader
    // try to fetch it. (The mobile UI, a future rename: the panel stays defined, no entry.)
    if (!Ext.ClassManager.get('PVE.dc.Config')) {
        return;
    }

    Ext.define('PRS.override.dc.Config', {
        override: 'PVE.dc.Config',

        initComponent: function () {
            var me = this;
            me.callParent(arguments);
            try {
                me.addRebalancingItem();
            } catch (e) {
                if (window.console) {
                    window.console.warn('PRS UI add-on disabled:', e);
                }
            }
        },

        // After PVE built its menu: insert under 'ha' through the public insertNodes. No 'ha'
        // (the user lacks Sys.Audit, or PVE changed its menu) means no entry; savedItems
        // holding our id means it is there already (this file loaded twice).
        addRebalancingItem: function () {
            var me = this;
            var root = me.store && me.store.getRoot();
            var ha = root && root.findChild('id', 'ha', true);
            if (!ha || typeof me.insertNodes !== 'function' || !me.savedItems || me.savedItems[ITEM_ID]) {
                return;
            }
            me.insertNodes([{
                xtype: 'prsRebalancingPanel',
                title: gt('Rebalancing'),
                groups: ['ha'],
                iconCls: 'fa fa-balance-scale',
                itemId: ITEM_ID,
            }]);
            // A deep link or a reload on our item asked for it (state 'dctab') before it
            // existed, so PVE fell back to its first item: select ours now.
            var state = me.hstateid && me.sp && me.sp.get(me.hstateid);
            if (state && state.value === ITEM_ID) {
                ha.expand();
                me.down('#menu').setSelection(ha.findChild('id', ITEM_ID));
            }
        },
    });
}());
