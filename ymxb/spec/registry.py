"""Tasks by name: a built-in one (`ymxb`, the default, or `linreg`), or `package.module:NAME`, a
user's, imported from where Python finds it (the current folder first: Ray gives every host
the driver's folder, so a task found here is found there)."""

import importlib
import os
import sys
from typing import Dict

from ymxb.errors import UsageError, first_line
from ymxb.spec.builtin import Linreg, Ymxb
from ymxb.spec.tasks import Task

DEFAULT = "ymxb"
BUILT_IN: Dict[str, Task] = {t.name: t for t in (Ymxb(), Linreg())}
_LOADED: Dict[str, Task] = {}


def get(name: str) -> Task:
    """The task called `name`: a built-in one, or `package.module:NAME` (an instance, or a class
    made into one). UsageError, in one line, where there is no such task or it is not one."""
    if not isinstance(name, str):
        raise UsageError(f"--task must be a task's name, got {name!r}")
    if name in BUILT_IN:
        return BUILT_IN[name]
    if name not in _LOADED:
        _LOADED[name] = _load(name)
    return _LOADED[name]


def _load(name: str) -> Task:
    module_name, colon, attribute = name.partition(":")
    if not colon or not module_name or not attribute:
        raise UsageError(f"--task {name!r}: not a built-in task ({', '.join(BUILT_IN)}) nor package.module:NAME")
    found = named(module_name, attribute, f"--task {name}")
    task = found() if isinstance(found, type) else found
    if not isinstance(task, Task):
        raise UsageError(f"--task {name}: {attribute} is not a task: make it a subclass of ymxb.Task")
    missing = [m for m in ("shard", "model") if getattr(type(task), m) is getattr(Task, m)
               and not (m == "shard" and task.has_dataset)]
    if missing:
        raise UsageError(f"--task {name}: {attribute} does not say how to make its {' or its '.join(missing)} "
                         f"(define {' and '.join(missing)}: see ymxb.Task)")
    return task


def named(module_name: str, attribute: str, said: str):
    """`module_name.attribute`, imported from this folder as `python -m` would; UsageError in
    one line, starting with `said`, where the module cannot be imported or lacks it."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # whatever the user's module raises on import: say it, in one line
        raise UsageError(f"{said}: cannot import {module_name} ({type(err).__name__}: {first_line(err)})") from None
    found = getattr(module, attribute, None)
    if found is None:
        raise UsageError(f"{said}: {module_name} has no {attribute}")
    return found


def of_config(config) -> Task:
    """The task of a record's flat config (the default task's records do not name it)."""
    return get(config.get("task", DEFAULT))
