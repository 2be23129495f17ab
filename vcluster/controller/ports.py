"""The small protocols the controller needs from Slurm and OpenNebula.

:class:`vcluster.slurm.Slurm` and :class:`vcluster.one.OneClient` implement them; unit tests
use small fakes that implement the same methods, so the loop is tested without patches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from vcluster.one_vm import VM
from vcluster.slurm_parse import Job, Node


class SlurmPort(Protocol):
    def jobs(self) -> list[Job]: ...

    def nodes(self) -> list[Node]: ...

    def update_nodes(self, nodes: str | Sequence[str], *, state: str | None = None,
                     reason: str | None = None, nodeaddr: str | None = None,
                     nodehostname: str | None = None) -> None: ...

    def update_job(self, job_id: int, **fields: str) -> None: ...

    def hold(self, job_id: int) -> None: ...

    def update_reservation(self, name: str, **fields: str) -> None: ...


class OnePort(Protocol):
    def template_id(self, name_or_id: str) -> int: ...

    def instantiate(self, template_id: int, name: str, extra_template: str, *,
                    hold: bool = False) -> int: ...

    def vm(self, vm_id: int) -> VM: ...

    def vms(self, *, cluster: str | None = None) -> list[VM]: ...

    def terminate(self, vm_id: int, *, hard: bool = False) -> None: ...

    def action(self, action: str, vm_id: int) -> None: ...

    def host_states(self) -> dict[str, str]: ...

    def update_user_template(self, vm_id: int, attrs: Mapping[str, str]) -> None: ...
