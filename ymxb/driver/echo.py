"""A user's own program's output and reports, as the driver shows and keeps them
(`launch.py run`): host 0's stdout as the command's stdout, unprefixed, as on one machine;
every line of every host on stderr, prefixed with its host (`[host 2] ...`); the reports as
progress, and as lines of `metrics.jsonl` in the --out folder; each host's last lines kept, to
show with its failure."""

import collections
import json
import os
import sys
import time
from typing import Deque, Dict, Optional, TextIO

from ymxb.errors import HostFailure
from ymxb.names import launch_line
from ymxb.protocol import Output, Report

TAIL = 20  # lines of each host kept, to show with its failure
PLAIN_PROGRESS_S = 10.0  # stderr not a terminal: a progress line at most this often
METRICS = "metrics.jsonl"


class Echo:
    """`item(host, Output | Report)` as each comes; `failed(failure)` shows the failed host's
    last lines. `stdout`: where host 0's stdout goes (None: to stderr alone, as with --json);
    `quiet_hosts`: on stderr, host 0's lines alone; `out`: the folder for metrics.jsonl."""

    def __init__(self, stdout: Optional[TextIO], stderr: TextIO = None, quiet_hosts: bool = False,
                 out: Optional[str] = None):
        self.stdout, self.stderr, self.quiet_hosts = stdout, stderr or sys.stderr, quiet_hosts
        # Host 0's stdout on stderr too, unless both are one place (a terminal): said once.
        self.stdout_on_stderr = stdout is None or not _same_place(stdout, self.stderr)
        self.tails: Dict[int, Deque[str]] = collections.defaultdict(lambda: collections.deque(maxlen=TAIL))
        self.steps: Dict[int, int] = {}
        self.attempt = 0
        self.metrics = open(os.path.join(out, METRICS), "a") if out else None
        self.bar, self.said = None, 0.0
        if self.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(unit="step", desc="steps (slowest host)", file=self.stderr, dynamic_ncols=True)

    def item(self, host: int, item) -> None:
        if isinstance(item, Output):
            self._lines(host, item)
        elif isinstance(item, Report):
            self._report(host, item)

    def failed(self, failure: HostFailure) -> None:
        """Show the last lines the failed host's program wrote (they may have scrolled away, or
        been left off with --quiet-hosts); the next attempt's reports start afresh."""
        lines = self.tails.get(failure.host) if failure.host is not None else None
        if lines:
            self._err(launch_line(f"the last lines host {failure.host}'s program wrote:"))
            for line in lines:
                self._err(f"  | {line}")
        self.steps.clear()
        self.attempt += 1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.metrics is not None:
            self.metrics.close()

    def _lines(self, host: int, output: Output) -> None:
        self.tails[host].extend(output.lines)
        to_stdout = host == 0 and output.stream == "out" and self.stdout is not None
        if to_stdout:
            self.stdout.write("".join(line + "\n" for line in output.lines))
            self.stdout.flush()
        if (to_stdout and not self.stdout_on_stderr) or (self.quiet_hosts and host != 0):
            return
        for line in output.lines:
            self._err(f"[host {host}] {line}")

    def _report(self, host: int, report: Report) -> None:
        self.steps[host] = report.step
        if self.metrics is not None:
            row = {"host": host, "attempt": self.attempt, "step": report.step, "time": report.at, **report.metrics}
            self.metrics.write(json.dumps(row) + "\n")
            self.metrics.flush()
        slowest = min(self.steps.values())
        if self.bar is not None:
            self.bar.n = slowest
            self.bar.refresh()
        elif time.monotonic() - self.said >= PLAIN_PROGRESS_S:
            self.said = time.monotonic()
            self._err(launch_line(f"at step {slowest} (the slowest host that reports)"))

    def _err(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stderr)
        else:
            print(line, file=self.stderr, flush=True)


def _same_place(a: TextIO, b: TextIO) -> bool:
    """Whether two streams write to one file or terminal."""
    try:
        x, y = os.fstat(a.fileno()), os.fstat(b.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (x.st_dev, x.st_ino) == (y.st_dev, y.st_ino)
