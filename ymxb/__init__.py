"""ymxb: run JAX training across the hosts of a (real or simulated) slice, on Ray.

A task of your own subclasses `Task` (see ymxb/spec/tasks.py): `from ymxb import Metric, Model, Setting, Task`.
A program of your own (`launch.py run`) may call `ymxb.report`, `ymxb.attempt`, `ymxb.checkpoint_dir`.
"""

__version__ = "0.1.0"

from ymxb.context import attempt, checkpoint_dir, report  # noqa: E402  (a user program's API)
from ymxb.spec.tasks import Metric, Model, Reference, Setting, Task  # noqa: E402  (the task protocol)

__all__ = ["Metric", "Model", "Reference", "Setting", "Task", "__version__", "attempt", "checkpoint_dir", "report"]
