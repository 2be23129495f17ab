"""The VM life cycle: which action is allowed from which STATE/LCM_STATE, and what follows.

Why this exists: clients (vcluster's controller among them) react to oned's exact states and
refusal texts, so the testbed follows oned's DispatchManager (which actions are accepted, and
the "This action is not available for state X" / "Could not terminate VM N, wrong state X."
texts) and LifeCycleManager (the chain of transitional LCM states each action walks through).
This module is pure: the cloud applies its answers and times the transitional phases.
"""

from __future__ import annotations

from dataclasses import dataclass

from vcluster.testbed.cloud.model import (
    ACTIVE,
    CLONING,
    CLONING_FAILURE,
    DONE,
    FAILURE_LCM_STATES,
    HOLD,
    INIT,
    LCM,
    PENDING,
    POWEROFF,
    STOPPED,
    SUSPENDED,
    UNDEPLOYED,
    state_str,
)

ACTIONS = ("terminate", "terminate-hard", "undeploy", "undeploy-hard", "poweroff",
           "poweroff-hard", "reboot", "reboot-hard", "hold", "release", "stop", "suspend",
           "resume", "resched", "unresched")

RUNNING = LCM["RUNNING"]
UNKNOWN = LCM["UNKNOWN"]


class ActionRefused(Exception):
    """oned refuses the action (error code ACTION); ``str()`` is its message."""


@dataclass(frozen=True)
class Outcome:
    """What an accepted action does. ``state is None`` means no state change."""

    state: int | None = None
    lcm_state: int = 0
    resched: int | None = None
    reboot: bool = False


@dataclass(frozen=True)
class Phase:
    """A transitional LCM state: how long it lasts, the driver call that ends it, what next."""

    timing: str
    """Name of the duration in Timings (prolog, boot, shutdown, epilog, save, migrate)."""
    driver_op: str
    """"" (none), "boot", "shutdown", "poweroff", "suspend" or "resume"."""
    next_ok: tuple[int, int]
    next_fail: tuple[int, int] | None = None
    power_cut: bool = False
    """The driver call is a power cut whatever the action was: the guest is not running (a
    suspended, powered-off or failed VM's leftovers are cleaned up) or its state is saved
    by the hypervisor (stop), so it gets no signal. Otherwise ``-hard`` actions cut."""


def _a(name: str) -> tuple[int, int]:
    return (ACTIVE, LCM[name])


PHASES: dict[int, Phase] = {
    LCM["PROLOG"]: Phase("prolog", "", _a("BOOT")),
    LCM["PROLOG_RESUME"]: Phase("prolog", "", _a("BOOT_STOPPED")),
    LCM["PROLOG_UNDEPLOY"]: Phase("prolog", "", _a("BOOT_UNDEPLOY")),
    LCM["BOOT"]: Phase("boot", "boot", _a("RUNNING"), _a("BOOT_FAILURE")),
    # stop saves the guest's memory (oned: save, then epilog moves it off the host) and
    # resume restores it (prolog back, then restore): the guest's processes go on
    LCM["BOOT_STOPPED"]: Phase("boot", "resume", _a("RUNNING"), _a("BOOT_STOPPED_FAILURE")),
    LCM["BOOT_UNDEPLOY"]: Phase("boot", "boot", _a("RUNNING"), _a("BOOT_UNDEPLOY_FAILURE")),
    LCM["BOOT_POWEROFF"]: Phase("boot", "boot", _a("RUNNING"), (POWEROFF, 0)),
    LCM["BOOT_UNKNOWN"]: Phase("boot", "boot", _a("RUNNING"), _a("UNKNOWN")),
    LCM["BOOT_SUSPENDED"]: Phase("boot", "resume", _a("RUNNING"), (SUSPENDED, 0)),
    LCM["BOOT_MIGRATE"]: Phase("boot", "boot", _a("RUNNING"), _a("BOOT_MIGRATE_FAILURE")),
    LCM["SHUTDOWN"]: Phase("shutdown", "shutdown", _a("EPILOG")),
    LCM["EPILOG"]: Phase("epilog", "shutdown", (DONE, 0), power_cut=True),
    LCM["CLEANUP_DELETE"]: Phase("epilog", "shutdown", (DONE, 0), power_cut=True),
    LCM["SHUTDOWN_POWEROFF"]: Phase("shutdown", "poweroff", (POWEROFF, 0)),
    LCM["SHUTDOWN_UNDEPLOY"]: Phase("shutdown", "poweroff", _a("EPILOG_UNDEPLOY")),
    LCM["EPILOG_UNDEPLOY"]: Phase("epilog", "poweroff", (UNDEPLOYED, 0), power_cut=True),
    LCM["SAVE_STOP"]: Phase("save", "suspend", _a("EPILOG_STOP")),
    LCM["EPILOG_STOP"]: Phase("epilog", "", (STOPPED, 0)),
    LCM["SAVE_SUSPEND"]: Phase("save", "suspend", (SUSPENDED, 0)),
    LCM["SAVE_MIGRATE"]: Phase("save", "poweroff", _a("PROLOG_MIGRATE"), power_cut=True),
    LCM["PROLOG_MIGRATE"]: Phase("prolog", "", _a("BOOT_MIGRATE")),
    LCM["MIGRATE"]: Phase("migrate", "", _a("RUNNING")),
    LCM["PROLOG_MIGRATE_POWEROFF"]: Phase("prolog", "", (POWEROFF, 0)),
    LCM["PROLOG_MIGRATE_SUSPEND"]: Phase("prolog", "", (SUSPENDED, 0)),
    LCM["PROLOG_MIGRATE_UNKNOWN"]: Phase("prolog", "", _a("BOOT_MIGRATE")),
}

# States in which the VM holds capacity on its host (oned: ACTIVE, SUSPENDED, POWEROFF).
HOLDS_HOST = frozenset({ACTIVE, SUSPENDED, POWEROFF})


def _not_available(state: int, lcm: int) -> str:
    return f"This action is not available for state {state_str(state, lcm)}"


def apply_action(action: str, vm_id: int, state: int, lcm: int) -> Outcome:
    """oned's VirtualMachineAction + DispatchManager for one vm.action call.

    Raises ActionRefused with oned's message (without the ``[one.vm.action]`` prefix).
    """
    if action not in ACTIONS:
        raise ActionRefused(f'Action "{action}" is not supported')
    try:
        return _dispatch(action, vm_id, state, lcm)
    except _WrongState as exc:
        raise ActionRefused(f'Error performing action "{action}": {exc}') from None


class _WrongState(Exception):
    pass


def _dispatch(action: str, vm_id: int, state: int, lcm: int) -> Outcome:
    hard = action.endswith("-hard")
    running_or_unknown = state == ACTIVE and lcm in (RUNNING, UNKNOWN)
    if action.startswith("terminate"):
        if state in (SUSPENDED, POWEROFF, STOPPED, UNDEPLOYED):
            return Outcome(ACTIVE, LCM["EPILOG"])
        if state in (INIT, PENDING, HOLD, CLONING, CLONING_FAILURE):
            return Outcome(DONE, 0)
        if state == DONE:
            return Outcome()
        if running_or_unknown or (hard and state == ACTIVE and lcm == LCM["SHUTDOWN"]):
            return Outcome(ACTIVE, LCM["SHUTDOWN"])
        if state == ACTIVE and lcm in FAILURE_LCM_STATES:
            return Outcome(ACTIVE, LCM["CLEANUP_DELETE"])
        raise _WrongState(
            f"Could not terminate VM {vm_id}, wrong state {state_str(state, lcm)}.")
    if action.startswith("undeploy"):
        if state == POWEROFF:
            return Outcome(ACTIVE, LCM["EPILOG_UNDEPLOY"])
        if running_or_unknown or (hard and state == ACTIVE and lcm == LCM["SHUTDOWN_UNDEPLOY"]):
            return Outcome(ACTIVE, LCM["SHUTDOWN_UNDEPLOY"])
    elif action.startswith("poweroff"):
        if running_or_unknown or (hard and state == ACTIVE and lcm == LCM["SHUTDOWN_POWEROFF"]):
            return Outcome(ACTIVE, LCM["SHUTDOWN_POWEROFF"])
    elif action == "hold":
        if state == PENDING:
            return Outcome(HOLD, 0)
    elif action == "release":
        if state == HOLD:
            return Outcome(PENDING, 0)
    elif action == "stop":
        if state == SUSPENDED:
            return Outcome(ACTIVE, LCM["EPILOG_STOP"])
        if state == ACTIVE and lcm == RUNNING:
            return Outcome(ACTIVE, LCM["SAVE_STOP"])
    elif action == "suspend":
        if state == ACTIVE and lcm == RUNNING:
            return Outcome(ACTIVE, LCM["SAVE_SUSPEND"])
    elif action == "resume":
        if state in (STOPPED, UNDEPLOYED):
            return Outcome(PENDING, 0)
        if state == SUSPENDED:
            return Outcome(ACTIVE, LCM["BOOT_SUSPENDED"])
        if state == POWEROFF:
            return Outcome(ACTIVE, LCM["BOOT_POWEROFF"])
        if state == ACTIVE and lcm == UNKNOWN:
            return Outcome(ACTIVE, LCM["BOOT_UNKNOWN"])
    elif action.startswith("reboot"):
        if state == ACTIVE and lcm == RUNNING:
            return Outcome(reboot=True, resched=0)
    elif action in ("resched", "unresched"):
        if state == POWEROFF or running_or_unknown:
            return Outcome(resched=1 if action == "resched" else 0)
    raise _WrongState(_not_available(state, lcm))


def deploy_target(state: int, lcm: int, previous_action: str) -> tuple[int, int]:
    """Where one.vm.deploy (or the scheduler) sends a VM; raise ActionRefused if it cannot."""
    if state not in (PENDING, HOLD, STOPPED, UNDEPLOYED):
        raise ActionRefused(f"Deploy action is not available for state {state_str(state, lcm)}")
    if previous_action == "stop":
        return _a("PROLOG_RESUME")
    if previous_action in ("undeploy", "undeploy-hard"):
        return _a("PROLOG_UNDEPLOY")
    return _a("PROLOG")


def migrate_target(state: int, lcm: int, live: bool) -> tuple[int, int]:
    """Where one.vm.migrate sends a VM; raise ActionRefused if it cannot."""
    if state == POWEROFF:
        return _a("PROLOG_MIGRATE_POWEROFF")
    if state == SUSPENDED:
        return _a("PROLOG_MIGRATE_SUSPEND")
    if state == ACTIVE and lcm == RUNNING:
        return _a("MIGRATE") if live else _a("SAVE_MIGRATE")
    if state == ACTIVE and lcm == UNKNOWN:
        return _a("PROLOG_MIGRATE_UNKNOWN")
    raise ActionRefused(f"Migrate action is not available for state {state_str(state, lcm)}")
