"""The executable passes a linter and a strict type check (run from the tests, so the
package build and CI enforce them). Skipped where the tools are not installed."""

import shutil
import subprocess
import sys

import pytest

from prsmodule import EXECUTABLE


def tool(name):
    try:
        __import__(name)
    except ImportError:
        pytest.skip("%s is not installed" % name)


def test_ruff():
    tool("ruff")
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--isolated", "--select",
                             "E,F,W,B,C4,SIM", "--line-length", "110", EXECUTABLE],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict():
    tool("mypy")
    result = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--ignore-missing-imports",
                             "--no-incremental", "--cache-dir", "/dev/null", EXECUTABLE],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shebang_and_mode():
    with open(EXECUTABLE) as handle:
        assert handle.readline() == "#!/usr/bin/python3\n"
    assert shutil.which(EXECUTABLE) is not None, "the file is executable"


def test_chapters_in_reading_order():
    """The file reads in named chapters (STYLE.md); a lost banner is a lost signpost."""
    with open(EXECUTABLE) as handle:
        lines = handle.read().splitlines()
    banners = [lines[i + 1][2:] for i in range(len(lines) - 1)
               if set(lines[i]) == {"#"} and len(lines[i]) > 40 and lines[i + 1].startswith("# ")]
    names = [b.split(":")[0] for b in banners]
    assert names == ["Imports", "Constants and exit codes", "Errors", "Data model", "Configuration",
                     "Planning core", "State across runs", "Proxmox adapter", "One instance per cluster",
                     "Executor", "Reports", "Service", "Web UI endpoint",
                     "Command line"], names
