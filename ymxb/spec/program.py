"""A user's own program as `launch.py run` names it, checked before any host starts: a script
(a file, run as `__main__`) or `package.module:FUNCTION` (called with no arguments)."""

import inspect
import os
from typing import Optional, Sequence

from ymxb.errors import UsageError, first_line
from ymxb.protocol import UserCall
from ymxb.spec import registry


def user_call(target: str, argv: Sequence[str], checkpoint_dir: Optional[str] = None) -> UserCall:
    """The call every host makes of `target`; UsageError, in one line, where it names no
    script that compiles, nor a function that takes no arguments."""
    folder = os.getcwd()
    ckpt = os.path.abspath(checkpoint_dir) if checkpoint_dir else None
    if os.path.isfile(target) or ":" not in target:
        return UserCall(target, tuple(argv), _source(target), folder, checkpoint_dir=ckpt)
    if argv:
        raise UsageError(f"{target}: a function takes no arguments (those after --); run a script to pass them")
    _function(target)
    return UserCall(target, (), None, folder, checkpoint_dir=ckpt)


def _source(path: str) -> str:
    if not os.path.isfile(path):
        raise UsageError(f"no such script: {path} (give a Python file, or package.module:FUNCTION)")
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
        compile(source, path, "exec")
    except SyntaxError as err:
        raise UsageError(f"{path}:{err.lineno}: {err.msg} (the script does not compile)") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UsageError(f"cannot read the script {path}: {first_line(err, 200)}") from None
    return source


def _function(target: str) -> None:
    module_name, _, name = target.partition(":")
    if not module_name or not name:
        raise UsageError(f"{target!r}: give package.module:FUNCTION, or a script's path")
    found = registry.named(module_name, name, target)
    if not callable(found) or isinstance(found, type):
        raise UsageError(f"{target}: {name} is not a function (it is a {type(found).__name__})")
    try:
        inspect.signature(found).bind()
    except TypeError:
        raise UsageError(f"{target}: the function takes arguments; give one that takes none") from None
    except ValueError:  # no signature to read (a builtin): let it be called
        pass
