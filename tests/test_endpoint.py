"""The web UI endpoint ([ui] port) of the PRS daemon, over HTTPS, against the fake cluster.

Proxmox checks the caller's ticket itself: the fake models the verify mode of POST
/access/ticket (pve-access-control src/PVE/API2/AccessControl.pm `verify_auth`, see
fakecluster.ClusterPve._ticket), so an unauthorised or forged ticket gets nothing from PRS
because Proxmox refuses it, not because PRS guesses. Users: root@pam (everything), ops@pve
(VM.Migrate and Sys.Audit on /), viewer@pve (Sys.Audit on /), nobody@pve (nothing).
"""

import contextlib
import json
import os
import re
import shutil
import socket
import time

import pytest

requests = pytest.importorskip("requests")

from prsmodule import prs  # noqa: E402
from test_e2e import daemon, stop  # noqa: E402

ORIGIN = "https://127.0.0.1:8006"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def login(c, user, password):
    answer = requests.post(c.url + "/api2/json/access/ticket", data={"username": user, "password": password},
                           verify=c.cafile, timeout=10)
    answer.raise_for_status()
    return answer.json()["data"]["ticket"]


class Endpoint:
    """A PRS daemon with the endpoint on, and a browser-like client for it."""

    def __init__(self, c, proc, port, notify):
        self.c, self.proc, self.port, self.notify = c, proc, port, notify
        self.base = "https://127.0.0.1:%d" % port

    def call(self, method, path, ticket=None, body=None, origin=ORIGIN, headers=None):
        sent = dict(headers or {})
        if origin:
            sent["Origin"] = origin
        if ticket is not None:
            sent["X-PRS-PVE-Ticket"] = ticket
        data = None
        if body is not None:
            sent["Content-Type"] = "application/json"
            data = json.dumps(body)
        return requests.request(method, self.base + path, headers=sent, data=data, verify=self.c.cafile,
                                timeout=60)

    def wait_action(self, ticket, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            doc = self.call("GET", "/prs/v1/status", ticket).json()
            if doc["action"] and doc["action"]["state"] != "running":
                return doc
            time.sleep(0.2)
        raise AssertionError("the action did not end within %d s" % timeout)

    def log(self):
        """What the daemon wrote (stop it first)."""
        return self.proc.stderr.read()


@contextlib.contextmanager
def endpoint(c, run, tmp_path, extra="", schedule="0", env=None):
    for user, password in (("ops@pve", "ops-pw"), ("viewer@pve", "viewer-pw"), ("nobody@pve", "nobody-pw")):
        c.add_user(user, password)
    c.grant("ops@pve", "/", "Sys.Audit", "VM.Migrate", "VM.Audit")
    c.grant("viewer@pve", "/", "Sys.Audit", "VM.Audit")
    port = free_port()
    conf = run.conf(c, "[balancing]\n%s\n[service]\ndaemon = 1\nschedule = %s\n[ui]\nport = %d\n"
                    "certificate = %s\nkey = %s\n" % (extra, schedule, port, c.cafile, c.keyfile))
    with daemon(conf, tmp_path, name="ui-%d" % port, env=env) as (proc, notify):
        e = Endpoint(c, proc, port, notify)
        assert notify.read_until("READY=1"), "the daemon did not start"
        deadline = time.monotonic() + 30
        while True:
            try:
                assert e.call("GET", "/", origin=None).status_code == 200
                break
            except requests.exceptions.ConnectionError:
                assert time.monotonic() < deadline, "the endpoint did not come up"
                time.sleep(0.1)
        yield e


def test_viewer_looks_ops_acts_and_the_journal_names_who_asked(cluster, run, tmp_path):
    c = cluster("demo.json")
    with endpoint(c, run, tmp_path) as e:
        viewer, ops = login(c, "viewer@pve", "viewer-pw"), login(c, "ops@pve", "ops-pw")
        looked = e.call("GET", "/prs/v1/status", viewer)
        assert looked.status_code == 200, looked.text
        doc = looked.json()
        assert (doc["user"], doc["can_act"], doc["runs"]["next"], doc["action"]) == ("viewer@pve", False, None, None)
        assert looked.headers["Access-Control-Allow-Origin"] == ORIGIN and looked.headers["Vary"] == "Origin"
        fake = {n: 100.0 * u["mem"] / u["maxmem"] for n, u in c.node_usage().items()}
        assert {n["node"]: n["usage"] for n in doc["nodes"]} == pytest.approx(fake, abs=0.01)
        assert doc["spread"] == pytest.approx(max(fake.values()) - min(fake.values()), abs=0.01)
        assert doc["spread"] > 10
        # the viewer may preview but not act: Proxmox says no, and nothing moves
        preview = e.call("POST", "/prs/v1/preview", viewer, {"action": "rebalance"})
        assert preview.status_code == 200, preview.text
        plan = preview.json()["plan"]
        assert plan["dry_run"] and plan["migrations"] and all(m["reason"] for m in plan["migrations"])
        refused = e.call("POST", "/prs/v1/rebalance", viewer, {})
        assert refused.status_code == 401 and "viewer@pve lacks VM.Migrate on /" in refused.json()["error"]
        assert c.migrations == []
        # ops acts: the plan is the one previewed, run with PRS's credentials
        assert e.call("GET", "/prs/v1/status", ops).json()["can_act"] is True
        started = e.call("POST", "/prs/v1/rebalance", ops, {})
        assert started.status_code == 202, started.text
        assert started.json()["action"]["user"] == "ops@pve"
        doc = e.wait_action(ops)
        action = doc["action"]
        assert action["state"] == "done", action
        assert [(m["vmid"], m["target"]) for m in action["migrations"]] == \
            [(m["vmid"], m["target"]) for m in plan["migrations"]]
        assert all(m["status"] == "done" for m in action["migrations"])
        assert len(c.migrations) == len(plan["migrations"])
        assert {m["user"] for m in c.tasks("qmigrate")} == {"root@pam"}
        assert doc["spread"] <= 10
        stop(e.proc)
        journal = e.log()
    assert "[ui] rebalance asked by ops@pve (from 127.0.0.1)" in journal
    assert "[ui] rebalance asked by ops@pve: done" in journal
    assert "authentication failure; rhost=127.0.0.1 user=viewer@pve" in journal
    for ticket in (viewer, ops):
        assert ticket not in journal and ticket.split("::")[1] not in journal


def test_maintenance_preview_lists_what_stays_then_empties_the_node(cluster, run, tmp_path):
    c = cluster("drain.json")
    node = "pve1"
    with endpoint(c, run, tmp_path) as e:
        ops = login(c, "ops@pve", "ops-pw")
        preview = e.call("POST", "/prs/v1/preview", ops, {"action": "maintenance", "node": node})
        assert preview.status_code == 200, preview.text
        plan = preview.json()["plan"]
        leaving = {m["vmid"] for m in plan["migrations"] if m["drain"]}
        assert leaving and all(m["source"] == node for m in plan["migrations"] if m["drain"])
        staying = {s["vmid"]: s["reason"] for s in plan["not_moved"]}
        assert staying and all(staying.values())
        assert leaving | set(staying) == {vmid for vmid, where in c.placement().items() if where == node}
        assert c.migrations == []
        assert e.call("POST", "/prs/v1/maintenance", ops, {"node": node}).status_code == 202
        action = e.wait_action(ops)["action"]
        assert (action["kind"], action["node"]) == ("maintenance", node)
        left = {vmid for vmid, where in c.placement().items() if where == node}
        assert left == set(staying), (left, staying)
        assert all(m["status"] == "done" for m in action["migrations"])
        unknown = e.call("POST", "/prs/v1/preview", ops, {"action": "maintenance", "node": "pve9"})
        assert unknown.status_code == 400 and "no node 'pve9'" in unknown.json()["error"]


def forged(user, hours_ago=0.0):
    return "PVE:%s:%08X::%s" % (user, int(time.time() - hours_ago * 3600), "A" * 340)


def test_refusals_name_the_reason_and_only_tickets_reach_proxmox(cluster, run, tmp_path):
    c = cluster("small.json")
    with endpoint(c, run, tmp_path) as e:
        ops = login(c, "ops@pve", "ops-pw")
        nobody = login(c, "nobody@pve", "nobody-pw")
        # escaped as a cookie value would be: accepted once unescaped
        escaped = ops.replace(":", "%3A").replace("=", "%3D")
        assert e.call("GET", "/prs/v1/status", escaped).status_code == 200
        # requests PRS cannot serve
        assert e.call("POST", "/prs/v1/preview", ops, {"action": "reboot"}).status_code == 400
        assert e.call("POST", "/prs/v1/preview", ops, [1]).status_code == 400
        assert e.call("POST", "/prs/v1/maintenance", ops, {"node": "../x"}).status_code == 400
        assert e.call("GET", "/prs/v1/rebalance", ops).status_code == 405
        assert e.call("GET", "/prs/v1/nothing", ops).status_code == 404
        assert e.call("POST", "/prs/v1/preview", ops, headers={"Content-Length": "99999"}).status_code == 413
        before = len(c.verifications())
        # not ticket-shaped: refused here, never sent to Proxmox (verify mode would take it as a password)
        for bad in (None, "", "ops-pw", "PVE:!tfa!ops@pve:65F00000::x", "PVE:ops@pve:zz::x", "Bearer x"):
            answer = e.call("GET", "/prs/v1/status", bad)
            assert answer.status_code == 401 and "no Proxmox login ticket" in answer.json()["error"], bad
        expired = e.call("GET", "/prs/v1/status", forged("ops@pve", hours_ago=3))
        assert expired.status_code == 401 and "expired" in expired.json()["error"]
        assert len(c.verifications()) == before
        # a cookie is not a credential here (no CSRF to fear): only the header counts
        cookie = e.call("GET", "/prs/v1/status", headers={"Cookie": "PVEAuthCookie=" + ops})
        assert cookie.status_code == 401
        # ticket-shaped but forged: Proxmox says no
        fake = e.call("GET", "/prs/v1/status", forged("root@pam"))
        assert fake.status_code == 401 and "root@pam lacks Sys.Audit" in fake.json()["error"]
        assert c.verifications()[-1] == {"username": "root@pam", "path": "/", "privs": "Sys.Audit"}
        # a real user without privileges
        assert e.call("GET", "/prs/v1/status", nobody).status_code == 401
        # that made ten failures from this address: the next request is refused unchecked
        limited = e.call("GET", "/prs/v1/status", ops)
        assert limited.status_code == 429 and "too many failed logins from 127.0.0.1" in limited.json()["error"]
        assert c.migrations == []
        stop(e.proc)
        journal = e.log()
    for secret in (ops, nobody, escaped, "ops-pw"):
        assert secret not in journal
    assert "Traceback" not in journal


def test_origins_and_the_preflight(cluster, run, tmp_path):
    c = cluster("small.json")
    with endpoint(c, run, tmp_path) as e:
        ops = login(c, "ops@pve", "ops-pw")
        pre = e.call("OPTIONS", "/prs/v1/rebalance", headers={
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-prs-pve-ticket,content-type"})
        assert pre.status_code == 204
        assert pre.headers["Access-Control-Allow-Origin"] == ORIGIN
        allowed = {h.strip().lower() for h in pre.headers["Access-Control-Allow-Headers"].split(",")}
        assert allowed == {"x-prs-pve-ticket", "content-type"}       # no CSRFPreventionToken
        assert "Access-Control-Allow-Credentials" not in pre.headers
        for origin in ("https://evil.example:8006", "https://127.0.0.1:8007", "http://127.0.0.1:8006", "null",
                       None):
            answer = e.call("GET", "/prs/v1/status", ops, origin=origin)
            assert answer.status_code == 403, origin
            assert "Access-Control-Allow-Origin" not in answer.headers
            assert e.call("OPTIONS", "/prs/v1/status", origin=origin).status_code == 403
        page = e.call("GET", "/", origin=None)
        assert page.status_code == 200 and "you can close this tab" in page.text


def test_one_action_at_a_time(cluster, run, tmp_path):
    c = cluster("demo.json", time_scale=0.05)
    with endpoint(c, run, tmp_path) as e:
        ops = login(c, "ops@pve", "ops-pw")
        assert e.call("POST", "/prs/v1/rebalance", ops, {}).status_code == 202
        again = e.call("POST", "/prs/v1/maintenance", ops, {"node": "pve2"})
        assert again.status_code == 409 and "rebalance asked by ops@pve is running" in again.json()["error"]
        running = e.call("GET", "/prs/v1/status", ops).json()["action"]
        assert running["state"] == "running"
        statuses, plans = set(), 0
        deadline = time.monotonic() + 120
        while running["state"] == "running" and time.monotonic() < deadline:
            statuses |= {m["status"] for m in running["migrations"]}
            plans += running["plan"] is not None
            time.sleep(0.05)
            running = e.call("GET", "/prs/v1/status", ops).json()["action"]
        assert running["state"] == "done" and "running" in statuses and plans
        assert len(c.migrations) == len(running["migrations"])


def test_another_instance_holding_the_cluster_lock_refuses_the_action(cluster, run, tmp_path):
    c = cluster("demo.json")
    # the run lock of a PRS instance on another node (the pool that serves as cluster_lock)
    c.set_pool("prs-lock", "proxmox-rebalancing-service run lock, taken by pve2-1-abc (lease: "
               "id=pve2-1-abc until=%d)" % (time.time() + 600))
    with endpoint(c, run, tmp_path) as e:
        ops = login(c, "ops@pve", "ops-pw")
        assert e.call("POST", "/prs/v1/rebalance", ops, {}).status_code == 202
        action = e.wait_action(ops)["action"]
        assert action["state"] == "failed" and "another PRS instance (pve2-1-abc)" in action["message"]
        assert c.migrations == []


def test_schedule_zero_runs_nothing_by_itself_and_a_scheduled_daemon_reports_its_runs(cluster, run, tmp_path):
    c = cluster("demo.json")
    with endpoint(c, run, tmp_path, schedule="24") as e:
        ops = login(c, "ops@pve", "ops-pw")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            runs = e.call("GET", "/prs/v1/status", ops).json()["runs"]
            if runs["last"]:
                break
            time.sleep(0.2)
        assert runs["last"]["code"] == 0 and "migration" in runs["last"]["summary"]
        assert runs["next"] == pytest.approx(runs["last"]["ended"] + 24 * 3600, abs=5)
    c2 = cluster("demo.json")
    with endpoint(c2, run, tmp_path, schedule="0") as e:
        time.sleep(1.0)
        ops = login(c2, "ops@pve", "ops-pw")
        runs = e.call("GET", "/prs/v1/status", ops).json()["runs"]
        assert (runs["last"], runs["next"], c2.migrations) == (None, None, [])


def journal_of_one_run(c, run, tmp_path, port, cert, key):
    """The daemon's log after its first scheduled run (then SIGTERM) with [ui] set so."""
    conf = run.conf(c, "[balancing]\n[service]\ndaemon = 1\n[ui]\nport = %d\ncertificate = %s\nkey = %s\n"
                    % (port, cert, key))
    with daemon(conf, tmp_path, name="one-run-%d" % port) as (proc, notify):
        assert notify.read_until("next run")
        stop(proc)
    journal = proc.stderr.read()
    assert "Traceback" not in journal
    return journal


def test_port_in_use_is_one_line_and_the_daemon_goes_on(cluster, run, tmp_path):
    c = cluster("small.json")
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        journal = journal_of_one_run(c, run, tmp_path, port, c.cafile, c.keyfile)
    assert re.search(r"\[ui\] port %d: cannot listen: .*; the web UI endpoint is off, rebalancing goes on"
                     % port, journal), journal


def test_a_missing_certificate_is_one_line(cluster, run, tmp_path):
    c = cluster("small.json")
    journal = journal_of_one_run(c, run, tmp_path, free_port(), tmp_path / "none.pem", tmp_path / "none.key")
    assert "[ui] cannot use the certificate %s with key %s: No such file or directory; the web UI endpoint " \
        "is off" % (tmp_path / "none.pem", tmp_path / "none.key") in journal, journal


# --- in-process units: the authentication cache, the rate limit, origins, certificate reload ---


class Verifier:
    def __init__(self, answers):
        self.answers, self.calls = answers, []

    def __call__(self, user, ticket, privs):
        self.calls.append((user, privs))
        return self.answers.get((user, privs), False)


def test_auth_caches_successes_briefly_and_refusals_for_the_login(monkeypatch):
    now = [1_000_000.0]
    v = Verifier({("ops@pve", "Sys.Audit"): True})
    auth = prs.UiAuth(v, clock=lambda: now[0])
    ticket = "PVE:ops@pve:%08X::sig" % int(now[0])
    assert auth.check(ticket, "Sys.Audit", "10.0.0.1") == ("ops@pve", ticket)
    assert auth.check(ticket, "Sys.Audit", "10.0.0.1")[0] == "ops@pve"
    assert not auth.allowed("ops@pve", ticket, "VM.Migrate")
    assert not auth.allowed("ops@pve", ticket, "VM.Migrate")
    assert v.calls == [("ops@pve", "Sys.Audit"), ("ops@pve", "VM.Migrate")]
    now[0] += prs.UI_AUTH_CACHE + 1                 # success asked again, the refusal still known
    auth.check(ticket, "Sys.Audit", "10.0.0.1")
    auth.allowed("ops@pve", ticket, "VM.Migrate")
    assert v.calls[2:] == [("ops@pve", "Sys.Audit")]
    now[0] += prs.TICKET_LIFETIME                   # the login has expired: refused before asking
    with pytest.raises(prs.Refused, match="expired"):
        auth.check(ticket, "Sys.Audit", "10.0.0.1")
    assert len(v.calls) == 3


def test_failures_are_rate_limited_per_address():
    now = [1_000_000.0]
    v = Verifier({("ops@pve", "Sys.Audit"): True})
    auth = prs.UiAuth(v, clock=lambda: now[0])
    good = "PVE:ops@pve:%08X::sig" % int(now[0])
    for _ in range(prs.UI_FAIL_LIMIT):
        with pytest.raises(prs.Refused) as refused:
            auth.check("guess", "Sys.Audit", "10.0.0.9")
        assert refused.value.status == 401
    with pytest.raises(prs.Refused) as limited:
        auth.check(good, "Sys.Audit", "10.0.0.9")
    assert limited.value.status == 429 and "10.0.0.9" in str(limited.value)
    assert auth.check(good, "Sys.Audit", "10.0.0.8")[0] == "ops@pve"     # another address is not punished
    now[0] += prs.UI_FAIL_WINDOW
    assert auth.check(good, "Sys.Audit", "10.0.0.9")[0] == "ops@pve"


def test_a_proxmox_answer_that_carries_a_ticket_is_not_a_verification(cluster):
    c = cluster("small.json")
    cfg = prs.Config(path="x", api_hosts=(prs.ApiHost("127.0.0.1", int(c.url.rsplit(":", 1)[1])),),
                     api_user="root@pam", api_pass="secret", verify=c.cafile)
    api = prs.Api(cfg)
    c.add_user("ops@pve", "ops-pw")
    c.grant("ops@pve", "/", "Sys.Audit")
    ticket = login(c, "ops@pve", "ops-pw")
    assert api.verify_ticket("ops@pve", ticket, "Sys.Audit") is True
    assert api.verify_ticket("ops@pve", ticket, "Sys.Audit,VM.Migrate") is False     # all must hold
    assert api.verify_ticket("root@pam", ticket, "Sys.Audit") is False               # not root's ticket

    class Login:
        status_code = 200

        @staticmethod
        def json():
            return {"data": {"username": "ops@pve", "ticket": "PVE:ops@pve:1::x"}}
    api._requests = type("R", (), {"post": staticmethod(lambda *a, **k: Login())})
    assert api.verify_ticket("ops@pve", ticket, "Sys.Audit") is False


def test_origin_rules():
    cfg = prs.Config(path="x", api_hosts=(prs.ApiHost("h"),), api_user="root@pam", api_pass="x")
    desk = prs.UiDesk(prs.Turns(cfg), prs.Waker(), auth=prs.UiAuth(Verifier({})))
    assert desk.origin_allowed("https://pve1.example.com:8006", "pve1.example.com:8016")
    assert desk.origin_allowed("https://PVE1.example.com:8006", "pve1.example.com:8016")
    assert desk.origin_allowed("https://[fd00::1]:8006", "[fd00::1]:8016")
    assert not desk.origin_allowed("https://pve2.example.com:8006", "pve1.example.com:8016")
    assert not desk.origin_allowed("", "pve1.example.com:8016")
    desk.turns.cfg = prs.dataclasses.replace(cfg, ui_origins=("https://pve.example.com",))
    assert desk.origin_allowed("https://pve.example.com", "pve1.example.com:8016")
    assert not desk.origin_allowed("https://pve1.example.com:8006", "pve1.example.com:8016")


def test_the_certificate_is_reloaded_when_it_changes(tmp_path, monkeypatch):
    make_cert = pytest.importorskip("fakepve.certs", reason="needs fakepve (tests/requirements.txt)").make_cert
    monkeypatch.setattr(prs, "UI_CERT_CHECK", 0.0)
    first, key, _ = make_cert(str(tmp_path), name="first", hosts=("127.0.0.1",))
    cfg = prs.Config(path="x", api_hosts=(prs.ApiHost("h"),), api_user="root@pam", api_pass="x",
                     ui_cert=str(tmp_path / "cert.pem"), ui_key=str(tmp_path / "cert.key"))
    shutil.copyfile(first, tmp_path / "cert.pem")
    shutil.copyfile(key, tmp_path / "cert.key")
    tls = prs.UiTls(cfg)
    one = tls.context()
    assert tls.context() is one
    second, key2, _ = make_cert(str(tmp_path), name="second", hosts=("127.0.0.1",))
    os.replace(second, tmp_path / "cert.pem")
    os.replace(key2, tmp_path / "cert.key")
    assert tls.context() is not one
    os.remove(tmp_path / "cert.key")                 # gone meanwhile: keep serving the last good one
    two = tls.context()
    assert two is tls.context()
