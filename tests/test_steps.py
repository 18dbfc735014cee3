"""The training step in one process (4 CPU devices): models, parallel modes, ensembles, and
programs of several trials."""

import re

import jax
import numpy as np
import optax
import pytest

from conftest import LOCAL_DEVICES
from ymxb.spec import builtin, data
from ymxb.spec.settings import Program, SliceSpec, TrialSpec
from ymxb.host.steps import TRAINERS, make_optimizer
from ymxb.host.train import train_host

ONE_HOST = SliceSpec(hosts=1, devices_per_host=LOCAL_DEVICES)
SMALL = dict(samples_per_host=256, steps=300)


def _train(*trials, spec=ONE_HOST):
    return train_host(Program.of(spec, trials))


def _params(result, entry=0):
    """The distinct (m, b) held for one entry of the program's axis (one per replica)."""
    mine = result.entry == entry
    return set(zip(result.params[mine, 0].tolist(), result.params[mine, 1].tolist()))


def test_haiku_params_map_to_m_and_b():
    model = builtin.line("haiku")
    params = model.init(jax.random.key(0))
    assert jax.tree.map(np.shape, params) == {"linear": {"w": (), "b": ()}}
    x = np.array([-1.0, 0.0, 2.0], np.float32)
    m, b = builtin.line_mb(jax.device_get(params))
    np.testing.assert_allclose(model.apply(params, x), m * x + b, rtol=1e-6)
    # With a leading member axis, one (m, b) per member.
    stacked = jax.tree.map(lambda a: np.stack([a, 2 * a]), jax.device_get(params))
    ms, bs = builtin.line_mb(stacked)
    np.testing.assert_allclose(ms, [m, 2 * m])
    np.testing.assert_allclose(bs, [b, 2 * b])


def _hk_linear() -> builtin.Model:
    """The haiku model as it was: hk.Linear(1) on x[:, None]."""
    import haiku as hk

    forward = lambda x: hk.Linear(1, b_init=hk.initializers.RandomNormal())(x[:, None])[:, 0]
    net = hk.without_apply_rng(hk.transform(forward))
    return builtin.Model(lambda key: net.init(key, np.zeros(1, np.float32)), net.apply)


def test_haiku_starts_where_hk_linear_did():
    new, old = builtin.line("haiku"), _hk_linear()
    for seed in (0, 1, 2**32 - 1):
        m, b = builtin.line_mb(jax.device_get(new.init(jax.random.key(seed))))
        was = jax.device_get(old.init(jax.random.key(seed)))["linear"]
        assert (m, b) == (was["w"][0, 0], was["b"][0])


def _ensemble_step_hlo(model: builtin.Model) -> str:
    """The compiled text of one fused step of an 8-member ensemble, as the trainer runs it."""
    trial = TrialSpec.resolve(model="haiku", ensemble=8, parallel="sharding", samples_per_host=256)
    trainer = TRAINERS["sharding"](model, Program.of(ONE_HOST, [trial]))
    state, batch = trainer.init(), trainer.put_data(*data.host_shard(trial, 0))
    return trainer.wrapped(1).lower(state, *batch).compile().as_text()


def test_haiku_ensemble_step_is_elementwise():
    """vmap over members of hk.Linear(1) is a batched (n, 1) x (1, 1) dot (slow on a GPU); the
    haiku model's step compiles to elementwise work and reductions, no dot."""
    assert re.search(r"\bdot\(", _ensemble_step_hlo(_hk_linear()))  # the check can fail
    assert not re.search(r"\bdot\(", _ensemble_step_hlo(builtin.line("haiku")))


@pytest.mark.parametrize("parallel", ["pmap", "sharding"])
@pytest.mark.parametrize("batch_size", [0, 16])
def test_a_call_compiled_ahead_is_not_compiled_again(parallel, batch_size):
    """Compiling ahead (a piece of progress of its own for the driver) costs no second compile:
    the call finds JAX's cached executable."""
    trial = TrialSpec.resolve(parallel=parallel, samples_per_host=64, batch_size=batch_size, steps=7)
    trainer = TRAINERS[parallel](builtin.line("pure"), Program.of(ONE_HOST, [trial]))
    state, batch = trainer.init(), trainer.put_data(*data.host_shard(trial, 0))
    compiles = []
    compiling = "/jax/core/compile/backend_compile_duration"
    count = lambda name, secs, **kw: compiles.append(name) if name == compiling else None
    jax.monitoring.register_event_duration_secs_listener(count)
    try:
        trainer.compile(state, batch, 7)
        ahead = len(compiles)  # the steps (and the minibatch rows the first time: _who)
        assert ahead >= 1  # the check can fail: it counts compiles
        state, _ = trainer.run(state, batch, 7)
        trainer.run(state, batch, 7)
        assert len(compiles) == ahead
    finally:
        jax.monitoring.unregister_event_duration_listener(count)


@pytest.mark.parametrize("model", ["pure", "haiku"])
def test_pmap_and_sharding_agree_on_the_same_data(model):
    got = {}
    for parallel in ("pmap", "sharding"):
        trial = TrialSpec.resolve(model=model, parallel=parallel, **SMALL)
        result = _train(trial)
        assert result.collective_devices == LOCAL_DEVICES
        got[parallel] = _params(result)
        assert len(got[parallel]) == 1 and len(result.params) == LOCAL_DEVICES  # replicas identical
    (pm, pb), (sm, sb) = got["pmap"].pop(), got["sharding"].pop()
    np.testing.assert_allclose([pm, pb], [sm, sb], rtol=0, atol=1e-6)  # float32 round-off
    solution = builtin.normal_equation(*data.global_dataset(trial, 1))
    np.testing.assert_allclose([pm, pb], solution, atol=1e-4)


@pytest.mark.parametrize("parallel", ["pmap", "sharding"])
def test_ensemble_members_are_distinct_at_init_and_all_converge(parallel):
    trial = TrialSpec.resolve(model="haiku", optimizer="adam", ensemble=8, parallel=parallel, **{**SMALL, "steps": 600})
    result = _train(trial)
    assert sorted(result.entry.tolist()) == list(range(8))
    assert len({tuple(p) for p in result.init.tolist()}) == 8
    solution = builtin.normal_equation(*data.global_dataset(trial, 1))
    np.testing.assert_allclose(result.params[:, 0], solution[0], atol=1e-4)
    np.testing.assert_allclose(result.params[:, 1], solution[1], atol=1e-4)


def test_member_j_is_the_same_member_in_both_modes():
    inits = {}
    for parallel in ("pmap", "sharding"):
        result = _train(TrialSpec.resolve(ensemble=8, parallel=parallel, **{**SMALL, "steps": 1}))
        order = np.argsort(result.entry)
        inits[parallel] = result.init[order]
    assert inits["pmap"].shape == (8, 2)
    np.testing.assert_array_equal(inits["pmap"], inits["sharding"])


@pytest.mark.parametrize("parallel", ["pmap", "sharding"])
@pytest.mark.parametrize("ensemble", [0, 3])
def test_a_trial_trains_the_same_in_a_program_of_many_as_alone(parallel, ensemble):
    """The sweep invariant, in one process: lr and seed batched on the model axis (members
    padded: 3 trials x 3 members on 4 devices) change nothing but float32 round-off."""
    base = TrialSpec.resolve(optimizer="adam", parallel=parallel, ensemble=ensemble, **{**SMALL, "steps": 100})
    trials = [base.replace(lr=lr, seed=seed) for lr, seed in ((0.03, 0), (0.1, 7), (0.3, 2**32 - 1))]
    together = _train(*trials)
    members = base.members
    assert sorted(set(together.entry.tolist())) == list(range(3 * members))  # padding dropped
    for t, trial in enumerate(trials):
        alone = _train(trial)
        for j in range(members):
            a, b = _params(together, t * members + j), _params(alone, j)
            assert len(a) == len(b) == 1
            np.testing.assert_allclose(list(a.pop()), list(b.pop()), rtol=0, atol=1e-6)
        np.testing.assert_allclose(together.losses[together.loss_entry // members == t],
                                   alone.losses, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name, options", [("sgd", {}), ("adam", {}), ("adagrad", {}), ("rmsprop", {}),
                                           ("sgd", {"momentum": 0.9}), ("rmsprop", {"momentum": 0.5}),
                                           ("adamw", {}), ("adamw", {"weight_decay": 0.01})])
def test_the_injected_optimizer_is_the_plain_one(name, options):
    """The learning rate and the options trials set live in the state (one per model); every
    other setting stays static (adamw's decay at 0 where no trial sets one), so the updates
    equal plain optax's bit for bit."""
    f32 = lambda v: np.asarray(v, np.float32)
    params = {"m": f32(0.3), "b": f32(-0.2)}
    program = Program.of(ONE_HOST, [TrialSpec.resolve(optimizer=name, **options)])
    off = {"weight_decay": 0.0} if name == "adamw" else {}
    plain = getattr(optax, name)(learning_rate=0.05, **{**off, **options})
    injected = make_optimizer(program)(learning_rate=0.05, **options)
    states = [plain.init(params), injected.init(params)]
    for step in range(5):
        grads = {"m": f32(0.1 * step - 0.3), "b": f32(0.7 / (step + 1))}
        (u1, states[0]), (u2, states[1]) = (opt.update(grads, s, params)
                                            for opt, s in zip((plain, injected), states))
        jax.tree.map(np.testing.assert_array_equal, u1, u2)


def test_wrong_local_device_count_is_an_error():
    with pytest.raises(ValueError, match="has 4 local devices, but --devices-per-host is 2"):
        _train(TrialSpec(), spec=SliceSpec(hosts=1, devices_per_host=2))
