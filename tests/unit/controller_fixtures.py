"""Builders for controller tests: a config, Slurm nodes and jobs, VMs, launch rows."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from vcluster.config import Config, parse_config
from vcluster.controller.observe import LaunchView, RequestView
from vcluster.one_vm import VM
from vcluster.slurm_parse import Job, Node

T0 = datetime(2026, 11, 21, 7, 0, tzinfo=UTC)


def ago(seconds: float) -> datetime:
    return T0 - timedelta(seconds=seconds)


def make_config(**controller: Any) -> Config:
    return parse_config({
        "opennebula": {"retry_delays_s": [1, 5]},
        "controller": {"cluster_name": "vc", "resume_timeout_s": 60, "status_file": "",
                       **controller},
        "node_class": [
            {"name": "small", "count": 4, "cpus": 2, "memory_mb": 2048, "template": "worker",
             "templates": ["ubuntu"]},
            {"name": "big", "count": 2, "cpus": 8, "memory_mb": 8192, "template": "bigworker",
             "policy": "pool"},
        ],
    })


def node(name: str, state: str = "IDLE", *flags: str, reason: str = "") -> Node:
    return Node(name=name, state=state, flags=frozenset({"CLOUD", *flags}), address=name,
                hostname=name, cpus=2, real_memory_mb=2048, features=("small",),
                partitions=("vcluster",), reason=reason)


def powered_down(name: str) -> Node:
    return node(name, "IDLE", "POWERED_DOWN")


def powering_up(name: str) -> Node:
    return node(name, "ALLOCATED", "POWERING_UP")


def job(job_id: int, *nodes: str, state: str = "CONFIGURING", **fields: Any) -> Job:
    base = Job(job_id=job_id, array_job_id=None, array_task_id=None, name="j", user="alice",
               user_id=1000, state=state, state_reason="None", partition="vcluster",
               nodes=tuple(nodes), node_count=max(1, len(nodes)), cpus=2 * max(1, len(nodes)),
               cpus_per_task=1, tasks=1, memory_per_node_mb=None, memory_per_cpu_mb=None,
               features="small", comment="", exit_code=None, submit_time=0.0,
               start_time=None, end_time=None, work_dir="/tmp")
    return replace(base, **fields)


def vm(vm_id: int, node_name: str, state_name: str = "RUNNING", ip: str = "10.9.0.10",
       job_id: int | None = None, cluster: str = "vc") -> VM:
    state, lcm = {"PENDING": (1, 0), "BOOT": (3, 2), "RUNNING": (3, 3), "BOOT_FAILURE": (3, 36),
                  "UNKNOWN": (3, 16), "SHUTDOWN": (3, 12), "POWEROFF": (8, 0),
                  "SUSPENDED": (5, 0), "STOPPED": (4, 0), "UNDEPLOYED": (9, 0),
                  "SHUTDOWN_POWEROFF": (3, 18), "SAVE_SUSPEND": (3, 6), "SAVE_STOP": (3, 5),
                  "SHUTDOWN_UNDEPLOY": (3, 29), "EPILOG": (3, 11), "EPILOG_FAILURE": (3, 40),
                  "CLONING_FAILURE": (11, 0), "MIGRATE": (3, 4), "HOTPLUG_NIC": (3, 25),
                  "BOOT_SUSPENDED": (3, 21), "BOOT_POWEROFF": (3, 20)}[state_name]
    return VM(vm_id=vm_id, name=node_name, state=state, lcm_state=lcm, state_name=state_name,
              ips=(ip,) if ip else (),
              user_template={"VCLUSTER_NODE": node_name, "VCLUSTER_CLUSTER": cluster,
                             "VCLUSTER_JOB": "" if job_id is None else str(job_id)})


def launch(launch_id: int, node_name: str, state: str, *, vm_id: int | None = None,
           job_id: int | None = None, ip: str | None = None, attempts: int = 1,
           created_s_ago: float = 5, updated_s_ago: float = 5, reason: str = "") -> LaunchView:
    return LaunchView(launch_id, node_name, node_name.split("-")[1], job_id, vm_id, state, ip,
                      reason, attempts, ago(created_s_ago), ago(updated_s_ago))


def request(request_id: int, kind: str, nodes: tuple[str, ...] = (),
            job_ids: tuple[int, ...] = (), payload: dict[str, Any] | None = None,
            s_ago: float = 1) -> RequestView:
    return RequestView(request_id, kind, nodes, job_ids, payload or {}, ago(s_ago))
