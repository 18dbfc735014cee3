"""The training step in one process (4 CPU devices): models, parallel modes, ensembles."""

import jax
import numpy as np
import pytest

from conftest import LOCAL_DEVICES
from ymxb import data, models, verify
from ymxb.config import Config
from ymxb.train import train_host

ONE_HOST = dict(hosts=1, devices_per_host=LOCAL_DEVICES, samples_per_host=256, steps=300)


def _mb(cfg, piece):
    return tuple(float(v) for v in models.to_mb(cfg.model, piece["params"]))


def test_haiku_params_map_to_m_and_b():
    model = models.build("haiku")
    params = model.init(jax.random.key(0))
    assert jax.tree.map(np.shape, params) == {"linear": {"w": (1, 1), "b": (1,)}}
    x = np.array([-1.0, 0.0, 2.0], np.float32)
    m, b = models.to_mb("haiku", jax.device_get(params))
    np.testing.assert_allclose(model.apply(params, x), m * x + b, rtol=1e-6)
    # With a leading member axis, one (m, b) per member.
    stacked = jax.tree.map(lambda a: np.stack([a, 2 * a]), jax.device_get(params))
    ms, bs = models.to_mb("haiku", stacked)
    np.testing.assert_allclose(ms, [m, 2 * m])
    np.testing.assert_allclose(bs, [b, 2 * b])


@pytest.mark.parametrize("model", ["pure", "haiku"])
def test_pmap_and_sharding_agree_on_the_same_data(model):
    got = {}
    for parallel in ("pmap", "sharding"):
        cfg = Config(model=model, parallel=parallel, **ONE_HOST)
        result = train_host(cfg)
        assert result["collective_devices"] == LOCAL_DEVICES
        got[parallel] = {_mb(cfg, p) for p in result["pieces"]}
        assert len(got[parallel]) == 1  # replicas identical
    (pm, pb), (sm, sb) = got["pmap"].pop(), got["sharding"].pop()
    np.testing.assert_allclose([pm, pb], [sm, sb], rtol=0, atol=1e-6)  # float32 round-off
    solution = verify.normal_equation(*data.global_dataset(cfg))
    np.testing.assert_allclose([pm, pb], solution, atol=1e-4)


@pytest.mark.parametrize("parallel", ["pmap", "sharding"])
def test_ensemble_members_are_distinct_at_init_and_all_converge(parallel):
    cfg = Config(model="haiku", optimizer="adam", ensemble=8, parallel=parallel, **{**ONE_HOST, "steps": 600})
    pieces = train_host(cfg)["pieces"]
    assert sorted(p["index"] for p in pieces) == list(range(8))
    inits = {tuple(float(v) for v in models.to_mb("haiku", p["init_params"])) for p in pieces}
    assert len(inits) == 8
    solution = verify.normal_equation(*data.global_dataset(cfg))
    for p in pieces:
        np.testing.assert_allclose(_mb(cfg, p), solution, atol=1e-4)


def test_member_j_is_the_same_member_in_both_modes():
    inits = {}
    for parallel in ("pmap", "sharding"):
        cfg = Config(ensemble=8, parallel=parallel, **{**ONE_HOST, "steps": 1})
        pieces = sorted(train_host(cfg)["pieces"], key=lambda p: p["index"])
        inits[parallel] = np.array([models.to_mb("pure", p["init_params"]) for p in pieces])
    assert inits["pmap"].shape == (8, 2)
    np.testing.assert_array_equal(inits["pmap"], inits["sharding"])


def test_wrong_local_device_count_is_an_error():
    with pytest.raises(ValueError, match="has 4 local devices, but --devices-per-host is 2"):
        train_host(Config(hosts=1, devices_per_host=2))
