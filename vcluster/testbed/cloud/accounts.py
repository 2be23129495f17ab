"""Users, groups and permissions of the testbed cloud, as oned 7.4 keeps and checks them.

Why this exists: a site runs vcluster as a dedicated OpenNebula user, not as oneadmin, and
what that user may do is decided by oned's ownership and permission bits: a template it
cannot USE is refused, and a NIC ``NETWORK="name"`` names a network *the requesting user*
owns unless NETWORK_UNAME/NETWORK_UID says whose. deploy/INSTALL.md's OpenNebula steps must
be checked against that, so the testbed answers them as oned does (src/um/UserPool.cc,
src/group/GroupPool.cc, src/authm/AuthManager.cc, src/rm/api/SharedAPI.cc, UserAPI.cc).

What is modelled: the "core" password driver (sha256 of the password, session
``user:password``), oneadmin (uid 0) and serveradmin (uid 1) in group oneadmin (0), the
group users (1), new groups from id 100, new users from id 2; the nine permission bits of
templates and networks (default 600: oned's UMASK 177) with oned's owner/group/other rule,
oneadmin and members of group oneadmin allowed everything; then the ACL rules (:mod:`acl`),
as oned's AclManager::authorize. Not modelled: CREATE checked against the rules (every user
may create VMs, templates and networks), quotas, login tokens.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

from vcluster.testbed.cloud.acl import AclRules
from vcluster.testbed.cloud.settings import (
    ACTION,
    ALLOCATE,
    AUTHORIZATION,
    INTERNAL,
    NO_EXISTS,
    XML_RPC_API,
    OneRequestError,
)

ONEADMIN_GID, USERS_GID = 0, 1
FIRST_GROUP_ID = 100  # GroupPool: set_lastOID(99) after creating oneadmin and users
FIRST_USER_ID = 2  # UserPool: oneadmin 0, serveradmin 1
DEFAULT_PERMS = (1, 1, 0, 0, 0, 0, 0, 0, 0)  # UMASK 177
USER_INVALID_NAME_CHARS = " :\t\n\v\f\r"  # User::INVALID_NAME_CHARS
USER_INVALID_PASS_CHARS = " \t\n\v\f\r"  # User::INVALID_PASS_CHARS
USE, MANAGE, ADMIN = 0, 1, 2


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class User:
    uid: int
    name: str
    password: str
    """sha256 of the password for the core driver (as oned stores it)."""
    gid: int
    groups: list[int] = field(default_factory=list)
    auth_driver: str = "core"
    enabled: bool = True
    gname: str = ""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @property
    def is_admin(self) -> bool:
        return self.uid == 0 or ONEADMIN_GID in self.groups


@dataclass
class Group:
    gid: int
    name: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


OBJECT_NAMES = {"vm": "VM", "host": "HOST", "template": "TEMPLATE", "vnet": "NET",
                "user": "USER", "group": "GROUP", "image": "IMAGE"}
"""PoolObjectSQL::type_to_str, as AuthManager writes it into its refusal."""


def authorized(user: User, obj: Any, op: int) -> bool:
    """AclManager::authorize's first part: oneadmin's group may do anything; others by the
    object's owner, group or other bit for ``op`` (USE 0, MANAGE 1, ADMIN 2). The ACL
    rules come after (:meth:`Accounts.may`)."""
    if user.is_admin:
        return True
    perms = obj.perms
    if obj.uid == user.uid and perms[op]:
        return True
    if obj.gid in user.groups and perms[3 + op]:
        return True
    return bool(perms[6 + op])


def denial(kind: str, obj_id: int, op: int) -> str:
    """AuthRequest::add_auth's text for one refused authorization."""
    return f"Not authorized to perform {('USE', 'MANAGE', 'ADMIN')[op]} " \
        f"{OBJECT_NAMES[kind]} [{obj_id}]"


def refuse(user: User, kind: str, obj_id: int, op: int) -> OneRequestError:
    """Request::failure_message for AUTHORIZATION with AuthManager's message."""
    return OneRequestError(AUTHORIZATION, f"User [{user.uid}] : {denial(kind, obj_id, op)}.")


class Accounts:
    """The user and group pools; mixed into the cloud (which has ``store`` and ``lock``)."""

    store: Any
    lock: threading.RLock
    settings: Any

    def load_accounts(self) -> None:
        self.users: dict[int, User] = {}
        self.groups: dict[int, Group] = {}
        self._caller = threading.local()
        self.acl = AclRules(self.store)
        for data in self.store.load_kind("group"):
            self.groups[data["gid"]] = Group(**data)
        for data in self.store.load_kind("user"):
            self.users[data["uid"]] = User(**data)
        if not self.groups:
            for group in (Group(ONEADMIN_GID, "oneadmin"), Group(USERS_GID, "users")):
                self.groups[group.gid] = group
                self.store.put_kind("group", group.gid, group.to_json())
            self.store.take_id("group", FIRST_GROUP_ID - 1)
        name, _, password = self.settings.auth.partition(":")
        admin = User(0, name, sha256(password), ONEADMIN_GID, [ONEADMIN_GID],
                     gname="oneadmin")
        self.users[0] = admin  # the settings decide oneadmin's password at every start
        self.store.put_kind("user", 0, admin.to_json())
        if 1 not in self.users:
            server = User(1, "serveradmin", sha256(secrets.token_hex(16)), ONEADMIN_GID,
                          [ONEADMIN_GID], auth_driver="server_cipher", gname="oneadmin")
            self.users[1] = server
            self.store.put_kind("user", 1, server.to_json())
            self.store.take_id("user", FIRST_USER_ID - 1)

    # --- the caller of the current request ---------------------------------------------

    def authenticate(self, session: str) -> User | None:
        """The core driver: ``user:password``, sha256 of the password compared."""
        name, sep, password = session.partition(":")
        if not sep:
            return None
        with self.lock:
            user = next((u for u in self.users.values() if u.name == name), None)
        if user is None or not user.enabled or user.password != sha256(password):
            return None
        return user

    def set_caller(self, user: User | None) -> None:
        self._caller.user = user

    @property
    def caller(self) -> User:
        """The user of the request this thread serves; oneadmin outside requests."""
        user = getattr(self._caller, "user", None)
        return user if user is not None else self.users[0]

    def owner_fields(self) -> dict[str, Any]:
        user = self.caller
        return {"uid": user.uid, "gid": user.gid, "uname": user.name,
                "gname": self.groups[user.gid].name}

    def may(self, kind: str, obj: Any, obj_id: int, op: int) -> bool:
        """The caller may ``op`` on the object: its permission bits (hosts have none: no
        owner, oned's uid and gid -1), then the ACL rules (a host's cluster for ``%cid``)."""
        user = self.caller
        if user.is_admin or (hasattr(obj, "perms") and authorized(user, obj, op)):
            return True
        cids = (getattr(obj, "cluster_id", 0),) if kind in ("host", "vnet") else ()
        return self.acl.authorize(user.uid, user.groups, kind, obj_id,
                                  getattr(obj, "gid", -1), cids, op)

    def check(self, kind: str, obj: Any, obj_id: int, op: int) -> None:
        if not self.may(kind, obj, obj_id, op):
            raise refuse(self.caller, kind, obj_id, op)

    # --- users and groups ----------------------------------------------------------------

    def get_user(self, uid: int) -> User:
        user = self.users.get(uid)
        if user is None:
            raise OneRequestError(NO_EXISTS, f"Error getting user [{uid}].", uid)
        return user

    def get_group(self, gid: int) -> Group:
        group = self.groups.get(gid)
        if group is None:
            raise OneRequestError(NO_EXISTS, f"Error getting group [{gid}].", gid)
        return group

    def allocate_user(self, name: str, password: str, driver: str, gids: list[int]) -> int:
        """UserAllocateAPI + UserPool::allocate (their checks and texts, in their order)."""
        caller = self.caller
        if not caller.is_admin:
            raise OneRequestError(AUTHORIZATION, f"User [{caller.uid}] : Not authorized to "
                                  "perform CREATE USER.")
        driver = driver or "core"
        with self.lock:
            if not gids:
                gids = [USERS_GID] if caller.gid == ONEADMIN_GID else [caller.gid]
            for gid in gids:
                if gid not in self.groups:
                    raise OneRequestError(NO_EXISTS, f"Error getting group [{gid}].", gid)
            if driver == "core":
                if not password:
                    raise _alloc("user", "Invalid password, it cannot be empty.")
                bad = next((c for c in password if c in USER_INVALID_PASS_CHARS), None)
                if bad is not None:
                    raise _alloc("user", f"Invalid password, character '{bad}' is not "
                                 "allowed.")
            if not name:
                raise _alloc("user", "Invalid NAME, it cannot be empty.")
            bad = next((c for c in name if c in USER_INVALID_NAME_CHARS), None)
            if bad is not None:
                raise _alloc("user", f"Invalid NAME, char '{bad}' is not allowed.")
            taken = next((u for u in self.users.values() if u.name == name), None)
            if taken is not None:
                raise _alloc("user", f"NAME is already taken by USER {taken.uid}.")
            uid = self.store.next_id("user")
            stored = sha256(password) if driver == "core" else password
            user = User(uid, name, stored, gids[0], sorted(set(gids)), auth_driver=driver,
                        gname=self.groups[gids[0]].name)
            self.users[uid] = user
            self.store.put_kind("user", uid, user.to_json())
            return uid

    def allocate_group(self, name: str) -> int:
        caller = self.caller
        if not caller.is_admin:
            raise OneRequestError(AUTHORIZATION, f"User [{caller.uid}] : Not authorized to "
                                  "perform CREATE GROUP.")
        with self.lock:
            from vcluster.testbed.cloud.resources import check_name
            try:
                check_name(name, required=True)
            except OneRequestError as exc:
                raise _alloc("group", exc.message) from None
            taken = next((g for g in self.groups.values() if g.name == name), None)
            if taken is not None:
                raise _alloc("group", f"NAME is already taken by GROUP {taken.gid}.")
            gid = self.store.next_id("group")
            self.groups[gid] = Group(gid, name)
            self.store.put_kind("group", gid, self.groups[gid].to_json())
            return gid

    def user_chgrp(self, uid: int, gid: int) -> int:
        """UserAPI::change_group: the new group becomes primary, the old one is left."""
        if gid < 0:
            raise OneRequestError(XML_RPC_API, "Wrong group ID")
        with self.lock:
            user = self.get_user(uid)
            self.get_group(gid)
            if uid == 0:
                raise OneRequestError(INTERNAL, "User [0] oneadmin cannot be moved outside "
                                      "of the Group [0] oneadmin")
            if not self.caller.is_admin:
                raise refuse(self.caller, "user", uid, MANAGE)
            if user.gid != gid:
                new_group = gid not in user.groups
                if new_group:
                    user.groups = sorted((set(user.groups) - {user.gid}) | {gid})
                user.gid, user.gname = gid, self.groups[gid].name
                self.store.put_kind("user", uid, user.to_json())
            return uid

    def user_passwd(self, uid: int, password: str) -> int:
        with self.lock:
            user = self.get_user(uid)
            if not self.caller.is_admin and self.caller.uid != uid:
                raise refuse(self.caller, "user", uid, MANAGE)
            if not password:
                raise OneRequestError(ACTION, "Invalid password, it cannot be empty")
            user.password = sha256(password) if user.auth_driver == "core" else password
            self.store.put_kind("user", uid, user.to_json())
            return uid

    # --- ownership and permissions of templates and networks ---------------------------

    def chmod(self, kind: str, obj: Any, obj_id: int, bits: list[int]) -> int:
        """SharedAPI::chmod: -1 keeps a bit; admin bits need ADMIN, the rest MANAGE."""
        with self.lock:
            current = list(obj.perms)
            for i in (2, 5, 6, 7, 8):
                if bits[i] == current[i]:
                    bits[i] = -1
            op = ADMIN if any(bits[i] != -1 for i in (2, 5, 8)) else MANAGE
            self.check(kind, obj, obj_id, op)
            if any(b not in (-1, 0, 1) for b in bits):
                raise OneRequestError(INTERNAL, "New permission values must be -1, 0 or 1")
            obj.perms = tuple(c if b == -1 else b for b, c in zip(bits, current, strict=True))
            return obj_id

    def chown(self, kind: str, obj: Any, obj_id: int, uid: int, gid: int) -> int:
        """SharedAPI::chown: the new user and group must exist; MANAGE on the object
        (oneadmin's group only may give objects away: MANAGE USER)."""
        with self.lock:
            user = self.get_user(uid) if uid > -1 else None
            group = self.get_group(gid) if gid > -1 else None
            if user is not None and uid != obj.uid:
                self.check(kind, obj, obj_id, MANAGE)
                if not self.caller.is_admin:
                    raise refuse(self.caller, "user", uid, MANAGE)
                obj.uid, obj.uname = uid, user.name
            if group is not None and gid != obj.gid:
                self.check(kind, obj, obj_id, MANAGE)
                if not self.caller.is_admin and gid not in self.caller.groups:
                    raise refuse(self.caller, "group", gid, USE)
                obj.gid, obj.gname = gid, group.name
            return obj_id


def _alloc(kind: str, message: str) -> OneRequestError:
    return OneRequestError(ALLOCATE, f"Error allocating a new {kind}. {message}")
