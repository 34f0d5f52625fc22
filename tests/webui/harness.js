// Test harness for webui/pve-prs-ui.js: a jsdom window with the ExtJS 6.2 GPL build (npm
// extjs-gpl), an optional stand-in of pve-manager's PVE.panel.Config / PVE.dc.Config
// (standin.js), a recording fetch() and spies on every other way to reach the network.
//
// jsdom cannot lay out ExtJS ("getScrollbarSize called before DomReady"), so tests create
// components without rendering them and stay at class, store and config level.
//
// Node modules: npm ci --prefix "$PRS_NODE_DIR" with this directory's package-lock.json
// (default PRS_NODE_DIR: <repo>/.venv/node); a plain `npm ci` here works too.
'use strict'; // this harness runs in Node, not in the browser; the add-on itself must not

const fs = require('node:fs');
const path = require('node:path');
const { createRequire } = require('node:module');
const standin = require('./standin.js');

const REPO = path.resolve(__dirname, '..', '..');
const UI_FILE = path.join(REPO, 'webui', 'pve-prs-ui.js');
const HOST = 'pve1.example';

function nodeDir() {
    const candidates = [process.env.PRS_NODE_DIR, path.join(REPO, '.venv', 'node'), __dirname];
    for (const dir of candidates) {
        if (dir && fs.existsSync(path.join(dir, 'node_modules', 'jsdom', 'package.json'))) {
            return dir;
        }
    }
    throw new Error('jsdom and extjs-gpl are not installed: run npm ci --prefix "$PRS_NODE_DIR" ' +
        '(see tests/webui/package.json)');
}

const req = createRequire(path.resolve(nodeDir(), 'package.json'));
const { JSDOM, VirtualConsole } = req('jsdom');
const EXT_SOURCE = fs.readFileSync(req.resolve('extjs-gpl/build/ext-all-debug.js'), 'utf8');
const UI_SOURCE = fs.readFileSync(UI_FILE, 'utf8');

const TICKET = 'PVE:ops@pve:65F0A1B2::aGVsbG8+d29ybGQ/Zm9v=';
const CSRF = 'CSRF-SECRET-65F0A1B2:abcdef';
const ALL_CAPS = {
    vms: { 'VM.Migrate': 1, 'VM.PowerMgmt': 1 }, dc: { 'Sys.Audit': 1 }, storage: {}, nodes: {}, access: {},
};

function ok(status, data) {
    return { ok: status >= 200 && status < 300, status, text: () => Promise.resolve(JSON.stringify(data)) };
}

// options:
//   caps: GuiCap (default: all), gettext: false to leave gettext undefined,
//   pve: false (no stand-in at all) | 'panel-only' (PVE.panel.Config but no PVE.dc.Config)
//        | stand-in options (see standin.js: version, haId, insertNodesThrows)
//   state: {dctab: {value: ...}}, port: data-prs-port attribute (undefined: none),
//   routes: function(method, path, body) -> response object | Promise (default: 404;
//           env.routes may be replaced later),
//   source: the add-on's text (default: webui/pve-prs-ui.js), loads: how often to load it
function makeEnv(options = {}) {
    const errors = [];
    const warnings = [];
    const vc = new VirtualConsole();
    vc.on('jsdomError', (e) => {
        if (!/getContext|Could not parse CSS/.test(e.message)) errors.push(e.message);
    });
    vc.on('error', (...args) => {
        const text = args.map(String).join(' ');
        if (!/framing|IE cannot/.test(text)) errors.push(text);
    });
    vc.on('warn', (...args) => warnings.push(args.map(String).join(' ')));
    const portAttr = options.port === undefined ? '' : ` data-prs-port="${options.port}"`;
    const html = '<!DOCTYPE html><html><head>' +
        `<script type="text/javascript" src="/pve2/js/pve-prs-ui.js?ver=1.0-1"${portAttr}></script>` +
        '</head><body></body></html>';
    const dom = new JSDOM(html, { runScripts: 'dangerously', url: `https://${HOST}:8006/`, virtualConsole: vc });
    const window = dom.window;
    const inject = (source) => {
        const script = window.document.createElement('script');
        script.textContent = source;
        window.document.head.appendChild(script);
    };
    const env = { window, dom, errors, warnings, inject, calls: [], ajaxCalls: [], xhrs: 0, api2Calls: [] };

    inject(EXT_SOURCE);
    const Ext = window.Ext;
    env.Ext = Ext;
    Ext.state.Manager.setProvider(new Ext.state.Provider());
    Ext.state.Manager.set('GuiCap', options.caps || ALL_CAPS);
    Object.entries(options.state || {}).forEach(([k, v]) => Ext.state.Manager.set(k, v));
    if (options.gettext !== false) {
        window.gettext = (text) => `«${text}»`;
    }
    // What the PVE page has: the toolkit's CSRF token and request helper (spied on).
    window.Proxmox = { CSRFPreventionToken: CSRF, Utils: { API2Request: (o) => env.api2Calls.push(o) } };
    Ext.Ajax.request = (o) => { env.ajaxCalls.push(o); throw new Error('Ext.Ajax used'); };
    const RealXHR = window.XMLHttpRequest;
    window.XMLHttpRequest = function () { env.xhrs += 1; return new RealXHR(); };
    Ext.util.Cookies.set('PVEAuthCookie', TICKET, null, '/', null, true);

    env.routes = options.routes || (() => ok(404, { error: 'no route' })); // replaceable
    window.fetch = (url, init) => {
        const call = JSON.parse(JSON.stringify({ url, init }));
        env.calls.push(call);
        const u = new URL(url);
        const body = call.init.body === undefined ? undefined : JSON.parse(call.init.body);
        return Promise.resolve().then(() => env.routes(call.init.method, u.pathname, body, call));
    };

    if (options.pve !== false) {
        inject(standin.source(options.pve === 'panel-only' ? { panelOnly: true } : options.pve || {}));
    }
    const source = options.source || UI_SOURCE;
    for (let i = 0; i < (options.loads || 1); i += 1) inject(source);
    return env;
}

// Wait for pending promise callbacks and zero-delay timers of the window.
function settle(ms = 5) {
    return new Promise((resolve) => setTimeout(resolve, ms));
}

async function until(predicate, timeoutMs = 2000) {
    const end = Date.now() + timeoutMs;
    while (!predicate()) {
        if (Date.now() > end) throw new Error('timed out waiting');
        await settle(5);
    }
}

// The menu tree of a PVE.panel.Config as 'id' and 'parent/id' paths, depth first.
function treePaths(panel) {
    const out = [];
    const walk = (node, prefix) => {
        node.childNodes.forEach((child) => {
            const p = prefix ? `${prefix}/${child.getId()}` : child.getId();
            out.push(p);
            walk(child, p);
        });
    };
    walk(panel.store.getRoot(), '');
    return out;
}

// What the browser would show in each cell of a grid: its renderer's output, else the value.
function renderedCells(grid) {
    const cells = [];
    const columns = grid.getColumns ? grid.getColumns() : grid.columns;
    grid.getStore().each((record) => {
        columns.forEach((col) => {
            const value = record.get(col.dataIndex);
            cells.push(col.renderer ? String(col.renderer(value, {}, record)) : String(value));
        });
    });
    return cells;
}

module.exports = {
    makeEnv, settle, until, treePaths, renderedCells, ok, HOST, TICKET, CSRF, ALL_CAPS, UI_FILE, UI_SOURCE,
};
