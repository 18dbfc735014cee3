"""User tasks broken in the ways users break them (tests/test_tasks.py): each must be refused
in one line, before any host starts where the driver can see it, else named with its host."""

import numpy as np

from ymxb import Metric, Model, Task


class Line(Task):
    """A working task, for the broken ones to change one thing of."""

    name = "line"

    def shard(self, s, data_seed, host_index, samples):
        rng = np.random.default_rng([data_seed, host_index])
        x = rng.uniform(-1, 1, samples)
        return x.astype(np.float32), (3 * x).astype(np.float32)

    def model(self, s, name):
        import jax.numpy as jnp

        return Model(lambda key: {"w": jnp.zeros(())}, lambda params, x: params["w"] * x)


class Column(Line):
    def model(self, s, name):
        line = super().model(s, name)
        return Model(line.init, lambda params, x: line.apply(params, x)[:, None])  # (n, 1), not (n,)


class Short(Line):
    def shard(self, s, data_seed, host_index, samples):
        x, y = super().shard(s, data_seed, host_index, samples)
        return x[:-1], y[:-1]


class Raising(Line):
    def model(self, s, name):
        line = super().model(s, name)

        def apply(params, x):
            raise ValueError("the apply of this task is not written yet")

        return Model(line.init, apply)


class NoHost1(Line):
    def shard(self, s, data_seed, host_index, samples):
        if host_index == 1:
            raise ValueError(f"no data for host {host_index}")
        return super().shard(s, data_seed, host_index, samples)


class Host1OnlyThere(Line):
    """Fails on host 1 only where it runs as one of many JAX processes: what only a host can show."""

    def shard(self, s, data_seed, host_index, samples):
        import jax

        if host_index == 1 and jax.process_count() > 1:
            raise ValueError(f"no data for host {host_index} there")
        return super().shard(s, data_seed, host_index, samples)


class Host1Ints(Line):
    def shard(self, s, data_seed, host_index, samples):
        x, y = super().shard(s, data_seed, host_index, samples)
        return x, (y.astype(np.int64) if host_index == 1 else y)


class BadReference(Line):
    def reference(self, s, shards):
        x, y = zip(*shards)
        return np.linalg.solve(np.zeros((2, 2)), np.zeros(2))  # singular


class VectorPenalty(Line):
    def penalty(self, s, params):
        return params["w"] * np.ones(2)


class MeanMetric(Line):
    # One number, not one per point.
    metrics = {"close": Metric(lambda predictions, y: (abs(predictions - y) < 0.1).mean())}


class SpacedMetric(Line):
    metrics = {"eval close": Metric(lambda predictions, y: abs(predictions - y) < 0.1)}


class BareMetric(Line):
    metrics = {"close": lambda predictions, y: abs(predictions - y) < 0.1}


class HeldOutShortOnHost1(Line):
    def held_out(self, s, data_seed, host_index, samples):
        x, y = super().shard(s, data_seed + 1, host_index, 8)
        return (x[:7], y[:7]) if host_index == 1 else (x, y)


class HeldOutRaising(Line):
    def held_out(self, s, data_seed, host_index, samples):
        raise ValueError("no held-out data yet")


class DatasetRaising(Line):
    def dataset(self, s, data_seed):
        raise FileNotFoundError("digits.npz is not there")


class NoModel(Task):
    name = "no-model"

    def shard(self, s, data_seed, host_index, samples):
        return np.zeros(samples, np.float32), np.zeros(samples, np.float32)


NOT_A_TASK = object()
LINE, COLUMN, SHORT, RAISING, NO_HOST_1, NO_MODEL = Line(), Column(), Short(), Raising(), NoHost1(), NoModel()
HOST_1_ONLY_THERE, HOST_1_INTS, BAD_REFERENCE = Host1OnlyThere(), Host1Ints(), BadReference()
VECTOR_PENALTY = VectorPenalty()
MEAN_METRIC, SPACED_METRIC, BARE_METRIC = MeanMetric(), SpacedMetric(), BareMetric()
HELD_OUT_SHORT_ON_HOST_1, HELD_OUT_RAISING, DATASET_RAISING = HeldOutShortOnHost1(), HeldOutRaising(), DatasetRaising()
