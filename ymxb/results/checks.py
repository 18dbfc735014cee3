"""Driver-side checks: the verdict on what the hosts returned, against the task's reference
solution where it has one."""

from collections import Counter
from typing import Callable, Dict, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ymxb.spec import tasks
from ymxb.protocol import HostRun


Show = Callable[[np.ndarray], Dict[str, float]]  # a flat params vector -> its few named scalars


class Check(NamedTuple):
    name: str
    ok: bool
    detail: str


def _written(named: Dict[str, float], spec: str = "r") -> str:
    """Named scalars as a message writes them: "m=2.000357 b=-1.000327"."""
    return " ".join(f"{k}={v!r}" if spec == "r" else f"{k}={v:{spec}}" for k, v in named.items())


def check_replicas(copies: Sequence[Tuple[str, np.ndarray]], show: Show) -> Check:
    """Every (label, params) replica must hold identical params: pmean keeps them in sync."""
    first = copies[0]
    for other in copies[1:]:
        if not np.array_equal(first[1], other[1], equal_nan=True):
            return Check(
                "replicas agree", False,
                f"{other[0]} holds {_written(show(other[1]))} but {first[0]} holds "
                f"{_written(show(first[1]))}: replicas must be identical")
    return Check("replicas agree", True, f"{len(copies)} replicas hold identical params")


def check_solution(copies: Sequence[Tuple[str, np.ndarray]], solution: np.ndarray, tol: float, show: Show,
                   floor: Optional[float] = None, name: str = "matches normal equation") -> Tuple[Check, float]:
    """Every (label, params) must lie within tol of the reference solution, in every param;
    returns the largest error. `floor`: the least error float32 can reach on this problem
    (None: a few ulps of the solution's scale), to say when a miss is float32's."""
    errors = [(param_error(params, solution), label, params) for label, params in copies]
    worst, label, params = max(errors, key=lambda e: e[0])
    limit = tol if floor is None else max(tol, floor)  # float32 cannot be held closer than its floor
    detail = (f"max |error| {worst:.3g} at {label} ({_written(show(params), '.7g')} vs "
              f"{_written(show(solution), '.7g')}), tol {limit:g}")
    if floor is not None:
        detail += f" (--tol {tol:g}, or float32's floor on this problem, {floor:.2g}, if larger)"
    if worst > limit and np.isfinite(worst):
        detail += "; " + _why_not_within(solution, limit, floor)
    return Check(name, worst <= limit, detail), worst


def _why_not_within(solution: np.ndarray, tol: float, floor: Optional[float]) -> str:
    """What a finite miss points to: float32's resolution on this problem, or too few steps."""
    resolution = floor if floor is not None else tasks.float32_floor(solution)
    if tol < resolution:
        return (f"float32 resolves only about {resolution:.1g} at this scale, so a --tol below "
                f"that cannot pass: raise --tol")
    return "not converged yet: more --steps, or another --lr"


def check_loss_went_down(histories: Sequence[Tuple[str, np.ndarray]]) -> Check:
    """Without a reference: every (label, losses) copy ended lower than it started."""
    up = [label for label, losses in histories if not losses[-1] < losses[0]]
    if up:
        return Check("loss went down", False, f"{up[0]} and {len(up) - 1} more ended no lower than they started")
    return Check("loss went down", True, f"every model's loss ended lower than it started ({len(histories)} "
                                         f"loss histor{'y' if len(histories) == 1 else 'ies'})")


def check_participation(hosts: Sequence[HostRun], spec) -> Check:
    """Every process index once, each with its local devices; sums over each axis of the mesh
    (config.SliceSpec.mesh_shape) that counted every slice and device; and, with several
    slices, each host's multislice environment naming its own slice and host 0's address."""
    processes, local, want = spec.processes, spec.devices_per_host, spec.global_devices
    axes = list(spec.mesh_shape)
    indices = sorted(h.host.process_index for h in hosts)
    problems = []
    if indices != list(range(processes)):
        problems.append(f"process indices {indices}, expected 0..{processes - 1}")
    coordinator = next((h.host.node_ip for h in hosts if h.host.process_index == 0), None)
    for h in hosts:
        index = h.host.process_index
        got = (h.host.local_devices, h.host.global_devices, h.result.collective_devices,
               list(h.result.collective_axes))
        if got != (local, want, want, axes):
            problems.append(f"host {index} saw local/global/collective devices and per-axis counts "
                            f"{got}, expected {(local, want, want, axes)}")
        env = _multislice(spec.slices, index // spec.hosts, coordinator) if spec.slices > 1 else {}
        if h.host.megascale != env:
            problems.append(f"host {index} ran with {h.host.megascale or 'no MEGASCALE_*'}, expected "
                            f"{env or 'none (one slice)'}")
    if problems:
        return Check("all hosts and devices took part", False, "; ".join(problems))
    slices = f"{spec.slices} slices x " if spec.slices > 1 else ""
    return Check("all hosts and devices took part", True,
                 f"{slices}{spec.hosts} hosts, {want} devices; psums over the mesh's axes counted "
                 f"{axes[0]} x {axes[1]}, over both {want}"
                 + ("; each host's MEGASCALE_SLICE_ID was its slice" if slices else ""))


def _multislice(slices: int, slice_id: int, coordinator: Optional[str]) -> dict:
    from ray.util.tpu import get_tpu_coordinator_env_vars

    return get_tpu_coordinator_env_vars(coordinator, slices, slice_id)


def param_error(params: np.ndarray, solution: np.ndarray) -> float:
    """The largest |param - solution| of any param; anything non-finite is infinitely far."""
    d = np.abs(np.asarray(params, np.float64) - np.asarray(solution, np.float64))
    return float(d.max()) if np.isfinite(d).all() else float("inf")


def check_members(indices: Sequence[int], ensemble: int) -> Check:
    """The hosts together returned members 0..E-1, each exactly once."""
    seen = sorted(indices)
    if seen == list(range(ensemble)):
        return Check("every member once", True, f"{ensemble} members gathered, none missing or twice")
    missing = sorted(set(range(ensemble)) - set(seen))
    twice = sorted(i for i, times in Counter(seen).items() if times > 1)
    return Check("every member once", False,
                 f"got {len(seen)} members for --ensemble {ensemble}: missing {missing[:10]}, "
                 f"repeated {twice[:10]}, out of range {[i for i in seen if not 0 <= i < ensemble][:10]}")


def check_distinct_init(inits: Sequence[Tuple[str, np.ndarray]], show: Show) -> Check:
    """No two members started from the same params: they came from distinct keys."""
    first_seen = {}
    for label, params in inits:
        key = np.asarray(params).tobytes()
        if key in first_seen:
            return Check("members distinct at init", False,
                         f"{label} and {first_seen[key]} both started at {_written(show(params))}")
        first_seen[key] = label
    return Check("members distinct at init", True,
                 f"{len(inits)} distinct initial ({', '.join(show(inits[0][1]))})")


def check_finite(first_bad: Sequence[Tuple[str, Optional[int]]], steps_per_call: int) -> Check:
    """The loss stayed finite on every replica or member."""
    bad = [(label, step) for label, step in first_bad if step is not None]
    if not bad:
        return Check("loss finite", True, "loss finite at every step")
    label, step = min(bad, key=lambda b: b[1])
    if step == 0:
        return Check("loss finite", False,
                     f"loss non-finite at step 0, before any update, on {label} and {len(bad) - 1} "
                     f"more: the data or the initial params overflow float32, not the learning "
                     f"rate; use smaller --true-m, --true-b, --noise")
    call = step // steps_per_call * steps_per_call
    return Check("loss finite", False,
                 f"loss became non-finite at step {step} (call of steps {call}-{call + steps_per_call - 1}) "
                 f"on {label} and {len(bad) - 1} more: training diverged; try a smaller --lr")
