"""Every private API of Ray that ymxb uses, in one place, each with why and the Ray version it
was read in (2.60.0; pyproject.toml keeps Ray below 2.61). tests/test_ray_internals.py checks
that each is still there with the shape used here, so an upgrade fails in CI, not in a run.
Public Ray APIs (ray.init, ray.nodes, placement groups, ray.util.tpu) are used where they are
needed, not here.
"""

import importlib.util
import json
import time
from typing import Dict, Optional, Tuple

# What Ray's check for the dashboard's dependencies imports (ray/dashboard/optional_deps.py).
DASHBOARD_DEPS = ("aiohttp", "aiohttp_cors", "grpc", "opencensus", "opentelemetry",
                  "prometheus_client", "pydantic")
# How often to ask the GCS whether a new head's raylet has registered.
NODE_POLL_S = 0.05


# --- The embedded head (ray_cluster.py) ---

def keep_on_loopback() -> None:
    """Have an embedded cluster bind to 127.0.0.1 even if ray was imported before
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set: Ray reads the variable once, into
    ray_constants.ENABLE_RAY_CLUSTER (ray/_private/ray_constants.py)."""
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def start_head(temp_dir: str, params: Dict[str, object], system_config: Dict[str, object]):
    """Start a Ray head node on this machine as ray.init() starts a cluster of its own (token
    auth on by default, the token made if missing), with RayParams `params` and
    `system_config`, less the API server, and with two waits of Ray's cut short (below).
    Returns Ray's Node (its `.address`; `.kill_all_processes` stops it)."""
    from ray._private import ray_constants
    from ray._private import utils as ray_utils
    from ray._private.authentication import authentication_token_setup as auth
    from ray._private.node import Node
    from ray._private.parameter import RayParams

    # ray.init()'s own token set-up for a cluster it starts (worker.py, init).
    auth.enable_token_auth_by_default()
    auth.ensure_token_if_auth_enabled(system_config, create_token_if_missing=True)
    ray_params = RayParams(temp_dir=temp_dir, _system_config=system_config, **params)

    class Head(Node):
        def start_api_server(self, **options):
            """Not started (ray_cluster.py says why)."""

        def start_raylet(self, *args, **kwargs):
            # Ray imports the dashboard's dependencies here (slow, before the raylet starts)
            # only to learn whether they are installed, for the agent's --minimal flag
            # (services.start_raylet looks the check up on the module each time).
            check = ray_utils.get_dashboard_dependency_error
            ray_utils.get_dashboard_dependency_error = _dashboard_dependency_error
            try:
                super().start_raylet(*args, **kwargs)
            finally:
                ray_utils.get_dashboard_dependency_error = check

        def start_ray_processes(self):
            super().start_ray_processes()
            # Node then waits for the raylet to register, asking the GCS once a second (half a
            # second lost on average): ask every NODE_POLL_S first, so its first question finds it.
            raylet = self.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process
            deadline = time.monotonic() + 30  # then Node's own wait says what went wrong
            gcs = self.get_gcs_client()
            while (self._node_id not in {n.hex() for n in gcs.get_all_node_info(timeout=5)}
                   and raylet.poll() is None and time.monotonic() < deadline):
                time.sleep(NODE_POLL_S)

    return Head(ray_params, head=True, shutdown_at_exit=False, spawn_reaper=True, ray_init_cluster=True)


def _dashboard_dependency_error() -> Optional[ImportError]:
    """Ray's check that the dashboard's dependencies are installed, by finding them, not
    importing them."""
    missing = [name for name in DASHBOARD_DEPS if importlib.util.find_spec(name) is None]
    return ImportError(f"No module named {missing[0]!r}") if missing else None


def quiet_token_warning() -> None:
    """Ray warns on every start that token auth is on; ymxb chose it (ray_cluster.py)."""
    import logging

    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)


# --- A failed host's log (supervisor.py) ---

def logs_dir() -> Optional[str]:
    """The log folder of the Ray node this driver runs on (ray._private.worker._global_node);
    None where the driver runs on none (a client of a remote cluster)."""
    from ray._private import worker

    node = worker._global_node
    return node.get_logs_dir_path() if node is not None else None


# --- What the autoscaler reports (autoscaler_state.py) ---

def autoscaler_report(gcs_address: str) -> Tuple[str, object]:
    """The connected cluster's autoscaler report, as the running autoscaler writes it, and
    which it is: ("v2", ray.autoscaler.v2.schema.ClusterStatus), or ("v1", (its status dict
    from the GCS's KV, as `ray status` reads it, or {}; its last error, or None)). Read as
    Ray 2.60's `ray status` reads them (scripts.py, autoscaler/_private/commands.py)."""
    from ray._private import ray_constants
    from ray.autoscaler.v2.utils import is_autoscaler_v2
    from ray.experimental.internal_kv import _internal_kv_get

    if is_autoscaler_v2(fetch_from_server=True):
        from ray.autoscaler.v2.sdk import get_cluster_status

        return "v2", get_cluster_status(gcs_address)
    status = json.loads(_internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS) or b"{}")
    error = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_ERROR)
    return "v1", (status, error.decode(errors="replace") if error is not None else None)


# --- Cluster configs as `ray up` reads them (clusterconfig.py) ---

def prepare_config(cfg: dict) -> dict:
    """Ray's own defaults merged into a cluster config (autoscaler/_private/util.py)."""
    from ray.autoscaler._private.util import prepare_config as prepare

    return prepare(cfg)


def merge_setup_commands(cfg: dict) -> dict:
    """Setup commands merged per node kind, as `ray up` merges them (autoscaler/_private/util.py)."""
    from ray.autoscaler._private.util import merge_setup_commands as merge

    return merge(cfg)


def validate_config(cfg: dict) -> None:
    """Ray's cluster schema check (autoscaler/_private/util.py); raises what it finds."""
    from ray.autoscaler._private.util import validate_config as validate

    validate(cfg)


def as_ssh_runs(command: str) -> list:
    """A command wrapped as Ray's SSH command runner runs it on a node: a login shell, with
    ~/.bashrc sourced (autoscaler/_private/command_runner.py _with_interactive)."""
    from ray.autoscaler._private.command_runner import _with_interactive

    return _with_interactive(command)


def is_tpu_pod_type(pod_type: str) -> bool:
    """Whether `pod_type` (v4-16, v6e-8, ...) is a TPU pod type Ray knows
    (ray/_private/accelerators/tpu.py TPUAcceleratorManager)."""
    from ray._private.accelerators.tpu import TPUAcceleratorManager

    return TPUAcceleratorManager.is_valid_tpu_accelerator_type(pod_type)


def tpu_chips_per_host(pod_type: str) -> int:
    """The chips each host of a `pod_type` slice has, as Ray's TPU accelerator manager counts
    them: 4, or all of a one-host v5e or v6e slice's (v6e-8: 8)."""
    from ray._private.accelerators.tpu import get_num_tpu_visible_chips_per_host

    return get_num_tpu_visible_chips_per_host(pod_type)
