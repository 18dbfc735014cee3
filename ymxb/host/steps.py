"""The training step and its two parallel wrappings: `jax.pmap` and `jax.jit` over a global Mesh.

Everything but the wrapping is shared: one step of gradient descent on the mean of the task's
loss (squared error unless the task says otherwise) plus its penalty, on any params pytree,
`vmap`ped over the program's leading model axis (one entry per trial, or per trial and
ensemble member; each entry has its own learning rate and optimiser options in its optimiser
state), and `lax.scan`ned so that many steps run in one compiled call (one dispatch, not one
per step). A step sees the whole batch, or (`--batch-size`) a minibatch drawn inside the
compiled program from the entry's seed and member, the step and the device (`draw_key`).

The devices form a grid of two axes, (slices, devices of a slice) (config.SliceSpec.mesh_shape;
one slice: (1, D)), in process order. pmap keeps the tutorial's one axis over all D devices,
slice by slice; the sharding mode's Mesh has both axes, and splits over both at once.

Layouts, with D global devices and a program of T trials (config.Program):
- one-model trials (ensemble 0): the data is split over all D devices, the T trials' params
  are replicated on every device, and each trial's gradient is averaged over every device of
  every host of every slice (the tutorial's data-parallel step, with a trial axis vmapped inside);
- ensembles of E members: the T x E models are split over all D devices (padded to a multiple
  of D), every device sees the whole global batch (gathered once), and no collective runs
  inside the step.
A single run is a program of one trial.

Minibatches are drawn with replacement: one-model trials draw batch_size / D points on each
device from the points it holds (its host's shard's part), so the step's mean over devices is
the mean over the whole batch; an ensemble's member draws batch_size points from the global
batch every device holds.
"""

import abc
import functools
import inspect
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ymxb.spec.settings import OPTIONS, Program
from ymxb.spec.tasks import Model

# pmap's one axis: it spans every device of every host of every slice.
AXIS = "devices"
# The sharding mode's Mesh: slices (GPU: nodes), then the devices of each.
MESH_AXES = ("slices", "devices")


class TrainState(NamedTuple):
    params: Any
    opt_state: Any


# What each optimiser option is when no trial of the program sets it (optax's meaning of off:
# sgd without momentum has no trace in its state at all; adamw's default decay is not 0).
_OFF = {"momentum": None, "weight_decay": 0.0}
# A key stream of its own for minibatches, apart from the init's keys of the same seed.
BATCH_STREAM = 0x6D62


@functools.lru_cache(maxsize=None)
def _injected(name: str, options: Tuple[str, ...]) -> Callable[..., optax.GradientTransformation]:
    """optax.<name> with learning_rate and `options` injected (inputs, one per model on the
    axis), every other argument static as in the plain optimiser: injected (as float32 arrays)
    adam's b1, b2 and eps would drift from plain adam's."""
    factory = getattr(optax, name)
    static = tuple(arg for arg in inspect.signature(factory).parameters
                   if arg not in ("learning_rate", *options))
    return optax.inject_hyperparams(factory, static_args=static)


def injected_options(program: Program) -> Tuple[str, ...]:
    """The optimiser options some trial of `program` sets: inputs of its compiled program."""
    return tuple(o for o, takers in OPTIONS.items() if program.trial.optimizer in takers and program.uses(o))


def make_optimizer(program: Program) -> Callable[..., optax.GradientTransformation]:
    """(learning_rate, **injected options) -> the program's optimiser: optax.<name> with each
    option it takes but no trial sets at its off value, then the schedule's factor."""
    name, options = program.trial.optimizer, injected_options(program)
    off = {o: v for o, v in _OFF.items() if name in OPTIONS[o] and o not in options and v is not None}
    inner = _injected(name, options)
    factor = _schedule(program.trial.schedule, program.trial.steps)
    if factor is None:
        return lambda **hyper: inner(**hyper, **off)
    return lambda **hyper: optax.chain(inner(**hyper, **off), optax.scale_by_schedule(factor))


def _schedule(name: str, steps: int) -> Optional[Callable]:
    """The learning rate's factor at each step, from 1 (None: constant)."""
    if name == "cosine":
        return optax.cosine_decay_schedule(1.0, decay_steps=steps)
    if name == "linear":
        return optax.linear_schedule(1.0, 0.0, transition_steps=steps)
    if name == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=max(1, steps // 20),
                                                  decay_steps=steps, end_value=0.0)
    return None


def steps_taken(opt_state) -> jax.Array:
    """The optimiser's count of updates: the step a model is at (checkpoints keep it)."""
    return (opt_state[0] if type(opt_state) is tuple else opt_state).count  # a chain: the schedule's after it


def draw_key(who: jax.Array, step: jax.Array) -> jax.Array:
    """The key of one entry's minibatch at `step`: from its trial's seed and its member (`who`)."""
    key = jax.random.fold_in(jax.random.key(who[0]), BATCH_STREAM)
    return jax.random.fold_in(jax.random.fold_in(key, who[1]), step)


def _drawn(key, n: int, size: int, *arrays):
    """`size` points of each of `arrays` (a leading axis of `n`), drawn with replacement."""
    picked = jax.random.randint(key, (size,), 0, n)
    return tuple(a[picked] for a in arrays)


def make_step(model: Model, opt: optax.GradientTransformation, reduce: Callable = lambda tree: tree,
              loss: Optional[Callable] = None, penalty: Optional[Callable] = None,
              draw: Optional[Callable] = None) -> Callable:
    """(state, x, y[, who]) -> (state, loss): one step of one model on the mean of `loss`
    (predictions, y -> per-point loss; None: squared error) plus `penalty` (params -> a number,
    or None for none); `reduce` combines the devices' (loss, grads) where the batch is split
    over devices. `draw` (key, x, y) -> (x, y): the step's minibatch, keyed by `who` (the
    entry's seed and member) and the step; None: the whole batch."""
    if loss is None:  # the squared error, halved: the mean's 2/n is applied once, below
        objective, scale = lambda params, x, y: 0.5 * jnp.sum((model.apply(params, x) - y) ** 2), 2.0
    else:
        objective, scale = lambda params, x, y: jnp.sum(loss(model.apply(params, x), y)), 1.0

    def step(state, x, y, who=None):
        if draw is not None:
            x, y = draw(draw_key(who, steps_taken(state.opt_state)), x, y)
        # The mean's 1/n is applied once to the sums, not inside every point's product: there
        # it is a broadcast in each of XLA:CPU's reductions, which slows the step (docs/
        # benchmarks.md). Same math, float32 round-off apart.
        total, grads = jax.value_and_grad(objective)(state.params, x, y)
        factor = scale / x.shape[0]
        mean, grads = reduce((total * factor, jax.tree.map(lambda g: g * factor, grads)))
        if penalty is not None and penalty(state.params) is not None:  # decided once, as the step is traced
            # On the params alone, which every device holds whole: added after the devices' mean.
            extra, extra_grads = jax.value_and_grad(penalty)(state.params)
            mean, grads = mean + extra, jax.tree.map(jnp.add, grads, extra_grads)
        updates, opt_state = opt.update(grads, state.opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), opt_state), mean

    return step


def make_measure(model: Model, loss: Optional[Callable], metrics: Sequence[Callable],
                 reduce: Callable = lambda means: means) -> Callable:
    """(params, x, y) -> (1 + len(metrics),): one model's loss (as `make_step` minimises it,
    without the penalty) and each of `metrics` ((predictions, y) -> a number per point), each
    a mean over the points; `reduce` combines the devices' means where the points are split
    over devices (in equal shares)."""
    squared = lambda predictions, y: (predictions - y) ** 2
    fns = (loss or squared, *metrics)

    def per_point(v, n):  # a number per point, or per element of each point's prediction: summed
        return jnp.sum(jnp.reshape(v, (n, -1)).astype(jnp.float32), axis=1)

    def measure(params, x, y):
        predictions = model.apply(params, x)
        return reduce(jnp.stack([jnp.mean(per_point(fn(predictions, y), x.shape[0])) for fn in fns]))

    return measure


def fuse(step: Callable, n_steps: int) -> Callable:
    """(state, x, y[, who]) -> (state, losses): `n_steps` steps of every model on the leading
    axis in one call (`who`: a row per model, as the state). Losses have shape (models, n_steps)."""
    def steps_of(one_step, state, x, y, *who):
        return lax.scan(lambda s, _: one_step(s, x, y, *who), state, length=n_steps)

    def run(state, x, y, *who):
        if jax.tree.leaves(state)[0].shape[0] > 1:
            batched = jax.vmap(step, in_axes=(0, None, None) + (0,) * len(who))  # models share the batch
            state, losses = steps_of(batched, state, x, y, *who)
            return state, losses.T
        # One model: the axis of 1 dropped around the whole loop. vmap over it leaves (1, n)
        # arrays, whose reductions XLA:CPU runs many times slower than those of (n,) arrays
        # (docs/benchmarks.md); and a loop carrying (1,) params copied them each step.
        first = lambda a: a[0]
        state, losses = steps_of(step, jax.tree.map(first, state), x, y, *map(first, who))
        return jax.tree.map(lambda a: a[None], state), losses[None]

    return run


def _trial_and_member(program: Program, entries: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """Which trial and which of its members each entry of the axis is (padding: the last entry's)."""
    members = program.trial.members
    entries = jnp.minimum(entries, program.entries - 1)
    return entries // members, entries % members


def init_state(model: Model, program: Program, entries: jax.Array) -> TrainState:
    """Initial params and optimiser state of the given entries of the program's axis. A trial's
    one model starts from key(seed); member j of an ensemble from the j-th of E keys split from
    it, whichever device holds it: exactly as the trial would start alone."""
    members = program.trial.members
    trial, member = _trial_and_member(program, entries)
    seeds = jnp.asarray(program.seeds, jnp.uint32)[trial]
    names = ("learning_rate", *injected_options(program))
    hyper = [jnp.asarray(program.column("lr" if n == "learning_rate" else n), jnp.float32)[trial] for n in names]
    optimizer = make_optimizer(program)

    def one(seed, member, *values):
        key = jax.random.key(seed)
        if program.trial.ensemble:
            key = jax.random.split(key, members)[member]
        params = model.init(key)
        return TrainState(params, optimizer(**dict(zip(names, values))).init(params))

    return jax.vmap(one)(seeds, member, *hyper)


def who_of(program: Program, entries: jax.Array) -> jax.Array:
    """(entries, 2) uint32: each entry's trial's seed and its member, what its minibatches are
    drawn from."""
    trial, member = _trial_and_member(program, entries)
    return jnp.stack([jnp.asarray(program.seeds, jnp.uint32)[trial], member.astype(jnp.uint32)], axis=1)


class Trainer(abc.ABC):
    """What a parallel mode provides to the training loop (train.py)."""

    def __init__(self, model: Model, program: Program):
        self.program, self.model = program, model
        self._measured = None  # the wrapped `measure`, made at its first call
        # The values given here are never used: each model's own are in its optimiser state.
        self.opt = make_optimizer(program)(learning_rate=0.0, **{o: 0.0 for o in injected_options(program)})
        self.batch_size = program.trial.batch_size
        self._drawn_by = None  # _who(), made at the first minibatch call
        self.ensemble = bool(program.trial.ensemble)
        self._compiled = {}

    @abc.abstractmethod
    def init(self) -> TrainState:
        """The initial state, on this host's devices."""

    @abc.abstractmethod
    def put_data(self, x: np.ndarray, y: np.ndarray) -> Tuple:
        """This host's shard, placed on its devices as `run` wants it."""

    @abc.abstractmethod
    def _wrap(self, n_steps: int) -> Callable:
        """`n_steps` fused steps, wrapped (pmap or jit) for this mode."""

    @abc.abstractmethod
    def local(self, tree) -> List[Tuple[int, np.ndarray, Any]]:
        """(global device index, entry indices, NumPy tree with a leading entry axis) for each
        of this host's devices: every trial on every device for one-model trials, the device's
        share of the entries for ensembles (padding included)."""

    @abc.abstractmethod
    def collective_counts(self) -> Tuple[int, int, int]:
        """What sums of ones over the devices count: over the slices axis, over the devices
        axis (within a slice), and over both. Proves every slice, host and device takes part."""

    def wrapped(self, n_steps: int) -> Callable:
        """The wrapped function running `n_steps` fused steps; made once per n."""
        if n_steps not in self._compiled:
            self._compiled[n_steps] = self._wrap(n_steps)
        return self._compiled[n_steps]

    def compile(self, state: TrainState, data: Tuple, n_steps: int) -> None:
        """Compile the call of `n_steps` steps on arguments like these, ahead of its first run,
        so that compiling is a piece of work of its own (train.py reports each: a long compile
        is not taken for a stalled call). JAX keeps the executable in its compilation cache,
        where the run finds it (the AOT executable itself is not called: under pmap on several
        processes it wants global arrays, where the call passes this host's)."""
        self.wrapped(n_steps).lower(state, *self._args(data)).compile()

    def run(self, state: TrainState, data: Tuple, n_steps: int) -> Tuple[TrainState, Any]:
        """`n_steps` steps in one call: (state, losses)."""
        return self.wrapped(n_steps)(state, *self._args(data))

    def _args(self, data: Tuple) -> Tuple:
        """The data a call takes: minibatches are drawn by this program's own entries (`_who`),
        not by the data's: a smaller program may train on placed data it shares with the
        program it came from."""
        if not self.batch_size:
            return data
        if self._drawn_by is None:
            self._drawn_by = self._who()
        return (*data, self._drawn_by)

    def measure(self, state: TrainState, data: Tuple) -> jax.Array:
        """Each model's loss and metrics (make_measure's, as `self.measure_one`) on `data` (as
        `put_data` placed it): (entries, 1 + metrics), placed as the state is."""
        if self._measured is None:
            self._measured = self._wrap_measure(jax.vmap(self.measure_one, in_axes=(0, None, None)))
        return self._measured(state.params, *data)

    @abc.abstractmethod
    def _wrap_measure(self, measure: Callable) -> Callable:
        """`measure` ((params, x, y), params with a leading entry axis), wrapped for this mode."""

    @abc.abstractmethod
    def _who(self) -> jax.Array:
        """who_of every entry of the program's axis, placed as the state is."""

    def restore(self, state: TrainState, leaves: List[np.ndarray]) -> TrainState:
        """`state` (as `init` made it) with the values of `leaves`: the flat leaves of a whole
        state, every entry of the program's axis first (checkpoint.py), placed as `state` is."""
        old = jax.tree.leaves(state)
        if len(leaves) != len(old) or any(np.shape(new)[1:] != self._entry_shape(o)
                                          for new, o in zip(leaves, old)):
            raise ValueError(f"the checkpoint's state does not fit this program: leaves "
                             f"{[np.shape(n) for n in leaves]}, expected {len(old)} leaves of "
                             f"{[self._entry_shape(o) for o in old]} per entry")
        placed = [self._place(np.asarray(new, o.dtype), o) for new, o in zip(leaves, old)]
        return jax.tree.unflatten(jax.tree.structure(state), placed)

    @abc.abstractmethod
    def adopt(self, before: "Trainer", treedef, leaves: List[np.ndarray]) -> TrainState:
        """The state whose flat leaves are `leaves` (every entry first, as `restore` takes them),
        placed without running `init`: for one-model trials, on the slice `before` ran on (the
        smaller program early stopping makes of a program's survivors)."""

    @abc.abstractmethod
    def _entry_shape(self, leaf: jax.Array) -> Tuple[int, ...]:
        """The shape of one entry's part of a state leaf."""

    @abc.abstractmethod
    def _place(self, whole: np.ndarray, like: jax.Array) -> jax.Array:
        """`like`'s part of `whole` (every entry), placed as `like` is."""


class PmapTrainer(Trainer):
    """The tutorial's way: pmap over this host's devices; collectives over AXIS reach all hosts."""

    def __init__(self, model: Model, program: Program, loss: Optional[Callable] = None,
                 penalty: Optional[Callable] = None, metrics: Sequence[Callable] = ()):
        super().__init__(model, program)
        self.k = jax.local_device_count()
        if self.ensemble:
            reduce = lambda tree: tree  # each device holds whole members: nothing to combine
        else:
            # pmean keeps the replicas in sync: each device's gradient is the mean over its
            # equal share of the global batch, so the mean over all devices is the full-batch one.
            reduce = _pmean_as_one
        self.step = make_step(model, self.opt, reduce, loss, penalty, self._draw if self.batch_size else None)
        self.measure_one = make_measure(model, loss, metrics, reduce)
        self.axis_index = None  # global position on AXIS of each local device, set by init
        self.local_entries = None  # the entries each local device holds, set by init

    def _entries(self, device):
        """The entries a device holds: its share (ensembles) or all of them (one model)."""
        per_device = self.program.entries_per_device
        return device * per_device * self.ensemble + jnp.arange(per_device)

    def init(self):
        def init_device(_):
            i = lax.axis_index(AXIS)
            return init_state(self.model, self.program, self._entries(i)), i

        state, index = jax.pmap(init_device, axis_name=AXIS)(jnp.arange(self.k))
        self.axis_index = np.asarray(index)
        self.local_entries = [np.asarray(self._entries(int(device))) for device in self.axis_index]
        return state

    def put_data(self, x, y):
        from ymxb.spec.data import split_over_devices
        if self.ensemble:
            # Every member trains on the whole global batch: gather all shards once, in AXIS order.
            put = jax.pmap(lambda a: lax.all_gather(a, AXIS, tiled=True), axis_name=AXIS)
        else:
            put = jax.pmap(lambda a: a)  # one slice per local device, kept there for every call
        return tuple(put(split_over_devices(a, self.k)) for a in (x, y))

    def _who(self):
        return jax.pmap(lambda _: who_of(self.program, self._entries(lax.axis_index(AXIS))),
                        axis_name=AXIS)(jnp.arange(self.k))

    def _draw(self, key, x, y):
        """The step's minibatch: a member's from the whole batch; else this device's share of
        the batch from its own points, keyed by its place on AXIS too."""
        if self.ensemble:
            return _drawn(key, x.shape[0], self.batch_size, x, y)
        key = jax.random.fold_in(key, lax.axis_index(AXIS))
        return _drawn(key, x.shape[0], self.batch_size // lax.axis_size(AXIS), x, y)

    def _wrap(self, n_steps):
        return jax.pmap(fuse(self.step, n_steps), axis_name=AXIS)

    def _wrap_measure(self, measure):
        return jax.pmap(measure, axis_name=AXIS)

    def local(self, tree):
        tree = jax.device_get(tree)
        return [(int(device), entries, jax.tree.map(lambda leaf: leaf[k], tree))
                for k, (device, entries) in enumerate(zip(self.axis_index, self.local_entries))]

    def adopt(self, before, treedef, leaves):
        self.axis_index = before.axis_index  # the same devices: the same places on AXIS
        self.local_entries = [np.asarray(self._entries(int(device))) for device in self.axis_index]
        # NumPy: pmap puts each device's part on it at the first call.
        return jax.tree.unflatten(treedef, [self._stacked(leaf) for leaf in leaves])

    def _entry_shape(self, leaf):
        return leaf.shape[2:]  # (local devices, entries per device, ...)

    def _place(self, whole, like):
        return jax.device_put(self._stacked(whole), like.sharding)

    def _stacked(self, whole: np.ndarray) -> np.ndarray:
        """Each local device's entries of `whole` (every entry), stacked: (local devices, entries, ...)."""
        return np.stack([whole[entries] for entries in self.local_entries])

    def collective_counts(self):
        # The mesh's two axes as groups of pmap's one: a device's position is slice-major.
        slices, per_slice = self.program.slice.mesh_shape
        grid = np.arange(slices * per_slice).reshape(slices, per_slice)

        def counts(one):
            return (lax.psum(one, AXIS, axis_index_groups=grid.T.tolist()),  # across the slices
                    lax.psum(one, AXIS, axis_index_groups=grid.tolist()),  # within a slice
                    lax.psum(one, AXIS))

        # Ones as arrays: a psum of a Python constant is worked out without any collective.
        return tuple(int(c[0]) for c in jax.pmap(counts, axis_name=AXIS)(jnp.ones(self.k, jnp.int32)))


def _pmean_as_one(tree):
    """lax.pmean of a pytree as one flat array: one collective per step, not one per leaf
    (across processes, each is a round trip that costs more than the step's arithmetic)."""
    if lax.axis_size(AXIS) == 1:
        return tree  # one device: nothing to average (the no-op all-reduce cost 2 ops a step)
    flat, unravel = ravel_pytree(tree)
    return unravel(lax.pmean(flat, AXIS))


class ShardingTrainer(Trainer):
    """The modern way: one jit over a Mesh of all devices of all hosts; XLA adds the collectives."""

    def __init__(self, model: Model, program: Program, loss: Optional[Callable] = None,
                 penalty: Optional[Callable] = None, metrics: Sequence[Callable] = ()):
        super().__init__(model, program)
        devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))  # slice-major
        self.mesh = Mesh(np.array(devices).reshape(program.slice.mesh_shape), MESH_AXES)
        self.split = NamedSharding(self.mesh, P(MESH_AXES))  # the leading axis over both
        self.replicated = NamedSharding(self.mesh, P())
        # One model: params replicated, batch split. Ensemble: members split, batch everywhere.
        self.state_sharding = self.split if self.ensemble else self.replicated
        self.step = make_step(model, self.opt, loss=loss, penalty=penalty,
                              draw=self._draw if self.batch_size else None)
        self.measure_one = make_measure(model, loss, metrics)  # on global arrays: XLA combines devices

    def init(self):
        init = lambda: init_state(self.model, self.program, jnp.arange(self.program.padded_entries))
        return jax.jit(init, out_shardings=self.state_sharding)()

    def put_data(self, x, y):
        data = tuple(jax.make_array_from_process_local_data(self.split, a) for a in (x, y))
        if self.ensemble:
            # Every member trains on the whole global batch: gather all shards once.
            data = jax.jit(lambda *a: a, out_shardings=self.replicated)(*data)
        return data

    def _who(self):
        who = lambda: who_of(self.program, jnp.arange(self.program.padded_entries))
        return jax.jit(who, out_shardings=self.state_sharding)()

    def _draw(self, key, x, y):
        """The step's minibatch, as PmapTrainer draws it: a member's from the whole batch; else
        each device's share from the points it holds, keyed by its place on the mesh."""
        if self.ensemble:
            return _drawn(key, x.shape[0], self.batch_size, x, y)
        devices = self.mesh.devices.size
        share = lambda a: a.reshape(devices, a.shape[0] // devices, *a.shape[1:])
        keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(devices))
        drawn = jax.vmap(lambda k, *a: _drawn(k, a[0].shape[0], self.batch_size // devices, *a))(
            keys, share(x), share(y))
        return tuple(a.reshape(self.batch_size, *a.shape[2:]) for a in drawn)

    def _wrap(self, n_steps):
        data_sharding = self.replicated if self.ensemble else self.split
        who = (self.state_sharding,) if self.batch_size else ()
        return jax.jit(fuse(self.step, n_steps),
                       in_shardings=(self.state_sharding, data_sharding, data_sharding, *who),
                       out_shardings=(self.state_sharding, self.state_sharding))

    def _wrap_measure(self, measure):
        data_sharding = self.replicated if self.ensemble else self.split
        return jax.jit(measure, in_shardings=(self.state_sharding, data_sharding, data_sharding),
                       out_shardings=self.state_sharding)

    def local(self, tree):
        devices = list(self.mesh.devices.flat)  # global device index: position on the mesh
        leaves, treedef = jax.tree.flatten(tree)
        out = []
        for pieces in zip(*(leaf.addressable_shards for leaf in leaves)):
            values = [np.asarray(p.data) for p in pieces]
            start = pieces[0].index[0].start or 0  # replicated: the whole axis, from 0
            entries = start + np.arange(values[0].shape[0])
            out.append((devices.index(pieces[0].device), entries, treedef.unflatten(values)))
        return out

    def adopt(self, before, treedef, leaves):
        return jax.tree.unflatten(treedef, [_global(leaf, self.state_sharding) for leaf in leaves])

    def _entry_shape(self, leaf):
        return leaf.shape[1:]  # (entries, ...): a global array

    def _place(self, whole, like):
        return _global(whole, like.sharding)

    def collective_counts(self):
        ones = jax.make_array_from_process_local_data(
            self.split, np.ones(self.program.slice.devices_per_host, np.int32))
        count = jax.shard_map(lambda one: tuple(lax.psum(one, axes) for axes in (*MESH_AXES, MESH_AXES)),
                              mesh=self.mesh, in_specs=P(MESH_AXES), out_specs=P(MESH_AXES))
        return tuple(int(c.addressable_data(0)[0]) for c in jax.jit(count)(ones))


def _global(whole: np.ndarray, sharding) -> jax.Array:
    """`whole` (every entry) as a global array laid out by `sharding`, this host's parts placed."""
    return jax.make_array_from_callback(whole.shape, sharding, lambda index: whole[index])


TRAINERS = {"pmap": PmapTrainer, "sharding": ShardingTrainer}
