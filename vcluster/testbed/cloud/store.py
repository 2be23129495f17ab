"""The testbed cloud's persistent state: one SQLite file under ``--state-dir``.

Why this exists: oned keeps its pools in a database so that a restart loses nothing, and ids
are never reused (a VM id names a VM forever, also in Slurm's and vcluster's records). The
server keeps its objects in memory for speed and writes every change through to SQLite here:
one row per object (a JSON body), one row per IP lease, one counter per object kind.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from vcluster.testbed.cloud.model import VM, Host, VMTemplate, VNet

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, id INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY (kind, id));
CREATE TABLE IF NOT EXISTS counters (kind TEXT PRIMARY KEY, next_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS leases (
    vnet_id INTEGER NOT NULL, ip TEXT NOT NULL, vm_id INTEGER NOT NULL,
    PRIMARY KEY (vnet_id, ip));
"""


class Store:
    """Write-through persistence; callers serialize access with the cloud's lock."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        # like oned's /var/lib/one: VM templates hold secrets (contexts carry the munge key)
        os.chmod(state_dir, 0o700)
        self.path = state_dir / "cloud.sqlite"
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- ids -------------------------------------------------------------------------

    def peek_id(self, kind: str) -> int:
        """The id the next object of ``kind`` will get (not taken yet)."""
        with self._lock:
            row = self._db.execute("SELECT next_id FROM counters WHERE kind=?", (kind,)).fetchone()
        return int(row[0]) if row else 0

    def take_id(self, kind: str, value: int) -> None:
        """Mark ``value`` used: like oned, an id is consumed only by an object that exists,
        and never handed out again, even across restarts."""
        with self._lock:
            self._db.execute(
                "INSERT INTO counters(kind, next_id) VALUES(?, ?) "
                "ON CONFLICT(kind) DO UPDATE SET next_id=excluded.next_id", (kind, value + 1))

    def next_id(self, kind: str) -> int:
        """Take the next id of ``kind``."""
        value = self.peek_id(kind)
        self.take_id(kind, value)
        return value

    # --- objects ---------------------------------------------------------------------

    def _put(self, kind: str, obj_id: int, body: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO objects(kind, id, body) VALUES(?, ?, ?) "
                "ON CONFLICT(kind, id) DO UPDATE SET body=excluded.body",
                (kind, obj_id, json.dumps(body, separators=(",", ":"))))

    def _all(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT body FROM objects WHERE kind=? ORDER BY id", (kind,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def put_vm(self, vm: VM) -> None:
        self._put("vm", vm.vm_id, vm.to_json())

    def put_host(self, host: Host) -> None:
        self._put("host", host.host_id, host.to_json())

    def put_vnet(self, vnet: VNet) -> None:
        self._put("vnet", vnet.vnet_id, vnet.to_json())

    def put_template(self, tmpl: VMTemplate) -> None:
        self._put("template", tmpl.tmpl_id, tmpl.to_json())

    def delete_template(self, tmpl_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM objects WHERE kind='template' AND id=?", (tmpl_id,))

    def put_kind(self, kind: str, obj_id: int, body: dict[str, Any]) -> None:
        """A plain object (users, groups: :mod:`accounts`) stored as its JSON body."""
        self._put(kind, obj_id, body)

    def delete_kind(self, kind: str, obj_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM objects WHERE kind=? AND id=?", (kind, obj_id))

    def load_kind(self, kind: str) -> list[dict[str, Any]]:
        return self._all(kind)

    def load_vms(self) -> list[VM]:
        return [VM.from_json(d) for d in self._all("vm")]

    def load_hosts(self) -> list[Host]:
        return [Host.from_json(d) for d in self._all("host")]

    def load_templates(self) -> list[VMTemplate]:
        return [VMTemplate.from_json(d) for d in self._all("template")]

    def load_vnets(self) -> list[VNet]:
        vnets = [VNet.from_json(d) for d in self._all("vnet")]
        with self._lock:
            rows = self._db.execute("SELECT vnet_id, ip, vm_id FROM leases").fetchall()
        by_id = {v.vnet_id: v for v in vnets}
        for vnet_id, ip, vm_id in rows:
            if vnet_id in by_id:
                by_id[vnet_id].leases[ip] = vm_id
        return vnets

    # --- leases ----------------------------------------------------------------------

    def add_lease(self, vnet_id: int, ip: str, vm_id: int) -> None:
        with self._lock:
            self._db.execute("INSERT INTO leases(vnet_id, ip, vm_id) VALUES(?, ?, ?)",
                             (vnet_id, ip, vm_id))

    def release_leases(self, vm_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM leases WHERE vm_id=?", (vm_id,))
