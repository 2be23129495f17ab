"""Images of the testbed cloud: the preset datastore (``--image NAME=SOURCE``, oneadmin's)
and images users register with ``one.image.allocate``, each with its owner and permissions.

Why this exists: a DISK ``IMAGE = "name"`` names an image *the requesting user* owns unless
IMAGE_UNAME/IMAGE_UID says whose (oned's ImagePool texts), and using it needs USE on it; a
site registers its worker image as vcluster's OpenNebula user (deploy/INSTALL.md). The
testbed's datastore is ``default`` (id 1); an image is READY at once (no copy), its SOURCE
is the PATH it was given (for the netns driver, a root directory).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vcluster.testbed.cloud.model import VM
from vcluster.testbed.cloud.settings import INTERNAL, NO_EXISTS, OneRequestError
from vcluster.testbed.cloud.template_parse import Template

DEFAULT_DS = 1


@dataclass
class Image:
    image_id: int
    name: str
    source: str
    uid: int = 0
    gid: int = 0
    uname: str = "oneadmin"
    gname: str = "oneadmin"
    perms: tuple[int, ...] = (1, 1, 0, 0, 0, 0, 0, 0, 0)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Images:
    """Mixed into the cloud (``settings``, ``store``, ``lock``, accounts)."""

    settings: Any
    store: Any
    lock: Any
    users: dict[int, Any]
    caller: Any
    owner_fields: Any
    check: Any

    def load_images(self) -> None:
        self.images: dict[int, Image] = {
            i: Image(i, name, source, uname=self.settings.user)
            for i, (name, source) in enumerate(self.settings.images)}
        if self.images and self.store.peek_id("image") < len(self.images):
            self.store.take_id("image", len(self.images) - 1)
        for data in self.store.load_kind("image"):
            data["perms"] = tuple(data["perms"])
            self.images[data["image_id"]] = Image(**data)

    def allocate_image(self, text: Template, ds_id: int) -> int:
        """ImageAllocate: the datastore, then the name and its owner's uniqueness."""
        from vcluster.testbed.cloud.resources import check_name
        if ds_id != DEFAULT_DS:
            raise OneRequestError(NO_EXISTS, f"Error getting datastore [{ds_id}].", ds_id)
        name = text.get_str("NAME")
        path = text.get_str("PATH") or text.get_str("SOURCE")
        with self.lock:
            try:
                check_name(name, required=True)
            except OneRequestError as exc:
                raise OneRequestError(INTERNAL, exc.message) from None
            if not path:
                raise OneRequestError(INTERNAL, "No PATH in template.")
            for image in self.images.values():
                if image.name == name and image.uid == self.caller.uid:
                    raise OneRequestError(
                        INTERNAL, f"NAME is already taken by IMAGE {image.image_id}.")
            image_id = self.store.next_id("image")
            image = Image(image_id, name, path, **self.owner_fields())
            self.images[image_id] = image
            self.store.put_kind("image", image_id, image.to_json())
            return image_id

    def _disk_uid(self, disk: dict[str, str]) -> int:
        """VirtualMachineDisk::get_uid: IMAGE_UID, IMAGE_UNAME, else the requesting user
        (-1: not found)."""
        if disk.get("IMAGE_UID"):
            text = disk["IMAGE_UID"].strip()
            return int(text) if text.lstrip("-").isdigit() else -1
        if disk.get("IMAGE_UNAME"):
            user = next((u for u in self.users.values() if u.name == disk["IMAGE_UNAME"]),
                        None)
            return user.uid if user is not None else -1
        return int(self.caller.uid)

    def attach_disks(self, vm: VM) -> None:
        """Resolve each DISK's IMAGE / IMAGE_ID as oned's VirtualMachineDisks do (its texts),
        and complete the vector with what oned adds (DISK_ID, SOURCE, TARGET...)."""
        disks = []
        for disk_id, value in enumerate(v for n, v in vm.template.attrs if n == "DISK"):
            disk = dict(value) if isinstance(value, dict) else {}
            image: Image | None = None
            if disk.get("IMAGE"):
                uid = self._disk_uid(disk)
                image = next((i for i in self.images.values()
                              if i.name == disk["IMAGE"] and i.uid == uid), None)
                if image is None:
                    raise OneRequestError(
                        INTERNAL, f"User {self.caller.uid} does not own an image with name: "
                        f"{disk['IMAGE']} . Set IMAGE_UNAME or IMAGE_UID of owner in DISK.")
            elif "IMAGE_ID" in disk:
                text = disk["IMAGE_ID"]
                image = self.images.get(int(text)) if text.isdigit() else None
                if image is None:
                    raise OneRequestError(INTERNAL, f"Image with ID: {text} does not exist")
            if image is not None:
                self.check("image", image, image.image_id, 0)  # USE IMAGE
                disk.update({"CLONE": "YES", "DATASTORE": "default", "DATASTORE_ID": "1",
                             "IMAGE": image.name, "IMAGE_ID": str(image.image_id),
                             "IMAGE_UNAME": image.uname, "READONLY": "NO",
                             "SOURCE": image.source, "TYPE": "FILE"})
            disk["DISK_ID"] = str(disk_id)
            disk.setdefault("TARGET", "vd" + "abcdefghijklmnopqrstuvwxyz"[disk_id % 26])
            disks.append(disk)
        vm.template.remove("DISK")
        for disk in disks:
            vm.template.add("DISK", disk)
