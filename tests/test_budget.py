"""The memory check that refuses an embedded run this machine cannot hold."""

import pytest

from ymxb import budget
from ymxb.config import Config
from ymxb.errors import UsageError

GIB = 2**30


def test_the_default_run_fits_in_a_few_gib():
    budget.check_fits(Config(hosts=4, devices_per_host=2), free=4 * GIB)


@pytest.mark.parametrize("shape,flag", [
    (dict(hosts=64, devices_per_host=1), "--hosts"),
    (dict(hosts=4, devices_per_host=2, samples_per_host=100_000_000), "--samples-per-host"),
    (dict(hosts=4, devices_per_host=2, ensemble=1 << 20), "--ensemble"),
])
def test_a_run_too_big_names_what_to_lower_with_the_numbers(shape, flag):
    with pytest.raises(UsageError) as refused:
        budget.check_fits(Config(**shape), free=16 * GIB)
    message = str(refused.value)
    assert f"lower {flag}, or run on a cluster" in message and "16.0 GiB available" in message
    need = sum(budget.needed(Config(**shape)).values())
    assert f"need about {need / GIB:.1f} GiB" in message
