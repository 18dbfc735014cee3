"""Names used across ymxb, each spelled once: how the tool speaks, its exit codes, the labels a
TPU VM registers with Ray, and the environment variables ymxb reads or sets."""

PROG = "launch.py"

# launch.py's exit codes.
EXIT_VERIFIED = 0  # every trial verified
EXIT_NOT_VERIFIED = 1  # trained, but not verified: a result, not a crash
EXIT_FAILED = 2  # bad usage, or a failed launch
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

# Test-only, unset in normal runs (forwarded to the hosts by the launcher).
# Faults separated by commas, each "<kind>:<host index, or all>:<phase>[:<seconds>]": "die" and
# "hang" make a real host really die or hang; "slow:all:train:S" starts each compiled call S
# seconds late (a run as slow as a test needs, on any machine).
FAULT_ENV = "YMXB_TEST_FAULT"
# With it, a path: a die or hang fault strikes once, in the first process to create that file.
FAULT_ONCE_ENV = "YMXB_TEST_FAULT_ONCE"
# "K": the hosts of any platform use K CPU devices instead of their chips, so placement on a
# pretend TPU/GPU cluster can be tested end to end on a machine without them.
TEST_CPU_DEVICES_ENV = "YMXB_TEST_CPU_DEVICES"
# A path: the driver appends a JSON line listing the hosts of each slice it brings up (who and
# where: pid, node), so a test knows the processes of a run without reading its human lines.
HOSTS_FILE_ENV = "YMXB_TEST_HOSTS_FILE"
# Bytes: the memory this machine has available, as the budget sees it (a smaller machine, so a
# program too large for it can be tested without filling this one).
MEMORY_ENV = "YMXB_TEST_MEMORY_AVAILABLE"


def said(text: str) -> str:
    """A line of the tool's own, as the user reads it: `launch.py: text`."""
    return f"{PROG}: {text}"
