"""What a person sees when PRS talks to a cluster, or fails to: one line that says where
it connects and with what, and failures told apart (a wrong host, a wrong password, an
untrusted certificate, a host that never answers), end to end over HTTPS."""

import http.server
import re
import socket
import ssl
import subprocess
import sys
import threading

import pytest

from prsmodule import EXECUTABLE, prs

pytest.importorskip("fakepve")


def edit(path, old, new):
    with open(path) as handle:
        text = handle.read()
    assert old in text
    with open(path, "w") as handle:
        handle.write(text.replace(old, new))


def prs_run(conf, *args, timeout=120):
    return subprocess.run([sys.executable, EXECUTABLE, "-c", conf, *args], capture_output=True, text=True,
                          timeout=timeout)


def test_each_run_says_where_it_connects_and_what_it_found(cluster, run):
    c = cluster("small.json")
    result = run(c, "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert any("connecting to %s as root@pam" % c.host in x for x in lines), lines
    [found] = [x for x in lines if "connected to" in x]
    assert "connected to %s: Proxmox VE 9.2.3, cluster small, 3 nodes (3 online), %d guests" % (
        c.host, len(c.guests())) in found


def test_a_wrong_password_is_told_apart_from_a_host_that_is_no_proxmox(cluster, run, tmp_path):
    c = cluster("small.json")
    wrong = run(c, "--dry-run", proxmox="api_user = root@pam\napi_pass = not-the-password\n")
    assert wrong.returncode == prs.EXIT_API
    assert "%s: authentication failed for root@pam" % c.host in wrong.stderr
    assert "not-the-password" not in wrong.stderr

    # Another HTTPS service on that address: a web server answering 404 pages.
    from fakepve.certs import make_cert
    cert, key, _ = make_cert(str(tmp_path), name="web", hosts=("127.0.0.1",))

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self._page()

        def do_POST(self):
            self._page()

        def _page(self):
            body = b"<html><body>Not Found</body></html>"
            self.send_response(404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        conf = run.conf(c)
        edit(conf, "api_host = %s" % c.host, "api_host = 127.0.0.1:%d" % server.server_address[1])
        edit(conf, "ca_file = %s" % c.cafile, "ca_file = %s" % cert)
        other = prs_run(conf, "--dry-run")
    finally:
        server.shutdown()
    assert other.returncode == prs.EXIT_API, other.stderr
    [line] = [x for x in other.stderr.splitlines() if "ERROR" in x]
    assert "not a Proxmox VE API (GET /api2/json/version answered HTTP 404, text/html)" in line
    assert "authentication" not in line and "Traceback" not in other.stderr


def test_an_untrusted_certificate_names_the_host_and_the_cure(cluster, run):
    c = cluster("small.json")
    conf = run.conf(c)
    edit(conf, "ca_file = %s\n" % c.cafile, "")
    result = prs_run(conf, "--dry-run")
    assert result.returncode == prs.EXIT_API
    [line] = [x for x in result.stderr.splitlines() if "ERROR" in x]
    assert c.host in line and "TLS certificate not trusted" in line
    assert "copy /etc/pve/pve-root-ca.pem from a node and set ca_file to it" in line


def test_a_host_that_never_answers_is_reported_when_the_timeout_ends(cluster, run):
    c = cluster("small.json")
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)                   # connections are accepted by the kernel, never answered
    port = silent.getsockname()[1]
    try:
        conf = run.conf(c)
        edit(conf, "api_host = %s" % c.host, "api_host = 127.0.0.1:%d" % port)
        edit(conf, "timeout = 30", "timeout = 2")
        result = prs_run(conf, "--dry-run")
    finally:
        silent.close()
    assert result.returncode == prs.EXIT_API
    lines = result.stderr.splitlines()
    assert any("connecting to 127.0.0.1:%d as root@pam" % port in x for x in lines), lines
    [line] = [x for x in lines if "ERROR" in x]
    assert "unreachable (no answer within timeout = 2 s)" in line


def test_the_plan_marks_ha_guests_and_names_the_nodes_left_out_of_the_spread(cluster, run):
    from fakecluster import generate_scenario
    c = cluster(generate_scenario(3, nodes=5, guests=40, ha=0.5))
    doc = run(c, "--dry-run", "--json", "--drain", "pve1").doc
    ha = {m["vmid"] for m in doc["migrations"] if m["ha"]}
    plain = {m["vmid"] for m in doc["migrations"] if not m["ha"]}
    assert ha and plain, doc["migrations"]
    text = run(c, "--dry-run", "--drain", "pve1")
    lines = {int(m.group(1)): line for line in text.stdout.splitlines()
             for m in [re.search(r"^\s+\d+\. \S+ \S+ \((\d+)\)", line)] if m}
    assert set(lines) == ha | plain
    assert all("[HA]" in lines[v] for v in ha) and not any("[HA]" in lines[v] for v in plain)
    [spread] = [x for x in text.stdout.splitlines() if x.strip().startswith("spread ")]
    assert spread.endswith(", without pve1 (drained)"), spread


def test_a_long_migration_reports_its_progress_every_30_seconds(cluster, run, tmp_path):
    """db-main (62 GiB in use): at time_scale 0.6 its live migration takes about 38 s."""
    from test_e2e import daemon, stop
    c = cluster("demo.json", time_scale=0.6)
    with daemon(run.conf(c, "max_migrations = 1\n", daemon=1), tmp_path) as (proc, notify):
        assert notify.read_until("STATUS=next run", timeout=120), notify.messages
        stop(proc)
    err = proc.stderr.read()
    [line] = [x for x in err.splitlines() if "in progress: db-main (101) pve1 -> " in x]
    m = re.search(r"memory ([\d.]+) GiB of 64\.0 GiB at 1\.0 GiB/s, about (\d+) s left", line)
    assert m, line
    assert 30 <= float(m.group(1)) <= 60 and int(m.group(2)) == 64 - int(float(m.group(1)))
    status = [x for x in notify.messages if x.startswith("STATUS=in progress: db-main (101)")]
    assert status and "memory" in status[0]


def test_progress_lines_of_a_disk_mirror_and_of_memory_are_read_as_qemu_server_writes_them():
    lines = ["drive-scsi0: transferred 8.0 GiB of 32.0 GiB (25.00%) in 16s"]
    assert prs.migration_progress(lines) == \
        "local disk scsi0: 8.0 GiB of 32.0 GiB (25%), about 48 s left for this disk"
    lines.append("2026-11-30 10:00:00 migration active, transferred 1.5 GiB of 8.0 GiB VM-state, 512.0 MiB/s")
    assert prs.migration_progress(lines) == "memory 1.5 GiB of 8.0 GiB at 512.0 MiB/s, about 13 s left"
    assert prs.migration_progress(["starting migration of VM 101 to node 'pve2'"]) == ""
