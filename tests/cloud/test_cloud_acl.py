"""ACL rules: what a site admin's ``oneacl create`` gives a user, through the real pyone.

deploy/INSTALL.md lets the vcluster group drain hosts with two ACL rules; a user outside group
oneadmin must be refused without them and allowed with them, with oned 7.4's texts, and the
rules must read back (one.acl.info) as oned prints them. Rules are sent as the Ruby CLI sends
them: hex strings (``@100`` is 0x200000064, ``HOST/*`` 0x2400000000, MANAGE+ADMIN 6) and an
empty zone (this zone, ``#0``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyone

from tests.cloud.conftest import VM_TEXT, Running
from tests.cloud.test_cloud_accounts import AUTHORIZATION, INTERNAL, _error, _site_user

GROUP_100 = "200000064"       # @100
HOSTS_ALL = "2400000000"      # HOST/*
VMS_OF_100 = "1200000064"     # VM/@100
HOSTS_OF_100 = "2200000064"   # HOST/@100
USE, MANAGE, ADMIN, MANAGE_ADMIN = "1", "2", "4", "6"
HOST_DISABLED = 4


def _rules(cloud: Running) -> list[tuple[int, str]]:
    return [(int(r.ID), r.STRING) for r in cloud.one.acl.info().ACL]


def test_oned_bootstrap_rules_and_a_new_rule_read_back_as_oned_prints_them(
        cloud: Running) -> None:
    assert _rules(cloud) == [
        (0, "@1 VM+IMAGE+TEMPLATE+DOCUMENT+SECGROUP+VMGROUP+BACKUPJOB/* CREATE *"),
        (1, "* ZONE/* USE *"), (2, "* MARKETPLACE+MARKETPLACEAPP/* USE *")]
    first = cloud.one.acl.info().ACL[0]
    assert (first.USER, first.RESOURCE, first.RIGHTS, first.ZONE) == (
        "200000001", "121429400000000", "8", "400000000")
    _uid, gid, _me = _site_user(cloud)
    assert gid == 100
    new = cloud.one.acl.addrule(GROUP_100, HOSTS_ALL, MANAGE, "")
    assert new == 3
    # oned dumps its multimap: by the user value (#uid < @gid < *), then by id
    assert _rules(cloud) == [
        (0, "@1 VM+IMAGE+TEMPLATE+DOCUMENT+SECGROUP+VMGROUP+BACKUPJOB/* CREATE *"),
        (3, "@100 HOST/* MANAGE #0"),
        (1, "* ZONE/* USE *"), (2, "* MARKETPLACE+MARKETPLACEAPP/* USE *")]
    assert cloud.one.acl.delrule(new) == new
    assert cloud.one.acl.addrule(GROUP_100, HOSTS_ALL, MANAGE) == 4  # ids are never reused


def test_host_status_is_refused_then_granted_by_a_group_rule_then_refused_again(
        cloud: Running) -> None:
    _uid, _gid, me = _site_user(cloud)
    refused = (AUTHORIZATION,
               "[one.host.status] User [2] : Not authorized to perform ADMIN HOST [0].")
    assert _error(lambda: me.host.status(0, 1)) == refused
    # one.host.status asks ADMIN on the host (HostAPI): MANAGE alone is not enough
    manage = cloud.one.acl.addrule(GROUP_100, HOSTS_ALL, MANAGE, "")
    assert _error(lambda: me.host.status(0, 1)) == refused
    admin = cloud.one.acl.addrule(GROUP_100, HOSTS_ALL, MANAGE_ADMIN, "")
    assert me.host.status(0, 1) == 0
    assert int(cloud.one.host.info(0).STATE) == HOST_DISABLED
    assert (me.hostpool.info().HOST or []) == []  # no rule gives USE on hosts
    cloud.one.acl.delrule(admin)
    assert _error(lambda: me.host.status(0, 0)) == refused
    cloud.one.acl.delrule(manage)
    use = cloud.one.acl.addrule("400000000", "2100000001", USE, "")  # * HOST/#1 USE
    assert [int(h.ID) for h in me.hostpool.info().HOST] == [1]
    assert me.host.info(1).NAME == cloud.one.host.info(1).NAME
    cloud.one.acl.delrule(use)
    assert (me.hostpool.info().HOST or []) == []


def test_migrate_needs_admin_on_the_vm_and_manage_on_the_host(
        start_cloud: Callable[..., Running]) -> None:
    cloud = start_cloud()
    _uid, _gid, me = _site_user(cloud)
    vm_id = me.vm.allocate(VM_TEXT)
    cloud.wait_state(vm_id, 3, 3)
    target = 1 - int(cloud.one.vm.info(vm_id).HISTORY_RECORDS.HISTORY[-1].HID)
    assert _error(lambda: me.vm.migrate(vm_id, target, False)) == (
        AUTHORIZATION, f"[one.vm.migrate] User [2] : Not authorized to perform ADMIN VM "
        f"[{vm_id}]; Not authorized to perform MANAGE HOST [{target}].")
    cloud.one.acl.addrule(GROUP_100, VMS_OF_100, ADMIN, "")  # @100 VM/@100 ADMIN
    assert _error(lambda: me.vm.migrate(vm_id, target, False)) == (
        AUTHORIZATION, f"[one.vm.migrate] User [2] : Not authorized to perform MANAGE HOST "
        f"[{target}].")
    cloud.one.acl.addrule(GROUP_100, HOSTS_ALL, MANAGE_ADMIN, "")
    assert me.vm.migrate(vm_id, target, False) == vm_id
    cloud.wait_state(vm_id, 3, 3)
    assert int(cloud.one.vm.info(vm_id).HISTORY_RECORDS.HISTORY[-1].HID) == target


def test_malformed_duplicate_and_unknown_rules_are_refused_as_oned_words_them(
        cloud: Running) -> None:
    _uid, _gid, me = _site_user(cloud)
    assert _error(lambda: cloud.one.acl.addrule(GROUP_100, HOSTS_OF_100, USE, "")) == (
        INTERNAL, "[one.acl.addrule] Rule @100 HOST/@100 USE #0 is malformed: [resource] "
        "GROUP(@) selector cannot be applied to HOST, GROUP, CLUSTER, ZONE or VDC types")
    assert _error(lambda: cloud.one.acl.addrule("64", HOSTS_ALL, "0", "")) == (
        INTERNAL, "[one.acl.addrule] Rule ?? HOST/*  #0 is malformed: [user] is missing "
        "one of the INDIVIDUAL, GROUP or ALL bits; wrong [rights], it cannot be 0")
    assert cloud.one.acl.addrule(GROUP_100, HOSTS_ALL, MANAGE, "") == 3
    assert _error(lambda: cloud.one.acl.addrule(GROUP_100, HOSTS_ALL, MANAGE, "")) == (
        INTERNAL, "[one.acl.addrule] Rule @100 HOST/* MANAGE #0 already exists")
    assert _error(lambda: cloud.one.acl.delrule(99)) == (
        INTERNAL, "[one.acl.delrule] Rule 99 does not exist")
    assert cloud.one.acl.addrule(GROUP_100, HOSTS_ALL, MANAGE, "400000000") == 4  # zone *
    for method, call in (("one.acl.addrule", lambda: me.acl.addrule(GROUP_100, HOSTS_ALL,
                                                                     ADMIN, "")),
                         ("one.acl.delrule", lambda: me.acl.delrule(3)),
                         ("one.acl.info", me.acl.info)):
        assert _error(call) == (
            AUTHORIZATION, f"[{method}] User [2] : Not authorized to perform MANAGE ACL.")
    assert [i for i, _ in _rules(cloud)] == [0, 3, 4, 1, 2]


def test_rules_survive_a_restart(start_cloud: Callable[..., Running], tmp_path: Path) -> None:
    state_dir = tmp_path / "persist"
    first = start_cloud(state_dir)
    _site_user(first)
    kept = first.one.acl.addrule(GROUP_100, HOSTS_ALL, MANAGE_ADMIN, "")
    gone = first.one.acl.addrule(GROUP_100, VMS_OF_100, ADMIN, "")
    first.one.acl.delrule(gone)
    first.server.stop()
    second = start_cloud(state_dir)
    assert (kept, "@100 HOST/* MANAGE+ADMIN #0") in _rules(second)
    assert len(_rules(second)) == 4  # the bootstrap rules are not made again
    assert second.one.acl.addrule(GROUP_100, VMS_OF_100, ADMIN, "") == gone + 1
    me = pyone.OneServer(second.server.endpoint, session="vcluster:s3cret")
    assert me.host.status(1, 1) == 1
