import math

import numpy as np

from ymxb.spec import builtin
from ymxb.results import checks as verify
from ymxb.spec.settings import SliceSpec
from ymxb.protocol import HostResult, HostRun, SliceHost


def test_normal_equation_matches_lstsq():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 500).astype(np.float32)
    y = (1.5 * x - 0.25 + 0.3 * rng.standard_normal(500)).astype(np.float32)
    m, b = builtin.normal_equation(x, y)
    ref = np.linalg.lstsq(np.stack([x, np.ones_like(x)], 1).astype(np.float64),
                          y.astype(np.float64), rcond=None)[0]
    np.testing.assert_allclose([m, b], ref, rtol=1e-12)


def test_normal_equation_is_exact_on_noiseless_data():
    x = np.linspace(-1, 1, 11)
    assert np.allclose(builtin.normal_equation(x, 4 * x + 2), (4, 2), atol=1e-12)


SHOW = lambda p: {"m": float(p[0]), "b": float(p[1])}  # as task ymxb shows its params


def _p(label, m, b):
    """A copy of y = m*x + b's params, as the hosts return them: (label, flat params)."""
    return label, np.array([m, b])


def test_solution_check_names_the_worst_param_and_the_tolerance():
    ok, err = verify.check_solution([_p("a", 1.0, 2.0), _p("b", 1.0 + 1e-6, 2.0)], np.array([1.0, 2.0]), 1e-5, SHOW)
    assert ok.ok and math.isclose(err, 1e-6, rel_tol=1e-6)
    bad, err = verify.check_solution([_p("a", 1.0, 2.0), _p("host 3", 1.0, 2.5)], np.array([1.0, 2.0]), 1e-5, SHOW)
    assert not bad.ok and err == 0.5
    assert "host 3" in bad.detail and "tol 1e-05" in bad.detail


def test_nan_never_passes():
    check, err = verify.check_solution([_p("a", float("nan"), 2.0)], np.array([1.0, 2.0]), 1e9, SHOW)
    assert not check.ok and err == float("inf")
    assert not verify.check_finite([("a", None), ("member 3", 40)], 100).ok


def test_replicas_must_be_identical():
    assert verify.check_replicas([_p("a", 1.0, 2.0), _p("b", 1.0, 2.0)], SHOW).ok
    nan = float("nan")
    assert verify.check_replicas([_p("a", nan, 2.0), _p("b", nan, 2.0)], SHOW).ok  # same bits: finite check catches NaN
    check = verify.check_replicas([_p("a", 1.0, 2.0), _p("host 1 device 3", 1.0, 2.0000001)], SHOW)
    assert not check.ok and "host 1 device 3" in check.detail


def _identity(i, local=2, global_=4, collective=4, axes=(1, 4), megascale=None):
    """What host i reported: of its identity and initialize only what participation reads."""
    none = np.zeros(0)
    host = SliceHost(host_index=i, hostname="vm", node_ip="10.0.0.1", pid=100 + i, node_id="n", process_index=i,
                     process_count=2, local_devices=local, global_devices=global_, platform="cpu",
                     device_kind="cpu", megascale=megascale or {}, memory_available=None, device_memory=None,
                     slice=0)
    result = HostResult(none, none, none, none, none, none, collective_axes=tuple(axes),
                        collective_devices=collective, train_s=0.0, first_call_s=0.0)
    return HostRun(host, result)


def test_participation_needs_every_host_and_device():
    one = SliceSpec(hosts=2, devices_per_host=2)
    assert verify.check_participation([_identity(0), _identity(1)], one).ok
    missing = verify.check_participation([_identity(0), _identity(0)], one)
    assert not missing.ok and "expected 0..1" in missing.detail
    short = verify.check_participation([_identity(0), _identity(1, collective=2)], one)
    assert not short.ok and "host 1" in short.detail
    stale = verify.check_participation([_identity(0), _identity(1, megascale={"MEGASCALE_SLICE_ID": "1"})], one)
    assert not stale.ok and "host 1 ran with {'MEGASCALE_SLICE_ID': '1'}, expected none (one slice)" in stale.detail


def test_participation_of_two_slices_needs_each_axis_and_each_hosts_slice():
    two = SliceSpec(slices=2, hosts=1, devices_per_host=2)

    def env(slice_id, slices=2):
        return {"MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.1", "MEGASCALE_PORT": "8081",
                "MEGASCALE_NUM_SLICES": str(slices), "MEGASCALE_SLICE_ID": str(slice_id)}

    good = [_identity(i, axes=(2, 2), megascale=env(i)) for i in range(2)]
    check = verify.check_participation(good, two)
    assert check.ok and "2 slices x 1 hosts, 4 devices; psums over the mesh's axes counted 2 x 2" in check.detail
    one_axis = [_identity(0, axes=(1, 4), megascale=env(0)), good[1]]
    assert "host 0 saw" in verify.check_participation(one_axis, two).detail
    wrong_slice = [good[0], _identity(1, axes=(2, 2), megascale=env(0))]
    check = verify.check_participation(wrong_slice, two)
    assert not check.ok and "host 1 ran with" in check.detail and "'MEGASCALE_SLICE_ID': '1'" in check.detail
    stale_count = [good[0], _identity(1, axes=(2, 2), megascale=env(1, slices=3))]
    assert not verify.check_participation(stale_count, two).ok


def test_members_once_each_and_distinct_at_init():
    assert verify.check_members([2, 0, 1, 3], 4).ok
    bad = verify.check_members([0, 1, 1], 4)
    assert not bad.ok and "missing [2, 3]" in bad.detail and "repeated [1]" in bad.detail
    assert verify.check_distinct_init([_p("m0", 1.0, 2.0), _p("m1", 1.0, 3.0)], SHOW).ok
    same = verify.check_distinct_init([_p("m0", 1.0, 2.0), _p("m1", 1.0, 2.0)], SHOW)
    assert not same.ok and "m1 and m0" in same.detail


def test_a_loss_non_finite_before_any_update_points_at_the_data_not_the_lr():
    at_start = verify.check_finite([("host 0 device 0", 0), ("host 1 device 0", 0)], 100)
    assert not at_start.ok and "at step 0, before any update" in at_start.detail
    assert "--noise" in at_start.detail and "--lr" not in at_start.detail
    later = verify.check_finite([("host 0 device 0", 140)], 100)
    assert "diverged; try a smaller --lr" in later.detail and "call of steps 100-199" in later.detail


def test_a_miss_says_whether_float32_or_training_is_to_blame():
    big = 3e8  # float32 resolves ~36 here: no float32 run can come within 1e-4
    check, _ = verify.check_solution([_p("a", big + 40.0, 1.0)], np.array([big, 1.0]), 1e-4, SHOW)
    assert not check.ok and "float32 resolves only about" in check.detail and "raise --tol" in check.detail
    check, _ = verify.check_solution([_p("a", 2.01, 1.0)], np.array([2.0, 1.0]), 1e-4, SHOW)
    assert not check.ok and "not converged yet: more --steps" in check.detail
