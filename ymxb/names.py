"""Names used across ymxb, each spelled once: how the tool speaks, its exit codes, the labels a
TPU VM registers with Ray, and the environment variables ymxb reads or sets.
Test hooks' names are in ymxb/testing/."""

PROG = "launch.py"

# launch.py's exit codes.
EXIT_VERIFIED = 0  # every trial verified
EXIT_NOT_VERIFIED = 1  # trained, but not verified: a result, not a crash
EXIT_FAILED = 2  # bad usage, or a failed launch
EXIT_RAISED = 1  # launch.py run: a host's program raised
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # 128 + SIGINT, 128 + SIGTERM

# Node labels a TPU VM registers (Ray's ray._raylet.RAY_NODE_TPU_*_KEY; a test checks them).
TPU_SLICE_LABEL = "ray.io/tpu-slice-name"
TPU_WORKER_LABEL = "ray.io/tpu-worker-id"
TPU_POD_TYPE_LABEL = "ray.io/tpu-pod-type"
TPU_TOPOLOGY_LABEL = "ray.io/tpu-topology"
ACCELERATOR_LABEL = "ray.io/accelerator-type"

# Ray's: "token" where the cluster checks its token (a client must say so before importing ray).
AUTH_MODE_ENV = "RAY_AUTH_MODE"
# What multislice JAX on TPU reads (libtpu's megascale runtime): where the slices meet, how many
# there are, which one this host is in. Ray's own helper names them (get_tpu_coordinator_env_vars).
MEGASCALE_PREFIX = "MEGASCALE_"
# "K": a pretend slice (ymxb.ops.testbed, a fake cluster): the hosts of any platform use K CPU
# devices instead of their chips, so a TPU or GPU slice's placement runs end to end without them.
CPU_DEVICES_ENV = "YMXB_CPU_DEVICES"

# What JAX's runtime raises when a collective or the distributed service fails (a peer went):
# the slice's failure, which a restart may mend, not the program's.
RUNTIME_ERRORS = ("JaxRuntimeError", "XlaRuntimeError")


def launch_line(text: str) -> str:
    """A line of the tool's own, as the user reads it: `launch.py: text`."""
    return f"{PROG}: {text}"
