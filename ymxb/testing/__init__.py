"""Test hooks, kept out of the code a run uses. Production code offers a few extension points,
empty in a run (`driver.slice.HOOKS`, `driver.budget.available`);
`install` fills them from the YMXB_TEST_* variables below, and `python -m ymxb.testing.launch`
is launch.py with them installed.
"""

import dataclasses
import json
import os
from typing import Mapping

from ymxb.testing.faults import Faults

# Faults the hosts suffer, "<kind>:<host index, or all>:<phase>[:<seconds>]" (testing/faults.py).
FAULT_ENV = "YMXB_TEST_FAULT"
# With it, a path: a die or hang fault strikes once, in the first process to create that file.
FAULT_ONCE_ENV = "YMXB_TEST_FAULT_ONCE"
# A path: the driver appends a JSON line listing the hosts of each slice it brings up (who and
# where: pid, node), so a test knows the processes of a run without reading its human lines.
HOSTS_FILE_ENV = "YMXB_TEST_HOSTS_FILE"
# Bytes: the memory this machine has available, as the budget sees it (a smaller machine, so a
# program too large for it can be tested without filling this one).
MEMORY_ENV = "YMXB_TEST_MEMORY_AVAILABLE"


def install(env: Mapping[str, str] = os.environ) -> None:
    """Fill the extension points from `env`'s test variables (those set; the rest left empty)."""
    from ymxb.driver import budget, slice as slices

    if env.get(FAULT_ENV):
        slices.HOOKS.faults = Faults.parse(env[FAULT_ENV], env.get(FAULT_ONCE_ENV))
    if env.get(HOSTS_FILE_ENV):
        slices.HOOKS.slice_up.append(lambda hosts: _append_hosts(env[HOSTS_FILE_ENV], hosts))
    if env.get(MEMORY_ENV):
        budget.available = lambda: int(env[MEMORY_ENV])


def _append_hosts(path: str, hosts) -> None:
    with open(path, "a") as f:
        f.write(json.dumps([dataclasses.asdict(h) for h in hosts]) + "\n")
