"""A single run's report (ymxb/report.py) for a slice of many hosts, from synthetic host records
(no Ray, no JAX): the table stays readable, --json lists the exceptions in full."""

import json

import numpy as np

from ymxb import protocol
from ymxb.results.views import report
from ymxb.results.judge import judge
from ymxb.spec import builtin, registry
from ymxb.spec.settings import Program, SliceSpec, TrialSpec

STEPS = 50


def _run(hosts: int, odd: int = None):
    """A finished one-model program of `hosts` hosts (2 devices each), every replica at the same
    params but host `odd`'s, a little off, and its loss history with it."""
    spec = SliceSpec(hosts=hosts, devices_per_host=2, platform="cpu-sim")
    program = Program.of(spec, [TrialSpec.resolve(samples_per_host=64, steps=STEPS)])
    reference = registry.get("ymxb").reference(program.trial.of_task, (registry.get("ymxb").shard(
        program.trial.of_task, 0, i, 64) for i in range(hosts)))
    runs = []
    for i in range(hosts):
        params = np.tile(reference.params.astype(np.float32), (2, 1))
        losses = np.linspace(1.0, reference.loss, STEPS, dtype=np.float32)[None]
        if i == odd:
            params, losses = params + 1e-3, losses + 1e-3
        host = protocol.SliceHost(host_index=i, hostname="vm", node_ip=f"10.0.0.{i}", pid=100 + i, node_id=f"n{i}",
                                  process_index=i, process_count=hosts, local_devices=2, global_devices=2 * hosts,
                                  platform="cpu", device_kind="cpu", megascale={}, memory_available=None,
                                  device_memory=None, slice=0)
        result = protocol.HostResult(np.zeros(2, np.int64), np.arange(2 * i, 2 * i + 2), params, params, np.array([0]),
                                     losses, (1, 2 * hosts), 2 * hosts, 1.0, 0.5)
        runs.append(protocol.HostRun(host, result))
    run = protocol.ProgramRun(program, "cpu-sim", "10.0.0.0:1", tuple(runs), 1.0, {})
    [record] = judge(run)
    return report.build(record, run, 1.0)


def test_a_big_slices_table_shows_the_ends_and_every_exception():
    text = report.summary(_run(100, odd=40))
    rows = [line for line in text.splitlines() if " 10.0.0." in line]
    assert [int(r.split()[0]) for r in rows] == [*range(8), 40, *range(92, 100)]
    assert " ...  (32 more hosts, each holding what host 0 does; all in --json)" in text
    assert "(51 more hosts, each holding what host 0 does; all in --json)" in text
    assert "[FAIL] replicas agree: host 40 device 80 holds" in text


def test_a_big_slices_json_gives_loss_histories_only_where_they_differ():
    doc = json.loads(report.to_json(_run(100, odd=40)))
    assert len(doc["hosts"]) == 100 and all("params" in h for h in doc["hosts"])
    assert [h["process_index"] for h in doc["hosts"] if "loss_history" in h] == [0, 40]
    assert doc["loss_history_of"].startswith("host 0 and each host whose history differs from it")
    small = json.loads(report.to_json(_run(4)))  # a slice of a few hosts: every host in full, as ever
    assert all(len(h["loss_history"]) == STEPS for h in small["hosts"]) and "loss_history_of" not in small


def test_the_reference_holds_one_shard_at_a_time():
    import weakref

    task, alive, most = registry.get("ymxb"), [], [0]

    def shards():
        for i in range(20):
            x, y = task.shard(TrialSpec().of_task, 0, i, 4096)
            alive.append(weakref.ref(x))
            most[0] = max(most[0], sum(r() is not None for r in alive))
            yield x, y

    reference = task.reference(TrialSpec().of_task, shards())
    assert most[0] <= 2  # the one being summed, and the one the loop still names
    x, y = (np.concatenate(part) for part in zip(*(task.shard(TrialSpec().of_task, 0, i, 4096) for i in range(20))))
    np.testing.assert_allclose(reference.params, builtin.normal_equation(x, y), rtol=1e-12)
