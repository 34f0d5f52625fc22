"""Packaging checks: one version string, and units that say what the issue asks.

These read files of the source tree only (no installed package), so they run
in the package build too. Checks that need a tool the machine may lack
(systemd-analyze, man) skip with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXE = ROOT / "proxmox-rebalancing-service"
NAME = "proxmox-rebalancing-service"
UNIT = ROOT / f"{NAME}.service"
TEMPLATE = ROOT / f"{NAME}@.service"
MANPAGE = ROOT / "debian" / f"{NAME}.8"
CONF_DIR = "/etc/proxmox-rebalancing-service"
EXIT_CONFIG = 2  # the spec's exit status for a configuration error


def run_exe(*args: str) -> subprocess.CompletedProcess[str]:
    # sys.executable, not the shebang: the venv and the package build differ.
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "CREDENTIALS_DIRECTORY")}
    return subprocess.run([sys.executable, str(EXE), *args], capture_output=True,
                          text=True, timeout=60, env=env, check=False)


def changelog_version() -> str:
    """Upstream part of the newest debian/changelog entry (no epoch, no revision)."""
    first = (ROOT / "debian" / "changelog").read_text(encoding="utf-8").splitlines()[0]
    match = re.match(rf"^{re.escape(NAME)} \(([^)\s]+)\) ", first)
    assert match, f"unexpected first line of debian/changelog: {first!r}"
    version = match.group(1).split(":", 1)[-1]
    return version.rsplit("-", 1)[0] if "-" in version else version


def unit_entries(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) in file order; systemd allows repeated keys, configparser does not."""
    entries, section = [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a key=value line: {raw!r}"
        entries.append((section, key.strip(), value.strip()))
    return entries


def values(path: Path, section: str, key: str) -> list[str]:
    return [v for s, k, v in unit_entries(path) if s == section and k == key]


def one(path: Path, section: str, key: str) -> str:
    found = values(path, section, key)
    assert len(found) == 1, f"{path.name}: [{section}] {key}= set {len(found)} times"
    return found[0]


# --- one version string ------------------------------------------------------

def test_version_option_matches_debian_changelog() -> None:
    result = run_exe("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{NAME} {changelog_version()}"


def test_version_constant_matches_debian_changelog() -> None:
    match = re.search(r'^__version__ = "([^"]+)"$', EXE.read_text(encoding="utf-8"), re.M)
    assert match, "no __version__ constant in the executable"
    assert match.group(1) == changelog_version()


def test_executable_has_debian_python_shebang() -> None:
    assert EXE.read_text(encoding="utf-8").splitlines()[0] == "#!/usr/bin/python3"
    assert os.access(EXE, os.X_OK), "the executable lost its x bit"


# --- units ---------------------------------------------------------------------

@pytest.mark.parametrize("unit", [UNIT, TEMPLATE], ids=lambda p: p.name)
def test_unit_service_settings(unit: Path) -> None:
    assert one(unit, "Service", "Type") == "notify"  # bookworm's systemd 252 has no notify-reload
    # The signal goes last, from the sandboxed dynamic user (no "+"), once the copy is fresh.
    assert values(unit, "Service", "ExecReload")[-1] == "/bin/kill -HUP $MAINPID"
    # The reload check's refusal is logged by sh: tag it like the daemon's own lines.
    assert one(unit, "Service", "SyslogIdentifier") == NAME
    assert one(unit, "Service", "Restart") == "on-failure"
    assert str(EXIT_CONFIG) in one(unit, "Service", "RestartPreventExitStatus").split()
    assert f"man:{NAME}(8)" in one(unit, "Unit", "Documentation").split()
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


@pytest.mark.parametrize("unit", [UNIT, TEMPLATE], ids=lambda p: p.name)
def test_unit_hardening(unit: Path) -> None:
    assert one(unit, "Service", "DynamicUser") == "yes"
    assert one(unit, "Service", "CapabilityBoundingSet") == ""
    assert one(unit, "Service", "ProtectSystem") == "strict"
    assert one(unit, "Service", "PrivateTmp") == "yes"
    assert one(unit, "Service", "PrivateDevices") == "yes"
    assert set(one(unit, "Service", "RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert values(unit, "Service", "SystemCallFilter")
    assert not values(unit, "Service", "User"), "User= would override DynamicUser's identity"


RUN_COPY = "/run/%N/prs.conf"  # the dynamic user's copy of the configuration


@pytest.mark.parametrize(("unit", "conf"), [(UNIT, "prs.conf"), (TEMPLATE, "%i.conf")],
                         ids=["service", "template"])
def test_unit_hands_root_only_config_to_a_private_copy(unit: Path, conf: str) -> None:
    """systemd 252 loads credentials only at start, so LoadCredential= would hide edits from a
    reload: root ("+") copies the file into the runtime directory at start and at reload."""
    assert not values(unit, "Service", "LoadCredential")
    assert one(unit, "Service", "Environment") == f"PRS_CONFIG={CONF_DIR}/{conf}"
    assert one(unit, "Service", "RuntimeDirectory") == "%N"
    assert one(unit, "Service", "RuntimeDirectoryMode") == "0700"
    assert one(unit, "Service", "ExecStart") == f"/usr/bin/{NAME} -c {RUN_COPY}"
    copy = one(unit, "Service", "ExecStartPre")
    assert copy.startswith("-+/bin/sh -c "), "as root, and a failed copy must not fail the start " \
        "(the service then exits 2, which is not restarted; a failed ExecStartPre= would be)"
    # The copy is written by the dynamic user (setpriv), never by root into its directory.
    assert "setpriv --reuid=$$(stat -c %%u /run/%N)" in copy and f"of={RUN_COPY}" in copy
    check, reload_copy, _ = values(unit, "Service", "ExecReload")
    assert check.startswith("+/bin/sh -c ") and f"/usr/bin/{NAME} --check-config -c \"$$PRS_CONFIG\"" in check
    assert reload_copy == "+" + copy[2:]


def unit_shell(command: str, run_dir: Path) -> str:
    """The script of a unit's `/bin/sh -c '...'` command, unescaped as systemd does and
    pointed at run_dir and the tree's executable."""
    prefix, sep, script = command.partition("/bin/sh -c ")
    assert sep and set(prefix) <= set("-+") and script[0] == script[-1] == "'", command
    script = script[1:-1].replace("/run/%N", str(run_dir)).replace("%%", "%").replace("$$", "$")
    assert "%" not in script.replace("%u", "").replace("%g", ""), f"unexpected specifier: {script}"
    return script.replace(f"/usr/bin/{NAME}", f"{sys.executable} {EXE}")


def run_unit_shell(command: str, run_dir: Path, conf: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "CREDENTIALS_DIRECTORY")}
    env.update(PRS_CONFIG=str(conf), JOURNAL_STREAM="0:0")   # as under systemd: priority prefixes
    return subprocess.run(["/bin/sh", "-c", unit_shell(command, run_dir)], capture_output=True,
                          text=True, timeout=60, env=env, check=False)


def write_conf(path: Path, balanciness: str) -> Path:
    path.write_text("[proxmox]\napi_host = pve1\napi_user = root@pam\napi_pass = secret\n"
                    f"[balancing]\nbalanciness = {balanciness}\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def test_reload_check_refuses_a_bad_config_with_one_error_line(tmp_path: Path) -> None:
    check = values(UNIT, "Service", "ExecReload")[0]
    good = run_unit_shell(check, tmp_path, write_conf(tmp_path / "good.conf", "10"))
    assert good.returncode == 0 and not good.stdout and not good.stderr, good
    bad_conf = write_conf(tmp_path / "bad.conf", "lots")
    bad = run_unit_shell(check, tmp_path, bad_conf)
    assert bad.returncode == EXIT_CONFIG and not bad.stdout, bad
    lines = bad.stderr.splitlines()
    assert len(lines) == 1, bad.stderr
    assert lines[0].startswith(f"<3>reload refused, keeping the previous configuration: {bad_conf}: "
                               "[balancing] balanciness: "), lines[0]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="the copy runs as root (setpriv --clear-groups)")
def test_copy_command_writes_a_0600_copy_owned_like_the_runtime_directory(tmp_path: Path) -> None:
    conf = write_conf(tmp_path / "prs.conf", "7")   # 0600 root, in a directory only root enters
    with tempfile.TemporaryDirectory() as top:   # like /run: the writer must reach run_dir
        os.chmod(top, 0o711)
        run_dir = Path(top) / "run"
        run_dir.mkdir(mode=0o700)
        os.chown(run_dir, 65534, 65534)   # stands in for the dynamic user
        result = run_unit_shell(one(UNIT, "Service", "ExecStartPre"), run_dir, conf)
        assert result.returncode == 0, result.stderr
        copy = run_dir / "prs.conf"
        st = copy.stat()
        assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o600, 65534, 65534)
        assert copy.read_bytes() == conf.read_bytes()


def test_template_differs_only_in_config_and_wording() -> None:
    """The template must not drift from the main unit: same settings but the config path."""
    def settings(path: Path) -> list[tuple[str, str, str]]:
        return [e for e in unit_entries(path) if e[1] not in ("Description", "Environment")]
    assert settings(UNIT) == settings(TEMPLATE)


def test_config_error_exit_status_is_the_one_units_do_not_restart(tmp_path: Path) -> None:
    result = run_exe("-c", str(tmp_path / "missing.conf"), "--check-config")
    assert result.returncode == EXIT_CONFIG, result.stderr


@pytest.mark.parametrize("unit", [UNIT, TEMPLATE], ids=lambda p: p.name)
def test_systemd_analyze_verify(unit: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze not installed")
    # verify wants ExecStart= to exist: point it at the tree's executable.
    # A template can only be verified as an instance.
    name = unit.name.replace("@.", "@example.")
    copy = tmp_path / name
    copy.write_text(unit.read_text(encoding="utf-8").replace(f"/usr/bin/{NAME}", str(EXE)), encoding="utf-8")
    result = subprocess.run([analyze, "verify", "--man=no", str(copy)], capture_output=True,
                            text=True, timeout=120, check=False)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if line.strip() and "Failed to connect to bus" not in line]
    assert result.returncode == 0 and not problems, "\n".join(problems)


def test_systemd_analyze_security_exposure_at_most_2(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze not installed")
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text(encoding="utf-8").replace(f"/usr/bin/{NAME}", str(EXE)), encoding="utf-8")
    # --threshold counts in tenths: 20 is the "2.0" that systemd-analyze prints.
    result = subprocess.run([analyze, "security", "--no-pager", "--offline=true", "--threshold=20",
                             str(copy)], capture_output=True, text=True, timeout=120, check=False)
    if "Unknown option" in result.stderr or "unrecognized option" in result.stderr:
        pytest.skip("systemd-analyze too old for --offline/--threshold (needs 250+)")
    last = (result.stdout.strip().splitlines() or [""])[-1]
    assert result.returncode == 0, f"exposure above 2.0: {last}\n{result.stderr}"


# --- man page ------------------------------------------------------------------

def test_man_page_documents_every_long_option() -> None:
    help_text = run_exe("--help").stdout
    options = set(re.findall(r"(--[a-z][a-z-]+)", help_text)) - {"--help"}
    assert options, f"no options found in --help:\n{help_text}"
    page = MANPAGE.read_text(encoding="utf-8").replace("\\-", "-")
    missing = sorted(o for o in options if o not in page)
    assert not missing, f"{MANPAGE.name} lacks {missing}"


def test_man_page_renders_without_warnings() -> None:
    man = shutil.which("man")
    if not man:
        pytest.skip("man (man-db) not installed")
    env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8")
    result = subprocess.run([man, "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(MANPAGE)],
                            capture_output=True, text=True, timeout=60, env=env, check=False)
    if result.returncode != 0 and "groff" in result.stderr and "not found" in result.stderr:
        pytest.skip("groff not installed")
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
