"""A user's own program, run in a host's process once the host has joined the slice
(`launch.py run`): a script as `__main__`, or a function called with no arguments.

The program runs in a thread of its own; what it prints (to sys.stdout and sys.stderr) and
what it reports (ymxb.report) are yielded to the driver as they come, line by line, then how
it ended. jax.distributed is already initialised: the program's own call to
`jax.distributed.initialize()` (as a script written for a pod makes) returns at once.
"""

import contextlib
import io
import os
import pickle
import queue
import runpy
import sys
import tempfile
import threading
import traceback
from typing import Callable, Iterator, List, Union

from ymxb import context
from ymxb.errors import PACKAGE_DIR, first_line, where_raised
from ymxb.names import RUNTIME_ERRORS
from ymxb.protocol import Output, ProgramRaised, Report, UserCall, UserEnd
from ymxb.spec import registry

VALUE_LIMIT = 1 << 20  # bytes of a function's pickled return value
LINE_LIMIT = 10_000  # characters of one line of output
_HERE = (PACKAGE_DIR, runpy.__file__, "<frozen runpy")


def run(call: UserCall, on_step: Callable[[int], None]) -> Iterator[Union[Output, Report, UserEnd]]:
    """Run `call` here; yield its output and reports as they come, then its UserEnd. Raises
    ProgramRaised (its traceback already yielded as stderr lines) if the program raised."""
    feed: "queue.Queue" = queue.Queue()
    ended = {}

    def reported(step: int, metrics: dict, at: float) -> None:
        feed.put(Report(step, metrics, at))
        on_step(step)

    thread = threading.Thread(target=_main, args=(call, ended), name="ymxb-program", daemon=True)
    with _told(call), _captured(feed), _reporting(reported), _joined_already():
        thread.start()
        while thread.is_alive():
            yield from _batched(feed, wait_s=0.1)
        thread.join()
    yield from _batched(feed, wait_s=0)
    if "error" in ended:
        raise ended["error"]
    yield ended["end"]


def _main(call: UserCall, ended: dict) -> None:
    try:
        value = _script(call) if call.is_script else _function(call)()
        ended["end"] = UserEnd(0, _small(value, call.target))
    except SystemExit as done:
        ended["end"] = UserEnd(_exit_code(done.code))
    except BaseException as err:  # the program's, whatever it is: shown as its own
        if type(err).__name__ in RUNTIME_ERRORS:  # crosses as itself: a restart may mend it
            ended["error"] = err
            return
        text = "".join(_own_traceback(err))
        sys.stderr.write(text)
        sys.stderr.flush()
        ended["error"] = ProgramRaised(f"{call.target} raised {type(err).__name__}: "
                                       f"{first_line(err, 300) if str(err).strip() else ''}{where_raised(err)}", text)


def _script(call: UserCall):
    path = call.target if os.path.isfile(call.target) else _shipped(call)
    sys.argv = [call.target, *call.argv]
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))  # as `python script.py` does
    runpy.run_path(path, run_name="__main__")


def _shipped(call: UserCall) -> str:
    """The script's text as the driver sent it, for a host without the driver's folder."""
    path = os.path.join(tempfile.mkdtemp(prefix="ymxb-program-"), os.path.basename(call.target))
    with open(path, "w") as f:
        f.write(call.source)
    return path


def _function(call: UserCall) -> Callable[[], object]:
    module, _, name = call.target.partition(":")
    return registry.named(module, name, call.target)


def _small(value: object, target: str) -> object:
    """`value`, if it pickles small enough to send to the driver."""
    try:
        size = len(pickle.dumps(value))
    except Exception as err:
        raise TypeError(f"{target} returned a {type(value).__name__}, which cannot be pickled "
                        f"({first_line(err, 200)}): return plain data") from None
    if size > VALUE_LIMIT:
        raise ValueError(f"{target} returned {size:,} bytes: return something under {VALUE_LIMIT:,} "
                         f"bytes (write large results to files)")
    return value


def _exit_code(code) -> int:
    """sys.exit(code)'s exit status, as Python's own would be."""
    if code is None:
        return 0
    if isinstance(code, int) and not isinstance(code, bool):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _own_traceback(err: BaseException) -> List[str]:
    """The traceback of `err` as Python prints it, without the frames of ymxb and runpy that
    led to the program."""
    shown = traceback.TracebackException.from_exception(err)
    frames = list(shown.stack)
    while frames and frames[0].filename.startswith(_HERE):
        frames.pop(0)
    shown.stack = traceback.StackSummary.from_list(frames)
    return list(shown.format())


def _batched(feed: "queue.Queue", wait_s: float) -> Iterator[Union[Output, Report]]:
    """What the program said since the last time, consecutive lines of a stream as one Output."""
    items = []
    with contextlib.suppress(queue.Empty):
        items.append(feed.get(timeout=wait_s) if wait_s else feed.get_nowait())
        while True:
            items.append(feed.get_nowait())
    lines, stream = [], None
    for item in items:
        if isinstance(item, Output) and item.stream == stream:
            lines.extend(item.lines)
            continue
        if lines:
            yield Output(stream, tuple(lines))
        lines, stream = [], None
        if isinstance(item, Output):
            lines, stream = list(item.lines), item.stream
        else:
            yield item
    if lines:
        yield Output(stream, tuple(lines))


class _Lines(io.TextIOBase):
    """A text stream that puts each whole line written to it on `feed` as an Output."""

    def __init__(self, stream: str, feed: "queue.Queue"):
        super().__init__()
        self.stream, self.feed, self.partial, self.lock = stream, feed, "", threading.Lock()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:
        return "utf-8"

    def write(self, text: str) -> int:
        with self.lock:
            *whole, self.partial = (self.partial + text).split("\n")
            if whole:
                self.feed.put(Output(self.stream, tuple(_shown(line) for line in whole)))
        return len(text)

    def close_line(self) -> None:
        with self.lock:
            if self.partial:
                self.feed.put(Output(self.stream, (_shown(self.partial),)))
            self.partial = ""


def _shown(line: str) -> str:
    """A line as a terminal leaves it: what follows its last carriage return (a progress bar's)."""
    return line.rstrip("\r").rsplit("\r", 1)[-1][:LINE_LIMIT]


@contextlib.contextmanager
def _captured(feed: "queue.Queue"):
    streams = _Lines("out", feed), _Lines("err", feed)
    kept = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = streams
    try:
        yield
    finally:
        sys.stdout, sys.stderr = kept
        for stream in streams:
            stream.close_line()


@contextlib.contextmanager
def _reporting(reported: Callable[[int, dict, float], None]):
    context._reporter = reported
    try:
        yield
    finally:
        context._reporter = None


@contextlib.contextmanager
def _told(call: UserCall):
    """The program's folder, attempt and checkpoint folder, as `ymxb.context` reads them."""
    kept_cwd, kept_env = os.getcwd(), dict(os.environ)
    if os.path.isdir(call.cwd):
        os.chdir(call.cwd)
    os.environ[context.ATTEMPT_ENV] = str(call.attempt)
    if call.checkpoint_dir:
        os.environ[context.CHECKPOINT_DIR_ENV] = call.checkpoint_dir
    try:
        yield
    finally:
        os.chdir(kept_cwd)
        os.environ.clear()
        os.environ.update(kept_env)


@contextlib.contextmanager
def _joined_already():
    """jax.distributed.initialize and shutdown as the program's own calls: harmless, as the
    host joined before it ran and shuts down after it."""
    import jax

    kept = jax.distributed.initialize, jax.distributed.shutdown
    jax.distributed.initialize = lambda *args, **kwargs: None
    jax.distributed.shutdown = lambda *args, **kwargs: None
    try:
        yield
    finally:
        jax.distributed.initialize, jax.distributed.shutdown = kept
