"""The documentation covers every option: README, man page and the shipped prs.conf."""

import os
import re

import pytest

from prsmodule import ROOT, prs


def read(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as handle:
        return handle.read()


KEYS = [(section, key) for section, keys in prs.KNOWN_KEYS.items() for key in keys]


@pytest.mark.parametrize("section,key", KEYS, ids=["%s.%s" % k for k in KEYS])
def test_every_option_is_documented(section, key):
    assert re.search(r"^\| (`\[%s\]`)? *\| `%s` \|" % (re.escape(section), key), read("README.md"), re.M), \
        "README table lacks %s" % key
    assert key in read("debian", "proxmox-rebalancing-service.8")
    assert re.search(r"^#?%s =" % key, read("prs.conf"), re.M), "prs.conf lacks %s" % key


def test_exit_codes_are_documented_alike():
    codes = sorted(v for k, v in vars(prs).items() if k.startswith("EXIT_") and isinstance(v, int))
    readme, man = read("README.md"), read("debian", "proxmox-rebalancing-service.8")
    for code in codes:
        assert re.search(r"^\| %d \|" % code, readme, re.M)
        assert ".B %d\n" % code in man
        assert re.search(r"^  %d " % code, prs.EXIT_CODES_HELP, re.M)


def _code_text(doc, code):
    """What one document says about one exit code."""
    if doc == "help":
        m = re.search(r"^  %d +(.*?)(?=^  \d|\Z)" % code, prs.EXIT_CODES_HELP, re.M | re.S)
    elif doc == "readme":
        m = re.search(r"^\| %d \| (.*)$" % code, read("README.md"), re.M)
    else:
        man = read("debian", "proxmox-rebalancing-service.8")
        m = re.search(r"^\.B %d\n(.*?)(?=^\.TP|^\.SH)" % code, man, re.M | re.S)
    assert m, (doc, code)
    text = re.sub(r"\\-|\\", lambda x: "-" if x.group() == "\\-" else "", m.group(1))
    return text.replace("\n", " ").lower()


# What --help, README and man page must all say (found when a drain dry run exited 5
# while the README promised 0 for dry runs, and "no API call" was promised for exit 2).
FACTS = {0: ("dry run",), 2: ("nothing was migrated", "--drain"), 5: ("dry-run", "guests")}


@pytest.mark.parametrize("code", sorted(FACTS))
def test_exit_codes_say_the_same_everywhere(code):
    for doc in ("help", "readme", "man"):
        text = _code_text(doc, code)
        for fact in FACTS[code]:
            assert fact in text, (doc, code, fact, text)
    assert "no api call" not in _code_text("readme", 2) + _code_text("help", 2)


def test_the_quick_start_output_is_what_the_demo_prints(cluster, run):
    """Every line the README quotes from tests/demo, as PRS prints it today (times, ports and
    durations aside)."""
    pytest.importorskip("fakepve")
    readme = read("README.md")
    block = readme.split("`tests/demo` prints:", 1)[1].split("```", 2)[1]
    c = cluster("demo.json")
    result = run(c, "--once")
    assert result.returncode == 0, result.stderr[-2000:]

    def norm(line):
        line = re.sub(r"^\d\d:\d\d:\d\d ", "", line.rstrip())
        line = re.sub(r"127\.0\.0\.1:\d+", "HOST", line)
        return re.sub(r"in \d+\.\d s$", "in N s", line)
    printed = {norm(x) for x in (result.stdout + result.stderr).splitlines()}
    quoted = [norm(x) for x in block.strip().splitlines() if x.strip() not in ("", "...")]
    assert len(quoted) > 10
    missing = [x for x in quoted if x not in printed]
    assert not missing, missing
