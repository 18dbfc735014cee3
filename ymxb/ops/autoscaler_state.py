"""What Ray's autoscaler says it is doing: node launches under way and failed, nodes being set
up, and its last error, as `ray status` shows them. Read from the GCS of the cluster this
driver is connected to, in the form the running autoscaler reports it: v1 (which the cluster
configs here run, README) writes a JSON report to the GCS's internal KV; v2 answers
GetClusterStatus. Both are read through ray_internals.autoscaler_report.
"""

import dataclasses
import re
from typing import Dict, List, Optional, Tuple

from ymxb.ops import ray_internals

ERROR_CHARS = 300  # of the autoscaler's last error, kept in a one-line message
# The node types of a cluster started by hand (no --autoscaling-config): Ray's monitor then runs
# a read-only provider, one type per node, named so (autoscaler/_private/util.py
# format_readonly_node_type). Such an autoscaler makes no nodes.
READONLY_NODE_TYPE = re.compile(r"node_[0-9a-f]+")


@dataclasses.dataclass(frozen=True)
class AutoscalerState:
    """What the autoscaler reports, by node type (the cluster config's available_node_types)."""

    launching: Dict[str, int]  # node type -> launches asked of the cloud, not yet answered
    setting_up: List[Tuple[str, str]]  # (node type, status) of each node launched, not yet up
    failed: List[Tuple[str, str]]  # (node type, what failed) of each launch or set-up that failed
    error: Optional[str] = None  # the autoscaler's own last error (one line), if it reported one
    makes_nodes: bool = True  # False: a read-only autoscaler (a cluster started by hand)

    @property
    def last_error(self) -> Optional[str]:
        """The autoscaler's last error: its own, else the last failure it reported."""
        if self.error:
            return self.error
        return f"{self.failed[-1][0]}: {self.failed[-1][1]}" if self.failed else None

    def describe(self) -> str:
        """One line: `launching 1 tpu_slice; setting up 1 tpu_slice (waiting-for-ssh); ...`."""
        said = []
        if self.launching:
            said.append("launching " + ", ".join(f"{n} {t}" for t, n in sorted(self.launching.items())))
        if self.setting_up:
            said.append("setting up " + ", ".join(f"{t} ({s})" for t, s in self.setting_up))
        if self.failed:
            said.append("failed: " + "; ".join(f"{t} ({w})" for t, w in self.failed))
        if self.error:
            said.append(f"error: {self.error}")
        if not self.makes_nodes:
            said.append("none that makes nodes (the cluster was started by hand)")
        return "; ".join(said) or "nothing launching, nothing failed"


def from_v1(status: dict, error: Optional[str] = None) -> AutoscalerState:
    """The state in autoscaler v1's report (the JSON its monitor writes to the GCS's KV: an
    AutoscalerSummary as a dict, under "autoscaler_report") and its last error."""
    report = status.get("autoscaler_report") or {}
    failed = [(node_type, f"node {ip} failed to set up") for ip, node_type in report.get("failed_nodes", [])]
    availability = (report.get("node_availability_summary") or {}).get("node_availabilities", {})
    for node_type, record in sorted(availability.items(), key=lambda r: r[1].get("last_checked_timestamp", 0)):
        why = record.get("unavailable_node_information")
        if not record.get("is_available") and why:
            failed.append((node_type, f"{why['category']}: {_one_line(why['description'])}"))
    active = report.get("active_nodes") or {}
    return AutoscalerState(
        launching={t: n for t, n in report.get("pending_launches", {}).items() if n},
        setting_up=[(node_type, node_status) for _, node_type, node_status in report.get("pending_nodes", [])],
        failed=failed, error=_one_line(error) if error else None,
        makes_nodes=not active or not all(READONLY_NODE_TYPE.fullmatch(t) for t in active))


def from_v2(status) -> AutoscalerState:
    """The state in autoscaler v2's ClusterStatus (ray.autoscaler.v2.schema)."""
    launching: Dict[str, int] = {}
    for request in status.pending_launches:
        name = request.ray_node_type_name or request.instance_type_name
        launching[name] = launching.get(name, 0) + request.count
    failed = [(r.ray_node_type_name or r.instance_type_name, _one_line(r.details or "launch failed"))
              for r in sorted(status.failed_launches, key=lambda r: r.failed_ts_s or 0)]
    failed += [(n.ray_node_type_name, _one_line(n.details or n.failure_detail or "failed"))
               for n in status.failed_nodes]
    return AutoscalerState(
        launching=launching, failed=failed,
        setting_up=[(n.ray_node_type_name, n.details or n.node_status or "pending") for n in status.pending_nodes])


def read(gcs_address: str) -> Optional[AutoscalerState]:
    """The connected cluster's autoscaler state; None where no autoscaler reports one (a
    cluster started without Ray's monitor, or one whose monitor has not reported yet)."""
    which, report = ray_internals.autoscaler_report(gcs_address)
    if which == "v2":
        return from_v2(report)
    status, error = report
    if "autoscaler_report" not in status and error is None:  # its first report comes once it has load metrics
        return None
    return from_v1(status, error)


def _one_line(text: str) -> str:
    """The line that says most of a multi-line error (a traceback's last), cut to ERROR_CHARS."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= ERROR_CHARS else line[:ERROR_CHARS - 3] + "..."
