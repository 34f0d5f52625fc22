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
