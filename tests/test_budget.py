"""The memory check that refuses an embedded run (or a sweep's program) this machine cannot hold."""

import dataclasses

import pytest

from ymxb.driver import budget
from ymxb.spec.settings import Program, SliceSpec, TrialSpec
from ymxb.errors import UsageError
from ymxb.protocol import SliceHost

GIB = 2**30
SLICE = SliceSpec(hosts=4, devices_per_host=2)


def _program(spec=SLICE, trials=1, **settings):
    return Program.of(spec, [TrialSpec.resolve(seed=i, **settings) for i in range(trials)])


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


def _host(node_id, memory_available, device_memory) -> SliceHost:
    """A host as it reports itself at initialize (what the budget reads: its node and memory)."""
    return SliceHost(host_index=0, hostname="vm", node_ip="10.0.0.1", pid=1, node_id=node_id, process_index=0,
                     process_count=1, local_devices=4, global_devices=4, platform="tpu", device_kind="TPU v4",
                     megascale={}, memory_available=memory_available, device_memory=device_memory, slice=0)


def test_a_program_too_big_for_the_devices_is_refused_by_what_they_hold():
    # As TPU hosts report at initialize: 16 GiB of device memory each (JAX's bytes_limit).
    tpu = [_host(f"n{i}", 300 * GIB, 16 * GIB) for i in range(2)]
    spec = SliceSpec(hosts=2, devices_per_host=4, platform="tpu")
    budget.check_slice(_program(spec, ensemble=64), tpu)
    big = _program(spec, ensemble=4096, samples_per_host=1 << 21)  # 512 members a device, on 4M points each
    with pytest.raises(UsageError) as refused:
        budget.check_slice(big, tpu)
    need = budget.per_device(big)
    assert str(refused.value) == (f"this run would need about {sum(need.values()) / GIB:.1f} GiB (--ensemble: "
                                  f"{need['--ensemble'] / GIB:.1f} GiB) per device, but the slice's devices "
                                  f"hold 16.0 GiB each: lower --ensemble")


def test_cpu_devices_are_judged_by_the_memory_of_the_node_their_hosts_share():
    spec = SliceSpec(hosts=4, devices_per_host=1, platform="cpu-sim")
    program = _program(spec, samples_per_host=1 << 26)  # 3 GiB a host
    apart = [_host(f"n{i}", 8 * GIB, None) for i in range(4)]
    budget.check_slice(program, apart)
    together = [dataclasses.replace(h, node_id="n0") for h in apart]
    with pytest.raises(UsageError, match=r"on the node of 4 of its hosts, which has 8.0 GiB available: "
                                         r"lower --samples-per-host"):
        budget.check_slice(program, together)


@pytest.mark.parametrize("trials,most,sizes", [
    (10, 10, [10]),  # it fits: one program
    (10, 3, [2, 3, 2, 3]),  # the fewest that fit, of even size
    (5, 1, [1, 1, 1, 1, 1]),  # not even one fits: each alone, for the check to refuse
    (1, 0, [1]),
])
def test_a_program_too_large_is_split_into_the_fewest_that_fit(trials, most, sizes):
    group = [TrialSpec.resolve(seed=i) for i in range(trials)]
    asked = []

    def fits(program):
        asked.append(program.count)
        return program.count <= most

    parts = budget.split(Program.of(SLICE, group), fits)
    assert parts == sizes and sum(parts) == trials  # in order, none lost
    assert len(asked) <= 1 + trials.bit_length()  # a binary search, not a scan
