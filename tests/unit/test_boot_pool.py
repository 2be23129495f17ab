"""A pass's boots in flight at once (controller.boot_concurrency), against fakes of the ports.

What a site sees: the VMs of a burst requested together rather than one round trip after
the other, the boot-rate limits unchanged, one refused VM failing only its own node (with
the same events as before), and ``boot_concurrency = 1`` behaving as act always did.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.unit.controller_fixtures import powering_up
from tests.unit.test_controller_loop import Clock, FakeOne, FakeSlurm
from vcluster import db
from vcluster.config import Config, parse_config
from vcluster.controller.act import Actor
from vcluster.controller.actions import Action, BootEarly, BootStandby, BootVM
from vcluster.controller.loop import Controller
from vcluster.errors import OneAuthorizationError, OneUnavailable
from vcluster.vmtemplate import GuestContext

NODES = [f"vc-small-{i:03d}" for i in range(1, 9)]
WAIT_S = 5.0
"""How long a gated instantiate waits for the others before it gives up (no test hangs)."""


@dataclass
class GatedOne(FakeOne):
    """The first ``gate`` instantiate calls wait until all of them are inside it at once (a
    :class:`threading.Barrier` with a timeout: made one at a time, each gives up after
    WAIT_S and its boot fails); later calls pass. ``refuse`` names the nodes whose
    instantiate oned refuses; ``inside``/``most_inside`` count the callers in it."""

    gate: int = 0
    refuse: dict[str, Exception] = field(default_factory=dict)
    hold_s: float = 0.0
    inside: int = 0
    most_inside: int = 0
    threads: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.barrier = threading.Barrier(self.gate, timeout=WAIT_S) if self.gate > 1 else None
        self.gated_left = self.gate

    def instantiate(self, template_id: int, name: str, extra_template: str, *,
                    hold: bool = False) -> int:
        with self.lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            self.threads.add(threading.current_thread().name)
            gated, self.gated_left = self.gated_left > 0, self.gated_left - 1
        try:
            if gated and self.barrier is not None:
                self.barrier.wait()
            time.sleep(self.hold_s)
            if name in self.refuse:
                raise self.refuse[name]
            return super().instantiate(template_id, name, extra_template, hold=hold)
        finally:
            with self.lock:
                self.inside -= 1


@dataclass
class World:
    config: Config
    sessions: db.sessionmaker[db.Session]
    slurm: FakeSlurm
    one: GatedOne
    clock: Clock
    actor: Actor
    controller: Controller

    def launches(self) -> dict[str, tuple[str, int | None]]:
        with self.sessions() as s:
            return {la.node_name: (la.state, la.vm_id) for la in s.scalars(select(db.Launch))}

    def events(self) -> list[tuple[str, str | None, str]]:
        with self.sessions() as s:
            return [(e.kind, e.node_name, e.message)
                    for e in s.scalars(select(db.Event).order_by(db.Event.id))]

    def power_up(self, names: list[str]) -> None:
        self.slurm.nodes_by_name = {n: powering_up(n) for n in names}


MakeWorld = Callable[..., World]


@pytest.fixture()
def make_world(tmp_path: Path) -> Iterator[MakeWorld]:
    engines = []

    def make(concurrency: int, one: GatedOne, one_client: Callable[[], object] | None = None,
             **controller: object) -> World:
        where = tmp_path / f"c{concurrency}-{len(engines)}"
        config = parse_config({
            "database": {"url": f"sqlite:///{where}/state.db"},
            "opennebula": {"retry_delays_s": [1]},
            "controller": {"cluster_name": "vc", "resume_timeout_s": 60, "status_file": "",
                           "state_dir": str(where / "state"), "boot_concurrency": concurrency,
                           "boot_rate_per_s": 1000.0, "boot_burst": 1000, **controller},
            "node_class": [{"name": "small", "count": 8, "cpus": 2, "memory_mb": 2048,
                            "template": "worker"}],
        })
        engine = db.make_engine(config.database)
        engines.append(engine)
        sessions = db.session_factory(engine)
        slurm, clock = FakeSlurm(), Clock()
        guest = GuestContext(slurm_conf_server="10.111.0.1:6817",
                             join_url="http://10.111.0.1:6830")
        actor = Actor(config, sessions, slurm, one, guest, guest_script=b"#!/bin/sh\n",
                      now=clock, one_client=one_client,  # type: ignore[arg-type]
                      monotonic=lambda: clock().timestamp(), sleep=clock.advance)
        return World(config, sessions, slurm, one, clock, actor,
                     Controller(config, sessions, slurm, one, actor, now=clock))

    yield make
    for engine in engines:
        engine.dispose()


def test_the_boots_of_a_pass_are_in_flight_together(make_world: MakeWorld) -> None:
    w = make_world(4, GatedOne(gate=4))
    w.power_up(NODES[:4])
    report = w.controller.run_pass()
    assert (report.boots, report.failed) == (4, 0)  # none gave up waiting at the gate
    assert w.one.most_inside == 4
    assert sorted(w.launches().values()) == [("booting", 40), ("booting", 41),
                                             ("booting", 42), ("booting", 43)]
    assert not [e for e in w.events() if e[0] == "action.failed"]


def test_standby_and_early_boots_overlap_too(make_world: MakeWorld) -> None:
    w = make_world(4, GatedOne(gate=4))
    boots: list[Action] = [
        BootStandby("small", "worker", 2, 2048), BootStandby("small", "worker", 2, 2048),
        BootEarly(NODES[0], "small", 12, 2, 2048, "worker"),
        BootVM(NODES[1], "small", 13, 2, 2048, "worker")]
    result = w.actor.act(boots)
    assert (result.done, result.failed) == (4, 0)
    assert w.one.most_inside == 4
    kinds = sorted(e[0] for e in w.events())
    assert kinds.count("vm.standby_booted") == 2 and kinds.count("vm.early_booted") == 1
    assert w.launches() == {NODES[1]: ("booting", w.launches()[NODES[1]][1])}


def test_one_refused_vm_fails_its_node_alone_with_the_same_events_as_one_at_a_time(
        make_world: MakeWorld) -> None:
    refusal = OneAuthorizationError("OpenNebula user 'vc' may not instantiate VM template 3")
    seen = {}
    for concurrency in (1, 4):
        w = make_world(concurrency, GatedOne(gate=4 if concurrency > 1 else 0,
                                             refuse={NODES[2]: refusal}))
        w.power_up(NODES[:6])
        report = w.controller.run_pass()
        assert (report.boots, report.failed) == (6, 0)
        launches = w.launches()
        assert launches.pop(NODES[2]) == ("failed", None)
        assert sorted(state for state, _ in launches.values()) == ["booting"] * 5
        reason = ("vcluster: cannot boot a VM: OpenNebula user 'vc' may not instantiate VM "
                  "template 3")
        assert f"nodename={NODES[2]} state=DOWN reason={reason}" in w.slurm.updates
        # VM ids (and so NodeAddr) may come in another order: compare without them
        seen[concurrency] = sorted((k, n, m.split(" ")[0] if k == "vm.allocated" else m)
                                   for k, n, m in w.events()
                                   if k not in ("node.addr",))
        assert w.one.most_inside == concurrency
    assert seen[4] == seen[1]


def test_a_boot_that_raises_something_unexpected_fails_only_itself(make_world: MakeWorld) -> None:
    w = make_world(4, GatedOne(gate=4, refuse={NODES[1]: RuntimeError("bug in a worker")}))
    w.power_up(NODES[:4])
    report = w.controller.run_pass()
    assert (report.boots, report.failed) == (4, 1)
    failed = [e for e in w.events() if e[0] == "action.failed"]
    assert failed == [("action.failed", NODES[1], "BootVM failed: bug in a worker")]
    states = w.launches()
    assert states.pop(NODES[1]) == ("allocating", None)  # as before: adopted or timed out
    assert sorted(s for s, _ in states.values()) == ["booting"] * 3


def test_a_temporary_error_leaves_only_its_launch_to_be_retried(make_world: MakeWorld) -> None:
    down = OneUnavailable("cannot reach OpenNebula at http://x (connection refused)")
    w = make_world(4, GatedOne(gate=4, refuse={NODES[0]: down}))
    w.power_up(NODES[:4])
    w.controller.run_pass()
    launches = w.launches()
    assert launches.pop(NODES[0]) == ("requested", None)
    assert sorted(s for s, _ in launches.values()) == ["booting"] * 3


def test_the_boot_rate_still_bounds_the_vms_requested(make_world: MakeWorld) -> None:
    """2/s, burst 3, 8 nodes powering up: 3 go out at once, then the actor waits for each
    next token (a slot every 0.5 s of its clock) for the boots the bucket holds within
    PACE_S (2 s): 7 in the first pass, the 8th in the next. At every moment t at most
    burst + rate * t VMs were requested."""
    w = make_world(8, GatedOne(gate=3), boot_rate_per_s=2.0, boot_burst=3)
    t0 = w.clock().timestamp()
    sent: list[float] = []
    inner = w.one.instantiate

    def instantiate(*args, **kwargs):  # type: ignore[no-untyped-def]
        sent.append(w.clock().timestamp() - t0)
        return inner(*args, **kwargs)

    w.one.instantiate = instantiate  # type: ignore[method-assign]
    w.power_up(NODES)
    w.controller.run_pass()
    assert sorted(sent) == [0.0, 0.0, 0.0, 0.5, 1.0, 1.5, 2.0]
    assert w.one.most_inside == 3  # the burst went out together (the gate met)
    w.clock.advance(0.1)
    w.controller.run_pass()
    assert len(sent) == 8
    for i, at in enumerate(sorted(sent)):  # a token bucket
        assert i + 1 <= 3 + 2.0 * at + 1e-6, sorted(sent)


def test_concurrency_one_paces_its_boots_the_same_way(make_world: MakeWorld) -> None:
    w = make_world(1, GatedOne(), boot_rate_per_s=4.0, boot_burst=2)
    t0 = w.clock().timestamp()
    sent: list[float] = []
    inner = w.one.instantiate

    def instantiate(*args, **kwargs):  # type: ignore[no-untyped-def]
        sent.append(round(w.clock().timestamp() - t0, 3))
        return inner(*args, **kwargs)

    w.one.instantiate = instantiate  # type: ignore[method-assign]
    w.power_up(NODES)
    w.controller.run_pass()
    assert sent == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5]


def test_concurrency_one_makes_the_calls_one_after_the_other_in_the_plans_order(
        make_world: MakeWorld) -> None:
    w = make_world(1, GatedOne(hold_s=0.01))
    boots = [BootVM(n, "small", None, 2, 2048, "worker") for n in NODES[:5]]
    result = w.actor.act(boots)
    assert (result.done, result.failed) == (5, 0)
    assert w.one.most_inside == 1
    assert [n for _, n, _ in w.one.instantiated] == NODES[:5]
    assert [w.launches()[n] for n in NODES[:5]] == [("booting", 40 + i) for i in range(5)]
    assert w.one.threads == {threading.current_thread().name}  # no worker: act's own thread


def test_the_config_refuses_a_concurrency_outside_one_to_32() -> None:
    from vcluster.errors import ConfigError
    for bad in (0, 33):
        with pytest.raises(ConfigError) as err:
            parse_config({"controller": {"boot_concurrency": bad}})
        assert str(err.value) == f"config: controller.boot_concurrency: must be 1-32, got {bad}"
    assert parse_config({}).controller.boot_concurrency == 4


@dataclass
class WitnessOne(GatedOne):
    """Reads, inside each instantiate, what the database holds for the node then (its own
    session, in the worker's thread): a controller dying at that moment leaves that."""

    sessions: db.sessionmaker[db.Session] | None = None
    seen: dict[str, tuple[str, int | None, int]] = field(default_factory=dict)

    def instantiate(self, template_id: int, name: str, extra_template: str, *,
                    hold: bool = False) -> int:
        assert self.sessions is not None
        with self.sessions() as s:
            row = s.scalars(select(db.Launch).where(db.Launch.node_name == name)).one()
            intents = s.scalars(select(db.Event).where(db.Event.node_name == name,
                                                       db.Event.kind == "vm.allocating")).all()
            self.seen[name] = (row.state, row.vm_id, len(intents))
        return super().instantiate(template_id, name, extra_template, hold=hold)


def test_each_launch_is_committed_before_its_instantiate_goes_out(make_world: MakeWorld) -> None:
    one = WitnessOne(gate=4)
    w = make_world(4, one)
    one.sessions = w.sessions
    w.power_up(NODES[:6])
    w.controller.run_pass()
    assert one.seen == {n: ("allocating", None, 1) for n in NODES[:6]}
    assert sorted(s for s, _ in w.launches().values()) == ["booting"] * 6


@dataclass
class Client:
    """A worker's own client: instantiates through the shared fake, noting who called."""

    one: GatedOne
    used_from: set[str] = field(default_factory=set)

    def instantiate(self, template_id: int, name: str, extra_template: str, *,
                    hold: bool = False) -> int:
        self.used_from.add(threading.current_thread().name)
        return self.one.instantiate(template_id, name, extra_template, hold=hold)


def test_each_boot_worker_calls_oned_on_a_client_of_its_own(make_world: MakeWorld) -> None:
    shared = GatedOne(gate=4)
    made: list[Client] = []

    def client() -> Client:
        made.append(Client(shared))
        return made[-1]

    w = make_world(4, shared, one_client=client)
    w.power_up(NODES[:8])
    report = w.controller.run_pass()
    assert (report.boots, report.failed) == (8, 0)
    assert len(shared.instantiated) == 8
    assert len(made) == 4  # one per worker, kept for the next boots
    assert all(len(c.used_from) == 1 for c in made)  # each used by its one thread
    assert len({name for c in made for name in c.used_from}) == 4
    assert threading.current_thread().name not in {n for c in made for n in c.used_from}


def test_a_slow_nodeaddr_update_does_not_hold_the_boots_back(
        make_world: MakeWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    """slurmctld slow to answer ``scontrol update`` (a burst: 7 s): the pass's other boots
    go out meanwhile, and the pass still ends with every node's NodeAddr set and recorded."""
    from vcluster.controller import node_addr

    monkeypatch.setattr(node_addr, "FLUSH_AT", 2)  # the first batch after two boots
    w = make_world(1, GatedOne())
    all_sent = threading.Event()
    inner_update, inner_instantiate = w.slurm.update_nodes, w.one.instantiate
    seen_at_first_update: list[int] = []

    def instantiate(*args, **kwargs):  # type: ignore[no-untyped-def]
        vm_id = inner_instantiate(*args, **kwargs)
        if len(w.one.instantiated) == len(NODES):
            all_sent.set()
        return vm_id

    def update_nodes(nodes, **kw):  # type: ignore[no-untyped-def]
        if not seen_at_first_update:  # answers once the pass's boots all went out
            all_sent.wait(WAIT_S)
            seen_at_first_update.append(len(w.one.instantiated))
        return inner_update(nodes, **kw)

    w.one.instantiate = instantiate  # type: ignore[method-assign]
    w.slurm.update_nodes = update_nodes  # type: ignore[method-assign]
    w.power_up(NODES)
    started = time.monotonic()
    w.controller.run_pass()
    assert seen_at_first_update == [len(NODES)]
    assert time.monotonic() - started < WAIT_S  # nobody waited for the timeout
    assert sorted(n for k, n, _ in w.events() if k == "node.addr") == NODES
    assert all(state == "booting" for state, _ in w.launches().values())


def test_a_nodeaddr_update_slower_than_the_pass_ends_in_the_background_without_a_second(
        make_world: MakeWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pass waits ADDR_WAIT_S for its NodeAddr update, then ends; the next pass plans
    no second update for nodes whose update is still in flight; the update's result is
    recorded when slurmctld answers."""
    from vcluster.controller import act as act_module

    monkeypatch.setattr(act_module, "ADDR_WAIT_S", 0.05)
    w = make_world(1, GatedOne())
    answer = threading.Event()
    calls: list[str] = []
    inner = w.slurm.update_nodes

    def update_nodes(nodes, **kw):  # type: ignore[no-untyped-def]
        calls.append(nodes)
        answer.wait(WAIT_S)
        return inner(nodes, **kw)

    w.slurm.update_nodes = update_nodes  # type: ignore[method-assign]
    w.power_up(NODES[:2])
    w.controller.run_pass()
    assert [k for k, _, _ in w.events() if k == "node.addr"] == []
    w.clock.advance(1.0)
    w.controller.run_pass()  # the launches lack an IP: not a second update
    answer.set()
    assert w.actor._addr_updates.wait(WAIT_S)
    assert calls == [",".join(NODES[:2])]
    assert sorted(n for k, n, _ in w.events() if k == "node.addr") == NODES[:2]
