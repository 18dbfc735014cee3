"""The training step and its two parallel wrappings: `jax.pmap` and `jax.jit` over a global Mesh.

Everything but the wrapping is shared: one step of full-batch gradient descent on the mean of
the task's loss (squared error unless the task says otherwise), on any params pytree,
`vmap`ped over the program's leading model axis (one entry per trial, or per trial and
ensemble member; each entry has its own learning rate in its optimiser state), and
`lax.scan`ned so that many steps run in one compiled call (one dispatch, not one per step).

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
"""

import abc
import functools
import inspect
from typing import Any, Callable, List, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ymxb.spec.settings import Program
from ymxb.spec.tasks import Model

# pmap's one axis: it spans every device of every host of every slice.
AXIS = "devices"
# The sharding mode's Mesh: slices (GPU: nodes), then the devices of each.
MESH_AXES = ("slices", "devices")


class TrainState(NamedTuple):
    params: Any
    opt_state: Any


@functools.lru_cache(maxsize=None)
def make_optimizer(name: str) -> Callable[..., optax.GradientTransformation]:
    """learning_rate -> optax.<name>, with the rate kept in the optimiser state (one per model
    on the axis). Every other argument is static, as in the plain optimiser: injected (as
    float32 arrays) adam's b1, b2 and eps would drift from plain adam's."""
    factory = getattr(optax, name)
    static = tuple(arg for arg in inspect.signature(factory).parameters if arg != "learning_rate")
    return optax.inject_hyperparams(factory, static_args=static)


def make_step(model: Model, opt: optax.GradientTransformation, reduce: Callable = lambda tree: tree,
              loss: Optional[Callable] = None, penalty: Optional[Callable] = None) -> Callable:
    """(state, x, y) -> (state, loss): one full-batch step of one model on the mean of `loss`
    (predictions, y -> per-point loss; None: squared error) plus `penalty` (params -> a number,
    or None for none); `reduce` combines the devices' (loss, grads) where the batch is split
    over devices."""
    if loss is None:  # the squared error, halved: the mean's 2/n is applied once, below
        objective, scale = lambda params, x, y: 0.5 * jnp.sum((model.apply(params, x) - y) ** 2), 2.0
    else:
        objective, scale = lambda params, x, y: jnp.sum(loss(model.apply(params, x), y)), 1.0

    def step(state, x, y):
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


def fuse(step: Callable, n_steps: int) -> Callable:
    """(state, x, y) -> (state, losses): `n_steps` steps of every model on the leading axis in
    one call. Losses have shape (models, n_steps)."""
    batched = jax.vmap(step, in_axes=(0, None, None))  # models share the batch

    def steps_of(one_step, state, x, y):
        return lax.scan(lambda s, _: one_step(s, x, y), state, length=n_steps)

    def run(state, x, y):
        if jax.tree.leaves(state)[0].shape[0] > 1:
            state, losses = steps_of(batched, state, x, y)
            return state, losses.T
        # One model: the axis of 1 dropped around the whole loop. vmap over it leaves (1, n)
        # arrays, whose reductions XLA:CPU runs many times slower than those of (n,) arrays
        # (docs/benchmarks.md); and a loop carrying (1,) params copied them each step.
        state, losses = steps_of(step, jax.tree.map(lambda a: a[0], state), x, y)
        return jax.tree.map(lambda a: a[None], state), losses[None]

    return run


def init_state(model: Model, program: Program, entries: jax.Array) -> TrainState:
    """Initial params and optimiser state of the given entries of the program's axis. A trial's
    one model starts from key(seed); member j of an ensemble from the j-th of E keys split from
    it, whichever device holds it: exactly as the trial would start alone."""
    members = program.trial.members
    entries = jnp.minimum(entries, program.entries - 1)  # padding: a copy of the last entry
    trial, member = entries // members, entries % members
    seeds = jnp.asarray(program.seeds, jnp.uint32)[trial]
    lrs = jnp.asarray(program.lrs, jnp.float32)[trial]
    optimizer = make_optimizer(program.trial.optimizer)

    def one(seed, member, lr):
        key = jax.random.key(seed)
        if program.trial.ensemble:
            key = jax.random.split(key, members)[member]
        params = model.init(key)
        return TrainState(params, optimizer(learning_rate=lr).init(params))

    return jax.vmap(one)(seeds, member, lrs)


class Trainer(abc.ABC):
    """What a parallel mode provides to the training loop (train.py)."""

    def __init__(self, model: Model, program: Program):
        self.program, self.model = program, model
        # The rate given here is never used: each model's own is in its optimiser state.
        self.opt = make_optimizer(program.trial.optimizer)(learning_rate=0.0)
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

    def compiled(self, n_steps: int) -> Callable:
        """The wrapped function running `n_steps` fused steps; made once per n."""
        if n_steps not in self._compiled:
            self._compiled[n_steps] = self._wrap(n_steps)
        return self._compiled[n_steps]

    def run(self, state: TrainState, data: Tuple, n_steps: int) -> Tuple[TrainState, Any]:
        """`n_steps` steps in one call: (state, losses)."""
        return self.compiled(n_steps)(state, *data)

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
                 penalty: Optional[Callable] = None):
        super().__init__(model, program)
        self.k = jax.local_device_count()
        if self.ensemble:
            reduce = lambda tree: tree  # each device holds whole members: nothing to combine
        else:
            # pmean keeps the replicas in sync: each device's gradient is the mean over its
            # equal share of the global batch, so the mean over all devices is the full-batch one.
            reduce = _pmean_as_one
        self.step = make_step(model, self.opt, reduce, loss, penalty)
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

    def _wrap(self, n_steps):
        return jax.pmap(fuse(self.step, n_steps), axis_name=AXIS)

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
                 penalty: Optional[Callable] = None):
        super().__init__(model, program)
        devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))  # slice-major
        self.mesh = Mesh(np.array(devices).reshape(program.slice.mesh_shape), MESH_AXES)
        self.split = NamedSharding(self.mesh, P(MESH_AXES))  # the leading axis over both
        self.replicated = NamedSharding(self.mesh, P())
        # One model: params replicated, batch split. Ensemble: members split, batch everywhere.
        self.state_sharding = self.split if self.ensemble else self.replicated
        self.step = make_step(model, self.opt, loss=loss, penalty=penalty)

    def init(self):
        init = lambda: init_state(self.model, self.program, jnp.arange(self.program.padded_entries))
        return jax.jit(init, out_shardings=self.state_sharding)()

    def put_data(self, x, y):
        data = tuple(jax.make_array_from_process_local_data(self.split, a) for a in (x, y))
        if self.ensemble:
            # Every member trains on the whole global batch: gather all shards once.
            data = jax.jit(lambda *a: a, out_shardings=self.replicated)(*data)
        return data

    def _wrap(self, n_steps):
        data_sharding = self.replicated if self.ensemble else self.split
        return jax.jit(fuse(self.step, n_steps),
                       in_shardings=(self.state_sharding, data_sharding, data_sharding),
                       out_shardings=(self.state_sharding, self.state_sharding))

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
