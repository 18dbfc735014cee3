#!/usr/bin/env python3
"""Train every mode on this machine's accelerator as one JAX process and verify each result.

    python benchmarks/accelerator_check.py            # GPU or TPU host; prints one line a mode

The path a host actor takes on a real GPU/TPU node, without Ray: jax.distributed.initialize
(one process), then ymxb.train.train_host on every local device, then the normal-equation
check. Exits 1 if any mode misses the solution.
"""

import socket
import sys
import time

import jax


def main() -> int:
    import numpy as np

    from ymxb.spec import builtin, data
    from ymxb.results import checks as verify
    from ymxb.spec.settings import Program, SliceSpec, TrialSpec
    from ymxb.host.train import train_host

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=1, process_id=0,
                               initialization_timeout=60)
    k = jax.local_device_count()
    print(f"# {k} x {jax.devices()[0].device_kind} ({jax.devices()[0].platform}), jax {jax.__version__}")
    failed = 0
    for model in ("pure", "haiku"):
        for parallel in ("pmap", "sharding"):
            for ensemble in (0, 512 * k):
                cfg = TrialSpec.resolve(model=model, parallel=parallel, ensemble=ensemble)
                started = time.perf_counter()
                result = train_host(Program.of(SliceSpec(hosts=1, devices_per_host=k), [cfg]))
                solution = np.array(builtin.normal_equation(*data.global_dataset(cfg, 1)))
                params = [(str(e), p) for e, p in zip(result.entry.tolist(), result.params)]
                show = lambda p: {"m": float(p[0]), "b": float(p[1])}
                check, error = verify.check_solution(params, solution, cfg.tol, show)
                failed += not check.ok
                print(f"{model:<6} {parallel:<9} E={ensemble:<5} {'ok  ' if check.ok else 'FAIL'} "
                      f"max |error| {error:.2e}  collective devices {result.collective_devices}  "
                      f"{time.perf_counter() - started:.1f} s", flush=True)
    jax.distributed.shutdown()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
