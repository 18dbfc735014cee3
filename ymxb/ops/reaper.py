"""A watchdog that outlives the driver by moments: nothing of an embedded run survives it.

Ray's own clean-up covers a driver that ends normally, but when the driver is SIGKILLed its
raylet's DashboardAgent and RuntimeEnvAgent linger (parent pid 1) for minutes, listening.
These processes rename themselves (`ray::DashboardAgent`), so they cannot be found by their
command line afterwards; the reaper instead notes every descendant of the driver while the
driver lives, and when the driver's pipe closes (however it ended), SIGKILLs those still
there: by pid *and* start time, so a recycled pid is never touched. Only then, if the driver
said the run ended cleanly, it removes the run's Ray folder.

    python -m ymxb.ops.reaper DRIVER_PID RAY_TEMP_DIR    # stdin: the driver's pipe
"""

import os
import select
import shutil
import signal
import sys
import time
from typing import Dict, List, Set, Tuple

SCAN_S = 0.25  # how often the descendants are listed while the driver lives
CLEAN = b"clean"  # what the driver writes before closing the pipe after a clean run

Proc = Tuple[int, str]  # (pid, start time): a process, never confused with a later one


def watch(driver: int, temp_dir: str, pipe: int = 0) -> None:
    """Note the driver's descendants until `pipe` closes; then kill them (and tidy up)."""
    seen: Set[Proc] = set()
    said = b""
    while True:
        seen |= descendants(driver)
        ready, _, _ = select.select([pipe], [], [], SCAN_S)
        if ready:
            chunk = os.read(pipe, 64)
            if not chunk:
                break
            said += chunk
    kill(seen)
    if said.strip() == CLEAN:
        shutil.rmtree(temp_dir, ignore_errors=True)


def descendants(root: int) -> Set[Proc]:
    """Every living descendant of `root`, each as (pid, start time)."""
    children: Dict[int, list] = {}
    for pid in _pids():
        stat = _stat(pid)
        if stat:
            children.setdefault(int(stat[1]), []).append((pid, stat[19]))
    found, stack = set(), [root]
    while stack:
        for proc in children.get(stack.pop(), []):
            found.add(proc)
            stack.append(proc[0])
    return found


def kill(procs: Set[Proc], wait_s: float = 5.0) -> None:
    """SIGKILL each process that is still the one noted, and wait (bounded) for it to go."""
    mine = os.getpid()
    for pid, start in procs:
        if pid != mine and start_time(pid) == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and any(start_time(p) == s for p, s in procs if p != mine):
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie is gone in all but name)."""
    return _stat(pid) is not None


def wait_gone(pids: List[int], within_s: float) -> List[int]:
    """Those of `pids` still alive after waiting up to `within_s` for them to go."""
    deadline = time.monotonic() + within_s
    while True:
        pids = [p for p in pids if alive(p)]
        if not pids or time.monotonic() >= deadline:
            return pids
        time.sleep(0.02)


def _pids():
    return (int(name) for name in os.listdir("/proc") if name.isdigit())


def _stat(pid: int):
    """Fields 3.. of /proc/PID/stat (state, ppid, ...), or None when the process is gone or a
    zombie (gone in all but name)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields


def start_time(pid: int):
    """When process `pid` started, in clock ticks since boot (with its pid, what names one
    process for good: pids are reused); None if it is gone."""
    stat = _stat(pid)
    return stat[19] if stat else None


if __name__ == "__main__":
    # Ctrl-C reaches the whole process group: the reaper must live on to do its job.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    watch(int(sys.argv[1]), sys.argv[2])
