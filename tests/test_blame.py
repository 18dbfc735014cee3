"""Who is to blame, decided from what the driver observed (protocol.blame, blame_stall): each
case the end-to-end fault tests reach through real processes, here in milliseconds."""

import pytest

from ymxb.errors import Cause
from ymxb.protocol import CallEnd, Failed, Stall, blame, blame_stall, settled_by

NAME = lambda i: f"host {i} (10.0.0.{i} pid 10{i})"
DIED = "its process exited unexpectedly (crashed, killed, or aborted by JAX)"
RESET = "raised JaxRuntimeError: Gloo all-reduce failed: Connection reset by peer"
GAVE_UP = "raised JaxRuntimeError: DEADLINE_EXCEEDED: Barrier timed out"


def _said(failure):
    return str(failure), failure.host, failure.cause, failure.phase


def test_the_first_host_to_die_is_named_and_the_rest_are_symptoms():
    end = CallEnd("training", 8, failures=(Failed(1, DIED, Cause.DIED), Failed(2, RESET, Cause.CRASHED)),
                  stuck=(0,), first_s=3.0)
    assert _said(blame(end, NAME)) == (
        f"training failed: host 1 (10.0.0.1 pid 101) failed first: {DIED}; then host 2 (10.0.0.2 pid 102); "
        f"host 0 (10.0.0.0 pid 100) left waiting", 1, Cause.DIED, "training")
    assert settled_by(end.failures[0], end.first_s, end.peers_give_up_s)  # no need to hear the rest
    assert not end.asks_silence


def test_a_death_reported_after_a_crash_is_still_the_cause():
    # The peer's reset came first, the death a moment later: the death is named.
    end = CallEnd("training", 8, failures=(Failed(2, RESET, Cause.CRASHED), Failed(1, DIED, Cause.DIED)))
    failure = blame(end, NAME)
    assert failure.host == 1 and failure.cause is Cause.DIED
    assert str(failure).startswith(f"training failed: host 1 (10.0.0.1 pid 101) failed first: {DIED}; then host 2")


def test_after_the_peers_give_up_time_the_host_that_never_arrived_is_the_culprit():
    # hang:2:initialize: hosts 0 and 1 abort when JAX's initialize times out; even a death
    # then is a symptom, not the cause.
    end = CallEnd("jax.distributed.initialize", 18, failures=(Failed(0, GAVE_UP, Cause.CRASHED),
                                                               Failed(1, DIED, Cause.DIED)),
                  stuck=(2,), first_s=8.5, peers_give_up_s=8.0)
    assert not settled_by(end.failures[1], end.first_s, end.peers_give_up_s)
    assert _said(blame(end, NAME)) == (
        f"jax.distributed.initialize failed: host 2 (10.0.0.2 pid 102) never finished (the likely culprit); "
        f"host 1 (10.0.0.1 pid 101), host 0 (10.0.0.0 pid 100) gave up waiting: {DIED}", 2, Cause.HUNG,
        "jax.distributed.initialize")
    assert not end.asks_silence


def test_crashes_with_a_host_stuck_ask_who_answers_and_blame_the_silent_one():
    end = CallEnd("training", 8, failures=(Failed(0, RESET, Cause.CRASHED),), stuck=(1, 2))
    assert end.asks_silence
    silent = CallEnd(**{**end.__dict__, "silent": (2,)})
    assert _said(blame(silent, NAME)) == (
        f"training failed: host 2 (10.0.0.2 pid 102) stopped answering (its process or its node is gone: "
        f"the likely culprit); host 0 (10.0.0.0 pid 100) then failed: {RESET}", 2, Cause.HUNG, "training")
    # All answering: the crash is what there is to say.
    assert blame(end, NAME).host == 0 and blame(end, NAME).cause is Cause.CRASHED


def test_a_host_on_a_lost_node_is_preempted_first_whatever_it_said():
    end = CallEnd("training", 8, failures=(Failed(0, RESET, Cause.CRASHED), Failed(1, DIED, Cause.DIED)),
                  lost=frozenset({1}))
    assert _said(blame(end, NAME)) == (
        "training failed: host 1 (10.0.0.1 pid 101) failed first: its node is gone (its raylet does not "
        "answer); then host 0 (10.0.0.0 pid 100)", 1, Cause.PREEMPTED, "training")
    assert not end.asks_silence
    # A silent host whose node is gone: preempted, not hung.
    stuck = CallEnd("training", 8, failures=(Failed(0, RESET, Cause.CRASHED),), stuck=(1,),
                    lost=frozenset({1}), silent=(1,))
    assert blame(stuck, NAME).cause is Cause.PREEMPTED


def test_a_call_that_runs_out_of_time_names_the_hosts_still_at_it():
    end = CallEnd("start", 60, stuck=(2, 3))
    assert _said(blame(end, NAME)) == (
        "start did not finish within 60 s on host 2 (10.0.0.2 pid 102), host 3 (10.0.0.3 pid 103)",
        2, Cause.HUNG, "start")


def test_our_own_error_on_a_host_restarts_nothing():
    end = CallEnd("training", 8, failures=(Failed(1, "raised ValueError: host 1 has 2 local devices, but "
                                                     "--devices-per-host is 4", Cause.FINAL),))
    assert blame(end, NAME).cause is Cause.FINAL and not Cause.FINAL.restarts


STEPS = dict(timeout=30, steps_per_call=100)


@pytest.mark.parametrize("stall,said,host,cause", [
    (Stall({0: 300, 1: 300, 2: 300}, {0: 31, 1: 31, 2: 31}, silent=(1,), **STEPS),
     "training stalled: host 1 (10.0.0.1 pid 101) stopped answering: no compiled call completed in 30 s and "
     "no reply to a progress query in 5 s (the process is stopped, or stuck outside Python); the other hosts "
     "wait for it", 1, Cause.HUNG),
    (Stall({0: None, 1: 300, 2: 300}, {0: 31, 1: 31, 2: 31}, silent=(), **STEPS),
     "training stalled: host 0 (10.0.0.0 pid 100) fell behind (before its first step, others at step 300) and "
     "completed no compiled call in 30 s (the likely culprit)", 0, Cause.HUNG),
    (Stall({0: 0, 1: 0}, {0: 31, 1: 31}, silent=(), **STEPS),
     "training stalled: no host completed a compiled call in 30 s (all at step 0, all answering): the run is "
     "slow, not hung; raise --timeout or lower --steps-per-call (now 100)", None, Cause.FINAL),
], ids=["silent", "behind", "slow"])
def test_a_stall_names_the_silent_host_else_the_one_behind_else_says_the_run_is_slow(stall, said, host, cause):
    assert stall.stalled
    assert _said(blame_stall(stall, NAME)) == (said, host, cause, "training")


def test_hosts_that_progressed_within_the_timeout_have_not_stalled():
    assert not Stall({0: 100, 1: 200}, {0: 29.9, 1: 1.0}, silent=(), **STEPS).stalled


def test_a_message_names_a_few_hosts_of_a_big_slice_and_counts_the_rest():
    # 1,500 hosts: one died, the others waited; the line stays a line.
    end = CallEnd("training", 8, failures=(Failed(7, DIED, Cause.DIED),), stuck=tuple(i for i in range(1500) if i != 7))
    said = str(blame(end, NAME))
    assert said.endswith("host 6 (10.0.0.6 pid 106), host 8 (10.0.0.8 pid 108) and 1,491 more left waiting")
    assert len(said) < 400
