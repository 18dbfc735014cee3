"""Command line: parse and validate flags, bring up (or connect to) Ray, run, verify, report.

Exit codes: 0 verified, 1 trained but not verified, 2 bad usage or a failed launch.
"""

import argparse
import contextlib
import json
import logging
import os
import socket
import sys
import time
from typing import List, Optional

import numpy as np

from ymxb import config, data, report
from ymxb.config import Config, UsageError

EXIT_VERIFIED, EXIT_NOT_VERIFIED, EXIT_FAILED = 0, 1, 2
DEFAULTS = Config()


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit code 2), not the whole usage block."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def _parser(prog: str) -> argparse.ArgumentParser:
    p = _Parser(
        prog=prog,
        description="Fit y = m*x + b with JAX on every host of a slice, one Ray actor per host, "
                    "and verify the result against the normal equation. With no cluster it "
                    "simulates one: N local processes, each a host with K CPU devices.",
        epilog="`launch.py inspect [flags]` prints, instead of training, the jaxpr, vmapped axes, "
               "collectives and compiled cost of one step for those flags (one process, no cluster). "
               "Exit codes: 0 verified, 1 trained but not verified, 2 bad usage or failed launch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = DEFAULTS
    g = p.add_argument_group("slice")
    g.add_argument("--hosts", type=int, default=d.hosts, help="hosts (JAX processes), one Ray actor each")
    g.add_argument("--devices-per-host", type=int, default=d.devices_per_host,
                   help="local devices per host (simulated CPU devices in cpu-sim)")
    g.add_argument("--platform", default=d.platform,
                   help=f"one of {', '.join(config.PLATFORMS)}; default: detect from the Ray cluster")
    g = p.add_argument_group("data: y = m*x + b + noise, x ~ U(-1, 1)")
    g.add_argument("--true-m", type=float, default=d.true_m, help="slope of the generating line")
    g.add_argument("--true-b", type=float, default=d.true_b, help="intercept of the generating line")
    g.add_argument("--noise", type=float, default=d.noise, help="std of the Gaussian noise on y")
    g.add_argument("--seed", type=int, default=d.seed, help="seed of the data and the initial params")
    g.add_argument("--samples-per-host", type=int, default=d.samples_per_host,
                   help="points each host generates; split evenly over its devices")
    g = p.add_argument_group("training (full-batch gradient descent on the mean squared error)")
    g.add_argument("--model", default=d.model, help=f"one of {', '.join(config.MODELS)}")
    g.add_argument("--optimizer", default=d.optimizer,
                   help=f"optax optimiser, one of {', '.join(config.OPTIMIZERS)}: sgd and adam "
                        "converge at the defaults, adagrad wants --lr 0.5, and rmsprop at a constant "
                        "lr hovers near the solution (and may not verify)")
    g.add_argument("--lr", type=float, default=d.lr, help="learning rate")
    g.add_argument("--steps", type=int, default=d.steps, help="training steps in total")
    g.add_argument("--steps-per-call", type=int, default=d.steps_per_call,
                   help="steps fused into one compiled call (lax.scan); hosts block between calls")
    g.add_argument("--parallel", default=d.parallel,
                   help="pmap (pmap over local devices, collectives across hosts) or sharding "
                        "(jit over a global Mesh)")
    g.add_argument("--ensemble", type=int, default=d.ensemble,
                   help="train E independent members at once, split over all devices of all hosts "
                        "(E must divide by hosts x devices); 0: one data-parallel model")
    g = p.add_argument_group("launch and output")
    g.add_argument("--address", default=None,
                   help="Ray cluster to join (default: $RAY_ADDRESS, else start an embedded local one)")
    g.add_argument("--timeout", type=float, default=d.timeout,
                   help="seconds each phase (placement, jax.distributed.initialize, training) may take "
                        "before the run fails, naming the hosts that died or hung")
    g.add_argument("--tol", type=float, default=d.tol,
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
        if argv[:1] == ["inspect"]:
            from ymxb.introspect import inspect

            cfg, _ = parse(argv[1:], prog="launch.py inspect")
            print(inspect(cfg))
            return 0
        cfg, args = parse(argv)
        if args.dump_data:
            _dump(cfg, args.dump_data)
        return _run(cfg, args)
    except UsageError as err:
        print(f"launch.py: error: {err}", file=sys.stderr)
        return EXIT_FAILED


def _run(cfg: Config, args) -> int:
    from ymxb.launcher import HostFailure, run_hosts

    log = lambda line: print(line, file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        with ray_cluster(args.address):
            run = run_hosts(cfg, log)
    except HostFailure as err:
        log(f"launch.py: error: {err}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        log("launch.py: interrupted; all hosts stopped")
        return 130
    result = report.build(cfg, run, time.perf_counter() - started)
    print(json.dumps(result, indent=1) if args.json else report.summary(result))
    return EXIT_VERIFIED if result["verified"] else EXIT_NOT_VERIFIED


@contextlib.contextmanager
def ray_cluster(address: Optional[str]):
    """Connect to `address` (or $RAY_ADDRESS), else start an embedded Ray that ends with us.

    The embedded cluster keeps Ray's token authentication on (the default since 2.50); Ray
    reads the token from, or writes it to, ~/.ray/auth_token.
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    quiet = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        _check_reachable(address)
        ray.init(address=address, **{k: v for k, v in quiet.items() if k != "include_dashboard"})
    else:
        # Ray warns on every start that token auth is on; we chose it (see above): no warning.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        ray.init(**quiet)
    try:
        yield
    finally:
        ray.shutdown()


def _check_reachable(address: str) -> None:
    """Fail fast, in one line, when nothing listens at a Ray address (ray.init would retry)."""
    if address in ("auto", "local") or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            return
    except (OSError, ValueError) as err:
        raise UsageError(
            f"cannot reach a Ray cluster at --address {address!r} ({err}); start one with "
            f"`ray start --head`, fix the address (host:port of its GCS), or omit --address "
            f"to run on an embedded local cluster") from None


def _dump(cfg: Config, path: str) -> None:
    x, y = data.global_dataset(cfg)
    try:
        np.savez(path, x=x, y=y)
    except OSError as err:
        raise UsageError(f"cannot write --dump-data {path!r}: {err.strerror}") from None
