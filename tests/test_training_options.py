"""Optimiser options, schedules and minibatches, in one process (4 CPU devices): each trial of
a program keeps its own options, minibatches are drawn the same in both parallel modes, and the
full batch stays the default."""

import re

import numpy as np
import pytest

from conftest import LOCAL_DEVICES
from ymxb.errors import UsageError
from ymxb.host.train import train_host
from ymxb.spec import builtin, data
from ymxb.spec.settings import Program, SliceSpec, TrialSpec

ONE_HOST = SliceSpec(hosts=1, devices_per_host=LOCAL_DEVICES)
SMALL = dict(samples_per_host=256, steps=100)


def _train(*trials):
    return train_host(Program.of(ONE_HOST, trials))


def _by_entry(result):
    """Each entry's params, once (one-model trials: every device holds a copy)."""
    _, first = np.unique(result.entry, return_index=True)
    return result.params[first]


@pytest.mark.parametrize("parallel", ["pmap", "sharding"])
@pytest.mark.parametrize("optimizer,option,values,ensemble", [
    ("sgd", "momentum", (0.0, 0.5, 0.9), 0), ("adamw", "weight_decay", (0.0, 0.01, 0.3), 3)])
def test_trials_that_differ_in_an_option_share_a_program_and_train_as_alone(parallel, optimizer, option, values,
                                                                             ensemble):
    """The option is batched like lr: one program, each entry with its own value (0 included,
    which must mean none), each trial ending as it ends alone."""
    base = TrialSpec.resolve(optimizer=optimizer, parallel=parallel, ensemble=ensemble, batch_size=64, lr=0.03,
                             **SMALL)
    trials = [base.replace(**{option: v}, seed=i) for i, v in enumerate(values)]
    program = Program.of(ONE_HOST, trials)
    assert program.count == 3 and program.column(option) == values
    together = _by_entry(_train(*trials))
    members = base.members
    for t, trial in enumerate(trials):
        alone = _by_entry(_train(trial))
        np.testing.assert_allclose(together[t * members:(t + 1) * members], alone, rtol=0, atol=2e-6)
    ends = {tuple(np.round(together[t * members], 5)) for t in range(3)}
    assert len(ends) == 3  # the option made a difference


def test_options_at_zero_leave_training_as_it_was():
    """sgd with --momentum 0 is sgd, adamw with --weight-decay 0 is adam: bit for bit."""
    sgd = _train(TrialSpec.resolve(**SMALL))
    np.testing.assert_array_equal(_train(TrialSpec.resolve(momentum=0.0, **SMALL)).params, sgd.params)
    adam = _train(TrialSpec.resolve(optimizer="adam", **SMALL))
    np.testing.assert_array_equal(_train(TrialSpec.resolve(optimizer="adamw", **SMALL)).params, adam.params)


@pytest.mark.parametrize("ensemble", [0, 3])
def test_minibatches_are_drawn_alike_in_both_modes_and_differ_by_seed_and_member(ensemble):
    trial = TrialSpec.resolve(batch_size=32, ensemble=ensemble, **SMALL)
    pmap = _train(trial)
    sharding = _train(trial.replace(parallel="sharding"))
    np.testing.assert_allclose(_by_entry(pmap), _by_entry(sharding), rtol=0, atol=1e-6)
    full = _by_entry(_train(TrialSpec.resolve(ensemble=ensemble, **SMALL)))
    assert not np.allclose(_by_entry(pmap), full, rtol=0, atol=1e-6)  # a minibatch run is another run
    other_seed = _by_entry(_train(trial.replace(seed=1)))
    assert not np.allclose(_by_entry(pmap)[0], other_seed[0], rtol=0, atol=1e-6)
    if ensemble:  # members start apart; their batches differ too (each its own losses)
        losses = pmap.losses[np.argsort(pmap.loss_entry)]
        assert len({tuple(row) for row in losses}) == 3


def test_a_decaying_schedule_brings_a_minibatch_run_closer_to_the_normal_equation():
    """How the check treats a minibatch run: as any run, within --tol of the reference, which
    minibatch noise keeps it from reaching as closely as the full batch does. With a constant
    lr the params hover around the solution; decaying the lr brings them in."""
    trial = TrialSpec.resolve(batch_size=64, schedule="linear", samples_per_host=512, steps=2000, lr=0.2)
    solution = builtin.normal_equation(*data.global_dataset(trial, 1))
    hovering = np.abs(_by_entry(_train(trial.replace(schedule="constant")))[0] - solution).max()
    decayed = np.abs(_by_entry(_train(trial))[0] - solution).max()
    assert decayed < hovering / 2 and decayed < 5e-3


@pytest.mark.parametrize("values, message", [
    (dict(optimizer="adam", momentum=0.9), "--momentum is an option of sgd and rmsprop, not of adam"),
    (dict(optimizer="sgd", weight_decay=0.1), "--weight-decay is an option of adamw, not of sgd"),
    (dict(momentum=1.5), "--momentum must be a number from 0 (none) to 1 (at most 1), got 1.5"),
    (dict(schedule="step"), "--schedule must be one of constant, cosine, linear, warmup_cosine"),
    (dict(batch_size=-1), "--batch-size must be 0 (full batch) or a positive number"),
])
def test_bad_options_are_named(values, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        TrialSpec.resolve(**values)


@pytest.mark.parametrize("values, message", [
    (dict(batch_size=4096, samples_per_host=1024), r"--batch-size \(4096\) is more than the slice's 2048 points"),
    (dict(batch_size=6), r"--batch-size \(6\) must be divisible by the slice's 4 devices"),
])
def test_batch_sizes_a_slice_cannot_draw_are_named(values, message):
    with pytest.raises(UsageError, match=message):
        TrialSpec.resolve(**values).check_fits(SliceSpec(hosts=2, devices_per_host=2))
    TrialSpec.resolve(ensemble=2, batch_size=6).check_fits(SliceSpec(hosts=2, devices_per_host=2))  # members: any size


@pytest.mark.parametrize("parallel", ["pmap", "sharding"])
@pytest.mark.parametrize("ensemble", [0, 3])
def test_survivors_of_early_stopping_draw_their_own_minibatches(parallel, ensemble):
    """Early stopping goes on with some trials on the data the whole program placed (a kept
    Resident): the survivors draw the batches they draw from the same checkpoint alone."""
    from ymxb.driver import checkpoint
    from ymxb.host.train import train_stream
    from ymxb.protocol import CheckpointPiece

    base = TrialSpec.resolve(batch_size=32, parallel=parallel, ensemble=ensemble, samples_per_host=256, steps=100,
                             steps_per_call=50)
    program = Program.of(ONE_HOST, [base.replace(seed=s) for s in range(3)])
    kept = []
    pieces = checkpoint.Assembler(program, hosts=1)
    taken = [pieces.add(0, item) for item in train_stream(program, checkpoint_every=1, until=50, keep=kept.append)
             if isinstance(item, CheckpointPiece)]
    survivors = program.only([2])
    start = checkpoint.of_trials(taken[-1], [2], survivors)
    *_, on_kept = train_stream(survivors, resume=start, resident=kept[0])
    *_, fresh = train_stream(survivors, resume=start)
    np.testing.assert_array_equal(_by_entry(on_kept), _by_entry(fresh))
