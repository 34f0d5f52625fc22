"""Load the suffix-less executable as the module `prs` (importing it has no side effects).

spec_from_file_location returns None for a path without a .py suffix unless it is given
a loader, so the loader is explicit. The module is registered in sys.modules before it is
executed, so dataclasses and mock.patch find it.
"""

import importlib.machinery
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXECUTABLE = os.environ.get("PRS_EXECUTABLE", os.path.join(ROOT, "proxmox-rebalancing-service"))


def load():
    if "prs" in sys.modules:
        return sys.modules["prs"]
    loader = importlib.machinery.SourceFileLoader("prs", EXECUTABLE)
    spec = importlib.util.spec_from_loader("prs", loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules["prs"] = module
    loader.exec_module(module)
    return module


prs = load()
