"""A user's task module that cannot be imported (tests/test_tasks.py)."""

RATE = 1 / 0
