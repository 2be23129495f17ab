"""One-time join tokens: how a worker VM gets the munge key without it sitting in its CONTEXT.

Why it exists: whoever can read a VM through OpenNebula's API (``onevm show``: its owner,
its group, oneadmin, an ACL) reads its CONTEXT. Putting the cluster's munge key there gave
every such reader the power to impersonate any user to Slurm. Instead, each boot attempt
gets a random token (:func:`issue`, in the same transaction that records the attempt); the
CONTEXT carries only that token and the controller's join URL, and the VM trades the token
for the key once, at boot (:func:`redeem`, called by :mod:`vcluster.controller.join_server`).

A token is worth something only to its own VM and only once:

* it is bound to one launch (one boot attempt of one node); a new attempt replaces it; a VM
  booted with no node yet (a standby VM, a VM booted at allocation) gets one bound to its VM
  id once allocated (:func:`issue_unbound`, :func:`bind`);
* it is redeemed at most once (an atomic ``UPDATE ... WHERE redeemed_at IS NULL``);
* it expires after ``resume_timeout_s`` (the VM is given up by then anyway);
* the caller's address must be one of the VM's addresses as OpenNebula reports them (the
  address read from OpenNebula right after the allocation, kept on the launch; else the VM
  is read again);
* the launch must still be open (a VM being terminated gets nothing).

Only the token's SHA-256 is stored, so the database (or a backup of it) redeems nothing.
The token lives in the database rather than in memory so that a controller restart during a
boot does not strand the VM: the VM retries until the controller answers again.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import delete, update
from sqlalchemy.orm import Session, sessionmaker

from vcluster import db
from vcluster.errors import VclusterError
from vcluster.one_vm import VM

TOKEN_BYTES = 32
"""Random bytes per token (256 bits: not guessable in any number of tries)."""


class VmReader(Protocol):
    def vm(self, vm_id: int) -> VM: ...


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def issue(session: Session, *, launch_id: int, node_name: str, now: datetime,
          ttl_s: float) -> str:
    """A fresh token for this boot attempt of ``launch_id`` (the launch's older tokens are
    removed); the plain token is returned and never stored. On every boot's path: one
    indexed delete, no session synchronisation (no token is loaded in a boot's session).
    Expired tokens are removed by the controller's prune (a burst's 1,000 boots each swept
    the whole table here); one not removed yet is refused all the same."""
    session.execute(delete(db.JoinToken).where(db.JoinToken.launch_id == launch_id),
                    execution_options={"synchronize_session": False})
    token = secrets.token_urlsafe(TOKEN_BYTES)
    session.add(db.JoinToken(token_sha256=token_hash(token), launch_id=launch_id,
                             node_name=node_name, expires_at=now + timedelta(seconds=ttl_s)))
    return token


def issue_unbound(session: Session, *, what: str, now: datetime, ttl_s: float) -> str:
    """A fresh token for a VM about to be booted with no launch (``what`` says which, e.g.
    ``standby:small``); :func:`bind` names its VM once allocated, and it is refused until."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    session.add(db.JoinToken(token_sha256=token_hash(token), launch_id=None, node_name=what,
                             expires_at=now + timedelta(seconds=ttl_s)))
    return token


def bind(session: Session, token: str, vm_id: int) -> None:
    """The VM a launch-less token (:func:`issue_unbound`) belongs to."""
    session.execute(update(db.JoinToken).where(db.JoinToken.token_sha256 == token_hash(token))
                    .values(vm_id=vm_id))


def forget(session: Session, token: str) -> None:
    """Drop a token whose VM was never allocated."""
    session.execute(delete(db.JoinToken).where(db.JoinToken.token_sha256 == token_hash(token)))


@dataclass(frozen=True)
class Outcome:
    """What a redeem attempt gave: ``granted`` with the node, or a refusal.

    ``retry`` marks a refusal that may pass later (the VM's id or address not known yet, or
    OpenNebula not answering): the token is kept and the VM asks again."""

    granted: bool
    reason: str
    node_name: str = ""
    vm_id: int | None = None
    retry: bool = False


def _refuse(reason: str, row: db.JoinToken | None = None, *, retry: bool = False,
            vm_id: int | None = None) -> Outcome:
    return Outcome(False, reason, node_name=row.node_name if row else "", vm_id=vm_id,
                   retry=retry)


def redeem(sessions: sessionmaker[Session], one: VmReader, token: str, caller: str, *,
           now: datetime) -> Outcome:
    """Check ``token`` presented from address ``caller`` and use it up if it is good.

    The token is consumed only when every check passes; a caller at the wrong address does
    not burn the real VM's token. No database transaction is held across the OpenNebula read.
    """
    if not token or len(token) > 128:
        return _refuse("no token or a malformed one")
    digest = token_hash(token)
    with sessions() as s:
        row = s.get(db.JoinToken, digest)
        if row is None:
            return _refuse("unknown token (never issued, replaced by a newer boot attempt, "
                           "or expired and removed)")
        unbound = row.launch_id is None  # a standby VM's, or one booted at allocation
        launch = None if unbound else s.get(db.Launch, row.launch_id)
        vm_id = row.vm_id if unbound else launch.vm_id if launch is not None else None
        known_ip = launch.ip if launch is not None else None
        if row.redeemed_at is not None:
            return _refuse(f"token already redeemed at {row.redeemed_at:%H:%M:%S} from "
                           f"{row.redeemed_from}", row, vm_id=vm_id)
        if row.expires_at < now:
            return _refuse(f"token expired at {row.expires_at:%H:%M:%S}", row, vm_id=vm_id)
        if not unbound and (launch is None or not launch.is_open
                            or launch.state == "terminating"):
            return _refuse("the token's launch is over (its VM is being or was terminated)",
                           row, vm_id=vm_id)
    if vm_id is None:
        return _refuse("the VM's id is not recorded yet", row, retry=True)
    if caller != known_ip:  # not the address OpenNebula gave at allocation: ask it now
        refusal = _check_live_address(one, vm_id, caller, row)
        if refusal is not None:
            return refusal
    with db.transaction(sessions) as s:
        used = s.execute(
            update(db.JoinToken)
            .where(db.JoinToken.token_sha256 == digest, db.JoinToken.redeemed_at.is_(None))
            .values(redeemed_at=now, redeemed_from=caller))
        if getattr(used, "rowcount", 0) != 1:
            return _refuse("token already redeemed (a concurrent request)", row, vm_id=vm_id)
    return Outcome(True, "granted", node_name=row.node_name, vm_id=vm_id)


def _check_live_address(one: VmReader, vm_id: int, caller: str, row: db.JoinToken
                        ) -> Outcome | None:
    """None if OpenNebula says ``caller`` is VM ``vm_id``'s address now, else the refusal."""
    try:
        vm = one.vm(vm_id)
    except VclusterError as exc:
        return _refuse(f"cannot read VM {vm_id} from OpenNebula: {exc}", row, retry=True,
                       vm_id=vm_id)
    if vm.is_gone:
        return _refuse(f"VM {vm_id} is gone ({vm.state_name})", row, vm_id=vm_id)
    if not vm.ips:
        return _refuse(f"VM {vm_id} has no address in OpenNebula yet", row, retry=True,
                       vm_id=vm_id)
    if caller not in vm.ips:
        return _refuse(f"caller {caller} is not VM {vm_id} (OpenNebula gives it "
                       f"{', '.join(vm.ips)})", row, vm_id=vm_id)
    return None
