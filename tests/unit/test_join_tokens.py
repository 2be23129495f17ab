"""One-time join tokens: issue, redeem, expiry, replay, wrong address, a new boot attempt."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tests.unit.controller_fixtures import T0, vm
from vcluster import db
from vcluster.config import DatabaseSettings
from vcluster.controller.join_tokens import bind, issue, issue_unbound, redeem, token_hash
from vcluster.errors import OneNotFound, OneUnavailable
from vcluster.one_vm import VM

NODE = "vc-small-001"
VM_IP = "10.9.0.40"


@dataclass
class FakeVms:
    """Implements join_tokens.VmReader: VMs by id; an error raised instead when set."""

    by_id: dict[int, VM] = field(default_factory=dict)
    error: Exception | None = None
    calls: int = 0

    def vm(self, vm_id: int) -> VM:
        self.calls += 1
        if self.error is not None:
            raise self.error
        if vm_id not in self.by_id:
            raise OneNotFound(f"OpenNebula has no VM {vm_id}")
        return self.by_id[vm_id]


@pytest.fixture
def sessions(tmp_path) -> Iterator[sessionmaker[Session]]:  # type: ignore[no-untyped-def]
    engine = db.make_engine(DatabaseSettings(url=f"sqlite:///{tmp_path}/state.db"))
    try:
        yield db.session_factory(engine)
    finally:
        engine.dispose()


def _launch(sessions: sessionmaker[Session], *, vm_id: int | None = 40,
            state: str = "booting", ip: str | None = None) -> tuple[int, str]:
    with db.transaction(sessions) as s:
        row = db.Launch(node_name=NODE, node_class="small", state=state, attempts=1,
                        reason="", vm_id=vm_id, ip=ip, created_at=T0, updated_at=T0)
        s.add(row)
        s.flush()
        token = issue(s, launch_id=row.id, node_name=NODE, now=T0, ttl_s=60)
        return row.id, token


def _vms() -> FakeVms:
    return FakeVms({40: vm(40, NODE, "RUNNING", ip=VM_IP)})


def test_the_vm_redeems_its_token_once(sessions: sessionmaker[Session]) -> None:
    _, token = _launch(sessions)
    one = _vms()
    first = redeem(sessions, one, token, VM_IP, now=T0 + timedelta(seconds=5))
    assert (first.granted, first.node_name, first.vm_id) == (True, NODE, 40)
    again = redeem(sessions, one, token, VM_IP, now=T0 + timedelta(seconds=6))
    assert not again.granted and not again.retry and again.vm_id == 40
    assert again.reason == f"token already redeemed at 07:00:05 from {VM_IP}"


def test_only_the_hash_is_stored(sessions: sessionmaker[Session]) -> None:
    _, token = _launch(sessions)
    with sessions() as s:
        (row,) = s.scalars(select(db.JoinToken)).all()
    assert row.token_sha256 == token_hash(token) != token
    assert len(token) >= 43  # 32 random bytes, url-safe base64


def test_a_caller_at_another_address_gets_nothing_and_does_not_burn_it(
        sessions: sessionmaker[Session]) -> None:
    _, token = _launch(sessions)
    one = _vms()
    thief = redeem(sessions, one, token, "10.9.0.99", now=T0)
    assert not thief.granted and not thief.retry
    assert thief.reason == f"caller 10.9.0.99 is not VM 40 (OpenNebula gives it {VM_IP})"
    assert redeem(sessions, one, token, VM_IP, now=T0).granted


def test_an_expired_token_gives_nothing(sessions: sessionmaker[Session]) -> None:
    _, token = _launch(sessions)
    late = redeem(sessions, _vms(), token, VM_IP, now=T0 + timedelta(seconds=61))
    assert not late.granted and not late.retry
    assert late.reason == "token expired at 07:01:00"


def test_unknown_and_malformed_tokens(sessions: sessionmaker[Session]) -> None:
    _launch(sessions)
    one = _vms()
    assert redeem(sessions, one, "guess", VM_IP, now=T0).reason.startswith("unknown token")
    assert redeem(sessions, one, "", VM_IP, now=T0).reason == "no token or a malformed one"
    assert redeem(sessions, one, "x" * 500, VM_IP, now=T0).reason == \
        "no token or a malformed one"
    assert one.calls == 0  # nothing asked of OpenNebula for a token that is not ours


def test_a_new_boot_attempt_replaces_the_old_token(sessions: sessionmaker[Session]) -> None:
    launch_id, old = _launch(sessions)
    with db.transaction(sessions) as s:
        new = issue(s, launch_id=launch_id, node_name=NODE, now=T0, ttl_s=60)
    one = _vms()
    assert redeem(sessions, one, old, VM_IP, now=T0).reason.startswith("unknown token")
    assert redeem(sessions, one, new, VM_IP, now=T0).granted


def test_an_expired_token_is_refused_until_the_prune_removes_it(
        sessions: sessionmaker[Session]) -> None:
    _, token = _launch(sessions)
    later = T0 + timedelta(seconds=120)
    with db.transaction(sessions) as s:  # another boot: the expired token stays ...
        issue(s, launch_id=999, node_name="vc-small-002", now=later, ttl_s=60)
    assert redeem(sessions, _vms(), token, VM_IP, now=later).reason.startswith(
        "token expired at")  # ... and is refused
    with sessions() as s:
        assert sorted(r.launch_id for r in s.scalars(select(db.JoinToken))) == [1, 999]


def test_not_yet_known_vm_or_oned_down_means_ask_again(sessions: sessionmaker[Session]) -> None:
    _, token = _launch(sessions, vm_id=None)
    early = redeem(sessions, _vms(), token, VM_IP, now=T0)
    assert (early.granted, early.retry, early.reason) == (
        False, True, "the VM's id is not recorded yet")
    _, token2 = _launch_second(sessions)
    down = FakeVms(error=OneUnavailable("OpenNebula at http://x does not answer"))
    outcome = redeem(sessions, down, token2, VM_IP, now=T0)
    assert (outcome.granted, outcome.retry) == (False, True)
    assert redeem(sessions, _vms(), token2, VM_IP, now=T0).granted  # not used up meanwhile


def _launch_second(sessions: sessionmaker[Session], vm_id: int = 40) -> tuple[int, str]:
    with db.transaction(sessions) as s:
        row = db.Launch(node_name="vc-small-002", node_class="small", state="booting",
                        attempts=1, reason="", vm_id=vm_id, created_at=T0, updated_at=T0)
        s.add(row)
        s.flush()
        return row.id, issue(s, launch_id=row.id, node_name="vc-small-002", now=T0, ttl_s=60)


def test_a_launch_being_terminated_or_a_gone_vm_gets_nothing(
        sessions: sessionmaker[Session]) -> None:
    _, token = _launch(sessions, state="terminating")
    assert redeem(sessions, _vms(), token, VM_IP, now=T0).reason == (
        "the token's launch is over (its VM is being or was terminated)")
    _, token2 = _launch_second(sessions, vm_id=41)
    gone = FakeVms({41: VM(41, "vc-small-002", 6, 0, "DONE", (VM_IP,), {})})
    outcome = redeem(sessions, gone, token2, VM_IP, now=T0)
    assert (outcome.granted, outcome.retry, outcome.reason) == (False, False,
                                                                "VM 41 is gone (DONE)")


def test_the_address_known_from_the_allocation_needs_no_call_to_oned(
        sessions: sessionmaker[Session]) -> None:
    _, token = _launch(sessions, ip=VM_IP)  # what OpenNebula said right after the allocation
    down = FakeVms(error=OneUnavailable("OpenNebula at http://x does not answer"))
    assert redeem(sessions, down, "not-" + token, "10.9.0.99", now=T0).reason.startswith(
        "unknown token")
    thief = redeem(sessions, down, token, "10.9.0.99", now=T0)  # another address: asks oned
    assert (thief.granted, thief.retry, down.calls) == (False, True, 1)
    granted = redeem(sessions, down, token, VM_IP, now=T0)
    assert (granted.granted, down.calls) == (True, 1)


def test_a_standby_vm_redeems_a_token_bound_to_its_vm(sessions: sessionmaker[Session]) -> None:
    """A VM booted with no node (a standby VM, one booted at allocation) has no launch: its
    token names the VM once allocated, and only that VM's address redeems it, once."""
    with db.transaction(sessions) as s:
        token = issue_unbound(s, what="standby:small", now=T0, ttl_s=60)
    one = FakeVms({41: vm(41, "", "RUNNING", ip="10.9.0.41")})
    early = redeem(sessions, one, token, "10.9.0.41", now=T0 + timedelta(seconds=1))
    assert (early.granted, early.retry) == (False, True)  # not allocated yet: ask again
    with db.transaction(sessions) as s:
        bind(s, token, 41)
    wrong = redeem(sessions, one, token, VM_IP, now=T0 + timedelta(seconds=2))
    assert not wrong.granted and wrong.reason == (
        "caller 10.9.0.40 is not VM 41 (OpenNebula gives it 10.9.0.41)")
    got = redeem(sessions, one, token, "10.9.0.41", now=T0 + timedelta(seconds=3))
    assert (got.granted, got.node_name, got.vm_id) == (True, "standby:small", 41)
    assert not redeem(sessions, one, token, "10.9.0.41", now=T0 + timedelta(seconds=4)).granted
