#!/usr/bin/env python3
"""Fit y = m*x + b across every host of a slice, one Ray actor per host; verify the result.

    pip install -e . && python launch.py                   # embedded Ray, 4 simulated hosts x 2 devices
    python launch.py --hosts 3 --devices-per-host 2 --json --dump-data d.npz
    python launch.py --address HEAD_IP:6379                # an existing Ray cluster (or set RAY_ADDRESS)
    python launch.py --help
"""

import os
import sys

from ymxb.cli import main

if __name__ == "__main__":
    code = main()
    # Everything is written and every process of the run is gone: skip the interpreter's
    # teardown of Ray's and gRPC's modules (0.2-0.3 s at the end of every run).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
