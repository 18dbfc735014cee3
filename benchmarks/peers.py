"""ymxb's `launch.py run` side by side with its peers (#31): one user program
(benchmarks/peers_program.py, a fixed amount of work on 4 hosts x 2 CPU devices) run

- as bare `jax.distributed` processes (the floor: no launcher at all),
- under Ray Train's JaxTrainer (Ray 2.60, train v2; on CPU it does not join the workers, so
  the loop calls `jax.distributed.initialize` itself, from a port the driver picks), and
- under `python launch.py run`,

alternating round by round. Printed: each launcher's whole-process wall time (from starting its
command to its exit, Ray's start included) as the median over rounds and as ratios; then, for
JaxTrainer and for ymxb, the time from one host's SIGKILL (after its first step) to a message
naming the failure, and that message.

    pip install -e '.[bench]'
    python benchmarks/peers.py [--steps 400] [--rounds 3] [--kills 2]
"""

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HOSTS, DEVICES = 4, 2
KILLED = 1  # the host (process index, worker rank) the kill rounds kill
LONG = 10 ** 6  # steps of a run that is killed long before it ends
CPU_ENV = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES}",
           "PYTHONPATH": str(HERE)}


class Started:
    """Processes started together, each output line kept with the time it arrived."""

    def __init__(self, commands: list[list[str]]):
        env = {**os.environ, **CPU_ENV}
        self.started = time.perf_counter()
        self.procs = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, start_new_session=True)
                      for c in commands]
        self.lines: list[tuple[float, str]] = []
        self.readers = [threading.Thread(target=self._read, args=(p,), daemon=True) for p in self.procs]
        for reader in self.readers:
            reader.start()

    def _read(self, proc):
        for line in proc.stdout:
            self.lines.append((time.perf_counter(), line.rstrip()))

    def wait(self, timeout: float) -> float:
        """Seconds from the start to the last exit; a run past `timeout` is killed and fails."""
        deadline = self.started + timeout
        for proc in self.procs:
            try:
                proc.wait(max(1.0, deadline - time.perf_counter()))
            except subprocess.TimeoutExpired:
                self.kill()
                sys.exit(f"{proc.args[:4]} ran past {timeout:.0f} s:\n{self.output()[-3000:]}")
        ended = time.perf_counter()
        for reader in self.readers:
            reader.join(10)
        return ended - self.started

    def first(self, pattern: str, after: float, timeout: float) -> tuple[float, str]:
        """The first line after `after` that matches, and when it came."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            for when, line in list(self.lines):
                if when >= after and re.search(pattern, line):
                    return when, line
            time.sleep(0.05)
        self.kill()
        sys.exit(f"no line matched {pattern!r} within {timeout:.0f} s:\n{self.output()[-3000:]}")

    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def kill(self):
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bare(steps: int, mark: str) -> list[list[str]]:
    address = f"127.0.0.1:{free_port()}"
    return [[sys.executable, str(HERE / "peers_program.py"), "--join", address, str(HOSTS), str(i),
             "--steps", str(steps), "--mark", mark] for i in range(HOSTS)]


def jaxtrainer(steps: int, mark: str) -> list[list[str]]:
    return [[sys.executable, __file__, "--as-jaxtrainer", str(steps), mark]]


def ymxb(steps: int, mark: str) -> list[list[str]]:
    return [[sys.executable, "launch.py", "run", "benchmarks/peers_program.py", "--hosts", str(HOSTS),
             "--devices-per-host", str(DEVICES), "--", "--steps", str(steps), "--mark", mark]]


LAUNCHERS = {"bare processes": bare, "JaxTrainer": jaxtrainer, "launch.py run": ymxb}
NAMED = {"JaxTrainer": r"^failed: ", "launch.py run": rf"error: .*\bhost {KILLED} \("}


def run_jaxtrainer(steps: int, mark: str):
    """This process as JaxTrainer's driver: Ray started here, 4 workers, the loop joins JAX."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.v2.jax import JaxTrainer

    def loop(config):
        import ray.train

        import peers_program
        peers_program.join(config["coordinator"], HOSTS, ray.train.get_context().get_world_rank())
        digest = peers_program.train(config["steps"], config["mark"])
        if ray.train.get_context().get_world_rank() == 0:  # JaxTrainer hands back no return value
            Path(config["mark"], "said").write_text(peers_program.said(digest))

    ray.init(include_dashboard=False, log_to_driver=False)
    trainer = JaxTrainer(loop, train_loop_config={"coordinator": f"127.0.0.1:{free_port()}",
                                                  "steps": steps, "mark": mark},
                         scaling_config=ScalingConfig(num_workers=HOSTS, resources_per_worker={"CPU": 0.01}),
                         run_config=RunConfig(storage_path=tempfile.mkdtemp(prefix="peers-train-")))
    try:
        trainer.fit()
    except Exception as e:  # what a JaxTrainer user is told when a worker dies
        print(f"failed: {type(e).__name__}: {' '.join(str(e).split())[:400]}", flush=True)
        sys.exit(1)
    print(Path(mark, "said").read_text(), flush=True)


def timed(rounds: int, steps: int) -> dict[str, list[float]]:
    seconds = {name: [] for name in LAUNCHERS}
    digests = set()
    for r in range(rounds):
        for name, commands in LAUNCHERS.items():
            with tempfile.TemporaryDirectory() as mark:
                run = Started(commands(steps, mark))
                wall = run.wait(timeout=600)
            if any(proc.returncode for proc in run.procs):
                sys.exit(f"{name} failed:\n{run.output()[-3000:]}")
            digests.add(re.search(r"params \w+ on \d+ devices", run.output()).group(0))
            seconds[name].append(wall)
            print(f"round {r + 1}: {name:>15} {wall:6.1f} s", flush=True)
    if len(digests) != 1:
        sys.exit(f"the launchers trained different params: {sorted(digests)}")
    return seconds


def killed(name: str) -> tuple[float, float, str]:
    """Kill host KILLED after its first step: seconds to the message naming it, seconds to the
    run's exit, and the message."""
    with tempfile.TemporaryDirectory() as mark:
        run = Started(LAUNCHERS[name](LONG, mark))
        pid_file = Path(mark, str(KILLED))
        deadline = time.perf_counter() + 300
        while not pid_file.exists() or not pid_file.read_text():
            if time.perf_counter() > deadline or run.procs[0].poll() is not None:
                run.kill()
                sys.exit(f"{name}: host {KILLED} never finished a step:\n{run.output()[-3000:]}")
            time.sleep(0.05)
        at = time.perf_counter()
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        when, message = run.first(NAMED[name], after=at, timeout=300)
        ended = run.wait(timeout=300 + (at - run.started)) + run.started
    return when - at, ended - at, message


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=400, help="training steps of the timed runs")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds, each launcher once a round")
    p.add_argument("--kills", type=int, default=2, help="kill rounds, JaxTrainer and ymxb once a round")
    p.add_argument("--as-jaxtrainer", nargs=2, metavar=("STEPS", "MARK"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.as_jaxtrainer:
        return run_jaxtrainer(int(args.as_jaxtrainer[0]), args.as_jaxtrainer[1])
    print(f"# {HOSTS} hosts x {DEVICES} CPU devices, {args.steps} steps, {args.rounds} rounds", flush=True)
    seconds = timed(args.rounds, args.steps)
    floor, peer = (statistics.median(seconds[n]) for n in ("bare processes", "JaxTrainer"))
    for name, walls in seconds.items():
        ours = statistics.median(walls)
        rounds = " ".join(f"{w / b:.2f}" for w, b in zip(walls, seconds["bare processes"]))
        print(f"{name:>15}: median {ours:6.1f} s  {ours / floor:5.2f}x bare  {ours / peer:5.2f}x JaxTrainer"
              f"  (x bare, round by round: {rounds})")
    for r in range(args.kills):
        for name in NAMED:
            named, ended, message = killed(name)
            print(f"kill {r + 1}: {name:>13} named in {named:5.1f} s, exited {ended:5.1f} s after the kill: "
                  f"{message[:300]}", flush=True)


if __name__ == "__main__":
    main()
