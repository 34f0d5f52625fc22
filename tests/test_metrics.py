"""The metrics file for node_exporter's textfile collector, parsed with Prometheus' own
Python client (prometheus_client's text-format parser), after good, failed and drain runs."""

import os

import pytest

from prsmodule import prs

pytest.importorskip("fakepve")
parser = pytest.importorskip("prometheus_client.parser")


def metrics(path):
    with open(path) as handle:
        text = handle.read()
    out = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out, text


def one(values, name, **labels):
    return values[(name, tuple(sorted(labels.items())))]


def test_a_run_reports_usage_spread_migrations_and_success(cluster, run, tmp_path):
    c = cluster("demo.json")
    path = tmp_path / "prs.prom"
    result = run(c, "--once", "--json", extra="[balancing]\n[service]\ndaemon = 0\nmetrics_file = %s\n" % path)
    assert result.returncode == 0, result.stderr[-2000:]
    values, text = metrics(path)
    doc = result.doc
    assert one(values, "prs_last_run_success") == 1 and one(values, "prs_last_run_exit_code") == 0
    assert one(values, "prs_consecutive_failed_runs") == 0
    assert one(values, "prs_migrations", status="done") == len(doc["migrations"]) > 0
    assert one(values, "prs_migrations", status="failed") == 0
    assert one(values, "prs_spread_points", when="before") == pytest.approx(doc["spread_before"], abs=0.01)
    assert one(values, "prs_spread_points", when="after") == pytest.approx(doc["measured"]["spread"], abs=0.01)
    for n in doc["nodes"]:
        assert one(values, "prs_node_usage_percent", node=n["node"], when="before") == \
            pytest.approx(n["usage_before"], abs=0.01)
        assert one(values, "prs_node_usage_percent", node=n["node"], when="after") == \
            pytest.approx(doc["measured"]["usage"][n["node"]], abs=0.01)
    assert one(values, "prs_balanciness_points") == 10
    assert 0 < one(values, "prs_last_run_duration_seconds") < 300
    assert "# TYPE prs_node_usage_percent gauge" in text
    assert oct(os.stat(path).st_mode & 0o777) == "0o644", "node_exporter must read it"
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_failed_runs_count_up_and_a_success_resets_them(cluster, run, tmp_path):
    c = cluster("demo.json")
    path = tmp_path / "prs.prom"
    extra = "[balancing]\n[service]\ndaemon = 0\nmetrics_file = %s\n" % path
    c.lose_quorum()
    for expected in (1, 2):
        result = run(c, "--once", extra=extra)
        assert result.returncode == prs.EXIT_API
        values, _ = metrics(path)
        assert one(values, "prs_last_run_success") == 0 and one(values, "prs_last_run_exit_code") == 3
        assert one(values, "prs_consecutive_failed_runs") == expected
    c.restore_quorum()
    assert run(c, "--once", extra=extra).returncode == 0
    values, _ = metrics(path)
    assert one(values, "prs_consecutive_failed_runs") == 0 and one(values, "prs_last_run_success") == 1
    # A dry run leaves the daemon's report alone.
    before = path.read_text()
    assert run(c, "--dry-run", extra=extra).returncode == 0 and path.read_text() == before


def test_guests_that_cannot_leave_a_drained_node_are_counted(cluster, run, tmp_path):
    c = cluster("drain.json")
    path = tmp_path / "prs.prom"
    result = run(c, "--drain", "pve1", "--json", extra="[balancing]\n[service]\ndaemon = 0\nmetrics_file = %s\n"
                 % path)
    values, _ = metrics(path)
    assert one(values, "prs_last_run_exit_code") == result.returncode
    stuck = len(result.doc["not_moved"]) + len(result.doc["blocked"]) + len(result.doc["drain_left"])
    assert one(values, "prs_guests_not_movable") == stuck
    assert ("prs_node_usage_percent", (("node", "pve1"), ("when", "after"))) not in values, \
        "a drained node is not among the balanced ones"


def test_a_metrics_file_in_a_missing_directory_is_a_config_error(tmp_path):
    conf = tmp_path / "prs.conf"
    conf.write_text("[proxmox]\napi_host = h\napi_user = root@pam\napi_pass = x\n[service]\n"
                    "metrics_file = %s\n" % (tmp_path / "nosuch" / "prs.prom"))
    with pytest.raises(prs.ConfigError) as err:
        prs.load_config(str(conf))
    assert "[service] metrics_file: the directory" in str(err.value) and "does not exist" in str(err.value)
