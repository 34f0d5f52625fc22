"""pytest configuration shared by PRS's tests."""

import os
import sys

import pytest

# --------------------------------------------------------------------------------------
# Paths: make tests/ importable (fakecluster lives there).
# --------------------------------------------------------------------------------------
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(TESTS_DIR)
SCENARIO_DIR = os.path.join(TESTS_DIR, 'scenarios')
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)


# Test modules that never touch proxmoxer (the planning core, the docs, lint, packaging, the
# web UI's JavaScript and the real Proxmox UI): tests/run runs them in its proxmoxer 2.x round
# only, and sets PRS_TEST_PROXMOXER_ONLY=1 for the 1.2.0 round, which then deselects them.
PROXMOXER_FREE = {"test_planner.py", "test_docs.py", "test_lint.py", "test_freebsd.py", "test_pveschema.py",
                  "test_packaging.py", "test_webui.py", "test_webui_patch.py", "test_realui.py"}


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PRS_TEST_PROXMOXER_ONLY") != "1":
        return
    dropped = [i for i in items if os.path.basename(str(i.fspath)) in PROXMOXER_FREE]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [i for i in items if i not in dropped]


try:    # the package build runs the suite with Debian's python3, which has no fakepve:
    from fakecluster import FakeCluster  # noqa: E402  # the tests that need it skip themselves
except ImportError:
    FakeCluster = None


# --------------------------------------------------------------------------------------
# Fake Proxmox cluster: `cluster` is a factory; every cluster it starts is stopped after
# the test. Defaults keep tests fast: time_scale 0 (tasks finish at once), HA delay 0.1 s.
#     def test_x(cluster):
#         c = cluster('small.json')            # or a dict, or generate_scenario(...)
#         c = cluster('drain.json', time_scale=0.01, ha_delay=0.5)
# --------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def state_directory(tmp_path, monkeypatch):
    """PRS remembers its runs in $STATE_DIRECTORY/state.json (systemd's StateDirectory=):
    each test gets a directory of its own, so no test sees another's memory."""
    path = tmp_path / "prs-state"
    monkeypatch.setenv("STATE_DIRECTORY", str(path))
    return path


@pytest.fixture
def run(tmp_path):
    """PRS as a user runs it, against a fake cluster: see test_e2e.Runner."""
    from test_e2e import Runner
    return Runner(tmp_path)


@pytest.fixture
def cluster():
    started = []

    if FakeCluster is None:
        pytest.skip('the fake cluster needs fakepve (pip install -r tests/requirements.txt)')

    def make(scenario='small.json', **kw):
        kw.setdefault('time_scale', 0.0)
        kw.setdefault('ha_delay', 0.1)
        c = FakeCluster(scenario, **kw)
        c.start()
        started.append(c)
        return c
    yield make
    for c in started:
        c.stop()
