"""The web UI add-on's JavaScript (webui/pve-prs-ui.js): runs its unit tests, tests/webui/*.test.js,
with Node's own test runner (jsdom + npm extjs-gpl 6.2.0, see tests/webui/package.json).

Installs nothing itself. The npm packages are looked up where tests/webui/harness.js looks:
$PRS_NODE_DIR, else .venv/node in the repository, else tests/webui; install them with
    npm ci --prefix "$PRS_NODE_DIR" (after copying tests/webui/package*.json there)
as tests/lib.sh does. Skipped, saying so, where node or those packages are missing."""

import glob
import os
import shutil
import subprocess

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(TESTS_DIR)
WEBUI_TESTS = os.path.join(TESTS_DIR, "webui")
NEEDED = ("jsdom", "extjs-gpl")


def node_dir():
    """The first candidate directory whose node_modules holds jsdom and extjs-gpl, else None."""
    for path in (os.environ.get("PRS_NODE_DIR"), os.path.join(REPO_DIR, ".venv", "node"), WEBUI_TESTS):
        if path and all(os.path.isfile(os.path.join(path, "node_modules", name, "package.json"))
                        for name in NEEDED):
            return path
    return None


def test_webui_javascript():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (Debian: apt-get install nodejs npm)")
    where = node_dir()
    if where is None:
        dest = os.environ.get("PRS_NODE_DIR") or os.path.join(REPO_DIR, ".venv", "node")
        pytest.skip("jsdom/extjs-gpl are not installed; install them with:  mkdir -p %s && "
                    "cp tests/webui/package.json tests/webui/package-lock.json %s/ && "
                    "npm ci --prefix %s --no-audit --no-fund" % (dest, dest, dest))
    files = sorted(glob.glob(os.path.join(WEBUI_TESTS, "*.test.js")))
    assert files, "no tests/webui/*.test.js"
    env = dict(os.environ, PRS_NODE_DIR=where, NO_COLOR="1")
    result = subprocess.run([node, "--test", "--test-reporter=spec"] + files, cwd=REPO_DIR, env=env,
                            capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, "node --test failed:\n" + output
    assert " fail 0" in output or "ℹ fail 0" in output, output
