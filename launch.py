#!/usr/bin/env python3
"""Fit y = m*x + b across every host of a slice, one Ray actor per host; verify the result.

    pip install -e . && python launch.py                   # embedded Ray, 4 simulated hosts x 2 devices
    python launch.py --hosts 3 --devices-per-host 2 --json --dump-data d.npz
    python launch.py --address HEAD_IP:6379                # an existing Ray cluster (or set RAY_ADDRESS)
    python launch.py --help
"""

import sys

from ymxb.cli import main

if __name__ == "__main__":
    sys.exit(main())
