"""A small pveproxy-like HTTPS server for the real Proxmox VE web UI in tests.

It serves a UI tree prepared by tests/realui/build.sh (the layout of an installed PVE) the way
pveproxy does, and proxies /api2/* to a fake cluster (tests/fakecluster.py, fakepve), papering over
what fakepve does not model. Each behaviour cites the Proxmox file and function it follows.

    srv = UiServer(root, upstream='https://127.0.0.1:PORT', cafile=..., nodename='pve1',
                   addon='webui/pve-prs-ui.js', prs_port=8016).start()
    ... srv.url ... srv.requests ...
    srv.stop()

Or by hand, against a running `fakecluster.py serve` (tests/realui/README in the docstring of main()):
    python tests/realui/server.py --root "$(tests/realui/build.sh 9.2)" --upstream URL --cafile ca.crt
"""

import argparse
import asyncio
import json
import mimetypes
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

ADDON_MARK = '<!-- pve-prs-ui -->'
REPO_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pve-manager PVE/Service/pveproxy.pm: $basedirs and init()'s add_dirs() (URL prefix -> directory
# under the installed root). Trees the tests do not build (noVNC, xterm.js, docs, i18n, font-logos,
# the mobile UI) simply answer 404, as a PVE without those packages would.
BASEDIRS = {
    'docs': 'usr/share/pve-docs',
    'extjs': 'usr/share/javascript/extjs',
    'fontawesome': 'usr/share/fonts-font-awesome',
    'fontlogos': 'usr/share/fonts-font-logos',
    'i18n': 'usr/share/pve-i18n',
    'manager': 'usr/share/pve-manager',
    'novnc': 'usr/share/novnc-pve',
    'yew_mobile': 'usr/share/pve-yew-mobile-gui',
    'widgettoolkit': 'usr/share/javascript/proxmox-widget-toolkit',
    'xtermjs': 'usr/share/pve-xtermjs',
}
DIRS = [   # longest prefix first
    ('/pve-docs/api-viewer/extjs/', 'extjs', ''),
    ('/pve2/fa/fonts/', 'fontawesome', 'fonts/'),
    ('/pve2/fa/css/', 'fontawesome', 'css/'),
    ('/pve2/font-logos/', 'fontlogos', ''),
    ('/pve2/images/', 'manager', 'images/'),
    ('/pve2/locale/', 'i18n', ''),
    ('/pve2/css/', 'manager', 'css/'),
    ('/pve2/ext6/', 'extjs', ''),
    ('/pve2/js/', 'manager', 'js/'),
    ('/pwt/images/', 'widgettoolkit', 'images/'),
    ('/pwt/themes/', 'widgettoolkit', 'themes/'),
    ('/pwt/css/', 'widgettoolkit', 'css/'),
    ('/pve-docs/', 'docs', ''),
    ('/xtermjs/', 'xtermjs', ''),
    ('/novnc/', 'novnc', ''),
    ('/yew-mobile/', 'yew_mobile', ''),
]
# init()'s server_config pages (besides '/', get_index()).
PAGES = {
    '/favicon.ico': 'usr/share/pve-manager/images/favicon.ico',
    '/proxmoxlib.js': 'usr/share/javascript/proxmox-widget-toolkit/proxmoxlib.js',
    '/qrcode.min.js': 'usr/share/javascript/qrcodejs/qrcode.min.js',
}

# pve-access-control src/PVE/Auth/Plugin.pm parse_config(): the two realms every PVE has.
REALMS = [
    {'realm': 'pam', 'type': 'pam', 'comment': 'Linux PAM standard authentication'},
    {'realm': 'pve', 'type': 'pve', 'comment': 'Proxmox VE authentication server'},
]

# pve-access-control src/PVE/RPCEnvironment.pm compute_api_permission(): which privileges, held on
# which paths, land in which group of the login's `cap` (Ext.state.Manager 'GuiCap' in the UI).
CAP_RE = {
    'vms': r'VM\.|Permissions\.Modify',
    'access': r'(User|Group)\.|Permissions\.Modify',
    'storage': r'Datastore\.|Permissions\.Modify',
    'nodes': r'Sys\.|Permissions\.Modify',
    'sdn': r'SDN\.|Permissions\.Modify',
    'dc': r'Sys\.Audit|Sys\.Modify|SDN\.',
    'mapping': r'Mapping\.|Permissions.Modify',
}
CAP_PATHS = ['/', '/nodes', '/access/groups', '/vms', '/storage', '/sdn', '/mapping']


def compute_cap(acl):
    """compute_api_permission() over {path: {priv: 1}} as fakepve's GET /access/permissions gives
    it: the required paths and every path with an ACL entry; privileges propagate down the tree
    (PVE::AccessControl::permission(), 'propagate' defaults to 1)."""
    def held(path):
        privs = set()
        for p, ps in acl.items():
            if p == '/' or path == p or path.startswith(p.rstrip('/') + '/'):
                privs.update(k for k, v in ps.items() if v)
        return privs
    cap = {group: {} for group in CAP_RE}
    for path in dict.fromkeys(CAP_PATHS + sorted(acl)):
        top = re.match(r'^/(\w+)', path)
        top = top.group(1) if top else 'dc'
        privs = held(path)
        if top == 'pool':
            for priv in privs:
                if priv.startswith('VM.'):
                    cap['vms'][priv] = 1
                elif priv.startswith('Datastore.'):
                    cap['storage'][priv] = 1
                elif priv == 'Permissions.Modify':
                    cap['storage'][priv] = cap['vms'][priv] = 1
            continue
        if top not in CAP_RE:
            continue
        for priv in privs:
            if re.match('^(%s)' % CAP_RE[top], priv):
                cap[top][priv] = 1
    return cap


def extract_auth_value(cookie_header, key='PVEAuthCookie'):
    """pve-http-server src/PVE/APIServer/Formatter.pm extract_auth_value(): the cookie's value,
    URI-unescaped (Ext.util.Cookies.set escapes the ticket; fakepve 0.5.0 compares it raw)."""
    m = re.search(r'(?:^|\s)%s(?:=| )([^;]*)' % re.escape(key), cookie_header or '')
    return urllib.parse.unquote(m.group(1)) if m and m.group(1) else None


def render_template(template, variables):
    """Template Toolkit, as get_index() runs it: Template->new({ABSOLUTE => 1})->process(...)."""
    script = ('use strict; use Template; use JSON::PP;'
              'my $v = JSON::PP->new->decode(do { local $/; <STDIN> });'
              'my $t = Template->new({ABSOLUTE => 1}); my $out = "";'
              '$t->process($ARGV[0], $v, \\$out) || die $t->error(), "\\n";'
              'binmode(STDOUT, ":encoding(UTF-8)"); print $out;')
    return subprocess.run(['perl', '-e', script, template], input=json.dumps(variables).encode(),
                          capture_output=True, check=True).stdout


PATCH_SCRIPT = os.path.join(REPO_DIR, 'webui', 'pve-prs-ui-patch')


def insert_addon(tpl_text, addon_version, prs_port):
    """Fallback when webui/pve-prs-ui-patch is absent: the add-on's script line as that script's
    `apply` inserts it: any marked line dropped, then the line, indented alike, after the first
    /pve2/js/pvemanagerlib.js line."""
    line = ('<script type="text/javascript" src="/pve2/js/pve-prs-ui.js?ver=%s" data-prs-port="%d"></script> %s'
            % (addon_version, prs_port or 8016, ADDON_MARK))
    out, done = [], False
    for old in tpl_text.splitlines(True):
        if ADDON_MARK in old:
            continue
        out.append(old)
        if not done and re.search(r'/pve2/js/pvemanagerlib\.js', old):
            out.append(re.match(r'[ \t]*', old).group(0) + line + '\n')
            done = True
    if not done:
        raise ValueError('no pvemanagerlib.js line in the template')
    return ''.join(out)


def patch_template(path, addon_version, prs_port):
    """Load the add-on into the template at path as the package does: `pve-prs-ui-patch apply`
    (PRS_UI_TPL, PRS_UI_VERSION, PRS_UI_PORT), else insert_addon()."""
    if os.path.isfile(PATCH_SCRIPT):
        env = dict(os.environ, PRS_UI_TPL=path, PRS_UI_VERSION=addon_version, PRS_UI_PORT=str(prs_port or 8016),
                   PRS_CONFIG='/nonexistent')
        subprocess.run(['sh', PATCH_SCRIPT, 'apply'], env=env, check=True, capture_output=True)
    else:
        with open(path) as fh:
            text = insert_addon(fh.read(), addon_version, prs_port)
        with open(path, 'w') as fh:
            fh.write(text)
    with open(path) as fh:
        if ADDON_MARK not in fh.read():
            raise RuntimeError('the add-on line is not in %s' % path)


class UiServer(object):
    """pveproxy for the tests, on 127.0.0.1, in a background thread (like FakeCluster)."""

    def __init__(self, root, upstream, cafile, nodename, addon=None, prs_port=None, addon_version='test',
                 certfile=None, keyfile=None, port=0, theme=None):
        self.root = os.path.abspath(root)
        self.upstream = upstream.rstrip('/')
        self.cafile = cafile
        self.nodename = nodename
        self.addon = addon and os.path.abspath(addon)
        self.prs_port = prs_port
        self.addon_version = addon_version
        self.certfile, self.keyfile = certfile, keyfile
        self.port = port
        self.theme = theme
        self.requests = []          # (method, path_qs, status), oldest first
        self.csrf = {}              # ticket -> CSRFPreventionToken, from the logins it proxied
        self._tmp = None
        self._loop = self._thread = self._runner = self._session = None
        with open(os.path.join(self.root, BASEDIRS['manager'], 'version')) as fh:
            self.version = fh.read().strip()
        with open(os.path.join(self.root, PAGES['/proxmoxlib.js'])) as fh:
            m = re.match(r'^// (.*)$', fh.readline().rstrip('\n'))
        self.wtversion = m.group(1) if m else ''

    @property
    def url(self):
        return 'https://127.0.0.1:%d' % self.port

    # --- lifecycle ---

    def start(self):
        self._tmp = tempfile.mkdtemp(prefix='realui-')
        if not self.certfile:
            from fakepve.certs import make_cert
            self.certfile, self.keyfile, _ = make_cert(self._tmp, name='pveproxy', hosts=('127.0.0.1',))
        self.template = os.path.join(self._tmp, 'index.html.tpl')
        shutil.copyfile(os.path.join(self.root, BASEDIRS['manager'], 'index.html.tpl'), self.template)
        if self.addon:
            patch_template(self.template, self.addon_version, self.prs_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name='realui-server', daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def stop(self):
        if self._loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
            self._loop = None
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    async def _start(self):
        ctx = ssl.create_default_context(cafile=self.cafile)
        self._session = ClientSession(connector=TCPConnector(ssl=ctx), timeout=ClientTimeout(total=60))
        app = web.Application(middlewares=[self._log], client_max_size=64 << 20)
        app.router.add_get('/', self._index)
        app.router.add_route('*', '/api2/{fmt:json|extjs|html|spiceconfig|png}/{tail:.*}', self._api)
        app.router.add_get('/{path:.*}', self._static)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        sctx.load_cert_chain(self.certfile, self.keyfile)
        site = web.TCPSite(self._runner, '127.0.0.1', self.port, ssl_context=sctx)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def _stop(self):
        await self._session.close()
        await self._runner.cleanup()

    @web.middleware
    async def _log(self, request, handler):
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            self.requests.append((request.method, request.path_qs, exc.status))
            raise
        self.requests.append((request.method, request.path_qs, response.status))
        return response

    # --- GET / ---

    async def _index(self, request):
        """pve-manager PVE/Service/pveproxy.pm get_index(): the template rendered per request with
        these variables (the desktop UI only: no console, mobile or language files here)."""
        cookie = request.headers.get('Cookie', '')
        lang, theme, username, token = 'en', self.theme or 'auto', '', 'null'
        m = re.search(r'(?:^|\s)PVELangCookie=([^;]*)', cookie)
        if m and re.match(r'^[a-z]{2,3}(_[A-Z]{2,3})?$', m.group(1)):
            lang = m.group(1)
        m = re.search(r'(?:^|\s)PVEThemeCookie=([^;]*)', cookie)
        if m and re.match(r'^[a-z]{1,10}(-[a-z]{1,10}){0,5}$', m.group(1)):
            theme = m.group(1)
        ticket = extract_auth_value(cookie)
        # verify_ticket() then assemble_csrf_prevention_token(): here, the token fakepve issued with
        # the ticket when this server proxied the login.
        if ticket in self.csrf:
            username, token = ticket.split(':')[1], self.csrf[ticket]
        args = request.query
        debug = 'debug' in args and args['debug'] in ('', '1')
        variables = {
            'lang': lang, 'langfile': 0, 'username': username, 'token': token, 'console': args.get('console'),
            'nodename': self.nodename, 'arch': 'amd64', 'debug': 1 if debug else 0, 'version': self.version,
            'wtversion': self.wtversion, 'theme': theme, 'consenttext': None, 'i18n_js_mtime': None,
            'i18n_yew_mobile_mtime': None, 'yew_mobile_mtime': None, 'yew_mobile_base_path': '/yew-mobile',
        }
        page = await asyncio.get_running_loop().run_in_executor(None, render_template, self.template, variables)
        # pve-http-server src/PVE/APIServer/AnyEvent.pm response(): Cache-Control max-age=0.
        return web.Response(body=page, content_type='text/html', charset='utf-8',
                            headers={'Cache-Control': 'max-age=0'})

    # --- static files ---

    async def _static(self, request):
        """pve-http-server AnyEvent.pm handle_request()/add_dirs(): files under the mapped
        directories, without authentication; the add-on's file is served from its own path."""
        path = urllib.parse.unquote(request.path)
        if self.addon and path == '/pve2/js/pve-prs-ui.js':
            return self._file(self.addon)
        if path in PAGES:
            return self._file(os.path.join(self.root, PAGES[path]))
        for prefix, base, sub in DIRS:
            if path.startswith(prefix):
                rest = path[len(prefix):]
                if not rest or '..' in rest.split('/'):
                    break
                return self._file(os.path.join(self.root, BASEDIRS[base], sub, rest))
        raise web.HTTPNotFound()

    @staticmethod
    def _file(path):
        if not os.path.isfile(path):
            raise web.HTTPNotFound()
        ctype = mimetypes.guess_type(path)[0] or 'application/octet-stream'
        if path.endswith('.js'):
            ctype = 'application/javascript'
        with open(path, 'rb') as fh:
            return web.Response(body=fh.read(), content_type=ctype)

    # --- /api2/* ---

    def _envelope(self, fmt, data):
        """PVE::APIServer::Formatter::Standard: extjs wraps in {data, success}, json in {data}."""
        return web.json_response({'data': data, 'success': 1} if fmt == 'extjs' else {'data': data})

    async def _api(self, request):
        fmt, tail = request.match_info['fmt'], request.match_info['tail']
        # pve-manager PVE/HTTPServer.pm rest_handler(): node 'localhost' is the node serving the
        # request (proxyto resolves to it); fakepve knows only the real node names.
        tail = re.sub(r'^nodes/localhost(?=/|$)', 'nodes/' + self.nodename, tail)
        if request.method == 'GET' and tail.rstrip('/') == 'access/domains':
            return self._envelope(fmt, REALMS)
        # pve-http-server AnyEvent.pm handle_api2_request(): `delete $params->{_dc}` (ExtJS's cache
        # buster, which ExtJS 6.2's data proxies add despite Toolkit.js' disableCaching = false;
        # fakepve validates it as an unknown parameter).
        query = [(k, v) for k, v in request.query.items() if k != '_dc']
        body = await request.read()
        ctype = request.headers.get('Content-Type', '')
        is_form = ctype.startswith('application/x-www-form-urlencoded')
        form = urllib.parse.parse_qsl(body.decode(), keep_blank_values=True) if is_form else None
        if form is not None:
            form = [(k, v) for k, v in form if k != '_dc']
        login = request.method == 'POST' and tail == 'access/ticket'
        if login and form is not None:
            # pve-access-control src/PVE/API2/AccessControl.pm create_ticket:
            # `$username .= "@$param->{realm}" if $param->{realm}` (fakepve only appends @pam).
            params = dict(form)
            if params.get('realm') and '@' not in params.get('username', ''):
                form = [(k, v + '@' + params['realm'] if k == 'username' else v) for k, v in form if k != 'realm']
        if form is not None:
            body = urllib.parse.urlencode(form).encode()
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ('content-type', 'csrfpreventiontoken', 'authorization', 'accept')}
        ticket = extract_auth_value(request.headers.get('Cookie'))
        if ticket:
            headers['Cookie'] = 'PVEAuthCookie=' + ticket
        url = '%s/api2/%s/%s' % (self.upstream, fmt, urllib.parse.quote(tail, safe='/@:!=,'))
        async with self._session.request(request.method, url, params=query, data=body or None,
                                         headers=headers) as up:
            data = await up.read()
            status, up_ctype = up.status, up.headers.get('Content-Type', 'application/json')
        if login and status == 200:
            data = await self._login_answer(fmt, data)
        elif request.method == 'GET' and tail == 'cluster/options' and status == 200:
            data = self._cluster_options(data)
        elif request.method == 'GET' and tail == 'version' and status == 200:
            data = self._version(data)
        resp = web.Response(status=status, body=data)
        resp.headers['Content-Type'] = up_ctype
        return resp

    @staticmethod
    def _cluster_options(data):
        """pve-manager PVE/API2/Cluster.pm get_options() always answers 'allowed-tags' (from
        PVE::GuestHelpers::get_allowed_tags); PVE.UIOptions.updateTagList() throws without it.
        tests/fakecluster.py leaves it out: add the empty list (no tags in the scenarios)."""
        doc = json.loads(data)
        if isinstance(doc.get('data'), dict) and 'allowed-tags' not in doc['data']:
            doc['data']['allowed-tags'] = []
            return json.dumps(doc).encode()
        return data

    def _version(self, data):
        """pve-manager PVE/API2.pm version (GET /version): the pve-manager release this
        node runs, not fakepve's (the UI shows it in its header)."""
        doc = json.loads(data)
        if isinstance(doc.get('data'), dict):
            doc['data'].update(version=self.version, release='.'.join(self.version.split('.')[:2]))
        return json.dumps(doc).encode()

    async def _login_answer(self, fmt, data):
        """Add the `cap` that pve-access-control's create_ticket returns (compute_api_permission)
        and fakepve leaves {}; remember the CSRF token for get_index()."""
        doc = json.loads(data)
        answer = doc.get('data') or {}
        ticket = answer.get('ticket')
        if not ticket or ticket.startswith('PVE:!tfa!'):
            return data
        if answer.get('CSRFPreventionToken'):
            self.csrf[ticket] = answer['CSRFPreventionToken']
        if not answer.get('cap'):
            async with self._session.get(self.upstream + '/api2/json/access/permissions',
                                         headers={'Cookie': 'PVEAuthCookie=' + ticket}) as up:
                acl = (await up.json()).get('data') or {} if up.status == 200 else {}
            answer['cap'] = compute_cap(acl)
        return json.dumps(doc).encode()


def main(argv=None):
    """Serve the UI by hand (e.g. to look at it in a browser):
        python tests/fakecluster.py serve demo.json --state-dir /tmp/fc &
        python tests/realui/server.py --root "$(tests/realui/build.sh 9.2)" \\
            --upstream "$(cat /tmp/fc/url)" --cafile /tmp/fc/ca.crt --port 8006 --addon webui/pve-prs-ui.js
    """
    p = argparse.ArgumentParser(description=main.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--root', required=True, help='the tree build.sh printed')
    p.add_argument('--upstream', required=True, help='the fake cluster, https://127.0.0.1:PORT')
    p.add_argument('--cafile', required=True)
    p.add_argument('--nodename', default='pve1')
    p.add_argument('--port', type=int, default=8006)
    p.add_argument('--addon', help='the add-on script to load (default: none)')
    p.add_argument('--prs-port', type=int, default=8016)
    args = p.parse_args(argv)
    srv = UiServer(args.root, args.upstream, args.cafile, args.nodename, addon=args.addon,
                   prs_port=args.prs_port, port=args.port).start()
    print('serving the PVE %s web UI at %s' % (srv.version, srv.url), file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()
    return 0


if __name__ == '__main__':
    sys.exit(main())
