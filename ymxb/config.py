"""One run's settings: a dataclass with its defaults, validated once when it is made."""

import dataclasses
import math
from typing import Optional

from ymxb.errors import UsageError

MODELS = ("pure", "haiku")
PLATFORMS = ("tpu", "gpu", "cpu-sim")  # the names of the classes in platforms.py
PARALLEL_MODES = ("pmap", "sharding")
# optax optimisers offered by --optimizer, each built as optax.<name>(learning_rate=lr). No
# weight decay (adamw) here: it moves the optimum away from the normal-equation solution.
OPTIMIZERS = ("sgd", "adam", "adagrad", "rmsprop")
MAX_SEED = 2**32 - 1  # jax.random.key keeps 32 bits: 2**32 would silently be seed 0
MAX_DATA_SCALE = 1e18  # |y| up to this keeps the squared error within float32


@dataclasses.dataclass(frozen=True)
class Config:
    # Slice shape: one Ray actor (one JAX process) per host. None: the platform decides
    # (cpu-sim: 4 x 2; tpu: the slice's hosts x chips; gpu: every GPU node x its GPUs).
    hosts: Optional[int] = None
    devices_per_host: Optional[int] = None
    # Data: y = true_m * x + true_b + noise * N(0, 1), x ~ U(-1, 1).
    true_m: float = 2.0
    true_b: float = -1.0
    noise: float = 0.1
    seed: int = 0
    samples_per_host: int = 1024
    # Training: full-batch gradient descent on the mean squared error.
    model: str = "pure"
    optimizer: str = "sgd"
    lr: float = 0.1
    steps: int = 500
    steps_per_call: int = 100  # steps fused into one compiled call; the host blocks between calls
    parallel: str = "pmap"
    ensemble: int = 0  # 0: one model, data-parallel; E > 0: E members split over all devices
    # Launch and verification.
    platform: Optional[str] = None  # None: detect from the cluster (see platforms.py)
    tpu_type: Optional[str] = None  # which slice: pod type ("v4-32") or generation ("v4")
    tpu_topology: Optional[str] = None  # which slice: chip topology ("2x2x4")
    timeout: float = 120.0  # seconds any one phase (start, initialize, train) may take
    tol: float = 1e-4  # max |param - normal-equation solution| to pass

    def __post_init__(self):
        for name in ("samples_per_host", "steps", "steps_per_call"):
            _check_positive_int(name, getattr(self, name))
        for name in ("hosts", "devices_per_host"):
            if getattr(self, name) is not None:
                _check_positive_int(name, getattr(self, name))
        for name in ("lr", "timeout", "tol"):
            _check_positive_float(name, getattr(self, name))
        for name in ("true_m", "true_b", "noise"):
            if not math.isfinite(getattr(self, name)):
                raise UsageError(f"{_flag(name)} must be finite, got {getattr(self, name)}")
        if self.noise < 0:
            raise UsageError(f"--noise must be >= 0, got {self.noise}")
        scale = abs(self.true_m) + abs(self.true_b) + 6 * self.noise
        if scale > MAX_DATA_SCALE:
            raise UsageError(
                f"|--true-m| + |--true-b| + 6 x --noise is {scale:.3g}: y would reach that size, and "
                f"the loss (its square) would overflow float32 (max 3.4e38); keep it below "
                f"{MAX_DATA_SCALE:.0e}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise UsageError(f"--seed must be an integer from 0 to {MAX_SEED} (2**32 - 1: JAX keys "
                             f"take 32 bits), got {self.seed}")
        if not isinstance(self.ensemble, int) or self.ensemble < 0:
            raise UsageError(f"--ensemble must be 0 (off) or a positive member count, got {self.ensemble}")
        _check_choice("model", self.model, MODELS)
        _check_choice("parallel", self.parallel, PARALLEL_MODES)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        if self.platform is not None:
            _check_choice("platform", self.platform, PLATFORMS)
        if self.devices_per_host and self.samples_per_host % self.devices_per_host:
            raise UsageError(
                f"--samples-per-host ({self.samples_per_host}) must be divisible by "
                f"--devices-per-host ({self.devices_per_host})"
            )
        if self.ensemble and self.shaped and self.ensemble % self.global_devices:
            raise UsageError(
                f"--ensemble ({self.ensemble}) must be divisible by the global device count "
                f"({self.global_devices} = {self.hosts} hosts x {self.devices_per_host} devices): "
                f"try --ensemble {self.global_devices * max(1, self.ensemble // self.global_devices)}"
            )

    @property
    def shaped(self) -> bool:
        """Whether the slice shape is known (the platform fills it in otherwise)."""
        return self.hosts is not None and self.devices_per_host is not None

    @property
    def global_devices(self) -> int:
        return self.hosts * self.devices_per_host

    @property
    def global_samples(self) -> int:
        return self.hosts * self.samples_per_host

    @property
    def members_per_device(self) -> int:
        return self.ensemble // self.global_devices

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UsageError(f"{_flag(name)} must be a positive integer, got {value!r}")


def _check_positive_float(name: str, value) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise UsageError(f"{_flag(name)} must be a positive finite number, got {value!r}")


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise UsageError(f"{_flag(name)} must be one of {', '.join(choices)}; got {value!r}")
