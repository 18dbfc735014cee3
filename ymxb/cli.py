"""Command line: parse and validate flags, bring up (or connect to) Ray, run, verify, report.

Exit codes: 0 verified, 1 trained but not verified, 2 bad usage or a failed launch,
130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import time
import types
from typing import List, Optional

import numpy as np

from ymxb import config, data, report
from ymxb.config import Config
from ymxb.errors import HostFailure, UsageError
from ymxb.ray_cluster import ray_cluster

EXIT_VERIFIED, EXIT_NOT_VERIFIED, EXIT_FAILED = 0, 1, 2
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # 128 + SIGINT, 128 + SIGTERM
DEFAULTS = Config()


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit code 2), not the whole usage block."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default only where it has one worth showing."""

    def _get_help_string(self, action):
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def _parser(prog: str) -> argparse.ArgumentParser:
    p = _Parser(
        prog=prog,
        description="Fit y = m*x + b with JAX on every host of a slice, one Ray actor per host, "
                    "and verify the result against the normal equation. With no cluster it "
                    "simulates one: N local processes, each a host with K CPU devices.",
        epilog="`launch.py inspect [flags]` prints, instead of training, the jaxpr, vmapped axes, "
               "collectives and compiled cost of one step for those flags (one process, no cluster). "
               "Exit codes: 0 verified, 1 trained but not verified, 2 bad usage or failed launch, "
               "130 interrupted (Ctrl-C), 143 terminated (SIGTERM); every host is stopped either way.",
        formatter_class=_Help)
    d = DEFAULTS
    g = p.add_argument_group("slice")
    g.add_argument("--hosts", type=int, metavar="N", default=d.hosts,
                   help="hosts (JAX processes), one Ray actor each; default: cpu-sim 4, tpu the "
                        "slice's hosts, gpu every GPU node")
    g.add_argument("--devices-per-host", type=int, metavar="K", default=d.devices_per_host,
                   help="local devices per host; default: cpu-sim 2 (simulated CPU devices), tpu the "
                        "host's chips, gpu the node's GPUs")
    g.add_argument("--platform", metavar="NAME", default=d.platform,
                   help=f"one of {', '.join(config.PLATFORMS)}; default: the first the Ray cluster "
                        f"offers, in that order")
    g.add_argument("--tpu-type", metavar="TYPE", default=d.tpu_type,
                   help="tpu: the slice to use, by pod type (v4-32) or generation (v4); default: "
                        "the only kind of slice present")
    g.add_argument("--tpu-topology", metavar="TOPOLOGY", default=d.tpu_topology,
                   help="tpu: the slice to use, by topology (2x2x4)")
    g = p.add_argument_group("data: y = m*x + b + noise, x ~ U(-1, 1)")
    g.add_argument("--true-m", type=float, metavar="M", default=d.true_m, help="slope of the generating line")
    g.add_argument("--true-b", type=float, metavar="B", default=d.true_b, help="intercept of the generating line")
    g.add_argument("--noise", type=float, metavar="STD", default=d.noise, help="std of the Gaussian noise on y")
    g.add_argument("--seed", type=int, metavar="N", default=d.seed, help="seed of the data and the initial params, 0 to 2**32-1")
    g.add_argument("--samples-per-host", type=int, metavar="N", default=d.samples_per_host,
                   help="points each host generates; split evenly over its devices")
    g = p.add_argument_group("training (full-batch gradient descent on the mean squared error)")
    g.add_argument("--model", metavar="NAME", default=d.model, help=f"one of {', '.join(config.MODELS)}")
    g.add_argument("--optimizer", metavar="NAME", default=d.optimizer,
                   help=f"optax optimiser, one of {', '.join(config.OPTIMIZERS)}: sgd and adam "
                        "converge at the defaults, adagrad wants --lr 0.5, and rmsprop at a constant "
                        "lr hovers near the solution (and may not verify)")
    g.add_argument("--lr", type=float, metavar="LR", default=d.lr, help="learning rate")
    g.add_argument("--steps", type=int, metavar="N", default=d.steps, help="training steps in total")
    g.add_argument("--steps-per-call", type=int, metavar="N", default=d.steps_per_call,
                   help="steps fused into one compiled call (lax.scan); hosts block between calls")
    g.add_argument("--parallel", metavar="MODE", default=d.parallel,
                   help="pmap (pmap over local devices, collectives across hosts) or sharding "
                        "(jit over a global Mesh)")
    g.add_argument("--ensemble", type=int, metavar="E", default=d.ensemble,
                   help="train E independent members at once, split over all devices of all hosts "
                        "(E must divide by hosts x devices); 0: one data-parallel model")
    g = p.add_argument_group("launch and output")
    g.add_argument("--address", metavar="HOST:PORT", default=None,
                   help="Ray cluster to join: host:port of its GCS, or auto for the one this "
                        "machine belongs to (on a cluster's head node); default: $RAY_ADDRESS, else "
                        "start an embedded local Ray for this run")
    g.add_argument("--timeout", type=float, metavar="SECONDS", default=d.timeout,
                   help="seconds placement and jax.distributed.initialize may take, and training "
                        "between two completed compiled calls, before the run fails naming the "
                        "host that died or hung")
    g.add_argument("--tol", type=float, metavar="TOL", default=d.tol,
                   help="max |param - normal-equation solution| for the run to verify")
    g.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    g.add_argument("--dump-data", metavar="PATH",
                   help="write the global dataset (arrays x and y) to PATH as .npz")
    return p


def parse(argv: List[str], prog: str = "launch.py"):
    """Flags -> (Config, the other options). Raises UsageError on bad input."""
    args = _parser(prog).parse_args(argv)
    fields = {f: getattr(args, f) for f in Config.__dataclass_fields__}
    return Config(**fields), args


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return _inspect(argv[1:]) if argv[:1] == ["inspect"] else _launch(argv)
    except UsageError as err:
        print(f"launch.py: error: {err}", file=sys.stderr)
        return EXIT_FAILED


def _inspect(argv: List[str]) -> int:
    from ymxb.introspect import inspect
    from ymxb.platforms import CpuSim

    cfg, _ = parse(argv, prog="launch.py inspect")
    print(inspect(CpuSim(cfg).shape()))
    return 0


def _launch(argv: List[str]) -> int:
    cfg, args = parse(argv)
    address = args.address or os.environ.get("RAY_ADDRESS") or None
    if not address and cfg.platform in (None, "cpu-sim"):
        # An embedded cluster can only simulate: settle the shape now, before Ray starts.
        from ymxb.budget import check_fits
        from ymxb.platforms import CpuSim

        cfg = CpuSim(cfg).shape()
        check_fits(cfg)  # every host is a process on this machine
    if args.dump_data:
        _check_writable(args.dump_data)
    return _run(cfg, address, args)


def _run(cfg: Config, address: Optional[str], args) -> int:
    from ymxb.launcher import run_hosts

    log = lambda line: print(line, file=sys.stderr, flush=True)
    started = time.perf_counter()
    with _stdout_kept_for_result() as out, _sigterm_as_interrupt() as signals:
        try:
            with ray_cluster(address, log):
                run = run_hosts(cfg, log)
        except HostFailure as err:
            log(f"launch.py: error: {err}")
            return EXIT_FAILED
        except KeyboardInterrupt:
            if signals.terminated:
                log("launch.py: terminated; all hosts stopped")
                return EXIT_TERMINATED
            log("launch.py: interrupted; all hosts stopped")
            return EXIT_INTERRUPTED
        cfg = run["config"]  # with the platform's slice shape
        if args.dump_data:
            x, y = data.global_dataset(cfg)
            with open(args.dump_data, "wb") as f:  # a file object: np.savez adds no suffix
                np.savez(f, x=x, y=y)
        result = report.build(cfg, run, time.perf_counter() - started)
        print(report.to_json(result) if args.json else report.summary(result), file=out, flush=True)
    return EXIT_VERIFIED if result["verified"] else EXIT_NOT_VERIFIED


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM is handled as Ctrl-C is (every host stopped), then said apart by `.terminated`.
    A flag, not an exception type: Ray re-raises a KeyboardInterrupt of its own from ray.get."""
    signals = types.SimpleNamespace(terminated=False)

    def handler(signum, frame):
        signals.terminated = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield signals
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _stdout_kept_for_result():
    """Stdout carries the result alone: whatever else writes to file descriptor 1 while the
    run lasts (Ray's "(raylet) ..." lines, processes Ray starts) goes to stderr instead.
    Yields a file for the real stdout."""
    sys.stdout.flush()
    kept = os.dup(1)
    os.dup2(2, 1)
    try:
        with os.fdopen(os.dup(kept), "w") as out:
            yield out
    finally:
        sys.stdout.flush()
        os.dup2(kept, 1)
        os.close(kept)


def _check_writable(path: str) -> None:
    """Fail before the run, not after it, when --dump-data cannot be written as given."""
    if os.path.isdir(path):
        raise UsageError(f"--dump-data {path!r} is a folder; give a file path such as {os.path.join(path, 'data.npz')!r}")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise UsageError(f"cannot write --dump-data {path!r}: {err.strerror} ({folder}); "
                         f"choose a path in a writable folder") from None
