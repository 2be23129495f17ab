"""Users, groups and permissions: a site admin's OpenNebula setup, through the real pyone.

What deploy/INSTALL.md has a site do (a dedicated user and group, a private template, a
network the user may use) must work, and what it must not do (USE someone else's template,
NETWORK by name without NETWORK_UNAME) must be refused with oned 7.4's codes and texts.
"""

from __future__ import annotations

from collections.abc import Callable

import pyone
import pytest

from tests.cloud.conftest import Running

AUTHORIZATION, NO_EXISTS, ALLOCATE, INTERNAL = 0x200, 0x400, 0x4000, 0x2000
WORKER = ('NAME = "worker"\nCPU = "0.1"\nMEMORY = "64"\n'
          'NIC = [ NETWORK = "{net}"{extra} ]\n')


def _site_user(cloud: Running) -> tuple[int, int, pyone.OneServer]:
    """What INSTALL.md does as oneadmin: onegroup create, oneuser create, oneuser chgrp."""
    gid = cloud.one.group.allocate("vcluster")
    uid = cloud.one.user.allocate("vcluster", "s3cret", "", [])
    cloud.one.user.chgrp(uid, gid)
    return uid, gid, pyone.OneServer(cloud.server.endpoint, session="vcluster:s3cret")


def _error(call) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(pyone.OneException) as info:
        call()
    text = str(info.value)
    # pyone's classes by oned's code; ALLOCATE (0x4000) has none: plain OneException
    codes = {pyone.OneAuthorizationException: AUTHORIZATION,
             pyone.OneNoExistsException: NO_EXISTS, pyone.OneInternalException: INTERNAL,
             pyone.OneException: ALLOCATE}
    return codes.get(type(info.value), -1), text


def test_users_and_groups_as_oned_numbers_and_lists_them(cloud: Running) -> None:
    uid, gid, me = _site_user(cloud)
    assert (uid, gid) == (2, 100)  # oneadmin 0, serveradmin 1; groups from 100
    user = cloud.one.user.info(uid)
    assert (user.NAME, user.GID, user.GNAME, user.AUTH_DRIVER) == ("vcluster", 100,
                                                                    "vcluster", "core")
    assert list(user.GROUPS.ID) == [100]  # chgrp left "users": it was the only group
    assert user.PASSWORD != "s3cret" and len(user.PASSWORD) == 64  # sha256, as core stores
    assert [u.NAME for u in cloud.one.userpool.info().USER] == [
        "oneadmin", "serveradmin", "vcluster"]
    assert [g.NAME for g in cloud.one.grouppool.info().GROUP] == [
        "oneadmin", "users", "vcluster"]
    assert list(cloud.one.group.info(gid).USERS.ID) == [uid]
    assert me.user.info(-1).NAME == "vcluster"  # the session authenticates as the user
    assert [u.NAME for u in me.userpool.info().USER] == ["vcluster"]
    assert _error(lambda: cloud.one.user.allocate("vcluster", "x", "", [])) == (
        ALLOCATE, "[one.user.allocate] Error allocating a new user. "
        "NAME is already taken by USER 2.")
    assert _error(lambda: cloud.one.user.allocate("bad name", "x", "", [])) == (
        ALLOCATE, "[one.user.allocate] Error allocating a new user. "
        "Invalid NAME, char ' ' is not allowed.")
    assert _error(lambda: cloud.one.user.chgrp(uid, 555)) == (
        NO_EXISTS, "[one.user.chgrp] Error getting group [555].")
    assert _error(lambda: me.user.allocate("other", "x", "", [])) == (
        AUTHORIZATION, "[one.user.allocate] User [2] : Not authorized to perform CREATE USER.")
    wrong = pyone.OneServer(cloud.server.endpoint, session="vcluster:wrong")
    with pytest.raises(pyone.OneAuthenticationException):
        wrong.user.info(-1)


def test_a_private_template_is_refused_to_others_and_chmod_chown_as_oned(
        cloud: Running) -> None:
    uid, gid, me = _site_user(cloud)
    admin_tid = cloud.one.template.allocate(WORKER.format(net="vcnet", extra=""))
    assert _error(lambda: me.template.instantiate(admin_tid, "x", False, "", False)) == (
        AUTHORIZATION, "[one.template.instantiate] User [2] : Not authorized to perform "
        f"USE TEMPLATE [{admin_tid}].")
    assert [t.ID for t in me.templatepool.info(-2, -1, -1).VMTEMPLATE] == []
    cloud.one.template.chmod(admin_tid, -1, -1, -1, -1, -1, -1, 1, 0, 0)  # other USE
    assert [t.ID for t in me.templatepool.info(-2, -1, -1).VMTEMPLATE] == [admin_tid]
    assert [t.ID for t in me.templatepool.info(-3, -1, -1).VMTEMPLATE] == []
    assert _error(lambda: me.template.chmod(admin_tid, 1, 1, 1, 1, 1, 1, 1, 1, 1)) == (
        AUTHORIZATION, "[one.template.chmod] User [2] : Not authorized to perform ADMIN "
        f"TEMPLATE [{admin_tid}].")
    cloud.one.template.chown(admin_tid, uid, gid)
    tmpl = cloud.one.template.info(admin_tid)
    assert (tmpl.UID, tmpl.UNAME, tmpl.GID, tmpl.GNAME) == (uid, "vcluster", gid, "vcluster")
    assert tmpl.PERMISSIONS.OTHER_U == 1
    me.template.chmod(admin_tid, 1, 1, 0, 0, 0, 0, 0, 0, 0)  # onetemplate chmod T 600
    perms = me.template.info(admin_tid).PERMISSIONS
    assert (perms.OWNER_U, perms.OWNER_M, perms.GROUP_U, perms.OTHER_U) == (1, 1, 0, 0)
    assert _error(lambda: cloud.one.template.chmod(admin_tid, 2, 0, 0, 0, 0, 0, 0, 0, 0)) \
        == (INTERNAL, "[one.template.chmod] New permission values must be -1, 0 or 1")
    assert _error(lambda: cloud.one.template.chown(admin_tid, 77, -1)) == (
        NO_EXISTS, "[one.template.chown] Error getting user [77].")


def test_nic_network_by_name_is_the_requesting_users_unless_uname_says(
        cloud: Running) -> None:
    """The old guide's template (NETWORK without NETWORK_UNAME, the network oneadmin's)
    is refused for the vcluster user with oned's text; NETWORK_UNAME plus USE on the
    network (onevnet chgrp + chmod 640) works, and so does a network the user owns."""
    uid, gid, me = _site_user(cloud)
    net_name = cloud.one.vn.info(0).NAME
    old = me.template.allocate(WORKER.format(net=net_name, extra=""))
    assert _error(lambda: me.template.instantiate(old, "", False, "", False)) == (
        ALLOCATE, "[one.template.instantiate] Error allocating a new virtual machine "
        f"template. User 2 does not own a network with name: {net_name} . Set "
        "NETWORK_UNAME or NETWORK_UID of owner in NIC.")
    fixed = me.template.allocate(
        WORKER.format(net=net_name, extra=', NETWORK_UNAME = "oneadmin"')
        .replace('"worker"', '"worker2"'))
    assert _error(lambda: me.template.instantiate(fixed, "", False, "", False)) == (
        AUTHORIZATION, "[one.template.instantiate] User [2] : Not authorized to perform "
        "USE NET [0].")
    cloud.one.vn.chown(0, -1, gid)
    cloud.one.vn.chmod(0, 1, 1, 0, 1, 0, 0, 0, 0, 0)  # onevnet chmod 0 640
    vm_id = me.template.instantiate(fixed, "", False, "", False)
    vm = me.vm.info(vm_id)
    assert (vm.UID, vm.UNAME, vm.GID, vm.GNAME) == (uid, "vcluster", gid, "vcluster")
    assert [v.ID for v in me.vmpool.info(-3, -1, -1, -1).VM] == [vm_id]
    assert [v.ID for v in cloud.one.vmpool.info(-3, -1, -1, -1).VM or []] == []  # oneadmin's
    assert [v.ID for v in cloud.one.vmpool.info(-2, -1, -1, -1).VM] == [vm_id]
    assert [v.ID for v in cloud.one.vmpool.info(uid, -1, -1, -1).VM] == [vm_id]
    other = cloud.one.user.allocate("someone", "pw", "", [])
    them = pyone.OneServer(cloud.server.endpoint, session="someone:pw")
    assert other == 3 and (them.vmpool.info(-2, -1, -1, -1).VM or []) == []
    assert _error(lambda: them.vm.action("terminate-hard", vm_id)) == (
        AUTHORIZATION, "[one.vm.action] User [3] : Not authorized to perform MANAGE VM "
        f"[{vm_id}].")
    # a network the user owns, named without NETWORK_UNAME: the user's own resolves
    cloud.one.vn.chown(0, uid, gid)
    assert me.template.instantiate(old, "", False, "", False) > vm_id


def test_hosts_are_oneadmins(cloud: Running) -> None:
    """A user outside group oneadmin lists no hosts (vcluster then names hosts unknown)."""
    _, _, me = _site_user(cloud)
    assert len(cloud.one.hostpool.info().HOST) == 2
    assert (me.hostpool.info().HOST or []) == []
    assert _error(lambda: me.host.info(0)) == (
        AUTHORIZATION, "[one.host.info] User [2] : Not authorized to perform USE HOST [0].")


def test_an_image_the_user_registers_is_the_one_its_disk_names(
        start_cloud: Callable[..., Running]) -> None:
    cloud = start_cloud(images=(("debian12", "/srv/root-a"),))
    uid, _, me = _site_user(cloud)
    text = 'NAME = "w"\nCPU = "0.1"\nMEMORY = "64"\nDISK = [ IMAGE = "debian12" ]\n'
    tid = me.template.allocate(text)
    assert _error(lambda: me.template.instantiate(tid, "", False, "", False)) == (
        ALLOCATE, "[one.template.instantiate] Error allocating a new virtual machine "
        "template. User 2 does not own an image with name: debian12 . Set IMAGE_UNAME or "
        "IMAGE_UID of owner in DISK.")
    image_id = me.image.allocate('NAME = "debian12"\nPATH = "/srv/root-b"\n', 1)
    assert image_id == 1  # after the preset image 0
    assert _error(lambda: me.image.allocate('NAME = "debian12"\nPATH = "/x"\n', 1)) == (
        ALLOCATE, "[one.image.allocate] Error allocating a new image. "
        "NAME is already taken by IMAGE 1.")
    assert _error(lambda: me.image.allocate('NAME = "x"\nPATH = "/x"\n', 7)) == (
        NO_EXISTS, "[one.image.allocate] Error getting datastore [7].")
    vm = me.vm.info(me.template.instantiate(tid, "", False, "", False))
    disk = vm.TEMPLATE["DISK"]
    assert (disk["IMAGE_ID"], disk["SOURCE"], disk["IMAGE_UNAME"]) == (
        "1", "/srv/root-b", "vcluster")
    assert uid == 2
    # oneadmin's image named with IMAGE_UNAME: found, but the user may not USE it
    other = me.template.allocate(text.replace('"w"', '"w2"').replace(
        '"debian12" ]', '"debian12", IMAGE_UNAME = "oneadmin" ]'))
    assert _error(lambda: me.template.instantiate(other, "", False, "", False)) == (
        AUTHORIZATION, "[one.template.instantiate] User [2] : Not authorized to perform "
        "USE IMAGE [0].")
