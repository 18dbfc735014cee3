"""Driver-side checks: the normal-equation solution and the verdict on what the hosts returned."""

from typing import NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ymxb.protocol import HostRun


# How close float32 training gets to the float64 solution, in units of float32's epsilon
# relative to the params' size: rounding in the loss and gradient leaves a few ulps.
FLOAT32_ULPS = 16


class Check(NamedTuple):
    name: str
    ok: bool
    detail: str


def normal_equation(x: np.ndarray, y: np.ndarray) -> Tuple[float, float]:
    """Closed-form least squares for y ~ m*x + b, in float64: solve (X^T X) w = X^T y."""
    design = np.stack([np.asarray(x, np.float64), np.ones(len(x))], axis=1)
    m, b = np.linalg.solve(design.T @ design, design.T @ np.asarray(y, np.float64))
    return float(m), float(b)


def check_replicas(params: Sequence[Tuple[str, float, float]]) -> Check:
    """Every (label, m, b) replica must hold identical params: pmean keeps them in sync."""
    first = params[0]
    for other in params[1:]:
        if not np.array_equal(first[1:], other[1:], equal_nan=True):
            return Check(
                "replicas agree", False,
                f"{other[0]} holds m={other[1]!r} b={other[2]!r} but {first[0]} holds "
                f"m={first[1]!r} b={first[2]!r}: replicas must be identical")
    return Check("replicas agree", True, f"{len(params)} replicas hold identical params")


def check_solution(params: Sequence[Tuple[str, float, float]], solution: Tuple[float, float],
                   tol: float) -> Tuple[Check, float]:
    """Every (label, m, b) must lie within tol of the normal-equation (m, b); returns max error."""
    errors = [(param_error(m, b, solution), label, m, b) for label, m, b in params]
    worst, label, m, b = max(errors, key=lambda e: e[0])
    detail = (f"max |error| {worst:.3g} at {label} (m={m:.7g} b={b:.7g} vs m={solution[0]:.7g} "
              f"b={solution[1]:.7g}), tol {tol:g}")
    if worst > tol and np.isfinite(worst):
        detail += "; " + _why_not_within(solution, tol)
    return Check("matches normal equation", worst <= tol, detail), worst


def _why_not_within(solution: Tuple[float, float], tol: float) -> str:
    """What a finite miss points to: float32's resolution at this scale, or too few steps."""
    resolution = FLOAT32_ULPS * np.finfo(np.float32).eps * max(1.0, *map(abs, solution))
    if tol < resolution:
        return (f"float32 resolves only about {resolution:.1g} at this scale, so a --tol below "
                f"that cannot pass: raise --tol")
    return "not converged yet: more --steps, or another --lr"


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


def param_error(m: float, b: float, solution: Tuple[float, float]) -> float:
    """max(|m - m*|, |b - b*|); anything non-finite is infinitely far."""
    return max(_dist(m, solution[0]), _dist(b, solution[1]))


def _dist(a: float, b: float) -> float:
    """|a - b|, with anything non-finite infinitely far (NaN must never pass a check)."""
    d = abs(a - b)
    return d if np.isfinite(d) else float("inf")


def check_members(indices: Sequence[int], ensemble: int) -> Check:
    """The hosts together returned members 0..E-1, each exactly once."""
    seen = sorted(indices)
    if seen == list(range(ensemble)):
        return Check("every member once", True, f"{ensemble} members gathered, none missing or twice")
    missing = sorted(set(range(ensemble)) - set(seen))
    twice = sorted({i for i in seen if seen.count(i) > 1})
    return Check("every member once", False,
                 f"got {len(seen)} members for --ensemble {ensemble}: missing {missing[:10]}, "
                 f"repeated {twice[:10]}, out of range {[i for i in seen if not 0 <= i < ensemble][:10]}")


def check_distinct_init(inits: Sequence[Tuple[str, float, float]]) -> Check:
    """No two members started from the same (m, b): they came from distinct keys."""
    first_seen = {}
    for label, m, b in inits:
        if (m, b) in first_seen:
            return Check("members distinct at init", False,
                         f"{label} and {first_seen[(m, b)]} both started at m={m!r} b={b!r}")
        first_seen[(m, b)] = label
    return Check("members distinct at init", True, f"{len(inits)} distinct initial (m, b)")


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
