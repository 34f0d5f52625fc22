"""A minimal Chrome DevTools Protocol client: headless Debian Chromium, driven over one websocket
(PyPI `websockets`, sync client) with a flattened session on one page.

    with Browser(trust=[certfile]) as b:
        b.navigate('https://127.0.0.1:8006/')
        b.wait_for("typeof Ext !== 'undefined' && Ext.isReady")
        b.click(*b.center("document.querySelector('#button')"))
        b.insert_text('root'); b.screenshot('/tmp/x.png')
        assert not b.exceptions
"""

import base64
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time

from websockets.sync.client import connect

CHROMIUM = os.environ.get('PRS_CHROMIUM', '/usr/bin/chromium')


class CdpError(Exception):
    pass


def read(path):
    try:
        with open(path, errors='replace') as fh:
            return fh.read()
    except FileNotFoundError:
        return ''


def spki_hash(certfile):
    """base64 sha256 of the certificate's public key, for --ignore-certificate-errors-spki-list:
    Chromium then accepts that certificate (on any port) and no other, as after a user accepted it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    with open(certfile, 'rb') as fh:
        cert = x509.load_pem_x509_certificate(fh.read())
    der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


class Browser(object):
    def __init__(self, trust=None, width=1400, height=1200, timeout=30):
        """trust: certificate files Chromium accepts; None: accept any (--ignore-certificate-errors)."""
        self.timeout = timeout
        self.exceptions = []     # Runtime.exceptionThrown: 'description (url:line)'
        self.console = []        # (type, text) of console.error/warn calls and Log entries
        self.http_errors = []    # (status, url) of responses >= 400
        self.events = []         # every other event: (method, params)
        self._dir = tempfile.mkdtemp(prefix='realui-chromium-')
        flags = ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                 '--disable-background-networking', '--disable-component-update', '--disable-sync',
                 '--disable-extensions', '--disable-dev-shm-usage', '--user-data-dir=' + self._dir,
                 '--remote-debugging-port=0', '--window-size=%d,%d' % (width, height)]
        if trust is None:
            flags.append('--ignore-certificate-errors')
        else:
            flags.append('--ignore-certificate-errors-spki-list=' + ','.join(spki_hash(c) for c in trust))
        with open(os.path.join(self._dir, 'stderr'), 'wb') as err:
            self.proc = subprocess.Popen([CHROMIUM] + flags + ['about:blank'], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err)
        port_file, deadline = os.path.join(self._dir, 'DevToolsActivePort'), time.monotonic() + timeout
        while len(read(port_file).split('\n')) < 2:   # Chromium writes the port, then the path
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise CdpError('chromium did not start: %s' % read(os.path.join(self._dir, 'stderr'))[-2000:])
            time.sleep(0.05)
        port, path = read(port_file).split('\n')[:2]
        self._ws = connect('ws://127.0.0.1:%s%s' % (port, path), max_size=None, open_timeout=timeout).__enter__()
        self._id, self._pending, self._lock = 0, {}, threading.Lock()
        self._waiters = []       # (event method, threading.Event)
        self._reader = threading.Thread(target=self._read, name='cdp', daemon=True)
        self._reader.start()
        target = self.send('Target.createTarget', {'url': 'about:blank'}, session=False)['targetId']
        self.session = self.send('Target.attachToTarget', {'targetId': target, 'flatten': True},
                                 session=False)['sessionId']
        for domain in ('Page', 'Runtime', 'Log', 'Network'):
            self.send(domain + '.enable')
        self.send('Emulation.setDeviceMetricsOverride', {'width': width, 'height': height,
                                                         'deviceScaleFactor': 1, 'mobile': False})

    # --- protocol ---

    def _read(self):
        try:
            for raw in self._ws:
                msg = json.loads(raw)
                if 'id' in msg:
                    slot = self._pending.pop(msg['id'], None)
                    if slot:
                        slot[1].update(msg)
                        slot[0].set()
                    continue
                method, p = msg.get('method'), msg.get('params', {})
                if method == 'Runtime.exceptionThrown':
                    d = p['exceptionDetails']
                    self.exceptions.append('%s (%s:%s)' % ((d.get('exception') or {}).get('description')
                                                           or d.get('text'), d.get('url', ''), d.get('lineNumber')))
                elif method == 'Runtime.consoleAPICalled' and p['type'] in ('error', 'warning'):
                    self.console.append((p['type'], ' '.join(str(a.get('value', a.get('description', '')))
                                                             for a in p['args'])))
                elif method == 'Log.entryAdded' and p['entry']['level'] in ('error', 'warning'):
                    self.console.append((p['entry']['level'], p['entry']['text'] + ' ' + p['entry'].get('url', '')))
                elif method == 'Network.responseReceived' and p['response']['status'] >= 400:
                    self.http_errors.append((p['response']['status'], p['response']['url']))
                else:
                    self.events.append((method, p))
                for name, ev in list(self._waiters):
                    if name == method:
                        ev.set()
        except Exception:   # the connection closed: fail whoever waits
            for ev, _ in list(self._pending.values()):
                ev.set()

    def send(self, method, params=None, session=True, timeout=None):
        with self._lock:
            self._id += 1
            msg = {'id': self._id, 'method': method, 'params': params or {}}
            if session:
                msg['sessionId'] = self.session
            slot = self._pending[self._id] = (threading.Event(), {})
            self._ws.send(json.dumps(msg))
        if not slot[0].wait(timeout or self.timeout) or 'result' not in slot[1]:
            raise CdpError('%s: %s' % (method, slot[1].get('error', 'no answer')))
        return slot[1]['result']

    # --- page ---

    def navigate(self, url):
        self._load('Page.navigate', {'url': url}, url)

    def reload(self):
        """A full reload (navigate() to the same URL with another #hash would not reload)."""
        self._load('Page.reload', {'ignoreCache': False}, 'reload')

    def _load(self, method, params, what):
        loaded = threading.Event()
        self._waiters.append(('Page.loadEventFired', loaded))
        try:
            result = self.send(method, params)
            if result.get('errorText'):
                raise CdpError('%s: %s' % (what, result['errorText']))
            if not loaded.wait(self.timeout):
                raise CdpError('%s: no load event' % what)
        finally:
            self._waiters.remove(('Page.loadEventFired', loaded))

    def evaluate(self, expression, await_promise=True):
        """The JSON value of a JS expression; a thrown error raises CdpError (and, made by the
        test's own code, does not count as a page exception)."""
        r = self.send('Runtime.evaluate', {'expression': expression, 'returnByValue': True,
                                           'awaitPromise': await_promise})
        if 'exceptionDetails' in r:
            d = r['exceptionDetails']
            raise CdpError('evaluate: %s' % ((d.get('exception') or {}).get('description') or d.get('text')))
        return r['result'].get('value')

    def wait_for(self, expression, timeout=None, what=None):
        """Poll a JS expression until it is truthy; returns its value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            try:
                value = self.evaluate(expression)
            except CdpError:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise CdpError('timed out waiting for %s' % (what or expression))
            time.sleep(0.1)

    def center(self, element_expression, timeout=None):
        """Viewport (x, y) of the middle of the element the expression yields, once visible."""
        js = ('(function () { var e = %s; if (!e) return null; e.scrollIntoView({block: "nearest"});'
              ' var r = e.getBoundingClientRect();'
              ' return r.width > 0 && r.height > 0 ? [r.left + r.width / 2, r.top + r.height / 2] : null; })()'
              % element_expression)
        return self.wait_for(js, timeout, what=element_expression)

    def click(self, x, y):
        for kind in ('mouseMoved', 'mousePressed', 'mouseReleased'):
            self.send('Input.dispatchMouseEvent', {'type': kind, 'x': x, 'y': y, 'button': 'left',
                                                   'buttons': 1 if kind == 'mousePressed' else 0,
                                                   'clickCount': 0 if kind == 'mouseMoved' else 1})

    def insert_text(self, text):
        self.send('Input.insertText', {'text': text})

    def press(self, key, code=13):
        """A key (default Enter) as keyDown/keyUp."""
        self.send('Input.dispatchKeyEvent', {'type': 'keyDown', 'key': key, 'code': key,
                                             'windowsVirtualKeyCode': code, 'text': '\r' if code == 13 else ''})
        self.send('Input.dispatchKeyEvent', {'type': 'keyUp', 'key': key, 'code': key, 'windowsVirtualKeyCode': code})

    def screenshot(self, path):
        data = self.send('Page.captureScreenshot', {'format': 'png'})['data']
        with open(path, 'wb') as fh:
            fh.write(base64.b64decode(data))
        return path

    def close(self):
        try:
            if getattr(self, '_ws', None):
                with contextlib.suppress(Exception):
                    self.send('Browser.close', session=False, timeout=2)
                self._ws.close()
        finally:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
