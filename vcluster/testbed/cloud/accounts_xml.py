"""The XML-RPC methods of users, groups and object permissions, and their XML bodies.

Why this exists: a site admin's OpenNebula setup (``oneuser create``, ``onegroup create``,
``oneuser chgrp``, ``onetemplate chmod``, ``onevnet chown``, ``oneacl create``...) makes
these calls; split from :mod:`rpc` to keep it short. Parameters are read as oned 7.4's
UserXRPC.cc, GroupXRPC.cc, TemplateXRPC.cc, VirtualNetworkXRPC.cc and AclXRPC.cc read them;
bodies follow share/doc/xsd/user.xsd, group.xsd (quotas empty: the testbed has none) and
acl_pool.xsd.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vcluster.testbed.cloud.accounts import USE, Group, User, refuse
from vcluster.testbed.cloud.acl import INDIVIDUAL_ID, parse_hex
from vcluster.testbed.cloud.acl import ZONE_ID as ACL_ZONE_ID
from vcluster.testbed.cloud.settings import AUTHORIZATION, INTERNAL, XML_RPC_API, OneRequestError
from vcluster.testbed.cloud.xmlgen import _e

if TYPE_CHECKING:
    from vcluster.testbed.cloud.cloud import Cloud

_QUOTAS = "<DATASTORE_QUOTA/><NETWORK_QUOTA/><VM_QUOTA/><IMAGE_QUOTA/>"


def user_xml(user: User, *, defaults: bool = True) -> str:
    groups = "".join(_e("ID", g) for g in user.groups)
    return ("<USER>" + _e("ID", user.uid) + _e("GID", user.gid)
            + f"<GROUPS>{groups}</GROUPS>" + _e("GNAME", user.gname) + _e("NAME", user.name)
            + _e("PASSWORD", user.password) + _e("AUTH_DRIVER", user.auth_driver)
            + _e("ENABLED", int(user.enabled)) + "<TEMPLATE/>"
            + (_QUOTAS + f"<DEFAULT_USER_QUOTAS>{_QUOTAS}</DEFAULT_USER_QUOTAS>"
               if defaults else "")
            + "</USER>")


def group_xml(group: Group, members: list[int], *, defaults: bool = True) -> str:
    users = "".join(_e("ID", u) for u in members)
    return ("<GROUP>" + _e("ID", group.gid) + _e("NAME", group.name) + "<TEMPLATE/>"
            + (f"<USERS>{users}</USERS>" if users else "<USERS/>") + "<ADMINS/>"
            + (_QUOTAS + f"<VLAN_RULES>{_e('ID', group.gid)}</VLAN_RULES>"
               f"<DEFAULT_GROUP_QUOTAS>{_QUOTAS}</DEFAULT_GROUP_QUOTAS>" if defaults else "")
            + "</GROUP>")


def methods(cloud: Cloud, method: Any) -> dict[str, Any]:
    """The method table entries (``method`` is rpc.Method: required, optional, handler)."""
    c = cloud

    def user_info(uid: int = -1, _decrypt: bool = False) -> str:
        with c.lock:
            uid = c.caller.uid if uid == -1 else uid
            user = c.get_user(uid)
            if not c.caller.is_admin and uid != c.caller.uid:
                raise refuse(c.caller, "user", uid, USE)
            return user_xml(user)

    def userpool_info() -> str:
        with c.lock:
            users = [u for u in sorted(c.users.values(), key=lambda u: u.uid)
                     if c.caller.is_admin or u.uid == c.caller.uid]
            return ("<USER_POOL>" + "".join(user_xml(u, defaults=False) for u in users)
                    + f"<DEFAULT_USER_QUOTAS>{_QUOTAS}</DEFAULT_USER_QUOTAS></USER_POOL>")

    def members(gid: int) -> list[int]:
        return sorted(u.uid for u in c.users.values() if gid in u.groups)

    def group_info(gid: int = -1, _decrypt: bool = False) -> str:
        with c.lock:
            gid = c.caller.gid if gid == -1 else gid
            group = c.get_group(gid)
            if not c.caller.is_admin and gid not in c.caller.groups:
                raise refuse(c.caller, "group", gid, USE)
            return group_xml(group, members(gid))

    def grouppool_info() -> str:
        with c.lock:
            groups = [g for g in sorted(c.groups.values(), key=lambda g: g.gid)
                      if c.caller.is_admin or g.gid in c.caller.groups]
            return ("<GROUP_POOL>" + "".join(group_xml(g, members(g.gid), defaults=False)
                                             for g in groups)
                    + f"<DEFAULT_GROUP_QUOTAS>{_QUOTAS}</DEFAULT_GROUP_QUOTAS></GROUP_POOL>")

    def user_allocate(name: str, password: str, driver: str, gids: list[Any] | None = None
                      ) -> int:
        if gids is not None and any(type(g) is not int for g in gids):
            raise OneRequestError(XML_RPC_API, "Wrong group ID")
        return c.allocate_user(name, password, driver, list(gids or []))

    def chmod(kind: str) -> Any:
        def handler(obj_id: int, *bits_and_flag: Any) -> int:
            with c.lock:
                obj = c.get_template(obj_id) if kind == "template" else c.get_vnet(obj_id)
                done = c.chmod(kind, obj, obj_id, list(bits_and_flag[:9]))
                _persist(c, kind, obj)
                return done
        return handler

    def chown(kind: str) -> Any:
        def handler(obj_id: int, uid: int, gid: int) -> int:
            with c.lock:
                obj = c.get_template(obj_id) if kind == "template" else c.get_vnet(obj_id)
                done = c.chown(kind, obj, obj_id, uid, gid)
                _persist(c, kind, obj)
                return done
        return handler

    def acl_allowed() -> None:
        """AclAPI: MANAGE on the ACL object type (no object: no id in the message)."""
        if not c.caller.is_admin:
            raise OneRequestError(AUTHORIZATION, f"User [{c.caller.uid}] : Not authorized "
                                  "to perform MANAGE ACL.")

    def acl_addrule(user: str, resource: str, rights: str, zone: str = "") -> int:
        acl_allowed()
        zone_value = parse_hex(zone) if zone else INDIVIDUAL_ID | ACL_ZONE_ID
        with c.lock:
            try:
                return c.acl.add(parse_hex(user), parse_hex(resource), parse_hex(rights),
                                 zone_value)
            except ValueError as exc:
                raise OneRequestError(INTERNAL, str(exc)) from None

    def acl_delrule(oid: int) -> int:
        acl_allowed()
        with c.lock:
            try:
                c.acl.delete(oid)
            except ValueError as exc:
                raise OneRequestError(INTERNAL, str(exc)) from None
            return oid

    def acl_info() -> str:
        acl_allowed()
        with c.lock:
            return c.acl.pool_xml()

    return {
        "one.acl.addrule": method("sss", "s", acl_addrule),
        "one.acl.delrule": method("i", "", acl_delrule),
        "one.acl.info": method("", "", acl_info),
        "one.user.allocate": method("sss", "a", user_allocate),
        "one.user.info": method("i", "b", user_info),
        "one.user.chgrp": method("ii", "", c.user_chgrp),
        "one.user.passwd": method("is", "", c.user_passwd),
        "one.userpool.info": method("", "", userpool_info),
        "one.group.allocate": method("s", "", c.allocate_group),
        "one.group.info": method("i", "b", group_info),
        "one.grouppool.info": method("", "", grouppool_info),
        "one.template.chmod": method("iiiiiiiiii", "b", chmod("template")),
        "one.template.chown": method("iii", "", chown("template")),
        "one.vn.chmod": method("iiiiiiiiii", "", chmod("vnet")),
        "one.vn.chown": method("iii", "", chown("vnet")),
    }


def _persist(cloud: Cloud, kind: str, obj: Any) -> None:
    if kind == "template":
        cloud.store.put_template(obj)
    else:
        cloud.store.put_vnet(obj)
