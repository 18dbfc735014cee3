"""The memory check that refuses an embedded run (or a sweep's program) this machine cannot hold."""

import pytest

from ymxb import budget
from ymxb.config import Program, SliceSpec, TrialSpec
from ymxb.errors import UsageError

GIB = 2**30
SLICE = SliceSpec(hosts=4, devices_per_host=2)


def _program(spec=SLICE, trials=1, **settings):
    return Program.of(spec, [TrialSpec(seed=i, **settings) for i in range(trials)])


def test_the_default_run_fits_in_a_few_gib():
    budget.check_fits(_program(), free=4 * GIB)


@pytest.mark.parametrize("program,flag", [
    (_program(SliceSpec(hosts=64, devices_per_host=1)), "--hosts"),
    (_program(samples_per_host=100_000_000), "--samples-per-host"),
    (_program(ensemble=1 << 20), "--ensemble"),
    (_program(trials=4096, ensemble=256), "the group's trials x members"),
])
def test_a_run_too_big_names_what_to_lower_with_the_numbers(program, flag):
    with pytest.raises(UsageError) as refused:
        budget.check_fits(program, free=16 * GIB)
    message = str(refused.value)
    assert f"lower {flag}, or run on a cluster" in message and "16.0 GiB available" in message
    need = sum(budget.needed(program).values())
    assert f"need about {need / GIB:.1f} GiB" in message
