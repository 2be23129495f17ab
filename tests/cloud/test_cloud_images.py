"""Images of the testbed cloud's datastore: a DISK names one by IMAGE or IMAGE_ID, as on oned."""

from __future__ import annotations

import pyone
import pytest

from tests.cloud.conftest import VM_TEXT, Running


def test_disk_image_by_name_and_id_gets_oneds_disk_attributes(start_cloud) -> None:  # type: ignore[no-untyped-def]
    cloud: Running = start_cloud(images=(("deb12", "/srv/deb12"), ("deb13", "/srv/deb13")))
    by_name = cloud.one.vm.allocate(VM_TEXT + 'DISK = [ IMAGE = "deb13" ]\n')
    by_id = cloud.one.vm.allocate(VM_TEXT + 'DISK = [ IMAGE_ID = "0" ]\nDISK = [ SIZE = "10" ]\n')
    disk = cloud.one.vm.info(by_name).TEMPLATE["DISK"]
    assert (disk["IMAGE"], disk["IMAGE_ID"], disk["SOURCE"], disk["DISK_ID"], disk["TARGET"]) == (
        "deb13", "1", "/srv/deb13", "0", "vda")
    first, volatile = cloud.one.vm.info(by_id).TEMPLATE["DISK"]
    assert (first["IMAGE"], first["SOURCE"]) == ("deb12", "/srv/deb12")
    assert (volatile["DISK_ID"], volatile["TARGET"], "IMAGE" in volatile) == ("1", "vdb", False)
    assert cloud.server.cloud.spec(cloud.server.cloud.get_vm(by_name)).image_source == "/srv/deb13"


@pytest.mark.parametrize(("disk", "message"), [
    ('IMAGE = "nosuch"', "[one.vm.allocate] User 0 does not own an image with name: nosuch . "
                         "Set IMAGE_UNAME or IMAGE_UID of owner in DISK."),
    ('IMAGE_ID = "7"', "[one.vm.allocate] Image with ID: 7 does not exist"),
])
def test_unknown_image_is_refused_with_oneds_text(cloud: Running, disk: str, message: str
                                                  ) -> None:
    with pytest.raises(pyone.OneInternalException) as info:
        cloud.one.vm.allocate(VM_TEXT + f"DISK = [ {disk} ]\n")
    assert str(info.value) == message
    assert not cloud.one.vmpool.info(-2, -1, -1, -1).VM  # nothing allocated, no lease taken


def test_template_delete_as_oned(cloud: Running) -> None:
    tmpl_id = cloud.one.template.allocate('NAME = "gone"\n' + VM_TEXT)
    assert cloud.one.template.delete(tmpl_id, False) == tmpl_id
    names = [t.NAME for t in cloud.one.templatepool.info(-2, -1, -1).VMTEMPLATE or []]
    assert "gone" not in names
    with pytest.raises(pyone.OneNoExistsException) as info:
        cloud.one.template.delete(tmpl_id, False)
    assert str(info.value) == (
        f"[one.template.delete] Error getting virtual machine template [{tmpl_id}].")
