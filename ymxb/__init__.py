"""ymxb: fit y = m*x + b with JAX across the hosts of a (real or simulated) slice, on Ray."""

__version__ = "0.1.0"
