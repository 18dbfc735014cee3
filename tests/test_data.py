import numpy as np
import pytest

from ymxb.spec import data
from ymxb.spec.settings import TrialSpec


def test_shards_concatenate_to_the_global_dataset():
    cfg = TrialSpec.resolve(samples_per_host=10)
    x, y = data.global_dataset(cfg, 3)
    assert x.shape == y.shape == (30,)
    for i in range(3):
        sx, sy = data.host_shard(cfg, i)
        np.testing.assert_array_equal(x[10 * i:10 * (i + 1)], sx)
        np.testing.assert_array_equal(y[10 * i:10 * (i + 1)], sy)


def test_a_shard_depends_only_on_the_data_seed_and_host_index():
    a = data.host_shard(TrialSpec.resolve(data_seed=5), 1)
    b = data.host_shard(TrialSpec.resolve(data_seed=5, seed=9, lr=0.5), 1)  # the params' seed: same data
    np.testing.assert_array_equal(a[0], b[0])
    other_host = data.host_shard(TrialSpec.resolve(data_seed=5), 0)
    other_seed = data.host_shard(TrialSpec.resolve(data_seed=6), 1)
    assert not np.array_equal(a[0], other_host[0])
    assert not np.array_equal(a[0], other_seed[0])


def test_points_follow_the_line():
    cfg = TrialSpec.resolve(samples_per_host=4000, true_m=3.0, true_b=0.5, noise=0.0)
    x, y = data.host_shard(cfg, 0)
    assert x.dtype == y.dtype == np.float32
    assert -1 <= x.min() and x.max() <= 1
    np.testing.assert_allclose(y, 3.0 * x + 0.5, atol=1e-6)


def test_split_over_devices_keeps_order_and_rejects_uneven_sizes():
    a = np.arange(6)
    np.testing.assert_array_equal(data.split_over_devices(a, 3), [[0, 1], [2, 3], [4, 5]])
    with pytest.raises(ValueError, match="do not split evenly"):
        data.split_over_devices(a, 4)


def test_a_negative_host_index_is_an_error():
    with pytest.raises(ValueError, match="negative"):
        data.host_shard(TrialSpec(), -1)
