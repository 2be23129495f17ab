"""A private PostgreSQL server for the high-availability tests, in the style of
test_postgres.py's (``initdb`` as ``postgres``, a unix socket only), on a port of the test
slot's own (``VCLUSTER_TEST_SLOT``), so that it runs beside other suites' servers."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import count
from pathlib import Path

from tests.integration.test_postgres import PG_USER, PgServer, _pg_bin_dir, _stop

_SLOT = int(os.environ.get("VCLUSTER_TEST_SLOT", "0") or "0")
HA_PG_PORT = 5480 + _SLOT
_names = count(1)


@contextmanager
def private_pg(port: int = HA_PG_PORT) -> Iterator[PgServer]:
    """A PostgreSQL cluster of its own in a temp dir, stopped and removed at the end."""
    bin_dir = _pg_bin_dir()
    postgres = pwd.getpwnam(PG_USER)
    base_dir = Path(tempfile.mkdtemp(prefix="vcluster-ha-pg-"))
    os.chmod(base_dir, 0o755)
    data_dir, sock_dir = base_dir / "data", base_dir / "sock"
    try:
        sock_dir.mkdir()
        os.chmod(sock_dir, 0o755)
        for path in (base_dir, sock_dir):
            os.chown(path, postgres.pw_uid, postgres.pw_gid)
        server = PgServer(bin_dir, base_dir, data_dir, sock_dir, port)
        server.as_postgres("initdb", "-D", str(data_dir), "-U", PG_USER, "-A", "trust",
                           "-E", "UTF8", "--no-locale")
        server.as_postgres(
            "pg_ctl", "-D", str(data_dir), "-l", str(base_dir / "server.log"),
            "-o", f"-k {sock_dir} -p {port} -c listen_addresses=''", "-w", "start")
        yield server
    finally:
        _stop(bin_dir, data_dir, base_dir)
        shutil.rmtree(base_dir, ignore_errors=True)


def new_database(server: PgServer) -> str:
    """A fresh, empty database on ``server``; its SQLAlchemy URL."""
    name = f"vcluster_ha_{os.getpid()}_{next(_names)}"
    server.client("createdb", name)
    return server.url(name)
