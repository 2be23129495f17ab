"""netns VMs booting at once on a machine where the testbed never ran: no mountpoint race.

Each VM makes sure its bind-mount targets (/context, private directories and files) exist
on the shared host filesystem. On a fresh machine two VMs booting together both found
/context missing and both created it; the second failed with ``[Errno 17] File exists`` and
its VM went to BOOT_FAILURE. Here many processes and threads create the same fresh targets
at the same instant (released together by a barrier), and every one must succeed.
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vcluster.testbed.cloud import vminit

WORKERS = 24
ROUNDS = 20


def _targets(root: Path, round_no: int) -> tuple[Path, Path]:
    base = root / f"round{round_no}"
    return base / "context", base / "etc" / "hosts"


def _create_all(root: Path, barrier: threading.Barrier | None) -> list[str]:
    """Every round's targets, each round started together with the other workers."""
    errors = []
    for round_no in range(ROUNDS):
        directory, file = _targets(root, round_no)
        if barrier is not None:
            barrier.wait()
        try:
            vminit._ensure_mountpoint(directory, is_dir=True)
            vminit._ensure_mountpoint(file, is_dir=False)
        except OSError as exc:
            errors.append(f"round {round_no}: {exc}")
    return errors


def _process_worker(root: str, barrier: threading.Barrier, out: multiprocessing.Queue) -> None:
    out.put(_create_all(Path(root), barrier))


def test_threads_create_the_same_fresh_mountpoints_at_once(tmp_path: Path) -> None:
    barrier = threading.Barrier(WORKERS)
    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(lambda _: _create_all(tmp_path, barrier), range(WORKERS)))
    assert [e for errors in results for e in errors] == []
    for round_no in range(ROUNDS):
        directory, file = _targets(tmp_path, round_no)
        assert directory.is_dir() and file.is_file()


def test_processes_create_the_same_fresh_mountpoints_at_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(WORKERS)
    out: multiprocessing.Queue = ctx.Queue()
    procs = [ctx.Process(target=_process_worker, args=(str(tmp_path), barrier, out))
             for _ in range(WORKERS)]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=10)
        assert proc.exitcode == 0
    assert [e for errors in results for e in errors] == []


def test_an_existing_file_target_keeps_its_content(tmp_path: Path) -> None:
    hosts = tmp_path / "etc" / "hosts"
    hosts.parent.mkdir()
    hosts.write_text("127.0.0.1 localhost\n")
    vminit._ensure_mountpoint(hosts, is_dir=False)
    assert hosts.read_text() == "127.0.0.1 localhost\n"
