"""The real Proxmox VE web UI (pve-manager 8.4 and 9.2, built from the Proxmox source mirrors) in
headless Chromium, against the fake cluster, with PRS's web-UI add-on (webui/pve-prs-ui.js) loaded
as the package's patch script loads it: log in through the real login form, dismiss "No valid
subscription", open Datacenter -> HA -> Rebalancing, and require zero page exceptions.

Pieces: tests/realui/build.sh (the UI tree), tests/realui/server.py (pveproxy-like server that
proxies /api2 to the fake cluster), tests/realui/cdp.py (DevTools Protocol client).
Needs the mirrors (/work/.mirror or $PRS_MIRROR_DIR) and what tests/lib.sh need_realui installs;
skips otherwise. Screenshots go to $PRS_SCREENSHOTS (default: the test's tmp dir).
$PRS_REALUI_ADDON overrides the add-on file (default webui/pve-prs-ui.js).
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip('fakepve')
pytest.importorskip('aiohttp')
pytest.importorskip('websockets', reason='the real-UI tests drive Chromium with PyPI websockets')

from prsmodule import EXECUTABLE  # noqa: E402
from realui.cdp import CHROMIUM, Browser  # noqa: E402
from realui.server import UiServer  # noqa: E402

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(TESTS_DIR)
BUILD = os.path.join(TESTS_DIR, 'realui', 'build.sh')
MIRRORS = os.environ.get('PRS_MIRROR_DIR', '/work/.mirror')
ADDON = os.environ.get('PRS_REALUI_ADDON') or os.path.join(REPO_DIR, 'webui', 'pve-prs-ui.js')
RELEASES = ['7.4', '8.4', '9.0', '9.2']
# The only request allowed to fail: Debian's fonts-font-logos is not part of the test tree.
EXPECTED_404 = re.compile(r'/pve2/font-logos/css/font-logos\.css$')

# JS snippets (ExtJS finds the elements; the browser gets real mouse clicks and typed text).
VISIBLE_MSGBOX = ("Ext.ComponentQuery.query('messagebox').filter(function (m) { return m.isVisible(); })[0]")
DC_CONFIG = ("Ext.ComponentManager.getAll().filter(function (c) {"
             " return c.$className === 'PVE.dc.Config' && c.isVisible(true); })[0]")


def field(name):
    return "Ext.ComponentQuery.query('textfield[name=%s]')[0].inputEl.dom" % name


def menu_node(itemid):
    return "%s.store.getRoot().findChild('id', '%s', true)" % (DC_CONFIG, itemid)


def menu_item(itemid):
    """The element of Datacenter's menu entry itemid (pve-manager panel/ConfigPanel.js: a treelist
    with itemId 'menu' over a TreeStore keyed by itemId)."""
    return ("(function (dc) { var n = dc && dc.store.getRoot().findChild('id', '%s', true);"
            " var i = n && dc.down('#menu').getItem(n); return i && (i.textElement || i.element).dom; })(%s)"
            % (itemid, DC_CONFIG))


def ui_tree(release):
    """build.sh's tree for release; skips when the mirrors or the tools are missing."""
    for repo in ('pve-manager', 'proxmox-widget-toolkit'):
        if not os.path.isfile(os.path.join(MIRRORS, 'proxmox+%s' % repo, 'repo', 'HEAD')):
            pytest.skip('the Proxmox source mirror %s/proxmox+%s/repo is absent (PRS_MIRROR_DIR)' % (MIRRORS, repo))
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip('%s is missing: run need_realui (tests/lib.sh)' % CHROMIUM)
    if not shutil.which('perl') or subprocess.run(['perl', '-MTemplate', '-e1'], capture_output=True).returncode:
        pytest.skip('Template Toolkit (Debian libtemplate-perl) is missing: run need_realui (tests/lib.sh)')
    result = subprocess.run(['sh', BUILD, release], capture_output=True, text=True, timeout=600)
    if result.returncode == 3:
        pytest.skip('%s: run need_realui (tests/lib.sh)' % result.stderr.strip())
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def addon_file(tmp_path, rename=None):
    """The add-on, optionally with a hook point renamed as a future PVE might:
    rename=(old, new) replaces every quoted old in the script."""
    source = ADDON
    if not rename:
        return source
    with open(source) as fh:
        text = fh.read()
    old, new = rename
    changed = re.sub(r"""(['"])%s\1""" % re.escape(old), lambda m: m.group(1) + new + m.group(1), text)
    assert changed != text, '%s has no quoted %r to rename' % (source, old)
    path = tmp_path / 'pve-prs-ui.js'
    path.write_text(changed)
    return str(path)


@pytest.fixture
def screenshots(tmp_path):
    directory = os.environ.get('PRS_SCREENSHOTS') or str(tmp_path / 'screenshots')
    os.makedirs(directory, exist_ok=True)
    return directory


class RealUi(object):
    """The fake cluster, the pveproxy-like server and Chromium, with the steps an admin takes."""

    def __init__(self, cluster, release, addon, screenshots, name, run=None):
        """run: the conftest `run` fixture, to start a PRS daemon with its web UI endpoint on,
        presenting the same certificate as the UI server (as PRS does with pveproxy's)."""
        self.release, self.shots, self.name = release, screenshots, name
        self.started = time.monotonic()
        self.prs = None
        root = ui_tree(release)
        c = self.cluster = cluster('demo.json')      # unbalanced: pve1 ~71 % memory, pve4 ~3 %
        nodename = sorted(c.node_usage())[0]
        self.prs_port = free_port() if run else 8016
        self.server = UiServer(root, c.url, c.cafile, nodename, addon=addon, prs_port=self.prs_port,
                               certfile=c.cafile, keyfile=c.keyfile).start()
        try:
            if run:
                self.prs = start_prs(c, run, self.prs_port, self.server.url)
            self.browser = Browser(trust=[self.server.certfile])
        except Exception:
            self.close()
            raise

    def close(self):
        try:
            if getattr(self, 'browser', None):
                self.browser.close()
        finally:
            self.server.stop()
            if self.prs and self.prs.poll() is None:
                self.prs.kill()
                self.prs.wait()

    def shot(self, step):
        return self.browser.screenshot(os.path.join(self.shots, '%s-%s.png' % (self.name, step)))

    def js(self, expression):
        return self.browser.evaluate(expression)

    def login(self, user='root', password='secret', realm=None, page='/'):
        b = self.browser
        b.navigate(self.server.url + page)
        b.wait_for("!!(window.Ext && Ext.isReady && Ext.ComponentQuery.query('textfield[name=username]').length)",
                   what='the login form')
        self.shot('1-login')
        if realm:       # the realm picker of the login form (the realms GET /access/domains lists)
            b.wait_for("Ext.ComponentQuery.query('field[name=realm]')[0].getStore().getCount() > 1",
                       what='the realm list')
            self.js("(Ext.ComponentQuery.query('field[name=realm]')[0].setValue('%s'), 1)" % realm)
        b.click(*b.center(field('username')))
        b.insert_text(user)
        b.click(*b.center(field('password')))
        b.insert_text(password)
        b.press('Enter')

    def dismiss_subscription_notice(self):
        """Proxmox.Utils.checked_command() after the login (pve-manager Workspace.js)."""
        b = self.browser
        title = b.wait_for("(%s || {}).title" % VISIBLE_MSGBOX, what='the subscription notice')
        assert title == 'No valid subscription'
        b.click(*b.center("%s.down('button[itemId=ok]').el.dom" % VISIBLE_MSGBOX))
        b.wait_for("!%s" % VISIBLE_MSGBOX, what='the notice to close')

    def open_datacenter(self):
        b = self.browser
        b.click(*b.center("(function (t) { return t.getView().getNode(t.getRootNode()); })"
                          "(Ext.ComponentQuery.query('pveResourceTree')[0])"))
        b.wait_for('!!' + DC_CONFIG, what='Datacenter')

    def open_menu(self, itemid):
        b = self.browser
        b.click(*b.center(menu_item(itemid)))
        b.wait_for("(function (p) { return p && p.itemId === '%s' && p.rendered && p.isVisible(true); })"
                   "(%s.getLayout().getActiveItem())" % (itemid, DC_CONFIG), what='the %s panel' % itemid)

    def ha_children(self):
        return self.js("%s.childNodes.map(function (n) { return n.data.id; })" % menu_node('ha'))

    def assert_clean(self):
        """Zero uncaught exceptions; no failed request but the expected font-logos.css."""
        assert self.browser.exceptions == []
        failed = [(status, url) for status, url in self.browser.http_errors if not EXPECTED_404.search(url)]
        assert failed == []
        warnings = [text for kind, text in self.browser.console if 'PRS' in text]
        assert warnings == []


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def start_prs(c, run, port, origin):
    """The PRS daemon with [ui] port on (schedule 0: it acts only when asked), allowing the UI
    server's origin; returns the process once the endpoint answers."""
    import requests
    conf = run.conf(c, "[balancing]\n\n[service]\ndaemon = 1\nschedule = 0\n[ui]\nport = %d\n"
                    "allowed_origins = %s\ncertificate = %s\nkey = %s\n" % (port, origin, c.cafile, c.keyfile))
    proc = subprocess.Popen([sys.executable, EXECUTABLE, '-c', conf],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while True:
        try:
            if requests.get('https://127.0.0.1:%d/' % port, verify=c.cafile, timeout=5).status_code == 200:
                return proc
        except requests.exceptions.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError('the PRS endpoint did not come up (exit %s)' % proc.poll())
        time.sleep(0.1)


@pytest.fixture
def realui(cluster, screenshots, request):
    made = []

    def make(release, addon, run=None):
        name = re.sub(r'[^\w.-]+', '_', request.node.name.replace('test_', '', 1)).strip('_')
        ui = RealUi(cluster, release, addon, screenshots, name, run)
        made.append(ui)
        return ui
    yield make
    for ui in made:
        ui.close()


PANEL = "Ext.ComponentQuery.query('prsRebalancingPanel')[0]"
PLAN_WINDOW = "Ext.ComponentQuery.query('prsPlanWindow').filter(function (w) { return w.isVisible(); })[0]"


def run_action(ui, kind, node=None):
    """Click the action's button in the panel, check the preview window against the endpoint's
    own dry run, click Execute and follow the panel until the action has ended; returns the
    plan previewed and the action as the endpoint tells it at the end."""
    b = ui.browser
    button = 'rebalance' if kind == 'rebalance' else 'maintenance'
    if node:
        # The node picker, as the admin uses it: open the list, click the node.
        b.click(*b.center("%s.down('#node').getTriggers().picker.el.dom" % PANEL))
        b.wait_for("%s.down('#node').getPicker().isVisible()" % PANEL, what='the node list')
        b.click(*b.center("(function (c) { var p = c.getPicker(); return p.getNode(p.getStore()"
                          ".findRecord('node', '%s')); })(%s.down('#node'))" % (node, PANEL)))
        b.wait_for("%s.down('#node').getValue() === '%s'" % (PANEL, node), what='the picked node')
    b.wait_for("!%s.down('#%s').isDisabled()" % (PANEL, button), what='the %s button enabled' % button)
    b.click(*b.center("%s.down('#%s').el.dom" % (PANEL, button)))
    b.wait_for("!!%s && %s.down('#migrations').getStore().getCount() > 0" % (PLAN_WINDOW, PLAN_WINDOW),
               what='the plan preview', timeout=60)
    ui.shot('%s-preview' % kind)
    shown = ui.js("%s.down('#migrations').getStore().getRange().map(function (r) {"
                  " return [r.get('source'), r.get('target'), r.get('reason')]; })" % PLAN_WINDOW)
    kept = ui.js("%s.down('#kept').el.dom.textContent" % PLAN_WINDOW)
    assert ui.cluster.migrations == [] or kind != 'rebalance', 'a preview migrates nothing'
    b.click(*b.center("%s.down('#execute').el.dom" % PLAN_WINDOW))
    b.wait_for("!%s" % PLAN_WINDOW, what='the preview to close')
    b.wait_for("(function (p) { var s = p.down('#action').getStore(); return p.down('#action').isVisible()"
               " && s.getCount() > 0 && s.getRange().every(function (r) {"
               " return ['done', 'failed', 'skipped'].indexOf(r.get('status')) >= 0; }); })(%s)" % PANEL,
               what='every migration of the action ended', timeout=120)
    ui.shot('%s-done' % kind)
    return shown, kept


def exercise_actions(ui):
    """Both actions through the panel's own buttons, against the running PRS daemon
    (ui.prs: [ui] port = ui.prs_port, the UI server's certificate and origin): rebalance
    (preview, execute), then empty pve1 through the node picker (preview listing what stays,
    execute). The migrations happen on the fake cluster, run by PRS for root@pam."""
    b = ui.browser
    b.wait_for("%s.down('#nodes').getStore().getCount() === %d" % (PANEL, len(ui.cluster.node_usage())),
               what='the node usage from the PRS endpoint', timeout=30)
    ui.shot('status')
    before = dict(ui.cluster.placement())
    shown, _ = run_action(ui, 'rebalance')
    assert shown and all(reason for _, _, reason in shown)
    moved = ui.cluster.migrations
    assert [(m['source'], m['target']) for m in moved] == [(src, dst) for src, dst, _ in shown]
    usage = [100.0 * u['mem'] / u['maxmem'] for u in ui.cluster.node_usage().values() if u['online']]
    assert max(usage) - min(usage) <= 10, 'the demo cluster ends balanced'
    assert ui.cluster.placement() != before
    count = len(moved)
    shown, kept = run_action(ui, 'maintenance', node='pve1')
    assert shown and all(src == 'pve1' for src, _, reason in shown if reason.startswith('drain'))
    assert len(ui.cluster.migrations) == count + len(shown)
    left = sorted(vmid for vmid, node in ui.cluster.placement().items() if node == 'pve1')
    for vmid in left:                       # what stays was listed in the preview, with its reason
        assert str(vmid) in kept, (vmid, kept)
    assert {t['user'] for t in ui.cluster.tasks('qmigrate')} == {'root@pam'}   # PRS's own credentials


@pytest.mark.parametrize('release', RELEASES)
def test_rebalancing_item_in_the_real_ui(realui, release, tmp_path):
    ui = realui(release, addon_file(tmp_path))
    ui.login()
    ui.dismiss_subscription_notice()
    assert ui.js("Ext.state.Manager.get('GuiCap').vms['VM.Migrate']") == 1
    ui.open_datacenter()
    ui.open_menu('ha')
    ui.shot('2-ha')
    children = ui.ha_children()
    assert children == ['ha-groups' if release < '9' else 'ha-rules', 'ha-fencing', 'prs-rebalancing']
    assert ui.js("%s.data.text" % menu_node('prs-rebalancing')) == 'Rebalancing'
    ui.open_menu('prs-rebalancing')
    ui.shot('3-rebalancing')
    ui.assert_clean()

    # A deep link (the state in the URL hash) survives a reload: the add-on re-selects its item.
    assert ui.js('location.hash').endswith('=prs-rebalancing')
    ui.browser.reload()
    ui.browser.wait_for("!!%s && %s.getLayout().getActiveItem().itemId === 'prs-rebalancing'"
                        " && %s.getLayout().getActiveItem().isVisible(true)" % (DC_CONFIG, DC_CONFIG, DC_CONFIG),
                        what='the re-selected Rebalancing panel after a reload')
    ui.shot('4-reloaded')
    ui.assert_clean()
    assert time.monotonic() - ui.started < 60


@pytest.mark.parametrize('release', RELEASES)
@pytest.mark.parametrize('hook', ['ha', 'PVE.dc.Config'])
def test_a_renamed_hook_point_leaves_the_ui_working_without_the_item(realui, release, hook, tmp_path):
    """If a future pve-manager renamed the HA menu node or the Datacenter class, the add-on adds
    nothing and throws nothing (simulated by renaming what the add-on looks for)."""
    ui = realui(release, addon_file(tmp_path, rename=(hook, hook + '-renamed-by-test')))
    ui.login()
    ui.dismiss_subscription_notice()
    ui.open_datacenter()
    ui.open_menu('ha')
    ui.shot('ha-' + hook)
    assert ui.ha_children() == ['ha-groups' if release < '9' else 'ha-rules', 'ha-fencing']
    assert ui.js("!%s" % menu_node('prs-rebalancing'))
    ui.open_menu('ha-fencing')       # the rest of the menu still works
    ui.assert_clean()


@pytest.mark.parametrize('release', RELEASES)
def test_the_panel_reaches_a_running_prs_endpoint(realui, run, release, tmp_path):
    """The full flow against the PRS daemon's endpoint (see exercise_actions)."""
    ui = realui(release, addon_file(tmp_path), run=run)
    ui.login()
    ui.dismiss_subscription_notice()
    ui.open_datacenter()
    ui.open_menu('ha')
    ui.open_menu('prs-rebalancing')
    exercise_actions(ui)
    ui.shot('actions')
    ui.assert_clean()
    assert time.monotonic() - ui.started < 60


@pytest.mark.parametrize('release', RELEASES)
def test_users_without_the_privilege_see_greyed_buttons_or_no_item(realui, run, release, tmp_path):
    """viewer@pve (Sys.Audit on /) sees the item and the figures, with both actions greyed out and
    a hint why; the endpoint refuses the action all the same. nobody@pve (VM.Audit on its guests
    only) has no HA menu, so no item, and no error."""
    ui = realui(release, addon_file(tmp_path), run=run)
    c = ui.cluster
    c.add_user('viewer@pve', 'viewer-pw')
    c.add_user('nobody@pve', 'nobody-pw')
    c.grant('viewer@pve', '/', 'Sys.Audit', 'VM.Audit')
    c.grant('nobody@pve', '/vms', 'VM.Audit')
    ui.login('viewer', 'viewer-pw', realm='pve')
    ui.dismiss_subscription_notice()
    ui.open_datacenter()
    ui.open_menu('ha')
    ui.open_menu('prs-rebalancing')
    ui.browser.wait_for("%s.down('#nodes').getStore().getCount() > 0" % PANEL, what='the figures', timeout=30)
    assert ui.js("%s.down('#rebalance').isDisabled() && %s.down('#maintenance').isDisabled()" % (PANEL, PANEL))
    assert ui.js("%s.down('#hint').isVisible()" % PANEL)
    ui.shot('viewer')
    refused = ui.js("fetch('https://127.0.0.1:%d/prs/v1/rebalance', {method: 'POST', credentials: 'omit',"
                    " headers: {'X-PRS-PVE-Ticket': Ext.util.Cookies.get('PVEAuthCookie'),"
                    " 'Content-Type': 'application/json'}, body: '{}'})"
                    ".then(function (r) { return r.json().then(function (d) { return [r.status, d]; }); })"
                    % ui.prs_port)
    assert refused[0] == 401 and 'viewer@pve lacks VM.Migrate' in refused[1]['error']
    assert c.migrations == []
    # that 401 was asked for; any other failed request still counts
    ui.browser.http_errors[:] = [e for e in ui.browser.http_errors if not e[1].endswith('/prs/v1/rebalance')]
    ui.assert_clean()

    ui.js("(Proxmox.Utils.authClear(), 1)")     # log out (the cookie gone): a new page load shows the form
    ui.login('nobody', 'nobody-pw', realm='pve', page='/?second-login')
    ui.browser.wait_for("!!Ext.ComponentQuery.query('pveResourceTree')[0]", what='the workspace')
    ui.dismiss_subscription_notice()            # GET /nodes/{node}/subscription is open to every user
    ui.open_datacenter()
    assert ui.js("!%s && !%s" % (menu_node('ha'), menu_node('prs-rebalancing')))
    ui.shot('nobody')
    ui.assert_clean()
