"""prs.conf parsing and validation: every option, every refusal names file, section, key."""

import os
import subprocess
import sys
import textwrap

import pytest

from prsmodule import EXECUTABLE, ROOT, prs

GOOD = """
[proxmox]
api_host = 127.0.0.1:1
api_user = root@pam
api_pass = topsecret
"""


def write(tmp_path, text, name="prs.conf"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    path.chmod(0o600)            # it holds a secret: PRS warns about a wider mode
    return str(path)


def test_defaults(tmp_path):
    cfg = prs.load_config(write(tmp_path, GOOD))
    assert cfg.api_hosts == (prs.ApiHost("127.0.0.1", 1),)
    assert (cfg.method, cfg.mode, cfg.balanciness) == ("memory", "used", 10.0)
    assert (cfg.daemon, cfg.schedule, cfg.verify, cfg.timeout) == (True, 24.0, True, 60.0)
    assert (cfg.parallel_migrations, cfg.max_migrations, cfg.node_reserve, cfg.cpu_samples) == (1, 0, 10.0, 3)
    assert cfg.allow_local_disks and not cfg.migrate_containers
    assert cfg.ignore_nodes == frozenset() and cfg.ignore_vms == frozenset()


def test_shipped_example_refuses_until_filled_in_then_works(tmp_path):
    with open(os.path.join(ROOT, "prs.conf")) as handle:
        text = handle.read()
    with pytest.raises(prs.ConfigError, match=r"\[proxmox\] api_host: missing"):
        prs.load_config(write(tmp_path, text, "as-shipped.conf"))
    filled = text.replace("api_host =", "api_host = pve1.example.com, pve2.example.com", 1) \
        .replace("api_token_id =", "api_token_id = balancer", 1) \
        .replace("api_token_secret =", "api_token_secret = 5f0c3c0e-1111-2222-3333-444444444444", 1)
    cfg = prs.load_config(write(tmp_path, filled))
    assert cfg.api_token_id == "balancer" and not cfg.api_pass
    assert [str(h) for h in cfg.api_hosts] == ["pve1.example.com:8006", "pve2.example.com:8006"]
    assert cfg.daemon and cfg.schedule == 24 and cfg.method == "memory"


def test_the_ui_section_and_its_default_from_the_web_ui_package(tmp_path, monkeypatch):
    assert prs.load_config(write(tmp_path, GOOD)).ui_port == 0                 # off without the package
    monkeypatch.setenv("PRS_UI_PORT", "8016")                                   # its systemd drop-in
    assert prs.load_config(write(tmp_path, GOOD)).ui_port == 8016
    assert prs.load_config(write(tmp_path, GOOD + "[ui]\nport = 0\n")).ui_port == 0
    cfg = prs.load_config(write(tmp_path, GOOD + "[service]\nschedule = 0\n[ui]\nport = 9443\n"
                                "allowed_origins = https://PVE.example.com:8006, https://[fd00::1]:8006/, "
                                "https://pve.example.com\ncertificate = /etc/ssl/prs.pem\nkey = /etc/ssl/prs.key\n"))
    assert (cfg.ui_port, cfg.schedule) == (9443, 0.0)
    assert cfg.ui_origins == ("https://pve.example.com:8006", "https://[fd00::1]:8006", "https://pve.example.com")
    assert (cfg.ui_cert, cfg.ui_key) == ("/etc/ssl/prs.pem", "/etc/ssl/prs.key")


def test_every_option(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    cfg = prs.load_config(write(tmp_path, """
        [proxmox]
        api_host = pve1, 10.0.0.2:8007, [::1]:8006
        api_user = rebal@pve
        api_token_id = rebal@pve!balancer
        api_token_secret = 5f0c3c0e-1111-2222-3333-444444444444
        ca_file = %s
        timeout = 90
        [balancing]
        method = CPU
        mode = assigned
        balanciness = 7.5
        ignore_nodes = pve9, pve8
        ignore_vms = 101, web-1
        maintenance_nodes = pve3
        max_migrations = 12
        parallel_migrations = 3
        allow_local_disks = 0
        migrate_containers = yes
        node_reserve = 20
        cpu_samples = 6
        [service]
        daemon = 0
        schedule = 0.5
        retry_minutes = 5
        migration_timeout = 30
        log_level = debug
        """ % ca))
    assert [str(h) for h in cfg.api_hosts] == ["pve1:8006", "10.0.0.2:8007", "::1:8006"]
    assert (cfg.api_token_id, cfg.verify, cfg.timeout) == ("balancer", str(ca), 90.0)
    assert (cfg.method, cfg.mode, cfg.balanciness) == ("cpu", "assigned", 7.5)
    assert cfg.ignore_nodes == {"pve9", "pve8"} and cfg.ignore_vms == {"101", "web-1"}
    assert cfg.maintenance_nodes == {"pve3"}
    assert (cfg.max_migrations, cfg.parallel_migrations, cfg.node_reserve) == (12, 3, 20.0)
    assert cfg.cpu_samples == 6
    assert not cfg.allow_local_disks and cfg.migrate_containers
    assert (cfg.daemon, cfg.schedule, cfg.retry_minutes, cfg.migration_timeout) == (False, 0.5, 5.0, 30.0)
    policy = cfg.policy(drain=["pve4"])
    assert policy.drain_nodes == {"pve3", "pve4"} and policy.reserve == pytest.approx(0.2)


BAD = [
    ("[proxmox]\napi_host = h\napi_user = root@pam\napi_pass = x\n[extra]\n", "[extra]", "unknown section"),
    (GOOD + "metod = cpu\n", "[proxmox] metod", "unknown key"),
    (GOOD + "[balancing]\nmethod = mem\n", "[balancing] method", "not one of memory, disk, cpu"),
    (GOOD + "[balancing]\nmode = average\n", "[balancing] mode", "not one of used, assigned"),
    (GOOD + "[balancing]\nbalanciness = ten\n", "[balancing] balanciness", "not a number"),
    (GOOD + "[balancing]\nbalanciness = 0\n", "[balancing] balanciness", "out of range"),
    (GOOD + "[balancing]\nparallel_migrations = 1.5\n", "[balancing] parallel_migrations", "whole number"),
    (GOOD + "[balancing]\nmax_migrations = -1\n", "[balancing] max_migrations", "out of range"),
    (GOOD + "[balancing]\nallow_local_disks = maybe\n", "[balancing] allow_local_disks", "not a boolean"),
    (GOOD + "[balancing]\nignore_vms = 12\n", "[balancing] ignore_vms", "not a valid VMID"),
    (GOOD + "[balancing]\nignore_nodes = pve 1\n", "[balancing] ignore_nodes", "not a valid node name"),
    (GOOD + "[balancing]\nignore_nodes = pve1\nmaintenance_nodes = pve1\n",
     "[balancing] maintenance_nodes", "also in ignore_nodes"),
    (GOOD + "[service]\nschedule = 0\n", "[service] schedule", "needs the web UI endpoint ([ui] port)"),
    (GOOD + "[service]\nschedule = -1\n", "[service] schedule", "out of range"),
    (GOOD + "[service]\ndaemon = 2\n", "[service] daemon", "not a boolean"),
    (GOOD + "[ui]\nport = 70000\n", "[ui] port", "out of range"),
    (GOOD + "[ui]\nallowed_origins = http://pve1:8006\n", "[ui] allowed_origins", "not an origin like"),
    (GOOD + "[ui]\nallowed_origins = https://pve1:8006/ui\n", "[ui] allowed_origins", "not an origin like"),
    (GOOD + "[ui]\nallowed_origins = https://pve1:x\n", "[ui] allowed_origins", "no valid port"),
    (GOOD + "[ui]\ncertificate = /etc/ssl/a.pem\n", "[ui] key", "go together"),
    (GOOD + "[ui]\ncertificate = a.pem\nkey = a.key\n", "[ui] certificate", "not an absolute path"),
    (GOOD + "[service]\nlog_level = loud\n", "[service] log_level", "not one of"),
    ("[proxmox]\napi_user = root@pam\napi_pass = x\n", "[proxmox] api_host", "missing"),
    ("[proxmox]\napi_host = h:99999\napi_user = root@pam\napi_pass = x\n", "[proxmox] api_host", "host:port"),
    ("[proxmox]\napi_host = h\napi_user = root\napi_pass = x\n", "[proxmox] api_user", "user@realm"),
    ("[proxmox]\napi_host = h\napi_user = root@pam\n", "[proxmox] api_pass", "no credentials"),
    ("[proxmox]\napi_host = h\napi_user = root@pam\napi_pass = x\napi_token_id = t\napi_token_secret = s\n",
     "[proxmox] api_pass", "not both"),
    ("[proxmox]\napi_host = h\napi_user = root@pam\napi_token_id = t\n", "[proxmox] api_token_secret", "missing"),
    ("[proxmox]\napi_host = h\napi_user = a@pve\napi_token_id = b@pve!t\napi_token_secret = s\n",
     "[proxmox] api_token_id", "belongs to"),
    (GOOD + "verify_ssl = 0\nca_file = /etc/hostname\n", "[proxmox] ca_file", "contradicts verify_ssl"),
    (GOOD + "ca_file = /nonexistent/ca.pem\n", "[proxmox] ca_file", "not a readable file"),
    ("just text\n", "not a valid config file", ""),
]


@pytest.mark.parametrize("text,where,why", BAD, ids=[b[1] + " " + b[2] for b in BAD])
def test_refusals_name_file_section_key_and_reason(tmp_path, text, where, why):
    path = write(tmp_path, text)
    with pytest.raises(prs.ConfigError) as err:
        prs.load_config(path)
    message = str(err.value)
    assert message.startswith(path + ": ") and where in message and why in message
    assert "\n" not in message


def test_missing_file(tmp_path):
    with pytest.raises(prs.ConfigError, match="cannot read"):
        prs.load_config(str(tmp_path / "absent.conf"))


def run(*args, env=None):
    return subprocess.run([sys.executable, EXECUTABLE, *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_cli_bad_config_one_line_exit_2_no_api_call(tmp_path):
    # api_host points at a port nothing listens on: an API call would end in exit 3.
    path = write(tmp_path, GOOD + "[balancing]\nmethod = ram\n")
    result = run("-c", path, "--once")
    assert result.returncode == prs.EXIT_CONFIG
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "[balancing] method" in lines[0] and "'ram'" in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_cli_unreachable_api_exit_3_one_line(tmp_path):
    result = run("-c", write(tmp_path, GOOD), "--once")
    assert result.returncode == prs.EXIT_API
    lines = [x for x in result.stderr.strip().splitlines() if " INFO " not in x]
    assert len(lines) == 1 and "127.0.0.1:1" in lines[0] and "unreachable" in lines[0]
    assert "topsecret" not in result.stderr + result.stdout


def test_cli_check_config_and_version(tmp_path):
    result = run("-c", write(tmp_path, GOOD), "--check-config")
    assert result.returncode == 0 and result.stdout.strip().endswith(": OK")
    version = run("--version")
    assert version.stdout.strip() == "proxmox-rebalancing-service " + prs.__version__


def test_cli_usage_error_exit_2():
    result = run("--drain", "bad node!")
    assert result.returncode == 2 and "not a node name" in result.stderr


def test_a_comment_after_a_value_is_accepted_but_a_secret_is_verbatim(tmp_path):
    cfg = prs.load_config(write(tmp_path, """
        [proxmox]
        api_host = 127.0.0.1:1   # the first node
        api_user = root@pam ; who
        api_pass = s3cret #1 ; not a comment
        [balancing]
        balanciness = 10  # points
        method = cpu	# a tab before the comment counts as whitespace
        [service]
        schedule = 0.5  ; every 30 minutes
    """))
    assert cfg.api_hosts == (prs.ApiHost("127.0.0.1", 1),) and cfg.api_user == "root@pam"
    assert (cfg.balanciness, cfg.method, cfg.schedule) == (10.0, "cpu", 0.5)
    assert cfg.api_pass == "s3cret #1 ; not a comment"


UNITS = [
    ("[service]\nschedule = 0.001\n",
     "[service] schedule: 0.001 hours is out of range (1 minute to 8760 hours)"),
    ("[service]\nmigration_timeout = 0.01\n",
     "[service] migration_timeout: 0.01 minutes is out of range (3 seconds to 10080 minutes)"),
    ("[service]\nretry_minutes = 2000\n", "[service] retry_minutes: 2000 minutes is out of range (6 seconds "
     "to 1440 minutes)"),
    ("[proxmox]\ntimeout = 0.5\n",
     "[proxmox] timeout: 0.5 seconds is out of range (1 second to 3600 seconds)"),
    ("[balancing]\nnode_reserve = 95\n", "[balancing] node_reserve: 95 percent is out of range (0 percent to "
     "90 percent)"),
]


@pytest.mark.parametrize("extra,message", UNITS, ids=[u[0].split("\n")[1] for u in UNITS])
def test_a_value_out_of_range_is_told_in_the_unit_the_admin_wrote(tmp_path, extra, message):
    text = GOOD.replace("[proxmox]\n", "[proxmox]\n" + extra.split("\n", 1)[1]) if extra.startswith(
        "[proxmox]") else GOOD + extra
    with pytest.raises(prs.ConfigError) as err:
        prs.load_config(write(tmp_path, text))
    assert message in str(err.value)


def test_check_config_warns_when_proxmoxer_is_missing(tmp_path):
    """A Python without proxmoxer (-I -S: no site-packages at all) still validates the file,
    and says what it lacks."""
    result = subprocess.run([sys.executable, "-I", "-S", EXECUTABLE, "-c", write(tmp_path, GOOD),
                             "--check-config"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip().endswith(": OK"), result.stderr
    assert "has no proxmoxer: install it (apt install python3-proxmoxer" in result.stderr
    ok = run("-c", write(tmp_path, GOOD), "--check-config")
    assert "proxmoxer" not in ok.stderr
