"""OpenNebula's ACL rules in the testbed cloud, as oned 7.4 keeps, prints and matches them.

Why this exists: what a user outside group oneadmin may do beyond its own objects' permission
bits is given by ACL rules (``oneacl create "@100 HOST/* MANAGE+ADMIN"``); deploy/INSTALL.md
gives the vcluster group the rights ``vcluster drain-host`` needs that way, and the testbed
must grant and refuse as oned does. Read from oned's src/acl/AclRule.cc (the bit layout,
``malformed``, the rule's string and XML), src/acl/AclManager.cc (the bootstrap rules,
``add_rule``/``del_rule`` and their messages, ``authorize``'s matching, the dump's order)
and src/rm/api/AclAPI.cc (hex strings parsed as ``istringstream >> hex``; no zone: this
zone, 0).

A rule is four 64-bit numbers: user (``#uid``, ``@gid`` or ``*`` bit and an id), resource
(object type bits, ``#oid``/``@gid``/``%cid``/``*`` bit and an id), rights (USE 1, MANAGE
2, ADMIN 4, CREATE 8) and zone. Not modelled: federation, locks, the rules oned deletes
with a user, group or object (the testbed deletes none of those).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

INDIVIDUAL_ID, GROUP_ID, ALL_ID, CLUSTER_ID = 0x100000000, 0x200000000, 0x400000000, 0x800000000
NONE_ID = 0x1000000000000000
ZONE_ID = 0  # the testbed is zone 0, OpenNebula's default zone
ID_MASK = 0xFFFFFFFF

TYPES = {  # PoolObjectSQL::ObjectType, in AclRule::pool_objects' order (the string's)
    "VM": 0x1000000000, "HOST": 0x2000000000, "NET": 0x4000000000,
    "IMAGE": 0x8000000000, "USER": 0x10000000000, "TEMPLATE": 0x20000000000,
    "GROUP": 0x40000000000, "DATASTORE": 0x100000000000, "CLUSTER": 0x200000000000,
    "DOCUMENT": 0x400000000000, "ZONE": 0x800000000000, "SECGROUP": 0x1000000000000,
    "VDC": 0x2000000000000, "VROUTER": 0x4000000000000, "MARKETPLACE": 0x8000000000000,
    "MARKETPLACEAPP": 0x10000000000000, "VMGROUP": 0x20000000000000,
    "VNTEMPLATE": 0x40000000000000, "BACKUPJOB": 0x100000000000000}
ACL_TYPE = 0x80000000000
OPERATIONS = {"USE": 1, "MANAGE": 2, "ADMIN": 4, "CREATE": 8}
KIND_TYPES = {"vm": TYPES["VM"], "host": TYPES["HOST"], "vnet": TYPES["NET"],
              "image": TYPES["IMAGE"], "template": TYPES["TEMPLATE"],
              "user": TYPES["USER"], "group": TYPES["GROUP"]}

_T = TYPES
INVALID_CLUSTER_OBJECTS = (_T["VM"] | _T["IMAGE"] | _T["USER"] | _T["TEMPLATE"] | _T["GROUP"]
                           | ACL_TYPE | _T["CLUSTER"] | _T["DOCUMENT"] | _T["ZONE"]
                           | _T["SECGROUP"] | _T["VDC"] | _T["VROUTER"] | _T["MARKETPLACE"]
                           | _T["MARKETPLACEAPP"] | _T["VMGROUP"] | _T["VNTEMPLATE"])
INVALID_GROUP_OBJECTS = _T["HOST"] | _T["GROUP"] | _T["CLUSTER"] | _T["ZONE"] | _T["VDC"]
FEDERATED_OBJECTS = _T["USER"] | _T["GROUP"] | _T["ZONE"] | ACL_TYPE | _T["VDC"]

# AclManager's constructor, on an empty database: ids 0, 1, 2
BOOTSTRAP_RULES = (
    (GROUP_ID | 1, ALL_ID | _T["VM"] | _T["IMAGE"] | _T["TEMPLATE"] | _T["DOCUMENT"]
     | _T["SECGROUP"] | _T["VMGROUP"] | _T["BACKUPJOB"], OPERATIONS["CREATE"], ALL_ID),
    (ALL_ID, ALL_ID | _T["ZONE"], OPERATIONS["USE"], ALL_ID),
    (ALL_ID, ALL_ID | _T["MARKETPLACE"] | _T["MARKETPLACEAPP"], OPERATIONS["USE"], ALL_ID),
)

_LLONG_MAX, _LLONG_MIN = (1 << 63) - 1, -(1 << 63)
_HEX = re.compile(r"\s*([+-]?)(?:0[xX](?=[0-9a-fA-F]))?([0-9a-fA-F]*)")


def parse_hex(text: str) -> int:
    """``istringstream >> hex >> long long``: leading blanks, a sign, an optional 0x, the
    longest run of hex digits (the rest ignored); none: 0; out of range: the limit."""
    match = _HEX.match(text)
    assert match is not None
    sign, digits = match.groups()
    if not digits:
        return 0
    value = -int(digits, 16) if sign == "-" else int(digits, 16)
    return max(_LLONG_MIN, min(_LLONG_MAX, value))


def _int32(value: int) -> int:
    """The 32 low bits as C++'s ``int`` (user_id(), resource_id(), zone_id())."""
    low = value & ID_MASK
    return low - (1 << 32) if low & 0x80000000 else low


def _selector(value: int, marks: tuple[tuple[int, str], ...]) -> str:
    for bit, mark in marks:
        if value & bit:
            return "*" if mark == "*" else f"{mark}{_int32(value)}"
    return "??"


@dataclass
class AclRule:
    oid: int
    user: int
    resource: int
    rights: int
    zone: int

    def key(self) -> tuple[int, int, int, int]:
        return (self.user, self.resource, self.rights, self.zone)

    def to_str(self) -> str:
        """AclRule::build_str: ``@100 HOST/* MANAGE #0``."""
        user = _selector(self.user, ((GROUP_ID, "@"), (INDIVIDUAL_ID, "#"), (ALL_ID, "*")))
        types = "+".join(n for n, bit in TYPES.items() if self.resource & bit)
        res = _selector(self.resource, ((GROUP_ID, "@"), (INDIVIDUAL_ID, "#"),
                                        (CLUSTER_ID, "%"), (ALL_ID, "*")))
        rights = "+".join(n for n, bit in OPERATIONS.items() if self.rights & bit)
        zone = _selector(self.zone, ((INDIVIDUAL_ID, "#"), (ALL_ID, "*")))
        return f"{user} {types}/{res} {rights} {zone}"

    def to_xml(self) -> str:
        h = _unsigned_hex
        return (f"<ACL><ID>{self.oid}</ID><USER>{h(self.user)}</USER>"
                f"<RESOURCE>{h(self.resource)}</RESOURCE><RIGHTS>{h(self.rights)}</RIGHTS>"
                f"<ZONE>{h(self.zone)}</ZONE><STRING>{self.to_str()}</STRING></ACL>")

    def malformed(self) -> str:
        """AclRule::malformed: every problem, joined by "; " (as oned joins them), or ""."""
        user, resource, zone = self.user, self.resource, self.zone
        errors: list[str] = []
        if user & INDIVIDUAL_ID and user & GROUP_ID:
            errors.append("[user] INDIVIDUAL (#) and GROUP (@) bits are exclusive")
        if user & INDIVIDUAL_ID and user & ALL_ID:
            errors.append("[user] INDIVIDUAL (#) and ALL (*) bits are exclusive")
        if user & GROUP_ID and user & ALL_ID:
            errors.append("[user] GROUP (@) and ALL (*) bits are exclusive")
        if user & 0x700000000 == 0:
            errors.append("[user] is missing one of the INDIVIDUAL, GROUP or ALL bits")
        if _int32(user) < 0:
            errors.append("[user] ID cannot be negative")
        if user & ALL_ID and _int32(user) != 0:
            errors.append("when using the ALL bit, [user] ID must be 0")
        selector = resource & 0xF00000000
        if any(resource & bit and selector != bit
               for bit in (INDIVIDUAL_ID, GROUP_ID, CLUSTER_ID, ALL_ID)):
            errors.append("[resource] INDIVIDUAL (#), GROUP (@), CLUSTER (%) and ALL (*) "
                          "bits are exclusive")
        resource_type = resource & 0xFFFFFFF000000000
        if resource & CLUSTER_ID and resource_type & INVALID_CLUSTER_OBJECTS:
            errors.append("[resource] CLUSTER(%) selector can be applied only to DATASTORE, "
                          "HOST and NET types")
        if resource & GROUP_ID and resource_type & INVALID_GROUP_OBJECTS:
            errors.append("[resource] GROUP(@) selector cannot be applied to HOST, GROUP, "
                          "CLUSTER, ZONE or VDC types")
        if selector == 0:
            errors.append("[resource] is missing one of the INDIVIDUAL, GROUP, CLUSTER or "
                          "ALL bits")
        if _int32(resource) < 0:
            errors.append("[resource] ID cannot be negative")
        if resource & ALL_ID and _int32(resource) != 0:
            errors.append("when using the ALL bit, [resource] ID must be 0")
        if resource_type == 0:
            errors.append("[resource] type is missing")
        if resource & 0xFE80000000000000:
            errors.append("wrong [resource] type")
        if self.rights == 0:
            errors.append("wrong [rights], it cannot be 0")
        if self.rights > 0xF:
            errors.append("wrong [rights], it cannot be bigger than 0xF")
        text = "; ".join(errors)
        if zone & GROUP_ID:  # oned writes this one without a separator before it
            text += "[zone] GROUP (@) bit is not supported"
        zone_errors: list[str] = []
        if zone & INDIVIDUAL_ID and zone & ALL_ID:
            zone_errors.append("[zone] INDIVIDUAL (#) and ALL (*) bits are exclusive")
        if zone & 0x700000000 == 0:
            zone_errors.append("[zone] is missing one of the INDIVIDUAL or ALL bits")
        if _int32(zone) < 0:
            zone_errors.append("[zone] ID cannot be negative")
        if zone & ALL_ID and _int32(zone) != 0:
            zone_errors.append("when using the ALL bit, [zone] ID must be 0")
        if zone & ALL_ID and resource & INDIVIDUAL_ID and \
                resource_type & FEDERATED_OBJECTS != resource_type:
            zone_errors.append("[resource] INDIVIDUAL(#) selector cannot be applied to ALL "
                               "zones, except for USER, GROUP and ZONE types")
        for error in zone_errors:
            text += ("; " if text else "") + error
        return text


def _unsigned_hex(value: int) -> str:
    return format(value & 0xFFFFFFFFFFFFFFFF, "x")  # ``hex << long long``


def grants(rule: AclRule, user_req: int, obj_type: int, oid: int, gid: int,
           cids: tuple[int, ...], rights: int) -> bool:
    """AclManager::match_rules for one rule and one object (oid, gid, clusters)."""
    if rule.user != user_req:
        return False
    zone_ok = rule.zone & ALL_ID == ALL_ID or \
        rule.zone & (INDIVIDUAL_ID | ID_MASK) == INDIVIDUAL_ID | ZONE_ID
    if not zone_ok or rule.rights & rights != rights:
        return False
    all_req = obj_type | ALL_ID
    oid_req = obj_type | INDIVIDUAL_ID | oid if oid >= 0 else NONE_ID
    gid_req = obj_type | GROUP_ID | gid if gid >= 0 else NONE_ID
    res = rule.resource
    return (res & all_req == all_req
            or res & (obj_type | GROUP_ID | ID_MASK) == gid_req
            or res & (obj_type | INDIVIDUAL_ID | ID_MASK) == oid_req
            or any(res & (obj_type | CLUSTER_ID | ID_MASK) == obj_type | CLUSTER_ID | c
                   for c in cids))


class AclRules:
    """The rule set, persisted in the store as kind ``acl``; callers hold the cloud's lock."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.rules: dict[int, AclRule] = {}
        for data in store.load_kind("acl"):
            self.rules[data["oid"]] = AclRule(**data)
        if store.peek_id("acl") == 0:  # oned: no last_oid for the acl table yet
            for user, resource, rights, zone in BOOTSTRAP_RULES:
                self.add(user, resource, rights, zone)

    def add(self, user: int, resource: int, rights: int, zone: int) -> int:
        """AclManager::add_rule: the duplicate first, then malformed; returns the new id
        or raises ValueError with oned's message."""
        rule = AclRule(self.store.peek_id("acl"), user, resource, rights, zone)
        if any(r.key() == rule.key() for r in self.rules.values()):
            raise ValueError(f"Rule {rule.to_str()} already exists")
        error = rule.malformed()
        if error:
            raise ValueError(f"Rule {rule.to_str()} is malformed: {error}")
        self.store.take_id("acl", rule.oid)
        self.rules[rule.oid] = rule
        self.store.put_kind("acl", rule.oid, dict(rule.__dict__))
        return rule.oid

    def delete(self, oid: int) -> None:
        if oid not in self.rules:
            raise ValueError(f"Rule {oid} does not exist")
        del self.rules[oid]
        self.store.delete_kind("acl", oid)

    def pool_xml(self) -> str:
        """AclManager::dump: the multimap by user (signed), each user's rules by id."""
        ordered = sorted(self.rules.values(), key=lambda r: (r.user, r.oid))
        return "<ACL_POOL>" + "".join(r.to_xml() for r in ordered) + "</ACL_POOL>"

    def authorize(self, uid: int, groups: list[int], kind: str, oid: int, gid: int,
                  cids: tuple[int, ...], op: int) -> bool:
        """AclManager::authorize's rule part: ``*`` rules, then ``#uid``, then each
        ``@gid`` of the user's groups (the object's permission bits are checked first)."""
        obj_type, rights = KIND_TYPES[kind], 1 << op
        requests = [ALL_ID, INDIVIDUAL_ID | uid] + [GROUP_ID | g for g in sorted(groups)]
        return any(grants(rule, req, obj_type, oid, gid, cids, rights)
                   for req in requests for rule in self.rules.values())
