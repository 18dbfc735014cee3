"""`launch.py inspect`: what one training step is, for the chosen settings ("pmap, jit, vmap,
oh my" as a tool). One process, with the host's devices simulated on the CPU; no cluster.
"""

import os
import re
from collections import Counter
from typing import Iterator, List

from ymxb.spec import data, registry
from ymxb.spec.settings import Program, SliceSpec, TrialSpec

# Primitives that move data between devices, and the param naming their axes.
COLLECTIVES = {"psum": "axes", "pmax": "axes", "pmin": "axes", "all_gather": "axis_name",
               "all_to_all": "axis_name", "ppermute": "axis_name", "psum_scatter": "axis_name",
               "reduce_scatter": "axis_name"}
HLO_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def inspect(spec: SliceSpec, cfg: TrialSpec) -> str:
    """The jaxpr, vmapped axes, collectives and compiled cost of one step of trial `cfg` on a
    (shaped) slice `spec`."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={spec.devices_per_host}")
    import jax

    from ymxb.host.steps import AXIS, TRAINERS

    cfg.check_fits(spec)
    program = Program.of(spec, [cfg])
    one = Program.of(spec.replace(slices=1, hosts=1), [cfg])  # this process is the whole (one-host) slice
    if jax.local_device_count() != spec.devices_per_host:
        raise RuntimeError(f"JAX was started with {jax.local_device_count()} devices before inspect "
                           f"could ask for {spec.devices_per_host}: run inspect in a fresh process")
    task = registry.get(cfg.task)
    trainer = TRAINERS[cfg.parallel](task.model(cfg.of_task, cfg.model), one, task.loss, task.penalty_of(cfg.of_task))
    state = trainer.init()
    batch = trainer.put_data(*data.host_shard(cfg, 0))
    step = trainer.wrapped(1)
    jaxpr = jax.make_jaxpr(step)(state, *batch)
    compiled = step.lower(state, *batch).compile()

    out = [f"# {'' if cfg.task == registry.DEFAULT else f'task {cfg.task}, '}{cfg.model} model, {cfg.parallel}, {cfg.optimizer}, "
           + (f"ensemble of {cfg.ensemble}" if cfg.ensemble else "one data-parallel model")
           + f": one process with {spec.devices_per_host} CPU devices. On the slice, axis "
             f"'{AXIS}' spans {spec.global_devices} devices ({spec.label()}: "
             + "slices x " * (spec.slices > 1) + "hosts x devices).",
           "", "## jaxpr of one training step (jax.make_jaxpr)", str(jaxpr), "",
           "## vmap"]
    out += _vmap_lines(program, one, state)
    out += ["", "## collectives in the jaxpr (explicit: pmap's lax collectives)"]
    found = Counter((eqn.primitive.name, str(eqn.params[COLLECTIVES[eqn.primitive.name]]))
                    for eqn in _eqns(jaxpr.jaxpr) if eqn.primitive.name in COLLECTIVES)
    none = "  none: the step names no collective" + (
        " (with jit over a Mesh, XLA inserts them: see below)" if cfg.parallel == "sharding" else "")
    out += [f"  {name} over axes {axes} x{n}" for (name, axes), n in sorted(found.items())] or [none]
    out += ["", "## collectives in the compiled program (what XLA runs)"]
    out += _hlo_collectives(compiled.as_text()) or ["  none: no data moves between devices in a step"]
    out += ["", "## compiled cost of one step (XLA cost analysis, per device program)"]
    out += _cost_lines(compiled.cost_analysis())
    return "\n".join(out)


def _vmap_lines(program: Program, one: Program, state) -> List[str]:
    import jax

    cfg = program.trial
    shapes = [f"    {jax.tree_util.keystr(path)}: {tuple(leaf.shape)}"
              for path, leaf in jax.tree_util.tree_leaves_with_path(state.params)]
    layout = ("pmap adds a leading axis of local devices" if cfg.parallel == "pmap"
              else "global arrays; the Mesh splits them")
    # steps.fuse: XLA:CPU reduces the (1, n) arrays of a vmap over one entry slowly.
    unbatched = (["  one entry per device here: the step runs it without the vmap (the same math)"]
                 if one.entries_per_device == 1 else [])
    if not cfg.ensemble:
        return ["  the step is vmapped over the leading trial axis: in_axes=(0, None, None) (trials, "
                "shared batch, shared batch); 1 trial here (a sweep batches its lr x seed trials "
                "there), its params replicated on every device, the batch split over the axis",
                *unbatched, f"  param shapes ({layout}):", *shapes]
    padding = program.padded_entries - program.entries
    return [f"  the step is vmapped over the leading member axis: in_axes=(0, None, None) "
            f"(members, shared batch, shared batch); {cfg.ensemble} members, "
            f"{one.entries_per_device} per device here ({program.entries_per_device} on the slice"
            + (f", {padding} of them padding, never reported)" if padding else ")"),
            *unbatched, f"  param shapes ({layout}):", *shapes]


def _eqns(jaxpr) -> Iterator:
    """Every equation of a jaxpr, inner jaxprs (pmap, scan, pjit bodies) included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _eqns(inner)


def _hlo_collectives(hlo: str) -> List[str]:
    found = Counter()
    for line in hlo.splitlines():
        for op in HLO_COLLECTIVES:
            if re.search(rf"\b{op}(-start)?\(", line):
                groups = re.search(r"replica_groups=(.*?)(, [a-z_]+=|$)", line)
                found[(op, groups.group(1) if groups else "")] += 1
    return [f"  {op} replica_groups={groups} x{n}" for (op, groups), n in sorted(found.items())]


def _cost_lines(cost) -> List[str]:
    if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
        cost = cost[0] if cost else {}
    keys = ("flops", "transcendentals", "bytes accessed")
    return [f"  {k}: {cost[k]:,.0f}" for k in keys if k in cost] or ["  (no cost analysis from this backend)"]
