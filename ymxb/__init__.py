"""ymxb: run JAX training across the hosts of a (real or simulated) slice, on Ray.

A task of your own subclasses `Task` (see ymxb/spec/tasks.py): `from ymxb import Model, Setting, Task`.
"""

__version__ = "0.1.0"

from ymxb.spec.tasks import Model, Reference, Setting, Task  # noqa: E402  (the task protocol)

__all__ = ["Model", "Reference", "Setting", "Task", "__version__"]
