"""webui/pve-prs-ui-patch: the one line it adds to pve-manager's page template.

The package pve-proxmox-rebalancing-service-ui runs `apply` on configure and from
its dpkg file trigger on /usr/share/pve-manager/index.html.tpl, and `revert`
before removal (debian/pve-proxmox-rebalancing-service-ui.*). These tests run
the script on stand-in templates through PRS_UI_TPL, with /bin/sh (dash on
Debian), as the maintainer scripts do. The dpkg cycle itself (trigger on a
pve-manager upgrade, byte-identical template after removal) is in
tests/package-check, which needs root.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "webui" / "pve-prs-ui-patch"
DROPIN = ROOT / "webui" / "pve-prs-ui.conf"
DEBIAN = ROOT / "debian"
UI_PKG = "pve-proxmox-rebalancing-service-ui"
MARK = "<!-- pve-prs-ui -->"
ANCHOR = re.compile(r"/pve2/js/pvemanagerlib\.js")
# Proxmox's own templates, read from a local bare mirror of pve-manager when there is one.
PVE_MANAGER_MIRROR = Path(os.environ.get("PRS_PVE_MANAGER_MIRROR", "/work/.mirror/proxmox+pve-manager/repo"))

# Our own short stand-in with the <head> shape of pve-manager's www/index.html.tpl:
# ExtJS, the inline Proxmox object, proxmoxlib.js, pvemanagerlib.js (the anchor,
# indented), the ExtJS locale, then Ext.onReady.
STANDIN = """<!DOCTYPE html>
<html>
  <head>
    <meta http-equiv="Content-Type" content="text/html; charset=utf-8" />
    <title>[% nodename %] - stand-in</title>
    <script type="text/javascript" src="/pve2/ext6/ext-all.js?ver=7.0.0"></script>
    <script type="text/javascript">
    Proxmox = { NodeName: '[% nodename %]', CSRFPreventionToken: '[% token %]' };
    </script>
    <script type="text/javascript" src="/proxmoxlib.js?ver=[% wtversion %]"></script>
    <script type="text/javascript" src="/pve2/js/pvemanagerlib.js?ver=[% version %]"></script>
    <script type="text/javascript" src="/pve2/ext6/locale/locale-[% lang %].js?ver=7.0.0"></script>
    <script type="text/javascript">
    Ext.onReady(function() { Ext.create('PVE.StdWorkspace'); });
    </script>
  </head>
  <body></body>
</html>
"""


def run(cmd: str, tpl: Path, *, version: str | None = "1.2.3-1", port: str | None = None,
        conf: Path | None = None, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRS_")}
    env["PRS_UI_TPL"] = str(tpl)
    env["PRS_CONFIG"] = str(conf or tpl.parent / "no-such-prs.conf")
    if version is not None:
        env["PRS_UI_VERSION"] = version
    if port is not None:
        env["PRS_UI_PORT"] = port
    if path is not None:
        env["PATH"] = path
    return subprocess.run(["/bin/sh", str(SCRIPT), cmd], capture_output=True, text=True,
                          timeout=30, env=env, check=False)


def ok(result: subprocess.CompletedProcess[str], stream: str = "stdout") -> str:
    """The one message line of a successful run."""
    assert result.returncode == 0, result
    other = result.stderr if stream == "stdout" else result.stdout
    assert other == "", result
    lines = (result.stdout if stream == "stdout" else result.stderr).splitlines()
    assert len(lines) == 1, result
    return lines[0]


def marked(text: str) -> list[str]:
    return [line for line in text.split("\n") if MARK in line]


def expected_line(indent: str, version: str, port: int) -> str:
    return (f'{indent}<script type="text/javascript" src="/pve2/js/pve-prs-ui.js?ver={version}" '
            f'data-prs-port="{port}"></script> {MARK}')


@pytest.fixture
def tpl(tmp_path: Path) -> Path:
    d = tmp_path / "pve-manager"
    d.mkdir()
    path = d / "index.html.tpl"
    path.write_bytes(STANDIN.encode())
    path.chmod(0o644)
    return path


def assert_applied_after_anchor(original: bytes, patched: bytes, version: str, port: int) -> None:
    """patched is original with exactly our line inserted right after the first anchor line."""
    before, after = original.decode().split("\n"), patched.decode().split("\n")
    at = next(i for i, line in enumerate(before) if ANCHOR.search(line))
    indent = re.match(r"[ \t]*", before[at]).group(0)  # type: ignore[union-attr]
    assert after == before[:at + 1] + [expected_line(indent, version, port)] + before[at + 1:]


# --- apply -----------------------------------------------------------------------

def test_apply_inserts_the_line_right_after_pvemanagerlib(tpl: Path) -> None:
    original = tpl.read_bytes()
    msg = ok(run("apply", tpl, version="1.2.3-1", port="8016"))
    assert msg == f"pve-prs-ui-patch: applied to {tpl} (version 1.2.3-1, port 8016)"
    assert_applied_after_anchor(original, tpl.read_bytes(), "1.2.3-1", 8016)


def test_apply_twice_keeps_one_line_and_changes_nothing(tpl: Path) -> None:
    ok(run("apply", tpl))
    once = tpl.read_bytes()
    mtime = tpl.stat().st_mtime_ns
    msg = ok(run("apply", tpl))
    assert msg.startswith("pve-prs-ui-patch: already applied to ")
    assert tpl.read_bytes() == once and tpl.stat().st_mtime_ns == mtime
    assert len(marked(tpl.read_text())) == 1


def test_apply_with_a_new_version_replaces_the_line(tpl: Path) -> None:
    original = tpl.read_bytes()
    ok(run("apply", tpl, version="1.0-1"))
    ok(run("apply", tpl, version="1.1-1", port="9016"))
    assert_applied_after_anchor(original, tpl.read_bytes(), "1.1-1", 9016)


def test_apply_drops_stray_marked_lines_anywhere(tpl: Path) -> None:
    original = tpl.read_bytes()
    tpl.write_text(f"<!-- old {MARK}\n" + STANDIN.replace("  <body>", f"  <x/> {MARK}\n  <body>"))
    ok(run("apply", tpl, version="2-1", port="8016"))
    assert_applied_after_anchor(original, tpl.read_bytes(), "2-1", 8016)


def test_apply_uses_only_the_first_anchor(tpl: Path) -> None:
    text = STANDIN.replace("  <body></body>", '  <body><!-- /pve2/js/pvemanagerlib.js --></body>')
    tpl.write_text(text)
    ok(run("apply", tpl, version="1", port="8016"))
    lines = tpl.read_text().split("\n")
    anchors = [i for i, line in enumerate(lines) if ANCHOR.search(line)]
    assert len(anchors) == 2 and marked(tpl.read_text()) == [lines[anchors[0] + 1]]


def test_apply_leaves_a_file_of_mode_0644_and_no_temporary_file(tpl: Path) -> None:
    tpl.chmod(0o600)
    env_umask = os.umask(0o077)
    try:
        ok(run("apply", tpl))
    finally:
        os.umask(env_umask)
    assert stat.S_IMODE(tpl.stat().st_mode) == 0o644
    assert sorted(p.name for p in tpl.parent.iterdir()) == [tpl.name]


@pytest.mark.parametrize("text", [
    STANDIN.replace("pvemanagerlib.js", "pvemanager.js"),
    STANDIN.replace("pvemanagerlib.js", "pvemanagerlib_js"),   # the dot is a dot
    STANDIN.replace("/pve2/js/pvemanagerlib", "/pve2/js6/pvemanagerlib"),
    "",
], ids=["renamed", "dot", "directory", "empty"])
def test_apply_without_the_anchor_leaves_the_file_alone(tpl: Path, text: str) -> None:
    tpl.write_text(text)
    mtime = tpl.stat().st_mtime_ns
    msg = ok(run("apply", tpl), stream="stderr")
    assert "no line loading /pve2/js/pvemanagerlib.js" in msg and str(tpl) in msg
    assert tpl.read_text() == text and tpl.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tpl.parent.iterdir()) == [tpl.name]


@pytest.mark.parametrize("cmd", ["apply", "revert"])
def test_missing_template_is_not_an_error(tmp_path: Path, cmd: str) -> None:
    """The trigger also fires when pve-manager itself is removed."""
    msg = ok(run(cmd, tmp_path / "index.html.tpl"), stream="stderr")
    assert "does not exist" in msg
    assert not list(tmp_path.iterdir())


# --- version and port ------------------------------------------------------------

def fake_dpkg_query(tmp_path: Path, script: str) -> str:
    """A PATH whose dpkg-query runs script; the rest of PATH as it is."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "dpkg-query"
    fake.write_text("#!/bin/sh\n" + script + "\n")
    fake.chmod(0o755)
    return f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"


def test_version_from_prs_ui_version_before_dpkg_query(tpl: Path, tmp_path: Path) -> None:
    path = fake_dpkg_query(tmp_path, "echo 'dpkg-query must not be asked' >&2; exit 1")
    ok(run("apply", tpl, version="0.4.2-1~bpo12+1", path=path))
    assert 'pve-prs-ui.js?ver=0.4.2-1~bpo12+1"' in marked(tpl.read_text())[0]


def test_version_from_dpkg_query_of_the_ui_package(tpl: Path, tmp_path: Path) -> None:
    path = fake_dpkg_query(tmp_path, f'[ "$#:$1 $2 $3" = "3:-W -f=\\${{Version}} {UI_PKG}" ] && printf 3.1-2')
    ok(run("apply", tpl, version=None, path=path))
    assert 'pve-prs-ui.js?ver=3.1-2"' in marked(tpl.read_text())[0]


@pytest.mark.parametrize("script", ["exit 1", "printf ''", "printf '1\"><script>'"],
                         ids=["unknown", "empty", "not-a-version"])
def test_version_falls_back_to_0(tpl: Path, tmp_path: Path, script: str) -> None:
    ok(run("apply", tpl, version=None, path=fake_dpkg_query(tmp_path, script)))
    assert 'pve-prs-ui.js?ver=0"' in marked(tpl.read_text())[0]


def write_conf(tmp_path: Path, ui: str) -> Path:
    conf = tmp_path / "prs.conf"
    conf.write_text("[proxmox]\napi_host = pve1\nport = 1111\n\n[ui]\n" + ui + "\n[service]\nport = 2222\n")
    return conf


def port_of(tpl: Path) -> int:
    match = re.search(r'data-prs-port="(\d+)"', marked(tpl.read_text())[0])
    assert match
    return int(match.group(1))


@pytest.mark.parametrize(("env", "port"), [("18016", 18016), ("09", 9), ("0", 0)])
def test_port_from_prs_ui_port(tpl: Path, env: str, port: int) -> None:
    ok(run("apply", tpl, port=env))
    assert port_of(tpl) == port


@pytest.mark.parametrize(("ui", "port"), [
    ("port = 8123", 8123),
    ("# port = 1\nPort: 8124   # inline comment", 8124),
    ("port=8125\r", 8125),
    ("port = 0", 0),           # 0: the daemon's endpoint is off; the panel says so
    ("port = 08017", 8017),    # decimal, not octal
    ("port =", 8016),
    ("port = eighty", 8016),
    ("port = 70000", 8016),
    ("", 8016),
])
def test_port_from_the_ui_section_of_prs_conf(tpl: Path, tmp_path: Path, ui: str, port: int) -> None:
    ok(run("apply", tpl, conf=write_conf(tmp_path, ui)))
    assert port_of(tpl) == port


def test_prs_ui_port_wins_over_prs_conf_and_a_bad_one_falls_through(tpl: Path, tmp_path: Path) -> None:
    conf = write_conf(tmp_path, "port = 8123")
    ok(run("apply", tpl, conf=conf, port="8200"))
    assert port_of(tpl) == 8200
    ok(run("apply", tpl, conf=conf, port="x"))
    assert port_of(tpl) == 8123


def test_port_defaults_to_8016_without_prs_conf(tpl: Path) -> None:
    ok(run("apply", tpl))
    assert port_of(tpl) == 8016


# --- revert and status -------------------------------------------------------------

@pytest.mark.parametrize("text", [
    STANDIN,
    STANDIN.rstrip("\n"),                                            # no final newline
    STANDIN.rstrip("\n") + "\n\n\n",
    "<head>\n/pve2/js/pvemanagerlib.js",                            # the anchor is the last line
    "<head>\n\t<script src='/pve2/js/pvemanagerlib.js'></script>\n",  # tab indent
], ids=["standin", "no-final-newline", "blank-lines", "anchor-last", "tab"])
def test_revert_gives_back_the_exact_bytes(tpl: Path, text: str) -> None:
    tpl.write_bytes(text.encode())
    ok(run("apply", tpl))
    patched = tpl.read_bytes()
    assert patched != text.encode() and len(marked(patched.decode())) == 1
    assert patched.endswith(b"\n") == text.endswith("\n")
    assert ok(run("revert", tpl)) == f"pve-prs-ui-patch: reverted {tpl}"
    assert tpl.read_bytes() == text.encode()
    assert stat.S_IMODE(tpl.stat().st_mode) == 0o644
    assert sorted(p.name for p in tpl.parent.iterdir()) == [tpl.name]


def test_revert_when_not_applied_leaves_the_file_alone(tpl: Path) -> None:
    mtime = tpl.stat().st_mtime_ns
    assert ok(run("revert", tpl)) == f"pve-prs-ui-patch: not applied to {tpl}: nothing to revert"
    assert tpl.read_bytes() == STANDIN.encode() and tpl.stat().st_mtime_ns == mtime


def test_status(tpl: Path) -> None:
    before = run("status", tpl)
    assert (before.returncode, before.stdout, before.stderr) == \
        (1, f"pve-prs-ui-patch: not applied to {tpl}\n", "")
    ok(run("apply", tpl, version="5.0-1"))
    assert ok(run("status", tpl)) == f"pve-prs-ui-patch: applied to {tpl} (/pve2/js/pve-prs-ui.js?ver=5.0-1)"
    ok(run("revert", tpl))
    assert run("status", tpl).returncode == 1
    missing = run("status", tpl.parent / "gone.tpl")
    assert missing.returncode == 1 and "does not exist" in missing.stdout


@pytest.mark.parametrize("args", [[], ["undo"], ["--help"]])
def test_usage_error(tpl: Path, args: list[str]) -> None:
    result = subprocess.run(["/bin/sh", str(SCRIPT), *args], capture_output=True, text=True,
                            timeout=30, env={**os.environ, "PRS_UI_TPL": str(tpl)}, check=False)
    assert result.returncode == 2 and not result.stdout
    assert result.stderr == "pve-prs-ui-patch: usage: pve-prs-ui-patch apply|revert|status\n"
    assert tpl.read_bytes() == STANDIN.encode()


# --- Proxmox's real templates --------------------------------------------------------

def pve_template(rev: str) -> bytes:
    if not (PVE_MANAGER_MIRROR / "HEAD").exists():
        pytest.skip(f"no pve-manager mirror at {PVE_MANAGER_MIRROR} (set PRS_PVE_MANAGER_MIRROR "
                    "to a bare clone of git.proxmox.com/git/pve-manager.git); the stand-in covers the shape")
    if not shutil.which("git"):
        pytest.skip("git not installed: cannot read the pve-manager mirror")
    result = subprocess.run(["git", "-C", str(PVE_MANAGER_MIRROR), "show", f"{rev}:www/index.html.tpl"],
                            capture_output=True, timeout=60, check=False)
    if result.returncode != 0:
        pytest.skip(f"pve-manager mirror has no {rev}:www/index.html.tpl")
    return result.stdout


@pytest.mark.parametrize("rev", ["stable-8", "master"], ids=["pve-8.4", "pve-9.2"])
def test_real_pve_manager_template_applies_and_reverts_byte_exactly(tpl: Path, rev: str) -> None:
    original = pve_template(rev)
    tpl.write_bytes(original)
    ok(run("apply", tpl, version="1.0.0", port="8016"))
    patched = tpl.read_bytes()
    assert_applied_after_anchor(original, patched, "1.0.0", 8016)
    # Right after the script tag that loads pvemanagerlib.js, still inside <head>.
    lines = patched.decode().split("\n")
    at = lines.index(marked(patched.decode())[0])
    assert re.fullmatch(r'\s*<script type="text/javascript" '
                        r'src="/pve2/js/pvemanagerlib\.js\?ver=\[% version %\]"></script>',
                        lines[at - 1]), lines[at - 1]
    assert at < next(i for i, line in enumerate(lines) if "</head>" in line)
    ok(run("apply", tpl, version="1.0.0", port="8016"))
    assert tpl.read_bytes() == patched
    ok(run("revert", tpl))
    assert tpl.read_bytes() == original


# --- the script itself and its packaging ------------------------------------------------

def test_shellcheck_posix_sh() -> None:
    shellcheck = shutil.which("shellcheck")
    if not shellcheck:
        pytest.skip("shellcheck not installed (tests/run installs it from Debian)")
    scripts = [SCRIPT] + [DEBIAN / f"{UI_PKG}.{s}" for s in ("postinst", "prerm", "postrm")]
    result = subprocess.run([shellcheck, "-s", "sh", *map(str, scripts)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_script_is_executable_posix_sh() -> None:
    assert SCRIPT.read_text().splitlines()[0] == "#!/bin/sh"
    assert os.access(SCRIPT, os.X_OK)


def test_package_installs_what_the_patch_refers_to() -> None:
    install = {}
    for line in (DEBIAN / f"{UI_PKG}.install").read_text().splitlines():
        src, dest = line.split()
        install[src] = dest
    # The script URL /pve2/js/pve-prs-ui.js is pveproxy's /usr/share/pve-manager/js/ directory.
    assert install["webui/pve-prs-ui.js"] == "usr/share/pve-manager/js"
    assert install["webui/pve-prs-ui-patch"] == "usr/sbin"
    # The drop-in goes to the directory named after the main package's unit.
    assert install["webui/pve-prs-ui.conf"] == "usr/lib/systemd/system/proxmox-rebalancing-service.service.d"
    assert (ROOT / "proxmox-rebalancing-service.service").exists()
    script = SCRIPT.read_text()
    assert "src=\\\"/pve2/js/pve-prs-ui.js?ver=" in script
    assert "${PRS_UI_TPL:-/usr/share/pve-manager/index.html.tpl}" in script
    triggers = [line for line in (DEBIAN / f"{UI_PKG}.triggers").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert triggers == ["interest-noawait /usr/share/pve-manager/index.html.tpl"]


@pytest.mark.parametrize(("script", "actions", "command"), [
    ("postinst", ["configure)", "triggered |"], "pve-prs-ui-patch apply || true"),
    ("prerm", ["remove | deconfigure)"], "pve-prs-ui-patch revert || true"),
])
def test_maintainer_scripts(script: str, actions: list[str], command: str) -> None:
    text = (DEBIAN / f"{UI_PKG}.{script}").read_text()
    assert "#DEBHELPER#" in text
    assert command in text
    for action in actions:
        assert action in text, action
    assert "upgrade)" not in text.replace("abort-upgrade)", ""), "no revert on upgrade: postinst re-applies"


def test_dropin_turns_the_endpoint_on() -> None:
    settings = [line for line in DROPIN.read_text().splitlines() if line and not line.startswith("#")]
    assert settings == ["[Service]", "Environment=PRS_UI_PORT=8016", "SupplementaryGroups=www-data"]
