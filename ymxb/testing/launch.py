"""`python -m ymxb.testing.launch ARGS`: launch.py ARGS with the test hooks of the YMXB_TEST_*
variables installed (ymxb/testing/__init__.py)."""

import sys

from ymxb import cli, testing

if __name__ == "__main__":
    testing.install()
    sys.exit(cli.main())
