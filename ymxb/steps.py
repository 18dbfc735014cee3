"""The training step and its two parallel wrappings: `jax.pmap` and `jax.jit` over a global Mesh.

Everything but the wrapping is shared: one step of full-batch gradient descent on the mean
squared error, `vmap`ped over a leading member axis for ensembles, and `lax.scan`ned so that
many steps run in one compiled call (one dispatch, not one per step).

Layouts, with D global devices, K local devices and E ensemble members:
- one model (E == 0): the data is split over all D devices, params are replicated, and the
  gradient is averaged over every device of every host;
- ensemble (E > 0): members are split over all D devices (E / D each), every device sees the
  whole global batch (gathered once), and no collective runs inside the step.
"""

import abc
from typing import Any, Callable, List, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ymxb.config import Config
from ymxb.models import Model

# The one axis of both wrappings; it spans every device of every host.
AXIS = "devices"


class TrainState(NamedTuple):
    params: Any
    opt_state: Any


def make_optimizer(cfg: Config) -> optax.GradientTransformation:
    """optax.<name>(learning_rate=lr), for a name from config.OPTIMIZERS."""
    return getattr(optax, cfg.optimizer)(learning_rate=cfg.lr)


def make_step(model: Model, opt: optax.GradientTransformation,
              reduce: Callable = lambda tree: tree) -> Callable:
    """(state, x, y) -> (state, loss): one full-batch step; `reduce` combines the devices'
    (loss, grads) where the batch is split over devices."""

    def loss_fn(params, x, y):
        return jnp.mean((model.apply(params, x) - y) ** 2)

    def step(state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(state.params, x, y)
        loss, grads = reduce((loss, grads))
        updates, opt_state = opt.update(grads, state.opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), opt_state), loss

    return step


def fuse(step: Callable, n_steps: int, ensemble: bool) -> Callable:
    """(state, x, y) -> (state, losses): `n_steps` steps in one call. Losses have shape
    (n_steps,), or (members, n_steps) for an ensemble."""
    if ensemble:
        # Members are independent models: map the step over the leading member axis.
        step = jax.vmap(step, in_axes=(0, None, None))

    def run(state, x, y):
        state, losses = lax.scan(lambda s, _: step(s, x, y), state, length=n_steps)
        return state, losses.T

    return run


def init_state(model: Model, opt, cfg: Config, members: jax.Array = None) -> TrainState:
    """Initial params and optimiser state. Member j of an ensemble starts from the j-th of
    E keys split from the seed, whichever device holds it; `members` picks the ones to build."""
    key = jax.random.key(cfg.seed)
    if not cfg.ensemble:
        params = model.init(key)
        return TrainState(params, opt.init(params))
    keys = jax.random.split(key, cfg.ensemble)
    if members is not None:
        keys = keys[members]
    params = jax.vmap(model.init)(keys)
    return TrainState(params, jax.vmap(opt.init)(params))


class Trainer(abc.ABC):
    """What a parallel mode provides to the training loop (train.py)."""

    def __init__(self, model: Model, cfg: Config):
        self.cfg, self.model, self.opt = cfg, model, make_optimizer(cfg)
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
    def local(self, tree) -> List[Tuple[int, Any]]:
        """(index, NumPy value) for each piece this host holds: one per local device (index =
        global device) for one model, one per member (index = global member) for ensembles."""

    @abc.abstractmethod
    def collective_devices(self) -> int:
        """How many devices a sum over AXIS counts: proves the axis spans every host."""

    def compiled(self, n_steps: int) -> Callable:
        """The wrapped function running `n_steps` fused steps; made once per n."""
        if n_steps not in self._compiled:
            self._compiled[n_steps] = self._wrap(n_steps)
        return self._compiled[n_steps]

    def run(self, state: TrainState, data: Tuple, n_steps: int) -> Tuple[TrainState, Any]:
        """`n_steps` steps in one call: (state, losses)."""
        return self.compiled(n_steps)(state, *data)


class PmapTrainer(Trainer):
    """The tutorial's way: pmap over this host's devices; collectives over AXIS reach all hosts."""

    def __init__(self, model: Model, cfg: Config):
        super().__init__(model, cfg)
        self.k = jax.local_device_count()
        if cfg.ensemble:
            reduce = lambda tree: tree  # each device holds whole members: nothing to combine
        else:
            # pmean keeps the replicas in sync: each device's gradient is the mean over its
            # equal share of the global batch, so the mean over all devices is the full-batch one.
            reduce = lambda tree: lax.pmean(tree, AXIS)
        self.step = make_step(model, self.opt, reduce)
        self.axis_index = None  # global position on AXIS of each local device, set by init

    def init(self):
        mpd = self.cfg.members_per_device

        def init_device(_):
            i = lax.axis_index(AXIS)
            members = i * mpd + jnp.arange(mpd) if self.cfg.ensemble else None
            return init_state(self.model, self.opt, self.cfg, members), i

        state, index = jax.pmap(init_device, axis_name=AXIS)(jnp.arange(self.k))
        self.axis_index = np.asarray(index)
        return state

    def put_data(self, x, y):
        from ymxb.data import split_over_devices
        if self.cfg.ensemble:
            # Every member trains on the whole global batch: gather all shards once, in AXIS order.
            put = jax.pmap(lambda a: lax.all_gather(a, AXIS, tiled=True), axis_name=AXIS)
        else:
            put = jax.pmap(lambda a: a)  # one slice per local device, kept there for every call
        return tuple(put(split_over_devices(a, self.k)) for a in (x, y))

    def _wrap(self, n_steps):
        return jax.pmap(fuse(self.step, n_steps, bool(self.cfg.ensemble)), axis_name=AXIS)

    def local(self, tree):
        tree = jax.device_get(tree)
        out = []
        for k, axis_index in enumerate(self.axis_index):
            piece = jax.tree.map(lambda leaf: leaf[k], tree)
            if not self.cfg.ensemble:
                out.append((int(axis_index), piece))
                continue
            mpd = self.cfg.members_per_device
            out.extend((int(axis_index) * mpd + j, jax.tree.map(lambda leaf: leaf[j], piece))
                       for j in range(mpd))
        return out

    def collective_devices(self):
        count = jax.pmap(lambda _: lax.psum(1, AXIS), axis_name=AXIS)(jnp.arange(self.k))
        return int(count[0])


class ShardingTrainer(Trainer):
    """The modern way: one jit over a Mesh of all devices of all hosts; XLA adds the collectives."""

    def __init__(self, model: Model, cfg: Config):
        super().__init__(model, cfg)
        self.mesh = Mesh(np.array(jax.devices()), (AXIS,))
        self.split = NamedSharding(self.mesh, P(AXIS))
        self.replicated = NamedSharding(self.mesh, P())
        # One model: params replicated, batch split. Ensemble: members split, batch everywhere.
        self.state_sharding = self.split if cfg.ensemble else self.replicated
        self.step = make_step(model, self.opt)

    def init(self):
        init = lambda: init_state(self.model, self.opt, self.cfg)
        return jax.jit(init, out_shardings=self.state_sharding)()

    def put_data(self, x, y):
        data = tuple(jax.make_array_from_process_local_data(self.split, a) for a in (x, y))
        if self.cfg.ensemble:
            # Every member trains on the whole global batch: gather all shards once.
            data = jax.jit(lambda *a: a, out_shardings=self.replicated)(*data)
        return data

    def _wrap(self, n_steps):
        data_sharding = self.replicated if self.cfg.ensemble else self.split
        return jax.jit(fuse(self.step, n_steps, bool(self.cfg.ensemble)),
                       in_shardings=(self.state_sharding, data_sharding, data_sharding),
                       out_shardings=(self.state_sharding, self.state_sharding))

    def local(self, tree):
        devices = list(self.mesh.devices.flat)
        leaves, treedef = jax.tree.flatten(tree)
        shards = [leaf.addressable_shards for leaf in leaves]
        out = []
        for pieces in zip(*shards):
            values = [np.asarray(p.data) for p in pieces]
            if not self.cfg.ensemble:
                out.append((devices.index(pieces[0].device), treedef.unflatten(values)))
                continue
            start = pieces[0].index[0].start or 0
            out.extend((start + j, treedef.unflatten([v[j] for v in values]))
                       for j in range(values[0].shape[0]))
        return out

    def collective_devices(self):
        ones = jax.make_array_from_process_local_data(self.split, np.ones(self.cfg.devices_per_host, np.int32))
        return int(jax.jit(jnp.sum, out_shardings=self.replicated)(ones).addressable_data(0))


TRAINERS = {"pmap": PmapTrainer, "sharding": ShardingTrainer}
