"""Capacity back-off: a class whose VMs OpenNebula cannot place gets no new VM for a while.

Why it exists: when no host has room for a template (oned's scheduler leaves the VM PENDING
with a SCHED_MESSAGE) or the user's quota refuses the allocation, every further VM of that
template fails the same way. Without a back-off each waiting job would be requeued three
times and held, and oned would be asked again and again. So the template backs off: the
nodes waiting on it go back to Slurm's queue (not counted as failed VMs of their jobs), the
class's powered-down nodes are drained with a reason saying why and when the next probe is
(Slurm stops choosing them; jobs that may run elsewhere do), and once the back-off ends one
probe VM is booted: placed, the back-off is over; refused again, it starts over, longer
(``controller.capacity_backoff_s``). A class may name ``fallback_templates``, tried in order
while its template is backed off; the boot-rate limits (:mod:`boot_rate`) apply last.

The back-off itself is in the picture (the ``class_backoff`` table), so all of this is a
pure function of it: the plan's actions in, the actions to carry out instead out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime, timedelta

from vcluster.config import Config, NodeClass
from vcluster.controller import boot_rate
from vcluster.controller.actions import (
    Action,
    BackoffNodes,
    BootEarly,
    BootStandby,
    BootVM,
    ClearBackoff,
    SetBackoff,
    Unplaceable,
)
from vcluster.controller.observe import BackoffView, LaunchView, Observed
from vcluster.one_vm import VM

BACKOFF_REASON_PREFIX = "vcluster backoff: "
"""Starts the reason of a backed-off class's drained nodes (not ``vcluster: ``, which the plan
returns to service, nor ``vcluster drain: ``, which is the admin's)."""
_IN_FLIGHT = frozenset({"requested", "allocating", "booting"})
_UNPLACED = frozenset({"PENDING", "HOLD"})

Key = tuple[str, str]
"""(node class, template)."""


def capacity_cause(message: str) -> str | None:
    """``quota`` if oned refused an allocation for a quota ("limit of N reached for VMS
    quota in ...", "... quota exceeded"), else None."""
    return "quota" if "quota" in message.lower() else None


def sched_reason(sched_message: str) -> str:
    """oned's SCHED_MESSAGE without its leading timestamp (``Wed Dec  2 12:00:01 2026 : ``)."""
    head, sep, rest = sched_message.partition(" : ")
    return rest.strip() if sep and any(c.isdigit() for c in head) else sched_message.strip()


def is_active(backoff: BackoffView | SetBackoff, now: datetime) -> bool:
    """No VM from this template until ``until``; after it, one probe VM."""
    return now < backoff.until


def template_chain(nc: NodeClass, first: str) -> tuple[str, ...]:
    """The templates to try for a VM of ``nc`` that would boot from ``first``, in order."""
    return tuple(dict.fromkeys((first, *nc.fallback_templates)))


def held_by(backoffs: Mapping[Key, BackoffView | SetBackoff], nc: NodeClass,
            now: datetime) -> BackoffView | SetBackoff | None:
    """The back-off that keeps every template of the class from booting now, or None."""
    found = [backoffs.get((nc.name, t)) for t in template_chain(nc, nc.template)]
    active = [b for b in found if b is not None and is_active(b, now)]
    return active[0] if len(active) == len(found) else None


def drain_reason(backoff: BackoffView | SetBackoff) -> str:
    return (f"{BACKOFF_REASON_PREFIX}template {backoff.template} cannot be placed "
            f"({backoff.cause}): {backoff.reason}; next probe at "
            f"{backoff.until:%Y-%m-%dT%H:%M:%S}Z")


def _unplaced_why(config: Config, obs: Observed, launch: LaunchView,
                  vm: VM | None) -> tuple[str, str] | None:
    """(cause, oned's words) when this launch's VM cannot be placed, else None."""
    if launch.state == "requested" and launch.vm_id is None:
        cause = capacity_cause(launch.reason)
        return (cause, launch.reason) if cause else None
    if launch.state != "booting" or vm is None or vm.state_name != "PENDING":
        return None
    if not vm.sched_message:
        return None
    wait_s = min(config.controller.placement_wait_s, config.controller.resume_timeout_s / 2)
    since = (datetime.fromtimestamp(vm.start_time, obs.now.tzinfo) if vm.start_time
             else launch.created_at)
    if (obs.now - since).total_seconds() < wait_s:
        return None
    return "placement", sched_reason(vm.sched_message)


def _next(obs: Observed, config: Config, nc: NodeClass, template: str, cause: str,
          reason: str) -> SetBackoff:
    previous = obs.backoffs.get((nc.name, template))
    level = (previous.level if previous else 0) + 1
    delays = config.controller.capacity_backoff_s
    until = obs.now + timedelta(seconds=delays[min(level, len(delays)) - 1])
    return SetBackoff(nc.name, template, level, cause, reason, until)


def _watch_launches(obs: Observed, config: Config
                    ) -> tuple[list[Action], set[int], dict[Key, BackoffView | SetBackoff]]:
    """Unplaceable launches (and the back-offs they start), placed ones (that end one)."""
    actions: list[Action] = []
    replaced: set[int] = set()
    backoffs: dict[Key, BackoffView | SetBackoff] = dict(obs.backoffs)
    for launch in obs.launches:
        nc = config.class_of_node(launch.node_name)
        if nc is None:
            continue
        key = (nc.name, launch.template or nc.template)
        vm = obs.vms.get(launch.vm_id) if launch.vm_id is not None else None
        why = _unplaced_why(config, obs, launch, vm)
        if why is not None:
            cause, words = why
            current = backoffs.get(key)
            if current is None or not (is_active(current, obs.now)
                                       or isinstance(current, SetBackoff)):
                backoffs[key] = _next(obs, config, nc, key[1], cause, words)
                actions.append(backoffs[key])  # type: ignore[arg-type]
            actions.append(Unplaceable(
                launch.node_name, nc.name, f"vcluster: template {key[1]} of class {nc.name} "
                f"cannot be placed: {words}", cause, launch.id, launch.vm_id, launch.job_id))
            replaced.add(launch.id)
        elif (key in backoffs and isinstance(backoffs[key], BackoffView) and vm is not None
              and vm.state_name not in _UNPLACED and not vm.is_failed):
            del backoffs[key]
            actions.append(ClearBackoff(nc.name, key[1], f"VM {vm.vm_id} of node "
                                        f"{launch.node_name} was placed ({vm.state_name})"))
    return actions, replaced, backoffs


def _gate_boot(boot: BootVM, nc: NodeClass, obs: Observed,
               backoffs: Mapping[Key, BackoffView | SetBackoff],
               probing: dict[Key, set[int | str]]) -> Action | None:
    """The boot from the first template that may boot now; None to wait for a probe; an
    Unplaceable when every template of the chain is backed off."""
    waiting = False
    me = boot.launch_id if boot.launch_id is not None else boot.node_name
    for template in template_chain(nc, boot.template):
        backoff = backoffs.get((nc.name, template))
        if backoff is None:
            return dataclasses.replace(boot, template=template)
        if is_active(backoff, obs.now):
            continue
        if probing.get((nc.name, template), set()) - {me}:
            waiting = True  # another VM is the probe
            continue
        probing.setdefault((nc.name, template), set()).add(me)
        return dataclasses.replace(boot, template=template)
    if waiting:
        return None
    held = next(b for t in template_chain(nc, boot.template)
                if (b := backoffs.get((nc.name, t))) is not None)
    return Unplaceable(boot.node_name, nc.name, f"vcluster: class {nc.name} backed off: "
                       f"{held.reason}", "backoff", boot.launch_id, None, boot.job_id)


def _node_drains(obs: Observed, config: Config,
                 backoffs: Mapping[Key, BackoffView | SetBackoff]) -> list[Action]:
    """DRAIN the powered-down nodes of held classes; lift it where the class may boot."""
    to_drain: dict[str, list[str]] = {}
    to_lift: list[str] = []
    for name, node in sorted(obs.nodes.items()):
        nc = config.class_of_node(name)
        if nc is None or node.is_down:
            continue
        held = held_by(backoffs, nc, obs.now)
        if held is not None and node.powered_down and not node.is_drained:
            to_drain.setdefault(drain_reason(held), []).append(name)
        elif held is None and node.is_drained and node.reason.startswith(BACKOFF_REASON_PREFIX):
            to_lift.append(name)
    actions: list[Action] = [BackoffNodes(tuple(names), True, reason)
                             for reason, names in sorted(to_drain.items())]
    if to_lift:
        actions.append(BackoffNodes(tuple(to_lift), False, "back-off over: probing"))
    return actions


def apply_backoff(actions: list[Action], obs: Observed, config: Config) -> list[Action]:
    """The plan's actions with back-offs started and ended, boots of backed-off templates
    moved to a fallback, held or given back, boots over the rate limits left for a later
    pass, and the class's nodes drained or undrained in Slurm."""
    added, replaced, backoffs = _watch_launches(obs, config)
    probing: dict[Key, set[int | str]] = {}
    for la in obs.launches:
        if la.state in _IN_FLIGHT and la.id not in replaced:
            probing.setdefault((la.node_class, la.template or ""), set()).add(la.id)
    gated: list[Action] = []
    for action in actions:
        if getattr(action, "launch_id", None) in replaced:
            continue
        if isinstance(action, BootVM):
            gate = _gate_boot(action, config.node_class(action.node_class), obs, backoffs,
                              probing)
            if gate is not None:
                gated.append(gate)
        elif isinstance(action, BootStandby | BootEarly):
            # optional boots (a standby VM, a VM ahead of Slurm's resume): none from a
            # backed-off template, not even as its probe (a job's boot probes)
            if (action.node_class, action.template) not in backoffs:
                gated.append(action)
        else:
            gated.append(action)
    boots = (BootVM, BootStandby, BootEarly)
    slots = iter(boot_rate.schedule(config, obs.recent_boots, obs.now,
                                    [a.node_class for a in gated if isinstance(a, boots)]))
    limited: list[Action] = []
    for action in gated:
        if isinstance(action, boots):
            slot = next(slots)
            if slot is None:
                continue  # beyond this pass's pace: a later pass plans it again
            if slot > 0:
                action = dataclasses.replace(action, not_before_s=slot)
        limited.append(action)
    return added + limited + _node_drains(obs, config, backoffs)
