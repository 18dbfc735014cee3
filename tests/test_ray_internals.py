"""Every Ray internal ymxb touches, still there with the shape it was read in (Ray 2.60): an
upgrade that moves one fails here, in CI, not in a user's run. pyproject.toml bounds Ray below
2.61 for the same reason. Where ymxb reads what Ray writes (the autoscaler's reports), Ray's own
types are fed through ymxb's readers.
"""

import ast
import dataclasses
import importlib
import inspect
import re
from pathlib import Path

import ray

from ymxb.ops import autoscaler_state, ray_cluster, ray_internals

PRIVATE = re.compile(r"^ray\.(_private|_raylet|autoscaler\._private|autoscaler\.v2|experimental)\b")


def _ray_imports(path: Path):
    """(module, name) of every `from ray... import name` in a source file."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ray"):
            yield from ((node.module, alias.name) for alias in node.names)


def test_every_private_name_of_ray_is_used_in_ray_internals_only():
    package = Path(ray_internals.__file__).parent
    elsewhere = [(path.name, module) for path in sorted(package.glob("*.py")) if path.name != "ray_internals.py"
                 for module, _ in _ray_imports(path) if PRIVATE.match(module)]
    elsewhere += [(path.name, "ray._private") for path in sorted(package.glob("*.py"))
                  if path.name != "ray_internals.py" and "ray._private" in path.read_text()]
    assert elsewhere == []


def test_every_name_ray_internals_imports_is_still_there():
    found = list(_ray_imports(Path(ray_internals.__file__)))
    assert len(found) >= 12
    for module, name in found:
        assert hasattr(importlib.import_module(module), name), f"{module}.{name}"


def _params(fn) -> set:
    return set(inspect.signature(fn).parameters)


# ymxb/ray_cluster.py: the embedded head (a Node subclass), its settings and the address probe.

def test_the_embedded_head_can_still_be_built_as_ray_cluster_builds_it():
    from ray._private.node import Node
    from ray._private.parameter import RayParams

    assert {"ray_params", "head", "shutdown_at_exit", "spawn_reaper", "ray_init_cluster"} <= _params(Node.__init__)
    assert {"temp_dir", "_system_config", *ray_cluster.HEAD_PARAMS} <= _params(RayParams.__init__)
    for method in ("start_api_server", "start_raylet", "start_ray_processes", "get_gcs_client"):
        assert callable(getattr(Node, method)), method
    assert {"check_alive", "allow_graceful"} <= _params(Node.kill_all_processes)
    source = inspect.getsource(Node)
    assert "self._node_id" in source and "self.all_processes" in source


def test_the_dashboard_check_is_read_where_ray_cluster_replaces_it():
    """ray_cluster swaps ray._private.utils.get_dashboard_dependency_error while the raylet starts:
    that only works while Ray looks it up on the module each time."""
    from ray._private import services, utils

    assert callable(utils.get_dashboard_dependency_error)
    assert "ray._private.utils.get_dashboard_dependency_error()" in inspect.getsource(services.start_raylet)
    assert "get_dashboard_dependency_error" not in vars(services)  # not bound by name at import


def test_token_setup_and_constants_ray_cluster_uses():
    from ray._private import ray_constants
    from ray._private.authentication import authentication_token_setup as auth

    assert _params(auth.enable_token_auth_by_default) == set()
    assert {"system_config", "create_token_if_missing"} <= _params(auth.ensure_token_if_auth_enabled)
    assert isinstance(ray_constants.ENABLE_RAY_CLUSTER, bool) and ray_constants.PROCESS_TYPE_RAYLET == "raylet"
    env = next(iter(ray_cluster.EMBEDDED_ENV))  # the variable that keeps Ray on loopback
    assert env in inspect.getsource(ray_constants)


def test_system_config_keys_ray_cluster_sets_are_rays():
    """Ray's C++ config knows each key (an unknown one would be a silent no-op or a failed start)."""
    binary = next(Path(ray.__file__).parent.glob("_raylet*.so")).read_bytes()
    for key in ray_cluster.HEAD_CONFIG:
        assert re.search(rb"\b" + key.encode() + rb"\b", binary), key


def test_the_gcs_calls_ymxb_makes():
    from ray._raylet import GcsClient, InnerGcsClient
    from ray.core.generated import gcs_service_pb2

    assert "timeout" in _params(InnerGcsClient.get_all_node_info)
    assert hasattr(GcsClient, "__getattr__")  # GcsClient hands get_all_node_info to the inner client
    service = gcs_service_pb2.DESCRIPTOR.services_by_name["NodeInfoGcsService"]
    assert "GetClusterId" in service.methods_by_name  # ray_cluster.probe's call


# ymxb/supervisor.py: a failed host's log on this machine.

def test_the_driver_finds_its_nodes_log_folder():
    from ray._private import worker
    from ray._private.node import Node

    assert hasattr(worker, "_global_node") and callable(Node.get_logs_dir_path)


# ymxb/platforms.py and ymxb/verify.py: Ray's TPU helpers.

def test_rays_tpu_helpers_take_what_platforms_passes():
    from ray.util import tpu

    assert {"topology", "accelerator_version", "num_slices", "resources_per_bundle"} <= _params(tpu.slice_placement_group)
    assert {"strategy", "name", "head_reservation_timeout_s"} <= _params(tpu.SlicePlacementGroup.__init__)
    assert isinstance(inspect.getattr_static(tpu.SlicePlacementGroup, "placement_group"), property)
    assert callable(tpu.SlicePlacementGroup.shutdown)
    assert tpu.get_tpu_worker_resources("2x2x2", "v4")[0] == 2 and tpu.get_tpu_version_from_type("TPU-V4") == "v4"
    assert _params(tpu.get_tpu_coordinator_env_vars) >= {"coordinator_address", "num_slices", "slice_id"}


# ymxb/clusterconfig.py: Ray's config preparation, command runner and TPU accelerator manager.

def test_what_clusterconfig_reads_a_config_with():
    from ray._private.accelerators import tpu
    from ray.autoscaler._private import command_runner, util

    for fn in (util.prepare_config, util.merge_setup_commands, util.validate_config, command_runner._with_interactive):
        assert callable(fn)
    assert tpu.TPUAcceleratorManager.is_valid_tpu_accelerator_type("v6e-16")
    assert (tpu.get_num_tpu_visible_chips_per_host("v6e-8"), tpu.get_num_tpu_visible_chips_per_host("v4-16")) == (8, 4)


def test_ray_up_still_turns_autoscaler_v2_on_as_the_configs_expect():
    """The configs' RAY_enable_autoscaler_v2=0 answers this prefix (README); if `ray up` stops
    adding it, or adds it another way, the configs and README need a new look."""
    from ray.autoscaler._private import commands

    source = inspect.getsource(commands.get_or_create_head_node)
    assert 'os.getenv("RAY_UP_enable_autoscaler_v2", "1") == "1"' in source
    assert '"RAY_enable_autoscaler_v2": "1"' in source and "with_envs(" in source
    assert "export {k}={v}; " in inspect.getsource(commands.with_envs)


# ymxb/autoscaler_state.py: what the autoscaler reports, in Ray's own types.

def test_autoscaler_v1s_report_is_where_and_as_autoscaler_state_reads_it():
    from ray._private import ray_constants
    from ray.autoscaler._private import monitor
    from ray.autoscaler._private.util import format_readonly_node_type

    assert (ray_constants.DEBUG_AUTOSCALING_STATUS, ray_constants.DEBUG_AUTOSCALING_ERROR) == (
        "__autoscaling_status", "__autoscaling_error")
    run = inspect.getsource(monitor.Monitor._run)
    assert 'status["autoscaler_report"] = asdict(autoscaler_summary)' in run
    assert autoscaler_state.READONLY_NODE_TYPE.fullmatch(format_readonly_node_type("0fb22112a7851eec"))


def test_a_v1_report_reads_as_launches_set_ups_and_failures():
    from ray.autoscaler._private.autoscaler import AutoscalerSummary
    from ray.autoscaler._private.node_provider_availability_tracker import (
        NodeAvailabilityRecord, NodeAvailabilitySummary, UnavailableNodeInformation)

    quota = UnavailableNodeInformation(category="QuotaExceeded", description="Quota 'TPUV4PodPerProjectPerZone' exceeded.\n")
    summary = AutoscalerSummary(
        active_nodes={"head": 1}, idle_nodes=None, pending_nodes=[("10.0.0.5", "tpu_slice", "setting-up")],
        pending_launches={"tpu_slice": 1, "gpu_node": 0}, failed_nodes=[("10.0.0.6", "tpu_slice")],
        node_availability_summary=NodeAvailabilitySummary({"tpu_slice": NodeAvailabilityRecord(
            "tpu_slice", is_available=False, last_checked_timestamp=1.0, unavailable_node_information=quota)}))
    state = autoscaler_state.from_v1({"autoscaler_report": dataclasses.asdict(summary)})
    assert state.describe() == ("launching 1 tpu_slice; setting up tpu_slice (setting-up); failed: tpu_slice "
                                "(node 10.0.0.6 failed to set up); tpu_slice (QuotaExceeded: Quota "
                                "'TPUV4PodPerProjectPerZone' exceeded.)")
    assert state.last_error == "tpu_slice: QuotaExceeded: Quota 'TPUV4PodPerProjectPerZone' exceeded." and state.makes_nodes
    crashed = autoscaler_state.from_v1({}, "The autoscaler failed with the following error:\nTraceback ...\n"
                                           "googleapiclient.errors.HttpError: <HttpError 403>")
    assert crashed.last_error == "googleapiclient.errors.HttpError: <HttpError 403>"
    by_hand = dataclasses.replace(summary, active_nodes={"node_0fb22112a7851eec": 1}, pending_nodes=[],
                                  pending_launches={}, failed_nodes=[], node_availability_summary=NodeAvailabilitySummary({}))
    state = autoscaler_state.from_v1({"autoscaler_report": dataclasses.asdict(by_hand)})
    assert not state.makes_nodes and state.last_error is None


def test_a_v2_status_reads_as_launches_set_ups_and_failures():
    from ray.autoscaler.v2 import schema, sdk, utils

    assert {"fetch_from_server", "gcs_client"} <= _params(utils.is_autoscaler_v2)
    assert "gcs_address" in _params(sdk.get_cluster_status)
    launch = dict(instance_type_name="ct5lp", ray_node_type_name="tpu_slice", count=1, request_ts_s=1)
    status = schema.ClusterStatus(
        pending_launches=[schema.LaunchRequest(state=schema.LaunchRequest.Status.PENDING, **launch)],
        failed_launches=[schema.LaunchRequest(state=schema.LaunchRequest.Status.FAILED, failed_ts_s=2,
                                              details="quota exceeded\n", **launch)],
        pending_nodes=[schema.NodeInfo(instance_type_name="ct5lp", ray_node_type_name="tpu_slice", instance_id="i-1",
                                       ip_address="10.0.0.7", details="installing ray")])
    state = autoscaler_state.from_v2(status)
    assert state.describe() == ("launching 1 tpu_slice; setting up tpu_slice (installing ray); failed: tpu_slice "
                                "(quota exceeded)")
    assert state.last_error == "tpu_slice: quota exceeded"

