"""Advance reservations: admission control, lead time and the controller's steps, as tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from vcluster.controller.actions import MarkHandled, PowerDown
from vcluster.controller.reserve_plan import (
    ReservationView,
    Step,
    held_nodes,
    plan_reservations,
    spare_held,
)
from vcluster.one_site import HostCapacity
from vcluster.reserve import DEFAULT_LEAD_S, Held, Wish, admit, lead_time_s
from vcluster.slurm_parse import Node

T0 = datetime(2026, 12, 2, 13, 0, tzinfo=UTC)
START, END = T0 + timedelta(minutes=10), T0 + timedelta(minutes=40)
GB = 1024 * 1024


def host(name: str = "h1", cpu: int = 800, mem_gb: int = 16, used_cpu: int = 0,
         used_gb: int = 0, state: str = "MONITORED") -> HostCapacity:
    return HostCapacity(name, state, cpu, mem_gb * GB, used_cpu, used_gb * GB)


def wish(count: int, cpu_pct: int = 200, memory_mb: int = 1024,
         start: datetime = START, end: datetime = END) -> Wish:
    return Wish("small", count, cpu_pct, memory_mb, start, end)


def held(rid: int, count: int, cpu_pct: int = 200, memory_mb: int = 1024,
         booted: bool = False, node_class: str = "small") -> Held:
    return Held(rid, node_class, count, cpu_pct, memory_mb, booted)


@pytest.mark.parametrize(("case", "w", "hosts", "others", "accepted", "reason"), [
    ("fits on one host", wish(4), [host()], [], True, "accepted: 4 VMs of class small fit"),
    ("one too many for the CPU", wish(5), [host()], [], False,
     "refused: not enough CPU: the cloud can hold 4 of the 5 VMs of class small "
     "(200% CPU, 1024 MB each)"),
    ("memory short", wish(3, memory_mb=8192), [host()], [], False,
     "refused: not enough memory: the cloud can hold 2 of the 3 VMs"),
    ("another reservation holds the CPU", wish(3), [host()], [held(7, 2)], False,
     "after 2 VMs of other reservations (400% CPU, 2048 MB)"),
    ("a booted reservation is in the usage, not counted twice", wish(2),
     [host(used_cpu=400, used_gb=2)], [held(7, 2, booted=True)], True, "accepted"),
    ("usage now is assumed still there", wish(2), [host(used_cpu=700)], [], False,
     "the cloud can hold 0 of the 2 VMs"),
    ("spread over two hosts", wish(4), [host("h1", 400), host("h2", 400)], [], True,
     "accepted"),
    ("free CPU split between hosts holds no whole VM", wish(1, cpu_pct=400),
     [host("h1", 300), host("h2", 300)], [], False, "refused: not enough CPU: the cloud "
     "can hold 0 of the 1 VMs"),
    ("CPU on one host, memory on another", wish(1, memory_mb=2048),
     [host("h1", 800, 1), host("h2", 100, 16)], [], False,
     "refused: not enough room on a single host"),
    ("a disabled host takes nothing", wish(1), [host(state="DISABLED")], [], False,
     "refused: no OpenNebula host can take VMs (hosts: h1 DISABLED)"),
    ("the class has too few free nodes", wish(2), [host()], [held(3, 2)], False,
     "refused: class small has 3 nodes, 2 of them reserved"),
    ("ends before it starts", wish(1, end=START), [host()], [], False,
     "refused: the reservation ends before it starts"),
])
def test_admission(case: str, w: Wish, hosts: list[HostCapacity], others: list[Held],
                   accepted: bool, reason: str) -> None:
    decision = admit(w, 3 if case.startswith("the class") else 8, hosts, others)
    assert decision.accepted is accepted, (case, decision.reason)
    assert reason in decision.reason, (case, decision.reason)


@pytest.mark.parametrize(("boots", "lead"), [
    ([], DEFAULT_LEAD_S),
    ([21.0, 25.5, 22.0], 35.5),
    ([70.0], 80.0),
])
def test_lead_time_is_the_slowest_recent_boot_plus_a_margin(boots: list[float],
                                                            lead: float) -> None:
    assert lead_time_s(boots) == lead


def node(name: str, state: str = "IDLE", *flags: str) -> Node:
    return Node(name, state, frozenset({"CLOUD", *flags}), name, name, 2, 1024, ("small",),
                ("batch",), "")


def view(state: str = "accepted", lead_s: float = 30.0, powered_up: bool = False,
         rid: int = 1) -> ReservationView:
    return ReservationView(rid, f"vc-r{rid}", ("n1", "n2"), START, END, lead_s, state, powered_up)


DOWN = {"n1": node("n1", "IDLE", "POWERED_DOWN"), "n2": node("n2", "IDLE", "POWERED_DOWN")}
UP = {"n1": node("n1"), "n2": node("n2")}


@pytest.mark.parametrize(("case", "now", "rows", "nodes", "kinds"), [
    ("too early: nothing", START - timedelta(seconds=31), [view()], DOWN, []),
    ("at start - lead: power up", START - timedelta(seconds=30), [view()], DOWN,
     [("power_up", ("n1", "n2"))]),
    ("a hidden node counts as powered down", START - timedelta(seconds=20), [view()],
     {"n1": None, "n2": node("n2", "IDLE", "POWERING_UP")}, [("power_up", ("n1",))]),
    ("booting, all working: ready", START - timedelta(seconds=5),
     [view("booting", powered_up=True)], UP, [("ready", ("n1", "n2"))]),
    ("booting, one still powering up: wait", START - timedelta(seconds=5),
     [view("booting", powered_up=True)],
     {"n1": node("n1"), "n2": node("n2", "IDLE", "POWERING_UP")}, []),
    ("a node lost before the start is powered up again", START - timedelta(seconds=5),
     [view("ready", powered_up=True)], {"n1": node("n1"), "n2": DOWN["n2"]},
     [("power_up", ("n2",))]),
    ("after the start Slurm powers nodes up for jobs", START + timedelta(seconds=5),
     [view("ready", powered_up=True)], {"n1": node("n1"), "n2": DOWN["n2"]}, []),
    ("at the end: release", END, [view("ready", powered_up=True)], UP,
     [("release", ("n1", "n2"))]),
    ("cancelled after booting: release", START, [view("cancelled", powered_up=True)], UP,
     [("release", ("n1", "n2"))]),
    ("ended with nothing booted: finish", END, [view()], DOWN, [("finish", ())]),
])
def test_reservation_steps(case: str, now: datetime, rows: list[ReservationView],
                           nodes: dict[str, Node | None],
                           kinds: list[tuple[str, tuple[str, ...]]]) -> None:
    steps: list[Step] = plan_reservations(now, rows, nodes)
    assert [(st.kind, st.nodes) for st in steps] == kinds, case


def test_a_reservation_the_controller_missed_the_lead_of_is_kept_from_its_start() -> None:
    [step] = plan_reservations(START + timedelta(seconds=3), [view()], DOWN)
    assert (step.kind, step.nodes, step.message) == (
        "power_up", (), "reservation 1: started before any boot (the controller was away): "
        "Slurm powers its nodes up for its jobs")
    [step] = plan_reservations(START - timedelta(seconds=10), [view()], UP)
    assert (step.kind, step.nodes, step.message) == (
        "power_up", (), "reservation 1: its nodes are up already, nothing to boot")


def test_the_power_up_message_says_how_far_ahead() -> None:
    [step] = plan_reservations(START - timedelta(seconds=30), [view()], DOWN)
    assert step.message == "reservation 1: booting n[1-2] 30 s before its start (lead 30 s)"


def test_held_nodes_are_spared_the_idle_power_down() -> None:
    rows = [view("ready", powered_up=True), view("accepted", rid=2)]
    held = held_nodes(START, rows)
    assert held == {"n1", "n2"}
    assert held_nodes(END, rows) == frozenset()
    actions = [PowerDown(("n1", "n3"), "per-job node's job ended"), PowerDown(("n2",), "x"),
               PowerDown(("n1", "n4"), "y", "POWER_DOWN_FORCE"), MarkHandled(4)]
    assert spare_held(actions, held) == [PowerDown(("n3",), "per-job node's job ended"),
                                         PowerDown(("n4",), "y", "POWER_DOWN_FORCE"),
                                         MarkHandled(4)]
